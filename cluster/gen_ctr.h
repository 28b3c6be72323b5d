/* gen_ctr: the `psrec gen --ctr` command (synthetic click data, see
 * common/synth_ctr.h). */
#ifndef PSREC_CLUSTER_GEN_CTR_H
#define PSREC_CLUSTER_GEN_CTR_H

/* 1 when argv[1..argc) asks for click data (has --ctr). */
int cl_gen_is_ctr(int argc, char **argv);

/* Runs `psrec gen --ctr [options]` (argv[0] is the command); returns the
 * process exit status: 0, 1 (could not write) or 2 (bad options). */
int cl_gen_ctr_main(int argc, char **argv);

#endif
