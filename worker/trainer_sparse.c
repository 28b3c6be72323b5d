/* The trainer of the sparse-feature models (fm, ffm, deep): the
 * examples, minibatches and evaluation are worker/sparse.h's; this file
 * ties them to the worker's orders. */
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/metrics.h"
#include "worker/reglearn.h"
#include "worker/sparse.h"
#include "worker/trainer.h"

typedef struct {
    wk_trainer base;
    wk_sparse *sparse;
    wk_kv *kv;
    wk_model_ctx ctx;
    uint32_t progress_epoch;
    uint64_t *hist;        /* binary tasks: the AUC histograms (pos, then neg) */
} s_sparse;

static void s_destroy(wk_trainer *base)
{
    s_sparse *t = (s_sparse *)base;
    wk_sparse_destroy(&t->sparse);
    free(t->hist);
    free(t);
}

static int s_hello(wk_trainer *base, wk_hello *out, cm_error *err)
{
    s_sparse *t = (s_sparse *)base;
    wk_sparse_hello(t->sparse, &out->hello, out->hello.slot_load,
                    (uint32_t)out->hello.n_slot_load);
    return 0;
}

static int s_plan(wk_trainer *base, const cm_msg *m, wk_kv *kv, const wk_model_ctx *ctx,
                  cm_error *err)
{
    s_sparse *t = (s_sparse *)base;
    t->kv = kv;
    t->ctx = *ctx;
    /* regression scores start from the mean; binary ones from 0 */
    t->ctx.offset = wk_sparse_task(t->sparse) != CM_TASK_BINARY ? t->ctx.mean : 0.f;
    return 0;
}

static int s_progress(void *arg, size_t done, double loss)
{
    s_sparse *t = arg;
    return wk_link_progress(t->base.env.link, t->progress_epoch, done, loss, NULL);
}

/* One epoch of minibatches. The loss reported is the squared error
 * (regression) or the log loss (binary) summed. */
static int s_train_epoch(wk_trainer *base, uint32_t epoch, uint32_t round, cm_epoch_done *out,
                         cm_error *err)
{
    s_sparse *t = (s_sparse *)base;
    const wk_params *p = t->base.env.p;
    double loss = 0;
    size_t n = 0;
    t->progress_epoch = epoch;
    uint64_t seed = cm_mix64(p->job->seed ^ cm_mix64(((uint64_t)p->index << 32) | epoch));
    int rc = wk_sparse_train(t->sparse, t->kv, t->base.env.model, &t->ctx, seed, s_progress, t,
                             &loss, &n, err);
    if (rc != 0)
        return rc;
    if (wk_sparse_task(t->sparse) != CM_TASK_BINARY)
        loss *= 2; /* the model sums (y - t)^2 / 2 */
    /* sparse jobs have always reported a lead of 0 */
    *out = (cm_epoch_done){.loss = loss, .n = n, .max_lead = 0};
    return 0;
}

/* Error sums of the test and validation rows, and AUC histograms for
 * binary tasks. */
static int s_evaluate(wk_trainer *base, uint32_t epoch, wk_eval *out, cm_error *err)
{
    s_sparse *t = (s_sparse *)base;
    const wk_params *p = t->base.env.p;
    const int binary = wk_sparse_task(t->sparse) == CM_TASK_BINARY;
    const int learn = p->job->regularization == 1;
    if (binary && !t->hist && !(t->hist = malloc(2 * (size_t)CM_AUC_BINS * sizeof *t->hist)))
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory");
    uint64_t *pos = binary ? t->hist : NULL, *neg = binary ? t->hist + CM_AUC_BINS : NULL;
    if (binary)
        memset(t->hist, 0, 2 * (size_t)CM_AUC_BINS * sizeof *t->hist);
    wk_sparse_sums test, valid;
    wk_reg_sums reg = {0};
    int rc = wk_sparse_eval(t->sparse, t->kv, t->base.env.model, &t->ctx, &test, pos, neg, err);
    if (rc == 0)
        rc = wk_sparse_eval_valid(t->sparse, t->kv, t->base.env.model, &t->ctx, &valid,
                                  learn ? &reg : NULL, err);
    if (rc != 0)
        return rc;
    if (learn)
        t->ctx.l2 = wk_reg_learn(t->ctx.l2, &reg, p->job->lr, p->index, epoch);
    out->body = CM_BODY_EVAL;
    out->eval = (cm_eval_done){
        .test_sq = test.sq, .test_abs = test.abs, .test_n = test.n,
        .test_logloss = test.logloss, .valid_sq = valid.sq, .valid_abs = valid.abs,
        .valid_n = valid.n, .valid_logloss = valid.logloss,
        .n_auc = binary ? CM_AUC_BINS : 0, .auc_pos = pos, .auc_neg = neg};
    return 0;
}

static const wk_trainer_ops s_ops = {
    .name = "sparse",
    .hello = s_hello,
    .plan = s_plan,
    .train_epoch = s_train_epoch,
    .evaluate = s_evaluate,
    .destroy = s_destroy,
};

wk_trainer *wk_trainer_sparse_new(const wk_trainer_env *env, cm_error *err)
{
    s_sparse *t = (s_sparse *)wk_trainer_alloc(sizeof *t, &s_ops, env, err);
    if (!t)
        return NULL;
    const wk_params *p = env->p;
    if (!(t->sparse = wk_sparse_new(p->job, p->index, p->n_workers, env->dims[0], err))) {
        s_destroy(&t->base);
        return NULL;
    }
    return &t->base;
}
