/* The minibatch schedule for rating models (mf): each minibatch
 * deduplicates its users and items, pulls their rows, lets the model add
 * its gradients and pushes them. SSP and BSP wait for the slowest worker's
 * clock before each minibatch; ASP pulls the next minibatch's rows while
 * one computes. */
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/rng.h"
#include "common/sorted.h"
#include "worker/rating_eval.h"
#include "worker/shard.h"
#include "worker/trainer.h"

/* The batch buffers hold at least this many examples. */
#define S_MIN_CAP 4096

/* Keys touched by one batch for one table, with the rows pulled for them
 * and their gradient sums. Buffers are reused from batch to batch. */
typedef struct {
    uint64_t *uniq;       /* unique sorted keys */
    uint32_t *idx;        /* per example: position in uniq */
    size_t n_uniq;
    float *rows;          /* n_uniq * dim pulled values */
    float *grads;         /* n_uniq * dim gradient sums */
} s_tkeys;

typedef struct {
    wk_trainer base;
    wk_shard shard;
    wk_kv *kv;
    wk_model_ctx ctx;
    wk_rating_eval *eval;   /* from the plan on */
    size_t cap;             /* examples the batch buffers hold */
    uint64_t *ex_keys;      /* per-example keys of one table */
    uint64_t *scratch;      /* 2*cap for dedupe */
    float *label;
    uint32_t *order;        /* shuffled example order */
    s_tkeys tk[2];
    /* the second set of batch buffers: with ASP the next minibatch's pull
     * is in flight while this one computes */
    s_tkeys tk_alt[2];
    float *label_alt;
    wk_pull reqs[2];        /* the pull in flight */
} s_minibatch;

static int s_alloc(s_minibatch *t, size_t cap, cm_error *err)
{
    t->cap = cap;
    t->ex_keys = malloc(cap * sizeof *t->ex_keys);
    t->scratch = malloc(2 * cap * sizeof *t->scratch);
    t->label = malloc(cap * sizeof *t->label);
    t->label_alt = malloc(cap * sizeof *t->label_alt);
    t->order = malloc((t->shard.train.n + 1) * sizeof *t->order);
    int ok = t->ex_keys && t->scratch && t->label && t->label_alt && t->order;
    for (int k = 0; k < 4; k++) {
        s_tkeys *tk = k < 2 ? &t->tk[k] : &t->tk_alt[k - 2];
        size_t dim = (size_t)t->base.env.dims[k % 2];
        tk->uniq = malloc(cap * sizeof(uint64_t));
        tk->idx = malloc(cap * sizeof(uint32_t));
        tk->rows = aligned_alloc(64, ((cap * dim * sizeof(float)) + 63) / 64 * 64);
        tk->grads = aligned_alloc(64, ((cap * dim * sizeof(float)) + 63) / 64 * 64);
        ok = ok && tk->uniq && tk->idx && tk->rows && tk->grads;
    }
    return ok ? 0 : cm_error_set(err, CM_ENOMEM, "worker: out of memory for batch buffers");
}

size_t wk_trainer_minibatch_cap(int batch)
{
    return batch > S_MIN_CAP ? (size_t)batch : S_MIN_CAP;
}

/* What s_alloc takes, the example order aside. */
uint64_t wk_trainer_minibatch_bytes(int batch, const int dims[2])
{
    const uint64_t cap = wk_trainer_minibatch_cap(batch);
    uint64_t bytes = cap * (sizeof(uint64_t) + 2 * sizeof(uint64_t) + 2 * sizeof(float));
    for (int k = 0; k < 4; k++) {
        const uint64_t rows = (cap * (uint64_t)dims[k % 2] * sizeof(float) + 63) / 64 * 64;
        bytes += cap * (sizeof(uint64_t) + sizeof(uint32_t)) + 2 * rows;
    }
    return bytes;
}

static void s_destroy(wk_trainer *base)
{
    s_minibatch *t = (s_minibatch *)base;
    free(t->ex_keys);
    free(t->scratch);
    free(t->label);
    free(t->label_alt);
    free(t->order);
    for (int k = 0; k < 4; k++) {
        s_tkeys *tk = k < 2 ? &t->tk[k] : &t->tk_alt[k - 2];
        free(tk->uniq);
        free(tk->idx);
        free(tk->rows);
        free(tk->grads);
    }
    wk_rating_eval_destroy(&t->eval);
    wk_shard_free(&t->shard);
    free(t);
}

static int s_hello(wk_trainer *base, wk_hello *out, cm_error *err)
{
    s_minibatch *t = (s_minibatch *)base;
    wk_shard_hello(&t->shard, &out->hello);
    return 0;
}

static int s_plan(wk_trainer *base, const cm_msg *m, wk_kv *kv, const wk_model_ctx *ctx,
                  cm_error *err)
{
    s_minibatch *t = (s_minibatch *)base;
    const wk_trainer_env *env = &t->base.env;
    t->kv = kv;
    t->ctx = *ctx;
    t->eval = wk_rating_eval_new(env->p, &t->shard, env->model, env->dims, kv, NULL, err);
    return t->eval ? 0 : CM_ENOMEM;
}

/* Fills the batch's deduplicated keys for rows[first..first+m) in order. */
static void s_make_batch(s_minibatch *t, size_t first, size_t m, wk_batch *b)
{
    const cm_ratings *d = &t->shard.train;
    const uint64_t *cols[2] = {d->user, d->item};
    for (int k = 0; k < 2; k++) {
        for (size_t j = 0; j < m; j++)
            t->ex_keys[j] = cols[k][t->order[first + j]];
        cm_dedupe_u64(t->ex_keys, m, t->tk[k].uniq, t->tk[k].idx, &t->tk[k].n_uniq, t->scratch);
    }
    for (size_t j = 0; j < m; j++)
        t->label[j] = d->rating[t->order[first + j]];
    b->n = m;
    b->uidx = t->tk[0].idx;
    b->iidx = t->tk[1].idx;
    b->label = t->label;
}

/* Starts the pull of the rows of the batch in t->tk. */
static int s_pull_start(s_minibatch *t, cm_error *err)
{
    for (int k = 0; k < 2; k++)
        t->reqs[k] = (wk_pull){(uint32_t)k, t->tk[k].uniq, t->tk[k].n_uniq, t->tk[k].rows, 0, 0};
    return wk_kv_pull_start(t->kv, t->reqs, 2, err);
}

/* Swaps the two sets of batch buffers. */
static void s_swap_sets(s_minibatch *t)
{
    for (int k = 0; k < 2; k++) {
        s_tkeys tk = t->tk[k];
        t->tk[k] = t->tk_alt[k];
        t->tk_alt[k] = tk;
    }
    float *l = t->label;
    t->label = t->label_alt;
    t->label_alt = l;
}

/* One minibatch's gradients from the rows in cur, pushed; returns the
 * squared error through *sq. */
static int s_step(s_minibatch *t, const s_tkeys *cur, const wk_batch *b, double *sq,
                  cm_error *err)
{
    const float *rows[2] = {cur[0].rows, cur[1].rows};
    float *grads[2] = {cur[0].grads, cur[1].grads};
    for (int k = 0; k < 2; k++)
        memset(grads[k], 0, cur[k].n_uniq * (size_t)t->base.env.dims[k] * sizeof(float));
    *sq += t->base.env.model->train(&t->ctx, b, t->base.env.dims[0], rows, grads);
    for (int k = 0; k < 2; k++) {
        int rc = wk_kv_push(t->kv, (uint32_t)k, cur[k].uniq, cur[k].n_uniq, grads[k], err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int s_train_epoch(wk_trainer *base, uint32_t epoch, uint32_t round, cm_epoch_done *out,
                         cm_error *err)
{
    s_minibatch *t = (s_minibatch *)base;
    const wk_params *p = t->base.env.p;
    const cm_job *job = p->job;
    wk_link *link = t->base.env.link;
    const size_t n = t->shard.train.n;
    cm_rng rng;
    cm_rng_seed(&rng, cm_mix64(job->seed ^ cm_mix64(((uint64_t)p->index << 32) | epoch)));
    for (size_t j = 0; j < n; j++)
        t->order[j] = (uint32_t)j;
    cm_rng_shuffle_u32(&rng, t->order, n);

    double sq = 0;
    const size_t bs = (size_t)job->batch;
    const int synced = job->consistency != CM_CONS_ASP;
    const uint64_t stale = job->consistency == CM_CONS_BSP ? 0 : (uint64_t)job->staleness;
    /* ASP never waits for other workers, so it also need not wait for its
     * own pulls: batch t+1's rows are pulled while batch t computes (they
     * miss batch t's own update: one minibatch of staleness, which ASP
     * allows anyway). SSP and BSP keep pull, compute, push in lockstep so
     * their bounds stay exact. */
    const int pipelined = !synced;
    uint64_t clock = 0, max_lead = 0;
    wk_batch next;
    int rc;
    if (pipelined && n > 0) {
        s_make_batch(t, 0, n < bs ? n : bs, &next);
        if ((rc = s_pull_start(t, err)) != 0)
            return rc;
    }
    for (size_t first = 0; first < n; first += bs, clock++) {
        size_t m = n - first < bs ? n - first : bs;
        wk_batch b;
        if (synced) {
            if ((rc = wk_link_wait_clock(link, epoch, clock, stale, err)) != 0)
                return rc;
            const uint64_t least = wk_link_min_clock(link);
            if (clock > least && clock - least > max_lead)
                max_lead = clock - least;
        }
        if (pipelined) {
            b = next;
        } else {
            s_make_batch(t, first, m, &b);
            if ((rc = s_pull_start(t, err)) != 0)
                return rc;
        }
        if ((rc = wk_kv_pull_wait(t->kv, err)) != 0)
            return rc;
        /* this batch's buffers, whatever the next one does with t->tk */
        s_tkeys cur[2] = {t->tk[0], t->tk[1]};
        if (pipelined && first + bs < n) {
            s_swap_sets(t);
            size_t m2 = n - (first + bs) < bs ? n - (first + bs) : bs;
            s_make_batch(t, first + bs, m2, &next);
            if ((rc = s_pull_start(t, err)) != 0)
                return rc;
        }
        if ((rc = s_step(t, cur, &b, &sq, err)) != 0)
            return rc;
        if (synced && (rc = wk_link_clock(link, epoch, clock + 1, err)) != 0)
            return rc;
        if ((rc = wk_link_progress(link, epoch, first + m, sq, err)) != 0)
            return rc;
    }
    if ((rc = wk_kv_flush(t->kv, err)) != 0)
        return rc;
    /* the most minibatches this worker led the slowest by */
    *out = (cm_epoch_done){.loss = sq, .n = n, .max_lead = synced ? (int64_t)max_lead : -1};
    return 0;
}

static int s_evaluate(wk_trainer *base, uint32_t epoch, wk_eval *out, cm_error *err)
{
    s_minibatch *t = (s_minibatch *)base;
    out->body = CM_BODY_EVAL;
    return wk_rating_eval_run(t->eval, epoch, &t->ctx, &out->eval, err);
}

static const wk_trainer_ops s_ops = {
    .name = "minibatch",
    .hello = s_hello,
    .plan = s_plan,
    .train_epoch = s_train_epoch,
    .evaluate = s_evaluate,
    .destroy = s_destroy,
};

wk_trainer *wk_trainer_minibatch_new(const wk_trainer_env *env, cm_error *err)
{
    s_minibatch *t = (s_minibatch *)wk_trainer_alloc(sizeof *t, &s_ops, env, err);
    if (!t)
        return NULL;
    size_t cap = wk_trainer_minibatch_cap(env->p->job->batch);
    if (wk_shard_load(env->p, &t->shard, err) != 0 ||
        wk_shard_validation(env->p, &t->shard, err) != 0 || s_alloc(t, cap, err) != 0) {
        s_destroy(&t->base);
        return NULL;
    }
    return &t->base;
}
