#include "common/hll.h"

#include <math.h>
#include <string.h>

#include "common/hash.h"

void cm_hll_clear(cm_hll *h)
{
    memset(h->reg, 0, sizeof h->reg);
}

void cm_hll_add(cm_hll *h, uint64_t key)
{
    const uint64_t x = cm_hash_key(key, 0x686c6cULL);
    const uint32_t j = (uint32_t)(x >> (64 - CM_HLL_BITS));
    /* rank = position of the first 1 bit in the remaining 50 bits (1-based);
     * the guard bit bounds it when they are all 0 */
    const uint64_t rest = (x << CM_HLL_BITS) | (1ULL << (CM_HLL_BITS - 1));
    const uint8_t rank = (uint8_t)(__builtin_clzll(rest) + 1);
    if (rank > h->reg[j])
        h->reg[j] = rank;
}

void cm_hll_merge(cm_hll *into, const cm_hll *from)
{
    for (uint32_t j = 0; j < CM_HLL_REGISTERS; j++)
        if (from->reg[j] > into->reg[j])
            into->reg[j] = from->reg[j];
}

double cm_hll_estimate(const cm_hll *h)
{
    const double m = CM_HLL_REGISTERS;
    double sum = 0;
    uint32_t zeros = 0;
    for (uint32_t j = 0; j < CM_HLL_REGISTERS; j++) {
        sum += ldexp(1.0, -(int)h->reg[j]);
        zeros += h->reg[j] == 0;
    }
    const double alpha = 0.7213 / (1.0 + 1.079 / m);
    const double e = alpha * m * m / sum;
    /* small range: linear counting over the empty registers is the better
     * estimate (64-bit hashes need no large-range correction) */
    if (e <= 2.5 * m && zeros > 0)
        return m * log(m / zeros);
    return e;
}
