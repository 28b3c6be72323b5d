/* Biased matrix factorisation, explicit feedback.
 *
 * Tables: 0 users, 1 items; a row is [bias, f_1 .. f_k] (dim k+1), so one
 * pull fetches both the bias and the factors of a key.
 *   prediction  r^ = mean + b_u + b_i + <p_u, q_i>
 *   loss        1/2 (r^ - r)^2 + l2/2 (b_u^2 + |p_u|^2 + b_i^2 + |q_i|^2)
 * The regulariser is charged per occurrence, as in per-rating SGD. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/optim.h"
#include "worker/models/model.h"

enum { MF_USER = 0, MF_ITEM = 1 };

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
        float e = ctx->mean + p[0] + q[0] + wk_dot(p + 1, q + 1, dim - 1) - b->label[j];
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
        pred[j] = ctx->mean + p[0] + q[0] + wk_dot(p + 1, q + 1, dim - 1);
    }
}

/* Applies a row's gradient g with the optimizers whose state is small
 * (SGD, row-wise AdaGrad) inline, with the rules of common/optim.h; the
 * others go through cm_optim_update. */
static inline void s_apply(const cm_optim *o, float *restrict w, const float *restrict g,
                           int dim)
{
    if (o->kind != CM_OPT_SGD && o->kind != CM_OPT_ROWWISE) {
        cm_optim_update(o, w, g, dim);
        return;
    }
    float step = o->lr;
    if (o->kind == CM_OPT_ROWWISE) {
        float n2 = 0.f;
#pragma omp simd reduction(+ : n2)
        for (int k = 0; k < dim; k++)
            n2 += g[k] * g[k];
        step = cm_optim_rowwise_step(&w[dim], n2, dim, o->lr, o->eps);
    }
    for (int k = 0; k < dim; k++)
        w[k] -= step * g[k];
}

/* ---- blocks schedule: per-rating SGD on held rows ----------------------
 *
 * One rating reads and writes a user row and an item row that are usually
 * not in L1 (items of a block and users of a group are picked at random), so
 * the rows of the rating S_AHEAD places on are prefetched while this one is
 * computed. Rows are read in whole cache lines: row_floats floats. */
#define S_AHEAD 8

static inline void s_prefetch_row(const float *row, size_t bytes)
{
    const char *end = (const char *)row + bytes;
    for (const char *c = (const char *)((uintptr_t)row & ~(uintptr_t)63); c < end; c += 64)
        __builtin_prefetch(c, 1, 3);
}

/* The plain loop: gradients of the rating's loss, then the optimizer's rule
 * (cm_optim_update for the per-weight ones). The path for Adam and FTRL,
 * and for every optimizer in builds without AVX-512. */
static double s_local_plain(const wk_model_ctx *ctx, const cm_optim *o, const wk_rating *r,
                            size_t n, int dim, wk_rows users, wk_rows items)
{
    float gp[1100], gq[1100]; /* dim <= 1025 (config) */
    const float l2 = ctx->l2;
    const size_t bytes = (size_t)(dim + cm_optim_state_floats(o->kind, dim)) * sizeof(float);
    double sq = 0;
    for (size_t j = 0; j < n; j++) {
        if (j + S_AHEAD < n) {
            s_prefetch_row(users.rows + (size_t)r[j + S_AHEAD].u * users.stride, bytes);
            s_prefetch_row(items.rows + (size_t)r[j + S_AHEAD].i * items.stride, bytes);
        }
        float *p = users.rows + (size_t)r[j].u * users.stride;
        float *q = items.rows + (size_t)r[j].i * items.stride;
        float e = ctx->mean + p[0] + q[0] + wk_dot(p + 1, q + 1, dim - 1) - r[j].r;
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

#if defined(__AVX512F__)
/* AVX-512: a row is walked in chunks of 16 weights (the last one masked).
 * Weight 0 is the bias: it is left out of the dot product, and its
 * gradient takes 1 where the factors take the other row's weight, so the
 * same fused step serves both. The steps are common/optim.h's vector forms
 * (AdaGrad's 1/sqrt through vrsqrt14 and a Newton step, within a few ulps
 * of the server's division). The bias-lane and tail masks make
 * one code path for every dim; inlined with a constant dim (the common
 * dim 32 + bias = 33) the chunk loops unroll. A last chunk of a single
 * weight (dims 17, 33, 49...) is done in scalar code, exactly as the
 * server's rule, which is about a third faster at dim 33 than a vector
 * step for one float (except row-wise AdaGrad, which needs the whole
 * gradient's norm first). */
static inline __attribute__((always_inline)) double
s_local_avx512(const wk_model_ctx *ctx, const cm_optim *o, const wk_rating *r, size_t n,
               const int dim, wk_rows users, wk_rows items)
{
    const int kind = o->kind;
    const int nc = (dim + 15) / 16;
    const __mmask16 last = (__mmask16)(0xFFFFu >> (nc * 16 - dim));
    /* a last chunk of one weight (dim 33: 32 factors and the bias) costs a
     * whole vector step for one float: done in scalar instead */
    const int one_tail = kind != CM_OPT_ROWWISE && dim % 16 == 1 && dim > 1;
    const int nv = one_tail ? nc - 1 : nc;
    const __m512 ve2 = _mm512_set1_ps(ctx->l2), vlr = _mm512_set1_ps(o->lr);
    const __m512 veps = _mm512_set1_ps(o->eps), one = _mm512_set1_ps(1.0f);
    const size_t bytes = (size_t)(dim + cm_optim_state_floats(kind, dim)) * sizeof(float);
    float gp[1104] __attribute__((aligned(64)));
    float gq[1104] __attribute__((aligned(64)));
    double sq = 0;
    for (size_t j = 0; j < n; j++) {
        if (j + S_AHEAD < n) {
            s_prefetch_row(users.rows + (size_t)r[j + S_AHEAD].u * users.stride, bytes);
            s_prefetch_row(items.rows + (size_t)r[j + S_AHEAD].i * items.stride, bytes);
        }
        float *p = users.rows + (size_t)r[j].u * users.stride;
        float *q = items.rows + (size_t)r[j].i * items.stride;
        __m512 acc = _mm512_setzero_ps();
        float tail_dot = 0.f;
        if (one_tail)
            tail_dot = p[dim - 1] * q[dim - 1];
        for (int c = 0; c < nv; c++) {
            __mmask16 m = c == nc - 1 ? last : 0xFFFF;
            __mmask16 md = c == 0 ? (__mmask16)(m & 0xFFFE) : m;
            __m512 pv = _mm512_maskz_loadu_ps(md, p + 16 * c);
            __m512 qv = _mm512_maskz_loadu_ps(md, q + 16 * c);
            acc = _mm512_fmadd_ps(pv, qv, acc);
        }
        const float dot = _mm512_reduce_add_ps(acc) + tail_dot;
        const float e = ctx->mean + p[0] + q[0] + dot - r[j].r;
        const __m512 ve = _mm512_set1_ps(e);
        __m512 np = _mm512_setzero_ps(), nq = _mm512_setzero_ps();
        if (one_tail) { /* the last weight alone: scalar, the server's exact rule */
            const int k = dim - 1;
            const float pk = p[k], qk = q[k];
            const float tp = e * qk + ctx->l2 * pk, tq = e * pk + ctx->l2 * qk;
            if (kind == CM_OPT_ADAGRAD) {
                cm_optim_adagrad1(&p[k], &p[dim + k], tp, o->lr, o->eps);
                cm_optim_adagrad1(&q[k], &q[dim + k], tq, o->lr, o->eps);
            } else if (kind == CM_OPT_SGD) {
                p[k] = pk - o->lr * tp;
                q[k] = qk - o->lr * tq;
            }
        }
        for (int c = 0; c < nv; c++) {
            __mmask16 m = c == nc - 1 ? last : 0xFFFF;
            __m512 pv = _mm512_maskz_loadu_ps(m, p + 16 * c);
            __m512 qv = _mm512_maskz_loadu_ps(m, q + 16 * c);
            __m512 po = c == 0 ? _mm512_mask_blend_ps(1, pv, one) : pv;
            __m512 qo = c == 0 ? _mm512_mask_blend_ps(1, qv, one) : qv;
            __m512 g1 = _mm512_fmadd_ps(ve, qo, _mm512_mul_ps(ve2, pv));
            __m512 g2 = _mm512_fmadd_ps(ve, po, _mm512_mul_ps(ve2, qv));
            if (kind == CM_OPT_ADAGRAD) {
                __m512 a1 = _mm512_maskz_loadu_ps(m, p + dim + 16 * c);
                __m512 a2 = _mm512_maskz_loadu_ps(m, q + dim + 16 * c);
                const __m512 w1 = cm_optim_adagrad16(pv, g1, &a1, vlr, veps);
                const __m512 w2 = cm_optim_adagrad16(qv, g2, &a2, vlr, veps);
                _mm512_mask_storeu_ps(p + dim + 16 * c, m, a1);
                _mm512_mask_storeu_ps(q + dim + 16 * c, m, a2);
                _mm512_mask_storeu_ps(p + 16 * c, m, w1);
                _mm512_mask_storeu_ps(q + 16 * c, m, w2);
            } else if (kind == CM_OPT_SGD) {
                _mm512_mask_storeu_ps(p + 16 * c, m, cm_optim_sgd16(pv, g1, vlr));
                _mm512_mask_storeu_ps(q + 16 * c, m, cm_optim_sgd16(qv, g2, vlr));
            } else { /* row-wise: the step needs the whole gradient first */
                np = _mm512_fmadd_ps(g1, g1, np);
                nq = _mm512_fmadd_ps(g2, g2, nq);
                _mm512_store_ps(gp + 16 * c, g1);
                _mm512_store_ps(gq + 16 * c, g2);
            }
        }
        if (kind == CM_OPT_ROWWISE) {
            const __m512 sp = _mm512_set1_ps(
                cm_optim_rowwise_step(&p[dim], _mm512_reduce_add_ps(np), dim, o->lr, o->eps));
            const __m512 sq_ = _mm512_set1_ps(
                cm_optim_rowwise_step(&q[dim], _mm512_reduce_add_ps(nq), dim, o->lr, o->eps));
            for (int c = 0; c < nc; c++) {
                __mmask16 m = c == nc - 1 ? last : 0xFFFF;
                __m512 pv = _mm512_maskz_loadu_ps(m, p + 16 * c);
                __m512 qv = _mm512_maskz_loadu_ps(m, q + 16 * c);
                _mm512_mask_storeu_ps(p + 16 * c, m,
                                      cm_optim_sgd16(pv, _mm512_load_ps(gp + 16 * c), sp));
                _mm512_mask_storeu_ps(q + 16 * c, m,
                                      cm_optim_sgd16(qv, _mm512_load_ps(gq + 16 * c), sq_));
            }
        }
        sq += (double)e * e;
    }
    return sq;
}
#endif

static double s_train_local(const wk_model_ctx *ctx, const cm_optim *o, const wk_rating *r,
                            size_t n, int dim, wk_rows users, wk_rows items)
{
#if defined(__AVX512F__)
    if (o->kind == CM_OPT_ADAGRAD || o->kind == CM_OPT_SGD || o->kind == CM_OPT_ROWWISE) {
        if (dim == 33)
            return s_local_avx512(ctx, o, r, n, 33, users, items);
        if (dim == 17)
            return s_local_avx512(ctx, o, r, n, 17, users, items);
        return s_local_avx512(ctx, o, r, n, dim, users, items);
    }
#endif
    return s_local_plain(ctx, o, r, n, dim, users, items);
}

static const char *const s_table_names[] = {"user", "item"};

const wk_model_ops wk_model_mf = {
    .name = "mf",
    .n_tables = 2,
    .table_names = s_table_names,
    .table_params = wk_model_table_user_item,
    .train = s_train,
    .predict = s_predict,
    .train_local = s_train_local,
};
