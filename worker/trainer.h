/* trainer: what a worker runs for its model's family, behind one
 * interface.
 *
 * worker.c keeps the exchange with the scheduler (HELLO and PLAN, the
 * order loop, EPOCH_DONE and EVAL_DONE, STOP) and picks the trainer from
 * the model table (cm_job_model(job)->family, and cm_job_uses_blocks for
 * mf's schedule). Each family is one file:
 *
 *   trainer_blocks.c     mf, blocks schedule (DSGD: worker/blocks.h)
 *   trainer_minibatch.c  mf, minibatch schedule (pull, compute, push)
 *   trainer_sparse.c     fm, ffm, deep (worker/sparse.h)
 *   trainer_implicit.c   implicit (worker/implicit_train.h)
 *
 * Order of calls, each once unless said: new (loads this worker's shard),
 * hello, plan (the kv exists from here on), then any number of
 * train_epoch, evaluate and before_checkpoint in the scheduler's order,
 * then destroy. A call that fails returns a CM_E* code with *err set; the
 * worker then reports the error and destroys the trainer. Everything runs
 * on the worker's thread. */
#ifndef PSREC_WORKER_TRAINER_H
#define PSREC_WORKER_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "common/ctl.h"
#include "common/err.h"
#include "common/msg.h"
#include "common/optim.h"
#include "worker/kv.h"
#include "worker/link.h"
#include "worker/models/model.h"
#include "worker/worker.h"

/* What every trainer is given at new: borrowed, valid until destroy. */
typedef struct {
    const wk_params *p;           /* the worker's parameters and job */
    const wk_model_ops *model;    /* the job's model */
    const int *dims;              /* per table: the row's weights */
    const int *row_floats;        /* per table: weights + optimizer state */
    const cm_table_spec *tables;  /* per table: its parameters (dim, init, optimizer) */
    wk_link *link;                /* progress and clocks inside an epoch */
} wk_trainer_env;

/* What the worker says in HELLO. slot_load comes zeroed (n_slot_load
 * floats) and the trainer adds its shard's expected requests per slot.
 * items (sorted keys) and item_count: this shard's items and their
 * training rows, sent in a second HELLO when the scheduler needs them
 * (the blocks schedule balances blocks by them, implicit samples from
 * them); owned by the trainer, valid until plan. */
typedef struct {
    cm_hello hello;
    int send_items;
    const uint64_t *items;
    const float *item_count;
    size_t n_items;
} wk_hello;

/* EVAL_DONE's body: body is CM_BODY_EVAL (eval) or CM_BODY_RANKING
 * (ranking). Arrays in it are the trainer's, valid until its next call. */
typedef struct {
    int body;
    cm_eval_done eval;
    cm_ranking_done ranking;
} wk_eval;

typedef struct wk_trainer wk_trainer;

typedef struct {
    const char *name;
    /* Fills the HELLO (the trainer's shard statistics, slot loads). */
    int (*hello)(wk_trainer *t, wk_hello *out, cm_error *err);
    /* The scheduler's PLAN (m: its header, slot map and, for blocks and
     * implicit, the item list) and the worker's kv (borrowed, valid until
     * destroy). ctx: the model constants from the plan (mean, clip, l2),
     * copied; the trainer may change its copy (learned l2). */
    int (*plan)(wk_trainer *t, const cm_msg *m, wk_kv *kv, const wk_model_ctx *ctx,
                cm_error *err);
    /* The EPOCH order of round `round` of epoch (only the blocks schedule
     * with one block per worker has rounds after 0): trains, and fills
     * out's loss, n and max_lead (the worker sets seconds). The link's
     * clock and progress start afresh for each call (wk_link_epoch_start);
     * the trainer sends CLOCK and PROGRESS through it, not EPOCH_DONE. */
    int (*train_epoch)(wk_trainer *t, uint32_t epoch, uint32_t round, cm_epoch_done *out,
                       cm_error *err);
    /* The EVAL order after epoch: scores the held-out rows into out. */
    int (*evaluate)(wk_trainer *t, uint32_t epoch, wk_eval *out, cm_error *err);
    /* The CHECKPOINT order: makes the servers' rows the whole model (NULL:
     * they are already). */
    int (*before_checkpoint)(wk_trainer *t, cm_error *err);
    void (*destroy)(wk_trainer *t);
} wk_trainer_ops;

/* The first member of every family's state: how the worker calls it and
 * what it was given. */
struct wk_trainer {
    const wk_trainer_ops *ops;
    wk_trainer_env env;
};

/* For the families' constructors: a zeroed state of `size` bytes (the
 * family's struct, whose first member is a wk_trainer) with ops and env
 * set; NULL with *err set when out of memory. */
wk_trainer *wk_trainer_alloc(size_t size, const wk_trainer_ops *ops, const wk_trainer_env *env,
                             cm_error *err);

/* The families' constructors: load this worker's shard. NULL with *err
 * set on failure. */
wk_trainer *wk_trainer_blocks_new(const wk_trainer_env *env, cm_error *err);
wk_trainer *wk_trainer_minibatch_new(const wk_trainer_env *env, cm_error *err);
wk_trainer *wk_trainer_sparse_new(const wk_trainer_env *env, cm_error *err);
wk_trainer *wk_trainer_implicit_new(const wk_trainer_env *env, cm_error *err);

/* The minibatch trainer's footprint, for the planner: its batch buffers
 * hold wk_trainer_minibatch_cap(batch) examples (the job's batch, at
 * least 4096), two sets of them (one computes while the other's pull is
 * in flight) for rows of dims[0] (user) and dims[1] (item) floats take
 * wk_trainer_minibatch_bytes, and the example order 4 bytes a rating. */
size_t wk_trainer_minibatch_cap(int batch);
uint64_t wk_trainer_minibatch_bytes(int batch, const int dims[2]);

/* Frees *pt and NULLs it; no-op on NULL. */
void wk_trainer_destroy(wk_trainer **pt);

#endif
