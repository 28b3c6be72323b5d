/* Factorization machine (Rendle 2010) over sparse features.
 *
 * One table keyed by feature: a row is [w, v_1 .. v_k] (dim k+1); the
 * global bias w0 is the first weight of the row of WK_FM_BIAS_KEY.
 *   score   y = w0 + sum_i w_i x_i
 *               + 1/2 sum_f [ (sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2 ]
 *   loss    regression: 1/2 (y - t)^2;  binary: log(1 + e^-y) for t = 1,
 *           log(1 + e^y) for t = 0 (t in {0, 1})
 *           + l2/2 (w_i^2 + |v_i|^2) per occurrence of feature i
 *   dL/dy   regression: y - t;  binary: sigmoid(y) - t
 *   dy/dw_i = x_i,  dy/dv_if = x_i s_f - v_if x_i^2, s_f = sum_j v_jf x_j
 * The bias is not regularised. A constant offset (the training mean, for
 * regression) is added to y so the bias starts near its value. */
#include <math.h>
#include <string.h>

#include "common/features.h"
#include "worker/models/model.h"

#define S_MAX_DIM 1100

static void s_table_params(const cm_job *job, size_t t, cm_table_spec *out)
{
    (void)t;
    memset(out, 0, sizeof *out);
    out->dim = job->dim + 1;
    out->zero_prefix = 1;
    out->init_std = (float)job->init_std;
    out->seed = job->seed * 2 + 1;
    wk_model_table_common(job, out);
}

/* Score of example j (plus the context's offset); s (2k floats) receives
 * sum_i v_if x_i in s[0 .. k), and sum_i (v_if x_i)^2 in s[k .. 2k) as
 * scratch. Both sums run per factor f, element by element (one vector
 * lane per f, no reduction across lanes), so the loop over an example's
 * features vectorizes; the two sums over f close the score once. */
static float s_score(const wk_model_ctx *ctx, const wk_sparse_batch *b, size_t j, int dim,
                     const float *rows, float *s)
{
    const int k = dim - 1;
    float *restrict sv = s, *restrict sq = s + k;
    float y = (ctx ? ctx->offset : 0.f) + rows[(size_t)b->bias_row * dim];
    memset(s, 0, 2 * (size_t)k * sizeof *s);
    for (uint64_t a = b->at[j]; a < b->at[j + 1]; a++) {
        const float *restrict r = rows + (size_t)b->idx[a] * dim;
        const float x = b->val[a];
        y += r[0] * x;
        for (int f = 0; f < k; f++) {
            const float vx = r[1 + f] * x;
            sv[f] += vx;
            sq[f] += vx * vx;
        }
    }
    float pair = 0.f;
    for (int f = 0; f < k; f++)
        pair += sv[f] * sv[f] - sq[f];
    return y + 0.5f * pair;
}

static void s_predict_sparse(const wk_model_ctx *ctx, const wk_sparse_batch *b, int dim,
                             const float *rows, float *score)
{
    float s[2 * S_MAX_DIM];
    for (size_t j = 0; j < b->n; j++)
        score[j] = s_score(ctx, b, j, dim, rows, s);
}

static double s_train_sparse(const wk_model_ctx *ctx, int task, const wk_sparse_batch *b,
                             int dim, const float *rows, float *grads)
{
    const int k = dim - 1;
    const float l2 = ctx->l2;
    float s[2 * S_MAX_DIM];
    double loss = 0;
    for (size_t j = 0; j < b->n; j++) {
        const float y = s_score(ctx, b, j, dim, rows, s), t = b->label[j];
        float g;
        loss += wk_model_loss(task, y, t, &g);
        grads[(size_t)b->bias_row * dim] += g;
        for (uint64_t a = b->at[j]; a < b->at[j + 1]; a++) {
            const float *r = rows + (size_t)b->idx[a] * dim;
            float *gr = grads + (size_t)b->idx[a] * dim;
            const float x = b->val[a];
            gr[0] += g * x + l2 * r[0];
            for (int f = 0; f < k; f++)
                gr[1 + f] += g * (x * s[f] - r[1 + f] * x * x) + l2 * r[1 + f];
        }
    }
    return loss;
}

static const char *const s_table_names[] = {"feature"};

const wk_model_ops wk_model_fm = {
    .name = "fm",
    .n_tables = 1,
    .table_names = s_table_names,
    .table_params = s_table_params,
    .train_sparse = s_train_sparse,
    .predict_sparse = s_predict_sparse,
};
