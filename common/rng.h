/* rng: a small, fast, seedable random stream (xoshiro256**, seeded through
 * splitmix64). A plain value type: copy it to fork a stream, keep one per
 * thread. Same seed, same sequence, on every platform. */
#ifndef PSREC_COMMON_RNG_H
#define PSREC_COMMON_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
    double spare;      /* second normal deviate of the last Box-Muller pair */
    int has_spare;
} cm_rng;

/* Seeds from one 64-bit value (any value, 0 included). */
void cm_rng_seed(cm_rng *r, uint64_t seed);

/* Next 64 random bits. */
uint64_t cm_rng_next(cm_rng *r);

/* Uniform double in [0, 1). */
double cm_rng_uniform(cm_rng *r);

/* Uniform integer in [0, n); n > 0. Unbiased. */
uint64_t cm_rng_below(cm_rng *r, uint64_t n);

/* Standard normal deviate. */
double cm_rng_normal(cm_rng *r);

/* Gamma(shape, 1) deviate, shape > 0 (Marsaglia & Tsang's squeeze; below
 * shape 1 through Gamma(shape + 1) times U^(1/shape)). For rate b divide
 * by b. */
double cm_rng_gamma(cm_rng *r, double shape);

/* A standard normal deviate conditioned on being above a (any a):
 * rejection from the normal when a <= 0.45, else from a translated
 * exponential (Robert 1995), each accepting at least half the time. */
double cm_rng_normal_above(cm_rng *r, double a);

/* Fills out[0..n) with standard normal deviates times scale, rounded to
 * float: a ziggurat, about an eighth of cm_rng_normal's time a deviate. A
 * sequence of its own (the Box-Muller spare is left alone); consecutive calls
 * continue it, so 10 then 22 deviates are the 32 of one call. The same bits
 * on every build and processor. */
void cm_rng_normals_f32(cm_rng *r, float *out, int n, float scale);

/* Shuffles idx[0..n) in place (Fisher-Yates). */
void cm_rng_shuffle_u32(cm_rng *r, uint32_t *idx, uint64_t n);

#endif
