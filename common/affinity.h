/* affinity: one CPU per training thread.
 *
 * The Linux scheduler, left alone, now and then puts two busy workers of a
 * host on the same CPU while another CPU runs a mostly idle server: on the
 * 2-core development machine one of two workers then trained its block at
 * 34M instead of 56M updates/s, and the other waited for it at the end of
 * every round. A worker that pins its training thread to a CPU of its own
 * keeps the rate it has alone. */
#ifndef PSREC_COMMON_AFFINITY_H
#define PSREC_COMMON_AFFINITY_H

/* Pins the calling thread to the index-th (0-based) of the CPUs it may
 * run on, when at least `peers` CPUs are allowed, so that `peers` threads
 * of one host (index 0 .. peers-1) each get a CPU of their own. Returns
 * the CPU, or -1 when it left the thread as it was: fewer CPUs allowed
 * than peers (a launcher that bound the process chose already), index out
 * of range, or the system refused. */
int cm_pin_thread(int index, int peers);

#endif
