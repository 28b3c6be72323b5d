/* heartbeat: finds a rank that stopped (SIGSTOP, swap, a wedged disk) even
 * while every role's main thread is busy computing.
 *
 * Each rank runs one small thread with its own socket. Rank 0 (the
 * scheduler) is the monitor: it binds a ROUTER, every other rank's thread
 * connects a DEALER to it, sends a beat every `interval` seconds carrying
 * what its role is doing, and the monitor answers each beat with what the
 * scheduler is doing. The monitor declares a rank stalled when it has not
 * beaten for `limit` seconds; a rank declares the scheduler stalled when
 * its beats go unanswered that long. Either way the thread calls the
 * owner's on_fail once with a reason naming the rank, its host and what it
 * was doing; what happens then (abort the job, shut the van down) is the
 * owner's choice, since library code never ends a process.
 *
 * A rank's own failure can be forwarded to the monitor (cm_hb_report) so
 * that rank 0 says it too. At a clean end every rank says goodbye
 * (cm_hb_finish) so that finishing at different moments is not taken for a
 * stall.
 *
 * Rank layout: 0 the scheduler, 1..n_servers servers, the rest workers. */
#ifndef PSREC_COMMON_HEARTBEAT_H
#define PSREC_COMMON_HEARTBEAT_H

#include "common/err.h"
#include "common/van.h"

typedef struct cm_hb cm_hb;

/* Called once, from the heartbeat thread, with the failure's reason. */
typedef void (*cm_hb_fail_fn)(void *arg, const char *reason);

#define CM_HB_HOST_MAX 64
#define CM_HB_TEXT_MAX 160

typedef struct {
    cm_van *van;               /* not owned; outlives the heartbeat */
    int rank, size;            /* this rank; all ranks of the job */
    int n_servers;             /* ranks 1..n_servers are servers (names roles) */
    double interval;           /* seconds between beats (> 0) */
    double limit;              /* seconds of silence that make a stall (>= interval) */
    cm_hb_fail_fn on_fail;     /* may be NULL: the failure is only recorded */
    void *arg;
} cm_hb_params;

/* A heartbeat for p->rank. Rank 0 binds `endpoint` (a bind endpoint such as
 * "tcp://0.0.0.0:*"); other ranks connect to it (the endpoint rank 0
 * advertised). The thread starts at once. NULL on failure, *err says why. */
cm_hb *cm_hb_new(const cm_hb_params *p, const char *endpoint, cm_error *err);

/* Stops the thread and frees; no-op on NULL; NULLs the caller's pointer. */
void cm_hb_destroy(cm_hb **ph);

/* Rank 0: the endpoint its ROUTER resolved to (to advertise); else "". */
const char *cm_hb_endpoint(const cm_hb *hb);

/* Records what this rank's role is doing ("training epoch 3"), shown in a
 * stall's reason. Any thread; no-op on NULL. */
void cm_hb_doing(cm_hb *hb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* 1 once a failure was found (reason copied to buf when not NULL), else
 * 0. Any thread; 0 on NULL. */
int cm_hb_failed(cm_hb *hb, char *buf, size_t n);

/* Rank > 0: forwards this rank's own failure to the monitor, which hands it
 * to its on_fail with this rank, host and doing state; waits up to wait_ms
 * for the monitor to take it. 0 when taken, CM_ETIMEDOUT, or CM_ESTATE on
 * rank 0. */
int cm_hb_report(cm_hb *hb, const char *reason, int wait_ms);

/* The clean end. Rank > 0: says goodbye and stops watching the scheduler.
 * Rank 0: waits up to wait_ms until every rank said goodbye (a rank that
 * stalls meanwhile is still found). 0, CM_ETIMEDOUT, or CM_ECLOSED when
 * a failure was found. */
int cm_hb_finish(cm_hb *hb, int wait_ms);

/* What this heartbeat last heard of `rank`: on rank 0 of any other rank,
 * elsewhere of rank 0 (the scheduler). 1 when it was heard from, with what
 * it said it does copied to buf (may be NULL); else 0. Any thread. */
int cm_hb_heard(cm_hb *hb, int rank, char *buf, size_t n);

/* Test hook: stop beating and answering (as a stopped process would),
 * while the thread goes on running. */
void cm_hb_pause(cm_hb *hb);

/* "scheduler", "server" or "worker" for a rank of a job with n_servers. */
const char *cm_hb_role(int rank, int n_servers);

#endif
