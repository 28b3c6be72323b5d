/* Worker pieces that stand alone: key deduplication. */
#include <criterion/criterion.h>

#include "common/rng.h"
#include "worker/worker.h"

Test(worker, dedupe_sorts_and_maps_back)
{
    enum { N = 2000 };
    static uint64_t keys[N], uniq[N], scratch[2 * N];
    static uint32_t idx[N];
    cm_rng r;
    cm_rng_seed(&r, 3);
    for (int j = 0; j < N; j++)
        keys[j] = j % 5 == 0 ? UINT64_MAX - cm_rng_below(&r, 3) : cm_rng_below(&r, 300);
    size_t nu = 0;
    wk_dedupe(keys, N, uniq, idx, &nu, scratch);
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

Test(worker, dedupe_single_and_empty)
{
    uint64_t k = 42, u = 0, s[2];
    uint32_t i = 9;
    size_t n = 7;
    wk_dedupe(&k, 1, &u, &i, &n, s);
    cr_expect_eq(n, 1);
    cr_expect_eq(u, 42);
    cr_expect_eq(i, 0);
    wk_dedupe(&k, 0, &u, &i, &n, s);
    cr_expect_eq(n, 0);
}
