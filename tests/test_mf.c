/* Biased MF: gradients against finite differences of the loss it states. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "worker/models/model.h"

enum { NU = 3, NI = 4, DIM = 5, NEX = 9 };

static const uint32_t s_uidx[NEX] = {0, 0, 1, 2, 2, 1, 0, 2, 1};
static const uint32_t s_iidx[NEX] = {0, 1, 1, 2, 3, 0, 3, 3, 2};
static const float s_label[NEX] = {4, 3, 5, 1, 2, 4, 3, 5, 2};

/* The loss mf.c documents: 1/2 e^2 + l2/2 (|row_u|^2 + |row_i|^2) per example. */
static double s_loss(const wk_model_ctx *ctx, const wk_batch *b, const float *const *rows)
{
    float pred[NEX];
    wk_model_mf.predict(ctx, b, DIM, rows, pred);
    double l = 0;
    for (size_t j = 0; j < b->n; j++) {
        double e = (double)pred[j] - b->label[j];
        double reg = 0;
        for (int k = 0; k < DIM; k++) {
            double pu = rows[0][b->uidx[j] * DIM + k], qi = rows[1][b->iidx[j] * DIM + k];
            reg += pu * pu + qi * qi;
        }
        l += 0.5 * e * e + 0.5 * ctx->l2 * reg;
    }
    return l;
}

Test(mf, gradients_match_finite_differences)
{
    float user[NU * DIM], item[NI * DIM], gu[NU * DIM] = {0}, gi[NI * DIM] = {0};
    cm_rng r;
    cm_rng_seed(&r, 7);
    for (int k = 0; k < NU * DIM; k++)
        user[k] = (float)(0.5 * cm_rng_normal(&r));
    for (int k = 0; k < NI * DIM; k++)
        item[k] = (float)(0.5 * cm_rng_normal(&r));
    wk_model_ctx ctx = {.mean = 3.5f, .l2 = 0.05f, .clip_lo = 1, .clip_hi = 5};
    wk_batch b = {NEX, s_uidx, s_iidx, s_label};
    const float *rows[2] = {user, item};
    float *grads[2] = {gu, gi};
    double sq = wk_model_mf.train(&ctx, &b, DIM, rows, grads);

    float pred[NEX];
    wk_model_mf.predict(&ctx, &b, DIM, rows, pred);
    double want_sq = 0;
    for (int j = 0; j < NEX; j++)
        want_sq += (pred[j] - s_label[j]) * (pred[j] - s_label[j]);
    cr_expect_float_eq(sq, want_sq, 1e-4 * want_sq, "train returns the squared error sum");

    float *tables[2] = {user, item};
    const int sizes[2] = {NU * DIM, NI * DIM};
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < sizes[t]; k++) {
            const float h = 1e-2f, keep = tables[t][k];
            tables[t][k] = keep + h;
            double lp = s_loss(&ctx, &b, rows);
            tables[t][k] = keep - h;
            double lm = s_loss(&ctx, &b, rows);
            tables[t][k] = keep;
            double fd = (lp - lm) / (2 * h);
            cr_expect(fabs(fd - grads[t][k]) <= 2e-3 + 2e-3 * fabs(fd),
                      "table %d weight %d: analytic %g vs numeric %g", t, k, grads[t][k], fd);
        }
}

Test(mf, prediction_is_mean_biases_and_dot)
{
    float user[DIM] = {0.5f, 1, 2, 0, 0}, item[DIM] = {-0.25f, 3, 0.5f, 0, 0};
    uint32_t z = 0;
    float label = 0, pred = 0;
    wk_batch b = {1, &z, &z, &label};
    wk_model_ctx ctx = {.mean = 3};
    const float *rows[2] = {user, item};
    wk_model_mf.predict(&ctx, &b, DIM, rows, &pred);
    cr_expect_float_eq(pred, 3 + 0.5f - 0.25f + 1 * 3 + 2 * 0.5f, 1e-6);
}

Test(mf, tables_follow_the_job)
{
    cm_job job = cm_job_default();
    job.dim = 16;
    job.init_std = 0.2;
    cm_table_spec tp[2];
    cr_assert_eq(wk_model_mf.n_tables, 2);
    for (size_t t = 0; t < 2; t++) {
        wk_model_mf.table_params(&job, t, &tp[t]);
        cr_expect_eq(tp[t].dim, 17, "a row is the bias and 16 factors");
        cr_expect_eq(tp[t].zero_prefix, 1, "biases start at zero");
        cr_expect_float_eq(tp[t].init_std, 0.2f, 1e-7);
    }
    cr_expect_neq(tp[0].seed, tp[1].seed, "user and item tables are seeded apart");
    cr_expect_eq(wk_model_find("mf"), &wk_model_mf);
    cr_expect_null(wk_model_find("nope"));
}

/* One local SGD step by hand: e = mean + bu + bi + <p, q> - r, then
 * p -= lr * (e q + l2 p) and q -= lr * (e p + l2 q) with the old values. */
Test(mf, local_sgd_step_by_hand)
{
    enum { D = 3, STRIDE = 8 };
    float users[STRIDE] = {0.1f, 0.5f, -0.2f}, items[STRIDE] = {-0.3f, 0.4f, 0.6f};
    wk_model_ctx ctx = {.mean = 3.0f, .l2 = 0.1f};
    cm_optim o = {.kind = CM_OPT_SGD, .lr = 0.05f};
    wk_rating r = {0, 0, 4.0f};
    double e = 3.0 + 0.1 - 0.3 + 0.5 * 0.4 + (-0.2) * 0.6 - 4.0;
    float want_p[D] = {(float)(0.1 - 0.05 * (e + 0.1 * 0.1)),
                       (float)(0.5 - 0.05 * (e * 0.4 + 0.1 * 0.5)),
                       (float)(-0.2 - 0.05 * (e * 0.6 + 0.1 * -0.2))};
    float want_q[D] = {(float)(-0.3 - 0.05 * (e + 0.1 * -0.3)),
                       (float)(0.4 - 0.05 * (e * 0.5 + 0.1 * 0.4)),
                       (float)(0.6 - 0.05 * (e * -0.2 + 0.1 * 0.6))};
    double sq = wk_model_mf.train_local(&ctx, &o, &r, 1, D, (wk_rows){users, STRIDE},
                                        (wk_rows){items, STRIDE});
    cr_expect_float_eq(sq, e * e, 1e-5);
    for (int k = 0; k < D; k++) {
        cr_expect_float_eq(users[k], want_p[k], 1e-6, "user weight %d", k);
        cr_expect_float_eq(items[k], want_q[k], 1e-6, "item weight %d", k);
    }
}

/* The row-wise AdaGrad path of the fused step matches the optimizer's own
 * update applied to the gradients of the loss. */
Test(mf, local_rowwise_matches_optimizer)
{
    enum { D = 5, STRIDE = 8 };
    float u1[STRIDE] = {0.1f, 0.2f, -0.1f, 0.3f, 0.05f, 0.1f};
    float i1[STRIDE] = {-0.2f, 0.1f, 0.4f, -0.3f, 0.2f, 0.1f};
    float u2[STRIDE], i2[STRIDE];
    memcpy(u2, u1, sizeof u1);
    memcpy(i2, i1, sizeof i1);
    wk_model_ctx ctx = {.mean = 3.5f, .l2 = 0.05f};
    cm_optim o = {.kind = CM_OPT_ROWWISE, .lr = 0.1f, .eps = 1e-8f, .init_accum = 0.1f};
    wk_rating r = {0, 0, 2.0f};
    wk_model_mf.train_local(&ctx, &o, &r, 1, D, (wk_rows){u1, STRIDE}, (wk_rows){i1, STRIDE});
    /* reference: gradients from the minibatch path, then the optimizer */
    float gu[D] = {0}, gi[D] = {0};
    uint32_t z = 0;
    wk_batch b = {1, &z, &z, &r.r};
    const float *rows[2] = {u2, i2};
    float *grads[2] = {gu, gi};
    wk_model_mf.train(&ctx, &b, D, rows, grads);
    cm_optim_update(&o, u2, gu, D);
    cm_optim_update(&o, i2, gi, D);
    for (int k = 0; k <= D; k++) {
        cr_expect_float_eq(u1[k], u2[k], 1e-6, "user float %d", k);
        cr_expect_float_eq(i1[k], i2[k], 1e-6, "item float %d", k);
    }
}

/* ---- the blocks kernel against a plain reference ---------------------- */

/* What train_local must do, one rating at a time: the error from the
 * weights before the step, the gradients of the stated loss, then the
 * server's own update rule for each row. */
static double s_reference(const wk_model_ctx *ctx, const cm_optim *o, const wk_rating *r,
                          size_t n, int dim, wk_rows users, wk_rows items)
{
    float gp[64], gq[64];
    double sq = 0;
    for (size_t j = 0; j < n; j++) {
        float *p = users.rows + r[j].u * users.stride;
        float *q = items.rows + r[j].i * items.stride;
        double dot = 0;
        for (int k = 1; k < dim; k++)
            dot += (double)p[k] * q[k];
        float e = (float)(ctx->mean + p[0] + q[0] + dot - r[j].r);
        gp[0] = e + ctx->l2 * p[0];
        gq[0] = e + ctx->l2 * q[0];
        for (int k = 1; k < dim; k++) {
            gp[k] = e * q[k] + ctx->l2 * p[k];
            gq[k] = e * p[k] + ctx->l2 * q[k];
        }
        cm_optim_update(o, p, gp, dim);
        cm_optim_update(o, q, gq, dim);
        sq += (double)e * e;
    }
    return sq;
}

/* Random rows and ratings; the same steps through train_local and the
 * reference must agree to 1e-5 for every optimizer the kernel does itself
 * and for dims around the 16-float chunks (and the common 33). */
Test(mf, local_kernel_matches_reference)
{
    enum { NU2 = 5, NI2 = 7, NR = 200 };
    const int dims[] = {1, 2, 5, 15, 16, 17, 31, 33, 40, 49};
    const int kinds[] = {CM_OPT_SGD, CM_OPT_ADAGRAD, CM_OPT_ROWWISE, CM_OPT_ADAM};
    cm_rng rng;
    cm_rng_seed(&rng, 99);
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
        for (size_t ki = 0; ki < sizeof kinds / sizeof kinds[0]; ki++) {
            const int dim = dims[di];
            cm_optim o = cm_optim_default(kinds[ki], 0.05f);
            const int rf = dim + cm_optim_state_floats(o.kind, dim);
            /* an odd stride too: the kernel must not rely on alignment */
            const size_t stride = di % 2 ? (size_t)rf + 3 : ((size_t)rf + 15) / 16 * 16;
            /* aligned_alloc wants a size that is a multiple of the alignment */
            const size_t ub = (NU2 * stride * sizeof(float) + 63) / 64 * 64;
            const size_t ib = (NI2 * stride * sizeof(float) + 63) / 64 * 64;
            float *u1 = aligned_alloc(64, ub), *i1 = aligned_alloc(64, ib);
            float *u2 = aligned_alloc(64, ub), *i2 = aligned_alloc(64, ib);
            cr_assert(u1 && i1 && u2 && i2);
            for (size_t x = 0; x < NU2 * stride; x++)
                u1[x] = (float)(0.3 * cm_rng_normal(&rng));
            for (size_t x = 0; x < NI2 * stride; x++)
                i1[x] = (float)(0.3 * cm_rng_normal(&rng));
            for (int x = 0; x < NU2; x++)
                cm_optim_init_state(&o, u1 + x * stride, dim);
            for (int x = 0; x < NI2; x++)
                cm_optim_init_state(&o, i1 + x * stride, dim);
            memcpy(u2, u1, NU2 * stride * sizeof(float));
            memcpy(i2, i1, NI2 * stride * sizeof(float));
            wk_rating r[NR];
            for (int j = 0; j < NR; j++)
                r[j] = (wk_rating){(uint32_t)cm_rng_below(&rng, NU2),
                                   (uint32_t)cm_rng_below(&rng, NI2),
                                   (float)(1 + cm_rng_below(&rng, 5))};
            wk_model_ctx ctx = {.mean = 3.0f, .l2 = 0.05f};
            double sq1 = wk_model_mf.train_local(&ctx, &o, r, NR, dim,
                                                 (wk_rows){u1, stride}, (wk_rows){i1, stride});
            double sq2 = s_reference(&ctx, &o, r, NR, dim, (wk_rows){u2, stride},
                                     (wk_rows){i2, stride});
            cr_expect(fabs(sq1 - sq2) <= 1e-5 * sq2, "dim %d %s: squared error %g vs %g", dim,
                      cm_optimizer_name(o.kind), sq1, sq2);
            int bad = 0;
            for (int t = 0; t < 2; t++) {
                const float *a = t ? i1 : u1, *b = t ? i2 : u2;
                for (int x = 0; x < (t ? NI2 : NU2); x++)
                    for (int k = 0; k < rf; k++) {
                        float va = a[x * stride + k], vb = b[x * stride + k];
                        if (!(fabsf(va - vb) <= 1e-5f * (1.0f + fabsf(vb))) && bad++ < 3)
                            cr_expect(0, "dim %d %s: table %d row %d float %d: %.8g vs %.8g",
                                      dim, cm_optimizer_name(o.kind), t, x, k, va, vb);
                    }
            }
            cr_expect_eq(bad, 0, "dim %d %s: %d floats differ", dim,
                         cm_optimizer_name(o.kind), bad);
            free(u1);
            free(i1);
            free(u2);
            free(i2);
        }
}

/* Floats past each row's weights and state (the stride padding) and rows
 * no rating names are left alone; no ratings, no change. */
Test(mf, local_kernel_touches_only_named_rows)
{
    enum { DIMK = 33, STRIDE = 80 };
    static float u[3 * STRIDE], it[3 * STRIDE];
    for (int x = 0; x < 3 * STRIDE; x++) {
        u[x] = 0.01f * (float)(x % 17);
        it[x] = -0.02f * (float)(x % 13);
    }
    float u0[3 * STRIDE], i0[3 * STRIDE];
    memcpy(u0, u, sizeof u);
    memcpy(i0, it, sizeof it);
    cm_optim o = cm_optim_default(CM_OPT_ADAGRAD, 0.1f);
    wk_model_ctx ctx = {.mean = 3.0f, .l2 = 0.05f};
    wk_rating r = {1, 2, 4.5f};
    cr_expect_eq(wk_model_mf.train_local(&ctx, &o, &r, 0, DIMK, (wk_rows){u, STRIDE},
                                         (wk_rows){it, STRIDE}),
                 0.0);
    cr_expect_eq(memcmp(u, u0, sizeof u), 0, "no ratings: no change");
    double sq = wk_model_mf.train_local(&ctx, &o, &r, 1, DIMK, (wk_rows){u, STRIDE},
                                        (wk_rows){it, STRIDE});
    cr_expect_gt(sq, 0.0);
    cr_expect_eq(memcmp(u, u0, STRIDE * sizeof(float)), 0, "user row 0 untouched");
    cr_expect_eq(memcmp(u + 2 * STRIDE, u0 + 2 * STRIDE, STRIDE * sizeof(float)), 0,
                 "user row 2 untouched");
    cr_expect_eq(memcmp(it, i0, 2 * STRIDE * sizeof(float)), 0, "item rows 0, 1 untouched");
    cr_expect_eq(memcmp(u + STRIDE + 2 * DIMK, u0 + STRIDE + 2 * DIMK,
                        (STRIDE - 2 * DIMK) * sizeof(float)), 0, "user padding untouched");
    cr_expect_eq(memcmp(it + 2 * STRIDE + 2 * DIMK, i0 + 2 * STRIDE + 2 * DIMK,
                        (STRIDE - 2 * DIMK) * sizeof(float)), 0, "item padding untouched");
    cr_expect_neq(memcmp(u + STRIDE, u0 + STRIDE, 2 * DIMK * sizeof(float)), 0,
                  "the rated user row moved");
}
