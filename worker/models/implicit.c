/* Implicit-feedback matrix factorisation (model = implicit).
 *
 * Tables: 0 users, 1 items, rows [bias, f_1 .. f_k] as mf's so that
 * checkpoints, exports and `psrec recommend` treat both alike; the user
 * bias stays 0. The worker trains it through worker/implicit_train.c (sampled
 * negatives need the item universe, which a model does not see); the ops
 * here are the logistic loss on labelled pairs (label 1 positive, 0
 * negative) and the ranking score, for callers that hold such pairs. */
#include <string.h>

#include "worker/implicit_train.h"
#include "worker/models/model.h"

enum { IM_USER = 0, IM_ITEM = 1 };

/* Returns the summed log loss of the labelled pairs. */
static double s_train(const wk_model_ctx *ctx, const wk_batch *b, int dim,
                      const float *const *rows, float *const *grads)
{
    double loss = 0;
    for (size_t j = 0; j < b->n; j++) {
        const float *p = rows[IM_USER] + (size_t)b->uidx[j] * dim;
        const float *q = rows[IM_ITEM] + (size_t)b->iidx[j] * dim;
        float y = b->label[j] > 0.5f ? 1.f : 0.f;
        loss += wk_logistic_grad(p, q, dim, y, ctx->l2, grads[IM_USER] + (size_t)b->uidx[j] * dim,
                                 grads[IM_ITEM] + (size_t)b->iidx[j] * dim);
    }
    return loss;
}

static void s_predict(const wk_model_ctx *ctx, const wk_batch *b, int dim,
                      const float *const *rows, float *pred)
{
    for (size_t j = 0; j < b->n; j++)
        pred[j] = wk_implicit_score(rows[IM_USER] + (size_t)b->uidx[j] * dim,
                                    rows[IM_ITEM] + (size_t)b->iidx[j] * dim, dim);
}

static const char *const s_table_names[] = {"user", "item"};

const wk_model_ops wk_model_implicit = {
    .name = "implicit",
    .n_tables = 2,
    .table_names = s_table_names,
    .table_params = wk_model_table_user_item,
    .train = s_train,
    .predict = s_predict,
};
