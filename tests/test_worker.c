/* Worker pieces that stand alone: the evaluation set's chunks, the
 * control link's clocks, a rating shard's HELLO. */
#include <criterion/criterion.h>

#include "common/rng.h"
#include "common/slots.h"
#include "worker/evalset.h"
#include "worker/link.h"
#include "worker/shard.h"

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

/* The scheduler's side of a link in these tests: a ROUTER the link's
 * DEALER connects to, and the route of the link's last message. */
typedef struct {
    cm_van *van;
    cm_sock *router;
    char route[256];
    size_t route_size;
} s_sched;

static void s_sched_send(s_sched *s, int op, uint32_t epoch, uint64_t clock)
{
    cm_hdr h = cm_hdr_make(op);
    h.epoch = epoch;
    h.clock = clock;
    cr_assert_eq(cm_msg_send(s->router, s->route, s->route_size, &h, NULL, 0, NULL, 0), 0);
}

/* CLOCK goes out with the link's rank; clocks come in and the least one
 * of the running epoch is kept; anything else inside an epoch is an error
 * that says so. */
Test(worker, link_sends_and_keeps_clocks)
{
    cm_error err = {0};
    s_sched s = {0};
    cr_assert_not_null(s.van = cm_van_new(&err), "%s", err.msg);
    cr_assert_not_null(s.router = cm_sock_new(s.van, CM_SOCK_ROUTER, &err), "%s", err.msg);
    cr_assert_eq(cm_sock_bind(s.router, "inproc://link-test", NULL), 0);
    wk_link *l = wk_link_new(s.van, "inproc://link-test", 7, 5.0, &err);
    cr_assert_not_null(l, "%s", err.msg);

    cr_assert_eq(wk_link_clock(l, 3, 5, &err), 0, "%s", err.msg);
    cm_msg m = {0};
    cr_assert_eq(cm_msg_recv(s.router, &m, 5000, &err), 0, "%s", err.msg);
    cr_expect_eq(m.hdr.op, CM_OP_CLOCK);
    cr_expect_eq(m.hdr.sender, 7);
    cr_expect_eq(m.hdr.epoch, 3);
    cr_expect_eq(m.hdr.clock, 5);
    cr_assert_leq(m.route_size, sizeof s.route);
    memcpy(s.route, m.route, m.route_size);
    s.route_size = m.route_size;
    cm_msg_release(&m);

    wk_link_epoch_start(l);
    cr_expect_eq(wk_link_min_clock(l), 0);
    /* nothing here yet: without waiting, CM_ETIMEDOUT and no message */
    cm_error none = {0};
    cr_expect_eq(wk_link_recv_clock(l, 3, 0, "a clock", &none), CM_ETIMEDOUT);
    cr_expect_eq(none.code, 0);
    s_sched_send(&s, CM_OP_CLOCK, 3, 4);
    s_sched_send(&s, CM_OP_CLOCK, 2, 9); /* another epoch's: not kept */
    cr_assert_eq(wk_link_recv_clock(l, 3, 1, "a clock", &err), 0, "%s", err.msg);
    cr_assert_eq(wk_link_recv_clock(l, 3, 1, "a clock", &err), 0, "%s", err.msg);
    cr_expect_eq(wk_link_min_clock(l), 4);
    /* minibatch 5 with staleness 1 waits for a clock of 4: none needed;
     * minibatch 6 needs 5 */
    cr_expect_eq(wk_link_wait_clock(l, 3, 5, 1, &err), 0, "%s", err.msg);
    s_sched_send(&s, CM_OP_CLOCK, 3, 5);
    cr_expect_eq(wk_link_wait_clock(l, 3, 6, 1, &err), 0, "%s", err.msg);
    cr_expect_eq(wk_link_min_clock(l), 5);

    s_sched_send(&s, CM_OP_EVAL, 3, 0);
    cr_expect_eq(wk_link_recv_clock(l, 3, 1, "a clock", &err), CM_EPROTO);
    cr_expect(strstr(err.msg, "inside an epoch") != NULL, "%s", err.msg);
    s_sched_send(&s, CM_OP_STOP, 3, 0);
    cr_expect_eq(wk_link_recv_clock(l, 3, 1, "the pushes", &err), CM_ECLOSED);
    cr_expect(strstr(err.msg, "the pushes") != NULL, "%s", err.msg);

    wk_link_destroy(&l);
    cr_expect_null(l);
    wk_link_destroy(&l);
    cm_sock_destroy(&s.router);
    cm_van_destroy(&s.van);
}

/* HELLO's statistics of a rating shard, and one request per rating in
 * its user's slot and in its item's. */
Test(worker, shard_hello_counts_the_shard)
{
    uint64_t user[] = {1, 2, 2, 9}, item[] = {10, 10, 11, 12};
    float rating[] = {4, 2, 5, 1};
    wk_shard s = {0};
    cm_error err = {0};
    cr_assert_eq(cm_ratings_from_arrays(user, item, rating, 3, &s.train, &err), 0, "%s",
                 err.msg);
    cr_assert_eq(cm_ratings_from_arrays(user + 3, item + 3, rating + 3, 1, &s.test, &err), 0,
                 "%s", err.msg);
    s.train.bad_lines = 2;
    s.test.noise_floor = 0.5;
    s.n_test = 1;
    enum { SLOTS = 8 };
    float load[SLOTS] = {0};
    cm_hello he = {.n_slot_load = SLOTS, .slot_load = load};
    wk_shard_hello(&s, &he);
    cr_expect_eq(he.n_train, 3);
    cr_expect_eq(he.label_sum, 11.0);
    cr_expect_eq(he.label_min, 2.0);
    cr_expect_eq(he.label_max, 5.0);
    cr_expect_eq(he.n_test, 1);
    cr_expect_eq(he.n_valid, 0);
    cr_expect_eq(he.bad_train, 2);
    cr_expect_eq(he.noise_floor, 0.5);
    cr_expect_eq(he.task, -1, "ratings have no sparse task");
    float total = 0;
    for (int k = 0; k < SLOTS; k++)
        total += load[k];
    cr_expect_eq(total, 6.f, "a request per rating and table");
    cr_expect_geq(load[cm_slot_of(2, 0, SLOTS)], 2.f, "user 2's two ratings");

    /* the items for the second HELLO: sorted, with their ratings */
    uint32_t *loc = NULL;
    uint64_t *items = NULL;
    float *count = NULL;
    size_t n = 0;
    cr_assert_eq(wk_shard_items(&s, &loc, &items, &count, &n, &err), 0, "%s", err.msg);
    cr_assert_eq(n, 2);
    cr_expect_eq(items[0], 10);
    cr_expect_eq(items[1], 11);
    cr_expect_eq(count[0], 2.f);
    cr_expect_eq(count[1], 1.f);
    cr_expect_eq(loc[2], 1);
    free(loc);
    free(items);
    free(count);
    wk_shard_free(&s);
}
