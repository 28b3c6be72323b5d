/* Worker pieces that stand alone: the evaluation set's chunks. */
#include <criterion/criterion.h>

#include "common/rng.h"
#include "worker/evalset.h"

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
