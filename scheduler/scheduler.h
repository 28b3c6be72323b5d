/* scheduler: rank 0's job — partition, pace and measure the training.
 *
 * Waits for every worker's HELLO, makes the plan (global mean, slot map),
 * then runs epochs under BSP: EPOCH to all workers, wait for all
 * EPOCH_DONE (showing progress from their PROGRESS messages), EVAL, gather
 * the held-out error sums, print one line and write one JSON object per
 * epoch. With checkpoint_dir it has the servers write checkpoints and
 * writes their MANIFEST; with resume it has them load one first and goes
 * on from the epoch after it. Finally stops the workers and the servers. A worker that reports
 * an error, or silence longer than the job's timeout, stops the job. */
#ifndef PSREC_SCHEDULER_SCHEDULER_H
#define PSREC_SCHEDULER_SCHEDULER_H

#include <stdint.h>
#include <stdio.h>

#include "common/ckpt.h"
#include "common/config.h"
#include "common/err.h"
#include "common/heartbeat.h"
#include "common/van.h"

typedef struct {
    const cm_job *job;
    cm_van *van;
    cm_sock *ctl;                    /* bound ROUTER the workers connect to; not owned */
    uint32_t n_workers;
    uint32_t n_servers;
    const char *const *server_eps;
    FILE *out;                       /* where epoch lines go (stdout) */
    const char *say_errors_as;       /* non-NULL: a failure goes to stderr with this
                                        prefix before the workers are stopped (under
                                        mpirun a stopped worker may end the job
                                        before the caller could say why) */
    const cm_ckpt_table *tables;     /* the model's tables, for checkpoints */
    size_t n_tables;
    const char *const *server_hosts; /* n_servers hostnames, for messages; NULL: this
                                        host's */
    cm_hb *hb;                       /* records what it does; may be NULL */
} sch_params;

/* What the run measured, for callers and tests. */
typedef struct {
    int epochs;                      /* epochs completed */
    double train_rmse;               /* last epoch, on the fly */
    double test_rmse, test_mae;      /* last evaluation; < 0 without test data */
    double test_auc, test_logloss;   /* binary tasks; < 0 otherwise */
    double noise_floor;              /* from the test file, < 0 if unknown */
    uint64_t n_train, n_test, n_unseen;
    double seconds;                  /* training wall time, evaluation excluded */
    double examples_per_s;           /* over all epochs */
    uint64_t server_rows;            /* rows held by all servers at the end */
    uint64_t server_bytes;
    double load_imbalance_before;    /* max/mean expected server load, round-robin */
    double load_imbalance;           /* the same for the plan used (1.0 = even) */
    double max_lead;                 /* SSP/BSP: most minibatches a worker led the
                                        slowest by; < 0 when not tracked */
    /* implicit feedback, last evaluation (< 0 without one): the model's
     * Recall@K, NDCG@K, HR@K and the popularity baseline's, averaged over
     * eval_users test users (docs/implicit.md) */
    int top_k;
    double recall, ndcg, hr;
    double pop_recall, pop_ndcg, pop_hr;
    uint64_t eval_users;
    uint64_t n_items;                /* the item universe (items with a positive) */
    /* validation (docs/validation.md): the test figures above are then the
     * chosen epoch's */
    uint64_t n_valid;                /* validation examples; 0: none */
    int error_said;                  /* 1: sch_run printed its failure (say_errors_as) */
    int best_epoch;                  /* the chosen epoch; 0 without validation */
    double valid_metric;             /* its validation RMSE (log loss: binary) */
    int early_stopped;               /* 1 when patience ended the run */
} sch_result;

/* A result before anything is measured: counts 0, metrics -1 (none). */
void sch_result_init(sch_result *res);

/* Runs the job to the end. 0, or a CM_E* code with *err set; either way
 * every worker and server was told to stop. */
int sch_run(const sch_params *p, sch_result *res, cm_error *err);

/* Sends STOP to every server and waits for the replies (used by sch_run,
 * and by the launcher when the job fails before the scheduler runs). */
int sch_stop_servers(cm_van *van, uint32_t n_servers, const char *const *server_eps,
                     int timeout_ms, uint64_t *rows, uint64_t *bytes, cm_error *err);

#endif
