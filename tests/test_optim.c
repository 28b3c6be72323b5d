/* Tests for ps/optim.c against values computed by hand (and checked in
 * double precision): one SGD step, three AdaGrad steps with the
 * accumulator, and the state initialisation. */
#include <criterion/criterion.h>
#include <math.h>

#include "common/config.h"
#include "ps/optim.h"

#define TOL 1e-6f

Test(optim, state_per_weight)
{
    cr_assert_eq(ps_optim_state_floats(CM_OPT_SGD, 8), 0);
    cr_assert_eq(ps_optim_state_floats(CM_OPT_ADAGRAD, 8), 8);
    cr_assert_eq(ps_optim_state_floats(CM_OPT_ROWWISE, 8), 1);
}

Test(optim, sgd_step)
{
    ps_optim o = {.kind = CM_OPT_SGD, .lr = 0.1f};
    /* A sentinel after the row: SGD has no state and must not touch it. */
    float row[4] = {1.0f, -2.0f, 0.5f, 42.0f};
    const float g[3] = {0.5f, -1.0f, 2.0f};
    ps_optim_update(&o, row, g, 3);
    /* w - lr*g: 1-0.05, -2+0.1, 0.5-0.2 */
    cr_assert_float_eq(row[0], 0.95f, TOL);
    cr_assert_float_eq(row[1], -1.9f, TOL);
    cr_assert_float_eq(row[2], 0.3f, TOL);
    cr_assert_eq(row[3], 42.0f);
}

Test(optim, sgd_zero_lr_is_identity)
{
    ps_optim o = {.kind = CM_OPT_SGD, .lr = 0.0f};
    float row[2] = {3.0f, -4.0f};
    const float g[2] = {100.0f, -7.0f};
    ps_optim_update(&o, row, g, 2);
    cr_assert_eq(row[0], 3.0f);
    cr_assert_eq(row[1], -4.0f);
}

Test(optim, init_state_adagrad)
{
    ps_optim o = {.kind = CM_OPT_ADAGRAD, .lr = 0.1f, .eps = 1e-8f, .init_accum = 0.25f};
    float row[7] = {1, 2, 3, -1, -1, -1, 99};
    ps_optim_init_state(&o, row, 3);
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
    ps_optim o = {.kind = CM_OPT_SGD, .lr = 0.1f};
    float row[4] = {1, 2, -3, -4};
    ps_optim_init_state(&o, row, 2);
    cr_assert_eq(row[0], 1.0f);
    cr_assert_eq(row[1], 2.0f);
    cr_assert_eq(row[2], -3.0f);
    cr_assert_eq(row[3], -4.0f);
}

Test(optim, adagrad_three_steps)
{
    ps_optim o = {.kind = CM_OPT_ADAGRAD, .lr = 0.1f, .eps = 1e-8f, .init_accum = 0.1f};
    float row[4] = {1.0f, 0.0f, 0.0f, 0.0f};
    ps_optim_init_state(&o, row, 2);
    cr_assert_eq(row[2], 0.1f);
    cr_assert_eq(row[3], 0.1f);

    /* step 1, g = (0.3, -0.4): a = (0.19, 0.26);
     * w0 = 1 - 0.03/sqrt(0.19), w1 = 0 + 0.04/sqrt(0.26) */
    const float g1[2] = {0.3f, -0.4f};
    ps_optim_update(&o, row, g1, 2);
    cr_assert_float_eq(row[2], 0.19f, TOL);
    cr_assert_float_eq(row[3], 0.26f, TOL);
    cr_assert_float_eq(row[0], 0.931175282f, TOL);
    cr_assert_float_eq(row[1], 0.078446453f, TOL);

    /* step 2, g = (0.3, 0.2): a = (0.28, 0.30) */
    const float g2[2] = {0.3f, 0.2f};
    ps_optim_update(&o, row, g2, 2);
    cr_assert_float_eq(row[2], 0.28f, TOL);
    cr_assert_float_eq(row[3], 0.30f, TOL);
    cr_assert_float_eq(row[0], 0.874480612f, TOL);
    cr_assert_float_eq(row[1], 0.041931616f, TOL);

    /* step 3, g = (0, 1): weight 0 and its accumulator do not move */
    const float g3[2] = {0.0f, 1.0f};
    ps_optim_update(&o, row, g3, 2);
    cr_assert_float_eq(row[2], 0.28f, TOL);
    cr_assert_float_eq(row[3], 1.30f, TOL);
    cr_assert_float_eq(row[0], 0.874480612f, TOL);
    cr_assert_float_eq(row[1], -0.045774186f, TOL);
}

Test(optim, adagrad_steps_shrink)
{
    /* The same gradient repeated: each step is smaller than the last. */
    ps_optim o = {.kind = CM_OPT_ADAGRAD, .lr = 0.5f, .eps = 1e-8f, .init_accum = 0.1f};
    float row[2] = {0.0f, 0.0f};
    ps_optim_init_state(&o, row, 1);
    const float g[1] = {1.0f};
    float prev = row[0], last_step = INFINITY;
    for (int i = 0; i < 10; i++) {
        ps_optim_update(&o, row, g, 1);
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
    ps_optim o = {.kind = CM_OPT_ROWWISE, .lr = 0.5f, .eps = 0.0f, .init_accum = 0.1f};
    float row[3] = {1.0f, -1.0f, 0.0f};
    ps_optim_init_state(&o, row, 2);
    cr_assert_float_eq(row[2], 0.1f, 1e-7);
    const float g[2] = {3.0f, 4.0f};
    ps_optim_update(&o, row, g, 2);
    double step = 0.5 / sqrt(12.6);
    cr_expect_float_eq(row[2], 12.6f, 1e-5);
    cr_expect_float_eq(row[0], 1.0 - step * 3, 1e-6);
    cr_expect_float_eq(row[1], -1.0 - step * 4, 1e-6);
    /* a second step uses the grown accumulator: A = 12.6 + (1 + 0) / 2 */
    const float g2[2] = {1.0f, 0.0f};
    float w0 = row[0];
    ps_optim_update(&o, row, g2, 2);
    cr_expect_float_eq(row[2], 13.1f, 1e-5);
    cr_expect_float_eq(row[0], w0 - 0.5 / sqrt(13.1), 1e-6);
}
