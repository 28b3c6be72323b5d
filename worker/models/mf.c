/* Biased matrix factorisation, explicit feedback.
 *
 * Tables: 0 users, 1 items; a row is [bias, f_1 .. f_k] (dim k+1), so one
 * pull fetches both the bias and the factors of a key.
 *   prediction  r^ = mean + b_u + b_i + <p_u, q_i>
 *   loss        1/2 (r^ - r)^2 + l2/2 (b_u^2 + |p_u|^2 + b_i^2 + |q_i|^2)
 * The regulariser is charged per occurrence, as in per-rating SGD. */
#include <math.h>
#include <string.h>

#include "worker/models/model.h"

enum { MF_USER = 0, MF_ITEM = 1 };

static void s_table_params(const cm_job *job, size_t t, ps_table_params *out)
{
    memset(out, 0, sizeof *out);
    out->dim = job->dim + 1;
    out->zero_prefix = 1;
    out->init_std = (float)job->init_std;
    out->seed = job->seed * 2 + t + 1;
    wk_model_table_common(job, out);
}

static inline float s_dot(const float *restrict a, const float *restrict b, int n)
{
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < n; j++)
        s += a[j] * b[j];
    return s;
}

static double s_train(const wk_model_ctx *ctx, const wk_batch *b, int dim,
                      const float *const *rows, float *const *grads)
{
    const float l2 = ctx->l2;
    double sq = 0;
    for (size_t j = 0; j < b->n; j++) {
        const float *p = rows[MF_USER] + (size_t)b->uidx[j] * dim;
        const float *q = rows[MF_ITEM] + (size_t)b->iidx[j] * dim;
        float *gp = grads[MF_USER] + (size_t)b->uidx[j] * dim;
        float *gq = grads[MF_ITEM] + (size_t)b->iidx[j] * dim;
        float e = ctx->mean + p[0] + q[0] + s_dot(p + 1, q + 1, dim - 1) - b->label[j];
        sq += (double)e * e;
        gp[0] += e + l2 * p[0];
        gq[0] += e + l2 * q[0];
        for (int k = 1; k < dim; k++) {
            gp[k] += e * q[k] + l2 * p[k];
            gq[k] += e * p[k] + l2 * q[k];
        }
    }
    return sq;
}

static void s_predict(const wk_model_ctx *ctx, const wk_batch *b, int dim,
                      const float *const *rows, float *pred)
{
    for (size_t j = 0; j < b->n; j++) {
        const float *p = rows[MF_USER] + (size_t)b->uidx[j] * dim;
        const float *q = rows[MF_ITEM] + (size_t)b->iidx[j] * dim;
        pred[j] = ctx->mean + p[0] + q[0] + s_dot(p + 1, q + 1, dim - 1);
    }
}

/* Applies a row's gradient g with the optimizers whose state is small
 * (SGD, row-wise AdaGrad) inline; the others go through the optimizer. */
static inline void s_apply(const ps_optim *o, float *restrict w, const float *restrict g,
                           int dim)
{
    if (o->kind != CM_OPT_SGD && o->kind != CM_OPT_ROWWISE) {
        ps_optim_update(o, w, g, dim);
        return;
    }
    float step = o->lr;
    if (o->kind == CM_OPT_ROWWISE) {
        float n2 = 0.f;
#pragma omp simd reduction(+ : n2)
        for (int k = 0; k < dim; k++)
            n2 += g[k] * g[k];
        w[dim] += n2 / (float)dim;
        step = o->lr / sqrtf(w[dim] + o->eps);
    }
    for (int k = 0; k < dim; k++)
        w[k] -= step * g[k];
}

static double s_train_local(const wk_model_ctx *ctx, const ps_optim *o, const wk_rating *r,
                            size_t n, int dim, wk_rows users, wk_rows items)
{
    float gp[1100], gq[1100]; /* dim <= 1025 (config) */
    const float l2 = ctx->l2;
    double sq = 0;
    for (size_t j = 0; j < n; j++) {
        float *p = users.rows + (size_t)r[j].u * users.stride;
        float *q = items.rows + (size_t)r[j].i * items.stride;
        float e = ctx->mean + p[0] + q[0] + s_dot(p + 1, q + 1, dim - 1) - r[j].r;
        gp[0] = e + l2 * p[0];
        gq[0] = e + l2 * q[0];
        for (int k = 1; k < dim; k++) {
            gp[k] = e * q[k] + l2 * p[k];
            gq[k] = e * p[k] + l2 * q[k];
        }
        s_apply(o, p, gp, dim);
        s_apply(o, q, gq, dim);
        sq += (double)e * e;
    }
    return sq;
}

static const char *const s_table_names[] = {"user", "item"};

const wk_model_ops wk_model_mf = {
    .name = "mf",
    .n_tables = 2,
    .table_names = s_table_names,
    .table_params = s_table_params,
    .train = s_train,
    .predict = s_predict,
    .train_local = s_train_local,
};
