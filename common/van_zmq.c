/* van_zmq: the ZeroMQ transport, the only file that includes zmq.h.
 *
 * One zmq context per van. Sockets never linger on close, have no high
 * water mark (pipelined requests are queued, never dropped) and a ROUTER
 * refuses to send to an unknown route (EHOSTUNREACH) instead of silently
 * dropping the message. Received frames keep their zmq_msg_t alive, so
 * reading a frame never copies it. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_SEND_TIMEOUT_MS 30000
#define S_OWNED_MIN 65536 /* bytes from which an owned frame goes uncopied */

#include "common/log.h"
#include "common/van_impl.h"

typedef struct {
    void *ctx;                  /* the zmq context */
    atomic_int n_socks;         /* open sockets, so destroy can refuse to hang */
} s_van;

typedef struct {
    cm_frames base;             /* what van.c reads */
    size_t cap;                 /* slots in msgs */
    zmq_msg_t *msgs;            /* base.n initialised messages */
} s_frames;

/* ------------------------------------------------------------ helpers -- */

/* Maps errno after a failed zmq call to a CM_E* code and records the text. */
static int s_fail(cm_sock *s, const char *what, const char *detail)
{
    int e = zmq_errno();
    int code;
    switch (e) {
    case ETERM:
    case ENOTSOCK:
        code = CM_ECLOSED;
        break;
    case EINVAL:
    case EPROTONOSUPPORT:
    case ENOCOMPATPROTO:
        code = CM_EINVAL;
        break;
    case EAGAIN:
        code = CM_ETIMEDOUT;
        break;
    case ENOMEM:
        code = CM_ENOMEM;
        break;
    default:
        code = CM_EIO;
        break;
    }
    if (e == EHOSTUNREACH)
        return cm_sock_seterr_(s, code, "%s: no peer with that route (%s)", what,
                               zmq_strerror(e));
    if (detail)
        return cm_sock_seterr_(s, code, "%s %s: %s", what, detail, zmq_strerror(e));
    return cm_sock_seterr_(s, code, "%s: %s", what, zmq_strerror(e));
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left until deadline (-1: forever). */
static long s_left(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - s_now_ms();
    return left > 0 ? (long)left : 0;
}

/* ---------------------------------------------------------------- van -- */

static void s_destroy(cm_van *v)
{
    s_van *z = v->impl;
    int open = atomic_load(&z->n_socks);
    if (open > 0) {
        /* zmq_ctx_term would wait for them forever; leaking is the lesser
         * evil for a programming error that should show up in tests. */
        cm_log(CM_LOG_ERROR, "van: destroyed with %d socket(s) still open; context leaked", open);
        zmq_ctx_shutdown(z->ctx);
    } else {
        while (zmq_ctx_term(z->ctx) != 0 && zmq_errno() == EINTR)
            ;
    }
    free(z);
    free(v);
}

static void s_shutdown(cm_van *v)
{
    s_van *z = v->impl;
    zmq_ctx_shutdown(z->ctx);
}

/* -------------------------------------------------------------- socks -- */

static int s_setint(cm_sock *s, void *zs, int opt, int value, const char *name)
{
    if (zmq_setsockopt(zs, opt, &value, sizeof value) != 0)
        return s_fail(s, "setsockopt", name);
    return 0;
}

static int s_sock_open(cm_van *v, cm_sock *s, cm_error *err)
{
    s_van *z = v->impl;
    void *zs = zmq_socket(z->ctx, s->type == CM_SOCK_ROUTER ? ZMQ_ROUTER : ZMQ_DEALER);
    if (!zs) {
        int e = zmq_errno();
        return cm_error_set(err, e == ETERM ? CM_ECLOSED : CM_EIO, "zmq_socket: %s",
                            zmq_strerror(e));
    }
    int rc = 0;
    if ((rc = s_setint(s, zs, ZMQ_LINGER, 0, "ZMQ_LINGER")) < 0 ||
        (rc = s_setint(s, zs, ZMQ_SNDHWM, 0, "ZMQ_SNDHWM")) < 0 ||
        (rc = s_setint(s, zs, ZMQ_RCVHWM, 0, "ZMQ_RCVHWM")) < 0)
        goto out;
    /* With unlimited queues a send waits only when no peer is connected at
     * all (a DEALER whose peer has gone): give up then instead of hanging. */
    if ((rc = s_setint(s, zs, ZMQ_SNDTIMEO, S_SEND_TIMEOUT_MS, "ZMQ_SNDTIMEO")) < 0)
        goto out;
    /* HANDOVER: a DEALER with a fixed identity that reconnects (new tcp
     * connection) takes its route over instead of being refused. */
    if (s->type == CM_SOCK_ROUTER &&
        ((rc = s_setint(s, zs, ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY")) < 0 ||
         (rc = s_setint(s, zs, ZMQ_ROUTER_HANDOVER, 1, "ZMQ_ROUTER_HANDOVER")) < 0))
        goto out;
    s->impl = zs;
    atomic_fetch_add(&z->n_socks, 1);
out:
    if (rc < 0) {
        cm_error_set(err, rc, "%s", s->errmsg);
        zmq_close(zs);
    }
    return rc;
}

static void s_sock_close(cm_sock *s)
{
    s_van *z = s->van->impl;
    int zero = 0;
    zmq_setsockopt(s->impl, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(s->impl);
    atomic_fetch_sub(&z->n_socks, 1);
    /* zmq leaves a named unix socket's file behind */
    if (s->bound_file) {
        (void)unlink(s->bound_file);
        free(s->bound_file);
        s->bound_file = NULL;
    }
}

static int s_bind(cm_sock *s, const char *endpoint, char *actual)
{
    if (zmq_bind(s->impl, endpoint) != 0)
        return s_fail(s, "bind", endpoint);
    if (strncmp(endpoint, "ipc://", 6) == 0 && strcmp(endpoint + 6, "*") != 0 &&
        !s->bound_file && !(s->bound_file = strdup(endpoint + 6)))
        return cm_sock_seterr_(s, CM_ENOMEM, "bind %s: out of memory", endpoint);
    if (actual) {
        size_t len = CM_ENDPOINT_MAX;
        if (zmq_getsockopt(s->impl, ZMQ_LAST_ENDPOINT, actual, &len) != 0)
            return s_fail(s, "bind: ZMQ_LAST_ENDPOINT of", endpoint);
        actual[CM_ENDPOINT_MAX - 1] = '\0';
    }
    return 0;
}

static int s_connect(cm_sock *s, const char *endpoint)
{
    if (zmq_connect(s->impl, endpoint) != 0)
        return s_fail(s, "connect", endpoint);
    return 0;
}

static int s_set_identity(cm_sock *s, const void *id, size_t size)
{
    if (zmq_setsockopt(s->impl, ZMQ_ROUTING_ID, id, size) != 0)
        return s_fail(s, "setsockopt", "ZMQ_ROUTING_ID");
    return 0;
}

/* ---------------------------------------------------------------- send -- */

/* Sends frames[0..n), each copied into a zmq message; `more`: another
 * frame follows them. */
static int s_send_frames(cm_sock *s, const cm_iov *frames, size_t n, int more)
{
    static const char empty = 0;
    for (size_t i = 0; i < n; i++) {
        const void *data = frames[i].size ? frames[i].data : &empty;
        int flags = i + 1 < n || more ? ZMQ_SNDMORE : 0;
        /* Copies the frame into a zmq message; for a ROUTER an unknown
         * route fails on frame 0, before anything is queued. */
        while (zmq_send(s->impl, data, frames[i].size, flags) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            char where[64];
            snprintf(where, sizeof where, "frame %zu of %zu", i, n + (more != 0));
            return s_fail(s, "send", where);
        }
    }
    return 0;
}

static int s_send(cm_sock *s, const cm_iov *frames, size_t n)
{
    return s_send_frames(s, frames, n, 0);
}

static void s_free_owned(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* As s_send, but the last frame goes without a copy: zmq frees it (from
 * its I/O thread) once it is written out. */
static int s_send_owned(cm_sock *s, const cm_iov *frames, size_t n, void *owned)
{
    if (frames[n - 1].size < S_OWNED_MIN) {
        /* small: a copy costs less than zmq's bookkeeping for a buffer */
        int rc = s_send_frames(s, frames, n, 0);
        free(owned);
        return rc;
    }
    int rc = s_send_frames(s, frames, n - 1, 1);
    if (rc != 0) {
        free(owned);
        return rc;
    }
    zmq_msg_t m;
    if (zmq_msg_init_data(&m, owned, frames[n - 1].size, s_free_owned, NULL) != 0) {
        free(owned);
        return s_fail(s, "send", "the last frame");
    }
    while (zmq_msg_send(&m, s->impl, 0) < 0) {
        if (zmq_errno() == EINTR)
            continue;
        rc = s_fail(s, "send", "the last frame");
        zmq_msg_close(&m); /* frees owned */
        return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- recv -- */

static void s_frames_release(cm_frames *f)
{
    s_frames *zf = (s_frames *)f;
    for (size_t i = 0; i < f->n; i++)
        zmq_msg_close(&zf->msgs[i]);
    free(zf->msgs);
    free(f->iov);
    free(zf);
}

/* Room for one more message in zf->msgs. zmq_msg_t must only be moved with
 * zmq_msg_move (small messages live inside the struct), so growing moves
 * each one into the new array. */
static int s_frames_reserve(s_frames *zf)
{
    if (zf->base.n < zf->cap)
        return 0;
    size_t cap = zf->cap ? zf->cap * 2 : 4;
    zmq_msg_t *msgs = malloc(cap * sizeof *msgs);
    if (!msgs)
        return CM_ENOMEM;
    for (size_t i = 0; i < zf->base.n; i++) {
        zmq_msg_init(&msgs[i]);
        zmq_msg_move(&msgs[i], &zf->msgs[i]);
        zmq_msg_close(&zf->msgs[i]);
    }
    free(zf->msgs);
    zf->msgs = msgs;
    zf->cap = cap;
    return 0;
}

/* Receives the rest of a message whose first part is available. */
static int s_recv_parts(cm_sock *s, s_frames *zf)
{
    int flags = ZMQ_DONTWAIT;
    for (;;) {
        if (s_frames_reserve(zf) < 0) {
            /* Drain the rest so the next recv starts at a message boundary. */
            zmq_msg_t junk;
            zmq_msg_init(&junk);
            while (zf->base.n && zmq_msg_more(&zf->msgs[zf->base.n - 1]) &&
                   zmq_msg_recv(&junk, s->impl, 0) >= 0 && zmq_msg_more(&junk))
                ;
            zmq_msg_close(&junk);
            return cm_sock_seterr_(s, CM_ENOMEM, "recv: out of memory");
        }
        zmq_msg_t *m = &zf->msgs[zf->base.n];
        zmq_msg_init(m);
        if (zmq_msg_recv(m, s->impl, flags) < 0) {
            int e = zmq_errno();
            zmq_msg_close(m);
            if (e == EINTR)
                continue;
            if (e == EAGAIN && zf->base.n == 0)
                return 1;   /* spurious wake-up: poll again */
            return s_fail(s, "recv", NULL);
        }
        zf->base.n++;
        /* Later parts of a multipart message arrive together with the first. */
        flags = 0;
        if (!zmq_msg_more(m))
            return 0;
    }
}

static int s_recv(cm_sock *s, cm_frames **out, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : s_now_ms() + timeout_ms;
    s_frames *zf = calloc(1, sizeof *zf);
    if (!zf)
        return cm_sock_seterr_(s, CM_ENOMEM, "recv: out of memory");
    zf->base.release = s_frames_release;
    int rc;
    for (;;) {
        zmq_pollitem_t item = {.socket = s->impl, .events = ZMQ_POLLIN};
        long left = s_left(deadline);
        int n = zmq_poll(&item, 1, left);
        if (n < 0) {
            if (zmq_errno() == EINTR)
                continue;
            rc = s_fail(s, "recv: poll", NULL);
            goto out;
        }
        if (n == 0) {
            if (left != 0 && s_left(deadline) != 0)
                continue;   /* woke early */
            rc = cm_sock_seterr_(s, CM_ETIMEDOUT, "recv: nothing within %d ms", timeout_ms);
            goto out;
        }
        rc = s_recv_parts(s, zf);
        if (rc == 1)
            continue;
        if (rc < 0)
            goto out;
        break;
    }
    zf->base.iov = malloc(zf->base.n * sizeof *zf->base.iov);
    if (!zf->base.iov) {
        rc = cm_sock_seterr_(s, CM_ENOMEM, "recv: out of memory");
        goto out;
    }
    /* The messages do not move any more, so pointers to their data hold. */
    for (size_t i = 0; i < zf->base.n; i++) {
        zf->base.iov[i].data = zmq_msg_data(&zf->msgs[i]);
        zf->base.iov[i].size = zmq_msg_size(&zf->msgs[i]);
    }
    *out = &zf->base;
    return 0;
out:
    s_frames_release(&zf->base);
    return rc;
}

/* ---------------------------------------------------------------- poll -- */

static int s_poll(cm_sock **socks, size_t n, int timeout_ms, uint64_t *ready)
{
    zmq_pollitem_t items[64];
    for (size_t i = 0; i < n; i++)
        items[i] = (zmq_pollitem_t){.socket = socks[i]->impl, .events = ZMQ_POLLIN};
    int64_t deadline = timeout_ms < 0 ? -1 : s_now_ms() + timeout_ms;
    for (;;) {
        int rc = zmq_poll(items, (int)n, s_left(deadline));
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            return s_fail(socks[0], "poll", NULL);
        }
        uint64_t bits = 0;
        for (size_t i = 0; i < n; i++)
            if (items[i].revents & ZMQ_POLLIN)
                bits |= (uint64_t)1 << i;
        *ready = bits;
        return 0;
    }
}

/* ---------------------------------------------------------------- new -- */

static const cm_van_ops s_ops = {
    .name = "zmq",
    .destroy = s_destroy,
    .shutdown = s_shutdown,
    .sock_open = s_sock_open,
    .sock_close = s_sock_close,
    .bind = s_bind,
    .connect = s_connect,
    .set_identity = s_set_identity,
    .send = s_send,
    .send_owned = s_send_owned,
    .recv = s_recv,
    .poll = s_poll,
};

cm_van *cm_van_zmq_new_(cm_error *err)
{
    s_van *z = calloc(1, sizeof *z);
    if (!z) {
        cm_error_set(err, CM_ENOMEM, "van: out of memory");
        return NULL;
    }
    atomic_init(&z->n_socks, 0);
    z->ctx = zmq_ctx_new();
    if (!z->ctx) {
        cm_error_set(err, CM_EIO, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        free(z);
        return NULL;
    }
    /* One I/O thread moves a few GB/s; ZMQ_BLOCKY 0 keeps term from waiting
     * on unsent messages. */
    zmq_ctx_set(z->ctx, ZMQ_IO_THREADS, 1);
    zmq_ctx_set(z->ctx, ZMQ_BLOCKY, 0);
    cm_van *v = cm_van_alloc_(&s_ops, z);
    if (!v) {
        zmq_ctx_term(z->ctx);
        free(z);
        cm_error_set(err, CM_ENOMEM, "van: out of memory");
        return NULL;
    }
    return v;
}

/* ------------------------------------- sockets facing outside clients -- */

/* The zmq socket under s (wrapping vans keep theirs in s->inner). */
static void *s_zmq_of(cm_sock *s)
{
    while (s && s->van->ops != &s_ops)
        s = s->inner;
    return s ? s->impl : NULL;
}

int cm_sock_set_limits(cm_sock *s, const cm_sock_limits *l)
{
    void *zs = s ? s_zmq_of(s) : NULL;
    if (!zs || !l)
        return s ? cm_sock_seterr_(s, CM_EINVAL, "limits: not a zmq socket") : CM_EINVAL;
    int64_t max = l->max_msg_bytes > 0 ? l->max_msg_bytes : -1;
    if (zmq_setsockopt(zs, ZMQ_MAXMSGSIZE, &max, sizeof max) != 0)
        return s_fail(s, "setsockopt", "ZMQ_MAXMSGSIZE");
    int rc;
    if ((rc = s_setint(s, zs, ZMQ_RCVHWM, l->rcv_hwm, "ZMQ_RCVHWM")) < 0 ||
        (rc = s_setint(s, zs, ZMQ_SNDHWM, l->snd_hwm, "ZMQ_SNDHWM")) < 0 ||
        (rc = s_setint(s, zs, ZMQ_SNDTIMEO, l->snd_timeout_ms, "ZMQ_SNDTIMEO")) < 0)
        return rc;
    return 0;
}

int cm_sock_set_curve_server(cm_sock *s, const char *secret_z85)
{
    void *zs = s ? s_zmq_of(s) : NULL;
    if (!zs)
        return s ? cm_sock_seterr_(s, CM_EINVAL, "curve: not a zmq socket") : CM_EINVAL;
    if (!zmq_has("curve"))
        return cm_sock_seterr_(s, CM_ENOTSUP, "curve: this libzmq was built without CURVE");
    if (!secret_z85 || strlen(secret_z85) != 40)
        return cm_sock_seterr_(s, CM_EINVAL, "curve: a secret key is 40 Z85 characters");
    int rc = s_setint(s, zs, ZMQ_CURVE_SERVER, 1, "ZMQ_CURVE_SERVER");
    if (rc < 0)
        return rc;
    /* 41 bytes: zmq reads a NUL-terminated Z85 string */
    if (zmq_setsockopt(zs, ZMQ_CURVE_SECRETKEY, secret_z85, 41) != 0)
        return s_fail(s, "setsockopt", "ZMQ_CURVE_SECRETKEY");
    return 0;
}

int cm_curve_keypair(char public_z85[41], char secret_z85[41])
{
    if (!zmq_has("curve"))
        return CM_ENOTSUP;
    return zmq_curve_keypair(public_z85, secret_z85) == 0 ? 0 : CM_EIO;
}

int cm_curve_public(char public_z85[41], const char *secret_z85)
{
    if (!zmq_has("curve"))
        return CM_ENOTSUP;
    if (!secret_z85 || strlen(secret_z85) != 40)
        return CM_EINVAL;
    return zmq_curve_public(public_z85, secret_z85) == 0 ? 0 : CM_EINVAL;
}
