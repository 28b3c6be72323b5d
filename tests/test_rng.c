/* Tests for common/rng: determinism, ranges and distribution moments. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "common/hash.h"
#include "common/rng.h"

#define N_SAMPLES 1000000

Test(rng, same_seed_same_sequence)
{
    cm_rng a, b;
    cm_rng_seed(&a, 12345);
    cm_rng_seed(&b, 12345);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(cm_rng_next(&a), cm_rng_next(&b));
}

Test(rng, seeds_differ_and_zero_is_valid)
{
    cm_rng a, b, z;
    cm_rng_seed(&a, 1);
    cm_rng_seed(&b, 2);
    cm_rng_seed(&z, 0);
    int same = 0;
    uint64_t orz = 0;
    for (int i = 0; i < 100; i++) {
        same += cm_rng_next(&a) == cm_rng_next(&b);
        orz |= cm_rng_next(&z);
    }
    cr_assert_eq(same, 0);
    cr_assert_neq(orz, 0, "seed 0 must give a working stream");
}

Test(rng, seeding_is_splitmix64)
{
    cm_rng r;
    cm_rng_seed(&r, 777);
    cr_assert_eq(r.s[0], cm_mix64(777));
    cr_assert_eq(r.s[1], cm_mix64(777 + 0x9e3779b97f4a7c15ULL));
    cr_assert_eq(r.has_spare, 0);
}

Test(rng, copy_forks_the_stream)
{
    cm_rng a;
    cm_rng_seed(&a, 99);
    for (int i = 0; i < 10; i++)
        cm_rng_next(&a);
    cm_rng b = a;
    for (int i = 0; i < 100; i++)
        cr_assert_eq(cm_rng_next(&a), cm_rng_next(&b));
}

Test(rng, next_bits_are_balanced)
{
    cm_rng r;
    cm_rng_seed(&r, 5);
    long ones[64] = {0};
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        uint64_t x = cm_rng_next(&r);
        for (int b = 0; b < 64; b++)
            ones[b] += (x >> b) & 1;
    }
    /* sd of each count is sqrt(n)/2 ~ 224; 6 sd */
    for (int b = 0; b < 64; b++)
        cr_assert(fabs((double)ones[b] - n / 2.0) < 6 * sqrt(n) / 2, "bit %d: %ld ones", b, ones[b]);
}

Test(rng, uniform_range_and_moments)
{
    cm_rng r;
    cm_rng_seed(&r, 42);
    double sum = 0, sum2 = 0, lo = 1, hi = 0;
    for (int i = 0; i < N_SAMPLES; i++) {
        double u = cm_rng_uniform(&r);
        cr_assert(u >= 0.0 && u < 1.0);
        sum += u;
        sum2 += u * u;
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
    }
    double mean = sum / N_SAMPLES, var = sum2 / N_SAMPLES - mean * mean;
    cr_assert(fabs(mean - 0.5) < 0.002, "mean %f", mean);
    cr_assert(fabs(var - 1.0 / 12) < 0.001, "var %f", var);
    cr_assert(lo < 1e-5 && hi > 1 - 1e-5);
}

Test(rng, below_is_in_range_and_uniform)
{
    cm_rng r;
    cm_rng_seed(&r, 3);
    enum { K = 10 };
    long count[K] = {0};
    const int n = N_SAMPLES;
    for (int i = 0; i < n; i++) {
        uint64_t x = cm_rng_below(&r, K);
        cr_assert_lt(x, K);
        count[x]++;
    }
    /* chi-square with 9 degrees of freedom: p = 0.001 at 27.9 */
    double chi2 = 0, e = (double)n / K;
    for (int k = 0; k < K; k++)
        chi2 += (count[k] - e) * (count[k] - e) / e;
    cr_assert_lt(chi2, 27.9, "chi2 %f", chi2);

    for (int i = 0; i < 1000; i++)
        cr_assert_eq(cm_rng_below(&r, 1), 0);
    /* A bound just over 2^63 rejects about half the draws; still in range
     * and both halves reached. */
    uint64_t big = (1ULL << 63) + 12345, seen_hi = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = cm_rng_below(&r, big);
        cr_assert_lt(x, big);
        seen_hi |= x >= (1ULL << 62);
    }
    cr_assert(seen_hi);
    for (int i = 0; i < 1000; i++)
        cr_assert_lt(cm_rng_below(&r, UINT64_MAX), UINT64_MAX);
}

Test(rng, below_unbiased_for_non_power_of_two)
{
    /* n = 3 * 2^61: a plain modulo of 64 bits would favour the low third
     * (2/3 of the mass above 2^63 folds onto [0, 2^62)), Lemire does not. */
    cm_rng r;
    cm_rng_seed(&r, 8);
    uint64_t n = 3ULL << 61, third = 1ULL << 61;
    long low = 0;
    const int draws = 300000;
    for (int i = 0; i < draws; i++)
        low += cm_rng_below(&r, n) < third;
    double frac = (double)low / draws;
    cr_assert(fabs(frac - 1.0 / 3) < 0.005, "share of the low third %f", frac);
}

Test(rng, normal_moments)
{
    cm_rng r;
    cm_rng_seed(&r, 2024);
    double m1 = 0, m2 = 0, m3 = 0, m4 = 0;
    long beyond2 = 0;
    for (int i = 0; i < N_SAMPLES; i++) {
        double z = cm_rng_normal(&r);
        cr_assert(isfinite(z));
        m1 += z;
        m2 += z * z;
        m3 += z * z * z;
        m4 += z * z * z * z;
        beyond2 += fabs(z) > 2.0;
    }
    m1 /= N_SAMPLES;
    m2 /= N_SAMPLES;
    m3 /= N_SAMPLES;
    m4 /= N_SAMPLES;
    cr_assert(fabs(m1) < 0.005, "mean %f", m1);
    cr_assert(fabs(m2 - 1) < 0.005, "var %f", m2);
    cr_assert(fabs(m3) < 0.02, "skew %f", m3);
    cr_assert(fabs(m4 - 3) < 0.05, "kurtosis %f", m4);
    /* P(|z| > 2) = 0.0455 */
    cr_assert(fabs((double)beyond2 / N_SAMPLES - 0.0455) < 0.001);
}

Test(rng, normal_spare_is_part_of_the_state)
{
    cm_rng a;
    cm_rng_seed(&a, 10);
    double z0 = cm_rng_normal(&a);
    cr_assert_eq(a.has_spare, 1);
    cm_rng b = a; /* a copy carries the pending spare */
    cr_assert_eq(cm_rng_normal(&a), cm_rng_normal(&b));
    cr_assert_eq(a.has_spare, 0);
    cm_rng c;
    cm_rng_seed(&c, 10);
    cr_assert_eq(cm_rng_normal(&c), z0);
    /* reseeding drops a pending spare */
    cm_rng_seed(&c, 10);
    cr_assert_eq(c.has_spare, 0);
    cr_assert_eq(cm_rng_normal(&c), z0);
}

Test(rng, shuffle_is_a_uniform_permutation)
{
    cm_rng r;
    cm_rng_seed(&r, 77);
    enum { N = 8, TRIALS = 80000 };
    long first[N] = {0};
    for (int t = 0; t < TRIALS; t++) {
        uint32_t idx[N];
        for (uint32_t i = 0; i < N; i++)
            idx[i] = i;
        cm_rng_shuffle_u32(&r, idx, N);
        int seen[N] = {0};
        for (int i = 0; i < N; i++) {
            cr_assert_lt(idx[i], N);
            seen[idx[i]]++;
        }
        for (int i = 0; i < N; i++)
            cr_assert_eq(seen[i], 1);
        first[idx[0]]++;
    }
    double e = (double)TRIALS / N, chi2 = 0;
    for (int i = 0; i < N; i++)
        chi2 += (first[i] - e) * (first[i] - e) / e;
    cr_assert_lt(chi2, 24.3, "chi2 %f (7 dof, p=0.001)", chi2);

    uint32_t one = 5;
    cm_rng_shuffle_u32(&r, &one, 1);
    cr_assert_eq(one, 5);
    cm_rng_shuffle_u32(&r, NULL, 0);
}

Test(rng, shuffle_is_deterministic)
{
    uint32_t a[100], b[100];
    for (uint32_t i = 0; i < 100; i++)
        a[i] = b[i] = i;
    cm_rng r1, r2;
    cm_rng_seed(&r1, 4);
    cm_rng_seed(&r2, 4);
    cm_rng_shuffle_u32(&r1, a, 100);
    cm_rng_shuffle_u32(&r2, b, 100);
    cr_assert_arr_eq(a, b, sizeof a);
    int moved = 0;
    for (uint32_t i = 0; i < 100; i++)
        moved += a[i] != i;
    cr_assert_gt(moved, 80);
}
