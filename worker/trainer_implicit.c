/* The trainer of the implicit model: positives ranked against sampled
 * negatives (worker/implicit_train.h does the work). The shard keeps the
 * rows at or above positive_threshold; the scheduler's PLAN carries the
 * item universe the sampler draws from. Minibatches keep the same clocks
 * as the minibatch schedule's (SSP/BSP wait for the slowest worker). */
#include <stdlib.h>

#include "worker/implicit_train.h"
#include "worker/shard.h"
#include "worker/trainer.h"

typedef struct {
    wk_trainer base;
    wk_shard shard;          /* positives only; no validation rows */
    wk_kv *kv;
    wk_implicit *implicit;   /* from the plan on */
    uint64_t *items;         /* until the plan: the shard's items (second HELLO) */
    float *count;
    /* around each minibatch of the epoch running */
    uint32_t epoch;
    int synced;
    uint64_t max_lead;
} s_implicit;

static void s_destroy(wk_trainer *base)
{
    s_implicit *t = (s_implicit *)base;
    wk_implicit_destroy(&t->implicit);
    free(t->items);
    free(t->count);
    wk_shard_free(&t->shard);
    free(t);
}

/* Keeps the positives of the loaded shards (train and test alike). */
static int s_positives(s_implicit *t, cm_error *err)
{
    const double thr = t->base.env.p->job->positive_threshold;
    cm_ratings *sets[2] = {&t->shard.train, &t->shard.test};
    size_t *raw[2] = {&t->shard.raw_train, &t->shard.raw_test};
    for (int k = 0; k < 2; k++) {
        cm_ratings pos = {0};
        int rc = wk_implicit_positives(sets[k], thr, &pos, err);
        if (rc != 0)
            return rc;
        *raw[k] = sets[k]->n;
        pos.noise_floor = -1;
        cm_ratings_free(sets[k]);
        *sets[k] = pos;
    }
    t->shard.n_test = t->shard.test.n;
    return 0;
}

/* HELLO, and this shard's items with their positives, for the sampler. */
static int s_hello(wk_trainer *base, wk_hello *out, cm_error *err)
{
    s_implicit *t = (s_implicit *)base;
    wk_shard_hello(&t->shard, &out->hello);
    uint32_t *loc = NULL;
    size_t n = 0;
    int rc = wk_shard_items(&t->shard, &loc, &t->items, &t->count, &n, err);
    free(loc);
    if (rc != 0)
        return rc;
    out->send_items = 1;
    out->items = t->items;
    out->item_count = t->count;
    out->n_items = n;
    return 0;
}

/* The PLAN of an implicit job carries the item universe: sorted keys and
 * their training positives over all workers. */
static int s_plan(wk_trainer *base, const cm_msg *m, wk_kv *kv, const wk_model_ctx *ctx,
                  cm_error *err)
{
    s_implicit *t = (s_implicit *)base;
    t->kv = kv;
    free(t->items);
    free(t->count);
    t->items = NULL;
    t->count = NULL;
    size_t n = (size_t)m->hdr.n_keys;
    if (n == 0 || !m->keys || !m->vals || m->n_vals != n)
        return cm_error_set(err, CM_EPROTO, "worker: the PLAN of an implicit job has no item "
                            "list (%zu keys, %zu counts)", n, m->n_vals);
    t->implicit = wk_implicit_new(t->base.env.p->job, &t->shard.train, &t->shard.test, m->keys,
                                  m->vals, n, t->base.env.dims, err);
    return t->implicit ? 0 : (err ? err->code : CM_ENOMEM);
}

static int s_before(void *arg, uint64_t clock, cm_error *err)
{
    s_implicit *t = arg;
    if (!t->synced)
        return 0;
    const cm_job *job = t->base.env.p->job;
    const uint64_t stale = job->consistency == CM_CONS_BSP ? 0 : (uint64_t)job->staleness;
    int rc = wk_link_wait_clock(t->base.env.link, t->epoch, clock, stale, err);
    const uint64_t least = wk_link_min_clock(t->base.env.link);
    if (rc == 0 && clock > least && clock - least > t->max_lead)
        t->max_lead = clock - least;
    return rc;
}

static int s_after(void *arg, uint64_t clock, size_t done, double loss, cm_error *err)
{
    s_implicit *t = arg;
    int rc;
    if (t->synced && (rc = wk_link_clock(t->base.env.link, t->epoch, clock + 1, err)) != 0)
        return rc;
    return wk_link_progress(t->base.env.link, t->epoch, done, loss, err);
}

static int s_train_epoch(wk_trainer *base, uint32_t epoch, uint32_t round, cm_epoch_done *out,
                         cm_error *err)
{
    s_implicit *t = (s_implicit *)base;
    double loss = 0;
    size_t n = 0;
    t->epoch = epoch;
    t->synced = t->base.env.p->job->consistency != CM_CONS_ASP;
    t->max_lead = 0;
    wk_implicit_hooks hooks = {s_before, s_after, t};
    int rc = wk_implicit_train(t->implicit, t->kv, epoch, t->base.env.p->index, &hooks, &loss, &n,
                               err);
    if (rc != 0)
        return rc;
    *out = (cm_epoch_done){.loss = loss, .n = n,
                           .max_lead = t->synced ? (int64_t)t->max_lead : -1};
    return 0;
}

static int s_evaluate(wk_trainer *base, uint32_t epoch, wk_eval *out, cm_error *err)
{
    s_implicit *t = (s_implicit *)base;
    out->body = CM_BODY_RANKING;
    return wk_implicit_eval(t->implicit, t->kv, &out->ranking, err);
}

static const wk_trainer_ops s_ops = {
    .name = "implicit",
    .hello = s_hello,
    .plan = s_plan,
    .train_epoch = s_train_epoch,
    .evaluate = s_evaluate,
    .destroy = s_destroy,
};

wk_trainer *wk_trainer_implicit_new(const wk_trainer_env *env, cm_error *err)
{
    s_implicit *t = (s_implicit *)wk_trainer_alloc(sizeof *t, &s_ops, env, err);
    if (!t)
        return NULL;
    if (wk_shard_load(env->p, &t->shard, err) != 0 || s_positives(t, err) != 0) {
        s_destroy(&t->base);
        return NULL;
    }
    return &t->base;
}
