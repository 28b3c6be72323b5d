/* test_msg: psrec messages over the van — every header field round trips,
 * keys and values arrive intact and zero-copy, and every malformed message
 * is rejected with CM_EPROTO and a reason, never a crash. Malformed ones are
 * crafted as raw frames with cm_sock_send, the way a buggy or hostile peer
 * would send them. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/codec.h"
#include "common/half.h"
#include "common/msg.h"
#include "common/van.h"

/* ------------------------------------------------------------ fixture -- */

typedef struct {
    cm_van *van;
    cm_sock *router;      /* the "server" */
    cm_sock *dealer;      /* the "worker" */
} pair;

/* A van with a ROUTER bound to `endpoint` (inproc://name or tcp://...:*)
 * and a DEALER connected to it. */
static pair s_pair(const char *endpoint)
{
    pair p = {0};
    cm_error err = {0};
    p.van = cm_van_new(&err);
    cr_assert_not_null(p.van, "%s", err.msg);
    p.router = cm_sock_new(p.van, CM_SOCK_ROUTER, &err);
    p.dealer = cm_sock_new(p.van, CM_SOCK_DEALER, &err);
    cr_assert(p.router && p.dealer, "%s", err.msg);
    char actual[CM_ENDPOINT_MAX];
    cr_assert_eq(cm_sock_bind(p.router, endpoint, actual), 0, "%s", cm_sock_errmsg(p.router));
    cr_assert_eq(cm_sock_connect(p.dealer, actual), 0, "%s", cm_sock_errmsg(p.dealer));
    return p;
}

static void s_pair_free(pair *p)
{
    cm_sock_destroy(&p->dealer);
    cm_sock_destroy(&p->router);
    cm_van_destroy(&p->van);
}

/* A packed header frame for raw sends; free() the result. */
static uint8_t *s_pack(cm_hdr h, size_t *len)
{
    uint8_t *buf = NULL;
    cr_assert_eq(cm_codec_hdr_pack(&h, &buf, len), 0);
    return buf;
}

/* Sends raw frames from the dealer and has the router receive them;
 * returns cm_msg_recv's code and leaves the message in *m. */
static int s_raw(pair *p, const cm_iov *frames, size_t n, cm_msg *m, cm_error *err)
{
    cr_assert_eq(cm_sock_send(p->dealer, frames, n), 0, "%s", cm_sock_errmsg(p->dealer));
    return cm_msg_recv(p->router, m, 2000, err);
}

/* Sends header + optional keys/vals frames raw and expects CM_EPROTO whose
 * message contains `why`. */
static void s_expect_reject(pair *p, cm_hdr h, const void *keys, size_t kbytes,
                            const void *vals, size_t vbytes, size_t n_frames, const char *why)
{
    size_t len;
    uint8_t *hb = s_pack(h, &len);
    cm_iov f[3] = {{hb, len}, {keys, kbytes}, {vals, vbytes}};
    cm_msg m;
    cm_error err = {0};
    int rc = s_raw(p, f, n_frames, &m, &err);
    cr_assert_eq(rc, CM_EPROTO, "expected CM_EPROTO, got %s (%s)", cm_errname(rc), err.msg);
    cr_assert(strstr(err.msg, why), "message \"%s\" does not say \"%s\"", err.msg, why);
    cr_assert_not_null(m.route, "the route survives a rejection");
    cm_msg_release(&m);
    free(hb);
}

/* ------------------------------------------------------------- basics -- */

Test(msg, op_names)
{
    cr_assert_str_eq(cm_op_name(CM_OP_PULL), "PULL");
    cr_assert_str_eq(cm_op_name(CM_OP_PUSH), "PUSH");
    cr_assert_str_eq(cm_op_name(CM_OP_REPLY), "REPLY");
    cr_assert_str_eq(cm_op_name(CM_OP_ERROR), "ERROR");
    cr_assert_str_eq(cm_op_name(CM_OP_HELLO), "HELLO");
    cr_assert_str_eq(cm_op_name(CM_OP_STOP), "STOP");
    cr_assert_str_eq(cm_op_name(CM_OP_EPOCH_DONE), "EPOCH_DONE");
    cr_assert_str_eq(cm_op_name(999), "?");
    cr_assert_str_eq(cm_op_name(-1), "?");
}

Test(msg, hdr_make_is_zeroed)
{
    cm_hdr h = cm_hdr_make(CM_OP_PLAN);
    cr_assert_eq(h.op, CM_OP_PLAN);
    cr_assert_eq(h.req_id, 0);
    cr_assert_eq(h.n_keys, 0);
    cr_assert_eq(h.dim, 0);
    cr_assert_eq(h.body, CM_BODY_NONE);
    cr_assert_null(h.slots);
    cr_assert_str_eq(h.error, "");
}

Test(msg, release_is_safe_on_zeroed_and_twice)
{
    cm_msg m;
    memset(&m, 0, sizeof m);
    cm_msg_release(&m);
    cm_msg_release(&m);
    cm_msg_release(NULL);
}

Test(msg, recv_timeout)
{
    pair p = s_pair("inproc://msg-timeout");
    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(cm_msg_recv(p.router, &m, 30, &err), CM_ETIMEDOUT);
    cr_assert_eq(err.code, CM_ETIMEDOUT);
    cm_msg_release(&m);
    s_pair_free(&p);
}

/* ---------------------------------------------------------- round trip -- */

Test(msg, every_header_field_round_trips)
{
    pair p = s_pair("inproc://msg-fields");
    uint32_t slots[5] = {0, 1, 2, 1, 0};
    cm_hdr h = cm_hdr_make(CM_OP_PLAN);
    h.table = 7;
    h.req_id = UINT64_MAX - 3;
    h.clock = 123456789012345ull;
    h.status = CM_EREMOTE;
    snprintf(h.error, sizeof h.error, "something went wrong at node3");
    h.flags = CM_PULL_NO_CREATE | 0x80u;
    h.epoch = 41;
    h.sender = -1;
    h.body = CM_BODY_PLAN;
    h.plan = (cm_plan){-2.25e300, 1.5f, 0.0f, 3};
    h.n_slots = 5;
    h.slots = slots;
    h.key_ref = (1ull << 50) + 3;
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, NULL, 0, NULL, 0), 0, "%s",
                 cm_sock_errmsg(p.dealer));

    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(cm_msg_recv(p.router, &m, 2000, &err), 0, "%s", err.msg);
    cr_assert_eq(m.hdr.op, CM_OP_PLAN);
    cr_assert_eq(m.hdr.table, 7);
    cr_assert_eq(m.hdr.req_id, UINT64_MAX - 3);
    cr_assert_eq(m.hdr.clock, 123456789012345ull);
    cr_assert_eq(m.hdr.n_keys, 0);
    cr_assert_eq(m.hdr.dim, 0);
    cr_assert_eq(m.hdr.status, CM_EREMOTE);
    cr_assert_str_eq(m.hdr.error, "something went wrong at node3");
    cr_assert_eq(m.hdr.flags, CM_PULL_NO_CREATE | 0x80u);
    cr_assert_eq(m.hdr.epoch, 41);
    cr_assert_eq(m.hdr.sender, -1);
    cr_assert_eq(m.hdr.body, CM_BODY_PLAN);
    cr_assert_eq(m.hdr.plan.mean, -2.25e300);
    cr_assert_eq(m.hdr.plan.clip_lo, 1.5f);
    cr_assert_eq(m.hdr.plan.clip_hi, 0.0f);
    cr_assert_eq(m.hdr.plan.blocks_per_worker, 3);
    cr_assert_eq(m.hdr.n_slots, 5);
    cr_assert_neq(m.hdr.slots, slots, "received slots are the message's own copy");
    cr_assert_arr_eq(m.hdr.slots, slots, sizeof slots);
    cr_assert_eq(m.hdr.key_ref, (1ull << 50) + 3);
    cr_assert_null(m.keys);
    cr_assert_null(m.vals);
    cr_assert_eq(m.n_vals, 0);
    cr_assert_not_null(m.route);
    cr_assert_gt(m.route_size, 0);

    /* The router answers on the route; the dealer sees no route. */
    cm_hdr r = cm_hdr_make(CM_OP_REPLY);
    r.req_id = m.hdr.req_id;
    r.body = CM_BODY_LOADED;
    r.loaded.rows = 20;
    cr_assert_eq(cm_msg_send(p.router, m.route, m.route_size, &r, NULL, 0, NULL, 0), 0, "%s",
                 cm_sock_errmsg(p.router));
    cm_msg_release(&m);
    cr_assert_null(m.hdr.slots);

    cm_msg back;
    cr_assert_eq(cm_msg_recv(p.dealer, &back, 2000, &err), 0, "%s", err.msg);
    cr_assert_eq(back.hdr.op, CM_OP_REPLY);
    cr_assert_eq(back.hdr.req_id, UINT64_MAX - 3);
    cr_assert_eq(back.hdr.body, CM_BODY_LOADED);
    cr_assert_eq(back.hdr.loaded.rows, 20);
    cr_assert_null(back.route);
    cr_assert_eq(back.route_size, 0);
    cm_msg_release(&back);
    s_pair_free(&p);
}

/* Fills keys 3, 10, 17, ... and values v[i*dim+j] = key + j/100. */
static void s_fill(uint64_t *keys, float *vals, size_t n, uint32_t dim)
{
    for (size_t i = 0; i < n; i++) {
        keys[i] = 3 + 7 * (uint64_t)i;
        for (uint32_t j = 0; j < dim; j++)
            vals[i * dim + j] = (float)keys[i] + (float)j / 100.0f;
    }
}

/* A PUSH of n keys x dim goes through and arrives intact. */
static void s_push_round_trip(pair *p, size_t n, uint32_t dim)
{
    uint64_t *keys = malloc(n * sizeof *keys);
    float *vals = malloc(n * dim * sizeof *vals);
    s_fill(keys, vals, n, dim);
    cm_hdr h = cm_hdr_make(CM_OP_PUSH);
    h.req_id = n;
    h.table = 2;
    cr_assert_eq(cm_msg_send(p->dealer, NULL, 0, &h, keys, n, vals, n * dim), 0, "%s",
                 cm_sock_errmsg(p->dealer));
    cr_assert_eq(h.dim, dim, "dim is derived from the counts");
    cr_assert_eq(h.n_keys, n);

    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(cm_msg_recv(p->router, &m, 5000, &err), 0, "n=%zu dim=%u: %s", n, dim, err.msg);
    cr_assert_eq(m.hdr.op, CM_OP_PUSH);
    cr_assert_eq(m.hdr.n_keys, n);
    cr_assert_eq(m.hdr.dim, dim);
    cr_assert_eq(m.n_vals, n * dim);
    cr_assert_eq((uintptr_t)m.keys % 8, 0);
    cr_assert_eq((uintptr_t)m.vals % 4, 0);
    cr_assert_arr_eq(m.keys, keys, n * sizeof *keys);
    cr_assert_arr_eq(m.vals, vals, n * dim * sizeof *vals);
    cm_msg_release(&m);
    free(keys);
    free(vals);
}

Test(msg, push_keys_and_values_inproc)
{
    pair p = s_pair("inproc://msg-push");
    size_t sizes[] = {1, 2, 3, 5, 64, 1000, 100000};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        s_push_round_trip(&p, sizes[i], 1 + (uint32_t)i * 3);
    s_pair_free(&p);
}

/* f16 values: the frame holds 2 bytes per value and the receiver reads
 * floats equal to the half-rounded ones, over inproc and (misaligned
 * slices) tcp; a half frame of odd length and an unknown dtype are
 * refused. */
static void s_half_round_trip(pair *p, size_t n, uint32_t dim)
{
    uint64_t *keys = malloc(n * sizeof *keys);
    float *vals = malloc(n * dim * sizeof *vals);
    s_fill(keys, vals, n, dim);
    cm_hdr h = cm_hdr_make(CM_OP_PUSH);
    h.dtype = CM_DTYPE_F16;
    cr_assert_eq(cm_msg_send(p->dealer, NULL, 0, &h, keys, n, vals, n * dim), 0, "%s",
                 cm_sock_errmsg(p->dealer));
    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(cm_msg_recv(p->router, &m, 5000, &err), 0, "n=%zu: %s", n, err.msg);
    cr_assert_eq(m.hdr.dtype, CM_DTYPE_F16);
    cr_assert_eq(m.n_vals, n * dim);
    cr_assert_eq((uintptr_t)m.vals % 4, 0);
    cr_assert_arr_eq(m.keys, keys, n * sizeof *keys);
    for (size_t i = 0; i < n * dim; i++)
        cr_assert_eq(m.vals[i], cm_half_value(cm_half_of(vals[i])), "value %zu", i);
    cm_msg_release(&m);
    free(keys);
    free(vals);
}

Test(msg, half_values_round_trip)
{
    pair p = s_pair("inproc://msg-half");
    s_half_round_trip(&p, 1, 1);
    s_half_round_trip(&p, 1000, 33);
    s_pair_free(&p);
    p = s_pair("tcp://127.0.0.1:*");
    for (size_t n = 1; n < 20; n++)
        s_half_round_trip(&p, n, (uint32_t)(n % 3) + 1);
    s_pair_free(&p);
}

Test(msg, rejects_odd_half_frame_and_unknown_dtype)
{
    pair p = s_pair("inproc://msg-half-bad");
    uint64_t key = 7;
    uint16_t halves[3] = {0x3c00, 0x3c00, 0x3c00};
    cm_hdr h = cm_hdr_make(CM_OP_PUSH);
    h.n_keys = 1;
    h.dim = 1;
    h.dtype = CM_DTYPE_F16;
    s_expect_reject(&p, h, &key, 8, halves, 3, 3, "not a multiple of 2");
    h.dim = 3;
    s_expect_reject(&p, h, &key, 8, halves, 4, 3, "expected n_keys");
    h.dim = 1;
    h.dtype = 1;
    float one = 1.f;
    cm_hdr bad = h;
    bad.dtype = 9;
    cr_assert_neq(cm_msg_send(p.dealer, NULL, 0, &bad, &key, 1, &one, 1), 0,
                  "send refuses an unknown dtype");
    s_pair_free(&p);
}

/* Over tcp ZeroMQ hands out slices of its receive buffer, so frames are
 * often misaligned: the aligned copy must be right for every size. */
Test(msg, push_keys_and_values_tcp)
{
    pair p = s_pair("tcp://127.0.0.1:*");
    for (size_t n = 1; n < 40; n++)
        s_push_round_trip(&p, n, (uint32_t)(n % 5) + 1);
    s_push_round_trip(&p, 50000, 16);
    s_pair_free(&p);
}

Test(msg, pull_and_reply_with_implied_keys)
{
    pair p = s_pair("inproc://msg-pull");
    uint64_t keys[4] = {5, 9, 100, 1ull << 60};
    cm_hdr h = cm_hdr_make(CM_OP_PULL);
    h.req_id = 77;
    h.dim = 3;
    h.flags = CM_PULL_NO_CREATE;
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, keys, 4, NULL, 0), 0, "%s",
                 cm_sock_errmsg(p.dealer));

    cm_msg req;
    cm_error err = {0};
    cr_assert_eq(cm_msg_recv(p.router, &req, 2000, &err), 0, "%s", err.msg);
    cr_assert_eq(req.hdr.op, CM_OP_PULL);
    cr_assert_eq(req.hdr.n_keys, 4);
    cr_assert_eq(req.hdr.dim, 3);
    cr_assert_eq(req.hdr.flags, CM_PULL_NO_CREATE);
    cr_assert_arr_eq(req.keys, keys, sizeof keys);
    cr_assert_null(req.vals);

    /* The reply has the rows in request order and no keys frame content. */
    float rows[12];
    for (int i = 0; i < 12; i++)
        rows[i] = (float)i * 0.5f;
    cm_hdr r = cm_hdr_make(CM_OP_REPLY);
    r.req_id = req.hdr.req_id;
    r.dim = 3;
    cr_assert_eq(cm_msg_send(p.router, req.route, req.route_size, &r, NULL, 0, rows, 12), 0,
                 "%s", cm_sock_errmsg(p.router));
    cr_assert_eq(r.n_keys, 4, "n_keys counts the rows when keys are implied");
    cm_msg_release(&req);

    cm_msg rep;
    cr_assert_eq(cm_msg_recv(p.dealer, &rep, 2000, &err), 0, "%s", err.msg);
    cr_assert_eq(rep.hdr.op, CM_OP_REPLY);
    cr_assert_eq(rep.hdr.req_id, 77);
    cr_assert_eq(rep.hdr.n_keys, 4);
    cr_assert_eq(rep.hdr.dim, 3);
    cr_assert_null(rep.keys);
    cr_assert_eq(rep.n_vals, 12);
    cr_assert_arr_eq(rep.vals, rows, sizeof rows);
    cm_msg_release(&rep);
    s_pair_free(&p);
}

Test(msg, dense_values_without_dim_are_one_row)
{
    pair p = s_pair("inproc://msg-dense");
    float v[5] = {1, 2, 3, 4, 5};
    cm_hdr h = cm_hdr_make(CM_OP_EPOCH_DONE);
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, NULL, 0, v, 5), 0, "%s",
                 cm_sock_errmsg(p.dealer));
    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(cm_msg_recv(p.router, &m, 2000, &err), 0, "%s", err.msg);
    cr_assert_eq(m.hdr.dim, 5);
    cr_assert_eq(m.hdr.n_keys, 1);
    cr_assert_eq(m.n_vals, 5);
    cr_assert_arr_eq(m.vals, v, sizeof v);
    cm_msg_release(&m);
    s_pair_free(&p);
}

/* Received keys and values point into the frames (or the message's aligned
 * copy) and stay valid, untouched by later receives, until release. */
Test(msg, zero_copy_pointers_live_until_release)
{
    pair p = s_pair("inproc://msg-zerocopy");
    enum { N = 4096, DIM = 8, K = 4 };
    static uint64_t keys[N];
    static float vals[N * DIM];
    s_fill(keys, vals, N, DIM);
    for (int i = 0; i < K; i++) {
        cm_hdr h = cm_hdr_make(CM_OP_PUSH);
        h.req_id = (uint64_t)i;
        vals[0] = (float)i;
        cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, keys, N, vals, N * DIM), 0);
    }
    cm_msg m[K];
    cm_error err = {0};
    for (int i = 0; i < K; i++)
        cr_assert_eq(cm_msg_recv(p.router, &m[i], 2000, &err), 0, "%s", err.msg);
    for (int i = 0; i < K; i++) {
        cr_assert_eq(m[i].hdr.req_id, (uint64_t)i);
        cr_assert_eq(m[i].vals[0], (float)i);
        vals[0] = (float)i;
        cr_assert_arr_eq(m[i].keys, keys, sizeof keys);
        cr_assert_arr_eq(m[i].vals, vals, sizeof vals);
        if (!m[i].copy_) {
            /* No copy: the arrays are the frames themselves. */
            cr_assert_eq((const void *)m[i].keys, cm_frames_data(m[i].frames_, 2));
            cr_assert_eq((const void *)m[i].vals, cm_frames_data(m[i].frames_, 3));
        }
    }
    for (int i = 0; i < K; i++)
        cm_msg_release(&m[i]);
    s_pair_free(&p);
}

/* ----------------------------------------------------- send-side checks -- */

Test(msg, send_refuses_what_the_receiver_would_reject)
{
    pair p = s_pair("inproc://msg-sendcheck");
    uint64_t unsorted[3] = {5, 3, 9};
    uint64_t dup[3] = {5, 5, 9};
    float v[6] = {0};
    cm_hdr h = cm_hdr_make(CM_OP_PULL);
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, unsorted, 3, NULL, 0), CM_EINVAL);
    cr_assert(strstr(cm_sock_errmsg(p.dealer), "ascending"), "%s", cm_sock_errmsg(p.dealer));
    h = cm_hdr_make(CM_OP_PUSH);
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, dup, 3, v, 6), CM_EINVAL);
    h = cm_hdr_make(CM_OP_PUSH);
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, NULL, 0, NULL, 0), CM_EINVAL);
    h = cm_hdr_make(CM_OP_PUSH);
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, unsorted + 2, 1, NULL, 0), CM_EINVAL,
                 "a push without values");
    h = cm_hdr_make(CM_OP_PUSH);
    h.dim = 4;
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, dup + 1, 2, v, 6), CM_EINVAL,
                 "6 values are not 2 keys x 4");
    h = cm_hdr_make(CM_OP_REPLY);
    h.dim = 4;
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, NULL, 0, v, 6), CM_EINVAL,
                 "6 values are not whole rows of 4");
    h = cm_hdr_make(CM_OP_REPLY);
    cr_assert_eq(cm_msg_send(p.router, NULL, 0, &h, NULL, 0, NULL, 0), CM_EINVAL,
                 "a ROUTER needs a route");
    cr_assert(strstr(cm_sock_errmsg(p.router), "route"), "%s", cm_sock_errmsg(p.router));
    /* Nothing of the above reached the router. */
    cm_msg m;
    cr_assert_eq(cm_msg_recv(p.router, &m, 20, NULL), CM_ETIMEDOUT);
    cm_msg_release(&m);
    s_pair_free(&p);
}

Test(msg, router_send_to_gone_peer_fails)
{
    pair p = s_pair("inproc://msg-gone");
    cm_hdr h = cm_hdr_make(CM_OP_REPLY);
    int rc = cm_msg_send(p.router, "nobody", 6, &h, NULL, 0, NULL, 0);
    cr_assert_lt(rc, 0);
    cr_assert_neq(cm_sock_errmsg(p.router)[0], '\0');
    s_pair_free(&p);
}

/* ---------------------------------------------------------- rejections -- */

Test(msg, rejects_garbage_header)
{
    pair p = s_pair("inproc://msg-garbage");
    uint8_t junk[16];
    memset(junk, 0xff, sizeof junk);
    cm_iov f[1] = {{junk, sizeof junk}};
    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(s_raw(&p, f, 1, &m, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "does not decode"), "%s", err.msg);
    cr_assert_not_null(m.route);
    cm_msg_release(&m);
    s_pair_free(&p);
}

Test(msg, rejects_empty_message)
{
    pair p = s_pair("inproc://msg-empty");
    cm_iov f[1] = {{NULL, 0}};
    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(s_raw(&p, f, 1, &m, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "unknown op 0"), "%s", err.msg);
    cm_msg_release(&m);
    s_pair_free(&p);
}

Test(msg, rejects_unknown_op)
{
    pair p = s_pair("inproc://msg-unknown-op");
    cm_hdr h = cm_hdr_make(99);
    h.req_id = 5;
    s_expect_reject(&p, h, NULL, 0, NULL, 0, 1, "unknown op 99");
    h = cm_hdr_make(-3);
    s_expect_reject(&p, h, NULL, 0, NULL, 0, 1, "unknown op -3");
    s_pair_free(&p);
}

Test(msg, rejects_truncated_keys_frame)
{
    pair p = s_pair("inproc://msg-trunc");
    uint64_t keys[3] = {1, 2, 3};
    float vals[3] = {0};
    cm_hdr h = cm_hdr_make(CM_OP_PULL);
    h.n_keys = 3;
    s_expect_reject(&p, h, keys, 20, NULL, 0, 2, "keys frame of 20 bytes");
    s_expect_reject(&p, h, keys, 16, NULL, 0, 2, "keys frame of 16 bytes");
    s_expect_reject(&p, h, NULL, 0, NULL, 0, 1, "keys frame of 0 bytes");
    h = cm_hdr_make(CM_OP_PUSH);
    h.n_keys = 3;
    h.dim = 1;
    s_expect_reject(&p, h, keys, 16, vals, 12, 3, "keys frame of 16 bytes");
    s_expect_reject(&p, h, NULL, 0, vals, 12, 3, "keys frame of 0 bytes");
    s_pair_free(&p);
}

Test(msg, rejects_huge_key_count_without_allocating)
{
    pair p = s_pair("inproc://msg-huge");
    uint64_t keys[2] = {1, 2};
    cm_hdr h = cm_hdr_make(CM_OP_PULL);
    h.n_keys = UINT64_MAX;
    s_expect_reject(&p, h, keys, 16, NULL, 0, 2, "keys frame of 16 bytes");
    h.n_keys = (UINT64_MAX / 8) + 3;   /* n_keys * 8 wraps to 16 */
    s_expect_reject(&p, h, keys, 16, NULL, 0, 2, "keys frame of 16 bytes");
    h = cm_hdr_make(CM_OP_REPLY);
    h.n_keys = 1ull << 62;
    h.dim = 1u << 31;
    float v[2] = {0};
    s_expect_reject(&p, h, NULL, 0, v, 8, 3, "2 values");
    s_pair_free(&p);
}

Test(msg, rejects_unsorted_keys)
{
    pair p = s_pair("inproc://msg-unsorted");
    uint64_t keys[4] = {1, 5, 4, 9};
    cm_hdr h = cm_hdr_make(CM_OP_PULL);
    h.n_keys = 4;
    s_expect_reject(&p, h, keys, sizeof keys, NULL, 0, 2, "not sorted: 4 at 2 after 5");
    s_pair_free(&p);
}

Test(msg, rejects_duplicate_keys)
{
    pair p = s_pair("inproc://msg-dupkeys");
    uint64_t keys[4] = {1, 5, 5, 9};
    float vals[4] = {0};
    cm_hdr h = cm_hdr_make(CM_OP_PUSH);
    h.n_keys = 4;
    h.dim = 1;
    s_expect_reject(&p, h, keys, sizeof keys, vals, sizeof vals, 3, "duplicate key 5 at 2");
    s_pair_free(&p);
}

Test(msg, rejects_values_not_keys_times_dim)
{
    pair p = s_pair("inproc://msg-vals");
    uint64_t keys[2] = {1, 2};
    float vals[7] = {0};
    cm_hdr h = cm_hdr_make(CM_OP_PUSH);
    h.n_keys = 2;
    h.dim = 3;
    s_expect_reject(&p, h, keys, 16, vals, 5 * 4, 3, "5 values, expected n_keys 2 x dim 3");
    s_expect_reject(&p, h, keys, 16, vals, 7 * 4, 3, "7 values");
    s_expect_reject(&p, h, keys, 16, vals, 6 * 4 - 1, 3, "not a multiple of 4");
    h.dim = 0;
    s_expect_reject(&p, h, keys, 16, vals, 6 * 4, 3, "dim is 0");
    s_expect_reject(&p, h, keys, 16, NULL, 0, 2, "PUSH req 0: no values");
    h = cm_hdr_make(CM_OP_PULL);
    h.n_keys = 2;
    h.dim = 1;
    s_expect_reject(&p, h, keys, 16, vals, 8, 3, "a pull carries no values");
    h = cm_hdr_make(CM_OP_REPLY);
    h.n_keys = 3;
    h.dim = 2;
    s_expect_reject(&p, h, NULL, 0, vals, 4 * 4, 3, "4 values, expected n_keys 3 x dim 2");
    s_pair_free(&p);
}

Test(msg, rejects_too_many_frames)
{
    pair p = s_pair("inproc://msg-frames");
    uint64_t keys[1] = {1};
    float vals[1] = {0};
    cm_hdr h = cm_hdr_make(CM_OP_PUSH);
    h.n_keys = 1;
    h.dim = 1;
    h.req_id = 9;
    size_t len;
    uint8_t *hb = s_pack(h, &len);
    cm_iov f[5] = {{hb, len}, {keys, 8}, {vals, 4}, {vals, 4}, {"x", 1}};
    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(s_raw(&p, f, 5, &m, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "5 frames after the route"), "%s", err.msg);
    cr_assert_eq(m.hdr.req_id, 9);
    cm_msg_release(&m);
    free(hb);
    s_pair_free(&p);
}

Test(msg, rejects_on_a_dealer_too)
{
    /* The worker side validates replies the same way. */
    pair p = s_pair("inproc://msg-dealer-reject");
    cr_assert_eq(cm_sock_send(p.dealer, (cm_iov[]){{"hi", 2}}, 1), 0);
    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(p.router, &f, 2000), 0);
    cm_hdr h = cm_hdr_make(CM_OP_REPLY);
    h.n_keys = 2;
    h.dim = 2;
    h.req_id = 3;
    size_t len;
    uint8_t *hb = s_pack(h, &len);
    float vals[3] = {0};
    cm_iov out[4] = {{cm_frames_data(f, 0), cm_frames_size(f, 0)}, {hb, len}, {NULL, 0},
                     {vals, sizeof vals}};
    cr_assert_eq(cm_sock_send(p.router, out, 4), 0);
    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(cm_msg_recv(p.dealer, &m, 2000, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "3 values"), "%s", err.msg);
    cr_assert_eq(m.hdr.req_id, 3);
    cr_assert_null(m.route);
    cm_msg_release(&m);
    cm_frames_destroy(&f);
    free(hb);
    s_pair_free(&p);
}

/* A server that receives a malformed request answers its sender with
 * OP_ERROR carrying the request id, and keeps serving. */
Test(msg, malformed_request_gets_error_reply)
{
    pair p = s_pair("inproc://msg-reply-error");
    uint64_t keys[3] = {9, 4, 1};
    float vals[3] = {1, 2, 3};
    cm_hdr h = cm_hdr_make(CM_OP_PUSH);
    h.n_keys = 3;
    h.dim = 1;
    h.req_id = 42;
    h.table = 3;
    size_t len;
    uint8_t *hb = s_pack(h, &len);
    cm_iov f[3] = {{hb, len}, {keys, sizeof keys}, {vals, sizeof vals}};
    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(s_raw(&p, f, 3, &m, &err), CM_EPROTO);
    cr_assert_eq(m.hdr.req_id, 42);
    cr_assert_eq(m.hdr.op, CM_OP_PUSH);
    cr_assert_eq(cm_msg_reply_error(p.router, &m, CM_EPROTO, err.msg), 0, "%s",
                 cm_sock_errmsg(p.router));
    cm_msg_release(&m);
    free(hb);

    cm_msg rep;
    cr_assert_eq(cm_msg_recv(p.dealer, &rep, 2000, &err), 0, "%s", err.msg);
    cr_assert_eq(rep.hdr.op, CM_OP_ERROR);
    cr_assert_eq(rep.hdr.req_id, 42);
    cr_assert_eq(rep.hdr.table, 3);
    cr_assert_eq(rep.hdr.status, CM_EPROTO);
    cr_assert(strstr(rep.hdr.error, "not sorted"), "%s", rep.hdr.error);
    cm_msg_release(&rep);

    /* Garbage header: no req_id decoded, the reply still reaches the sender. */
    uint8_t junk[8];
    memset(junk, 0xff, sizeof junk);
    cr_assert_eq(s_raw(&p, (cm_iov[]){{junk, sizeof junk}}, 1, &m, &err), CM_EPROTO);
    cr_assert_eq(cm_msg_reply_error(p.router, &m, CM_EPROTO, NULL), 0);
    cm_msg_release(&m);
    cr_assert_eq(cm_msg_recv(p.dealer, &rep, 2000, &err), 0, "%s", err.msg);
    cr_assert_eq(rep.hdr.op, CM_OP_ERROR);
    cr_assert_str_eq(rep.hdr.error, cm_strerror(CM_EPROTO));
    cm_msg_release(&rep);

    /* And a well-formed request after all that is served normally. */
    uint64_t good[2] = {1, 2};
    h = cm_hdr_make(CM_OP_PULL);
    h.req_id = 43;
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, good, 2, NULL, 0), 0);
    cr_assert_eq(cm_msg_recv(p.router, &m, 2000, &err), 0, "%s", err.msg);
    cr_assert_eq(m.hdr.req_id, 43);
    cm_msg_release(&m);
    s_pair_free(&p);
}

/* Random bytes into the decoder: never a crash, always 0 or CM_EPROTO. */
Test(msg, fuzzed_frames_never_crash)
{
    pair p = s_pair("inproc://msg-fuzz");
    uint64_t x = 12345;
    uint8_t buf[4][96];
    int rejected = 0;
    for (int it = 0; it < 2000; it++) {
        cm_iov f[4];
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t n = 1 + (x >> 33) % 4;
        for (size_t i = 0; i < n; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            size_t len = (x >> 33) % sizeof buf[i];
            for (size_t j = 0; j < len; j++) {
                x = x * 6364136223846793005ull + 1442695040888963407ull;
                buf[i][j] = (uint8_t)(x >> 56);
            }
            if (i == 0 && len > 2 && (x & 1)) {
                /* Half the time, a real header so the later checks run. */
                cm_hdr h = cm_hdr_make((int)(x >> 40) % 5);
                h.n_keys = (x >> 20) % 12;
                h.dim = (uint32_t)(x >> 50) % 3;
                uint8_t *hb = NULL;
                size_t hl = 0;
                cr_assert_eq(cm_codec_hdr_pack(&h, &hb, &hl), 0);
                memcpy(buf[0], hb, hl);
                len = hl;
                free(hb);
            }
            f[i] = (cm_iov){buf[i], len};
        }
        cm_msg m;
        cm_error err = {0};
        int rc = s_raw(&p, f, n, &m, &err);
        cr_assert(rc == 0 || rc == CM_EPROTO, "rc %s: %s", cm_errname(rc), err.msg);
        rejected += rc == CM_EPROTO;
        cm_msg_release(&m);
    }
    cr_assert_gt(rejected, 1000);
    s_pair_free(&p);
}

/* ------------------------------------------------------------ key gaps -- */

/* Sorted keys travel as varint gaps when that is shorter: dense ids take a
 * byte each; keys far apart stay raw u64. Receivers see the same keys. */
Test(msg, sorted_keys_travel_as_gaps)
{
    pair p = s_pair("inproc://msg-gaps");
    struct {
        uint64_t keys[4];
        size_t kbytes; /* the keys frame on the wire */
    } cases[] = {
        {{0, 1, 2, 3}, 4},                                     /* gaps 0: a byte each */
        {{100, 228, 229, 100000}, 1 + 1 + 1 + 3},              /* 100 | 127 | 0 | 99770 */
        {{1ull << 62, 1ull << 63, 3ull << 62, UINT64_MAX}, 32}, /* 9 bytes a gap: raw */
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        float vals[4] = {1, 2, 3, 4};
        cm_hdr h = cm_hdr_make(CM_OP_PUSH);
        cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, cases[c].keys, 4, vals, 4), 0, "%s",
                     cm_sock_errmsg(p.dealer));
        cm_frames *f = NULL;
        cr_assert_eq(cm_sock_recv(p.router, &f, 2000), 0);
        cr_assert_eq(cm_frames_count(f), 4, "route, header, keys, values");
        cr_expect_eq(cm_frames_size(f, 2), cases[c].kbytes, "case %zu: keys frame of %zu bytes",
                     c, cm_frames_size(f, 2));
        cm_hdr got;
        cm_error err = {0};
        cr_assert_eq(cm_codec_hdr_unpack(cm_frames_data(f, 1), cm_frames_size(f, 1), &got, &err),
                     0, "%s", err.msg);
        cr_expect_eq(got.key_enc, cases[c].kbytes < 32 ? CM_KEYS_GAPS : CM_KEYS_RAW);
        cm_frames_destroy(&f);
        /* and through cm_msg_recv: the keys as sent */
        h = cm_hdr_make(CM_OP_PUSH);
        cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, cases[c].keys, 4, vals, 4), 0);
        cm_msg m;
        cr_assert_eq(cm_msg_recv(p.router, &m, 2000, &err), 0, "%s", err.msg);
        cr_expect_eq(m.hdr.n_keys, 4);
        cr_expect_arr_eq(m.keys, cases[c].keys, sizeof cases[c].keys, "case %zu", c);
        cr_expect_eq((uintptr_t)m.keys % 8, 0);
        cm_msg_release(&m);
    }
    s_pair_free(&p);
}

Test(msg, rejects_bad_key_gaps)
{
    pair p = s_pair("inproc://msg-badgaps");
    cm_hdr h = cm_hdr_make(CM_OP_PULL);
    h.key_enc = CM_KEYS_GAPS;
    h.n_keys = 2;
    const uint8_t open_end[2] = {5, 0x80};
    s_expect_reject(&p, h, open_end, 2, NULL, 0, 2, "ends inside a key");
    const uint8_t extra[3] = {5, 0, 7};
    s_expect_reject(&p, h, extra, 3, NULL, 0, 2, "bytes after the last key");
    /* UINT64_MAX, then any key after it */
    const uint8_t past[11] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0};
    s_expect_reject(&p, h, past, 11, NULL, 0, 2, "beyond 2^64");
    const uint8_t wide[11] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02, 0};
    s_expect_reject(&p, h, wide, 11, NULL, 0, 2, "beyond 64 bits");
    /* the frame's size bounds the count before anything is allocated */
    h.n_keys = 1ull << 60;
    s_expect_reject(&p, h, extra, 3, NULL, 0, 2, "cannot hold");
    h.n_keys = 1;
    s_expect_reject(&p, h, past, 11, NULL, 0, 2, "cannot hold");
    h.key_enc = 7;
    h.n_keys = 2;
    s_expect_reject(&p, h, extra, 2, NULL, 0, 2, "key encoding 7");
    s_pair_free(&p);
}

/* Owned values: f32 (small and large, the large one sent uncopied) and
 * f16 arrive as with cm_msg_send; a refused send frees the buffer too
 * (the sanitizer build would report a leak). */
Test(msg, owned_values_round_trip_and_refusals)
{
    pair p = s_pair("inproc://msg-owned");
    const size_t ns[] = {4, 50000};
    for (int dt = 0; dt < 2; dt++) {
        for (int k = 0; k < 2; k++) {
            size_t n = ns[k];
            const uint32_t dim = 3;
            uint64_t *keys = malloc(n * sizeof *keys);
            float *vals = malloc(n * dim * sizeof *vals);
            float *owned = malloc(n * dim * sizeof *owned);
            cr_assert(keys && vals && owned);
            s_fill(keys, vals, n, dim);
            memcpy(owned, vals, n * dim * sizeof *vals);
            cm_hdr h = cm_hdr_make(CM_OP_PUSH);
            h.dtype = dt ? CM_DTYPE_F16 : CM_DTYPE_F32;
            cr_assert_eq(cm_msg_send_owned(p.dealer, NULL, 0, &h, keys, n, owned, n * dim), 0,
                         "%s", cm_sock_errmsg(p.dealer));
            cm_msg m;
            cm_error err = {0};
            cr_assert_eq(cm_msg_recv(p.router, &m, 5000, &err), 0, "%s", err.msg);
            cr_assert_eq(m.n_vals, n * dim);
            cr_assert_arr_eq(m.keys, keys, n * sizeof *keys);
            for (size_t i = 0; i < n * dim; i++)
                cr_assert_eq(m.vals[i], dt ? cm_half_value(cm_half_of(vals[i])) : vals[i],
                             "n %zu value %zu", n, i);
            cm_msg_release(&m);
            free(keys);
            free(vals);
        }
    }
    /* keys out of order, and a PULL with values: refused, buffers freed */
    uint64_t bad[2] = {9, 3};
    float *owned = malloc(2 * sizeof *owned);
    cm_hdr h = cm_hdr_make(CM_OP_PUSH);
    cr_expect_eq(cm_msg_send_owned(p.dealer, NULL, 0, &h, bad, 2, owned, 2), CM_EINVAL);
    owned = malloc(2 * sizeof *owned);
    h = cm_hdr_make(CM_OP_PULL);
    cr_expect_eq(cm_msg_send_owned(p.dealer, NULL, 0, &h, bad + 1, 1, owned, 2), CM_EINVAL);
    s_pair_free(&p);
}

/* A push that names an earlier pull's keys (key_ref) carries values and no
 * keys: it round-trips with n_keys counting its rows; a sender will not
 * add keys to it, and a receiver refuses one whose keys frame is not
 * empty, or a push with neither keys nor key_ref. */
Test(msg, push_naming_a_pulls_keys)
{
    pair p = s_pair("inproc://msg-keyref");
    float vals[6] = {1, 2, 3, 4, 5, 6};
    cm_hdr h = cm_hdr_make(CM_OP_PUSH);
    h.req_id = 12;
    h.dim = 3;
    h.key_ref = 9;
    cr_assert_eq(cm_msg_send(p.dealer, NULL, 0, &h, NULL, 0, vals, 6), 0, "%s",
                 cm_sock_errmsg(p.dealer));
    cm_msg m;
    cm_error err = {0};
    cr_assert_eq(cm_msg_recv(p.router, &m, 2000, &err), 0, "%s", err.msg);
    cr_assert_eq(m.hdr.op, CM_OP_PUSH);
    cr_assert_eq(m.hdr.key_ref, 9);
    cr_assert_eq(m.hdr.n_keys, 2, "n_keys counts the rows");
    cr_assert_null(m.keys);
    cr_assert_arr_eq(m.vals, vals, sizeof vals);
    cm_msg_release(&m);

    uint64_t keys[2] = {4, 8};
    h = cm_hdr_make(CM_OP_PUSH);
    h.dim = 3;
    h.key_ref = 9;
    cr_expect_eq(cm_msg_send(p.dealer, NULL, 0, &h, keys, 2, vals, 6), CM_EINVAL);
    cr_expect(strstr(cm_sock_errmsg(p.dealer), "carries none of its own"), "%s",
              cm_sock_errmsg(p.dealer));
    h.key_ref = 0;
    cr_expect_eq(cm_msg_send(p.dealer, NULL, 0, &h, NULL, 0, vals, 6), CM_EINVAL,
                 "a push without keys or key_ref");

    cm_hdr bad = cm_hdr_make(CM_OP_PUSH);
    bad.req_id = 13;
    bad.dim = 3;
    bad.n_keys = 2;
    bad.key_ref = 9;
    s_expect_reject(&p, bad, keys, sizeof keys, vals, sizeof vals, 3,
                    "names pull 9's keys but carries a keys frame of 16 bytes");
    bad.key_ref = 0;
    s_expect_reject(&p, bad, NULL, 0, vals, sizeof vals, 3, "keys frame of 0 bytes");
    s_pair_free(&p);
}

/* ------------------------------------------------- identity and quoting -- */

Test(msg, slots_op_is_known)
{
    cr_assert_str_eq(cm_op_name(CM_OP_SLOTS), "SLOTS");
}

Test(msg, rank_is_the_connection_when_it_has_one)
{
    cm_msg m;
    memset(&m, 0, sizeof m);
    m.hdr.op = CM_OP_PULL;
    m.hdr.sender = 3;
    m.peer = CM_PEER_ANY;
    int rank = -7;
    cm_error err = {0};
    cr_assert_eq(cm_msg_rank(&m, &rank, &err), 0);
    cr_assert_eq(rank, 3, "no authenticated peer: the field speaks");
    m.peer = 3;
    cr_assert_eq(cm_msg_rank(&m, &rank, &err), 0);
    cr_assert_eq(rank, 3);
    m.peer = 4;
    cr_assert_eq(cm_msg_rank(&m, &rank, &err), CM_EPERM);
    cr_assert_eq(rank, 4, "the connection's rank, whatever the field says");
    cr_assert(strstr(err.msg, "PULL says it is from rank 3 on the connection of rank 4"), "%s",
              err.msg);
    cr_assert_eq(cm_msg_rank(NULL, &rank, &err), CM_EINVAL);
}

Test(msg, quote_escapes_and_cuts)
{
    char out[64];
    cm_msg_quote("plain", 100, out, sizeof out);
    cr_assert_str_eq(out, "\"plain\"");
    cm_msg_quote("a\"b\\c\n\x1b[2J", 100, out, sizeof out);
    cr_assert_str_eq(out, "\"a\\\"b\\\\c\\x0a\\x1b[2J\"");
    cm_msg_quote("abcdefghij", 4, out, sizeof out);
    cr_assert_str_eq(out, "\"abcd\"...");
    cm_msg_quote(NULL, 4, out, sizeof out);
    cr_assert_str_eq(out, "\"\"");
    /* a small buffer cuts too and still ends */
    char small[12];
    cm_msg_quote("0123456789abcdef", 100, small, sizeof small);
    cr_assert_eq(small[0], '"');
    cr_assert(strlen(small) < sizeof small);
    cr_assert(strstr(small, "\"...") != NULL, "%s", small);
    /* nothing from the text survives unescaped outside printable ASCII */
    char raw[300], big[1200];
    for (int i = 0; i < 255; i++)
        raw[i] = (char)(i + 1);
    raw[255] = '\0';
    cm_msg_quote(raw, 1000, big, sizeof big);
    for (const char *p = big; *p; p++)
        cr_assert(*p >= 0x20 && *p <= 0x7e, "byte %d left raw", (unsigned char)*p);
}
