/* worker: a worker's life in a training job.
 *
 * Loads the rows of the users it owns (cm_worker_of), says HELLO to the
 * scheduler with its shard's statistics, receives the PLAN (slot map,
 * global mean), then trains and evaluates epoch by epoch as the scheduler
 * says: each minibatch deduplicates its keys, pulls the rows, lets the
 * model compute per-key gradient sums, and pushes them. On a fatal error it
 * tells the scheduler (OP_ERROR with the message) before returning. */
#ifndef PSREC_WORKER_WORKER_H
#define PSREC_WORKER_WORKER_H

#include <stdint.h>

#include "common/bootstrap.h"
#include "common/config.h"
#include "common/err.h"
#include "common/heartbeat.h"
#include "common/van.h"

typedef struct {
    const cm_job *job;
    cm_van *van;
    int rank;                        /* this process's rank (for messages) */
    uint32_t index;                  /* 0..n_workers-1 */
    uint32_t n_workers;
    const char *sched_ep;            /* scheduler control endpoint */
    uint32_t n_servers;
    const char *const *server_eps;
    cm_boot *boot;                   /* for the MPI ingest exchange; may be NULL */
    cm_hb *hb;                       /* records what it does; bounds its waits; may be NULL */
} wk_params;

/* Runs until the scheduler says STOP. 0, or a CM_E* code with *err set. */
int wk_run(const wk_params *p, cm_error *err);

#endif
