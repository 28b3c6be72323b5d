/* hll: HyperLogLog distinct counting for the memory planner.
 *
 * Counting the distinct users and items of 10^8 ratings exactly takes
 * hash maps of millions of keys and seconds of random memory traffic; a
 * sketch of 2^14 one-byte registers counts them in one streaming pass to
 * about 1% (standard error 1.04 / sqrt(2^14) = 0.81%). Keys are hashed with
 * xxh64 inside; the caller passes raw ids. Sketches of the same precision
 * merge by taking the register-wise maximum. */
#ifndef PSREC_COMMON_HLL_H
#define PSREC_COMMON_HLL_H

#include <stdint.h>

#define CM_HLL_BITS 14
#define CM_HLL_REGISTERS (1u << CM_HLL_BITS)

typedef struct {
    uint8_t reg[CM_HLL_REGISTERS];
} cm_hll;

/* Empties the sketch. */
void cm_hll_clear(cm_hll *h);

/* Counts key (any 64-bit id) once, however often it is added. */
void cm_hll_add(cm_hll *h, uint64_t key);

/* into becomes the sketch of the union of both sets. */
void cm_hll_merge(cm_hll *into, const cm_hll *from);

/* Estimated number of distinct keys added (linear counting while many
 * registers are still empty, the harmonic-mean estimate above that). */
double cm_hll_estimate(const cm_hll *h);

#endif
