/* Tests for common/optim.c against values computed by hand (and checked in
 * double precision): one SGD step, three AdaGrad steps with the
 * accumulator, Adam's bias correction at t = 1, 2 and beyond, FTRL's
 * closed forms (L1 clipping to exactly 0 included), parameter checks and
 * the state initialisation. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "common/config.h"
#include "common/optim.h"

#define TOL 1e-6f

Test(optim, state_per_weight)
{
    cr_assert_eq(cm_optim_state_floats(CM_OPT_SGD, 8), 0);
    cr_assert_eq(cm_optim_state_floats(CM_OPT_ADAGRAD, 8), 8);
    cr_assert_eq(cm_optim_state_floats(CM_OPT_ROWWISE, 8), 1);
    cr_assert_eq(cm_optim_state_floats(CM_OPT_ADAM, 8), 17);
    cr_assert_eq(cm_optim_state_floats(CM_OPT_ADAM, 1), 3);
    cr_assert_eq(cm_optim_state_floats(CM_OPT_FTRL, 8), 16);
    cr_assert_eq(cm_optim_state_floats(CM_OPT_FTRL, 1), 2);
    cr_assert_eq(cm_optim_state_floats(99, 8), 0);
}

Test(optim, sgd_step)
{
    cm_optim o = {.kind = CM_OPT_SGD, .lr = 0.1f};
    /* A sentinel after the row: SGD has no state and must not touch it. */
    float row[4] = {1.0f, -2.0f, 0.5f, 42.0f};
    const float g[3] = {0.5f, -1.0f, 2.0f};
    cm_optim_update(&o, row, g, 3);
    /* w - lr*g: 1-0.05, -2+0.1, 0.5-0.2 */
    cr_assert_float_eq(row[0], 0.95f, TOL);
    cr_assert_float_eq(row[1], -1.9f, TOL);
    cr_assert_float_eq(row[2], 0.3f, TOL);
    cr_assert_eq(row[3], 42.0f);
}

Test(optim, sgd_zero_lr_is_identity)
{
    cm_optim o = {.kind = CM_OPT_SGD, .lr = 0.0f};
    float row[2] = {3.0f, -4.0f};
    const float g[2] = {100.0f, -7.0f};
    cm_optim_update(&o, row, g, 2);
    cr_assert_eq(row[0], 3.0f);
    cr_assert_eq(row[1], -4.0f);
}

Test(optim, init_state_adagrad)
{
    cm_optim o = {.kind = CM_OPT_ADAGRAD, .lr = 0.1f, .eps = 1e-8f, .init_accum = 0.25f};
    float row[7] = {1, 2, 3, -1, -1, -1, 99};
    cm_optim_init_state(&o, row, 3);
    /* weights untouched, accumulators set, nothing past the state */
    cr_assert_eq(row[0], 1.0f);
    cr_assert_eq(row[1], 2.0f);
    cr_assert_eq(row[2], 3.0f);
    for (int j = 3; j < 6; j++)
        cr_assert_eq(row[j], 0.25f);
    cr_assert_eq(row[6], 99.0f);
}

Test(optim, init_state_sgd_touches_nothing)
{
    cm_optim o = {.kind = CM_OPT_SGD, .lr = 0.1f};
    float row[4] = {1, 2, -3, -4};
    cm_optim_init_state(&o, row, 2);
    cr_assert_eq(row[0], 1.0f);
    cr_assert_eq(row[1], 2.0f);
    cr_assert_eq(row[2], -3.0f);
    cr_assert_eq(row[3], -4.0f);
}

Test(optim, adagrad_three_steps)
{
    cm_optim o = {.kind = CM_OPT_ADAGRAD, .lr = 0.1f, .eps = 1e-8f, .init_accum = 0.1f};
    float row[4] = {1.0f, 0.0f, 0.0f, 0.0f};
    cm_optim_init_state(&o, row, 2);
    cr_assert_eq(row[2], 0.1f);
    cr_assert_eq(row[3], 0.1f);

    /* step 1, g = (0.3, -0.4): a = (0.19, 0.26);
     * w0 = 1 - 0.03/sqrt(0.19), w1 = 0 + 0.04/sqrt(0.26) */
    const float g1[2] = {0.3f, -0.4f};
    cm_optim_update(&o, row, g1, 2);
    cr_assert_float_eq(row[2], 0.19f, TOL);
    cr_assert_float_eq(row[3], 0.26f, TOL);
    cr_assert_float_eq(row[0], 0.931175282f, TOL);
    cr_assert_float_eq(row[1], 0.078446453f, TOL);

    /* step 2, g = (0.3, 0.2): a = (0.28, 0.30) */
    const float g2[2] = {0.3f, 0.2f};
    cm_optim_update(&o, row, g2, 2);
    cr_assert_float_eq(row[2], 0.28f, TOL);
    cr_assert_float_eq(row[3], 0.30f, TOL);
    cr_assert_float_eq(row[0], 0.874480612f, TOL);
    cr_assert_float_eq(row[1], 0.041931616f, TOL);

    /* step 3, g = (0, 1): weight 0 and its accumulator do not move */
    const float g3[2] = {0.0f, 1.0f};
    cm_optim_update(&o, row, g3, 2);
    cr_assert_float_eq(row[2], 0.28f, TOL);
    cr_assert_float_eq(row[3], 1.30f, TOL);
    cr_assert_float_eq(row[0], 0.874480612f, TOL);
    cr_assert_float_eq(row[1], -0.045774186f, TOL);
}

Test(optim, adagrad_steps_shrink)
{
    /* The same gradient repeated: each step is smaller than the last. */
    cm_optim o = {.kind = CM_OPT_ADAGRAD, .lr = 0.5f, .eps = 1e-8f, .init_accum = 0.1f};
    float row[2] = {0.0f, 0.0f};
    cm_optim_init_state(&o, row, 1);
    const float g[1] = {1.0f};
    float prev = row[0], last_step = INFINITY;
    for (int i = 0; i < 10; i++) {
        cm_optim_update(&o, row, g, 1);
        float step = prev - row[0];
        cr_assert_gt(step, 0.0f);
        cr_assert_lt(step, last_step);
        last_step = step;
        prev = row[0];
    }
    cr_assert_float_eq(row[1], 10.1f, 1e-5f);
}

Test(optim, rowwise_adagrad_by_hand)
{
    /* dim 2, accumulator 0.1: g = (3, 4) -> A = 0.1 + (9 + 16) / 2 = 12.6,
     * step = 0.5 / sqrt(12.6 + 0) */
    cm_optim o = {.kind = CM_OPT_ROWWISE, .lr = 0.5f, .eps = 0.0f, .init_accum = 0.1f};
    float row[3] = {1.0f, -1.0f, 0.0f};
    cm_optim_init_state(&o, row, 2);
    cr_assert_float_eq(row[2], 0.1f, 1e-7);
    const float g[2] = {3.0f, 4.0f};
    cm_optim_update(&o, row, g, 2);
    double step = 0.5 / sqrt(12.6);
    cr_expect_float_eq(row[2], 12.6f, 1e-5);
    cr_expect_float_eq(row[0], 1.0 - step * 3, 1e-6);
    cr_expect_float_eq(row[1], -1.0 - step * 4, 1e-6);
    /* a second step uses the grown accumulator: A = 12.6 + (1 + 0) / 2 */
    const float g2[2] = {1.0f, 0.0f};
    float w0 = row[0];
    cm_optim_update(&o, row, g2, 2);
    cr_expect_float_eq(row[2], 13.1f, 1e-5);
    cr_expect_float_eq(row[0], w0 - 0.5 / sqrt(13.1), 1e-6);
}

/* ------------------------------------------------------------------------ */
/* Defaults and checks */

Test(optim, defaults)
{
    cm_optim o = cm_optim_default(CM_OPT_ADAM, 0.01f);
    cr_assert_eq(o.kind, CM_OPT_ADAM);
    cr_assert_eq(o.lr, 0.01f);
    cr_assert_eq(o.eps, 1e-8f);
    cr_assert_eq(o.init_accum, 0.1f);
    cr_assert_eq(o.beta1, 0.9f);
    cr_assert_eq(o.beta2, 0.999f);
    cr_assert_eq(o.l1, 0.0f);
    cr_assert_eq(o.l2, 0.0f);
    cr_assert_eq(o.beta, 1.0f);
    for (int k = CM_OPT_SGD; k <= CM_OPT_FTRL; k++) {
        o = cm_optim_default(k, 0.1f);
        cr_assert_eq(cm_optim_check(&o, NULL), 0, "kind %d", k);
    }
}

Test(optim, check_rejects_bad_params)
{
    struct {
        const char *what;
        cm_optim o;
    } bad[16];
    int n = 0;
#define BAD(text, kind, field, value)                    \
    do {                                                 \
        bad[n].what = text;                              \
        bad[n].o = cm_optim_default(kind, 0.1f);         \
        bad[n++].o.field = value;                        \
    } while (0)
    BAD("unknown kind", CM_OPT_SGD, kind, 5);
    BAD("negative kind", CM_OPT_SGD, kind, -1);
    BAD("negative lr", CM_OPT_SGD, lr, -0.1f);
    BAD("inf lr", CM_OPT_ADAM, lr, INFINITY);
    BAD("adagrad NaN eps", CM_OPT_ADAGRAD, eps, NAN);
    BAD("adam beta1 = 1", CM_OPT_ADAM, beta1, 1.0f);
    BAD("adam negative beta2", CM_OPT_ADAM, beta2, -0.5f);
    BAD("adam NaN beta2", CM_OPT_ADAM, beta2, NAN);
    BAD("adam eps 0", CM_OPT_ADAM, eps, 0.0f);
    BAD("ftrl lr 0", CM_OPT_FTRL, lr, 0.0f);
    BAD("ftrl negative l1", CM_OPT_FTRL, l1, -1.0f);
    BAD("ftrl NaN l2", CM_OPT_FTRL, l2, NAN);
    BAD("ftrl negative beta", CM_OPT_FTRL, beta, -1.0f);
    BAD("ftrl beta + l2 = 0", CM_OPT_FTRL, beta, 0.0f);
#undef BAD
    for (int i = 0; i < n; i++) {
        cm_error e = {0};
        cr_assert_eq(cm_optim_check(&bad[i].o, &e), CM_EINVAL, "%s accepted", bad[i].what);
        cr_assert_neq(e.msg[0], '\0', "%s: no message", bad[i].what);
    }
    cr_assert_eq(cm_optim_check(NULL, NULL), CM_EINVAL);
    /* beta 0 is fine with some l2; eps 0 is fine for SGD. */
    cm_optim o = cm_optim_default(CM_OPT_FTRL, 0.1f);
    o.beta = 0.0f;
    o.l2 = 1.0f;
    cr_assert_eq(cm_optim_check(&o, NULL), 0);
    o = cm_optim_default(CM_OPT_SGD, 0.1f);
    o.eps = 0.0f;
    cr_assert_eq(cm_optim_check(&o, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* Adam (lazy, per row) */

Test(optim, init_state_adam)
{
    cm_optim o = cm_optim_default(CM_OPT_ADAM, 0.1f);
    float row[9] = {1, 2, -1, -1, -1, -1, -1, 99, 98};
    cm_optim_init_state(&o, row, 2);
    cr_assert_eq(row[0], 1.0f);
    cr_assert_eq(row[1], 2.0f);
    for (int j = 2; j < 7; j++)
        cr_assert_eq(row[j], 0.0f);   /* m, v, t */
    cr_assert_eq(row[7], 99.0f);
    cr_assert_eq(row[8], 98.0f);
}

/* Adam in double: the reference the float code must match. */
static void s_adam_ref(double *w, double *m, double *v, double *t, const double *g, int dim,
                       double lr, double b1, double b2, double eps)
{
    *t += 1;
    double c1 = 1 - pow(b1, *t), c2 = 1 - pow(b2, *t);
    for (int j = 0; j < dim; j++) {
        m[j] = b1 * m[j] + (1 - b1) * g[j];
        v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
        w[j] -= lr * (m[j] / c1) / (sqrt(v[j] / c2) + eps);
    }
}

Test(optim, adam_bias_correction_by_hand)
{
    cm_optim o = cm_optim_default(CM_OPT_ADAM, 0.1f);
    float row[7] = {1.0f, -0.5f, 7, 7, 7, 7, 7};
    cm_optim_init_state(&o, row, 2);

    /* t = 1: m = 0.1 g, v = 0.001 g^2, corrected m_hat = g, v_hat = g^2,
     * so each weight moves by lr * g / (|g| + eps) = lr * sign(g). */
    const float g1[2] = {0.5f, -2.0f};
    cm_optim_update(&o, row, g1, 2);
    cr_assert_eq(row[6], 1.0f);                 /* t */
    cr_assert_float_eq(row[2], 0.05f, 1e-7);    /* m */
    cr_assert_float_eq(row[3], -0.2f, 1e-7);
    /* (1 - 0.999f) is 0.999987e-3: v is off by ~1e-5 relative */
    cr_assert_float_eq(row[4], 0.00025f, 1e-8); /* v */
    cr_assert_float_eq(row[5], 0.004f, 1e-7);
    cr_assert_float_eq(row[0], 0.9f, 1e-6);
    cr_assert_float_eq(row[1], -0.4f, 1e-6);

    /* t = 2 with g = (0.5, 0): coordinate 1 moves on momentum alone.
     * Coordinate 0: m = 0.09*0.5 + 0.1*0.5 = 0.095, m_hat = 0.095/0.19 = 0.5;
     * v = 0.999*0.00025 + 0.001*0.25 = 0.00049975, v_hat = v/0.001999 = 0.25;
     * step = 0.1 * 0.5 / 0.5 = 0.1 (same gradient: again lr * sign).
     * Coordinate 1: m = -0.18, m_hat = -0.18/0.19 = -0.947368421;
     * v = 0.003996, v_hat = 0.003996/0.001999 = 1.998999500;
     * step = 0.1 * -0.947368421 / 1.413860991 = -0.067006095. */
    const float g2[2] = {0.5f, 0.0f};
    cm_optim_update(&o, row, g2, 2);
    cr_assert_eq(row[6], 2.0f);
    cr_assert_float_eq(row[2], 0.095f, 1e-7);
    cr_assert_float_eq(row[3], -0.18f, 1e-7);
    cr_assert_float_eq(row[0], 0.8f, 1e-6);
    cr_assert_float_eq(row[1], -0.4f + 0.067006095f, 1e-6);
}

Test(optim, adam_matches_double_reference)
{
    cm_optim o = cm_optim_default(CM_OPT_ADAM, 0.05f);
    o.beta1 = 0.8f;
    o.beta2 = 0.99f;
    o.eps = 1e-6f;
    enum { D = 3, STEPS = 25 };
    float row[3 * D + 1] = {0.3f, -0.1f, 0.0f};
    cm_optim_init_state(&o, row, D);
    double w[D] = {0.3, -0.1, 0.0}, m[D] = {0}, v[D] = {0}, t = 0;
    for (int s = 0; s < STEPS; s++) {
        /* A gradient that changes sign and magnitude; zero now and then. */
        float g[D];
        double gd[D];
        for (int j = 0; j < D; j++) {
            g[j] = (s % 5 == j) ? 0.0f : (float)(sin(1.3 * s + j) * (1.0 + j));
            gd[j] = g[j];
        }
        cm_optim_update(&o, row, g, D);
        s_adam_ref(w, m, v, &t, gd, D, o.lr, o.beta1, o.beta2, o.eps);
        for (int j = 0; j < D; j++) {
            cr_assert_float_eq(row[j], w[j], 2e-5, "step %d w[%d]: %g vs %g", s, j,
                               (double)row[j], w[j]);
            cr_assert_float_eq(row[D + j], m[j], 1e-5, "step %d m[%d]", s, j);
            cr_assert_float_eq(row[2 * D + j], v[j], 1e-5, "step %d v[%d]", s, j);
        }
        cr_assert_eq(row[3 * D], (float)(s + 1));
    }
}

Test(optim, adam_rows_keep_their_own_step)
{
    /* Lazy: a row's bias correction counts its own updates only. Row b's
     * first step is lr * sign(g) however often row a moved before. */
    cm_optim o = cm_optim_default(CM_OPT_ADAM, 0.01f);
    float a[4] = {0.0f}, b[4] = {0.0f};   /* w, m, v, t */
    cm_optim_init_state(&o, a, 1);
    cm_optim_init_state(&o, b, 1);
    const float g[1] = {3.0f};
    for (int i = 0; i < 10; i++)
        cm_optim_update(&o, a, g, 1);
    cr_assert_eq(a[3], 10.0f);
    cr_assert_eq(b[3], 0.0f);
    const float gb[1] = {-0.25f};
    cm_optim_update(&o, b, gb, 1);
    cr_assert_eq(b[3], 1.0f);
    cr_assert_float_eq(b[0], 0.01f, 1e-8);
}

Test(optim, adam_step_count_is_exact_float)
{
    /* t is a float: exact to 2^24, after which it stops (documented). */
    cm_optim o = cm_optim_default(CM_OPT_ADAM, 0.0f);
    float row[4] = {0.0f, 0.0f, 0.0f, 16777215.0f};
    const float g[1] = {1.0f};
    cm_optim_update(&o, row, g, 1);
    cr_assert_eq(row[3], 16777216.0f);
    cm_optim_update(&o, row, g, 1);
    cr_assert_eq(row[3], 16777216.0f);
    for (int j = 0; j < 3; j++)
        cr_assert(isfinite(row[j]));
}

/* ------------------------------------------------------------------------ */
/* FTRL-proximal */

static cm_optim s_ftrl(void)
{
    cm_optim o = cm_optim_default(CM_OPT_FTRL, 0.1f);   /* alpha */
    o.beta = 1.0f;
    o.l1 = 0.5f;
    o.l2 = 0.1f;
    return o;
}

Test(optim, init_state_ftrl_keeps_the_weights)
{
    cm_optim o = s_ftrl();
    float row[10] = {0.3f, 0.0f, -0.02f, 9, 9, 9, 9, 9, 9, 42};
    cm_optim_init_state(&o, row, 3);
    /* z = -w (beta/alpha + l2) - sign(w) l1 = -w * 10.1 - sign(w) * 0.5 */
    cr_assert_float_eq(row[3], -3.53f, 1e-6);
    cr_assert_eq(row[4], 0.0f);
    cr_assert_float_eq(row[5], 0.702f, 1e-6);
    for (int j = 6; j < 9; j++)
        cr_assert_eq(row[j], 0.0f);   /* n */
    cr_assert_eq(row[9], 42.0f);
    /* The state gives back the weights; the weights were not touched. */
    cr_assert_eq(row[0], 0.3f);
    cr_assert_eq(row[1], 0.0f);
    cr_assert_eq(row[2], -0.02f);
    for (int j = 0; j < 3; j++)
        cr_assert_float_eq(cm_optim_ftrl_weight(&o, row[3 + j], row[6 + j]), row[j], 1e-7);
}

Test(optim, ftrl_by_hand)
{
    /* alpha 0.1, beta 1, l1 0.5, l2 0.1. Three coordinates:
     *   0: w = 0,   g = 2:   sigma = 2/0.1 = 20, z = 2, n = 4,
     *      w = -(2 - 0.5) / ((1 + 2)/0.1 + 0.1) = -1.5/30.1
     *   1: w = 0,   g = 0.3: z = 0.3 <= l1, so w = 0 exactly
     *   2: w = 0.3, g = -1:  z0 = -3.53, sigma = 10, z = -3.53 - 1 - 3 = -7.53,
     *      n = 1, w = 7.03 / ((1 + 1)/0.1 + 0.1) = 7.03/20.1 */
    cm_optim o = s_ftrl();
    float row[9] = {0.0f, 0.0f, 0.3f};
    cm_optim_init_state(&o, row, 3);
    const float g1[3] = {2.0f, 0.3f, -1.0f};
    cm_optim_update(&o, row, g1, 3);
    cr_assert_float_eq(row[3], 2.0f, 1e-6);
    cr_assert_float_eq(row[4], 0.3f, 1e-7);
    cr_assert_float_eq(row[5], -7.53f, 1e-5);
    cr_assert_float_eq(row[6], 4.0f, 1e-6);
    cr_assert_float_eq(row[7], 0.09f, 1e-7);
    cr_assert_float_eq(row[8], 1.0f, 1e-6);
    cr_assert_float_eq(row[0], -1.5 / 30.1, 1e-7);
    cr_assert_eq(row[1], 0.0f);   /* clipped by L1: exactly zero */
    cr_assert_float_eq(row[2], 7.03 / 20.1, 1e-6);

    /* Step 2 on coordinate 1 only, g = 0.4: n = 0.25,
     * sigma = (0.5 - 0.3)/0.1 = 2, z = 0.3 + 0.4 - 2*0 = 0.7 > l1,
     * w = -(0.7 - 0.5) / ((1 + 0.5)/0.1 + 0.1) = -0.2/15.1.
     * Coordinates 0 and 2 see g = 0: weight and state stay as they are. */
    float before[9];
    memcpy(before, row, sizeof row);
    const float g2[3] = {0.0f, 0.4f, 0.0f};
    cm_optim_update(&o, row, g2, 3);
    cr_assert_float_eq(row[4], 0.7f, 1e-6);
    cr_assert_float_eq(row[7], 0.25f, 1e-7);
    cr_assert_float_eq(row[1], -0.2 / 15.1, 1e-7);
    for (int j = 0; j < 9; j++)
        if (j != 1 && j != 4 && j != 7)
            cr_assert_eq(row[j], before[j], "entry %d moved", j);

    /* Step 3, g = -0.7 on coordinate 1 pulls z back inside [-l1, l1]:
     * n = 0.74, sigma = (sqrt(0.74) - 0.5)/0.1, z = 0.7 - 0.7 - sigma*w
     * = sigma * 0.2/15.1 (small, positive) <= l1, so w is exactly 0 again. */
    const float g3[3] = {0.0f, -0.7f, 0.0f};
    cm_optim_update(&o, row, g3, 3);
    double sigma = (sqrt(0.74) - 0.5) / 0.1;
    cr_assert_float_eq(row[4], sigma * 0.2 / 15.1, 1e-6);
    cr_assert_eq(row[1], 0.0f);
}

/* FTRL-proximal in double, the textbook form (McMahan et al. 2013). */
static void s_ftrl_ref(double *w, double *z, double *n, const double *g, int dim,
                       double alpha, double beta, double l1, double l2)
{
    for (int j = 0; j < dim; j++) {
        if (g[j] == 0)
            continue;
        double sigma = (sqrt(n[j] + g[j] * g[j]) - sqrt(n[j])) / alpha;
        z[j] += g[j] - sigma * w[j];
        n[j] += g[j] * g[j];
        w[j] = fabs(z[j]) <= l1
                   ? 0
                   : -(z[j] - (z[j] > 0 ? l1 : -l1)) / ((beta + sqrt(n[j])) / alpha + l2);
    }
}

Test(optim, ftrl_matches_double_reference)
{
    cm_optim o = s_ftrl();
    o.l1 = 0.05f;
    enum { D = 4, STEPS = 30 };
    float row[3 * D] = {0.0f, 0.1f, -0.2f, 0.0f};
    cm_optim_init_state(&o, row, D);
    double w[D], z[D], n[D];
    for (int j = 0; j < D; j++) {
        w[j] = row[j];
        z[j] = row[D + j];
        n[j] = row[2 * D + j];
    }
    int zeros = 0, nonzeros = 0;
    for (int s = 0; s < STEPS; s++) {
        float g[D];
        double gd[D];
        for (int j = 0; j < D; j++) {
            g[j] = (s + j) % 4 == 0 ? 0.0f : (float)(0.3 * sin(0.7 * s + 2 * j) + 0.02 * j);
            gd[j] = g[j];
        }
        cm_optim_update(&o, row, g, D);
        s_ftrl_ref(w, z, n, gd, D, o.lr, o.beta, o.l1, o.l2);
        for (int j = 0; j < D; j++) {
            cr_assert_float_eq(row[j], w[j], 1e-5, "step %d w[%d]: %g vs %g", s, j,
                               (double)row[j], w[j]);
            cr_assert_float_eq(row[D + j], z[j], 1e-4, "step %d z[%d]", s, j);
            cr_assert_float_eq(row[2 * D + j], n[j], 1e-5, "step %d n[%d]", s, j);
            if (w[j] == 0) {
                cr_assert_eq(row[j], 0.0f, "step %d w[%d] not exactly 0", s, j);
                zeros++;
            } else {
                nonzeros++;
            }
        }
    }
    cr_assert_gt(zeros, 0);      /* the case exercises both branches */
    cr_assert_gt(nonzeros, 0);
}

Test(optim, ftrl_without_l1_l2_follows_the_gradient)
{
    /* l1 = l2 = 0, beta 1: from w0 the first step is
     * w = w0 - alpha g / (beta + |g|) (the initial weight survives). */
    cm_optim o = cm_optim_default(CM_OPT_FTRL, 0.5f);
    float row[3] = {0.25f};
    cm_optim_init_state(&o, row, 1);
    const float g[1] = {3.0f};
    cm_optim_update(&o, row, g, 1);
    cr_assert_float_eq(row[0], 0.25 - 0.5 * 3.0 / 4.0, 1e-6);
}

/* ---- the per-weight and vector forms kernels use --------------------- */

/* Gradients with a spread of magnitudes, from a fixed integer recurrence. */
static void s_grads(float *g, int n, unsigned seed)
{
    for (int j = 0; j < n; j++) {
        seed = seed * 1103515245u + 12345u;
        g[j] = ((float)((seed >> 8) & 0xFFFF) / 32768.0f - 1.0f) * (j % 3 ? 1.0f : 7.5f);
    }
}

Test(optim, adagrad1_is_the_update_bit_for_bit)
{
    cm_optim o = cm_optim_default(CM_OPT_ADAGRAD, 0.07f);
    enum { D = 21 };
    float a[2 * D], b[2 * D], g[D];
    s_grads(a, D, 7);
    memcpy(b, a, sizeof(float) * D);
    cm_optim_init_state(&o, a, D);
    cm_optim_init_state(&o, b, D);
    for (int step = 0; step < 5; step++) {
        s_grads(g, D, 100u + (unsigned)step);
        cm_optim_update(&o, a, g, D);
        for (int j = 0; j < D; j++)
            cm_optim_adagrad1(&b[j], &b[D + j], g[j], o.lr, o.eps);
    }
    cr_assert(memcmp(a, b, sizeof a) == 0, "adagrad1 and update differ");
    /* and the step moved the row: the comparison above is not of two no-ops */
    float fresh[D];
    s_grads(fresh, D, 7);
    cr_assert(memcmp(fresh, a, sizeof fresh) != 0);
}

Test(optim, rowwise_step_is_the_update_bit_for_bit)
{
    cm_optim o = cm_optim_default(CM_OPT_ROWWISE, 0.05f);
    enum { D = 9 };
    float a[D + 1], b[D + 1], g[D];
    s_grads(a, D, 3);
    memcpy(b, a, sizeof(float) * D);
    cm_optim_init_state(&o, a, D);
    cm_optim_init_state(&o, b, D);
    for (int step = 0; step < 4; step++) {
        s_grads(g, D, 50u + (unsigned)step);
        cm_optim_update(&o, a, g, D);
        float sq = 0.f;
        for (int j = 0; j < D; j++)
            sq += g[j] * g[j];
        const float s = cm_optim_rowwise_step(&b[D], sq, D, o.lr, o.eps);
        for (int j = 0; j < D; j++)
            b[j] -= s * g[j];
    }
    cr_assert(memcmp(a, b, sizeof a) == 0, "rowwise_step and update differ");
    cr_assert_gt(a[D], o.init_accum);
}

#if defined(__AVX512F__)
Test(optim, vector_forms_follow_the_scalar_rules)
{
    cm_optim o = cm_optim_default(CM_OPT_ADAGRAD, 0.07f);
    float w[16], acc[16], g[16], ws[32], out[16], aout[16];
    s_grads(w, 16, 11);
    s_grads(g, 16, 12);
    for (int j = 0; j < 16; j++)
        acc[j] = 0.1f + 0.05f * (float)j;
    memcpy(ws, w, sizeof w);
    memcpy(ws + 16, acc, sizeof acc);
    cm_optim_update(&o, ws, g, 16);
    __m512 va = _mm512_loadu_ps(acc);
    __m512 vw = cm_optim_adagrad16(_mm512_loadu_ps(w), _mm512_loadu_ps(g), &va,
                                   _mm512_set1_ps(o.lr), _mm512_set1_ps(o.eps));
    _mm512_storeu_ps(out, vw);
    _mm512_storeu_ps(aout, va);
    for (int j = 0; j < 16; j++) {
        /* the accumulator is exact (one fused multiply-add, as the scalar
         * rule compiles here or within one rounding) and the step within
         * the approximate rsqrt's error */
        cr_assert_float_eq(aout[j], ws[16 + j], 1e-6f * ws[16 + j]);
        const float step = w[j] - ws[j];
        cr_assert(fabsf((w[j] - out[j]) - step) <= 1e-5f * fabsf(step) + 1e-9f,
                  "weight %d: vector step %g, scalar %g", j, (double)(w[j] - out[j]),
                  (double)step);
    }
    cm_optim sgd = cm_optim_default(CM_OPT_SGD, 0.3f);
    memcpy(ws, w, sizeof w);
    cm_optim_update(&sgd, ws, g, 16);
    _mm512_storeu_ps(out, cm_optim_sgd16(_mm512_loadu_ps(w), _mm512_loadu_ps(g),
                                         _mm512_set1_ps(sgd.lr)));
    for (int j = 0; j < 16; j++)
        cr_assert_float_eq(out[j], ws[j], 1e-6f * (fabsf(ws[j]) + 1e-3f));
}
#endif
