/* launch: `psrec launch`, mpirun with restarts.
 *
 * A rank under mpirun cannot start mpirun again, so recovery lives one
 * level up: `psrec launch [MPIRUN OPTIONS] -- [JOB.ini] [--key value ...]`
 * runs `mpirun MPIRUN OPTIONS psrec train JOB.ini ...`, and when that
 * fails (a rank killed, a host lost, a stall that the job detected) runs
 * it again, up to the job's `restarts` times, each time from the newest
 * intact checkpoint (`--resume auto`, which starts fresh while there is
 * none), after a back-off that doubles. A stop signal to the launcher
 * reaches the ranks as SIGUSR1 and ends the loop. docs/checkpoints.md
 * describes it. */
#ifndef PSREC_CLUSTER_LAUNCH_H
#define PSREC_CLUSTER_LAUNCH_H

/* Seconds to wait before restart number `restart` (1 for the first):
 * backoff x 2^(restart-1), at most CL_LAUNCH_MAX_DELAY. */
#define CL_LAUNCH_MAX_DELAY 300.0
double cl_launch_delay(double backoff, int restart);

/* The command of one attempt, NULL-terminated, in a new array (free it;
 * the strings are borrowed): mpirun, the mpirun options, self, "train",
 * the train arguments, and "--resume auto" when resume_auto. NULL when
 * out of memory. */
char **cl_launch_argv(const char *mpirun, char **mpi_opts, int n_mpi, const char *self,
                      char **train, int n_train, int resume_auto);

/* The `psrec launch` command (argv[0] is "launch"). Returns the exit
 * status: 0 when an attempt succeeded, else the last attempt's (128 +
 * signal when it was killed by one); 2 for a usage or job error. */
int cl_launch_main(int argc, char **argv);

#endif
