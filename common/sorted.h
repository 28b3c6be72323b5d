/* sorted: sorting keys and binary search in sorted arrays of them. */
#ifndef PSREC_COMMON_SORTED_H
#define PSREC_COMMON_SORTED_H

#include <stddef.h>
#include <stdint.h>

/* name(sorted, n, key): the first index i in sorted[0..n) with
 * sorted[i] >= key (n if none), for arrays of T. */
#define CM_DEFINE_LOWER_BOUND(name, T)                                    \
    static inline size_t name(const T *sorted, size_t n, T key)           \
    {                                                                     \
        size_t lo = 0, hi = n;                                            \
        while (lo < hi) {                                                 \
            size_t mid = lo + (hi - lo) / 2;                              \
            if (sorted[mid] < key)                                        \
                lo = mid + 1;                                             \
            else                                                          \
                hi = mid;                                                 \
        }                                                                 \
        return lo;                                                        \
    }

CM_DEFINE_LOWER_BOUND(cm_lower_bound_u64, uint64_t)
CM_DEFINE_LOWER_BOUND(cm_lower_bound_u32, uint32_t)

/* Sorts keys[0..n) ascending and moves vals[0..n) along with them (stable
 * LSD radix sort, a byte a pass; passes where every key has the same byte
 * are skipped, so small keys cost few passes). tk and tv are scratch of n
 * each. */
void cm_sort_u64_pairs(uint64_t *keys, uint64_t *vals, size_t n, uint64_t *tk, uint64_t *tv);

/* Sorts keys[0..n) (one per example, n < 2^32) into unique ascending
 * uniq[0..*n_uniq) and sets idx[j] so that uniq[idx[j]] == keys[j]: the
 * batch deduplication of every trainer. uniq and idx hold n each, scratch
 * 2n; the same radix sort as cm_sort_u64_pairs. */
void cm_dedupe_u64(const uint64_t *keys, size_t n, uint64_t *uniq, uint32_t *idx,
                   size_t *n_uniq, uint64_t *scratch);

#endif
