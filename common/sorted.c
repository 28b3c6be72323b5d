#include "common/sorted.h"

#include <string.h>

/* The one LSD radix sort, stamped out per width of the values that ride
 * along (cm_sort_u64_pairs carries u64, cm_dedupe_u64 carries u32 example
 * ids). It ping-pongs between (*keys, *vals) and (tk, tv) and leaves
 * *keys and *vals pointing at whichever pair holds the sorted result, so
 * callers that own both buffers need not copy back. */
#define S_DEFINE_RADIX(name, V)                                               \
    static void name(uint64_t **keys, V **vals, uint64_t *tk, V *tv, size_t n) \
    {                                                                         \
        uint64_t *ak = *keys, *bk = tk;                                       \
        V *av = *vals, *bv = tv;                                              \
        uint64_t diff = 0;                                                    \
        for (size_t j = 1; j < n; j++)                                        \
            diff |= ak[j] ^ ak[0];                                            \
        for (int shift = 0; shift < 64 && (diff >> shift); shift += 8) {      \
            if (((diff >> shift) & 0xff) == 0)                                \
                continue;                                                     \
            size_t count[257] = {0};                                          \
            for (size_t j = 0; j < n; j++)                                    \
                count[((ak[j] >> shift) & 0xff) + 1]++;                       \
            for (int d = 0; d < 256; d++)                                     \
                count[d + 1] += count[d];                                     \
            for (size_t j = 0; j < n; j++) {                                  \
                size_t at = count[(ak[j] >> shift) & 0xff]++;                 \
                bk[at] = ak[j];                                               \
                bv[at] = av[j];                                               \
            }                                                                 \
            uint64_t *t = ak;                                                 \
            ak = bk;                                                          \
            bk = t;                                                           \
            V *tvv = av;                                                      \
            av = bv;                                                          \
            bv = tvv;                                                         \
        }                                                                     \
        *keys = ak;                                                           \
        *vals = av;                                                           \
    }

S_DEFINE_RADIX(s_radix_u64, uint64_t)
S_DEFINE_RADIX(s_radix_u32, uint32_t)

void cm_sort_u64_pairs(uint64_t *keys, uint64_t *vals, size_t n, uint64_t *tk, uint64_t *tv)
{
    uint64_t *ak = keys, *av = vals;
    s_radix_u64(&ak, &av, tk, tv, n);
    if (ak != keys) {
        memcpy(keys, ak, n * sizeof *keys);
        memcpy(vals, av, n * sizeof *vals);
    }
}

void cm_dedupe_u64(const uint64_t *keys, size_t n, uint64_t *uniq, uint32_t *idx,
                   size_t *n_uniq, uint64_t *scratch)
{
    /* Keys sort in scratch's two halves; the example ids that ride along
     * borrow idx and uniq (n u32 fit in n u64) until the final pass. */
    uint64_t *a = scratch;
    uint32_t *pa = idx;
    for (size_t j = 0; j < n; j++) {
        a[j] = keys[j];
        pa[j] = (uint32_t)j;
    }
    s_radix_u32(&a, &pa, scratch + n, (uint32_t *)uniq, n);
    /* pa holds example ids in key order, possibly inside uniq: move them
     * to the half of scratch the sorted keys are not in before writing uniq */
    uint32_t *ex = (uint32_t *)(a == scratch ? scratch + n : scratch);
    memcpy(ex, pa, n * sizeof *ex);
    size_t u = 0;
    for (size_t j = 0; j < n; j++) {
        if (u == 0 || uniq[u - 1] != a[j])
            uniq[u++] = a[j];
        idx[ex[j]] = (uint32_t)(u - 1);
    }
    *n_uniq = u;
}
