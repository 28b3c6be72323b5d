/* rng: xoshiro256** (Blackman & Vigna) seeded through splitmix64.
 *
 * The state is four 64-bit words filled with consecutive splitmix64 outputs
 * of the seed, which never yields the forbidden all-zero state in practice;
 * we still guard against it so that every seed is valid. */
#include "common/rng.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "common/hash.h"
#include "common/rng_zig.h"

#define S_GOLDEN 0x9e3779b97f4a7c15ULL

static inline uint64_t s_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void cm_rng_seed(cm_rng *r, uint64_t seed)
{
    /* cm_mix64 adds the golden gamma before mixing, so these are exactly the
     * first four outputs of a splitmix64 generator started at `seed`. */
    for (int i = 0; i < 4; i++)
        r->s[i] = cm_mix64(seed + (uint64_t)i * S_GOLDEN);
    if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
        r->s[0] = S_GOLDEN;
    r->spare = 0.0;
    r->has_spare = 0;
}

uint64_t cm_rng_next(cm_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t result = s_rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s_rotl(s[3], 45);
    return result;
}

double cm_rng_uniform(cm_rng *r)
{
    /* The top 53 bits make every representable multiple of 2^-53 equally
     * likely; the result is never 1.0. */
    return (double)(cm_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t cm_rng_below(cm_rng *r, uint64_t n)
{
    assert(n > 0);
    /* Lemire's multiply-and-reject: the high word of x*n is uniform on [0, n)
     * once the low word is outside the short biased zone [0, 2^64 mod n). */
    unsigned __int128 m = (unsigned __int128)cm_rng_next(r) * n;
    uint64_t lo = (uint64_t)m;
    if (lo < n) {
        uint64_t threshold = (0 - n) % n;
        while (lo < threshold) {
            m = (unsigned __int128)cm_rng_next(r) * n;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

double cm_rng_normal(cm_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    /* Box-Muller. u1 is in (0, 1] so the log is finite. */
    double u1 = 1.0 - cm_rng_uniform(r);
    double u2 = cm_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1));
    double theta = 6.283185307179586476925 * u2;
    r->spare = rad * sin(theta);
    r->has_spare = 1;
    return rad * cos(theta);
}

double cm_rng_gamma(cm_rng *r, double shape)
{
    if (shape < 1.0) {
        /* u in (0, 1]: the power stays finite */
        double u = 1.0 - cm_rng_uniform(r);
        return cm_rng_gamma(r, shape + 1.0) * pow(u, 1.0 / shape);
    }
    const double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = cm_rng_normal(r);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = cm_rng_uniform(r);
        if (u < 1.0 - 0.0331 * (x * x) * (x * x))
            return d * v;
        if (u > 0.0 && log(u) < 0.5 * x * x + d * (1.0 - v + log(v)))
            return d * v;
    }
}

double cm_rng_normal_above(cm_rng *r, double a)
{
    if (a <= 0.45) {
        /* P(z > a) >= 0.33 here: plain rejection */
        for (;;) {
            double z = cm_rng_normal(r);
            if (z > a)
                return z;
        }
    }
    /* proposal a + Exp(rate), rate the optimal (a + sqrt(a^2 + 4)) / 2 */
    const double rate = 0.5 * (a + sqrt(a * a + 4.0));
    for (;;) {
        double z = a - log(1.0 - cm_rng_uniform(r)) / rate;
        double t = z - rate;
        if (cm_rng_uniform(r) <= exp(-0.5 * t * t))
            return z;
    }
}

/* ---------------------------------------------------------------------------
 * Normal deviates in bulk: a ziggurat (Marsaglia & Tsang) over the tables of
 * rng_zig.h, whose generator describes the layers.
 *
 * One 64-bit draw gives the layer (bits 0-7), the sign (bit 8) and a 53-bit
 * uniform u (bits 11-63); 98.5% of draws end with u * w[i]. The rest take the
 * wedge test or the tail, where libm's exp and log are replaced by our own:
 * glibc picks its FMA variants by processor, and their last bits could move
 * a deviate. CMake builds this file with -ffp-contract=off, so no compiler
 * fuses the multiply-adds below into differently rounded ones either. */

#define S_LN2_HI 0x1.62e42fefa3000p-1   /* 41 bits: k * S_LN2_HI is exact */
#define S_LN2_LO 0x1.3de6af278ece6p-42
#define S_INV_LN2 0x1.71547652b82fep+0
#define S_SQRT2 0x1.6a09e667f3bcdp+0

static double s_pow2(int k)
{
    uint64_t bits = (uint64_t)(1023 + k) << 52;
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* exp(t) for t in [-8, 0], within a few ulp. */
static double s_exp(double t)
{
    int k = (int)(t * S_INV_LN2 - 0.5);   /* rounds t / ln 2 to nearest */
    double s = (t - k * S_LN2_HI) - k * S_LN2_LO;   /* |s| <= ln 2 / 2 */
    double p = 1.0 / 6227020800.0;   /* 1/13!: the next term is < 1e-17 */
    static const double fact[13] = {1.0, 1.0, 2.0, 6.0, 24.0, 120.0, 720.0, 5040.0,
                                    40320.0, 362880.0, 3628800.0, 39916800.0,
                                    479001600.0};
    for (int j = 12; j >= 0; j--)
        p = p * s + 1.0 / fact[j];
    return p * s_pow2(k);
}

/* ln(u) for u in [2^-53, 1], within a few ulp: u = m 2^e with m in
 * [sqrt(1/2), sqrt(2)), ln m = 2 atanh((m - 1) / (m + 1)). */
static double s_log(double u)
{
    uint64_t bits;
    memcpy(&bits, &u, sizeof bits);
    int e = (int)(bits >> 52) - 1023;
    bits = (bits & ((1ULL << 52) - 1)) | (1023ULL << 52);
    double m;
    memcpy(&m, &bits, sizeof m);
    if (m > S_SQRT2) {
        m *= 0.5;
        e++;
    }
    double t = (m - 1.0) / (m + 1.0), t2 = t * t;   /* t2 < 0.0295 */
    double p = 1.0 / 25.0;   /* sum of t2^j / (2j + 1): the next term is < 1e-20 */
    for (int j = 11; j >= 0; j--)
        p = p * t2 + 1.0 / (2 * j + 1);
    return e * S_LN2_HI + (e * S_LN2_LO + 2.0 * t * p);
}

/* A deviate beyond r (Marsaglia 1964): r + a, a exponential of rate r, kept
 * with probability exp(-a^2 / 2). */
static double s_zig_tail(cm_rng *r)
{
    for (;;) {
        double a = -s_log(1.0 - cm_rng_uniform(r)) / S_ZIG_R;
        double b = -s_log(1.0 - cm_rng_uniform(r));
        if (b + b > a * a)
            return S_ZIG_R + a;
    }
}

/* The magnitude of a deviate whose first draw x missed its layer's fast
 * region: the tail for the base layer, else the wedge test, and on a
 * rejection a fresh draw (its sign bit unused: the caller's sign is
 * independent of everything here). */
static double s_zig_slow(cm_rng *r, uint64_t draw)
{
    for (;;) {
        unsigned i = (unsigned)(draw & 0xff);
        uint64_t u = draw >> 11;
        double x = (double)(int64_t)u * s_zig_w[i];
        if (u < s_zig_k[i])
            return x;
        if (i == 0)
            return s_zig_tail(r);
        double y = s_zig_y[i] + cm_rng_uniform(r) * (s_zig_y[i + 1] - s_zig_y[i]);
        if (y < s_exp(-0.5 * x * x))
            return x;
        draw = cm_rng_next(r);
    }
}

void cm_rng_normals_f32(cm_rng *r, float *out, int n, float scale)
{
    const double sc = scale;
    cm_rng g = *r;   /* a local state stays in registers across the stores */
    for (int j = 0; j < n; j++) {
        uint64_t draw = cm_rng_next(&g);
        unsigned i = (unsigned)(draw & 0xff);
        uint64_t u = draw >> 11;
        double x = (double)(int64_t)u * s_zig_w[i];
        if (u >= s_zig_k[i])
            x = s_zig_slow(&g, draw);
        /* The sign goes on by flipping the float's sign bit (rounding is
         * symmetric, so this is (float)(-sc * x) exactly): a branch on a
         * random bit would miss half the time. */
        float f = (float)(sc * x);
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        bits ^= (uint32_t)(draw & 0x100) << 23;
        memcpy(&out[j], &bits, sizeof bits);
    }
    *r = g;
}

void cm_rng_shuffle_u32(cm_rng *r, uint32_t *idx, uint64_t n)
{
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = cm_rng_below(r, i);
        uint32_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}
