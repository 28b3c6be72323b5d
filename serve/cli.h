/* cli: the serving subcommands of the psrec binary.
 *
 *   psrec export CHECKPOINT --out DIR [--format npy,fvecs,psm]
 *   psrec recommend --model EXPORT --user ID [-k 10] [--exclude FILE]
 *   psrec serve --model EXPORT [--bind tcp://127.0.0.1:5555] ...
 *
 * argv[0] is the subcommand name; each accepts --help. The return value is
 * the process exit status: 0 ok, 1 failure, 2 bad usage. */
#ifndef PSREC_SERVE_CLI_H
#define PSREC_SERVE_CLI_H

int sv_export_main(int argc, char **argv);
int sv_recommend_main(int argc, char **argv);
int sv_serve_main(int argc, char **argv);

#endif
