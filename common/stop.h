/* stop: a request to stop, made by a signal.
 *
 * SIGTERM is what Slurm (before preemption or at the time limit) and
 * mpirun send before they kill. A process that watches it records the
 * request in a process-wide flag (the signal is process-wide) instead of
 * dying; the scheduler reads it between epochs and ends the job after a
 * last checkpoint. The handler is installed with SA_RESTART; the calls
 * that still return EINTR (polls, sleeps) are retried where psrec makes
 * them (common/van_zmq.c). Blocking the signal and waiting for it in a
 * thread would not do: libraries start threads of their own before main
 * (OpenBLAS), and the kernel hands the signal to any thread that does not
 * block it. */
#ifndef PSREC_COMMON_STOP_H
#define PSREC_COMMON_STOP_H

#include <stddef.h>
#include <sys/types.h>

#include "common/err.h"

/* Called inside the signal handler after the request is recorded; count
 * is how many watched signals have arrived (1 for the first), from the
 * pid that sent this one (0 when the kernel did not say). It must be
 * async-signal-safe: write(2), unlink(2), kill(2), getppid(2), _exit(2). */
typedef void (*cm_stop_fn)(int sig, int count, pid_t from, void *arg);

/* Installs the handler for the n signals: each arrival sets the request
 * (the first signal is kept) and calls fn (may be NULL) with arg. 0, or
 * CM_EINVAL naming the signal that cannot be handled. */
int cm_stop_watch(const int *sigs, size_t n, cm_stop_fn fn, void *arg, cm_error *err);

/* The signal that asked to stop (the first one), or 0. Any thread. */
int cm_stop_requested(void);

/* Records a request as if sig (> 0) had arrived, without calling fn
 * (tests; a caller that must stop the job the same way). */
void cm_stop_request(int sig);

/* Forgets the request and the count (tests running several jobs in one
 * process). */
void cm_stop_reset(void);

#endif
