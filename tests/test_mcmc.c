/* Unit tests for worker/mcmc: the Gibbs-sampled Bayesian FM recovers a
 * planted FM (regression and probit classification), averages of its
 * draws beat single draws, draws follow the seed, bad input is refused. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"
#include "common/rng.h"
#include "worker/mcmc.h"

/* A planted FM over two groups of one-hot features (like users and
 * items, U and I of them) plus a shared numeric feature: n examples. */
#define U 60
#define I 40
#define K 3

typedef struct {
    size_t n;
    uint64_t *at;
    uint32_t *idx;
    float *val;
    float *label;
    double *truth;   /* the planted score */
} s_set;

static double s_w[U + I + 1], s_v[(U + I + 1) * K];

static void s_plant(uint64_t seed)
{
    cm_rng r;
    cm_rng_seed(&r, seed);
    for (int j = 0; j < U + I + 1; j++) {
        s_w[j] = 0.3 * cm_rng_normal(&r);
        for (int f = 0; f < K; f++)
            s_v[j * K + f] = 0.6 * cm_rng_normal(&r);
    }
}

/* Examples drawn from the planted model; labels with noise sd (regression)
 * or by the probit link (binary). */
static s_set s_make(size_t n, uint64_t seed, int binary, double sd)
{
    s_set s = {.n = n};
    s.at = malloc((n + 1) * sizeof *s.at);
    s.idx = malloc(3 * n * sizeof *s.idx);
    s.val = malloc(3 * n * sizeof *s.val);
    s.label = malloc(n * sizeof *s.label);
    s.truth = malloc(n * sizeof *s.truth);
    cr_assert(s.at && s.idx && s.val && s.label && s.truth);
    cm_rng r;
    cm_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) {
        s.at[i] = 3 * i;
        s.idx[3 * i] = (uint32_t)cm_rng_below(&r, U);
        s.idx[3 * i + 1] = U + (uint32_t)cm_rng_below(&r, I);
        s.idx[3 * i + 2] = U + I;
        s.val[3 * i] = s.val[3 * i + 1] = 1.f;
        s.val[3 * i + 2] = (float)cm_rng_uniform(&r);
        double y = 0.5, q[K] = {0}, sq = 0;
        for (int a = 0; a < 3; a++) {
            const uint32_t j = s.idx[3 * i + a];
            const double x = s.val[3 * i + a];
            y += s_w[j] * x;
            for (int f = 0; f < K; f++) {
                q[f] += s_v[j * K + f] * x;
                sq += s_v[j * K + f] * s_v[j * K + f] * x * x;
            }
        }
        for (int f = 0; f < K; f++)
            y += 0.5 * q[f] * q[f];
        y -= 0.5 * sq;
        s.truth[i] = y;
        if (binary)
            s.label[i] = y + cm_rng_normal(&r) > 0 ? 1.f : 0.f;
        else
            s.label[i] = (float)(y + sd * cm_rng_normal(&r));
    }
    s.at[n] = 3 * n;
    return s;
}

static void s_free(s_set *s)
{
    free(s->at);
    free(s->idx);
    free(s->val);
    free(s->label);
    free(s->truth);
}

static wk_mcmc_rows s_rows(const s_set *s)
{
    return (wk_mcmc_rows){s->n, s->at, s->idx, s->val, s->label};
}

static wk_mcmc *s_new(const s_set *train, int binary, uint64_t seed)
{
    static uint32_t group[U + I + 1];
    for (int j = 0; j < U + I + 1; j++)
        group[j] = j < U ? 0 : j < U + I ? 1 : 2;
    wk_mcmc_params p = {.dim = K, .binary = binary, .seed = seed, .init_std = 0.1,
                        .n_groups = 3, .group = group};
    cm_error err = {0};
    wk_mcmc_rows rows = s_rows(train);
    wk_mcmc *m = wk_mcmc_new(&p, &rows, U + I + 1, &err);
    cr_assert_not_null(m, "%s", err.msg);
    return m;
}

static double s_rmse(const double *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (a[i] - b[i]) * (a[i] - b[i]);
    return sqrt(s / (double)n);
}

/* Regression with noise 0.3: the averaged prediction of 60 sweeps comes
 * near the noise floor on held-out examples, far below the spread of the
 * labels, and below a single draw's error. */
Test(mcmc, regression_recovers_a_planted_fm)
{
    s_plant(5);
    s_set train = s_make(6000, 11, 0, 0.3), test = s_make(2000, 12, 0, 0.3);
    wk_mcmc *m = s_new(&train, 0, 1);
    wk_mcmc_rows tr = s_rows(&test);
    double *pred = malloc(test.n * sizeof *pred), *avg = calloc(test.n, sizeof *avg);
    cr_assert(pred && avg);
    cm_error err = {0};
    const int sweeps = 60;
    for (int s = 1; s <= sweeps; s++) {
        cr_assert_eq(wk_mcmc_sweep(m, &err), 0, "%s", err.msg);
        cr_assert_eq(wk_mcmc_predict(m, &tr, pred), 0);
        for (size_t i = 0; i < test.n; i++)
            avg[i] += (pred[i] - avg[i]) / s;
    }
    double mean = 0, var = 0;
    for (size_t i = 0; i < test.n; i++)
        mean += test.label[i] / (double)test.n;
    for (size_t i = 0; i < test.n; i++)
        var += (test.label[i] - mean) * (test.label[i] - mean) / (double)test.n;
    const double avg_rmse = s_rmse(avg, test.label, test.n);
    const double last_rmse = s_rmse(pred, test.label, test.n);
    cr_log_info("mcmc regression: averaged %.4f, last draw %.4f, label sd %.4f, noise 0.3, "
                "alpha %.2f", avg_rmse, last_rmse, sqrt(var), wk_mcmc_alpha(m));
    cr_expect_lt(avg_rmse, 0.36, "averaged RMSE %.4f (noise 0.3, label sd %.4f)", avg_rmse,
                 sqrt(var));
    cr_expect_lt(avg_rmse, 0.5 * sqrt(var));
    cr_expect_leq(avg_rmse, last_rmse);
    /* the noise precision found is near 1 / 0.3^2 = 11.1 */
    cr_expect(wk_mcmc_alpha(m) > 7 && wk_mcmc_alpha(m) < 14, "alpha %g", wk_mcmc_alpha(m));
    cr_expect_lt(wk_mcmc_train_loss(m), 0.36);
    free(pred);
    free(avg);
    wk_mcmc_destroy(&m);
    cr_expect_null(m);
    s_free(&train);
    s_free(&test);
}

/* Probit classification: the averaged probability ranks held-out examples
 * almost as well as the planted score itself does. */
Test(mcmc, probit_recovers_a_planted_fm)
{
    s_plant(6);
    s_set train = s_make(20000, 21, 1, 0), test = s_make(3000, 22, 1, 0);
    wk_mcmc *m = s_new(&train, 1, 2);
    wk_mcmc_rows tr = s_rows(&test);
    double *pred = malloc(test.n * sizeof *pred), *avg = calloc(test.n, sizeof *avg);
    float *p = malloc(test.n * sizeof *p), *t = malloc(test.n * sizeof *t);
    cr_assert(pred && avg && p && t);
    cm_error err = {0};
    for (int s = 1; s <= 60; s++) {
        cr_assert_eq(wk_mcmc_sweep(m, &err), 0, "%s", err.msg);
        cr_assert_eq(wk_mcmc_predict(m, &tr, pred), 0);
        for (size_t i = 0; i < test.n; i++)
            avg[i] += (wk_mcmc_probit(pred[i]) - avg[i]) / s;
    }
    for (size_t i = 0; i < test.n; i++) {
        p[i] = (float)avg[i];
        t[i] = (float)test.truth[i];
    }
    const double auc = cm_auc_exact(p, test.label, test.n);
    const double best = cm_auc_exact(t, test.label, test.n);
    cr_log_info("mcmc probit: AUC %.4f, the planted score's %.4f, train log loss %.4f", auc,
                best, wk_mcmc_train_loss(m));
    cr_expect_gt(auc, best - 0.02, "AUC %.4f against the planted score's %.4f", auc, best);
    cr_expect_gt(auc, 0.7);
    free(pred);
    free(avg);
    free(p);
    free(t);
    wk_mcmc_destroy(&m);
    s_free(&train);
    s_free(&test);
}

/* Same seed, same draws; another seed, other draws. */
Test(mcmc, draws_follow_the_seed)
{
    s_plant(7);
    s_set train = s_make(500, 31, 0, 0.3);
    wk_mcmc *a = s_new(&train, 0, 9), *b = s_new(&train, 0, 9), *c = s_new(&train, 0, 10);
    cm_error err = {0};
    for (int s = 0; s < 3; s++) {
        cr_assert_eq(wk_mcmc_sweep(a, &err), 0);
        cr_assert_eq(wk_mcmc_sweep(b, &err), 0);
        cr_assert_eq(wk_mcmc_sweep(c, &err), 0);
    }
    cr_expect_eq(wk_mcmc_w0(a), wk_mcmc_w0(b));
    cr_expect_eq(wk_mcmc_alpha(a), wk_mcmc_alpha(b));
    cr_expect_neq(wk_mcmc_w0(a), wk_mcmc_w0(c));
    wk_mcmc_destroy(&a);
    wk_mcmc_destroy(&b);
    wk_mcmc_destroy(&c);
    s_free(&train);
}

/* Features the model never saw (WK_MCMC_UNSEEN) are absent, in training
 * rows and in predictions alike. */
Test(mcmc, unseen_features_count_as_absent)
{
    s_plant(8);
    s_set train = s_make(300, 41, 0, 0.3);
    wk_mcmc *m = s_new(&train, 0, 3);
    cm_error err = {0};
    cr_assert_eq(wk_mcmc_sweep(m, &err), 0);
    uint64_t at[2] = {0, 3};
    uint32_t with[3] = {2, U + 5, WK_MCMC_UNSEEN}, without[2] = {2, U + 5};
    float val[3] = {1, 1, 1}, label = 0;
    wk_mcmc_rows r1 = {1, at, with, val, &label}, r2 = {1, (uint64_t[]){0, 2}, without, val,
                                                         &label};
    double y1, y2;
    cr_assert_eq(wk_mcmc_predict(m, &r1, &y1), 0);
    cr_assert_eq(wk_mcmc_predict(m, &r2, &y2), 0);
    cr_expect_eq(y1, y2);
    wk_mcmc_destroy(&m);
    s_free(&train);
}

/* Bad input: an id beyond the features, a group beyond the groups, a
 * binary label that is not 0 or 1, no examples. Errors say which. */
Test(mcmc, bad_input_is_refused)
{
    uint64_t at[2] = {0, 1};
    uint32_t idx[1] = {5};
    float val[1] = {1}, label[1] = {0.5f};
    wk_mcmc_rows rows = {1, at, idx, val, label};
    wk_mcmc_params p = {.dim = 2, .seed = 1, .init_std = 0.1, .n_groups = 1};
    cm_error err = {0};
    cr_expect_null(wk_mcmc_new(&p, &rows, 3, &err));
    cr_expect(strstr(err.msg, "feature id 5") != NULL, "%s", err.msg);
    idx[0] = 1;
    p.binary = 1;
    err = (cm_error){0};
    cr_expect_null(wk_mcmc_new(&p, &rows, 3, &err));
    cr_expect(strstr(err.msg, "label 0.5") != NULL, "%s", err.msg);
    p.binary = 0;
    const uint32_t group[3] = {0, 4, 0};
    p.group = group;
    err = (cm_error){0};
    cr_expect_null(wk_mcmc_new(&p, &rows, 3, &err));
    cr_expect(strstr(err.msg, "group 4") != NULL, "%s", err.msg);
    p.group = NULL;
    rows.n = 0;
    err = (cm_error){0};
    cr_expect_null(wk_mcmc_new(&p, &rows, 3, &err));
    cr_expect_eq(err.code, CM_EINVAL);
}
