/* half: exact round trips of every half value, round-to-nearest-even
 * against a brute-force reference, clamping, NaN, and the vector paths
 * equal to the scalar ones. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "common/half.h"
#include "common/rng.h"

static uint16_t s_h[1000];
static float s_f[1000], s_back[1000];

Test(half, every_half_round_trips)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float x = cm_half_value((uint16_t)h);
        if (isnan(x)) {
            cr_assert(isnan(cm_half_value(cm_half_of(x))), "NaN %04x", h);
            continue;
        }
        uint16_t back = cm_half_of(x);
        if (isinf(x)) /* infinities clamp to the largest finite half */
            cr_assert_eq(back, (h & 0x8000u) | 0x7bffu, "%04x", h);
        else
            cr_assert_eq(back, h, "%04x -> %g -> %04x", h, (double)x, back);
    }
}

Test(half, known_values)
{
    cr_assert_eq(cm_half_of(1.0f), 0x3c00);
    cr_assert_eq(cm_half_of(-2.0f), 0xc000);
    cr_assert_eq(cm_half_of(65504.0f), 0x7bff);
    cr_assert_eq(cm_half_of(1e9f), 0x7bff);
    cr_assert_eq(cm_half_of(-INFINITY), 0xfbff);
    cr_assert_eq(cm_half_of(5.9604645e-8f), 0x0001);   /* 2^-24 */
    cr_assert_eq(cm_half_of(2.0e-8f), 0x0000);         /* below half of 2^-24 */
    cr_assert_eq(cm_half_of(-0.0f), 0x8000);
    cr_assert_eq(cm_half_of(6.1035156e-5f), 0x0400);   /* 2^-14 */
    /* ties to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 */
    cr_assert_eq(cm_half_of(1.0f + 0x1p-11f), 0x3c00);
    cr_assert_eq(cm_half_of(1.0f + 3 * 0x1p-11f), 0x3c02);
    cr_assert(isnan(cm_half_value(cm_half_of(NAN))));
}

/* The nearest half by search over all finite halves (ties to the even one). */
static uint16_t s_nearest(float x)
{
    uint16_t best = 0;
    double bd = INFINITY;
    for (uint32_t h = 0; h < 65536; h++) {
        float v = cm_half_value((uint16_t)h);
        if (!isfinite(v) || (signbit(v) != signbit(x)))
            continue;
        double d = fabs((double)v - (double)x);
        if (d < bd || (d == bd && !(h & 1u))) {
            bd = d;
            best = (uint16_t)h;
        }
    }
    return best;
}

Test(half, rounds_to_nearest_even)
{
    cm_rng rng;
    cm_rng_seed(&rng, 3);
    for (int k = 0; k < 300; k++) {
        /* magnitudes from 2^-26 to 2^16 */
        double e = -26.0 + 42.0 * (double)cm_rng_below(&rng, 1u << 20) / (1u << 20);
        float x = (float)ldexp(1.0 + (double)cm_rng_below(&rng, 1u << 23) / (1u << 23), (int)e);
        if (k % 2)
            x = -x;
        if (fabsf(x) > CM_HALF_MAX)
            continue;
        cr_assert_eq(cm_half_of(x), s_nearest(x), "x %a", (double)x);
    }
}

Test(half, vectors_match_scalar)
{
    cm_rng rng;
    cm_rng_seed(&rng, 9);
    for (size_t i = 0; i < 1000; i++) {
        double e = -30.0 + 50.0 * (double)cm_rng_below(&rng, 1u << 20) / (1u << 20);
        s_f[i] = (float)ldexp((double)cm_rng_below(&rng, 1u << 24) / (1u << 23) - 1.0, (int)e);
    }
    s_f[7] = NAN;
    s_f[8] = INFINITY;
    s_f[9] = -1e30f;
    cm_half_from_f32(s_f, s_h, 999); /* not a multiple of 8: tail path too */
    for (size_t i = 0; i < 999; i++) {
        if (isnan(s_f[i]))
            cr_assert(isnan(cm_half_value(s_h[i])));
        else
            cr_assert_eq(s_h[i], cm_half_of(s_f[i]), "i %zu x %a", i, (double)s_f[i]);
    }
    cm_half_to_f32(s_h, s_back, 999);
    for (size_t i = 0; i < 999; i++)
        if (!isnan(s_f[i]))
            cr_assert_eq(s_back[i], cm_half_value(s_h[i]), "i %zu", i);
}
