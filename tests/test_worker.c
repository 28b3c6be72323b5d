/* Worker pieces that stand alone: key deduplication. */
#include <criterion/criterion.h>

#include "common/rng.h"
#include "worker/evalset.h"
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

/* The test shard cut into deduplicated chunks (worker/evalset.h). */
Test(worker, evalset_chunks_cover_the_shard)
{
    enum { N = 5003, CHUNK = 1000 };
    static uint64_t user[N], item[N];
    static float rating[N];
    cm_rng r;
    cm_rng_seed(&r, 11);
    for (int j = 0; j < N; j++) {
        user[j] = cm_rng_below(&r, 700);
        item[j] = 1000000 + cm_rng_below(&r, 90) * 7919;
        rating[j] = (float)j;
    }
    cm_ratings test = {0};
    cm_error err = {0};
    cr_assert_eq(cm_ratings_from_arrays(user, item, rating, N, &test, &err), 0, "%s", err.msg);
    wk_evalset *s = wk_evalset_new(&test, CHUNK, &err);
    cr_assert_not_null(s, "%s", err.msg);
    cr_assert_eq(wk_evalset_count(s), 6);
    size_t covered = 0, most[2] = {0, 0};
    for (size_t c = 0; c < wk_evalset_count(s); c++) {
        const wk_eval_chunk *ch = wk_evalset_chunk(s, c);
        cr_assert_eq(ch->first, covered, "chunk %zu starts where the last ended", c);
        cr_assert_eq(ch->n, c < 5 ? (size_t)CHUNK : (size_t)3);
        for (int t = 0; t < 2; t++) {
            const uint64_t *col = t ? item : user;
            for (size_t u = 1; u < ch->n_uniq[t]; u++)
                cr_expect_lt(ch->uniq[t][u - 1], ch->uniq[t][u]);
            for (size_t j = 0; j < ch->n; j++) {
                cr_assert_lt(ch->idx[t][j], ch->n_uniq[t]);
                cr_expect_eq(ch->uniq[t][ch->idx[t][j]], col[ch->first + j],
                             "chunk %zu rating %zu table %d", c, j, t);
            }
            most[t] = ch->n_uniq[t] > most[t] ? ch->n_uniq[t] : most[t];
        }
        covered += ch->n;
    }
    cr_expect_eq(covered, N);
    cr_expect_eq(wk_evalset_max_uniq(s, 0), most[0]);
    cr_expect_eq(wk_evalset_max_uniq(s, 1), most[1]);
    cr_expect_leq(most[1], 90);
    cr_expect_null(wk_evalset_chunk(s, 6));
    wk_evalset_destroy(&s);
    cr_assert_null(s);
    wk_evalset_destroy(&s);

    /* an empty shard has no chunks; a chunk of 0 is refused */
    cm_ratings none = {0};
    s = wk_evalset_new(&none, CHUNK, &err);
    cr_assert_not_null(s, "%s", err.msg);
    cr_expect_eq(wk_evalset_count(s), 0);
    wk_evalset_destroy(&s);
    cr_expect_null(wk_evalset_new(&test, 0, &err));
    cr_expect_eq(err.code, CM_EINVAL);
    cm_ratings_free(&test);
}
