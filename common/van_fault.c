/* van_fault: a van that wraps another and misbehaves on send, for tests.
 *
 * Each send first sleeps delay_ms, then draws two numbers from the
 * socket's own random stream: below `drop` the whole message vanishes
 * (the send still reports success, as a lossy network would), below `dup`
 * it goes out twice. Everything else (bind, connect, recv, poll) is the
 * inner socket's. Each socket's stream is seeded from (seed, the socket's
 * creation number), so a test that creates its sockets in the same order
 * sees the same faults on every run, whatever its threads do. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/hash.h"
#include "common/van_impl.h"

typedef struct {
    cm_van *inner;                /* the wrapped van, not owned */
    cm_fault_params p;
    atomic_uint_fast64_t n_socks; /* sockets made so far: seeds their streams */
} s_van;

typedef struct {
    uint64_t state;               /* splitmix64 counter */
    cm_fault_params p;
} s_sock;

/* Uniform double in [0, 1) from a splitmix64 stream. */
static double s_uniform(s_sock *fs)
{
    fs->state += 0x9e3779b97f4a7c15ULL;
    uint64_t x = cm_mix64(fs->state);
    return (double)(x >> 11) * 0x1.0p-53;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Copies the inner socket's error text up after a failure. */
static int s_pass(cm_sock *s, int rc)
{
    if (rc < 0)
        memcpy(s->errmsg, s->inner->errmsg, sizeof s->errmsg);
    return rc;
}

/* ---------------------------------------------------------------- van -- */

static void s_destroy(cm_van *v)
{
    free(v->impl);
    free(v);
}

static void s_shutdown(cm_van *v)
{
    s_van *fv = v->impl;
    cm_van_shutdown(fv->inner);
}

/* -------------------------------------------------------------- socks -- */

static int s_sock_open(cm_van *v, cm_sock *s, cm_error *err)
{
    s_van *fv = v->impl;
    s_sock *fs = calloc(1, sizeof *fs);
    if (!fs)
        return cm_error_set(err, CM_ENOMEM, "fault van: out of memory");
    cm_sock *inner = cm_sock_new(fv->inner, s->type, err);
    if (!inner) {
        free(fs);
        return err ? err->code : CM_EIO;
    }
    uint64_t k = atomic_fetch_add(&fv->n_socks, 1);
    fs->state = cm_mix64(fv->p.seed ^ cm_mix64(k));
    fs->p = fv->p;
    s->impl = fs;
    s->inner = inner;
    return 0;
}

static void s_sock_close(cm_sock *s)
{
    cm_sock_destroy(&s->inner);
    free(s->impl);
}

static int s_bind(cm_sock *s, const char *endpoint, char *actual)
{
    return s_pass(s, cm_sock_bind(s->inner, endpoint, actual));
}

static int s_connect(cm_sock *s, const char *endpoint)
{
    return s_pass(s, cm_sock_connect(s->inner, endpoint));
}

static int s_set_identity(cm_sock *s, const void *id, size_t size)
{
    return s_pass(s, cm_sock_set_identity(s->inner, id, size));
}

static int s_send(cm_sock *s, const cm_iov *frames, size_t n)
{
    s_sock *fs = s->impl;
    if (fs->p.delay_ms > 0)
        s_sleep_ms(fs->p.delay_ms);
    /* Always draw both, so one decision never shifts the other's stream. */
    double u_drop = s_uniform(fs), u_dup = s_uniform(fs);
    if (u_drop < fs->p.drop)
        return 0;
    int rc = cm_sock_send(s->inner, frames, n);
    if (rc == 0 && u_dup < fs->p.dup)
        rc = cm_sock_send(s->inner, frames, n);
    return s_pass(s, rc);
}

static int s_recv(cm_sock *s, cm_frames **out, int timeout_ms)
{
    return s_pass(s, cm_sock_recv(s->inner, out, timeout_ms));
}

static int s_poll(cm_sock **socks, size_t n, int timeout_ms, uint64_t *ready)
{
    /* Never called: van.c polls the innermost sockets. */
    (void)socks;
    (void)n;
    (void)timeout_ms;
    *ready = 0;
    return CM_EINVAL;
}

/* ----------------------------------------------------------- security -- */

/* Security is the inner van's: its sockets are the ones on the wire. */
static int s_secure(cm_van *v, const cm_van_keys *k, cm_error *err)
{
    s_van *fv = v->impl;
    return cm_van_secure(fv->inner, k, err);
}

static int s_is_secure(const cm_van *v)
{
    const s_van *fv = v->impl;
    return cm_van_is_secure(fv->inner);
}

static uint64_t s_refused(const cm_van *v)
{
    const s_van *fv = v->impl;
    return cm_van_refused(fv->inner);
}

/* ---------------------------------------------------------------- new -- */

static const cm_van_ops s_ops = {
    .name = "fault",
    .destroy = s_destroy,
    .shutdown = s_shutdown,
    .sock_open = s_sock_open,
    .sock_close = s_sock_close,
    .bind = s_bind,
    .connect = s_connect,
    .set_identity = s_set_identity,
    .send = s_send,
    .recv = s_recv,
    .poll = s_poll,
    .secure = s_secure,
    .is_secure = s_is_secure,
    .refused = s_refused,
};

cm_van *cm_van_fault_new(cm_van *inner, const cm_fault_params *p, cm_error *err)
{
    if (!inner || !p) {
        cm_error_set(err, CM_EINVAL, "fault van: needs an inner van and params");
        return NULL;
    }
    if (!(p->drop >= 0.0 && p->drop <= 1.0) || !(p->dup >= 0.0 && p->dup <= 1.0) ||
        p->delay_ms < 0) {
        cm_error_set(err, CM_EINVAL,
                     "fault van: drop %g and dup %g must be in [0, 1], delay_ms %d >= 0",
                     p->drop, p->dup, p->delay_ms);
        return NULL;
    }
    s_van *fv = calloc(1, sizeof *fv);
    if (!fv) {
        cm_error_set(err, CM_ENOMEM, "fault van: out of memory");
        return NULL;
    }
    fv->inner = inner;
    fv->p = *p;
    atomic_init(&fv->n_socks, 0);
    cm_van *v = cm_van_alloc_(&s_ops, fv);
    if (!v) {
        free(fv);
        cm_error_set(err, CM_ENOMEM, "fault van: out of memory");
        return NULL;
    }
    return v;
}
