/* van_zmq: the ZeroMQ transport, the only file that includes zmq.h.
 *
 * One zmq context per van. Sockets never linger on close, have no high
 * water mark (pipelined requests are queued, never dropped) and a ROUTER
 * refuses to send to an unknown route (EHOSTUNREACH) instead of silently
 * dropping the message. Received frames keep their zmq_msg_t alive, so
 * reading a frame never copies it. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_SEND_TIMEOUT_MS 30000
#define S_OWNED_MIN 65536 /* bytes from which an owned frame goes uncopied */

#include "common/log.h"
#include "common/van_impl.h"

#define S_ZAP_ENDPOINT "inproc://zeromq.zap.01" /* fixed by ZeroMQ (RFC 27) */
#define S_ZAP_DOMAIN "psrec"
#define S_MON_MAX 64            /* monitored ROUTERs per van */
#define S_SEEN_MAX 32           /* refused peers remembered for the log's rate limit */
#define S_LOG_EVERY_MS 60000    /* one log line per refused peer per minute */

/* A ROUTER whose failed handshakes the handler counts (a peer without keys,
 * or not speaking ZeroMQ at all, never reaches the ZAP request). */
typedef struct {
    int state;                  /* 0 free, 1 new, 2 watched, 3 closed */
    char endpoint[64];          /* the monitor's inproc endpoint */
    void *zs;                   /* the monitored socket */
    void *pair;                 /* the handler's end (handler thread only) */
} s_mon;

/* A refused peer, for the rate limit of its log line. */
typedef struct {
    char who[96];               /* address or endpoint, and why */
    int64_t last_ms;            /* when it was last logged; 0: never */
    uint64_t count;             /* refusals since that line */
} s_seen;

typedef struct {
    void *ctx;                  /* the zmq context */
    atomic_int n_socks;         /* open sockets, so destroy can refuse to hang */
    /* security (all zero until s_secure) */
    int secure;
    cm_van_keys keys;           /* keys.admit points at admit */
    uint8_t *admit;             /* owned copy of the admitted client keys */
    void *zap;                  /* the ZAP REP socket (handler thread once started) */
    pthread_t handler;
    int handler_running;
    atomic_uint_fast64_t refused;
    pthread_mutex_t lock;       /* guards mons[].state/endpoint and mon_seq */
    s_mon mons[S_MON_MAX];
    unsigned mon_seq;
    s_seen seen[S_SEEN_MAX];    /* handler thread only */
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
    if (z->handler_running) {
        /* the handler's sockets see ETERM, close and let it return */
        zmq_ctx_shutdown(z->ctx);
        pthread_join(z->handler, NULL);
    }
    if (open > 0) {
        /* zmq_ctx_term would wait for them forever; leaking is the lesser
         * evil for a programming error that should show up in tests. */
        cm_log(CM_LOG_ERROR, "van: destroyed with %d socket(s) still open; context leaked", open);
        zmq_ctx_shutdown(z->ctx);
    } else {
        while (zmq_ctx_term(z->ctx) != 0 && zmq_errno() == EINTR)
            ;
    }
    /* secret keys do not outlive the van in freed memory */
    memset(&z->keys, 0, sizeof z->keys);
    if (z->secure)
        pthread_mutex_destroy(&z->lock);
    free(z->admit);
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

static int s_setbytes(cm_sock *s, void *zs, int opt, const void *v, size_t n,
                      const char *name)
{
    if (zmq_setsockopt(zs, opt, v, n) != 0)
        return s_fail(s, "setsockopt", name);
    return 0;
}

static void s_mon_add(s_van *z, void *zs);

/* Makes zs (of a secured van) a CURVE server (ROUTER) or client (DEALER). */
static int s_curve(s_van *z, cm_sock *s, void *zs)
{
    int rc;
    const cm_van_keys *k = &z->keys;
    if (s->type == CM_SOCK_ROUTER) {
        static const uint8_t zero[CM_KEY_BYTES];
        if (memcmp(k->server_secret, zero, sizeof zero) == 0)
            return cm_sock_seterr_(s, CM_ESTATE, "van: secured without a server key, so it "
                                                 "cannot make a ROUTER");
        if ((rc = s_setint(s, zs, ZMQ_CURVE_SERVER, 1, "ZMQ_CURVE_SERVER")) < 0 ||
            (rc = s_setbytes(s, zs, ZMQ_CURVE_SECRETKEY, k->server_secret, CM_KEY_BYTES,
                             "ZMQ_CURVE_SECRETKEY")) < 0 ||
            (rc = s_setbytes(s, zs, ZMQ_ZAP_DOMAIN, S_ZAP_DOMAIN, strlen(S_ZAP_DOMAIN),
                             "ZMQ_ZAP_DOMAIN")) < 0)
            return rc;
        if (z->handler_running)
            s_mon_add(z, zs);
        return 0;
    }
    if ((rc = s_setbytes(s, zs, ZMQ_CURVE_SERVERKEY, k->server_public, CM_KEY_BYTES,
                         "ZMQ_CURVE_SERVERKEY")) < 0 ||
        (rc = s_setbytes(s, zs, ZMQ_CURVE_PUBLICKEY, k->public_key, CM_KEY_BYTES,
                         "ZMQ_CURVE_PUBLICKEY")) < 0 ||
        (rc = s_setbytes(s, zs, ZMQ_CURVE_SECRETKEY, k->secret_key, CM_KEY_BYTES,
                         "ZMQ_CURVE_SECRETKEY")) < 0)
        return rc;
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
    if (z->secure && (rc = s_curve(z, s, zs)) < 0)
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

static void s_mon_remove(s_van *z, void *zs);

static void s_sock_close(cm_sock *s)
{
    s_van *z = s->van->impl;
    if (z->handler_running && s->type == CM_SOCK_ROUTER)
        s_mon_remove(z, s->impl);
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
    if (strncmp(endpoint, "ipc://", 6) == 0 && strcmp(endpoint + 6, "*") != 0) {
        if (!s->bound_file && !(s->bound_file = strdup(endpoint + 6)))
            return cm_sock_seterr_(s, CM_ENOMEM, "bind %s: out of memory", endpoint);
        /* only this user may connect to a unix socket (connecting needs
         * write permission on the file): an unencrypted job on one host
         * relies on it (docs/security.md) */
        if (chmod(endpoint + 6, 0600) != 0)
            return cm_sock_seterr_(s, CM_EIO, "bind %s: chmod: %s", endpoint, strerror(errno));
    }
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

/* The rank the ZAP handler gave the connection m came over (its
 * "User-Id"), or CM_PEER_ANY. */
static int s_peer(zmq_msg_t *m)
{
    const char *uid = zmq_msg_gets(m, "User-Id");
    if (!uid || !*uid)
        return CM_PEER_ANY;
    char *end = NULL;
    errno = 0;
    long r = strtol(uid, &end, 10);
    if (errno || *end || r < 0 || r > INT32_MAX)
        return CM_PEER_ANY;
    return (int)r;
}

static int s_recv(cm_sock *s, cm_frames **out, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : s_now_ms() + timeout_ms;
    s_frames *zf = calloc(1, sizeof *zf);
    if (!zf)
        return cm_sock_seterr_(s, CM_ENOMEM, "recv: out of memory");
    zf->base.release = s_frames_release;
    zf->base.peer = CM_PEER_ANY;
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
    zf->base.peer = s_peer(&zf->msgs[zf->base.n - 1]);
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

/* ----------------------------------------------------------- security -- */

int cm_van_can_secure(void)
{
    return zmq_has("curve") != 0;
}

int cm_van_keypair(uint8_t public_key[CM_KEY_BYTES], uint8_t secret_key[CM_KEY_BYTES],
                   cm_error *err)
{
    char zpub[41], zsec[41];
    if (!cm_van_can_secure())
        return cm_error_set(err, CM_ENOTSUP, "van: this libzmq has no CURVE support");
    if (zmq_curve_keypair(zpub, zsec) != 0)
        return cm_error_set(err, CM_EIO, "van: zmq_curve_keypair: %s",
                            zmq_strerror(zmq_errno()));
    int ok = zmq_z85_decode(public_key, zpub) && zmq_z85_decode(secret_key, zsec);
    memset(zsec, 0, sizeof zsec);
    if (!ok)
        return cm_error_set(err, CM_EIO, "van: a fresh CURVE key did not decode");
    return 0;
}

int cm_van_public_of(uint8_t public_key[CM_KEY_BYTES], const uint8_t secret_key[CM_KEY_BYTES],
                     cm_error *err)
{
    char zpub[41], zsec[41];
    if (!cm_van_can_secure())
        return cm_error_set(err, CM_ENOTSUP, "van: this libzmq has no CURVE support");
    cm_van_key_text(zsec, secret_key);
    int ok = zmq_curve_public(zpub, zsec) == 0 && zmq_z85_decode(public_key, zpub);
    memset(zsec, 0, sizeof zsec);
    if (!ok)
        return cm_error_set(err, CM_EIO, "van: zmq_curve_public: %s", zmq_strerror(zmq_errno()));
    return 0;
}

void cm_van_key_text(char text[41], const uint8_t key[CM_KEY_BYTES])
{
    zmq_z85_encode(text, key, CM_KEY_BYTES);
}

int cm_van_key_parse(uint8_t key[CM_KEY_BYTES], const char *text)
{
    return text && strlen(text) == 40 && zmq_z85_decode(key, text) ? 0 : CM_EINVAL;
}

/* Counts a refused handshake and logs it, at most once a minute for the
 * same peer (`who`: its address or the port it reached, and why). */
static void s_refuse(s_van *z, const char *who)
{
    atomic_fetch_add(&z->refused, 1);
    int64_t now = s_now_ms();
    s_seen *e = NULL, *oldest = &z->seen[0];
    for (int i = 0; i < S_SEEN_MAX && !e; i++) {
        if (strcmp(z->seen[i].who, who) == 0)
            e = &z->seen[i];
        else if (z->seen[i].last_ms < oldest->last_ms)
            oldest = &z->seen[i];
    }
    if (!e) {
        /* a new peer takes the place of the one logged longest ago */
        e = oldest;
        memset(e, 0, sizeof *e);
        snprintf(e->who, sizeof e->who, "%s", who);
    }
    e->count++;
    if (e->last_ms && now - e->last_ms < S_LOG_EVERY_MS)
        return;
    cm_log(CM_LOG_WARN, "van: refused %llu connection%s: %s (next report from it in a "
           "minute at the soonest; %llu refused in all)", (unsigned long long)e->count,
           e->count == 1 ? "" : "s", e->who,
           (unsigned long long)atomic_load(&z->refused));
    e->last_ms = now;
    e->count = 0;
}

/* Answers one ZAP request (RFC 27) on the REP socket: admitted when the
 * mechanism is CURVE and the client key is one of the job's; the reply's
 * user id is then the key's index. Returns -1 when the context ends. */
static int s_zap_answer(s_van *z, void *rep)
{
    zmq_msg_t part[8];
    int n = 0, more = 1, rc = 0;
    while (more) {
        zmq_msg_t junk, *m = n < 8 ? &part[n] : &junk;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, rep, 0) < 0) {
            int e = zmq_errno();
            zmq_msg_close(m);
            if (e == EINTR)
                continue;
            rc = e == ETERM ? -1 : 0;
            goto out;
        }
        more = zmq_msg_more(m);
        if (m == &junk)
            zmq_msg_close(m);
        else
            n++;
    }
    /* version, request id, domain, address, routing id, mechanism, key */
    const char *status = "400", *text = "not one of the job's keys";
    char uid[24] = "", who[96];
    char addr[48] = "";
    if (n >= 4) {
        size_t al = zmq_msg_size(&part[3]);
        if (al >= sizeof addr)
            al = sizeof addr - 1;
        memcpy(addr, zmq_msg_data(&part[3]), al);
        for (size_t i = 0; i < al; i++)
            if (addr[i] < 0x20 || addr[i] > 0x7e)
                addr[i] = '?';
    }
    int curve = n >= 7 && zmq_msg_size(&part[5]) == 5 &&
                memcmp(zmq_msg_data(&part[5]), "CURVE", 5) == 0 &&
                zmq_msg_size(&part[6]) == CM_KEY_BYTES;
    if (curve) {
        const uint8_t *key = zmq_msg_data(&part[6]);
        for (size_t i = 0; i < z->keys.n_admit; i++)
            if (memcmp(z->keys.admit + i * CM_KEY_BYTES, key, CM_KEY_BYTES) == 0) {
                status = "200";
                text = "OK";
                snprintf(uid, sizeof uid, "%zu", i);
                break;
            }
    } else {
        text = "not CURVE";
    }
    if (status[0] != '2') {
        snprintf(who, sizeof who, "from %s (%s)", addr[0] ? addr : "a local socket", text);
        s_refuse(z, who);
    }
    const char *reply[6] = {"1.0", NULL, status, text, uid, ""};
    for (int i = 0; i < 6; i++) {
        const void *d = reply[i];
        size_t len = reply[i] ? strlen(reply[i]) : 0;
        if (i == 1) {
            d = n >= 2 ? zmq_msg_data(&part[1]) : "";
            len = n >= 2 ? zmq_msg_size(&part[1]) : 0;
        }
        if (zmq_send(rep, d, len, i < 5 ? ZMQ_SNDMORE : 0) < 0 && zmq_errno() == ETERM) {
            rc = -1;
            break;
        }
    }
out:
    for (int i = 0; i < n; i++)
        zmq_msg_close(&part[i]);
    return rc;
}

/* Reads one monitor event (a failed handshake on a ROUTER): counted as a
 * refused peer, known only by the endpoint it reached. -1 on ETERM. */
static int s_mon_event(s_van *z, void *pair)
{
    zmq_msg_t ev, ep;
    zmq_msg_init(&ev);
    zmq_msg_init(&ep);
    int rc = 0;
    if (zmq_msg_recv(&ev, pair, 0) < 0) {
        rc = zmq_errno() == ETERM ? -1 : 0;
        goto out;
    }
    if (!zmq_msg_more(&ev) || zmq_msg_recv(&ep, pair, 0) < 0) {
        rc = zmq_errno() == ETERM ? -1 : 0;
        goto out;
    }
    if (zmq_msg_size(&ev) >= 2) {
        uint16_t what;
        memcpy(&what, zmq_msg_data(&ev), sizeof what);
        char who[96];
        int len = (int)(zmq_msg_size(&ep) < 60 ? zmq_msg_size(&ep) : 60);
        snprintf(who, sizeof who, "at %.*s (%s)", len, (const char *)zmq_msg_data(&ep),
                 what == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                     ? "no keys, or not ZeroMQ: the handshake failed"
                     : "the handshake failed");
        s_refuse(z, who);
    }
out:
    zmq_msg_close(&ev);
    zmq_msg_close(&ep);
    return rc;
}

/* Registers a ROUTER's failed handshakes with the handler (any thread). */
static void s_mon_add(s_van *z, void *zs)
{
    pthread_mutex_lock(&z->lock);
    for (int i = 0; i < S_MON_MAX; i++) {
        s_mon *m = &z->mons[i];
        if (m->state != 0)
            continue;
        snprintf(m->endpoint, sizeof m->endpoint, "inproc://psrec-mon-%p-%u", (void *)z,
                 z->mon_seq++);
        if (zmq_socket_monitor(zs, m->endpoint, ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                                    ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) == 0) {
            m->state = 1;
            m->zs = zs;
        } else {
            cm_log(CM_LOG_DEBUG, "van: cannot monitor a socket: %s", zmq_strerror(zmq_errno()));
        }
        break;
    }
    pthread_mutex_unlock(&z->lock);
}

/* Forgets a ROUTER's monitor before the socket goes; the handler closes
 * its end. */
static void s_mon_remove(s_van *z, void *zs)
{
    zmq_socket_monitor(zs, NULL, 0);
    pthread_mutex_lock(&z->lock);
    for (int i = 0; i < S_MON_MAX; i++)
        if (z->mons[i].state != 0 && z->mons[i].zs == zs)
            z->mons[i].state = z->mons[i].state == 1 ? 0 : 3;
    pthread_mutex_unlock(&z->lock);
}

/* The handler: ZAP requests and the monitors' events, until the context
 * ends. Only this thread touches the REP socket and the PAIR ends. */
static void *s_handler_main(void *arg)
{
    s_van *z = arg;
    for (;;) {
        zmq_pollitem_t items[1 + S_MON_MAX];
        int idx[1 + S_MON_MAX];
        int n = 0;
        items[n] = (zmq_pollitem_t){.socket = z->zap, .events = ZMQ_POLLIN};
        idx[n++] = -1;
        pthread_mutex_lock(&z->lock);
        for (int i = 0; i < S_MON_MAX; i++) {
            s_mon *m = &z->mons[i];
            if (m->state == 3) {
                if (m->pair)
                    zmq_close(m->pair);
                m->pair = NULL;
                m->state = 0;
            }
            if (m->state == 1) {
                m->pair = zmq_socket(z->ctx, ZMQ_PAIR);
                if (m->pair && zmq_connect(m->pair, m->endpoint) == 0) {
                    m->state = 2;
                } else {
                    if (m->pair)
                        zmq_close(m->pair);
                    m->pair = NULL;
                    m->state = 0;
                }
            }
            if (m->state == 2) {
                items[n] = (zmq_pollitem_t){.socket = m->pair, .events = ZMQ_POLLIN};
                idx[n++] = i;
            }
        }
        pthread_mutex_unlock(&z->lock);
        /* new monitors are picked up within this bound */
        int rc = zmq_poll(items, n, 200);
        if (rc < 0 && zmq_errno() == ETERM)
            break;
        if (rc <= 0)
            continue;
        int end = 0;
        if ((items[0].revents & ZMQ_POLLIN) && s_zap_answer(z, z->zap) < 0)
            end = 1;
        for (int k = 1; k < n && !end; k++)
            if ((items[k].revents & ZMQ_POLLIN) && s_mon_event(z, z->mons[idx[k]].pair) < 0)
                end = 1;
        if (end)
            break;
    }
    pthread_mutex_lock(&z->lock);
    for (int i = 0; i < S_MON_MAX; i++)
        if (z->mons[i].pair) {
            zmq_close(z->mons[i].pair);
            z->mons[i].pair = NULL;
            z->mons[i].state = 0;
        }
    pthread_mutex_unlock(&z->lock);
    zmq_close(z->zap);
    z->zap = NULL;
    return NULL;
}

static int s_secure(cm_van *v, const cm_van_keys *k, cm_error *err)
{
    s_van *z = v->impl;
    if (z->secure)
        return cm_error_set(err, CM_ESTATE, "van: already secured");
    if (atomic_load(&z->n_socks) > 0)
        return cm_error_set(err, CM_ESTATE, "van: secure it before it makes sockets");
    if (!cm_van_can_secure())
        return cm_error_set(err, CM_ENOTSUP, "van: this libzmq has no CURVE support");
    if (k->n_admit) {
        if (!(z->admit = malloc(k->n_admit * CM_KEY_BYTES)))
            return cm_error_set(err, CM_ENOMEM, "van: out of memory for %zu keys", k->n_admit);
        memcpy(z->admit, k->admit, k->n_admit * CM_KEY_BYTES);
    }
    z->keys = *k;
    z->keys.admit = z->admit;
    pthread_mutex_init(&z->lock, NULL);
    z->secure = 1;
    if (!k->n_admit)
        return 0;   /* any client that knows the server key: no handler */
    /* The handler's socket is made here so that a failure is this call's
     * error; the thread owns it from its start on. */
    z->zap = zmq_socket(z->ctx, ZMQ_REP);
    int linger = 0;
    if (!z->zap || zmq_setsockopt(z->zap, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(z->zap, S_ZAP_ENDPOINT) != 0) {
        int e = zmq_errno();
        if (z->zap)
            zmq_close(z->zap);
        z->zap = NULL;
        z->secure = 0;
        return cm_error_set(err, CM_EIO, "van: the authentication handler cannot listen: %s",
                            zmq_strerror(e));
    }
    int rc = pthread_create(&z->handler, NULL, s_handler_main, z);
    if (rc != 0) {
        zmq_close(z->zap);
        z->zap = NULL;
        z->secure = 0;
        return cm_error_set(err, CM_ENOMEM, "van: cannot start the authentication handler: %s",
                            strerror(rc));
    }
    z->handler_running = 1;
    return 0;
}

static int s_is_secure(const cm_van *v)
{
    const s_van *z = v->impl;
    return z->secure;
}

static uint64_t s_refused(const cm_van *v)
{
    s_van *z = v->impl;
    return atomic_load(&z->refused);
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
    .secure = s_secure,
    .is_secure = s_is_secure,
    .refused = s_refused,
};

cm_van *cm_van_zmq_new_(cm_error *err)
{
    s_van *z = calloc(1, sizeof *z);
    if (!z) {
        cm_error_set(err, CM_ENOMEM, "van: out of memory");
        return NULL;
    }
    atomic_init(&z->n_socks, 0);
    atomic_init(&z->refused, 0);
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
