/* rng: xoshiro256** (Blackman & Vigna) seeded through splitmix64.
 *
 * The state is four 64-bit words filled with consecutive splitmix64 outputs
 * of the seed, which never yields the forbidden all-zero state in practice;
 * we still guard against it so that every seed is valid. */
#include "common/rng.h"

#include <assert.h>
#include <math.h>

#include "common/hash.h"

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

void cm_rng_shuffle_u32(cm_rng *r, uint32_t *idx, uint64_t n)
{
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = cm_rng_below(r, i);
        uint32_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}
