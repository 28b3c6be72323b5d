/* Factorization machine: score against the O(n^2) definition, gradients
 * against finite differences of the loss it states, for both tasks. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "common/features.h"
#include "common/rng.h"
#include "worker/models/model.h"

enum { ROWS = 6, DIM = 4, NEX = 3 }; /* row 5 is the bias */

static const uint64_t s_at[NEX + 1] = {0, 3, 5, 9};
static const uint32_t s_idx[9] = {0, 2, 4, 1, 2, 0, 1, 3, 4};
static const float s_val[9] = {1.0f, 0.5f, -1.5f, 2.0f, 1.0f, 0.3f, -0.7f, 1.0f, 0.25f};

static wk_sparse_batch s_batch(const float *label)
{
    return (wk_sparse_batch){NEX, s_at, s_idx, s_val, label, 5};
}

/* The loss fm.c documents, from scores and the rows. */
static double s_loss(int task, const wk_sparse_batch *b, const float *rows, float l2)
{
    float score[NEX];
    wk_model_fm.predict_sparse(NULL, b, DIM, rows, score);
    double l = 0;
    for (size_t j = 0; j < b->n; j++) {
        double y = score[j], t = b->label[j];
        l += task == CM_TASK_BINARY ? (t > 0.5 ? log1p(exp(-y)) : log1p(exp(y)))
                                    : 0.5 * (y - t) * (y - t);
        for (uint64_t a = b->at[j]; a < b->at[j + 1]; a++)
            for (int k = 0; k < DIM; k++) {
                double w = rows[b->idx[a] * DIM + k];
                l += 0.5 * l2 * w * w;
            }
    }
    return l;
}

static void s_random_rows(float *rows)
{
    cm_rng r;
    cm_rng_seed(&r, 17);
    for (int i = 0; i < ROWS * DIM; i++)
        rows[i] = (float)(0.4 * cm_rng_normal(&r));
}

Test(fm, score_matches_pairwise_definition)
{
    float rows[ROWS * DIM];
    s_random_rows(rows);
    float label[NEX] = {0};
    wk_sparse_batch b = s_batch(label);
    float score[NEX];
    wk_model_fm.predict_sparse(NULL, &b, DIM, rows, score);
    for (size_t j = 0; j < NEX; j++) {
        double y = rows[5 * DIM];
        for (uint64_t a = s_at[j]; a < s_at[j + 1]; a++) {
            y += rows[s_idx[a] * DIM] * s_val[a];
            for (uint64_t c = a + 1; c < s_at[j + 1]; c++) {
                double dot = 0;
                for (int f = 1; f < DIM; f++)
                    dot += rows[s_idx[a] * DIM + f] * rows[s_idx[c] * DIM + f];
                y += dot * s_val[a] * s_val[c];
            }
        }
        cr_expect_float_eq(score[j], y, 1e-5, "example %zu: %g vs %g", j, score[j], y);
    }
}

/* Wide rows (k 16 and 19: whole vectors and a tail) and 39 features per
 * example, as on click data: the score and the loss training returns
 * against the pairwise definition in double. */
static void s_check_wide(int k)
{
    enum { N = 5, PER = 39, NROWS = 60 };
    const int dim = k + 1;
    static float rows[NROWS * 20], grads[NROWS * 20];
    uint64_t at[N + 1];
    uint32_t idx[N * PER];
    float val[N * PER], label[N], score[N];
    cm_rng r;
    cm_rng_seed(&r, 23);
    for (int i = 0; i < NROWS * dim; i++)
        rows[i] = (float)(0.2 * cm_rng_normal(&r));
    memset(grads, 0, sizeof grads);
    for (int j = 0; j <= N; j++)
        at[j] = (uint64_t)j * PER;
    for (int a = 0; a < N * PER; a++) {
        idx[a] = (uint32_t)(cm_rng_next(&r) % (NROWS - 1));
        val[a] = (float)(0.5 + cm_rng_normal(&r));
    }
    for (int j = 0; j < N; j++)
        label[j] = (float)(j % 2);
    const wk_sparse_batch b = {N, at, idx, val, label, NROWS - 1};
    wk_model_fm.predict_sparse(NULL, &b, dim, rows, score);
    double want_loss = 0;
    for (int j = 0; j < N; j++) {
        double y = rows[(NROWS - 1) * dim], mag = fabs(y);
        for (uint64_t a = at[j]; a < at[j + 1]; a++) {
            y += rows[idx[a] * dim] * val[a];
            mag += fabs(rows[idx[a] * dim] * val[a]);
            for (uint64_t c = a + 1; c < at[j + 1]; c++) {
                double dot = 0;
                for (int f = 1; f < dim; f++)
                    dot += (double)rows[idx[a] * dim + f] * rows[idx[c] * dim + f];
                y += dot * val[a] * val[c];
                mag += fabs(dot * val[a] * val[c]);
            }
        }
        cr_expect(fabs(score[j] - y) <= 1e-5 * mag + 1e-5, "k %d example %d: %g vs %g", k, j,
                  score[j], y);
        want_loss += label[j] > 0.5f ? log1p(exp(-y)) : log1p(exp(y));
    }
    wk_model_ctx ctx = {.l2 = 0.f};
    double loss = wk_model_fm.train_sparse(&ctx, CM_TASK_BINARY, &b, dim, rows, grads);
    cr_expect(fabs(loss - want_loss) <= 1e-4 * fabs(want_loss) + 1e-4,
              "k %d: training's loss %g vs %g", k, loss, want_loss);
}

Test(fm, wide_rows_score_as_the_pairwise_definition)
{
    s_check_wide(16);
    s_check_wide(19);
}

static void s_check_gradients(int task, const float *label)
{
    float rows[ROWS * DIM], grads[ROWS * DIM] = {0};
    s_random_rows(rows);
    wk_sparse_batch b = s_batch(label);
    wk_model_ctx ctx = {.l2 = 0.03f};
    double loss = wk_model_fm.train_sparse(&ctx, task, &b, DIM, rows, grads);
    double want = s_loss(task, &b, rows, 0.f);
    cr_expect_float_eq(loss, want, 1e-4 * fabs(want) + 1e-6, "returned loss %g vs %g", loss,
                       want);
    for (int i = 0; i < ROWS * DIM; i++) {
        const float h = 1e-2f, keep = rows[i];
        rows[i] = keep + h;
        double lp = s_loss(task, &b, rows, ctx.l2);
        rows[i] = keep - h;
        double lm = s_loss(task, &b, rows, ctx.l2);
        rows[i] = keep;
        double fd = (lp - lm) / (2 * h);
        /* the bias row is not regularised: only its weight 0 has a gradient */
        if (i / DIM == 5 && i % DIM != 0)
            fd = 0;
        cr_expect(fabs(fd - grads[i]) <= 3e-3 + 3e-3 * fabs(fd),
                  "task %d weight %d: analytic %g vs numeric %g", task, i, grads[i], fd);
    }
}

Test(fm, regression_gradients_match_finite_differences)
{
    const float label[NEX] = {1.5f, -0.5f, 2.0f};
    s_check_gradients(CM_TASK_REGRESSION, label);
}

Test(fm, logistic_gradients_match_finite_differences)
{
    const float label[NEX] = {1.0f, 0.0f, 1.0f};
    s_check_gradients(CM_TASK_BINARY, label);
}

Test(fm, one_table_with_a_zero_linear_weight)
{
    cm_job job = cm_job_default();
    job.dim = 8;
    cm_table_spec tp;
    cr_assert_eq(wk_model_fm.n_tables, 1);
    wk_model_fm.table_params(&job, 0, &tp);
    cr_expect_eq(tp.dim, 9);
    cr_expect_eq(tp.zero_prefix, 1);
}
