/* Sorting keys with values along, and big allocations (common/sorted.h,
 * common/mem.h). */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/mem.h"
#include "common/rng.h"
#include "common/sorted.h"

static void s_check_sort(size_t n, uint64_t range, uint64_t base)
{
    uint64_t *k = malloc((n + 1) * sizeof *k), *v = malloc((n + 1) * sizeof *v);
    uint64_t *tk = malloc((n + 1) * sizeof *tk), *tv = malloc((n + 1) * sizeof *tv);
    uint64_t *orig = malloc((n + 1) * sizeof *orig);
    cm_rng r;
    cm_rng_seed(&r, n + range);
    for (size_t j = 0; j < n; j++) {
        k[j] = orig[j] = base + cm_rng_below(&r, range);
        v[j] = j; /* each value names its key's first place */
    }
    cm_sort_u64_pairs(k, v, n, tk, tv);
    for (size_t j = 0; j < n; j++) {
        cr_assert_eq(orig[v[j]], k[j], "value %zu travelled with its key", j);
        if (j > 0) {
            cr_assert_leq(k[j - 1], k[j], "ascending at %zu", j);
            if (k[j - 1] == k[j])
                cr_assert_lt(v[j - 1], v[j], "stable among equal keys at %zu", j);
        }
    }
    free(k);
    free(v);
    free(tk);
    free(tv);
    free(orig);
}

Test(sorted, pairs_sort_by_key_stably)
{
    s_check_sort(0, 10, 0);
    s_check_sort(1, 10, 0);
    s_check_sort(5000, 50, 0);                    /* one byte differs: one pass */
    s_check_sort(5000, 1u << 20, 0);              /* three passes, odd: copied back */
    s_check_sort(5000, UINT64_MAX, 0);            /* every byte */
    s_check_sort(3000, 1000, UINT64_MAX - 2000);  /* near the top of the range */
}

/* Batch deduplication (cm_dedupe_u64), the trainers' use of the sort. */
Test(sorted, dedupe_sorts_and_maps_back)
{
    enum { N = 2000 };
    static uint64_t keys[N], uniq[N], scratch[2 * N];
    static uint32_t idx[N];
    cm_rng r;
    cm_rng_seed(&r, 3);
    for (int j = 0; j < N; j++)
        keys[j] = j % 5 == 0 ? UINT64_MAX - cm_rng_below(&r, 3) : cm_rng_below(&r, 300);
    size_t nu = 0;
    cm_dedupe_u64(keys, N, uniq, idx, &nu, scratch);
    cr_assert_gt(nu, 0);
    for (size_t u = 1; u < nu; u++)
        cr_expect_lt(uniq[u - 1], uniq[u], "strictly ascending at %zu", u);
    for (int j = 0; j < N; j++) {
        cr_assert_lt(idx[j], nu);
        cr_expect_eq(uniq[idx[j]], keys[j], "example %d maps back to its key", j);
    }
    /* every unique key is used by some example */
    static int used[N];
    for (int j = 0; j < N; j++)
        used[idx[j]] = 1;
    for (size_t u = 0; u < nu; u++)
        cr_expect(used[u]);
}

Test(sorted, dedupe_single_and_empty)
{
    uint64_t k = 42, u = 0, s[2];
    uint32_t i = 9;
    size_t n = 7;
    cm_dedupe_u64(&k, 1, &u, &i, &n, s);
    cr_expect_eq(n, 1);
    cr_expect_eq(u, 42);
    cr_expect_eq(i, 0);
    cm_dedupe_u64(&k, 0, &u, &i, &n, s);
    cr_expect_eq(n, 0);
}

Test(sorted, big_allocations_are_aligned)
{
    size_t sizes[] = {0, 1, 100, 8u << 20, (8u << 20) + 3};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *p = cm_alloc_big(sizes[i]);
        cr_assert_not_null(p);
        cr_expect_eq((uintptr_t)p % 64, 0, "%zu bytes: 64-byte aligned", sizes[i]);
        if (sizes[i] >= (8u << 20))
            cr_expect_eq((uintptr_t)p % (2u << 20), 0, "%zu bytes: on a huge page", sizes[i]);
        if (sizes[i])
            p[sizes[i] - 1] = 1; /* the whole size is usable */
        free(p);
    }
    unsigned char *z = cm_calloc_big(3, 5u << 20);
    cr_assert_not_null(z);
    for (size_t j = 0; j < 15u << 20; j += 4093)
        cr_assert_eq(z[j], 0);
    free(z);
    cr_expect_null(cm_calloc_big(SIZE_MAX / 2, 4), "overflowing sizes are refused");
}
