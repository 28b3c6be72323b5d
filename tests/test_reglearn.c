/* Learned l2: the lambda gradient against finite differences of the
 * validation loss after one lookahead step, for mf (squared error) and fm
 * (log loss); the step on lambda's direction and bounds. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/config.h"
#include "common/rng.h"
#include "worker/models/model.h"
#include "worker/reglearn.h"

enum { NU = 3, NI = 4, MDIM = 5, MNEX = 9 };
static const uint32_t s_uidx[MNEX] = {0, 0, 1, 2, 2, 1, 0, 2, 1};
static const uint32_t s_iidx[MNEX] = {0, 1, 1, 2, 3, 0, 3, 3, 2};
static const float s_rating[MNEX] = {4, 3, 5, 1, 2, 4, 3, 5, 2};

enum { ROWS = 6, FDIM = 4, FNEX = 3, BIAS = 5 };
static const uint64_t s_at[FNEX + 1] = {0, 3, 5, 9};
static const uint32_t s_idx[9] = {0, 2, 4, 1, 2, 0, 1, 3, 4};
static const float s_val[9] = {1.0f, 0.5f, -1.5f, 2.0f, 1.0f, 0.3f, -0.7f, 1.0f, 0.25f};
static const float s_click[FNEX] = {1, 0, 1};

static void s_random(float *x, size_t n, uint64_t seed, double sd)
{
    cm_rng r;
    cm_rng_seed(&r, seed);
    for (size_t k = 0; k < n; k++)
        x[k] = (float)(sd * cm_rng_normal(&r));
}

/* ---- mf ---------------------------------------------------------------- */

static const wk_model_ctx s_mctx = {.mean = 3.5f, .l2 = 0.f, .clip_lo = 1, .clip_hi = 5};

/* Predictions with the rows scaled by t (all of mf's weights are
 * regularised, biases included). */
static void s_mf_pred(const float *user, const float *item, float t, float *pred)
{
    float u[NU * MDIM], i[NI * MDIM];
    wk_reg_scale(user, u, NU * MDIM, t);
    wk_reg_scale(item, i, NI * MDIM, t);
    const float *rows[2] = {u, i};
    wk_batch b = {MNEX, s_uidx, s_iidx, s_rating};
    wk_model_mf.predict(&s_mctx, &b, MDIM, rows, pred);
}

/* Mean validation loss after one step with no data gradient: theta' =
 * theta - lr lambda theta = (1 - lr lambda) theta. */
static double s_mf_lookahead(const float *user, const float *item, double lr, double lambda)
{
    float pred[MNEX];
    s_mf_pred(user, item, (float)(1.0 - lr * lambda), pred);
    double l = 0;
    for (int j = 0; j < MNEX; j++)
        l += 0.5 * ((double)pred[j] - s_rating[j]) * ((double)pred[j] - s_rating[j]);
    return l / MNEX;
}

/* What the worker computes at theta' = (1 - lr lambda0) theta: dL/dlambda
 * is -lr <grad L(theta'), theta>, and the sums give <grad L(theta'),
 * theta'>, which is (1 - lr lambda0) times that. */
static double s_mf_analytic(const float *user, const float *item, double lr, double lambda0)
{
    const float t = (float)(1.0 - lr * lambda0);
    float pred[MNEX], up[MNEX], down[MNEX];
    s_mf_pred(user, item, t, pred);
    s_mf_pred(user, item, t * (1.f + WK_REG_EPS), up);
    s_mf_pred(user, item, t * (1.f - WK_REG_EPS), down);
    wk_reg_sums s = {0};
    wk_reg_add(&s, 0, pred, up, down, s_rating, MNEX);
    cr_assert_eq(s.n, MNEX);
    return wk_reg_grad(&s, lr) / (1.0 - lr * lambda0);
}

Test(reglearn, mf_lambda_gradient_matches_finite_differences)
{
    float user[NU * MDIM], item[NI * MDIM];
    s_random(user, NU * MDIM, 11, 0.6);
    s_random(item, NI * MDIM, 12, 0.6);
    const double lr = 0.5, h = 1e-2;
    const double lambdas[] = {0.0, 0.1, 0.5};
    for (size_t k = 0; k < sizeof lambdas / sizeof *lambdas; k++) {
        const double l0 = lambdas[k];
        const double fd = (s_mf_lookahead(user, item, lr, l0 + h) -
                           s_mf_lookahead(user, item, lr, l0 - h)) / (2 * h);
        const double an = s_mf_analytic(user, item, lr, l0);
        cr_expect(fabs(fd) > 1e-3, "lambda %g: the loss should depend on lambda (%g)", l0, fd);
        cr_expect(fabs(an - fd) <= 1e-2 * fabs(fd) + 1e-5,
                  "lambda %g: analytic %.6g, finite differences %.6g", l0, an, fd);
    }
}

/* ---- fm (binary) ------------------------------------------------------- */

/* Scores with every row but the global bias's scaled by t (fm.c does not
 * regularise the bias, so lambda does not move it). */
static void s_fm_score(const float *rows, float t, float *score)
{
    float r[ROWS * FDIM];
    wk_reg_scale(rows, r, ROWS * FDIM, t);
    r[BIAS * FDIM] = rows[BIAS * FDIM];
    wk_sparse_batch b = {FNEX, s_at, s_idx, s_val, s_click, BIAS};
    wk_model_fm.predict_sparse(NULL, &b, FDIM, r, score);
}

static double s_fm_lookahead(const float *rows, double lr, double lambda)
{
    float score[FNEX];
    s_fm_score(rows, (float)(1.0 - lr * lambda), score);
    double l = 0;
    for (int j = 0; j < FNEX; j++) {
        const double y = score[j];
        l += s_click[j] > 0.5 ? log1p(exp(-y)) : log1p(exp(y));
    }
    return l / FNEX;
}

Test(reglearn, fm_binary_lambda_gradient_matches_finite_differences)
{
    float rows[ROWS * FDIM];
    s_random(rows, ROWS * FDIM, 21, 0.7);
    rows[BIAS * FDIM] = 0.3f;
    const double lr = 0.5, h = 1e-2;
    const double lambdas[] = {0.0, 0.2};
    for (size_t k = 0; k < sizeof lambdas / sizeof *lambdas; k++) {
        const double l0 = lambdas[k];
        const float t = (float)(1.0 - lr * l0);
        float base[ROWS * FDIM], score[FNEX], up[FNEX], down[FNEX];
        /* theta' with the bias as it was, as the worker holds it */
        wk_reg_scale(rows, base, ROWS * FDIM, t);
        base[BIAS * FDIM] = rows[BIAS * FDIM];
        s_fm_score(base, 1.f, score);
        s_fm_score(base, 1.f + WK_REG_EPS, up);
        s_fm_score(base, 1.f - WK_REG_EPS, down);
        wk_reg_sums s = {0};
        wk_reg_add(&s, 1, score, up, down, s_click, FNEX);
        const double an = wk_reg_grad(&s, lr) / (1.0 - lr * l0);
        const double fd =
            (s_fm_lookahead(rows, lr, l0 + h) - s_fm_lookahead(rows, lr, l0 - h)) / (2 * h);
        cr_expect(fabs(fd) > 1e-3, "lambda %g: the loss should depend on lambda (%g)", l0, fd);
        cr_expect(fabs(an - fd) <= 1e-2 * fabs(fd) + 1e-5,
                  "lambda %g: analytic %.6g, finite differences %.6g", l0, an, fd);
        /* the loss the sums carry is the mean log loss at theta' */
        cr_expect_float_eq(s.loss / s.n, s_fm_lookahead(rows, lr, l0), 1e-5);
    }
}

/* ---- the step on lambda ------------------------------------------------ */

Test(reglearn, step_follows_the_gradient_and_stays_in_bounds)
{
    /* dot > 0: growing the weights raises the validation loss, so a larger
     * lambda (shrinking them) is better; dot < 0 the other way */
    wk_reg_sums up = {.dot = 0.01, .loss = 1.0, .n = 10};
    wk_reg_sums down = {.dot = -0.01, .loss = 1.0, .n = 10};
    cr_expect_gt(wk_reg_grad(&down, 0.1), 0);
    cr_expect_lt(wk_reg_grad(&up, 0.1), 0);
    const double l2 = 0.01;
    const double grow = wk_reg_next(l2, &up), shrink = wk_reg_next(l2, &down);
    cr_expect_gt(grow, l2);
    cr_expect_lt(shrink, l2);
    /* log lambda moves by the elasticity times the gain, symmetric */
    cr_expect_float_eq(log(grow / l2), WK_REG_GAIN * 0.01, 1e-9);
    cr_expect_float_eq(log(grow / l2), -log(shrink / l2), 1e-9);
    /* a large signal moves it by at most the largest step */
    wk_reg_sums big = {.dot = 100.0, .loss = 1.0, .n = 10};
    cr_expect_float_eq(log(wk_reg_next(l2, &big) / l2), WK_REG_MAX_STEP, 1e-9);
    /* it stays positive and bounded however often it is pushed */
    wk_reg_sums neg = {.dot = -100.0, .loss = 1.0, .n = 10};
    double l = l2;
    for (int k = 0; k < 100; k++)
        l = wk_reg_next(l, &neg);
    cr_expect_float_eq(l, WK_REG_MIN, 1e-12);
    for (int k = 0; k < 100; k++)
        l = wk_reg_next(l, &big);
    cr_expect_float_eq(l, WK_REG_MAX, 1e-9);
    /* nothing measured, or nothing finite: lambda stays */
    wk_reg_sums none = {0};
    cr_expect_eq(wk_reg_next(0.05, &none), 0.05);
    wk_reg_sums bad = {.dot = NAN, .loss = 1.0, .n = 3};
    cr_expect_eq(wk_reg_next(0.05, &bad), 0.05);
}

Test(reglearn, learned_needs_sgd_mf_or_fm_and_validation)
{
    cm_job job = cm_job_default();
    snprintf(job.train, sizeof job.train, "x");
    cm_error err = {0};
    job.regularization = 1;
    snprintf(job.model, sizeof job.model, "mf");
    cr_expect_eq(cm_job_validate(&job, &err), 0, "%s", err.msg);
    snprintf(job.model, sizeof job.model, "ffm");
    cr_expect_eq(cm_job_validate(&job, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "regularization") != NULL, "%s", err.msg);
    snprintf(job.model, sizeof job.model, "fm");
    job.validation_fraction = 0;
    cr_expect_eq(cm_job_validate(&job, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "validation") != NULL, "%s", err.msg);
}
