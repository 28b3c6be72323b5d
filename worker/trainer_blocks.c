/* The blocks schedule for rating models (mf): DSGD. The items are cut into
 * k blocks per worker (balanced by the scheduler's item list); in each
 * round every worker trains a different block (wk_dsgd_block), holding its
 * users' rows between checkpoints and moving only the block's item rows.
 * With one block per worker the scheduler's barrier separates the rounds;
 * with k >= 2 a worker runs all of an epoch's rounds itself, the next
 * block's rows coming in while one trains and its deltas going out without
 * waiting, the rounds ordered by a gate on the other workers' pushes. */
#include <stdlib.h>

#include "common/hash.h"
#include "common/log.h"
#include "common/msg.h"
#include "worker/blocks.h"
#include "worker/rating_eval.h"
#include "worker/shard.h"
#include "worker/trainer.h"

typedef struct {
    wk_trainer base;
    wk_shard shard;
    wk_kv *kv;
    wk_model_ctx ctx;
    cm_optim optim;              /* the tables' optimizer */
    wk_blocks *blocks;           /* this shard by item block, from the plan on */
    wk_dsgd *dsgd;               /* which block in which round */
    uint32_t bpw;                /* item blocks per worker */
    uint32_t *iloc;              /* until the plan: each rating's item as a place */
    uint64_t *iuniq;             /* in iuniq, the shard's n_iuniq sorted items */
    float *icount;               /* and their ratings (the second HELLO) */
    size_t n_iuniq;
    uint32_t gate_epoch;         /* k >= 2: the epoch running */
    uint64_t gate_need;          /* rounds every worker must have pushed through */
    uint64_t pushed;             /* rounds whose pushes this worker reported acked */
    uint64_t pushed_target;      /* rounds whose pushes are sent */
    cm_error *gate_err;          /* where the gate reports */
    uint32_t progress_epoch;
    size_t epoch_done;           /* examples trained so far this epoch */
    double epoch_sq;
    wk_rating_eval *eval;        /* from the plan on */
} s_blocks;

static void s_free_items(s_blocks *t)
{
    free(t->iloc);
    free(t->iuniq);
    free(t->icount);
    t->iloc = NULL;
    t->iuniq = NULL;
    t->icount = NULL;
}

static void s_destroy(wk_trainer *base)
{
    s_blocks *t = (s_blocks *)base;
    wk_rating_eval_destroy(&t->eval);
    wk_blocks_destroy(&t->blocks);
    wk_dsgd_destroy(&t->dsgd);
    s_free_items(t);
    wk_shard_free(&t->shard);
    free(t);
}

/* HELLO, and this shard's items for the scheduler to balance the blocks
 * (wk_blocks_new numbers them alike). */
static int s_hello(wk_trainer *base, wk_hello *out, cm_error *err)
{
    s_blocks *t = (s_blocks *)base;
    wk_shard_hello(&t->shard, &out->hello);
    int rc = wk_shard_items(&t->shard, &t->iloc, &t->iuniq, &t->icount, &t->n_iuniq, err);
    if (rc != 0)
        return rc;
    out->send_items = 1;
    out->items = t->iuniq;
    out->item_count = t->icount;
    out->n_items = t->n_iuniq;
    return 0;
}

/* The plan lists every worker's items with their training ratings: the
 * blocks are cut by it. */
static int s_plan(wk_trainer *base, const cm_msg *m, wk_kv *kv, const wk_model_ctx *ctx,
                  cm_error *err)
{
    s_blocks *t = (s_blocks *)base;
    const wk_params *p = t->base.env.p;
    int rc = 0;
    t->kv = kv;
    t->ctx = *ctx;
    const size_t n_items = m->keys && m->vals && m->n_vals == m->hdr.n_keys ? m->hdr.n_keys : 0;
    wk_block_map map = {m->keys, m->vals, n_items};
    const uint32_t k = m->hdr.plan.blocks_per_worker;
    t->bpw = k >= 1 && k <= CM_MAX_BLOCKS_PER_WORKER ? k : 1;
    if (!(t->dsgd = wk_dsgd_new(p->n_workers, t->bpw, p->job->seed))) {
        s_free_items(t);
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory");
    }
    const wk_key_index items = {t->iloc, t->iuniq, t->n_iuniq};
    const cm_table_spec *user_init = p->job->resume[0] ? NULL : &t->base.env.tables[0];
    if (!(t->blocks = wk_blocks_new(&t->shard.train, t->bpw * p->n_workers, t->base.env.dims[0],
                                    t->base.env.row_floats, user_init, &map,
                                    t->iloc ? &items : NULL, err)))
        rc = err ? err->code : CM_ENOMEM;
    s_free_items(t);
    double before = -1, after = -1;
    if (rc == 0)
        wk_blocks_spread(t->blocks, &before, &after);
    if (p->index == 0 && after >= 0)
        cm_log(CM_LOG_INFO, "blocks: %u of %zu items, max/mean ratings per block %.3f "
               "by hash, %.3f balanced", t->bpw * p->n_workers, n_items, before, after);
    if (rc == 0 && !(t->eval = wk_rating_eval_new(p, &t->shard, t->base.env.model,
                                                  t->base.env.dims, kv, t->blocks, err)))
        rc = CM_ENOMEM;
    return rc;
}

static int s_progress(void *arg, size_t done)
{
    s_blocks *t = arg;
    return wk_link_progress(t->base.env.link, t->progress_epoch, t->epoch_done + done, t->epoch_sq,
                            NULL);
}

/* k >= 2 per worker: the gate before pulling the next round's block. That
 * block was last trained k - 1 rounds before this one, so its rows may be
 * pulled once every worker's pushes of that round are acknowledged
 * (gate_need rounds pushed through): each worker reports its own (a CLOCK
 * of rounds pushed through) as the acks come in, and the scheduler
 * publishes the least of them. */
static int s_gate(void *arg, int wait)
{
    s_blocks *t = arg;
    cm_error *err = t->gate_err;
    wk_link *link = t->base.env.link;
    for (;;) {
        int rc = wait ? wk_kv_flush(t->kv, err) : wk_kv_poll(t->kv, err);
        if (rc != 0)
            return rc;
        if (t->pushed < t->pushed_target && wk_kv_pushes_pending(t->kv) == 0) {
            if ((rc = wk_link_clock(link, t->gate_epoch, t->pushed_target, err)) != 0)
                return rc;
            t->pushed = t->pushed_target;
        }
        if (wk_link_min_clock(link) >= t->gate_need)
            return 1;
        rc = wk_link_recv_clock(link, t->gate_epoch, wait, "the other workers' pushes", err);
        if (rc == CM_ETIMEDOUT && !wait)
            return 0;
        if (rc != 0)
            return rc;
    }
}

/* One pass over block `block` of `epoch`. */
static int s_pass(s_blocks *t, uint32_t epoch, uint32_t block, uint32_t next, int async,
                  double *sq, size_t *n, cm_error *err)
{
    const wk_params *p = t->base.env.p;
    wk_block_pass pass = {
        .block = block,
        .next = next,
        .seed = cm_mix64(p->job->seed ^
                         cm_mix64(((uint64_t)epoch << 40) ^ ((uint64_t)block << 20) ^ p->index)),
        .progress = s_progress,
        .gate = async ? s_gate : NULL,
        .arg = t,
        .async = async,
    };
    size_t before = *n;
    double sq_before = *sq;
    int rc = wk_blocks_train(t->blocks, t->kv, t->base.env.model, &t->ctx, &t->optim, &pass, sq, n,
                             err);
    t->epoch_done += *n - before; /* for the progress reports */
    t->epoch_sq += *sq - sq_before;
    return rc;
}

/* The EPOCH order of round `round`. One block per worker: this round's
 * block. k >= 2: all kW rounds of the epoch, ordered by the gate alone;
 * every push is acknowledged before it returns. */
static int s_train_epoch(wk_trainer *base, uint32_t epoch, uint32_t round, cm_epoch_done *out,
                         cm_error *err)
{
    s_blocks *t = (s_blocks *)base;
    const uint32_t me = t->base.env.p->index;
    if (round == 0) {
        t->epoch_done = 0;
        t->epoch_sq = 0;
    }
    t->progress_epoch = epoch;
    double sq = 0;
    size_t n = 0;
    int rc = 0;
    if (t->bpw == 1) {
        rc = s_pass(t, epoch, wk_dsgd_block(t->dsgd, me, epoch, round), UINT32_MAX, 0, &sq, &n,
                    err);
    } else {
        const uint32_t k = t->bpw, nb = k * t->base.env.p->n_workers;
        t->gate_epoch = epoch;
        t->gate_err = err;
        t->pushed = t->pushed_target = 0;
        for (uint32_t r = 0; r < nb && rc == 0; r++) {
            /* the next block was last trained in round r + 1 - k: every
             * worker's pushes through that round */
            t->gate_need = r + 2 > k ? r + 2 - k : 0;
            t->pushed_target = r;
            uint32_t next = r + 1 < nb ? wk_dsgd_block(t->dsgd, me, epoch, r + 1) : UINT32_MAX;
            rc = s_pass(t, epoch, wk_dsgd_block(t->dsgd, me, epoch, r), next, 1, &sq, &n, err);
        }
        if (rc == 0)
            rc = wk_kv_flush(t->kv, err);
    }
    if (rc != 0)
        return rc;
    *out = (cm_epoch_done){.loss = sq, .n = n, .max_lead = -1};
    return 0;
}

static int s_evaluate(wk_trainer *base, uint32_t epoch, wk_eval *out, cm_error *err)
{
    s_blocks *t = (s_blocks *)base;
    out->body = CM_BODY_EVAL;
    return wk_rating_eval_run(t->eval, epoch, &t->ctx, &out->eval, err);
}

/* The user rows live on the worker between checkpoints: push their
 * changes so the servers' files hold the whole model. */
static int s_before_checkpoint(wk_trainer *base, cm_error *err)
{
    s_blocks *t = (s_blocks *)base;
    double t0 = cm_now();
    int rc = wk_blocks_writeback(t->blocks, t->kv, err);
    if (rc == 0)
        cm_log(CM_LOG_DEBUG, "worker %u: user rows written back in %.3f s", t->base.env.p->index,
               cm_now() - t0);
    return rc;
}

static const wk_trainer_ops s_ops = {
    .name = "blocks",
    .hello = s_hello,
    .plan = s_plan,
    .train_epoch = s_train_epoch,
    .evaluate = s_evaluate,
    .before_checkpoint = s_before_checkpoint,
    .destroy = s_destroy,
};

wk_trainer *wk_trainer_blocks_new(const wk_trainer_env *env, cm_error *err)
{
    s_blocks *t = (s_blocks *)wk_trainer_alloc(sizeof *t, &s_ops, env, err);
    if (!t)
        return NULL;
    /* the tables share one optimizer; the last table's, as ever */
    t->optim = env->tables[env->model->n_tables - 1].optim;
    if (wk_shard_load(env->p, &t->shard, err) != 0 ||
        wk_shard_validation(env->p, &t->shard, err) != 0) {
        s_destroy(&t->base);
        return NULL;
    }
    return &t->base;
}
