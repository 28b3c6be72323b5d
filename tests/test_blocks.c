/* blocks: the DSGD rule and the indexing helpers of the blocks schedule,
 * and one pass of training against a real server (the whole schedule runs
 * in tests/test_cluster_local.c and test_cluster_ckpt.c). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/rng.h"
#include "ps/server.h"
#include "scheduler/partition.h"
#include "scheduler/scheduler.h"
#include "worker/blocks.h"
#include "worker/kv.h"
#include "worker/models/model.h"

/* Checks the contract of wk_blocks_index_keys on keys[0..n). */
static void s_check_index(const uint64_t *keys, size_t n)
{
    uint32_t *loc = malloc((n + 1) * sizeof *loc);
    uint64_t *uniq = NULL;
    size_t k = 0;
    cr_assert_not_null(loc);
    cr_assert_eq(wk_blocks_index_keys(keys, n, loc, &uniq, &k), 0);
    cr_assert_not_null(uniq);
    cr_assert_leq(k, n);
    for (size_t x = 1; x < k; x++)
        cr_assert_lt(uniq[x - 1], uniq[x], "distinct keys strictly ascending at %zu", x);
    for (size_t j = 0; j < n; j++) {
        cr_assert_lt(loc[j], k);
        cr_assert_eq(uniq[loc[j]], keys[j], "rating %zu maps back to its key", j);
    }
    /* every distinct key is used: count hits */
    char *used = calloc(k + 1, 1);
    cr_assert_not_null(used);
    for (size_t j = 0; j < n; j++)
        used[loc[j]] = 1;
    for (size_t x = 0; x < k; x++)
        cr_assert(used[x], "distinct key %zu appears in the input", x);
    free(used);
    free(uniq);
    free(loc);
}

Test(blocks, index_small_dense_ids)
{
    const uint64_t keys[] = {7, 3, 3, 9, 7, 7, 100, 3};
    uint32_t loc[8];
    uint64_t *uniq = NULL;
    size_t k = 0;
    cr_assert_eq(wk_blocks_index_keys(keys, 8, loc, &uniq, &k), 0);
    cr_assert_eq(k, 4);
    const uint64_t want[] = {3, 7, 9, 100};
    cr_expect_arr_eq(uniq, want, sizeof want);
    const uint32_t want_loc[] = {1, 0, 0, 2, 1, 1, 3, 0};
    cr_expect_arr_eq(loc, want_loc, sizeof want_loc);
    free(uniq);
}

Test(blocks, index_dense_and_hashed_ids_agree)
{
    enum { N = 50000 };
    uint64_t *dense = malloc(N * sizeof *dense), *sparse = malloc(N * sizeof *sparse);
    cr_assert(dense && sparse);
    cm_rng r;
    cm_rng_seed(&r, 5);
    for (size_t j = 0; j < N; j++) {
        /* runs of repeats, as a shard sorted by user has */
        dense[j] = j > 0 && cm_rng_below(&r, 3) == 0 ? dense[j - 1]
                                                      : 1000000 + cm_rng_below(&r, 20000);
        sparse[j] = cm_rng_next(&r) | 1ULL << 63; /* a range no array can cover */
        if (j > 0 && cm_rng_below(&r, 4) == 0)
            sparse[j] = sparse[cm_rng_below(&r, j)];
    }
    s_check_index(dense, N);
    s_check_index(sparse, N);
    /* the extremes of the key space */
    const uint64_t edge[] = {UINT64_MAX, 0, UINT64_MAX, 1, 0};
    s_check_index(edge, 5);
    free(dense);
    free(sparse);
}

Test(blocks, index_nothing)
{
    uint32_t loc[1];
    uint64_t *uniq = NULL;
    size_t k = 7;
    cr_assert_eq(wk_blocks_index_keys(NULL, 0, loc, &uniq, &k), 0);
    cr_expect_eq(k, 0);
    free(uniq);
}

Test(blocks, stride_is_whole_cache_lines)
{
    cr_expect_eq(wk_blocks_stride(1), 16);
    cr_expect_eq(wk_blocks_stride(16), 16);
    cr_expect_eq(wk_blocks_stride(17), 32);
    cr_expect_eq(wk_blocks_stride(66), 80, "dim 32 + bias with AdaGrad");
    for (int rf = 1; rf < 300; rf++) {
        size_t s = wk_blocks_stride(rf);
        cr_assert(s >= (size_t)rf && s % 16 == 0 && s < (size_t)rf + 16);
    }
}

Test(blocks, block_of_spreads_items)
{
    uint32_t count[4] = {0};
    for (uint64_t item = 0; item < 4000; item++) {
        uint32_t b = wk_block_of(item, 4);
        cr_assert_lt(b, 4);
        count[b]++;
        cr_assert_eq(wk_block_of(item, 1), 0);
    }
    for (int b = 0; b < 4; b++)
        cr_expect(count[b] > 800 && count[b] < 1200, "block %d has %u of 4000", b, count[b]);
}

/* Skewed item counts (a few items with most ratings, as in real data):
 * the balanced placement evens the blocks' ratings where the hash does
 * not, places every item, and is the same every time. */
/* The DSGD rule: in every round the workers' blocks are distinct and of
 * the round's class mod k; over an epoch each worker meets every block
 * once; two objects with the same seed agree (every worker computes the
 * same), and the order changes between epochs. */
Test(blocks, dsgd_rounds_never_share_a_block)
{
    const uint32_t workers[] = {1, 2, 3, 5}, ks[] = {1, 2, 3};
    for (size_t a = 0; a < sizeof workers / sizeof *workers; a++) {
        for (size_t c = 0; c < sizeof ks / sizeof *ks; c++) {
            const uint32_t nw = workers[a], k = ks[c], nb = k * nw;
            wk_dsgd *d = wk_dsgd_new(nw, k, 42), *twin = wk_dsgd_new(nw, k, 42);
            cr_assert(d && twin);
            uint32_t *met = calloc((size_t)nw * nb, sizeof *met);
            uint32_t first[64];
            int changed = 0;
            for (uint32_t e = 1; e <= 3; e++) {
                memset(met, 0, (size_t)nw * nb * sizeof *met);
                for (uint32_t r = 0; r < nb; r++) {
                    uint32_t taken[64] = {0};
                    for (uint32_t w = 0; w < nw; w++) {
                        uint32_t b = wk_dsgd_block(d, w, e, r);
                        cr_assert_lt(b, nb);
                        cr_assert_eq(b % k, r % k, "W %u k %u: round %u's blocks are of its "
                                     "class", nw, k, r);
                        cr_assert_eq(taken[b]++, 0, "W %u k %u epoch %u round %u: block %u "
                                     "twice", nw, k, e, r, b);
                        cr_assert_eq(wk_dsgd_block(twin, w, e, r), b);
                        met[w * nb + b]++;
                        if (w == 0 && e == 1)
                            first[r] = b;
                        else if (w == 0 && first[r] != b)
                            changed = 1;
                    }
                }
                for (uint32_t x = 0; x < nw * nb; x++)
                    cr_assert_eq(met[x], 1, "W %u k %u: each worker meets each block once",
                                 nw, k);
            }
            if (nw > 1 && nb > 2) /* one worker: each class holds one block */
                cr_expect(changed, "W %u k %u: the order changes between epochs", nw, k);
            free(met);
            wk_dsgd_destroy(&d);
            wk_dsgd_destroy(&twin);
            cr_assert_null(d);
            wk_dsgd_destroy(&d); /* NULL-safe */
        }
    }
    cr_assert_null(wk_dsgd_new(0, 1, 1));
    cr_assert_null(wk_dsgd_new(1, 0, 1));
}

Test(blocks, balance_evens_skewed_blocks)
{
    enum { N = 3000, B = 4 };
    static uint64_t keys[N];
    static float count[N];
    static uint32_t block[N], again[N];
    double total = 0;
    for (int i = 0; i < N; i++) {
        keys[i] = 1000 + 13 * (uint64_t)i;
        count[i] = (float)(20000.0 / (i + 1)) + 1.f; /* Zipf-like */
        total += count[i];
    }
    wk_block_map map = {keys, count, N};
    double before, after;
    cr_assert_eq(wk_blocks_balance(&map, B, block, &before, &after), 0);
    double load[B] = {0}, hash[B] = {0};
    for (int i = 0; i < N; i++) {
        cr_assert_lt(block[i], B);
        load[block[i]] += count[i];
        hash[wk_block_of(keys[i], B)] += count[i];
    }
    double most = 0, hmost = 0;
    for (int k = 0; k < B; k++) {
        most = load[k] > most ? load[k] : most;
        hmost = hash[k] > hmost ? hash[k] : hmost;
    }
    cr_expect_float_eq(after, most * B / total, 1e-9);
    cr_expect_float_eq(before, hmost * B / total, 1e-9);
    cr_expect_lt(after, 1.01, "balanced: %.4f", after);
    cr_expect_gt(before, after, "the hash is less even: %.4f", before);
    cr_assert_eq(wk_blocks_balance(&map, B, again, NULL, NULL), 0);
    cr_expect_arr_eq(block, again, sizeof block, "deterministic");
    cr_expect_eq(wk_blocks_balance(&map, 0, again, NULL, NULL), CM_EINVAL);
}

/* A map decides the blocks of the items it lists; others go by hash. */
Test(blocks, map_places_items)
{
    const uint64_t user[] = {1, 2, 3, 4, 5, 6};
    const uint64_t item[] = {10, 11, 12, 13, 10, 99};
    const float rating[] = {1, 2, 3, 4, 5, 1};
    cm_ratings r = {0};
    cm_error err = {0};
    cr_assert_eq(cm_ratings_from_arrays(user, item, rating, 6, &r, &err), 0, "%s", err.msg);
    /* item 10 has 100 ratings elsewhere, the others one each: with two
     * blocks 10 is alone in one and 11, 12, 13 share the other */
    const uint64_t mk[] = {10, 11, 12, 13};
    const float mc[] = {100, 1, 1, 1};
    wk_block_map map = {mk, mc, 4};
    const int rf[2] = {9, 9};
    wk_blocks *b = wk_blocks_new(&r, 2, 8, rf, NULL, &map, NULL, &err);
    cr_assert_not_null(b, "%s", err.msg);
    double before, after;
    wk_blocks_spread(b, &before, &after);
    cr_expect_float_eq(after, 100.0 * 2 / 103, 1e-9);
    wk_blocks_destroy(&b);
    b = wk_blocks_new(&r, 2, 8, rf, NULL, NULL, NULL, &err);
    cr_assert_not_null(b, "%s", err.msg);
    wk_blocks_spread(b, &before, &after);
    cr_expect_eq(after, -1, "no map: by hash, no figures");
    wk_blocks_destroy(&b);
    cm_ratings_free(&r);
}

/* The rows a worker holds for its users: the deterministic initialisation
 * the servers would give them, found by key; other users are not held,
 * and a resumed worker (no user_init) holds none until it first trains. */
Test(blocks, user_rows_are_held_by_key)
{
    const uint64_t user[] = {42, 7, 42, 1000, 7};
    const uint64_t item[] = {1, 2, 3, 1, 4};
    const float rating[] = {4, 3, 5, 2, 1};
    cm_ratings r = {0};
    cm_error err = {0};
    cr_assert_eq(cm_ratings_from_arrays(user, item, rating, 5, &r, &err), 0, "%s", err.msg);
    cm_table_spec up = {0};
    up.dim = 9;
    up.zero_prefix = 1;
    up.init_std = 0.1f;
    up.seed = 77;
    const int rf[2] = {18, 18};
    wk_blocks *b = wk_blocks_new(&r, 2, 8, rf, &up, NULL, NULL, &err);
    cr_assert_not_null(b, "%s", err.msg);
    cr_assert(wk_blocks_holds_users(b));
    float want[9];
    const uint64_t keys[] = {7, 42, 1000};
    for (int k = 0; k < 3; k++) {
        const float *row = wk_blocks_user_row(b, keys[k]);
        cr_assert_not_null(row, "user %llu held", (unsigned long long)keys[k]);
        cm_table_spec_init_row(&up, keys[k], want);
        cr_expect_arr_eq(row, want, sizeof want, "user %llu starts from the servers' init",
                         (unsigned long long)keys[k]);
    }
    cr_expect_null(wk_blocks_user_row(b, 8), "not a training user");
    cr_expect_null(wk_blocks_user_row(b, 5000));
    /* places: by a walk (many users asked) and by searches (few) */
    const uint64_t ask[] = {1, 7, 8, 42, 1000, 5000};
    uint32_t at[6];
    wk_blocks_user_places(b, ask, 6, at);
    for (int k = 0; k < 6; k++) {
        const float *row = wk_blocks_user_row(b, ask[k]);
        cr_expect_eq(wk_blocks_user_row_at(b, at[k]), row, "user %llu by walk",
                     (unsigned long long)ask[k]);
        uint32_t one;
        wk_blocks_user_places(b, ask + k, 1, &one);
        cr_expect_eq(one, at[k], "user %llu by search", (unsigned long long)ask[k]);
        cr_expect_eq(at[k] == UINT32_MAX, row == NULL);
    }
    wk_blocks_destroy(&b);
    b = wk_blocks_new(&r, 2, 8, rf, NULL, NULL, NULL, &err);
    cr_assert_not_null(b, "%s", err.msg);
    cr_expect(!wk_blocks_holds_users(b), "resuming: rows come with the first block");
    cr_expect_null(wk_blocks_user_row(b, 42));
    wk_blocks_user_places(b, ask, 6, at);
    cr_expect_neq(at[3], UINT32_MAX, "a place for user 42 ...");
    cr_expect_null(wk_blocks_user_row_at(b, at[3]), "... but no row yet");
    wk_blocks_destroy(&b);
    cm_ratings_free(&r);
}

/* ------------------------------------------------ one pass on a server -- */

static void *s_serve(void *arg)
{
    ps_server_run(arg);
    return NULL;
}

static int s_count_gate(void *arg, int wait)
{
    (void)wait;
    ++*(int *)arg;
    return 1;
}

enum { P_DIM = 9, P_USERS = 100000, P_ITEMS = 500, P_N = 1200000, P_SLOTS = 16 };

/* What one pass reports. */
typedef struct {
    double sq;          /* squared error */
    int calls;          /* gate calls */
    size_t trained;     /* ratings trained */
    size_t in_block;    /* ratings of block 0 in the data */
    int used_memory;    /* wk_blocks_items_shared */
    uint32_t in_place;  /* wk_blocks_in_place */
} s_pass_out;

/* One asynchronous pass over block 0 with block 1 next against a real
 * server whose item table is shared or not; got receives every item row
 * (weights) from the server afterwards. give_index: the item numbering is
 * made beforehand and handed to wk_blocks_new, as the worker does. */
static s_pass_out s_one_pass(int shared, int give_index, float *got)
{
    s_pass_out o = {0};
    cm_log_set_level(CM_LOG_ERROR);
    cm_table_spec tp[2];
    memset(tp, 0, sizeof tp);
    for (int t = 0; t < 2; t++) {
        tp[t].dim = P_DIM;
        tp[t].zero_prefix = 1;
        tp[t].init_std = 0.1f;
        tp[t].seed = 11 + (uint64_t)t;
        tp[t].optim = cm_optim_default(CM_OPT_SGD, 0.05f);
    }
    tp[1].shared = shared;
    cm_error err = {0};
    cm_van *van = cm_van_new(&err);
    cr_assert_not_null(van, "%s", err.msg);
    ps_server *srv = ps_server_new(van, "inproc://blocks-pass", tp, 2, &err);
    cr_assert_not_null(srv, "%s", err.msg);
    pthread_t tid;
    cr_assert_eq(pthread_create(&tid, NULL, s_serve, srv), 0);
    const char *eps[1] = {ps_server_endpoint(srv)};
    uint32_t map[P_SLOTS];
    sch_plan_slots(map, P_SLOTS, 1, NULL);
    int dims[2] = {P_DIM, P_DIM};
    wk_kv_params kp = {.n_servers = 1, .server_eps = eps, .n_slots = P_SLOTS, .slot_map = map,
                       .n_tables = 2, .dims = dims, .timeout_ms = 10000};
    wk_kv *kv = wk_kv_new(van, &kp, &err);
    cr_assert_not_null(kv, "%s", err.msg);

    uint64_t *user = malloc(P_N * sizeof *user), *item = malloc(P_N * sizeof *item);
    float *rating = malloc(P_N * sizeof *rating);
    cr_assert(user && item && rating);
    cm_rng rng;
    cm_rng_seed(&rng, 3);
    for (size_t j = 0; j < P_N; j++) {
        user[j] = j % P_USERS;
        item[j] = cm_rng_below(&rng, P_ITEMS);
        rating[j] = 1.f + (float)cm_rng_below(&rng, 5);
    }
    cm_ratings r = {0};
    cr_assert_eq(cm_ratings_from_arrays(user, item, rating, P_N, &r, &err), 0, "%s", err.msg);
    uint32_t *iloc = malloc(P_N * sizeof *iloc);
    wk_key_index given = {iloc, NULL, 0};
    uint64_t *uniq = NULL;
    cr_assert_not_null(iloc);
    if (give_index) {
        cr_assert_eq(wk_blocks_index_keys(item, P_N, iloc, &uniq, &given.n), 0);
        given.uniq = uniq;
    }
    wk_blocks *b = wk_blocks_new(&r, 2, P_DIM - 1, dims, &tp[0], NULL,
                                 give_index ? &given : NULL, &err);
    cr_assert_not_null(b, "%s", err.msg);
    free(iloc);
    free(uniq);

    wk_block_pass pass = {.block = 0, .next = 1, .seed = 5, .gate = s_count_gate,
                          .arg = &o.calls, .async = 1};
    wk_model_ctx ctx = {.mean = 3.f, .l2 = 0.01f, .clip_lo = 1.f, .clip_hi = 5.f};
    cm_optim opt = tp[1].optim;
    cr_assert_eq(
        wk_blocks_train(b, kv, &wk_model_mf, &ctx, &opt, &pass, &o.sq, &o.trained, &err), 0,
        "%s", err.msg);
    o.used_memory = wk_blocks_items_shared(b);
    o.in_place = wk_blocks_in_place(b);
    for (size_t j = 0; j < P_N; j++)
        o.in_block += wk_block_of(item[j], 2) == 0;

    /* the prefetch of block 1 and the pushes of block 0 finish */
    cr_assert_eq(wk_kv_pull_wait(kv, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_flush(kv, &err), 0, "%s", err.msg);
    uint64_t keys[P_ITEMS];
    for (size_t x = 0; x < P_ITEMS; x++)
        keys[x] = x;
    wk_pull req = {1, keys, P_ITEMS, got, CM_PULL_NO_CREATE, 0};
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    wk_blocks_destroy(&b);
    cm_ratings_free(&r);
    free(user);
    free(item);
    free(rating);
    wk_kv_destroy(&kv);
    uint64_t rows = 0, bytes = 0;
    cr_expect_eq(sch_stop_servers(van, 1, eps, 5000, &rows, &bytes, &err), 0, "%s", err.msg);
    pthread_join(tid, NULL);
    ps_server_destroy(&srv);
    cm_van_destroy(&van);
    return o;
}

/* Messages: the gate is asked at the start and again at every 256k
 * ratings although the next block's pull is out by then (that is where a
 * worker tells on the acks of its earlier pushes); block 0's item rows
 * come back whole and trained, block 1's stay as the server made them. */
Test(blocks, a_pass_asks_the_gate_throughout_and_pushes_its_rows_whole)
{
    static float got[P_ITEMS * P_DIM];
    s_pass_out o = s_one_pass(0, 0, got);
    cr_expect_eq(o.in_place, 0, "nothing in place without shared rows");
    cr_expect_eq(o.used_memory, 0, "a private table: rows by messages");
    cr_expect_eq(o.trained, o.in_block, "every rating of block 0 trained once");
    cr_expect_gt(o.sq, 0);
    cr_expect_geq(o.calls, 1 + (int)(o.in_block / 262144), "gate asked %d times for %zu ratings",
                  o.calls, o.in_block);
    cm_table_spec tp = {0};
    tp.dim = P_DIM;
    tp.zero_prefix = 1;
    tp.init_std = 0.1f;
    tp.seed = 12;
    float init[P_DIM];
    for (size_t x = 0; x < P_ITEMS; x++) {
        cm_table_spec_init_row(&tp, x, init);
        int same = memcmp(got + x * P_DIM, init, sizeof init) == 0;
        cr_expect_eq(same, wk_block_of(x, 2) != 0, "item %zu of block %u: %s", x,
                     wk_block_of(x, 2), same ? "as made" : "trained");
    }
}

/* Shared item rows (with one server, trained where they sit in its
 * memory) train exactly what messages train, with the gate asked as
 * often. */
Test(blocks, shared_item_rows_train_what_messages_train)
{
    static float by_msg[P_ITEMS * P_DIM], by_mem[P_ITEMS * P_DIM];
    s_pass_out msg = s_one_pass(0, 0, by_msg), mem = s_one_pass(1, 0, by_mem);
    cr_assert_eq(mem.in_place, 2, "one server: both blocks train in its memory, in place");
    cr_assert_eq(mem.used_memory, 1, "a shared table on this host: rows in its memory");
    cr_assert_eq(msg.used_memory, 0);
    cr_expect_eq(mem.trained, msg.trained);
    cr_expect_eq(mem.sq, msg.sq, "squared error %.17g vs %.17g", mem.sq, msg.sq);
    cr_expect_eq(mem.calls, msg.calls);
    cr_expect_arr_eq(by_mem, by_msg, sizeof by_msg, "every item row the same");
}

/* The item numbering the worker makes once for the scheduler (and hands
 * to wk_blocks_new, which then borrows it) gives the very blocks, rows and
 * order that wk_blocks_new's own numbering gives. */
Test(blocks, a_given_item_numbering_trains_what_its_own_trains)
{
    static float own[P_ITEMS * P_DIM], given[P_ITEMS * P_DIM];
    s_pass_out a = s_one_pass(0, 0, own), b = s_one_pass(0, 1, given);
    cr_expect_eq(b.trained, a.trained);
    cr_expect_eq(b.trained, b.in_block);
    cr_expect_eq(b.sq, a.sq, "squared error %.17g vs %.17g", b.sq, a.sq);
    cr_expect_arr_eq(given, own, sizeof own, "every item row the same");
}
