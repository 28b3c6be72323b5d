/* Tests for common/rng: determinism, ranges and distribution moments; for
 * the ziggurat of cm_rng_normals_f32 also its tables, pinned output bits,
 * tail frequencies and goodness of fit to the normal CDF. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/rng.h"
#include "common/rng_zig.h"

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

/* ------------------------------------------------------------------------ */
/* cm_rng_normals_f32: a ziggurat
 *
 * Statistical bounds are 5 standard errors (a false failure about once in
 * 1.7 million runs per bound) unless a test says otherwise; every test uses
 * a fixed seed, so a pass or a failure repeats. */

static float *s_normals(uint64_t seed, size_t n, float scale)
{
    float *z = malloc(n * sizeof *z);
    cr_assert_not_null(z);
    cm_rng r;
    cm_rng_seed(&r, seed);
    for (size_t at = 0; at < n; at += 1000)
        cm_rng_normals_f32(&r, z + at, (int)(n - at < 1000 ? n - at : 1000), scale);
    return z;
}

/* Phi(x), the standard normal CDF. */
static double s_phi(double x)
{
    return 0.5 * erfc(-x / sqrt(2.0));
}

Test(rng, zig_tables_are_equal_area_layers_under_the_curve)
{
    /* Checks common/rng_zig.h against libm: the layers of a ziggurat must
     * have one area v, their corners lie on f(x) = exp(-x^2/2), the base
     * layer's virtual width covers the tail, and the fast-accept bounds
     * match the widths. */
    const int n = S_ZIG_LAYERS;
    const double v = S_ZIG_V, r = S_ZIG_R;
    double x[S_ZIG_LAYERS + 1];
    for (int i = 0; i < n; i++)
        x[i] = s_zig_w[i] * 0x1p53;
    x[n] = 0.0;
    cr_assert_eq(x[1], r);
    cr_assert_eq(s_zig_y[0], 0.0);
    cr_assert_eq(s_zig_y[n], 1.0);
    double tail = sqrt(M_PI / 2) * erfc(r / sqrt(2.0));
    cr_assert_lt(fabs(r * exp(-r * r / 2) + tail - v), 1e-14 * v, "base layer");
    cr_assert_lt(fabs(x[0] * s_zig_y[1] - v), 1e-14 * v, "base layer's width");
    for (int i = 1; i < n; i++) {
        cr_assert_lt(x[i + 1], x[i], "layer %d", i);
        double f = exp(-x[i] * x[i] / 2);
        /* x[i] is rounded: up to x^2 ulp of slack in f(x[i]) */
        cr_assert_lt(fabs(s_zig_y[i] - f), 4e-15 * f, "y[%d] %a, exp %a", i, s_zig_y[i], f);
        double area = x[i] * (s_zig_y[i + 1] - s_zig_y[i]);
        cr_assert_lt(fabs(area - v), 1e-12 * v, "layer %d: area %.17g, v %.17g", i, area, v);
    }
    for (int i = 0; i < n; i++) {
        /* x[i] and x[i+1] are rounded: a few units of slack */
        double k = ceil(0x1p53 * (x[i + 1] / x[i]));
        cr_assert_leq(fabs((double)s_zig_k[i] - k), 4.0, "k[%d] %llu, %.17g", i,
                      (unsigned long long)s_zig_k[i], k);
        cr_assert_leq(s_zig_k[i], 1ULL << 53);
    }
    cr_assert_eq(s_zig_k[n - 1], 0, "the top layer is all wedge");
}

Test(rng, normals_f32_same_seed_same_sequence)
{
    float a[64], b[64], c[64];
    cm_rng ra, rb, rc;
    cm_rng_seed(&ra, 31);
    cm_rng_seed(&rb, 31);
    cm_rng_seed(&rc, 32);
    cm_rng_normals_f32(&ra, a, 64, 1.0f);
    cm_rng_normals_f32(&rb, b, 64, 1.0f);
    cm_rng_normals_f32(&rc, c, 64, 1.0f);
    cr_assert_arr_eq(a, b, sizeof a);
    int same = 0;
    for (int i = 0; i < 64; i++)
        same += a[i] == c[i];
    cr_assert_eq(same, 0, "another seed, another sequence");
    /* Calls continue one stream: 10, 0 and then 54 deviates are the 64 of
     * one call, and the state after them is the same. */
    cm_rng_seed(&rb, 31);
    memset(b, 0, sizeof b);
    cm_rng_normals_f32(&rb, b, 10, 1.0f);
    cm_rng_normals_f32(&rb, b + 10, 0, 1.0f);
    cm_rng_normals_f32(&rb, b + 10, 54, 1.0f);
    cr_assert_arr_eq(a, b, sizeof a);
    cr_assert_eq(cm_rng_next(&ra), cm_rng_next(&rb));
}

Test(rng, normals_f32_leave_the_box_muller_spare)
{
    cm_rng a, b;
    cm_rng_seed(&a, 10);
    (void)cm_rng_normal(&a);
    b = a;
    float z[8];
    cm_rng_normals_f32(&a, z, 8, 1.0f);
    cr_assert_eq(a.has_spare, 1);
    cr_assert_eq(cm_rng_normal(&a), cm_rng_normal(&b), "the pending spare is unchanged");
}

Test(rng, normals_f32_scale)
{
    /* The deviates are one stream times scale: doubling the scale doubles
     * every value exactly, a negative scale mirrors it, 0 gives zeros, and
     * any scale is the unit deviate times scale within float rounding. */
    enum { N = 4096 };
    float *one = s_normals(6, N, 1.0f), *two = s_normals(6, N, 2.0f);
    float *tenth = s_normals(6, N, 0.1f), *neg = s_normals(6, N, -1.0f);
    float *zero = s_normals(6, N, 0.0f);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(two[i], 2.0f * one[i], "%d", i);
        cr_assert_eq(neg[i], -one[i], "%d", i);
        cr_assert_eq(zero[i], 0.0f, "%d", i);
        double want = 0.1 * one[i];
        cr_assert_leq(fabs(tenth[i] - want), 0x1p-23 * fabs(want), "%d: %a %a", i, tenth[i], want);
    }
    free(one);
    free(two);
    free(tenth);
    free(neg);
    free(zero);
}

Test(rng, normals_f32_bits_are_pinned)
{
    /* The same bits on every build (-O0 or -O3, any -march, any processor):
     * the fast path is exact integer and IEEE arithmetic, the wedge and tail
     * use our own exp and log, and rng.c is built without fused
     * multiply-adds. The hash covers 10^6 deviates, so about 15000 of them
     * came through wedge tests and 260 through the tail. Changing
     * these constants changes every table's initial rows: only on purpose. */
    enum { N = 1000000 };
    float *z = s_normals(2024, N, 1.0f);
    cr_assert_eq(z[0], -0x1.f97296p-4f, "%a", z[0]);
    cr_assert_eq(z[1], 0x1.5944eap+0f, "%a", z[1]);
    uint64_t h = 0;
    for (int i = 0; i < N; i++) {
        uint32_t b;
        memcpy(&b, &z[i], sizeof b);
        h = cm_mix64(h ^ b);
    }
    cr_assert_eq(h, 0xf6f354cb019ca638ULL, "hash %#018llx", (unsigned long long)h);
    free(z);
}

Test(rng, normals_f32_moments)
{
    /* Standard errors over n draws: mean 1/sqrt(n); E z^2 sqrt(2/n);
     * E z^3 sqrt(15/n); E z^4 sqrt(96/n) (var z^4 = 105 - 9). */
    enum { N = N_SAMPLES };
    float *z = s_normals(2025, N, 1.0f);
    double m1 = 0, m2 = 0, m3 = 0, m4 = 0;
    for (int i = 0; i < N; i++) {
        double x = z[i];
        cr_assert(isfinite(x));
        m1 += x;
        m2 += x * x;
        m3 += x * x * x;
        m4 += x * x * x * x;
    }
    m1 /= N;
    m2 /= N;
    m3 /= N;
    m4 /= N;
    const double n = N;
    cr_assert_lt(fabs(m1), 5 * sqrt(1 / n), "mean %f", m1);
    cr_assert_lt(fabs(m2 - 1), 5 * sqrt(2 / n), "E z^2 %f", m2);
    cr_assert_lt(fabs(m3), 5 * sqrt(15 / n), "E z^3 %f", m3);
    cr_assert_lt(fabs(m4 - 3), 5 * sqrt(96 / n), "E z^4 %f", m4);
    free(z);
}

Test(rng, normals_f32_tail_frequencies)
{
    /* P(|z| > t) against erfc(t / sqrt 2), binomial standard errors; t = r
     * is where the ziggurat's tail algorithm takes over. 10^7 draws: about
     * 2580 land beyond r. */
    enum { N = 10000000 };
    const double t[5] = {1.0, 2.0, 3.0, S_ZIG_R, 4.0};
    long beyond[5] = {0}, pos = 0;
    cm_rng r;
    cm_rng_seed(&r, 2026);
    float z[1000];
    for (int at = 0; at < N; at += 1000) {
        cm_rng_normals_f32(&r, z, 1000, 1.0f);
        for (int i = 0; i < 1000; i++) {
            for (int k = 0; k < 5; k++)
                beyond[k] += fabsf(z[i]) > t[k];
            pos += z[i] > 0;
        }
    }
    for (int k = 0; k < 5; k++) {
        double p = erfc(t[k] / sqrt(2.0)), se = sqrt(p * (1 - p) / N);
        double got = (double)beyond[k] / N;
        cr_assert_lt(fabs(got - p), 5 * se, "P(|z| > %g): %g, normal %g (se %g)", t[k], got,
                     p, se);
    }
    cr_assert_lt(fabs((double)pos / N - 0.5), 5 * sqrt(0.25 / N), "positive share");
}

static int s_cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

Test(rng, normals_f32_fit_the_normal_cdf)
{
    /* Kolmogorov-Smirnov: sqrt(n) D_n exceeds 1.95 with probability 0.001
     * under the null. Then a chi-square over 80 bins of width 0.1 on
     * [-4, 4] plus the two tails (81 degrees of freedom; 126.1 is its 0.999
     * quantile): the bins are narrower than most ziggurat layers, so a layer
     * drawn wrongly shows. */
    enum { N = N_SAMPLES, BINS = 82 };
    float *z = s_normals(2027, N, 1.0f);
    qsort(z, N, sizeof *z, s_cmp_float);
    double d = 0;
    for (int i = 0; i < N; i++) {
        double f = s_phi(z[i]);
        double lo = f - (double)i / N, hi = (double)(i + 1) / N - f;
        d = lo > d ? lo : d;
        d = hi > d ? hi : d;
    }
    cr_assert_lt(sqrt((double)N) * d, 1.95, "KS: D = %g", d);

    long count[BINS] = {0};
    for (int i = 0; i < N; i++) {
        int b = BINS - 1;
        if (z[i] < -4.0f)
            b = 0;
        else if (z[i] < 4.0f)
            b = 1 + (int)floor((z[i] + 4.0) * 10);
        count[b]++;
    }
    double chi2 = 0;
    for (int b = 0; b < BINS; b++) {
        double lo = b == 0 ? -INFINITY : -4.0 + (b - 1) * 0.1;
        double hi = b == BINS - 1 ? INFINITY : -4.0 + b * 0.1;
        double e = N * (s_phi(hi) - s_phi(lo));
        chi2 += (count[b] - e) * (count[b] - e) / e;
    }
    cr_assert_lt(chi2, 126.1, "chi2 %f (81 dof)", chi2);
    free(z);
}

Test(rng, normals_f32_tail_shape)
{
    /* Beyond r, where the deviates come from the tail algorithm, their
     * distribution is the normal's conditioned on |z| > r: KS on the about
     * 5000 magnitudes of 2 * 10^7 draws (critical 1.95 / sqrt(m), p = 0.001). */
    enum { N = 20000000, CAP = 8000 };
    static float big[CAP];
    int m = 0;
    cm_rng r;
    cm_rng_seed(&r, 2028);
    float z[1000];
    for (int at = 0; at < N; at += 1000) {
        cm_rng_normals_f32(&r, z, 1000, 1.0f);
        for (int i = 0; i < 1000; i++)
            if (fabsf(z[i]) > S_ZIG_R && m < CAP)
                big[m++] = fabsf(z[i]);
    }
    cr_assert_gt(m, 4000);
    cr_assert_lt(m, CAP);
    qsort(big, (size_t)m, sizeof *big, s_cmp_float);
    const double q = erfc(S_ZIG_R / sqrt(2.0));
    double d = 0;
    for (int i = 0; i < m; i++) {
        double f = 1.0 - erfc(big[i] / sqrt(2.0)) / q;
        double lo = f - (double)i / m, hi = (double)(i + 1) / m - f;
        d = lo > d ? lo : d;
        d = hi > d ? hi : d;
    }
    cr_assert_lt(sqrt((double)m) * d, 1.95, "KS beyond r: D = %g over %d", d, m);
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

/* Gamma(k, 1): mean k and variance k, at shapes below, at and above 1
 * (within 5 standard errors of the mean; the variance within 5%). */
Test(rng, gamma_moments)
{
    const double shapes[] = {0.3, 1.0, 3.7, 60.0};
    const int n = 200000;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        cm_rng r;
        cm_rng_seed(&r, 17 + s);
        double sum = 0, sq = 0;
        for (int i = 0; i < n; i++) {
            double x = cm_rng_gamma(&r, shapes[s]);
            cr_assert(x > 0 && isfinite(x), "shape %g: deviate %g", shapes[s], x);
            sum += x;
            sq += x * x;
        }
        double mean = sum / n, var = sq / n - mean * mean, k = shapes[s];
        cr_expect(fabs(mean - k) < 5 * sqrt(k / n), "shape %g: mean %g", k, mean);
        cr_expect(fabs(var - k) < 0.05 * k, "shape %g: variance %g", k, var);
    }
}

/* N(0,1) conditioned on z > a: always above a, with the truncated mean
 * phi(a) / (1 - Phi(a)), on both sides of the method's switch at 0.45 and
 * far in the tail. */
Test(rng, normal_above_is_the_truncated_normal)
{
    const double at[] = {-2.0, 0.0, 0.45, 0.5, 2.0, 6.0};
    const int n = 100000;
    for (size_t s = 0; s < sizeof at / sizeof at[0]; s++) {
        cm_rng r;
        cm_rng_seed(&r, 91 + s);
        const double a = at[s];
        double sum = 0, sq = 0;
        for (int i = 0; i < n; i++) {
            double z = cm_rng_normal_above(&r, a);
            cr_assert(z > a, "a %g: deviate %g", a, z);
            sum += z;
            sq += z * z;
        }
        const double tail = 0.5 * erfc(a / sqrt(2.0));
        const double want = exp(-0.5 * a * a) / sqrt(2.0 * M_PI) / tail;
        const double var = 1 + a * want - want * want, mean = sum / n;
        cr_expect(fabs(mean - want) < 5 * sqrt(var / n), "a %g: mean %g, want %g", a, mean,
                  want);
        cr_expect(fabs((sq / n - mean * mean) - var) < 0.05 * var + 1e-4,
                  "a %g: variance %g, want %g", a, sq / n - mean * mean, var);
    }
}
