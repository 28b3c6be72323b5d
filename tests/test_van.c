/* test_van: the transport — ROUTER/DEALER round trips over inproc and tcp,
 * multipart and large frames, timeouts, polling, routing replies, bad
 * endpoints, shutdown, and the fault-injecting van. One van per test,
 * inproc names unique per test. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/van.h"

/* ------------------------------------------------------------ helpers -- */

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static cm_van *s_van(void)
{
    cm_error err = {0};
    cm_van *v = cm_van_new(&err);
    cr_assert_not_null(v, "%s", err.msg);
    return v;
}

static cm_sock *s_sock(cm_van *v, cm_sock_type t)
{
    cm_error err = {0};
    cm_sock *s = cm_sock_new(v, t, &err);
    cr_assert_not_null(s, "%s", err.msg);
    return s;
}

/* ROUTER bound to endpoint, DEALER connected to what it resolved to. */
static void s_pair(cm_van *v, const char *endpoint, cm_sock **router, cm_sock **dealer)
{
    char actual[CM_ENDPOINT_MAX];
    *router = s_sock(v, CM_SOCK_ROUTER);
    *dealer = s_sock(v, CM_SOCK_DEALER);
    cr_assert_eq(cm_sock_bind(*router, endpoint, actual), 0, "%s", cm_sock_errmsg(*router));
    cr_assert_eq(cm_sock_connect(*dealer, actual), 0, "%s", cm_sock_errmsg(*dealer));
}

static void s_send_str(cm_sock *s, const char *a, const char *b)
{
    cm_iov f[2] = {{a, strlen(a)}, {b, b ? strlen(b) : 0}};
    cr_assert_eq(cm_sock_send(s, f, b ? 2 : 1), 0, "%s", cm_sock_errmsg(s));
}

static int s_frame_is(const cm_frames *f, size_t i, const char *text)
{
    return cm_frames_size(f, i) == strlen(text) &&
           memcmp(cm_frames_data(f, i), text, strlen(text)) == 0;
}

/* dealer -> router -> dealer with a couple of frames. */
static void s_round_trip(const char *endpoint)
{
    cm_van *v = s_van();
    cm_sock *r, *d;
    s_pair(v, endpoint, &r, &d);
    cr_assert_eq(cm_sock_type_of(r), CM_SOCK_ROUTER);
    cr_assert_eq(cm_sock_type_of(d), CM_SOCK_DEALER);

    s_send_str(d, "hello", "world");
    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(r, &f, 5000), 0, "%s", cm_sock_errmsg(r));
    cr_assert_eq(cm_frames_count(f), 3, "route + 2 frames");
    cr_assert_gt(cm_frames_size(f, 0), 0);
    cr_assert(s_frame_is(f, 1, "hello"));
    cr_assert(s_frame_is(f, 2, "world"));

    cm_iov back[2] = {{cm_frames_data(f, 0), cm_frames_size(f, 0)}, {"pong", 4}};
    cr_assert_eq(cm_sock_send(r, back, 2), 0, "%s", cm_sock_errmsg(r));
    cm_frames_destroy(&f);
    cr_assert_null(f);

    cr_assert_eq(cm_sock_recv(d, &f, 5000), 0, "%s", cm_sock_errmsg(d));
    cr_assert_eq(cm_frames_count(f), 1);
    cr_assert(s_frame_is(f, 0, "pong"));
    cm_frames_destroy(&f);

    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cr_assert_null(r);
    cm_van_destroy(&v);
    cr_assert_null(v);
}

/* --------------------------------------------------------- round trips -- */

Test(van, inproc_round_trip)
{
    s_round_trip("inproc://van-rt");
}

Test(van, tcp_round_trip)
{
    s_round_trip("tcp://127.0.0.1:*");
}

/* A unix socket carries messages, and its file goes with the socket. */
Test(van, ipc_round_trip_leaves_no_file)
{
    char path[64], endpoint[80];
    snprintf(path, sizeof path, "/tmp/psrec-test-van-%ld", (long)getpid());
    snprintf(endpoint, sizeof endpoint, "ipc://%s", path);
    s_round_trip(endpoint);
    cr_assert_eq(access(path, F_OK), -1, "%s is still there", path);
}

Test(van, destroy_is_null_safe)
{
    cm_van *v = NULL;
    cm_sock *s = NULL;
    cm_frames *f = NULL;
    cm_van_destroy(&v);
    cm_van_destroy(NULL);
    cm_sock_destroy(&s);
    cm_sock_destroy(NULL);
    cm_frames_destroy(&f);
    cm_frames_destroy(NULL);
    cr_assert_eq(cm_frames_count(NULL), 0);
    cr_assert_null(cm_frames_data(NULL, 0));
    cr_assert_eq(cm_frames_size(NULL, 0), 0);
}

Test(van, ephemeral_tcp_bind_gives_a_real_port)
{
    cm_van *v = s_van();
    cm_sock *r = s_sock(v, CM_SOCK_ROUTER);
    char actual[CM_ENDPOINT_MAX];
    cr_assert_eq(cm_sock_bind(r, "tcp://0.0.0.0:*", actual), 0, "%s", cm_sock_errmsg(r));
    cr_assert_eq(strncmp(actual, "tcp://0.0.0.0:", 14), 0, "%s", actual);
    char *end;
    long port = strtol(actual + 14, &end, 10);
    cr_assert(*end == '\0' && port > 0 && port < 65536, "%s", actual);

    /* The port is really ours: a second bind to it fails with a message. */
    cm_sock *r2 = s_sock(v, CM_SOCK_ROUTER);
    cr_assert_lt(cm_sock_bind(r2, actual, NULL), 0);
    cr_assert(strstr(cm_sock_errmsg(r2), "in use"), "%s", cm_sock_errmsg(r2));

    /* And reachable through 127.0.0.1. */
    char ep[CM_ENDPOINT_MAX];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%ld", port);
    cm_sock *d = s_sock(v, CM_SOCK_DEALER);
    cr_assert_eq(cm_sock_connect(d, ep), 0, "%s", cm_sock_errmsg(d));
    s_send_str(d, "x", NULL);
    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(r, &f, 5000), 0, "%s", cm_sock_errmsg(r));
    cr_assert(s_frame_is(f, 1, "x"));
    cm_frames_destroy(&f);
    cm_sock_destroy(&d);
    cm_sock_destroy(&r2);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

Test(van, bind_actual_for_inproc)
{
    cm_van *v = s_van();
    cm_sock *r = s_sock(v, CM_SOCK_ROUTER);
    char actual[CM_ENDPOINT_MAX];
    cr_assert_eq(cm_sock_bind(r, "inproc://van-actual", actual), 0, "%s", cm_sock_errmsg(r));
    cr_assert_str_eq(actual, "inproc://van-actual");
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

Test(van, bad_endpoints_are_errors)
{
    cm_van *v = s_van();
    cm_sock *d = s_sock(v, CM_SOCK_DEALER);
    const char *bad[] = {"nonsense", "tcp://", "tcp://no-port", "foo://bar:1", "tcp://:x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = cm_sock_connect(d, bad[i]);
        cr_assert_lt(rc, 0, "connect \"%s\" succeeded", bad[i]);
        cr_assert_neq(cm_sock_errmsg(d)[0], '\0', "no message for \"%s\"", bad[i]);
        cr_assert_lt(cm_sock_bind(d, bad[i], NULL), 0, "bind \"%s\" succeeded", bad[i]);
    }
    cr_assert_eq(cm_sock_connect(d, NULL), CM_EINVAL);
    char longep[CM_ENDPOINT_MAX + 10];
    memset(longep, 'a', sizeof longep - 1);
    longep[sizeof longep - 1] = '\0';
    cr_assert_eq(cm_sock_connect(d, longep), CM_EINVAL);
    cr_assert(strstr(cm_sock_errmsg(d), "longer"), "%s", cm_sock_errmsg(d));
    cm_sock_destroy(&d);
    cm_van_destroy(&v);
}

/* -------------------------------------------------------- frame shapes -- */

static void s_large(const char *endpoint)
{
    cm_van *v = s_van();
    cm_sock *r, *d;
    s_pair(v, endpoint, &r, &d);
    size_t big = 8u << 20;
    uint8_t *buf = malloc(big);
    for (size_t i = 0; i < big; i++)
        buf[i] = (uint8_t)(i * 2654435761u >> 13);
    /* empty, tiny, exactly the inline limit and just above, 8 MB, empty */
    cm_iov f[6] = {{NULL, 0}, {"a", 1}, {buf, 33}, {buf, 34}, {buf, big}, {"", 0}};
    for (int rep = 0; rep < 3; rep++)
        cr_assert_eq(cm_sock_send(d, f, 6), 0, "%s", cm_sock_errmsg(d));
    for (int rep = 0; rep < 3; rep++) {
        cm_frames *in = NULL;
        cr_assert_eq(cm_sock_recv(r, &in, 10000), 0, "%s", cm_sock_errmsg(r));
        cr_assert_eq(cm_frames_count(in), 7);
        for (size_t i = 0; i < 6; i++) {
            cr_assert_eq(cm_frames_size(in, i + 1), f[i].size, "frame %zu", i);
            if (f[i].size)
                cr_assert_arr_eq(cm_frames_data(in, i + 1), f[i].data, f[i].size, "frame %zu", i);
        }
        cr_assert_null(cm_frames_data(in, 7));
        cr_assert_eq(cm_frames_size(in, 7), 0);
        cm_frames_destroy(&in);
    }
    free(buf);
    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

Test(van, multipart_empty_and_large_frames_inproc)
{
    s_large("inproc://van-large");
}

Test(van, multipart_empty_and_large_frames_tcp)
{
    s_large("tcp://127.0.0.1:*");
}

/* Many small messages keep their order and none is lost (no HWM drops). */
Test(van, pipelined_messages_are_not_dropped)
{
    cm_van *v = s_van();
    cm_sock *r, *d;
    s_pair(v, "tcp://127.0.0.1:*", &r, &d);
    enum { N = 50000 };
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(cm_sock_send(d, (cm_iov[]){{&i, sizeof i}}, 1), 0);
    for (uint32_t i = 0; i < N; i++) {
        cm_frames *f = NULL;
        cr_assert_eq(cm_sock_recv(r, &f, 10000), 0, "message %u: %s", i, cm_sock_errmsg(r));
        uint32_t got;
        memcpy(&got, cm_frames_data(f, 1), sizeof got);
        cr_assert_eq(got, i);
        cm_frames_destroy(&f);
    }
    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

Test(van, send_without_frames_is_einval)
{
    cm_van *v = s_van();
    cm_sock *d = s_sock(v, CM_SOCK_DEALER);
    cr_assert_eq(cm_sock_send(d, NULL, 0), CM_EINVAL);
    cr_assert_eq(cm_sock_send(d, (cm_iov[]){{NULL, 5}}, 1), CM_EINVAL);
    cr_assert_neq(cm_sock_errmsg(d)[0], '\0');
    cm_sock_destroy(&d);
    cm_van_destroy(&v);
}

/* ------------------------------------------------------ timeouts, poll -- */

Test(van, recv_timeout)
{
    cm_van *v = s_van();
    cm_sock *r, *d;
    s_pair(v, "inproc://van-timeout", &r, &d);
    cm_frames *f = (cm_frames *)&f;   /* not NULL: recv must clear it */
    double t0 = s_now();
    cr_assert_eq(cm_sock_recv(r, &f, 100), CM_ETIMEDOUT);
    double dt = s_now() - t0;
    cr_assert_null(f);
    cr_assert(dt >= 0.09 && dt < 2.0, "waited %.3f s", dt);
    cr_assert(strstr(cm_sock_errmsg(r), "100 ms"), "%s", cm_sock_errmsg(r));
    cr_assert_eq(cm_sock_recv(d, &f, 0), CM_ETIMEDOUT);
    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

Test(van, poll_over_two_sockets)
{
    cm_van *v = s_van();
    cm_sock *ra, *da, *rb, *db;
    s_pair(v, "inproc://van-poll-a", &ra, &da);
    s_pair(v, "tcp://127.0.0.1:*", &rb, &db);
    cm_sock *socks[2] = {ra, rb};
    uint64_t ready = 99;

    cr_assert_eq(cm_sock_poll(socks, 2, 50, &ready), 0);
    cr_assert_eq(ready, 0, "nothing to read yet");

    s_send_str(db, "to-b", NULL);
    cr_assert_eq(cm_sock_poll(socks, 2, 5000, &ready), 0);
    cr_assert_eq(ready, 2, "only b is readable");

    s_send_str(da, "to-a", NULL);
    double t0 = s_now();
    while (ready != 3 && s_now() - t0 < 5)
        cr_assert_eq(cm_sock_poll(socks, 2, 100, &ready), 0);
    cr_assert_eq(ready, 3, "both readable");

    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(ra, &f, 0), 0);
    cr_assert(s_frame_is(f, 1, "to-a"));
    cm_frames_destroy(&f);
    cr_assert_eq(cm_sock_poll(socks, 2, 0, &ready), 0);
    cr_assert_eq(ready, 2);
    cr_assert_eq(cm_sock_recv(rb, &f, 0), 0);
    cr_assert(s_frame_is(f, 1, "to-b"));
    cm_frames_destroy(&f);

    cr_assert_eq(cm_sock_poll(socks, 0, 0, &ready), CM_EINVAL);
    cr_assert_eq(cm_sock_poll(socks, 65, 0, &ready), CM_EINVAL);
    cm_sock_destroy(&da);
    cm_sock_destroy(&ra);
    cm_sock_destroy(&db);
    cm_sock_destroy(&rb);
    cm_van_destroy(&v);
}

/* ------------------------------------------------------------- routing -- */

Test(van, router_replies_reach_the_right_dealer)
{
    cm_van *v = s_van();
    cm_sock *r = s_sock(v, CM_SOCK_ROUTER);
    cm_sock *d1 = s_sock(v, CM_SOCK_DEALER), *d2 = s_sock(v, CM_SOCK_DEALER);
    cr_assert_eq(cm_sock_bind(r, "inproc://van-route", NULL), 0);
    cr_assert_eq(cm_sock_connect(d1, "inproc://van-route"), 0);
    cr_assert_eq(cm_sock_connect(d2, "inproc://van-route"), 0);
    s_send_str(d1, "from-1", NULL);
    s_send_str(d2, "from-2", NULL);
    for (int i = 0; i < 2; i++) {
        cm_frames *f = NULL;
        cr_assert_eq(cm_sock_recv(r, &f, 5000), 0);
        const char *ans = s_frame_is(f, 1, "from-1") ? "for-1" : "for-2";
        cm_iov back[2] = {{cm_frames_data(f, 0), cm_frames_size(f, 0)}, {ans, 5}};
        cr_assert_eq(cm_sock_send(r, back, 2), 0, "%s", cm_sock_errmsg(r));
        cm_frames_destroy(&f);
    }
    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(d1, &f, 5000), 0);
    cr_assert(s_frame_is(f, 0, "for-1"));
    cm_frames_destroy(&f);
    cr_assert_eq(cm_sock_recv(d2, &f, 5000), 0);
    cr_assert(s_frame_is(f, 0, "for-2"));
    cm_frames_destroy(&f);
    cr_assert_eq(cm_sock_recv(d1, &f, 20), CM_ETIMEDOUT);
    cm_sock_destroy(&d1);
    cm_sock_destroy(&d2);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

Test(van, router_send_to_unknown_route_fails)
{
    cm_van *v = s_van();
    cm_sock *r, *d;
    s_pair(v, "inproc://van-unknown-route", &r, &d);
    cm_iov f[2] = {{"ghost", 5}, {"boo", 3}};
    int rc = cm_sock_send(r, f, 2);
    cr_assert_eq(rc, CM_EIO);
    cr_assert(strstr(cm_sock_errmsg(r), "no peer"), "%s", cm_sock_errmsg(r));
    /* The socket still works afterwards. */
    s_send_str(d, "hi", NULL);
    cm_frames *in = NULL;
    cr_assert_eq(cm_sock_recv(r, &in, 5000), 0);
    cm_frames_destroy(&in);
    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

Test(van, dealer_identity_is_the_route)
{
    cm_van *v = s_van();
    cm_sock *r = s_sock(v, CM_SOCK_ROUTER);
    cm_sock *d = s_sock(v, CM_SOCK_DEALER);
    cr_assert_eq(cm_sock_set_identity(d, "\0bad", 4), CM_EINVAL);
    cr_assert_eq(cm_sock_set_identity(d, "", 0), CM_EINVAL);
    cr_assert_eq(cm_sock_set_identity(d, "wk-7", 4), 0, "%s", cm_sock_errmsg(d));
    cr_assert_eq(cm_sock_bind(r, "inproc://van-ident", NULL), 0);
    cr_assert_eq(cm_sock_connect(d, "inproc://van-ident"), 0);
    s_send_str(d, "hi", NULL);
    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(r, &f, 5000), 0);
    cr_assert(s_frame_is(f, 0, "wk-7"));
    cm_frames_destroy(&f);
    /* So the router can address it by name, even before hearing from it. */
    cr_assert_eq(cm_sock_send(r, (cm_iov[]){{"wk-7", 4}, {"yo", 2}}, 2), 0);
    cr_assert_eq(cm_sock_recv(d, &f, 5000), 0);
    cr_assert(s_frame_is(f, 0, "yo"));
    cm_frames_destroy(&f);
    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

/* A worker that comes back with the same identity gets its route back,
 * even while the router still holds the old connection. */
Test(van, reconnecting_identity_takes_over_its_route)
{
    cm_van *v = s_van();
    cm_sock *r = s_sock(v, CM_SOCK_ROUTER);
    char ep[CM_ENDPOINT_MAX];
    cr_assert_eq(cm_sock_bind(r, "tcp://127.0.0.1:*", ep), 0);
    cm_sock *d1 = s_sock(v, CM_SOCK_DEALER);
    cr_assert_eq(cm_sock_set_identity(d1, "wk-1", 4), 0);
    cr_assert_eq(cm_sock_connect(d1, ep), 0);
    s_send_str(d1, "first", NULL);
    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(r, &f, 5000), 0);
    cm_frames_destroy(&f);

    cm_sock *d2 = s_sock(v, CM_SOCK_DEALER);
    cr_assert_eq(cm_sock_set_identity(d2, "wk-1", 4), 0);
    cr_assert_eq(cm_sock_connect(d2, ep), 0);
    s_send_str(d2, "second", NULL);
    cr_assert_eq(cm_sock_recv(r, &f, 5000), 0);
    cr_assert(s_frame_is(f, 0, "wk-1"));
    cr_assert(s_frame_is(f, 1, "second"));
    cm_frames_destroy(&f);
    cr_assert_eq(cm_sock_send(r, (cm_iov[]){{"wk-1", 4}, {"back", 4}}, 2), 0);
    cr_assert_eq(cm_sock_recv(d2, &f, 5000), 0);
    cr_assert(s_frame_is(f, 0, "back"));
    cm_frames_destroy(&f);
    cm_sock_destroy(&d1);
    cm_sock_destroy(&d2);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

/* ------------------------------------------------------------ shutdown -- */

typedef struct {
    cm_sock *s;
    int rc;
} s_blocked;

static void *s_block_in_recv(void *arg)
{
    s_blocked *b = arg;
    cm_frames *f = NULL;
    b->rc = cm_sock_recv(b->s, &f, -1);
    cm_frames_destroy(&f);
    return NULL;
}

Test(van, shutdown_wakes_a_blocked_recv)
{
    cm_van *v = s_van();
    cm_sock *r = s_sock(v, CM_SOCK_ROUTER);
    cr_assert_eq(cm_sock_bind(r, "inproc://van-shutdown", NULL), 0);
    s_blocked b = {r, 1};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, s_block_in_recv, &b), 0);
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    cm_van_shutdown(v);
    pthread_join(t, NULL);
    cr_assert_eq(b.rc, CM_ECLOSED, "got %s", cm_errname(b.rc));
    cr_assert_eq(cm_sock_recv(r, &(cm_frames *){NULL}, 0), CM_ECLOSED);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

/* ----------------------------------------------------------- fault van -- */

static cm_van *s_fault(cm_van *inner, double drop, double dup, int delay_ms, uint64_t seed)
{
    cm_fault_params p = {.drop = drop, .dup = dup, .delay_ms = delay_ms, .seed = seed};
    cm_error err = {0};
    cm_van *fv = cm_van_fault_new(inner, &p, &err);
    cr_assert_not_null(fv, "%s", err.msg);
    return fv;
}

/* Sends n numbered messages from a fault dealer to a plain router and
 * returns a bitmap (as a count and the received numbers in order). */
static size_t s_fault_run(double drop, double dup, uint64_t seed, const char *ep, uint32_t n,
                          uint32_t *got, size_t cap)
{
    cm_van *v = s_van();
    cm_van *fv = s_fault(v, drop, dup, 0, seed);
    cm_sock *r = s_sock(v, CM_SOCK_ROUTER);
    cm_sock *d = s_sock(fv, CM_SOCK_DEALER);
    cr_assert_eq(cm_sock_bind(r, ep, NULL), 0);
    cr_assert_eq(cm_sock_connect(d, ep), 0);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(cm_sock_send(d, (cm_iov[]){{&i, sizeof i}}, 1), 0);
    size_t k = 0;
    cm_frames *f = NULL;
    while (cm_sock_recv(r, &f, 100) == 0) {
        cr_assert_lt(k, cap);
        memcpy(&got[k++], cm_frames_data(f, 1), sizeof *got);
        cm_frames_destroy(&f);
    }
    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cm_van_destroy(&fv);
    cm_van_destroy(&v);
    return k;
}

Test(van_fault, drop_all)
{
    uint32_t got[16];
    cr_assert_eq(s_fault_run(1.0, 0.0, 1, "inproc://fault-drop", 10, got, 16), 0);
}

Test(van_fault, dup_all)
{
    uint32_t got[32];
    size_t k = s_fault_run(0.0, 1.0, 1, "inproc://fault-dup", 10, got, 32);
    cr_assert_eq(k, 20);
    for (uint32_t i = 0; i < 10; i++) {
        cr_assert_eq(got[2 * i], i);
        cr_assert_eq(got[2 * i + 1], i);
    }
}

Test(van_fault, nothing_when_probabilities_are_zero)
{
    uint32_t got[64];
    size_t k = s_fault_run(0.0, 0.0, 1, "inproc://fault-none", 50, got, 64);
    cr_assert_eq(k, 50);
    for (uint32_t i = 0; i < 50; i++)
        cr_assert_eq(got[i], i);
}

Test(van_fault, same_seed_same_faults)
{
    enum { N = 400 };
    static uint32_t a[2 * N], b[2 * N], c[2 * N];
    size_t ka = s_fault_run(0.3, 0.2, 42, "inproc://fault-det-a", N, a, 2 * N);
    size_t kb = s_fault_run(0.3, 0.2, 42, "inproc://fault-det-b", N, b, 2 * N);
    size_t kc = s_fault_run(0.3, 0.2, 43, "inproc://fault-det-c", N, c, 2 * N);
    cr_assert_eq(ka, kb);
    cr_assert_arr_eq(a, b, ka * sizeof *a);
    cr_assert(ka != kc || memcmp(a, c, ka * sizeof *a) != 0, "another seed, other faults");
    /* Roughly 70% kept, 20% of those doubled: 0.7 * 1.2 * 400 = 336. */
    cr_assert(ka > 280 && ka < 390, "kept %zu of %d", ka, N);
}

Test(van_fault, delay_and_pass_through)
{
    cm_van *v = s_van();
    cm_van *fv = s_fault(v, 0.0, 0.0, 30, 7);
    cm_sock *r = s_sock(fv, CM_SOCK_ROUTER);
    cm_sock *d = s_sock(fv, CM_SOCK_DEALER);
    char actual[CM_ENDPOINT_MAX];
    cr_assert_eq(cm_sock_bind(r, "tcp://127.0.0.1:*", actual), 0, "%s", cm_sock_errmsg(r));
    cr_assert_eq(cm_sock_connect(d, actual), 0);
    cr_assert_lt(cm_sock_connect(d, "nonsense"), 0);
    cr_assert_neq(cm_sock_errmsg(d)[0], '\0', "errors of the inner socket show through");

    double t0 = s_now();
    s_send_str(d, "slow", NULL);
    cr_assert_geq(s_now() - t0, 0.029);

    cm_sock *socks[1] = {r};
    uint64_t ready = 0;
    cr_assert_eq(cm_sock_poll(socks, 1, 5000, &ready), 0);
    cr_assert_eq(ready, 1);
    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(r, &f, 0), 0);
    cr_assert(s_frame_is(f, 1, "slow"));
    /* The router replies through the fault van too. */
    cm_iov back[2] = {{cm_frames_data(f, 0), cm_frames_size(f, 0)}, {"ok", 2}};
    cr_assert_eq(cm_sock_send(r, back, 2), 0);
    cm_frames_destroy(&f);
    cr_assert_eq(cm_sock_recv(d, &f, 5000), 0);
    cr_assert(s_frame_is(f, 0, "ok"));
    cm_frames_destroy(&f);
    cr_assert_eq(cm_sock_recv(d, &f, 10), CM_ETIMEDOUT);

    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cm_van_destroy(&fv);
    cm_van_destroy(&v);
}

Test(van_fault, bad_params)
{
    cm_van *v = s_van();
    cm_error err = {0};
    cm_fault_params p = {.drop = 1.5};
    cr_assert_null(cm_van_fault_new(v, &p, &err));
    cr_assert_eq(err.code, CM_EINVAL);
    p = (cm_fault_params){.dup = -0.1};
    cr_assert_null(cm_van_fault_new(v, &p, &err));
    p = (cm_fault_params){.delay_ms = -1};
    cr_assert_null(cm_van_fault_new(v, &p, &err));
    cr_assert_null(cm_van_fault_new(NULL, &p, &err));
    cm_van_destroy(&v);
}

/* ---------------------------------------------------------- throughput -- */

/* Not a benchmark, a sanity figure: 1 MB messages through a dealer to a
 * router with a window of 8 in flight. Logged, not asserted. */
static double s_throughput(const char *endpoint, int n)
{
    cm_van *v = s_van();
    cm_sock *r, *d;
    s_pair(v, endpoint, &r, &d);
    size_t size = 1u << 20;
    char *buf = calloc(1, size);
    enum { WINDOW = 8 };
    double t0 = s_now();
    int sent = 0, recvd = 0;
    while (recvd < n) {
        while (sent < n && sent - recvd < WINDOW) {
            cr_assert_eq(cm_sock_send(d, (cm_iov[]){{buf, size}}, 1), 0);
            sent++;
        }
        cm_frames *f = NULL;
        cr_assert_eq(cm_sock_recv(r, &f, 10000), 0);
        cr_assert_eq(cm_frames_size(f, 1), size);
        cm_frames_destroy(&f);
        recvd++;
    }
    double mbs = (double)n * (double)size / (1 << 20) / (s_now() - t0);
    free(buf);
    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
    return mbs;
}

Test(van, throughput_1mb_messages)
{
    double in = s_throughput("inproc://van-tput", 300);
    double tcp = s_throughput("tcp://127.0.0.1:*", 300);
    cr_log_info("1 MB messages: inproc %.0f MB/s, tcp loopback %.0f MB/s", in, tcp);
    fprintf(stderr, "van throughput, 1 MB messages: inproc %.0f MB/s, tcp loopback %.0f MB/s\n",
            in, tcp);
    cr_assert_gt(in, 10.0);
    cr_assert_gt(tcp, 10.0);
}

/* ------------------------------------------------------- owned frames -- */

/* A header frame and an owned last frame of `size` bytes, dealer to
 * router: the bytes arrive intact (the buffer was the van's to free). */
static void s_owned_trip(cm_van *v, const char *endpoint, size_t size)
{
    cm_sock *r, *d;
    s_pair(v, endpoint, &r, &d);
    unsigned char *buf = malloc(size + 1);
    cr_assert_not_null(buf);
    for (size_t i = 0; i < size; i++)
        buf[i] = (unsigned char)(i * 7 + 1);
    cm_iov f[2] = {{"head", 4}, {buf, size}};
    cr_assert_eq(cm_sock_send_owned(d, f, 2, buf), 0, "%s", cm_sock_errmsg(d));
    cm_frames *in = NULL;
    cr_assert_eq(cm_sock_recv(r, &in, 5000), 0, "%s", cm_sock_errmsg(r));
    cr_assert_eq(cm_frames_count(in), 3);
    cr_assert(s_frame_is(in, 1, "head"));
    cr_assert_eq(cm_frames_size(in, 2), size);
    const unsigned char *got = cm_frames_data(in, 2);
    for (size_t i = 0; i < size; i++)
        cr_assert_eq(got[i], (unsigned char)(i * 7 + 1), "byte %zu", i);
    cm_frames_destroy(&in);
    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
}

Test(van, owned_frames_small_and_large)
{
    cm_van *v = s_van();
    s_owned_trip(v, "inproc://van-owned-small", 100);
    s_owned_trip(v, "inproc://van-owned-large", 3u << 20);
    s_owned_trip(v, "tcp://127.0.0.1:*", 3u << 20);
    cm_van_destroy(&v);
}

Test(van, owned_frames_through_a_wrapping_van)
{
    cm_van *v = s_van();
    cm_van *fv = s_fault(v, 0.0, 0.0, 0, 1);
    s_owned_trip(fv, "inproc://van-owned-fault", 1u << 20);
    cm_van_destroy(&fv);
    cm_van_destroy(&v);
}

/* Refused sends free the buffer too (the sanitizer build checks). */
Test(van, owned_frame_freed_when_the_send_fails)
{
    cm_van *v = s_van();
    cm_sock *r, *d;
    s_pair(v, "inproc://van-owned-fail", &r, &d);
    char *buf = malloc(1u << 20);
    cr_assert_not_null(buf);
    memset(buf, 5, 1u << 20);
    cm_iov f[2] = {{"ghost", 5}, {buf, 1u << 20}};
    cr_assert_eq(cm_sock_send_owned(r, f, 2, buf), CM_EIO, "unknown route");
    buf = malloc(64);
    cr_assert_not_null(buf);
    cm_iov g[2] = {{buf, 64}, {"tail", 4}};
    cr_assert_eq(cm_sock_send_owned(d, g, 2, buf), CM_EINVAL, "not the last frame");
    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}

/* ----------------------------------------------------------- security -- */

/* The keys of a two-rank job: server pair, and client pairs of ranks 0, 1. */
typedef struct {
    uint8_t spub[CM_KEY_BYTES], ssec[CM_KEY_BYTES];
    uint8_t cpub[2][CM_KEY_BYTES], csec[2][CM_KEY_BYTES];
    uint8_t admit[2 * CM_KEY_BYTES];
} s_job_keys;

static void s_make_keys(s_job_keys *j)
{
    cm_error err = {0};
    cr_assert_eq(cm_van_keypair(j->spub, j->ssec, &err), 0, "%s", err.msg);
    for (int r = 0; r < 2; r++) {
        cr_assert_eq(cm_van_keypair(j->cpub[r], j->csec[r], &err), 0, "%s", err.msg);
        memcpy(j->admit + r * CM_KEY_BYTES, j->cpub[r], CM_KEY_BYTES);
    }
}

/* A van (its own context: another process, as far as ZeroMQ knows)
 * secured as rank `rank` of the job, with client keys cpub/csec. */
static cm_van *s_secured(const s_job_keys *j, const uint8_t *cpub, const uint8_t *csec)
{
    cm_van *v = s_van();
    cm_van_keys k;
    memset(&k, 0, sizeof k);
    memcpy(k.server_public, j->spub, CM_KEY_BYTES);
    memcpy(k.server_secret, j->ssec, CM_KEY_BYTES);
    memcpy(k.public_key, cpub, CM_KEY_BYTES);
    memcpy(k.secret_key, csec, CM_KEY_BYTES);
    k.admit = j->admit;
    k.n_admit = 2;
    cm_error err = {0};
    cr_assert_eq(cm_van_secure(v, &k, &err), 0, "%s", err.msg);
    cr_assert(cm_van_is_secure(v));
    return v;
}

Test(van_secure, keypairs_differ_and_secure_needs_a_fresh_van)
{
    if (!cm_van_can_secure())
        cr_skip_test("this libzmq has no CURVE");
    s_job_keys j;
    s_make_keys(&j);
    cr_assert(memcmp(j.cpub[0], j.cpub[1], CM_KEY_BYTES) != 0);
    cr_assert(memcmp(j.spub, j.ssec, CM_KEY_BYTES) != 0);
    cm_van *v = s_van();
    cm_sock *s = s_sock(v, CM_SOCK_DEALER);
    cm_van_keys k;
    memset(&k, 0, sizeof k);
    cm_error err = {0};
    cr_assert_eq(cm_van_secure(v, &k, &err), CM_ESTATE, "a van with sockets cannot be secured");
    cr_assert_not(cm_van_is_secure(v));
    cm_sock_destroy(&s);
    cm_van_destroy(&v);
}

Test(van_secure, a_van_without_a_server_key_makes_no_router)
{
    if (!cm_van_can_secure())
        cr_skip_test("this libzmq has no CURVE");
    s_job_keys j;
    s_make_keys(&j);
    memset(j.ssec, 0, sizeof j.ssec);
    cm_van *v = s_secured(&j, j.cpub[1], j.csec[1]);
    cm_error err = {0};
    cr_assert_null(cm_sock_new(v, CM_SOCK_ROUTER, &err));
    cr_assert_eq(err.code, CM_ESTATE, "%s", err.msg);
    cm_van_destroy(&v);
}

/* The job's rank 1 talks and is known as rank 1; a stranger without keys
 * and one with a key of its own (it knows the server key) get nothing at
 * all, and never reach the ROUTER; both are counted as refused. */
static void s_strangers(const char *bind_ep)
{
    if (!cm_van_can_secure())
        cr_skip_test("this libzmq has no CURVE");
    s_job_keys j;
    s_make_keys(&j);
    cm_van *srv = s_secured(&j, j.cpub[0], j.csec[0]);
    cm_van *rank1 = s_secured(&j, j.cpub[1], j.csec[1]);
    /* wrong keys: a fresh client pair the job never admitted */
    s_job_keys other;
    s_make_keys(&other);
    cm_van *wrong = s_secured(&j, other.cpub[0], other.csec[0]);
    cm_van *plain = s_van();

    char actual[CM_ENDPOINT_MAX];
    cm_sock *router = s_sock(srv, CM_SOCK_ROUTER);
    cr_assert_eq(cm_sock_bind(router, bind_ep, actual), 0, "%s", cm_sock_errmsg(router));
    cm_sock *strangers[2] = {s_sock(plain, CM_SOCK_DEALER), s_sock(wrong, CM_SOCK_DEALER)};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(cm_sock_connect(strangers[i], actual), 0);
        s_send_str(strangers[i], "STOP", "garbage");
    }
    /* both handshakes fail; wait (bounded) until both were counted */
    for (int i = 0; i < 400 && cm_van_refused(srv) < 2; i++)
        usleep(50000);
    cr_assert_geq(cm_van_refused(srv), 2, "refused %llu", (unsigned long long)cm_van_refused(srv));

    cm_sock *d = s_sock(rank1, CM_SOCK_DEALER);
    cr_assert_eq(cm_sock_connect(d, actual), 0);
    s_send_str(d, "hello", NULL);
    cm_frames *f = NULL;
    /* the first message the ROUTER gets is rank 1's: nothing of the
     * strangers got through */
    cr_assert_eq(cm_sock_recv(router, &f, 20000), 0, "%s", cm_sock_errmsg(router));
    cr_assert_eq(cm_frames_count(f), 2);
    cr_assert(s_frame_is(f, 1, "hello"));
    cr_assert_eq(cm_frames_peer(f), 1, "the connection carries rank 1, got %d",
                 cm_frames_peer(f));
    cm_iov rep[2] = {{cm_frames_data(f, 0), cm_frames_size(f, 0)}, {"hi", 2}};
    cr_assert_eq(cm_sock_send(router, rep, 2), 0, "%s", cm_sock_errmsg(router));
    cm_frames_destroy(&f);
    cr_assert_eq(cm_sock_recv(d, &f, 20000), 0, "%s", cm_sock_errmsg(d));
    cr_assert(s_frame_is(f, 0, "hi"));
    cr_assert_eq(cm_frames_peer(f), CM_PEER_ANY, "a DEALER's replies carry no rank");
    cm_frames_destroy(&f);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(cm_sock_recv(strangers[i], &f, 300), CM_ETIMEDOUT, "stranger %d got a reply",
                     i);
        cm_sock_destroy(&strangers[i]);
    }
    cr_assert_eq(cm_sock_recv(router, &f, 300), CM_ETIMEDOUT, "a stranger's message got through");
    cm_sock_destroy(&d);
    cm_sock_destroy(&router);
    cm_van_destroy(&plain);
    cm_van_destroy(&wrong);
    cm_van_destroy(&rank1);
    cm_van_destroy(&srv);
}

Test(van_secure, strangers_get_nothing_over_tcp, .timeout = 60)
{
    s_strangers("tcp://127.0.0.1:*");
}

Test(van_secure, strangers_get_nothing_over_ipc, .timeout = 60)
{
    char ep[128];
    snprintf(ep, sizeof ep, "ipc:///tmp/psrec-test-van-secure-%ld", (long)getpid());
    s_strangers(ep);
}

Test(van_secure, an_unsecured_connection_has_no_peer)
{
    cm_van *v = s_van();
    cm_sock *r, *d;
    s_pair(v, "tcp://127.0.0.1:*", &r, &d);
    s_send_str(d, "x", NULL);
    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(r, &f, 20000), 0);
    cr_assert_eq(cm_frames_peer(f), CM_PEER_ANY);
    cm_frames_destroy(&f);
    cm_sock_destroy(&d);
    cm_sock_destroy(&r);
    cm_van_destroy(&v);
}
