/* Field-aware factorization machine (Juan et al. 2016) over sparse
 * features with a field per occurrence.
 *
 * One table keyed by feature; a row is [w, v_0, .., v_{F-1}] with one
 * latent vector v_f of k floats per field f the feature may meet
 * (dim 1 + F k); the global bias w0 is the first weight of the row of
 * WK_FM_BIAS_KEY. For example features i with value x_i and field f_i:
 *   score   y = w0 + sum_i w_i x_i + sum_{i<j} <v_{i,f_j}, v_{j,f_i}> x_i x_j
 *   loss    as fm.c: regression 1/2 (y - t)^2, binary logistic (t in {0, 1}),
 *           + l2/2 |row_i|^2 per occurrence of feature i (w and every v_f)
 *   dy/dw_i = x_i,  dy/dv_{i,f_j} = v_{j,f_i} x_i x_j (summed over the j
 *           paired with i)
 * The bias is not regularised; the context's offset is added to y. The
 * pair sum is O(n^2 k) per example of n features: FFM has no linear-time
 * rewrite, which is why fields should be few and examples short.
 *
 * F is the batch's n_fields (k = (dim - 1) / F), fields come with the
 * batch's wk_sparse_extra. A batch without fields (NULL field) is read as
 * one field: an FM. */
#include <math.h>
#include <string.h>

#include "common/features.h"
#include "worker/models/model.h"

static void s_table_params(const cm_job *job, size_t t, cm_table_spec *out)
{
    (void)t;
    memset(out, 0, sizeof *out);
    /* fields = 0 is resolved by the launcher; 1 keeps a stray caller safe */
    const int f = job->fields > 0 ? job->fields : 1;
    out->dim = 1 + f * job->dim;
    out->zero_prefix = 1;
    out->init_std = (float)job->init_std;
    out->seed = job->seed * 2 + 1;
    wk_model_table_common(job, out);
}

static uint32_t s_fields(const wk_sparse_extra *x)
{
    return x->field && x->n_fields > 0 ? x->n_fields : 1;
}

static uint32_t s_field(const wk_sparse_extra *x, uint32_t n_fields, uint64_t a)
{
    if (!x->field)
        return 0;
    return x->field[a] < n_fields ? x->field[a] : n_fields - 1;
}

/* Score of example j, plus the context's offset. */
static float s_score(const wk_model_ctx *ctx, const wk_sparse_batch *b,
                     const wk_sparse_extra *x, size_t j, int dim, const float *rows)
{
    const uint32_t nf = s_fields(x);
    const int k = (dim - 1) / (int)nf;
    float y = (ctx ? ctx->offset : 0.f) + rows[(size_t)b->bias_row * dim];
    for (uint64_t a = b->at[j]; a < b->at[j + 1]; a++) {
        const float *ra = rows + (size_t)b->idx[a] * dim;
        const float xa = b->val[a];
        const uint32_t fa = s_field(x, nf, a);
        y += ra[0] * xa;
        for (uint64_t c = a + 1; c < b->at[j + 1]; c++) {
            const float *rc = rows + (size_t)b->idx[c] * dim;
            const uint32_t fc = s_field(x, nf, c);
            const float *va = ra + 1 + (size_t)fc * k, *vc = rc + 1 + (size_t)fa * k;
            float dot = 0.f;
            for (int q = 0; q < k; q++)
                dot += va[q] * vc[q];
            y += dot * xa * b->val[c];
        }
    }
    return y;
}

static void s_predict_ext(const wk_model_ctx *ctx, const wk_sparse_batch *b,
                          const wk_sparse_extra *x, int dim, const float *rows, float *score)
{
    for (size_t j = 0; j < b->n; j++)
        score[j] = s_score(ctx, b, x, j, dim, rows);
}

static double s_train_ext(const wk_model_ctx *ctx, int task, const wk_sparse_batch *b,
                          const wk_sparse_extra *x, int dim, const float *rows, float *grads)
{
    const uint32_t nf = s_fields(x);
    const int k = (dim - 1) / (int)nf;
    const float l2 = ctx->l2;
    double loss = 0;
    for (size_t j = 0; j < b->n; j++) {
        const float y = s_score(ctx, b, x, j, dim, rows), t = b->label[j];
        float g;
        loss += wk_model_loss(task, y, t, &g);
        grads[(size_t)b->bias_row * dim] += g;
        for (uint64_t a = b->at[j]; a < b->at[j + 1]; a++) {
            const float *ra = rows + (size_t)b->idx[a] * dim;
            float *ga = grads + (size_t)b->idx[a] * dim;
            const float xa = b->val[a];
            const uint32_t fa = s_field(x, nf, a);
            ga[0] += g * xa + l2 * ra[0];
            for (int q = 1; q < dim; q++)
                ga[q] += l2 * ra[q];
            for (uint64_t c = a + 1; c < b->at[j + 1]; c++) {
                const float *rc = rows + (size_t)b->idx[c] * dim;
                float *gc = grads + (size_t)b->idx[c] * dim;
                const uint32_t fc = s_field(x, nf, c);
                const float s = g * xa * b->val[c];
                const size_t oa = 1 + (size_t)fc * k, oc = 1 + (size_t)fa * k;
                for (int q = 0; q < k; q++) {
                    ga[oa + q] += s * rc[oc + q];
                    gc[oc + q] += s * ra[oa + q];
                }
            }
        }
    }
    return loss;
}

static const char *const s_table_names[] = {"feature"};

const wk_model_ops wk_model_ffm = {
    .name = "ffm",
    .n_tables = 1,
    .table_names = s_table_names,
    .table_params = s_table_params,
    .train_ext = s_train_ext,
    .predict_ext = s_predict_ext,
};
