/* The worker's KV client against two real servers (threads, inproc). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/half.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/slots.h"
#include "ps/server.h"
#include "ps/table.h"
#include "scheduler/partition.h"
#include "scheduler/scheduler.h"
#include "worker/kv.h"

enum { NS = 2, DIM = 3, SLOTS = 64 };

static cm_van *s_van;
static ps_server *s_srv[NS];
static pthread_t s_tid[NS];
static const char *s_eps[NS];
static cm_table_spec s_tp;

static void *s_serve(void *arg)
{
    ps_server_run(arg);
    return NULL;
}

static void s_setup(void)
{
    cm_log_set_level(CM_LOG_ERROR);
    cm_error err = {0};
    s_van = cm_van_new(&err);
    cr_assert_not_null(s_van, "%s", err.msg);
    memset(&s_tp, 0, sizeof s_tp);
    s_tp.dim = DIM;
    s_tp.init_std = 0.1f;
    s_tp.seed = 5;
    s_tp.optim.kind = CM_OPT_SGD;
    s_tp.optim.lr = 0.5f;
    for (int i = 0; i < NS; i++) {
        char ep[64];
        snprintf(ep, sizeof ep, "inproc://kv-test-%d", i);
        s_srv[i] = ps_server_new(s_van, ep, &s_tp, 1, &err);
        cr_assert_not_null(s_srv[i], "%s", err.msg);
        s_eps[i] = ps_server_endpoint(s_srv[i]);
        cr_assert_eq(pthread_create(&s_tid[i], NULL, s_serve, s_srv[i]), 0);
    }
}

static void s_teardown(void)
{
    cm_error err = {0};
    uint64_t rows = 0, bytes = 0;
    cr_expect_eq(sch_stop_servers(s_van, NS, s_eps, 5000, &rows, &bytes, &err), 0, "%s",
                 err.msg);
    for (int i = 0; i < NS; i++) {
        pthread_join(s_tid[i], NULL);
        ps_server_destroy(&s_srv[i]);
    }
    cm_van_destroy(&s_van);
}

static wk_kv *s_kv(uint32_t *map)
{
    sch_plan_slots(map, SLOTS, NS, NULL);
    int dims[1] = {DIM};
    wk_kv_params p = {.n_servers = NS, .server_eps = s_eps, .n_slots = SLOTS,
                      .slot_map = map, .n_tables = 1, .dims = dims, .rank = 3,
                      .timeout_ms = 5000};
    cm_error err = {0};
    wk_kv *kv = wk_kv_new(s_van, &p, &err);
    cr_assert_not_null(kv, "%s", err.msg);
    return kv;
}

TestSuite(kv, .init = s_setup, .fini = s_teardown, .timeout = 60);

Test(kv, pull_push_pull_across_two_servers)
{
    uint32_t map[SLOTS];
    wk_kv *kv = s_kv(map);
    enum { N = 200 };
    uint64_t keys[N];
    for (int i = 0; i < N; i++)
        keys[i] = 1000 + 7 * (uint64_t)i;
    int on[NS] = {0};
    for (int i = 0; i < N; i++)
        on[map[cm_slot_of(keys[i], 0, SLOTS)]]++;
    cr_assert(on[0] > 0 && on[1] > 0, "keys spread over both servers");

    static float got[N * DIM], want[N * DIM], grads[N * DIM];
    cm_error err = {0};
    wk_pull req = {0, keys, N, got, 0, 0};
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < N; i++) {
        cm_table_spec_init_row(&s_tp, keys[i], want + i * DIM);
        for (int k = 0; k < DIM; k++)
            cr_expect_float_eq(got[i * DIM + k], want[i * DIM + k], 0,
                               "key %d weight %d is the deterministic init", i, k);
    }
    for (int i = 0; i < N * DIM; i++)
        grads[i] = (float)(i % 5) - 2.0f;
    cr_assert_eq(wk_kv_push(kv, 0, keys, N, grads, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < N * DIM; i++)
        cr_expect_float_eq(got[i], want[i] - 0.5f * grads[i], 1e-6,
                           "SGD applied in order before the next pull (%d)", i);
    cr_assert_eq(wk_kv_flush(kv, &err), 0, "%s", err.msg);
    wk_kv_counters c = wk_kv_get_counters(kv);
    cr_expect_eq(c.requests, 6, "one request per server per call");
    wk_kv_destroy(&kv);
    cr_expect_null(kv);
}

/* wire_f16: pulled weights arrive half-rounded and pushed gradients are
 * applied half-rounded; the bytes counted are half of f32's. */
Test(kv, half_wire)
{
    uint32_t map[SLOTS];
    sch_plan_slots(map, SLOTS, NS, NULL);
    int dims[1] = {DIM};
    wk_kv_params p = {.n_servers = NS, .server_eps = s_eps, .n_slots = SLOTS,
                      .slot_map = map, .n_tables = 1, .dims = dims, .rank = 3,
                      .timeout_ms = 5000, .wire_f16 = 1};
    cm_error err = {0};
    wk_kv *kv = wk_kv_new(s_van, &p, &err);
    cr_assert_not_null(kv, "%s", err.msg);
    enum { N = 100 };
    uint64_t keys[N];
    for (int i = 0; i < N; i++)
        keys[i] = 50000 + 3 * (uint64_t)i;
    static float got[N * DIM], init[N * DIM], grads[N * DIM];
    wk_pull req = {0, keys, N, got, 0, 0};
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < N; i++)
        cm_table_spec_init_row(&s_tp, keys[i], init + i * DIM);
    for (int i = 0; i < N * DIM; i++)
        cr_assert_eq(got[i], cm_half_value(cm_half_of(init[i])), "weight %d", i);
    for (int i = 0; i < N * DIM; i++)
        grads[i] = 0.01f * (float)(i % 7) + 0.001f;
    cr_assert_eq(wk_kv_push(kv, 0, keys, N, grads, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < N * DIM; i++) {
        float applied = init[i] - 0.5f * cm_half_value(cm_half_of(grads[i]));
        cr_assert_eq(got[i], cm_half_value(cm_half_of(applied)), "updated weight %d", i);
    }
    cr_assert_eq(wk_kv_flush(kv, &err), 0, "%s", err.msg);
    wk_kv_counters c = wk_kv_get_counters(kv);
    cr_expect_eq(c.pushes_by_ref, NS, "the push named the first pull on both servers");
    cr_expect_eq(c.bytes_out, 2 * N * 8 + N * DIM * 2, "keys of the 2 pulls + half gradients");
    cr_expect_eq(c.bytes_in, 2 * N * DIM * 2, "two pulls of half weights");
    wk_kv_destroy(&kv);
}

/* Pipelining: a pull started before a push does not see it, pushes and
 * flushes while it is in flight do not disturb its rows, and a second
 * start while one is in flight is refused. */
Test(kv, pull_in_flight_across_pushes)
{
    uint32_t map[SLOTS];
    wk_kv *kv = s_kv(map);
    enum { N = 150 };
    uint64_t a[N], b[N];
    for (int i = 0; i < N; i++) {
        a[i] = 90000 + 5 * (uint64_t)i;
        b[i] = 200000 + 11 * (uint64_t)i;
    }
    static float ra[N * DIM], rb[N * DIM], init_a[N * DIM], init_b[N * DIM], g[N * DIM];
    for (int i = 0; i < N; i++) {
        cm_table_spec_init_row(&s_tp, a[i], init_a + i * DIM);
        cm_table_spec_init_row(&s_tp, b[i], init_b + i * DIM);
    }
    for (int i = 0; i < N * DIM; i++)
        g[i] = 1.0f;
    cm_error err = {0};
    wk_pull qa = {0, a, N, ra, 0, 0}, qb = {0, b, N, rb, 0, 0};
    cr_assert_eq(wk_kv_pull_start(kv, &qa, 1, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_pull_start(kv, &qb, 1, &err), CM_ESTATE, "one pull in flight");
    /* pushes to the same rows and to others, then a flush, while a's pull
     * is in flight */
    cr_assert_eq(wk_kv_push(kv, 0, a, N, g, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_push(kv, 0, b, N, g, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_flush(kv, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_pull_wait(kv, &err), 0, "%s", err.msg);
    for (int i = 0; i < N * DIM; i++)
        cr_assert_float_eq(ra[i], init_a[i], 0, "a's pull went before the push (%d)", i);
    cr_assert_eq(wk_kv_pull_wait(kv, &err), 0, "waiting with nothing in flight is fine");
    cr_assert_eq(wk_kv_pull(kv, &qb, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < N * DIM; i++)
        cr_assert_float_eq(rb[i], init_b[i] - 0.5f, 1e-6, "b's pull sees the push (%d)", i);
    wk_kv_destroy(&kv);
}

Test(kv, no_create_pull_reads_zeros)
{
    uint32_t map[SLOTS];
    wk_kv *kv = s_kv(map);
    uint64_t keys[3] = {1u << 30, (1u << 30) + 1, (1u << 30) + 2};
    float got[3 * DIM];
    memset(got, 0xff, sizeof got);
    wk_pull req = {0, keys, 3, got, CM_PULL_NO_CREATE, 0};
    cm_error err = {0};
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < 3 * DIM; i++)
        cr_expect_eq(got[i], 0.f);
    wk_kv_destroy(&kv);
}

Test(kv, server_refusal_is_reported)
{
    uint32_t map[SLOTS];
    sch_plan_slots(map, SLOTS, NS, NULL);
    int dims[2] = {DIM, DIM};
    /* the client believes in a second table that the servers do not have */
    wk_kv_params p = {.n_servers = NS, .server_eps = s_eps, .n_slots = SLOTS,
                      .slot_map = map, .n_tables = 2, .dims = dims, .timeout_ms = 5000};
    cm_error err = {0};
    wk_kv *kv = wk_kv_new(s_van, &p, &err);
    cr_assert_not_null(kv);
    uint64_t keys[2] = {1, 2};
    float got[2 * DIM];
    wk_pull req = {1, keys, 2, got, 0, 0};
    cr_expect_eq(wk_kv_pull(kv, &req, 1, &err), CM_EREMOTE);
    cr_expect(strstr(err.msg, "refused") != NULL, "%s", err.msg);
    wk_pull bad = {7, keys, 2, got, 0, 0};
    cr_expect_eq(wk_kv_pull(kv, &bad, 1, &err), CM_EINVAL, "unknown table caught locally");
    wk_kv_destroy(&kv);
}

Test(kv, bad_slot_map_is_refused)
{
    uint32_t map[SLOTS] = {0};
    map[5] = 9;
    int dims[1] = {DIM};
    wk_kv_params p = {.n_servers = NS, .server_eps = s_eps, .n_slots = SLOTS,
                      .slot_map = map, .n_tables = 1, .dims = dims, .timeout_ms = 100};
    cm_error err = {0};
    cr_expect_null(wk_kv_new(s_van, &p, &err));
    cr_expect(strstr(err.msg, "slot 5") != NULL, "%s", err.msg);
}

Test(kv, silent_server_times_out)
{
    uint32_t map[SLOTS];
    sch_plan_slots(map, SLOTS, 1, NULL);
    int dims[1] = {DIM};
    const char *eps[1] = {"inproc://kv-test-nobody-home"};
    wk_kv_params p = {.n_servers = 1, .server_eps = eps, .n_slots = SLOTS, .slot_map = map,
                      .n_tables = 1, .dims = dims, .timeout_ms = 200};
    cm_error err = {0};
    wk_kv *kv = wk_kv_new(s_van, &p, &err);
    cr_assert_not_null(kv, "%s", err.msg);
    uint64_t keys[1] = {1};
    float got[DIM];
    wk_pull req = {0, keys, 1, got, 0, 0};
    cr_expect_eq(wk_kv_pull(kv, &req, 1, &err), CM_ETIMEDOUT, "%s", err.msg);
    wk_kv_destroy(&kv);
}

Test(kv, whole_rows_and_deltas)
{
    uint32_t map[SLOTS];
    wk_kv *kv = s_kv(map); /* SGD: whole rows are the weights alone */
    cm_error err = {0};
    uint64_t keys[4] = {50001, 50002, 50003, 50004};
    float full[4 * DIM], again[4 * DIM], delta[4 * DIM];
    wk_pull req = {0, keys, 4, full, CM_PULL_FULL, 0};
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < 4 * DIM; i++)
        delta[i] = 0.25f * (float)(i + 1);
    cr_assert_eq(wk_kv_push_delta(kv, 0, keys, 4, delta, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_push_delta(kv, 0, keys, 4, delta, &err), 0, "%s", err.msg);
    wk_pull req2 = {0, keys, 4, again, CM_PULL_FULL, 0};
    cr_assert_eq(wk_kv_pull(kv, &req2, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < 4 * DIM; i++)
        cr_expect_float_eq(again[i], full[i] + 2 * delta[i], 1e-6, "deltas add up (%d)", i);

    /* whole rows replace the servers' rows, existing or not, on every
     * server the keys live on */
    uint64_t set_keys[4] = {50003, 50004, 60001, 60002};
    float set[4 * DIM], back[4 * DIM];
    for (int i = 0; i < 4 * DIM; i++)
        set[i] = -0.5f * (float)(i + 3);
    cr_assert_eq(wk_kv_push_rows(kv, 0, set_keys, 4, set, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_flush(kv, &err), 0, "%s", err.msg);
    wk_pull req3 = {0, set_keys, 4, back, CM_PULL_FULL, 0};
    cr_assert_eq(wk_kv_pull(kv, &req3, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < 4 * DIM; i++)
        cr_expect_eq(back[i], set[i], "row value %d is the one sent", i);
    wk_kv_destroy(&kv);
}

/* Whole rows handed over as a buffer of their own (large enough to go
 * uncopied, split between the two servers), pulled back into rows farther
 * apart than a row: the values arrive and the gaps are left alone. A bad
 * table is refused and the buffer is still freed (the sanitizer build
 * would report it otherwise). */
Test(kv, owned_rows_and_strided_pull)
{
    uint32_t map[SLOTS];
    wk_kv *kv = s_kv(map);
    cm_error err = {0};
    enum { N = 20000, STRIDE = DIM + 2 };
    uint64_t *keys = malloc(N * sizeof *keys);
    float *rows = malloc((size_t)N * DIM * sizeof *rows);
    float *back = malloc((size_t)N * STRIDE * sizeof *back);
    cr_assert(keys && rows && back);
    for (size_t i = 0; i < N; i++)
        keys[i] = 70000 + 3 * i;
    for (size_t i = 0; i < (size_t)N * DIM; i++)
        rows[i] = 0.125f * (float)i - 7.f;
    float *owned = malloc((size_t)N * DIM * sizeof *owned);
    cr_assert_not_null(owned);
    memcpy(owned, rows, (size_t)N * DIM * sizeof *owned);
    cr_assert_eq(wk_kv_push_rows_owned(kv, 0, keys, N, owned, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_flush(kv, &err), 0, "%s", err.msg);
    for (size_t i = 0; i < (size_t)N * STRIDE; i++)
        back[i] = 99.f;
    wk_pull req = {0, keys, N, back, CM_PULL_FULL, STRIDE};
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    for (size_t i = 0; i < N; i++) {
        for (int k = 0; k < DIM; k++)
            cr_assert_eq(back[i * STRIDE + k], rows[i * DIM + k], "row %zu value %d", i, k);
        cr_assert_eq(back[i * STRIDE + DIM], 99.f, "gap after row %zu left alone", i);
    }
    wk_pull narrow = {0, keys, N, back, CM_PULL_FULL, DIM - 1};
    cr_expect_eq(wk_kv_pull(kv, &narrow, 1, &err), CM_EINVAL, "a stride shorter than a row");
    owned = malloc((size_t)N * DIM * sizeof *owned);
    cr_assert_not_null(owned);
    cr_expect_eq(wk_kv_push_rows_owned(kv, 5, keys, N, owned, &err), CM_EINVAL);
    free(keys);
    free(rows);
    free(back);
    wk_kv_destroy(&kv);
}

/* Kept keys: a push of the keys just pulled names the pull on each server
 * (no keys sent) and lands on those rows; after CM_KEEP_PULLS later pulls
 * of other keys the first pull is out of the servers' rings, and the same
 * push sends its keys again. Either way the values are exact. */
Test(kv, pushes_name_recent_pulls)
{
    uint32_t map[SLOTS];
    wk_kv *kv = s_kv(map);
    cm_error err = {0};
    enum { N = 64 };
    uint64_t a[N], other[N];
    float init[N * DIM], got[N * DIM], g[N * DIM];
    for (int i = 0; i < N; i++)
        a[i] = 90000 + 5 * (uint64_t)i;
    for (int i = 0; i < N * DIM; i++)
        g[i] = 0.01f * (float)(i % 11);
    wk_pull req = {0, a, N, init, 0, 0};
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_push(kv, 0, a, N, g, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_flush(kv, &err), 0, "%s", err.msg);
    cr_expect_eq(wk_kv_get_counters(kv).pushes_by_ref, NS, "named the pull on both servers");
    for (int k = 0; k < CM_KEEP_PULLS; k++) {
        for (int i = 0; i < N; i++)
            other[i] = 200000 + 1000 * (uint64_t)k + (uint64_t)i;
        wk_pull o = {0, other, N, got, 0, 0};
        cr_assert_eq(wk_kv_pull(kv, &o, 1, &err), 0, "%s", err.msg);
    }
    cr_assert_eq(wk_kv_push(kv, 0, a, N, g, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_flush(kv, &err), 0, "the servers took it: %s", err.msg);
    cr_expect_eq(wk_kv_get_counters(kv).pushes_by_ref, NS, "the old pull is not named");
    wk_pull back = {0, a, N, got, CM_PULL_NO_CREATE, 0};
    cr_assert_eq(wk_kv_pull(kv, &back, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < N * DIM; i++)
        cr_expect_float_eq(got[i], init[i] - 2 * 0.5f * g[i], 1e-6, "value %d", i);
    wk_kv_destroy(&kv);
}

/* A pull of more than CM_KEEP_MAX_KEYS keys is not kept (bounded memory
 * on the servers): the push of those keys carries them. */
Test(kv, large_pulls_are_not_kept)
{
    uint32_t map[SLOTS];
    wk_kv *kv = s_kv(map);
    cm_error err = {0};
    const size_t n = 3 * (size_t)CM_KEEP_MAX_KEYS; /* about 1.5x the cap on each server */
    uint64_t *keys = malloc(n * sizeof *keys);
    float *vals = calloc(n * DIM, sizeof *vals);
    cr_assert(keys && vals);
    for (size_t i = 0; i < n; i++)
        keys[i] = 1000000 + i;
    wk_pull req = {0, keys, n, vals, 0, 0};
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_push(kv, 0, keys, n, vals, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_flush(kv, &err), 0, "%s", err.msg);
    cr_expect_eq(wk_kv_get_counters(kv).pushes_by_ref, 0, "every push carried its keys");
    free(keys);
    free(vals);
    wk_kv_destroy(&kv);
}

/* ----------------------------------------------------------- shared rows */

/* n servers started on `want` (inproc or tcp), each with two tables of
 * `dim` weights (AdaGrad: whole rows of 2 dim floats), table 1 shared and
 * table 0 private, and a kv client of them. */
typedef struct {
    cm_van *van;
    int n;
    ps_server *srv[NS];
    pthread_t tid[NS];
    const char *eps[NS];
    uint32_t map[SLOTS];
    wk_kv *kv;
} s_shared_fix;

static void s_shared_up(s_shared_fix *f, int n, const char *const *want, int dim)
{
    cm_log_set_level(CM_LOG_ERROR);
    cm_error err = {0};
    f->van = cm_van_new(&err);
    cr_assert_not_null(f->van, "%s", err.msg);
    f->n = n;
    cm_table_spec tp[2];
    memset(tp, 0, sizeof tp);
    for (int t = 0; t < 2; t++) {
        tp[t].dim = dim;
        tp[t].init_std = 0.1f;
        tp[t].seed = 40 + (uint64_t)t;
        tp[t].optim = cm_optim_default(CM_OPT_ADAGRAD, 0.1f);
    }
    tp[1].shared = 1;
    for (int i = 0; i < n; i++) {
        f->srv[i] = ps_server_new(f->van, want[i], tp, 2, &err);
        cr_assert_not_null(f->srv[i], "%s", err.msg);
        f->eps[i] = ps_server_endpoint(f->srv[i]);
        cr_assert_eq(pthread_create(&f->tid[i], NULL, s_serve, f->srv[i]), 0);
    }
    sch_plan_slots(f->map, SLOTS, (uint32_t)n, NULL);
    int dims[2] = {dim, dim}, rf[2] = {2 * dim, 2 * dim};
    wk_kv_params p = {.n_servers = (uint32_t)n, .server_eps = f->eps, .n_slots = SLOTS,
                      .slot_map = f->map, .n_tables = 2, .dims = dims, .row_floats = rf,
                      .rank = 3, .timeout_ms = 5000};
    f->kv = wk_kv_new(f->van, &p, &err);
    cr_assert_not_null(f->kv, "%s", err.msg);
}

static void s_shared_down(s_shared_fix *f)
{
    wk_kv_destroy(&f->kv);
    cm_error err = {0};
    uint64_t rows = 0, bytes = 0;
    cr_expect_eq(sch_stop_servers(f->van, (uint32_t)f->n, f->eps, 5000, &rows, &bytes, &err),
                 0, "%s", err.msg);
    for (int i = 0; i < f->n; i++) {
        pthread_join(f->tid[i], NULL);
        ps_server_destroy(&f->srv[i]);
    }
    cm_van_destroy(&f->van);
}

/* Rows of a shared table across two servers on this host: each pointer is
 * the key's whole row in its server's memory (what a whole-row pull
 * reads), writes through it are the server's rows, placing again gives the
 * same pointers. A private table, shared_rows = off and a pull in
 * flight are refused with reasons. */
Test(kvshared, rows_in_the_servers_memory, .timeout = 60)
{
    const char *want[NS] = {"inproc://kv-shared-0", "inproc://kv-shared-1"};
    s_shared_fix f;
    s_shared_up(&f, NS, want, DIM);
    wk_kv *kv = f.kv;
    ps_server **srv = f.srv;
    cm_error err = {0};
    enum { N = 5000, RF = 2 * DIM };
    uint64_t *keys = malloc(N * sizeof *keys);
    float **rows = malloc(N * sizeof *rows), **again = malloc(N * sizeof *again);
    float *full = malloc((size_t)N * RF * sizeof *full);
    cr_assert(keys && rows && again && full);
    for (size_t i = 0; i < N; i++)
        keys[i] = 100 + 7 * i;
    cr_assert_eq(wk_kv_place(kv, 1, keys, N, 1, rows, &err), 0, "%s", err.msg);
    size_t on[NS] = {0};
    for (int s = 0; s < NS; s++)
        on[s] = ps_table_rows(ps_server_table(srv[s], 1));
    cr_expect_eq(on[0] + on[1], N, "every row made once");
    cr_expect(on[0] > 0 && on[1] > 0, "both servers hold rows (%zu, %zu)", on[0], on[1]);
    wk_pull req = {1, keys, N, full, CM_PULL_FULL, 0};
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    for (size_t i = 0; i < N; i++) {
        cr_assert_arr_eq(rows[i], full + i * RF, RF * sizeof(float), "key %zu's row", i);
        rows[i][0] = -(float)i;
        rows[i][RF - 1] = 2.5f; /* optimizer state too */
    }
    cr_assert_eq(wk_kv_pull(kv, &req, 1, &err), 0, "%s", err.msg);
    for (size_t i = 0; i < N; i++) {
        cr_assert_eq(full[i * RF], -(float)i, "key %zu: the write is the server's", i);
        cr_assert_eq(full[i * RF + RF - 1], 2.5f);
    }
    cr_assert_eq(wk_kv_place(kv, 1, keys, N, 1, again, &err), 0, "%s", err.msg);
    cr_expect_arr_eq(again, rows, N * sizeof *rows, "the same places again");
    /* without create, on both servers: the rows that exist where they
     * are, NULL for keys without one, and nothing made */
    for (size_t i = 0; i < N; i += 3)
        keys[i] += 1; /* 100 + 7i + 1 is no key of the set */
    cr_assert_eq(wk_kv_place(kv, 1, keys, N, 0, again, &err), 0, "%s", err.msg);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(again[i], i % 3 ? rows[i] : NULL, "key %zu", i);
    cr_expect_eq(ps_table_rows(ps_server_table(srv[0], 1)) +
                     ps_table_rows(ps_server_table(srv[1], 1)), N, "no row made");
    for (size_t i = 0; i < N; i += 3)
        keys[i] -= 1;

    cr_expect_eq(wk_kv_place(kv, 0, keys, 10, 1, again, &err), CM_ENOTSUP);
    cr_expect(strstr(err.msg, "does not share its rows"), "%s", err.msg);
    /* a client made with shared_rows = off is refused the same rows */
    int dims[2] = {DIM, DIM}, rf[2] = {RF, RF};
    wk_kv_params off = {.n_servers = NS, .server_eps = f.eps, .n_slots = SLOTS,
                        .slot_map = f.map, .n_tables = 2, .dims = dims, .row_floats = rf,
                        .rank = 4, .timeout_ms = 5000, .no_shared_rows = 1};
    wk_kv *kv_off = wk_kv_new(f.van, &off, &err);
    cr_assert_not_null(kv_off, "%s", err.msg);
    cr_expect_eq(wk_kv_place(kv_off, 1, keys, 10, 1, again, &err), CM_ENOTSUP);
    cr_expect(strstr(err.msg, "shared_rows = off"), "%s", err.msg);
    wk_kv_destroy(&kv_off);
    cr_expect_eq(wk_kv_place(kv, 1, keys, 10, 1, again, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_pull_start(kv, &req, 1, &err), 0, "%s", err.msg);
    cr_expect_eq(wk_kv_place(kv, 1, keys, 10, 1, again, &err), CM_ESTATE);
    cr_assert_eq(wk_kv_pull_wait(kv, &err), 0, "%s", err.msg);
    s_shared_down(&f);
    free(keys);
    free(rows);
    free(again);
    free(full);
}

/* Rows of 80 floats (dim 33, AdaGrad: 66 used, 320 bytes a row, which no
 * page size is a multiple of): the files of two servers, and the second
 * mapping of a file that grew, are mapped so that every row lies a whole
 * number of rows from every other. A block whose rows span both servers
 * then trains in place (worker/blocks.c); plain page-aligned mappings
 * would be 64 bytes apart mod 320 four times in five. */
Test(kvshared, rows_of_every_server_lie_whole_rows_apart, .timeout = 60)
{
    const char *want[NS] = {"inproc://kv-rows-0", "inproc://kv-rows-1"};
    enum { D = 33, N = 6000, ROW = 80 * sizeof(float) };
    s_shared_fix f;
    s_shared_up(&f, NS, want, D);
    wk_kv *kv = f.kv;
    cm_error err = {0};
    uint64_t *keys = malloc(N * sizeof *keys);
    float **rows = malloc(N * sizeof *rows);
    cr_assert(keys && rows);
    for (size_t i = 0; i < N; i++)
        keys[i] = 5 + 3 * i;
    /* in two calls: the files grow between them and are mapped again */
    cr_assert_eq(wk_kv_place(kv, 1, keys, 100, 1, rows, &err), 0, "%s", err.msg);
    cr_assert_eq(wk_kv_place(kv, 1, keys + 100, N - 100, 1, rows + 100, &err), 0, "%s",
                 err.msg);
    for (int s = 0; s < NS; s++) {
        ps_table_share_info sh;
        cr_assert_eq(ps_table_share(ps_server_table(f.srv[s], 1), &sh), 0);
        cr_assert_eq(sh.stride * sizeof(float), ROW, "server %d: a row is %zu floats", s,
                     sh.stride);
    }
    for (size_t i = 1; i < N; i++) {
        const ptrdiff_t d = (const char *)rows[i] - (const char *)rows[0];
        cr_assert_eq(d % (ptrdiff_t)ROW, 0, "key %zu lies %td bytes from key 0", i, d);
    }
    s_shared_down(&f);
    free(keys);
    free(rows);
}

/* A server that answers PLACE wrongly: with a place for a missing key
 * (UINT64_MAX) although rows were to be made (mode 0), a place beyond its
 * file (1), or too few stats to map the file (2). The file is a real shared
 * table's, so only the answer is wrong. */
typedef struct {
    cm_sock *sock;
    ps_table *t;
    int mode;
} s_liar;

static void *s_liar_main(void *arg)
{
    s_liar *l = arg;
    cm_msg m = {0};
    cm_error e = {0};
    if (cm_msg_recv(l->sock, &m, 5000, &e) != 0)
        return NULL;
    ps_table_share_info sh;
    cr_assert_eq(ps_table_share(l->t, &sh), 0);
    cm_hdr h = cm_hdr_make(CM_OP_REPLY);
    h.req_id = m.hdr.req_id;
    h.table = m.hdr.table;
    if (l->mode != 2) { /* mode 2: no word on the file */
        h.body = CM_BODY_PLACE;
        h.place = (cm_place_reply){getpid(), sh.fd, sh.token, sh.header, sh.stride, sh.bytes};
    }
    const uint64_t idx[2] = {0, l->mode == 0 ? UINT64_MAX : (uint64_t)1 << 40};
    cm_msg_send(l->sock, m.route, m.route_size, &h, idx, 2, NULL, 0);
    cm_msg_release(&m);
    return NULL;
}

/* A wrong PLACE answer is an error naming the server and what is wrong,
 * never a pointer outside the server's file. */
Test(kvshared, a_wrong_place_answer_is_refused, .timeout = 60)
{
    cm_log_set_level(CM_LOG_ERROR);
    cm_error err = {0};
    cm_van *van = cm_van_new(&err);
    cr_assert_not_null(van, "%s", err.msg);
    cm_table_spec tp = {0};
    tp.dim = DIM;
    tp.init_std = 0.1f;
    tp.optim = cm_optim_default(CM_OPT_ADAGRAD, 0.1f);
    tp.shared = 1;
    ps_table *t = ps_table_new(&tp, &err);
    cr_assert_not_null(t, "%s", err.msg);
    const uint64_t keys[2] = {10, 20};
    uint64_t made[2];
    cr_assert_eq(ps_table_place(t, keys, 2, 1, made), 0, "the file holds two rows");
    const char *want[3] = {"beyond its file", "beyond its file", "no file to map"};
    for (int mode = 0; mode < 3; mode++) {
        char ep[64], bound[CM_ENDPOINT_MAX];
        snprintf(ep, sizeof ep, "inproc://kv-liar-%d", mode);
        s_liar l = {cm_sock_new(van, CM_SOCK_ROUTER, &err), t, mode};
        cr_assert_not_null(l.sock, "%s", err.msg);
        cr_assert_eq(cm_sock_bind(l.sock, ep, bound), 0);
        pthread_t tid;
        cr_assert_eq(pthread_create(&tid, NULL, s_liar_main, &l), 0);
        const char *eps[1] = {bound};
        uint32_t map[SLOTS];
        sch_plan_slots(map, SLOTS, 1, NULL);
        int dims[2] = {DIM, DIM}, rf[2] = {2 * DIM, 2 * DIM};
        wk_kv_params p = {.n_servers = 1, .server_eps = eps, .n_slots = SLOTS,
                          .slot_map = map, .n_tables = 2, .dims = dims, .row_floats = rf,
                          .rank = 3, .timeout_ms = 5000};
        wk_kv *kv = wk_kv_new(van, &p, &err);
        cr_assert_not_null(kv, "%s", err.msg);
        float *rows[2] = {NULL, NULL};
        cm_error_clear(&err);
        cr_expect_eq(wk_kv_place(kv, 1, keys, 2, 1, rows, &err), CM_EPROTO, "mode %d: %s", mode,
                     err.msg);
        cr_expect(strstr(err.msg, "server 0") && strstr(err.msg, want[mode]), "mode %d: %s",
                  mode, err.msg);
        pthread_join(tid, NULL);
        wk_kv_destroy(&kv);
        cm_sock_destroy(&l.sock);
    }
    ps_table_destroy(&t);
    cm_van_destroy(&van);
}

/* A server reached over tcp may be on another host: nothing is asked and
 * rows stay where they are. */
Test(kvshared, a_tcp_server_is_not_shared, .timeout = 60)
{
    const char *want[1] = {"tcp://127.0.0.1:*"};
    s_shared_fix f;
    s_shared_up(&f, 1, want, DIM);
    cm_error err = {0};
    uint64_t keys[3] = {1, 2, 3};
    float *rows[3];
    cr_expect_eq(wk_kv_place(f.kv, 1, keys, 3, 1, rows, &err), CM_ENOTSUP);
    cr_expect(strstr(err.msg, "server 0 is reached over tcp"), "%s", err.msg);
    cr_expect_eq(ps_table_rows(ps_server_table(f.srv[0], 1)), 0, "no place was asked");
    s_shared_down(&f);
}
