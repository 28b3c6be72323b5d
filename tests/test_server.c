/* Tests for ps/server.c: a server runs in a thread on an inproc endpoint
 * of a van shared with the test thread, which talks to it through a
 * DEALER, the way a worker does. Covers pull/push/pull through the
 * optimizer, no-create pulls, every kind of rejected request (each gets
 * OP_ERROR and the server keeps serving), pipelining, STOP and its stats,
 * and a transport shutdown ending the loop. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <sys/stat.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/codec.h"
#include "common/config.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/slots.h"
#include "common/van.h"
#include "ps/server.h"

#define WAIT_MS 5000

typedef struct {
    cm_van *van;
    ps_server *srv;
    pthread_t th;
    int rc;              /* ps_server_run's result, after the join */
    int running;
    cm_sock *cli;        /* DEALER connected to the server */
    uint64_t next_id;
    cm_table_spec params[4];
    size_t n_tables;
} s_fix;

static void *s_thread(void *arg)
{
    s_fix *f = arg;
    cm_log_set_identity("ps", 0);
    f->rc = ps_server_run(f->srv);
    return NULL;
}

static cm_table_spec s_params(int dim, int kind, float lr)
{
    cm_table_spec p = {
        .dim = dim,
        .zero_prefix = 0,
        .init_std = 0.1f,
        .seed = 99,
        .optim = {.kind = kind, .lr = lr, .eps = 1e-8f, .init_accum = 0.1f},
    };
    return p;
}

/* A server with tables p[0..n) and a DEALER connected to it. */
static void s_start_tables(s_fix *f, const char *endpoint, const cm_table_spec *p, size_t n)
{
    memset(f, 0, sizeof *f);
    cm_log_set_level(CM_LOG_ERROR);   /* rejected requests warn; keep output short */
    memcpy(f->params, p, n * sizeof *p);
    f->n_tables = n;
    cm_error e = {0};
    f->van = cm_van_new(&e);
    cr_assert_not_null(f->van, "van: %s", e.msg);
    f->srv = ps_server_new(f->van, endpoint, f->params, f->n_tables, &e);
    cr_assert_not_null(f->srv, "server: %s", e.msg);
    cr_assert_eq(pthread_create(&f->th, NULL, s_thread, f), 0);
    f->running = 1;
    f->cli = cm_sock_new(f->van, CM_SOCK_DEALER, &e);
    cr_assert_not_null(f->cli, "dealer: %s", e.msg);
    cr_assert_eq(cm_sock_connect(f->cli, ps_server_endpoint(f->srv)), 0, "%s",
                 cm_sock_errmsg(f->cli));
}

/* Two tables: 0 is dim 4 SGD (lr 0.5), 1 is dim 2 AdaGrad (lr 0.1),
 * its rows shared when `shared`. */
static void s_start_with(s_fix *f, const char *endpoint, int shared)
{
    cm_table_spec p[2] = {s_params(4, CM_OPT_SGD, 0.5f), s_params(2, CM_OPT_ADAGRAD, 0.1f)};
    p[1].shared = shared;
    s_start_tables(f, endpoint, p, 2);
}

static void s_start(s_fix *f, const char *endpoint)
{
    s_start_with(f, endpoint, 0);
}

static void s_join(s_fix *f)
{
    cr_assert_eq(pthread_join(f->th, NULL), 0);
    f->running = 0;
}

static void s_finish(s_fix *f)
{
    cm_sock_destroy(&f->cli);
    ps_server_destroy(&f->srv);
    cm_van_destroy(&f->van);
}

/* Sends a request with a fresh req_id (returned). */
static uint64_t s_send(s_fix *f, cm_hdr *h, const uint64_t *keys, size_t n,
                       const float *vals, size_t nv)
{
    h->req_id = ++f->next_id;
    int rc = cm_msg_send(f->cli, NULL, 0, h, keys, n, vals, nv);
    cr_assert_eq(rc, 0, "send: %s", cm_sock_errmsg(f->cli));
    return h->req_id;
}

/* Receives one reply (must come within WAIT_MS). */
static void s_recv(s_fix *f, cm_msg *m)
{
    cm_error e = {0};
    int rc = cm_msg_recv(f->cli, m, WAIT_MS, &e);
    cr_assert_eq(rc, 0, "recv: %d %s", rc, e.msg);
}

/* One request, one reply, req_id checked. */
static void s_call(s_fix *f, cm_hdr *h, const uint64_t *keys, size_t n, const float *vals,
                   size_t nv, cm_msg *reply)
{
    uint64_t id = s_send(f, h, keys, n, vals, nv);
    s_recv(f, reply);
    cr_assert_eq(reply->hdr.req_id, id, "reply to %llu, expected %llu",
                 (unsigned long long)reply->hdr.req_id, (unsigned long long)id);
}

static cm_hdr s_hdr(int op, uint32_t table, uint32_t dim, uint32_t flags)
{
    cm_hdr h = cm_hdr_make(op);
    h.table = table;
    h.dim = dim;
    h.flags = flags;
    return h;
}

/* Pulls keys from table; asserts a REPLY and copies the values to out. */
static void s_pull(s_fix *f, uint32_t table, const uint64_t *keys, size_t n, uint32_t flags,
                   float *out, double *missing)
{
    int dim = f->params[table].dim;
    cm_hdr h = s_hdr(CM_OP_PULL, table, (uint32_t)dim, flags);
    cm_msg r;
    s_call(f, &h, keys, n, NULL, 0, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY, "pull answered %s: %s", cm_op_name(r.hdr.op),
                 r.hdr.error);
    cr_assert_eq(r.hdr.table, table);
    cr_assert_eq(r.hdr.dim, (uint32_t)dim);
    cr_assert_eq(r.hdr.n_keys, n);
    cr_assert_eq(r.n_vals, n * (size_t)dim);
    cr_assert_not_null(r.vals);
    memcpy(out, r.vals, n * dim * sizeof *out);
    if (missing) {
        cr_assert_eq(r.hdr.body, CM_BODY_PULLED);
        *missing = (double)r.hdr.pulled.missing;
    }
    cm_msg_release(&r);
}

static void s_push(s_fix *f, uint32_t table, const uint64_t *keys, size_t n, const float *g)
{
    int dim = f->params[table].dim;
    cm_hdr h = s_hdr(CM_OP_PUSH, table, (uint32_t)dim, 0);
    cm_msg r;
    s_call(f, &h, keys, n, g, n * dim, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY, "push answered %s: %s", cm_op_name(r.hdr.op),
                 r.hdr.error);
    cr_assert_eq(r.n_vals, 0);
    cm_msg_release(&r);
}

/* Sends STOP, checks the stats reply, joins the thread. */
static void s_stop(s_fix *f)
{
    cm_hdr h = s_hdr(CM_OP_STOP, 0, 0, 0);
    cm_msg r;
    s_call(f, &h, NULL, 0, NULL, 0, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY);
    cr_assert_eq(r.hdr.body, CM_BODY_TABLES);
    cr_assert_eq(r.hdr.tables.n, f->n_tables);
    s_join(f);
    cr_assert_eq(f->rc, 0);
    for (size_t i = 0; i < f->n_tables; i++) {
        ps_table *t = ps_server_table(f->srv, i);
        cr_assert_eq(r.hdr.tables.table[i].rows, ps_table_rows(t));
        cr_assert_eq(r.hdr.tables.table[i].bytes, ps_table_bytes(t));
    }
    cm_msg_release(&r);
}

/* Expects an OP_ERROR with this status and text containing `needle`. */
static void s_expect_error(cm_msg *r, int status, const char *needle)
{
    cr_assert_eq(r->hdr.op, CM_OP_ERROR, "got %s", cm_op_name(r->hdr.op));
    cr_assert_eq(r->hdr.status, status, "status %d (%s), expected %d", r->hdr.status,
                 r->hdr.error, status);
    cr_assert(strstr(r->hdr.error, needle), "error '%s' lacks '%s'", r->hdr.error, needle);
}

/* One request that the server must refuse with status and a text
 * containing needle. */
static void s_refused(s_fix *f, cm_hdr h, const uint64_t *keys, size_t n, const float *vals,
                      size_t nv, int status, const char *needle)
{
    cm_msg r;
    s_call(f, &h, keys, n, vals, nv, &r);
    s_expect_error(&r, status, needle);
    cm_msg_release(&r);
}

/* A valid pull works: the server is still serving. */
static void s_still_serving(s_fix *f)
{
    const uint64_t k = 424242;
    float out[4];
    s_pull(f, 0, &k, 1, 0, out, NULL);
}

/* Sends raw frames (no validation on our side). */
static void s_send_raw(s_fix *f, const cm_iov *iov, size_t n)
{
    cr_assert_eq(cm_sock_send(f->cli, iov, n), 0, "%s", cm_sock_errmsg(f->cli));
}

/* A packed header (caller frees). */
static uint8_t *s_pack(cm_hdr *h, size_t *len)
{
    uint8_t *buf = NULL;
    cr_assert_eq(cm_codec_hdr_pack(h, &buf, len), 0);
    return buf;
}

/* ------------------------------------------------------------------------ */

Test(server, new_rejects_bad_arguments)
{
    cm_error e = {0};
    cm_van *van = cm_van_new(&e);
    cr_assert_not_null(van);
    cm_table_spec p[17];
    for (int i = 0; i < 17; i++)
        p[i] = s_params(4, CM_OPT_SGD, 0.1f);

    cr_assert_null(ps_server_new(NULL, "inproc://x", p, 1, &e));
    cr_assert_eq(e.code, CM_EINVAL);
    cr_assert_null(ps_server_new(van, NULL, p, 1, &e));
    cr_assert_null(ps_server_new(van, "inproc://x", p, 17, &e));   /* stats would not fit */
    cr_assert_eq(e.code, CM_EINVAL);

    p[1].dim = 0;
    cr_assert_null(ps_server_new(van, "inproc://x", p, 2, &e));
    cr_assert_eq(e.code, CM_EINVAL);
    cr_assert(strstr(e.msg, "table 1"), "%s", e.msg);
    p[1].dim = 4;

    cr_assert_null(ps_server_new(van, "nonsense://nowhere", p, 1, &e));
    cr_assert_lt(e.code, 0);
    cr_assert(strstr(e.msg, "nonsense://nowhere"), "%s", e.msg);

    /* Two servers cannot bind the same endpoint. */
    ps_server *a = ps_server_new(van, "inproc://dup", p, 1, &e);
    cr_assert_not_null(a, "%s", e.msg);
    cr_assert_null(ps_server_new(van, "inproc://dup", p, 1, &e));
    ps_server_destroy(&a);
    cr_assert_null(a);
    ps_server_destroy(&a);

    /* Zero tables is a server that only answers STOP (and errors). */
    ps_server *z = ps_server_new(van, "inproc://empty", NULL, 0, &e);
    cr_assert_not_null(z, "%s", e.msg);
    cr_assert_null(ps_server_table(z, 0));
    ps_server_destroy(&z);
    cm_van_destroy(&van);
}

Test(server, tcp_endpoint_resolves)
{
    cm_error e = {0};
    cm_van *van = cm_van_new(&e);
    cr_assert_not_null(van);
    cm_table_spec p = s_params(4, CM_OPT_SGD, 0.1f);
    ps_server *s = ps_server_new(van, "tcp://127.0.0.1:*", &p, 1, &e);
    cr_assert_not_null(s, "%s", e.msg);
    const char *ep = ps_server_endpoint(s);
    cr_assert(strncmp(ep, "tcp://127.0.0.1:", 16) == 0, "%s", ep);
    cr_assert_null(strchr(ep, '*'), "%s", ep);
    cr_assert_gt(atoi(ep + 16), 0, "%s", ep);
    cr_assert_not_null(ps_server_table(s, 0));
    cr_assert_null(ps_server_table(s, 1));
    ps_server_destroy(&s);
    cm_van_destroy(&van);
}

Test(server, pull_push_pull, .timeout = 30)
{
    s_fix f;
    s_start(&f, "inproc://ps-pull-push");

    /* Table 0 (SGD, lr 0.5): fresh rows are the deterministic init. */
    const uint64_t keys[3] = {1, 5, 1u << 31};
    float out[12], init[12];
    s_pull(&f, 0, keys, 3, 0, out, NULL);
    for (int i = 0; i < 3; i++)
        cm_table_spec_init_row(&f.params[0], keys[i], init + 4 * i);
    cr_assert_eq(memcmp(out, init, sizeof out), 0);

    float g[12];
    for (int i = 0; i < 12; i++)
        g[i] = 0.1f * (float)(i + 1);
    s_push(&f, 0, keys, 3, g);
    s_pull(&f, 0, keys, 3, 0, out, NULL);
    for (int i = 0; i < 12; i++)
        cr_assert_float_eq(out[i], init[i] - 0.5f * g[i], 1e-6f, "value %d", i);

    /* Table 1 (AdaGrad, lr 0.1, accum 0.1): one step of g = (0.3, -0.4)
     * moves the weights by -0.03/sqrt(0.19) and +0.04/sqrt(0.26). */
    const uint64_t k1 = 7;
    float w[2], w0[2];
    s_pull(&f, 1, &k1, 1, 0, w0, NULL);
    const float g1[2] = {0.3f, -0.4f};
    s_push(&f, 1, &k1, 1, g1);
    s_pull(&f, 1, &k1, 1, 0, w, NULL);
    cr_assert_float_eq(w[0], w0[0] - 0.068824718f, 1e-6f);
    cr_assert_float_eq(w[1], w0[1] + 0.078446453f, 1e-6f);

    /* A push to rows never pulled creates them first. */
    const uint64_t fresh[2] = {100, 200};
    const float gf[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    s_push(&f, 1, fresh, 2, gf);

    s_stop(&f);
    cr_assert_eq(ps_table_rows(ps_server_table(f.srv, 0)), 3);
    cr_assert_eq(ps_table_rows(ps_server_table(f.srv, 1)), 3);
    s_finish(&f);
}

Test(server, pull_dim_zero_means_table_dim, .timeout = 30)
{
    s_fix f;
    s_start(&f, "inproc://ps-dim0");
    const uint64_t k = 3;
    cm_hdr h = s_hdr(CM_OP_PULL, 1, 0, 0);
    cm_msg r;
    s_call(&f, &h, &k, 1, NULL, 0, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY, "%s", r.hdr.error);
    cr_assert_eq(r.hdr.dim, 2);
    cr_assert_eq(r.n_vals, 2);
    cm_msg_release(&r);
    s_stop(&f);
    s_finish(&f);
}

Test(server, no_create_pull, .timeout = 30)
{
    s_fix f;
    s_start(&f, "inproc://ps-nocreate");
    const uint64_t one = 2;
    float w[4];
    s_pull(&f, 0, &one, 1, 0, w, NULL);   /* makes key 2 */

    const uint64_t keys[3] = {1, 2, 3};
    float out[12];
    double missing = -1;
    s_pull(&f, 0, keys, 3, CM_PULL_NO_CREATE, out, &missing);
    cr_assert_eq(missing, 2.0);
    for (int j = 0; j < 4; j++) {
        cr_assert_eq(out[j], 0.0f);
        cr_assert_eq(out[4 + j], w[j]);
        cr_assert_eq(out[8 + j], 0.0f);
    }
    s_stop(&f);
    cr_assert_eq(ps_table_rows(ps_server_table(f.srv, 0)), 1);   /* nothing made */
    s_finish(&f);
}

Test(server, unknown_table_and_wrong_dim, .timeout = 30)
{
    s_fix f;
    s_start(&f, "inproc://ps-badtable");
    const uint64_t keys[2] = {1, 2};
    const float g[8] = {0};
    cm_msg r;

    cm_hdr h = s_hdr(CM_OP_PULL, 7, 4, 0);
    s_call(&f, &h, keys, 2, NULL, 0, &r);
    s_expect_error(&r, CM_ENOTFOUND, "unknown table 7");
    cr_assert_eq(r.hdr.table, 7);
    cm_msg_release(&r);
    s_still_serving(&f);

    h = s_hdr(CM_OP_PUSH, 2, 4, 0);
    s_call(&f, &h, keys, 2, g, 8, &r);
    s_expect_error(&r, CM_ENOTFOUND, "unknown table 2");
    cm_msg_release(&r);
    s_still_serving(&f);

    h = s_hdr(CM_OP_PULL, 0, 3, 0);
    s_call(&f, &h, keys, 2, NULL, 0, &r);
    s_expect_error(&r, CM_EINVAL, "dim 4");
    cm_msg_release(&r);
    s_still_serving(&f);

    /* A push of dim 2 rows into the dim 4 table (same float count). */
    h = s_hdr(CM_OP_PUSH, 0, 2, 0);
    const uint64_t four[4] = {1, 2, 3, 4};
    s_call(&f, &h, four, 4, g, 8, &r);
    s_expect_error(&r, CM_EINVAL, "dim 4");
    cm_msg_release(&r);
    s_still_serving(&f);

    /* A push that says both deltas and whole rows. */
    h = s_hdr(CM_OP_PUSH, 0, 4, CM_PUSH_DELTA | CM_PUSH_SET);
    s_call(&f, &h, keys, 2, g, 8, &r);
    s_expect_error(&r, CM_EPROTO, "either deltas or whole rows");
    cm_msg_release(&r);
    s_still_serving(&f);

    /* Ops a server does not serve. */
    h = s_hdr(CM_OP_HELLO, 0, 0, 0);
    s_call(&f, &h, NULL, 0, NULL, 0, &r);
    s_expect_error(&r, CM_EPROTO, "unexpected op HELLO");
    cm_msg_release(&r);
    h = s_hdr(CM_OP_REPLY, 0, 0, 0);
    s_call(&f, &h, NULL, 0, NULL, 0, &r);
    s_expect_error(&r, CM_EPROTO, "unexpected op REPLY");
    cm_msg_release(&r);
    s_still_serving(&f);

    s_stop(&f);
    /* Rejected pushes changed nothing: only the still-serving key exists. */
    cr_assert_eq(ps_table_rows(ps_server_table(f.srv, 0)), 1);
    s_finish(&f);
}

Test(server, malformed_messages, .timeout = 30)
{
    s_fix f;
    s_start(&f, "inproc://ps-garbage");
    cm_msg r;

    /* Unsorted keys (our own send refuses them, so build the frames). */
    {
        cm_hdr h = s_hdr(CM_OP_PULL, 0, 4, 0);
        h.req_id = 9001;
        h.n_keys = 3;
        size_t len;
        uint8_t *hb = s_pack(&h, &len);
        const uint64_t keys[3] = {5, 3, 8};
        cm_iov iov[2] = {{hb, len}, {keys, sizeof keys}};
        s_send_raw(&f, iov, 2);
        free(hb);
        s_recv(&f, &r);
        s_expect_error(&r, CM_EPROTO, "not sorted");
        cr_assert_eq(r.hdr.req_id, 9001);
        cm_msg_release(&r);
        s_still_serving(&f);
    }
    /* Duplicate keys. */
    {
        cm_hdr h = s_hdr(CM_OP_PULL, 0, 4, 0);
        h.req_id = 9002;
        h.n_keys = 2;
        size_t len;
        uint8_t *hb = s_pack(&h, &len);
        const uint64_t keys[2] = {5, 5};
        cm_iov iov[2] = {{hb, len}, {keys, sizeof keys}};
        s_send_raw(&f, iov, 2);
        free(hb);
        s_recv(&f, &r);
        s_expect_error(&r, CM_EPROTO, "duplicate");
        cm_msg_release(&r);
        s_still_serving(&f);
    }
    /* A push whose values frame is one float short. */
    {
        cm_hdr h = s_hdr(CM_OP_PUSH, 0, 4, 0);
        h.req_id = 9003;
        h.n_keys = 2;
        size_t len;
        uint8_t *hb = s_pack(&h, &len);
        const uint64_t keys[2] = {1, 2};
        const float vals[7] = {0};
        cm_iov iov[3] = {{hb, len}, {keys, sizeof keys}, {vals, sizeof vals}};
        s_send_raw(&f, iov, 3);
        free(hb);
        s_recv(&f, &r);
        cr_assert_eq(r.hdr.op, CM_OP_ERROR);
        cr_assert_eq(r.hdr.status, CM_EPROTO);
        cr_assert_eq(r.hdr.req_id, 9003);
        cm_msg_release(&r);
        s_still_serving(&f);
    }
    /* A keys frame that is not a whole number of keys. */
    {
        cm_hdr h = s_hdr(CM_OP_PULL, 0, 4, 0);
        h.req_id = 9004;
        h.n_keys = 2;
        size_t len;
        uint8_t *hb = s_pack(&h, &len);
        const uint8_t keys[13] = {1};
        cm_iov iov[2] = {{hb, len}, {keys, sizeof keys}};
        s_send_raw(&f, iov, 2);
        free(hb);
        s_recv(&f, &r);
        cr_assert_eq(r.hdr.op, CM_OP_ERROR);
        cr_assert_eq(r.hdr.status, CM_EPROTO);
        cm_msg_release(&r);
        s_still_serving(&f);
    }
    /* Garbage instead of a header. */
    {
        uint8_t junk[64];
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (uint8_t)(0xff - 7 * i);
        cm_iov iov[1] = {{junk, sizeof junk}};
        s_send_raw(&f, iov, 1);
        s_recv(&f, &r);
        cr_assert_eq(r.hdr.op, CM_OP_ERROR);
        cr_assert_eq(r.hdr.status, CM_EPROTO);
        cm_msg_release(&r);
        s_still_serving(&f);
    }
    /* Too many frames. */
    {
        cm_hdr h = s_hdr(CM_OP_PULL, 0, 4, 0);
        h.n_keys = 1;
        size_t len;
        uint8_t *hb = s_pack(&h, &len);
        const uint64_t key = 1;
        cm_iov iov[5] = {{hb, len}, {&key, 8}, {&key, 8}, {&key, 8}, {&key, 8}};
        s_send_raw(&f, iov, 5);
        free(hb);
        s_recv(&f, &r);
        cr_assert_eq(r.hdr.op, CM_OP_ERROR);
        cm_msg_release(&r);
        s_still_serving(&f);
    }
    /* An empty message (no header frame at all). */
    {
        cm_iov iov[1] = {{"", 0}};
        s_send_raw(&f, iov, 1);
        s_recv(&f, &r);
        cr_assert_eq(r.hdr.op, CM_OP_ERROR);
        cm_msg_release(&r);
        s_still_serving(&f);
    }
    s_stop(&f);
    s_finish(&f);
}

Test(server, pipelined_requests_in_order, .timeout = 30)
{
    /* Several requests in flight; replies come back in arrival order, and
     * the pulls see exactly the pushes sent before them. */
    s_fix f;
    s_start(&f, "inproc://ps-pipeline");
    const uint64_t k = 11;
    float w0[4];
    s_pull(&f, 0, &k, 1, 0, w0, NULL);

    const float g[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    uint64_t ids[10];
    for (int i = 0; i < 10; i++) {
        cm_hdr h = s_hdr(i % 2 ? CM_OP_PULL : CM_OP_PUSH, 0, 4, 0);
        ids[i] = s_send(&f, &h, &k, 1, i % 2 ? NULL : g, i % 2 ? 0 : 4);
    }
    for (int i = 0; i < 10; i++) {
        cm_msg r;
        s_recv(&f, &r);
        cr_assert_eq(r.hdr.req_id, ids[i]);
        cr_assert_eq(r.hdr.op, CM_OP_REPLY);
        if (i % 2) {
            float pushes = (float)(i / 2 + 1);
            for (int j = 0; j < 4; j++)
                cr_assert_float_eq(r.vals[j], w0[j] - 0.5f * pushes * g[j], 1e-5f);
        }
        cm_msg_release(&r);
    }
    s_stop(&f);
    s_finish(&f);
}

Test(server, large_pull_grows_buffer, .timeout = 60)
{
    s_fix f;
    s_start(&f, "inproc://ps-large");
    const size_t n = 50000;
    uint64_t *keys = malloc(n * sizeof *keys);
    float *out = malloc(n * 4 * sizeof *out), want[4];
    cr_assert(keys && out);
    for (size_t i = 0; i < n; i++)
        keys[i] = 3 * i + 1;
    s_pull(&f, 0, keys, 10, 0, out, NULL);
    s_pull(&f, 0, keys, n, 0, out, NULL);
    s_pull(&f, 0, keys, 100, 0, out, NULL);
    for (size_t i = 0; i < 100; i++) {
        cm_table_spec_init_row(&f.params[0], keys[i], want);
        cr_assert_eq(memcmp(out + 4 * i, want, sizeof want), 0);
    }
    s_stop(&f);
    cr_assert_eq(ps_table_rows(ps_server_table(f.srv, 0)), n);
    s_finish(&f);
    free(out);
    free(keys);
}

Test(server, gone_peer_does_not_stop_server, .timeout = 30)
{
    /* A worker that sends a request and disconnects before the reply: the
     * reply cannot be routed, the server logs it and keeps serving. */
    s_fix f;
    s_start(&f, "inproc://ps-gone");
    cm_error e = {0};
    for (int i = 0; i < 5; i++) {
        cm_sock *d = cm_sock_new(f.van, CM_SOCK_DEALER, &e);
        cr_assert_not_null(d);
        cr_assert_eq(cm_sock_connect(d, ps_server_endpoint(f.srv)), 0);
        const uint64_t k = 77;
        cm_hdr h = s_hdr(CM_OP_PULL, 0, 4, 0);
        cr_assert_eq(cm_msg_send(d, NULL, 0, &h, &k, 1, NULL, 0), 0);
        cm_sock_destroy(&d);
    }
    s_still_serving(&f);
    s_stop(&f);
    s_finish(&f);
}

Test(server, transport_shutdown_ends_run, .timeout = 30)
{
    s_fix f;
    s_start(&f, "inproc://ps-shutdown");
    s_still_serving(&f);
    cm_van_shutdown(f.van);
    s_join(&f);
    cr_assert_eq(f.rc, CM_ECLOSED);
    s_finish(&f);
}

/* PLACE: a shared table answers with each key's row index (rows made when
 * missing) and what a process needs to map its file; asked again, the same
 * places and no new rows; with NO_CREATE, UINT64_MAX for a key without a
 * row and nothing made. A private table and a PLACE mixed with other pull
 * flags are refused, and the server goes on serving. */
Test(server, place_rows_of_a_shared_table, .timeout = 30)
{
    s_fix f;
    s_start_with(&f, "inproc://ps-place", 1);
    const uint64_t keys[3] = {5, 80, 9000};
    uint64_t first[3];
    cm_msg r;
    for (int round = 0; round < 2; round++) {
        cm_hdr h = s_hdr(CM_OP_PULL, 1, 4, CM_PULL_PLACE);
        s_call(&f, &h, keys, 3, NULL, 0, &r);
        cr_assert_eq(r.hdr.op, CM_OP_REPLY, "place answered %s: %s", cm_op_name(r.hdr.op),
                     r.hdr.error);
        cr_assert_eq(r.hdr.n_keys, 3);
        cr_assert_eq(r.n_vals, 0);
        cr_assert_eq(r.hdr.body, CM_BODY_PLACE);
        ps_table_share_info sh;
        cr_assert_eq(ps_table_share(ps_server_table(f.srv, 1), &sh), 0);
        cr_expect_eq(r.hdr.place.pid, (int64_t)getpid(), "the server's pid");
        cr_expect_eq(r.hdr.place.fd, sh.fd);
        cr_expect_eq(r.hdr.place.token, sh.token, "the whole 64-bit token");
        cr_expect_eq(r.hdr.place.header, sh.header);
        cr_expect_eq(r.hdr.place.stride, sh.stride);
        cr_expect_eq(r.hdr.place.bytes, sh.bytes);
        for (int i = 0; i < 3; i++) {
            cr_expect_lt(r.keys[i], 3, "row index of key %d", i);
            if (round == 0)
                first[i] = r.keys[i];
            else
                cr_expect_eq(r.keys[i], first[i], "key %d keeps its place", i);
        }
        cm_msg_release(&r);
        cr_expect_eq(ps_table_rows(ps_server_table(f.srv, 1)), 3);
    }
    const uint64_t some[3] = {5, 80, 81};
    cm_hdr hn = s_hdr(CM_OP_PULL, 1, 4, CM_PULL_PLACE | CM_PULL_NO_CREATE);
    s_call(&f, &hn, some, 3, NULL, 0, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY, "place answered %s: %s", cm_op_name(r.hdr.op),
                 r.hdr.error);
    cr_assert_eq(r.hdr.n_keys, 3);
    cr_expect_eq(r.keys[0], first[0], "key 5 where it was");
    cr_expect_eq(r.keys[1], first[1], "key 80 where it was");
    cr_expect_eq(r.keys[2], UINT64_MAX, "key 81 has no row");
    cm_msg_release(&r);
    cr_expect_eq(ps_table_rows(ps_server_table(f.srv, 1)), 3, "NO_CREATE made no row");
    s_refused(&f, s_hdr(CM_OP_PULL, 1, 4, CM_PULL_PLACE | CM_PULL_FULL), keys, 3, NULL, 0,
              CM_EINVAL, "no other pull flag than NO_CREATE");
    s_refused(&f, s_hdr(CM_OP_PULL, 0, 4, CM_PULL_PLACE), keys, 3, NULL, 0, CM_ENOTSUP,
              "table 0 does not share its rows");
    s_still_serving(&f);
    s_stop(&f);
    s_finish(&f);
}

/* A pull with CM_PULL_KEEP (reply flagged kept), then a push naming it
 * (no keys) updates exactly those rows; the server keeps each peer's last
 * CM_KEEP_PULLS kept pulls, so an older name, a wrong row count, another
 * peer's name, deltas by name and KEEP mixed with other flags are refused,
 * and the server goes on serving. */
Test(server, push_naming_a_kept_pull, .timeout = 30)
{
    s_fix f;
    s_start(&f, "inproc://ps-keep");
    const uint64_t keys[3] = {10, 20, 30};
    float before[12], after[12];
    cm_msg r;
    cm_hdr h = s_hdr(CM_OP_PULL, 0, 4, CM_PULL_KEEP);
    s_call(&f, &h, keys, 3, NULL, 0, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY, "%s", r.hdr.error);
    cr_expect_eq(r.hdr.flags, CM_PULL_KEEP, "the reply says kept");
    memcpy(before, r.vals, sizeof before);
    uint64_t kept = r.hdr.req_id;
    cm_msg_release(&r);

    float g[12];
    for (int i = 0; i < 12; i++)
        g[i] = 0.1f * (float)(i + 1);
    h = s_hdr(CM_OP_PUSH, 0, 4, 0);
    h.key_ref = kept;
    s_call(&f, &h, NULL, 0, g, 12, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY, "push by name answered %s: %s", cm_op_name(r.hdr.op),
                 r.hdr.error);
    cm_msg_release(&r);
    s_pull(&f, 0, keys, 3, 0, after, NULL);
    for (int i = 0; i < 12; i++)
        cr_expect_float_eq(after[i], before[i] - 0.5f * g[i], 1e-6, "value %d", i);

    /* wrong row count; deltas by name */
    h = s_hdr(CM_OP_PUSH, 0, 4, 0);
    h.key_ref = kept;
    s_refused(&f, h, NULL, 0, g, 8, CM_ENOTFOUND, "no kept pull");
    h = s_hdr(CM_OP_PUSH, 0, 4, CM_PUSH_DELTA);
    h.key_ref = kept;
    s_refused(&f, h, NULL, 0, g, 12, CM_EPROTO, "carries gradients, not deltas or rows");

    /* another peer may not name this one's pull */
    cm_error e = {0};
    cm_sock *other = cm_sock_new(f.van, CM_SOCK_DEALER, &e);
    cr_assert_not_null(other, "%s", e.msg);
    cr_assert_eq(cm_sock_connect(other, ps_server_endpoint(f.srv)), 0);
    h = s_hdr(CM_OP_PUSH, 0, 4, 0);
    h.key_ref = kept;
    h.req_id = 999;
    cr_assert_eq(cm_msg_send(other, NULL, 0, &h, NULL, 0, g, 12), 0);
    cr_assert_eq(cm_msg_recv(other, &r, WAIT_MS, &e), 0, "%s", e.msg);
    s_expect_error(&r, CM_ENOTFOUND, "from this worker");
    cm_msg_release(&r);
    cm_sock_destroy(&other);

    /* CM_KEEP_PULLS later kept pulls push the first out of the ring */
    for (int k = 0; k < CM_KEEP_PULLS; k++) {
        h = s_hdr(CM_OP_PULL, 0, 4, CM_PULL_KEEP);
        s_call(&f, &h, keys, 3, NULL, 0, &r);
        cr_assert_eq(r.hdr.op, CM_OP_REPLY);
        cm_msg_release(&r);
    }
    h = s_hdr(CM_OP_PUSH, 0, 4, 0);
    h.key_ref = kept;
    s_refused(&f, h, NULL, 0, g, 12, CM_ENOTFOUND, "keeps its last 4");
    s_refused(&f, s_hdr(CM_OP_PULL, 0, 4, CM_PULL_KEEP | CM_PULL_NO_CREATE), keys, 3, NULL, 0,
              CM_EINVAL, "KEEP takes no other pull flags");
    s_still_serving(&f);
    s_stop(&f);
    s_finish(&f);
}

/* A table with admission does not keep rows (a row may not exist yet):
 * the pull is answered without the kept flag, and a push naming it is
 * refused. */
Test(server, tables_with_admission_keep_nothing, .timeout = 30)
{
    s_fix f;
    cm_table_spec p = s_params(4, CM_OPT_SGD, 0.5f);
    p.min_count = 3;
    s_start_tables(&f, "inproc://ps-keep-admit", &p, 1);
    const uint64_t keys[2] = {1, 2};
    cm_msg r;
    cm_hdr h = s_hdr(CM_OP_PULL, 0, 4, CM_PULL_KEEP);
    s_call(&f, &h, keys, 2, NULL, 0, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY, "%s", r.hdr.error);
    cr_expect_eq(r.hdr.flags, 0, "not kept");
    uint64_t id = r.hdr.req_id;
    cm_msg_release(&r);
    float g[8] = {0};
    h = s_hdr(CM_OP_PUSH, 0, 4, 0);
    h.key_ref = id;
    s_refused(&f, h, NULL, 0, g, 8, CM_ENOTFOUND, "no kept pull");
    s_stop(&f);
    s_finish(&f);
}

/* ------------------------------------------------------------------------
 * Confinement: identities, control operations, slots, checkpoint names */

Test(server, control_ops_only_from_the_scheduler, .timeout = 30)
{
    s_fix f;
    s_start(&f, "inproc://ps-test-control");
    const int ops[] = {CM_OP_STOP, CM_OP_CHECKPOINT, CM_OP_LOAD, CM_OP_EPOCH, CM_OP_SLOTS};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        cm_hdr h = s_hdr(ops[i], 0, 0, 0);
        h.sender = 3; /* a worker's rank: inproc carries no identity, the field speaks */
        snprintf(h.path, sizeof h.path, "ckpt-1");
        s_refused(&f, h, NULL, 0, NULL, 0, CM_EPERM, "from the scheduler (rank 0) only");
    }
    s_still_serving(&f);
    s_stop(&f);
    s_finish(&f);
}

Test(server, checkpoint_names_stay_inside_the_checkpoint_dir, .timeout = 30)
{
    char root[] = "/tmp/psrec-test-srv-ckpt-XXXXXX";
    cr_assert_not_null(mkdtemp(root));
    s_fix f;
    s_start(&f, "inproc://ps-test-ckpt-names");
    /* no checkpoint_dir: nothing is written anywhere */
    cm_hdr h = s_hdr(CM_OP_CHECKPOINT, 0, 0, 0);
    snprintf(h.path, sizeof h.path, "ckpt-1");
    s_refused(&f, h, NULL, 0, NULL, 0, CM_EPERM, "no checkpoint_dir");
    ps_server_set_checkpoints(f.srv, root, "");
    const char *bad[] = {"../ckpt-1", "..", "/tmp", "a/b", "", ".hidden", "x..y"};
    for (int op = 0; op < 2; op++)
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            h = s_hdr(op ? CM_OP_LOAD : CM_OP_CHECKPOINT, 0, 0, 0);
            snprintf(h.path, sizeof h.path, "%s", bad[i]);
            s_refused(&f, h, NULL, 0, NULL, 0, CM_EPERM,
                      op && !bad[i][0] ? "none to resume from" : "not a checkpoint name");
        }
    /* a plain name lands inside root */
    const uint64_t k = 7;
    float out[4];
    s_pull(&f, 0, &k, 1, 0, out, NULL);
    char dir[512], file[600];
    snprintf(dir, sizeof dir, "%s/ckpt-1", root);
    cr_assert_eq(mkdir(dir, 0755), 0);
    h = s_hdr(CM_OP_CHECKPOINT, 0, 0, 0);
    snprintf(h.path, sizeof h.path, "ckpt-1");
    cm_msg r;
    s_call(&f, &h, NULL, 0, NULL, 0, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY, "%s", r.hdr.error);
    cm_msg_release(&r);
    snprintf(file, sizeof file, "%s/t0-s0.rows", dir);
    cr_assert_eq(access(file, F_OK), 0, "%s written", file);
    s_stop(&f);
    s_finish(&f);
    for (int t = 0; t < 2; t++) {
        snprintf(file, sizeof file, "%s/t%d-s0.rows", dir, t);
        unlink(file);
    }
    rmdir(dir);
    rmdir(root);
}

/* The first key from `from` up whose slot (of n) maps to server `want`. */
static uint64_t s_key_of(const uint32_t *map, uint32_t n, uint32_t want, uint64_t from)
{
    for (uint64_t k = from;; k++)
        if (map[cm_slot_of(k, 0, n)] == want)
            return k;
}

Test(server, keys_outside_its_slots_are_refused, .timeout = 30)
{
    s_fix f;
    s_start(&f, "inproc://ps-test-slots");
    uint32_t map[8] = {0, 1, 0, 1, 0, 1, 0, 1};
    cm_hdr h = s_hdr(CM_OP_SLOTS, 0, 0, 0);
    h.slots = map;
    h.n_slots = 8;
    cm_msg r;
    s_call(&f, &h, NULL, 0, NULL, 0, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY, "%s", r.hdr.error);
    cm_msg_release(&r);
    /* this server is index 0 (the default): a key of server 1 is refused */
    uint64_t mine = s_key_of(map, 8, 0, 100), theirs = s_key_of(map, 8, 1, 100);
    float out[4], g[4] = {1, 1, 1, 1};
    s_pull(&f, 0, &mine, 1, 0, out, NULL);
    s_push(&f, 0, &mine, 1, g);
    uint64_t two[2] = {mine < theirs ? mine : theirs, mine < theirs ? theirs : mine};
    s_refused(&f, s_hdr(CM_OP_PULL, 0, 4, 0), two, 2, NULL, 0, CM_EPERM,
              "not of this server");
    s_refused(&f, s_hdr(CM_OP_PUSH, 0, 4, 0), &theirs, 1, g, 4, CM_EPERM,
              "not of this server");
    s_refused(&f, s_hdr(CM_OP_PULL, 0, 4, CM_PULL_FULL), &theirs, 1, NULL, 0, CM_EPERM,
              "not of this server");
    s_refused(&f, s_hdr(CM_OP_PULL, 0, 4, CM_PULL_NO_CREATE), two, 2, NULL, 0, CM_EPERM,
              "not of this server");
    char what[96];
    snprintf(what, sizeof what, "key %" PRIu64 " of table 0 is in slot", theirs);
    s_refused(&f, s_hdr(CM_OP_PULL, 0, 4, 0), &theirs, 1, NULL, 0, CM_EPERM, what);
    cr_assert_eq(ps_table_rows(ps_server_table(f.srv, 0)), 1, "only the own key's row exists");
    s_stop(&f);
    s_finish(&f);
}

/* Over tcp with the job's keys: the connection says which rank speaks. */
Test(server, spoofed_sender_on_an_authenticated_connection, .timeout = 60)
{
    if (!cm_van_can_secure())
        cr_skip_test("this libzmq has no CURVE");
    cm_log_set_level(CM_LOG_ERROR);
    enum { RANKS = 5 };
    uint8_t spub[CM_KEY_BYTES], ssec[CM_KEY_BYTES];
    uint8_t pub[RANKS][CM_KEY_BYTES], sec[RANKS][CM_KEY_BYTES], admit[RANKS * CM_KEY_BYTES];
    cm_error e = {0};
    cr_assert_eq(cm_van_keypair(spub, ssec, &e), 0, "%s", e.msg);
    for (int r = 0; r < RANKS; r++) {
        cr_assert_eq(cm_van_keypair(pub[r], sec[r], &e), 0, "%s", e.msg);
        memcpy(admit + r * CM_KEY_BYTES, pub[r], CM_KEY_BYTES);
    }
    cm_van *vans[3];
    const int as[3] = {1, 4, 0}; /* the server, a worker, the scheduler */
    for (int i = 0; i < 3; i++) {
        cm_van_keys k;
        memset(&k, 0, sizeof k);
        memcpy(k.server_public, spub, CM_KEY_BYTES);
        memcpy(k.server_secret, ssec, CM_KEY_BYTES);
        memcpy(k.public_key, pub[as[i]], CM_KEY_BYTES);
        memcpy(k.secret_key, sec[as[i]], CM_KEY_BYTES);
        k.admit = admit;
        k.n_admit = RANKS;
        cr_assert_not_null(vans[i] = cm_van_new(&e), "%s", e.msg);
        cr_assert_eq(cm_van_secure(vans[i], &k, &e), 0, "%s", e.msg);
    }
    s_fix f;
    memset(&f, 0, sizeof f);
    f.params[0] = s_params(4, CM_OPT_SGD, 0.5f);
    f.n_tables = 1;
    f.van = vans[0];
    cr_assert_not_null(f.srv = ps_server_new(f.van, "tcp://127.0.0.1:*", f.params, 1, &e), "%s",
                       e.msg);
    cr_assert_eq(pthread_create(&f.th, NULL, s_thread, &f), 0);
    f.running = 1;
    cm_sock *worker = cm_sock_new(vans[1], CM_SOCK_DEALER, &e);
    cm_sock *sched = cm_sock_new(vans[2], CM_SOCK_DEALER, &e);
    cr_assert(worker && sched, "%s", e.msg);
    cr_assert_eq(cm_sock_connect(worker, ps_server_endpoint(f.srv)), 0);
    cr_assert_eq(cm_sock_connect(sched, ps_server_endpoint(f.srv)), 0);
    f.cli = worker;
    const uint64_t k = 11;
    float out[4];
    /* rank 4 as itself: served */
    cm_hdr h = s_hdr(CM_OP_PULL, 0, 4, 0);
    h.sender = 4;
    cm_msg r;
    s_call(&f, &h, &k, 1, NULL, 0, &r);
    cr_assert_eq(r.hdr.op, CM_OP_REPLY, "%s", r.hdr.error);
    memcpy(out, r.vals, sizeof out);
    cm_msg_release(&r);
    /* rank 4 claiming rank 3, or the scheduler's rank 0 for a STOP */
    h = s_hdr(CM_OP_PULL, 0, 4, 0);
    h.sender = 3;
    s_refused(&f, h, &k, 1, NULL, 0, CM_EPERM, "from rank 3 on the connection of rank 4");
    h = s_hdr(CM_OP_STOP, 0, 0, 0);
    h.sender = 0;
    s_refused(&f, h, NULL, 0, NULL, 0, CM_EPERM, "on the connection of rank 4");
    /* the scheduler's own connection stops it */
    f.cli = sched;
    s_stop(&f);
    f.cli = NULL;
    cm_sock_destroy(&worker);
    cm_sock_destroy(&sched);
    ps_server_destroy(&f.srv);
    for (int i = 0; i < 3; i++)
        cm_van_destroy(&vans[i]);
}

/* A flood of bad requests: each is answered, but at most 10 warnings a
 * minute reach the log, and a peer's text appears only quoted. */
Test(server, a_flood_of_bad_requests_does_not_flood_the_log, .timeout = 60)
{
    s_fix f;
    s_start(&f, "inproc://ps-test-flood");
    cm_log_set_level(CM_LOG_WARN);
    fflush(stderr);
    FILE *cap = tmpfile();
    cr_assert_not_null(cap);
    int saved = dup(2);
    cr_assert_geq(saved, 0);
    cr_assert_geq(dup2(fileno(cap), 2), 0);
    cm_msg r;
    for (int i = 0; i < 5; i++) {
        cm_hdr h = s_hdr(CM_OP_CHECKPOINT, 0, 0, 0);
        snprintf(h.path, sizeof h.path, "\x1b[2J../evil-%d", i);
        s_call(&f, &h, NULL, 0, NULL, 0, &r);
        cr_assert_eq(r.hdr.op, CM_OP_ERROR);
        cm_msg_release(&r);
    }
    for (int i = 0; i < 40; i++) {
        static const char junk[] = "\xff\xfe not a header";
        cm_iov iov = {junk, sizeof junk};
        s_send_raw(&f, &iov, 1);
        s_recv(&f, &r);
        cr_assert_eq(r.hdr.op, CM_OP_ERROR, "every bad message is still answered");
        cm_msg_release(&r);
    }
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    cm_log_set_level(CM_LOG_ERROR);
    rewind(cap);
    char line[4096];
    int lines = 0, raw_escape = 0, quoted = 0;
    while (fgets(line, sizeof line, cap)) {
        if (strstr(line, " W ") && strstr(line, "ps: "))
            lines++;
        if (strchr(line, '\x1b'))
            raw_escape = 1;
        if (strstr(line, "\"\\x1b[2J../evil-0\""))
            quoted = 1;
    }
    fclose(cap);
    cr_assert_geq(lines, 5, "the first rejections are logged (%d lines)", lines);
    cr_assert_leq(lines, 10, "45 bad requests gave %d warning lines", lines);
    cr_assert(quoted, "the bad name appears quoted");
    cr_assert_not(raw_escape, "a peer's raw bytes reached the log");
    s_stop(&f);
    s_finish(&f);
}
