#define _GNU_SOURCE
#include "serve/service.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/codec.h"
#include "common/log.h"
#include "serve/score.h"

#define S_MAX_THREADS 64
/* Messages ZeroMQ queues per client before it stops reading that client
 * (each at most max_msg_bytes), and replies it holds for a client that
 * does not read them; a reply beyond that is dropped, never waited for. */
#define S_CLIENT_RCV_HWM 8
#define S_CLIENT_SND_HWM 256
/* How often a worker waiting for work checks that it should stop. */
#define S_WORKER_WAKE_MS 200

/* What identifies one version of the model file on disk. */
typedef struct {
    int valid;
    dev_t dev;
    ino_t ino;
    struct timespec mtime;
    off_t size;
} s_sig;

/* A model version and how many holders it has: the server while it is
 * current, plus each worker answering a request with it. Counted only by
 * the server thread (workers say when they are done by replying), so it
 * needs no atomics. */
typedef struct {
    sv_model *m;
    uint64_t version;
    int refs;
} s_held;

/* What the server thread sends a worker ahead of a request's frames. */
typedef struct {
    s_held *held;                  /* NULL: stop */
    uint32_t max_k, max_exclude;
} s_job;

/* One worker: its thread and, while it answers, what it holds. Fields
 * other than th and the stop flag are the server thread's. */
typedef struct {
    pthread_t th;
    int started;
    struct sv_service *srv;
    uint8_t id[2];                 /* its route on the backend: 'w', index */
    int ready;                     /* said hello, not answering a request */
    s_held *held;                  /* model of the request it answers */
    uint8_t route[256];            /* client of that request */
    size_t route_len;
} s_worker;

struct sv_service {
    sv_service_params p;            /* copy; strings below are owned */
    char path[4096];               /* the model file polled */
    char endpoint[CM_ENDPOINT_MAX];
    char backend[64];              /* inproc endpoint the workers connect to */
    cm_van *van;                   /* not owned */
    cm_sock *sock;                 /* ROUTER facing the clients */
    cm_sock *back;                 /* ROUTER facing the workers */
    s_held *cur;                   /* the model being served */
    s_worker workers[S_MAX_THREADS];
    cm_frames **pending;           /* queue: requests waiting for a worker */
    size_t n_pending;
    s_sig cur_sig;                 /* the file the model came from */
    s_sig failed;                  /* the last file that failed to load */
    int64_t last_check_ms;
    int64_t last_drop_log_ms;      /* a reply dropped: logged at most 1/min */
    uint64_t dropped;
    uint64_t received;
    atomic_int stop_workers;
    _Atomic uint64_t version;
    _Atomic uint64_t requests;
    _Atomic uint64_t dispatched;
};

sv_service_params sv_service_params_default(void)
{
    return (sv_service_params){.model = NULL, .bind = NULL, .poll_ms = 200,
                              .max_requests = 0, .max_k = 1000, .max_exclude = 100000,
                              .max_msg_bytes = 1 << 20, .threads = 4, .queue = 64,
                              .curve_secret = NULL};
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static s_sig s_sig_of(const struct stat *st)
{
    return (s_sig){1, st->st_dev, st->st_ino, st->st_mtim, st->st_size};
}

static int s_sig_eq(const s_sig *a, const s_sig *b)
{
    return a->valid && b->valid && a->dev == b->dev && a->ino == b->ino &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->size == b->size;
}

/* Opens the model file, noting exactly which file was read. */
static sv_model *s_load(const char *path, s_sig *sig, cm_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cm_error_set(err, errno == ENOENT ? CM_ENOTFOUND : CM_EIO, "%s: %s", path,
                     strerror(errno));
        return NULL;
    }
    struct stat st;
    sv_model *m = NULL;
    if (fstat(fd, &st) != 0) {
        cm_error_set(err, CM_EIO, "%s: %s", path, strerror(errno));
    } else {
        *sig = s_sig_of(&st);
        m = sv_model_open_fd(fd, path, err);
    }
    close(fd);
    return m;
}

static s_held *s_held_new(sv_model *m, uint64_t version)
{
    s_held *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->m = m;
    h->version = version;
    h->refs = 1;
    return h;
}

static void s_held_release(s_held **ph)
{
    s_held *h = *ph;
    *ph = NULL;
    if (h && --h->refs == 0) {
        sv_model_destroy(&h->m);
        free(h);
    }
}

/* ---------------------------------------------------------- requests -- */

/* Sets an error reply (the text is cut to the reply's 255 characters). */
static void s_fail(cm_rec_reply *rep, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void s_fail(cm_rec_reply *rep, int status, const char *fmt, ...)
{
    rep->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->error, sizeof rep->error, fmt, ap);
    va_end(ap);
}

/* Reads a protobuf varint at *p (< end); 0, or -1 when cut short. */
static int s_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* Counts the excluded ids (RecRequest field 3, packed or not) on the wire,
 * so that a list over the limit is refused before it is decoded and
 * allocated. Stops early at malformed bytes: decoding reports those. */
static size_t s_count_exclude(const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    size_t n = 0;
    while (p < end) {
        uint64_t tag, v;
        if (s_varint(&p, end, &tag) != 0)
            break;
        const unsigned field = (unsigned)(tag >> 3), type = (unsigned)(tag & 7);
        if (type == 0) {
            if (s_varint(&p, end, &v) != 0)
                break;
            n += field == 3;
        } else if (type == 2) {
            if (s_varint(&p, end, &v) != 0 || v > (uint64_t)(end - p))
                break;
            if (field == 3)
                for (uint64_t i = 0; i < v; i++)
                    n += !(p[i] & 0x80);   /* each varint ends on a byte < 0x80 */
            p += v;
        } else if (type == 1 || type == 5) {
            size_t skip = type == 1 ? 8 : 4;
            if ((size_t)(end - p) < skip)
                break;
            p += skip;
        } else {
            break;
        }
    }
    return n;
}

/* A worker's scratch: scorer and reply arrays of max_k entries. */
typedef struct {
    sv_scorer *scorer;
    sv_hit *hits;
    uint64_t *items;
    float *scores;
} s_scratch;

/* Fills rep for one request payload. */
static void s_answer(const s_job *job, s_scratch *w, const void *data, size_t size,
                     cm_rec_reply *rep)
{
    cm_rec_request req = {0};
    cm_error err = {0};
    const size_t n_ex = s_count_exclude(data, size);
    if (n_ex > job->max_exclude) {
        s_fail(rep, CM_ERANGE, "exclude list has %zu ids; the limit is %u (--max-exclude)",
               n_ex, job->max_exclude);
        return;
    }
    if (cm_codec_rec_request_unpack(data, size, &req, &err) != 0) {
        s_fail(rep, err.code ? err.code : CM_EPROTO, "bad RecRequest: %s",
               err.msg[0] ? err.msg : cm_strerror(CM_EPROTO));
    } else if (req.k == 0 || req.k > job->max_k) {
        s_fail(rep, CM_ERANGE, "k = %u: must be 1..%u (--max-k)", req.k, job->max_k);
    } else {
        size_t n = 0;
        int fb = 0;
        int rc = sv_recommend(w->scorer, job->held->m, req.user, req.k, req.exclude,
                              req.n_exclude, w->hits, &n, &fb, &err);
        if (rc != 0) {
            s_fail(rep, rc, "%s", err.msg);
        } else {
            for (size_t j = 0; j < n; j++) {
                w->items[j] = w->hits[j].item;
                w->scores[j] = w->hits[j].score;
            }
            rep->n = n;
            rep->items = w->items;
            rep->scores = w->scores;
            rep->fallback = fb;
        }
    }
    free(req.exclude);
}

/* Answers one job: f is [job][route][payload] or [job][route][empty][payload];
 * sends [route]([empty])[RecReply] back to the server thread. */
static void s_work(cm_sock *sock, s_scratch *w, cm_frames *f)
{
    s_job job;
    memcpy(&job, cm_frames_data(f, 0), sizeof job);
    const size_t nf = cm_frames_count(f) - 1;   /* the client's frames */
    cm_rec_reply rep = {0};
    size_t head = 1;   /* envelope frames echoed back */
    if (nf == 3 && cm_frames_size(f, 2) == 0)
        head = 2;
    rep.model_version = job.held->version;
    if (nf != head + 1)
        s_fail(&rep, CM_EPROTO, "expected one RecRequest frame after the route, got %zu frames",
               nf - 1);
    else
        s_answer(&job, w, cm_frames_data(f, 1 + head), cm_frames_size(f, 1 + head), &rep);
    if (rep.status != 0)
        cm_log(CM_LOG_DEBUG, "serve: error reply: %s", rep.error);

    uint8_t *buf = NULL;
    size_t len = 0;
    cm_iov iov[3];
    for (size_t i = 0; i < head; i++)
        iov[i] = (cm_iov){cm_frames_data(f, 1 + i), cm_frames_size(f, 1 + i)};
    if (cm_codec_rec_reply_pack(&rep, &buf, &len) != 0) {
        /* the server thread still hears back, so the worker is freed;
         * an empty frame tells it there is no reply to pass on */
        cm_log(CM_LOG_ERROR, "serve: cannot pack a reply (out of memory)");
        len = 0;
    }
    iov[head] = (cm_iov){buf, len};
    if (cm_sock_send(sock, iov, head + 1) != 0)
        cm_log(CM_LOG_DEBUG, "serve: worker: %s", cm_sock_errmsg(sock));
    free(buf);
}

static void *s_worker_main(void *arg)
{
    s_worker *wk = arg;
    sv_service *s = wk->srv;
    cm_error err = {0};
    s_scratch w = {0};
    cm_sock *sock = cm_sock_new(s->van, CM_SOCK_DEALER, &err);
    w.scorer = sv_scorer_new(&err);
    w.hits = malloc(s->p.max_k * sizeof *w.hits);
    w.items = malloc(s->p.max_k * sizeof *w.items);
    w.scores = malloc(s->p.max_k * sizeof *w.scores);
    const cm_iov hello = {"", 0};
    if (!sock || !w.scorer || !w.hits || !w.items || !w.scores ||
        cm_sock_set_identity(sock, wk->id, sizeof wk->id) != 0 ||
        cm_sock_connect(sock, s->backend) != 0 || cm_sock_send(sock, &hello, 1) != 0) {
        /* the server never hears from this worker, so never gives it work */
        cm_log(CM_LOG_ERROR, "serve: worker %d cannot start: %s", wk->id[1],
               sock ? cm_sock_errmsg(sock) : err.msg);
        goto out;
    }
    while (!atomic_load(&s->stop_workers)) {
        cm_frames *f = NULL;
        int rc = cm_sock_recv(sock, &f, S_WORKER_WAKE_MS);
        if (rc == CM_ETIMEDOUT)
            continue;
        if (rc != 0)
            break;   /* the van was shut down */
        s_job job = {0};
        if (cm_frames_count(f) >= 2 && cm_frames_size(f, 0) == sizeof job)
            memcpy(&job, cm_frames_data(f, 0), sizeof job);
        if (!job.held) {
            cm_frames_destroy(&f);
            break;
        }
        s_work(sock, &w, f);
        cm_frames_destroy(&f);
    }
out:
    cm_sock_destroy(&sock);
    sv_scorer_destroy(&w.scorer);
    free(w.hits);
    free(w.items);
    free(w.scores);
    return NULL;
}

/* --------------------------------------------------------- lifecycle -- */

/* Secures van with the server's CURVE key pair: its ROUTER is a CURVE
 * server that any client knowing the public key may reach (no admit
 * list); the inproc sockets to the workers have no handshake. */
static int s_secure(cm_van *van, const uint8_t *secret, cm_error *err)
{
    cm_van_keys k;
    memset(&k, 0, sizeof k);
    memcpy(k.server_secret, secret, CM_KEY_BYTES);
    int rc = cm_van_public_of(k.server_public, k.server_secret, err);
    if (rc == 0)
        rc = cm_van_secure(van, &k, err);
    memset(&k, 0, sizeof k);
    if (rc != 0)
        cm_error_prefix(err, "serve: CURVE key");
    return rc;
}

/* Applies the limits to the client socket and binds it. */
static int s_bind_front(sv_service *s, const sv_service_params *p, cm_error *err)
{
    const cm_sock_limits lim = {.max_msg_bytes = s->p.max_msg_bytes,
                                .rcv_hwm = S_CLIENT_RCV_HWM,
                                .snd_hwm = S_CLIENT_SND_HWM,
                                .snd_timeout_ms = 0};
    if (cm_sock_set_limits(s->sock, &lim) != 0)
        return cm_error_set(err, CM_EINVAL, "serve: socket limits: %s",
                            cm_sock_errmsg(s->sock));
    if (cm_sock_bind(s->sock, p->bind, s->endpoint) != 0)
        return cm_error_set(err, CM_EIO, "serve: cannot bind %s: %s", p->bind,
                            cm_sock_errmsg(s->sock));
    return 0;
}

sv_service *sv_service_new(cm_van *van, const sv_service_params *p, cm_error *err)
{
    if (!p->model || !p->bind) {
        cm_error_set(err, CM_EINVAL, "serve: a model and an endpoint are needed");
        return NULL;
    }
    if (p->threads > S_MAX_THREADS) {
        cm_error_set(err, CM_ERANGE, "serve: %u threads: at most %d", p->threads,
                     S_MAX_THREADS);
        return NULL;
    }
    if (p->max_msg_bytes < 0) {
        cm_error_set(err, CM_ERANGE, "serve: max_msg_bytes %lld is negative",
                     (long long)p->max_msg_bytes);
        return NULL;
    }
    sv_service *s = calloc(1, sizeof *s);
    if (!s) {
        cm_error_set(err, CM_ENOMEM, "serve: out of memory");
        return NULL;
    }
    s->p = *p;
    if (s->p.poll_ms <= 0)
        s->p.poll_ms = 200;
    if (s->p.max_k == 0)
        s->p.max_k = 1000;
    if (s->p.threads == 0)
        s->p.threads = 4;
    if (s->p.queue == 0)
        s->p.queue = 64;
    s->p.model = s->p.bind = NULL;   /* not kept: the caller's strings and key */
    s->p.curve_secret = NULL;
    s->van = van;
    sv_model_path(p->model, s->path, sizeof s->path);
    sv_model *m = s_load(s->path, &s->cur_sig, err);
    if (!m)
        goto fail;
    s->cur = s_held_new(m, 1);
    s->pending = calloc(s->p.queue, sizeof *s->pending);
    if (!s->cur || !s->pending) {
        if (!s->cur)
            sv_model_destroy(&m);
        cm_error_set(err, CM_ENOMEM, "serve: out of memory");
        goto fail;
    }
    if (p->curve_secret && s_secure(van, p->curve_secret, err) != 0)
        goto fail;
    s->sock = cm_sock_new(van, CM_SOCK_ROUTER, err);
    s->back = s->sock ? cm_sock_new(van, CM_SOCK_ROUTER, err) : NULL;
    if (!s->back)
        goto fail;
    if (s_bind_front(s, p, err) != 0)
        goto fail;
    snprintf(s->backend, sizeof s->backend, "inproc://serve-workers-%p", (void *)s);
    if (cm_sock_bind(s->back, s->backend, NULL) != 0) {
        cm_error_set(err, CM_EIO, "serve: cannot bind %s: %s", s->backend,
                     cm_sock_errmsg(s->back));
        goto fail;
    }
    atomic_store(&s->version, 1);
    for (uint32_t i = 0; i < s->p.threads; i++) {
        s_worker *wk = &s->workers[i];
        wk->srv = s;
        wk->id[0] = 'w';
        wk->id[1] = (uint8_t)i;
        if (pthread_create(&wk->th, NULL, s_worker_main, wk) != 0) {
            cm_error_set(err, CM_ENOMEM, "serve: cannot start worker %u", i);
            goto fail;
        }
        wk->started = 1;
    }
    s->last_check_ms = s_now_ms();
    return s;
fail:
    sv_service_destroy(&s);
    return NULL;
}

void sv_service_destroy(sv_service **ps)
{
    if (!ps || !*ps)
        return;
    sv_service *s = *ps;
    /* Workers notice the flag within S_WORKER_WAKE_MS; a stop job wakes
     * the idle ones at once (the send fails harmlessly after a shutdown). */
    atomic_store(&s->stop_workers, 1);
    for (uint32_t i = 0; i < S_MAX_THREADS; i++) {
        s_worker *wk = &s->workers[i];
        if (!wk->started)
            continue;
        if (wk->ready) {
            s_job stop = {0};
            cm_iov iov[3] = {{wk->id, sizeof wk->id}, {&stop, sizeof stop}, {"", 0}};
            (void)cm_sock_send(s->back, iov, 3);
        }
        pthread_join(wk->th, NULL);
        s_held_release(&wk->held);
    }
    for (size_t i = 0; i < s->n_pending; i++)
        cm_frames_destroy(&s->pending[i]);
    free(s->pending);
    cm_sock_destroy(&s->sock);
    cm_sock_destroy(&s->back);
    s_held_release(&s->cur);
    free(s);
    *ps = NULL;
}

const char *sv_service_endpoint(const sv_service *s) { return s->endpoint; }
uint64_t sv_service_model_version(const sv_service *s) { return atomic_load(&s->version); }
uint64_t sv_service_requests(const sv_service *s) { return atomic_load(&s->requests); }
uint64_t sv_service_dispatched(const sv_service *s) { return atomic_load(&s->dispatched); }

/* ------------------------------------------------------------ reload -- */

static void s_maybe_reload(sv_service *s)
{
    int64_t now = s_now_ms();
    if (now - s->last_check_ms < s->p.poll_ms)
        return;
    s->last_check_ms = now;
    struct stat st;
    if (stat(s->path, &st) != 0)
        return;   /* gone for now: keep serving what we have */
    s_sig sig = s_sig_of(&st);
    if (s_sig_eq(&sig, &s->cur_sig) || s_sig_eq(&sig, &s->failed))
        return;
    cm_error err = {0};
    s_sig got = {0};
    sv_model *m = s_load(s->path, &got, &err);
    if (!m) {
        /* torn or corrupt: the old model keeps serving until the file changes */
        s->failed = got.valid ? got : sig;
        cm_log(CM_LOG_WARN, "serve: not reloading: %s; still serving version %llu", err.msg,
               (unsigned long long)atomic_load(&s->version));
        return;
    }
    const uint64_t v = atomic_load(&s->version) + 1;
    s_held *h = s_held_new(m, v);
    if (!h) {
        sv_model_destroy(&m);
        cm_log(CM_LOG_WARN, "serve: not reloading: out of memory");
        return;
    }
    /* workers still answering with the old model hold it until they reply */
    s_held_release(&s->cur);
    s->cur = h;
    s->cur_sig = got;
    s->failed.valid = 0;
    atomic_store(&s->version, v);
    cm_log(CM_LOG_INFO, "serve: reloaded %s: version %llu, %zu users, %zu items", s->path,
           (unsigned long long)v, sv_model_n_users(m), sv_model_n_items(m));
}

/* ---------------------------------------------------------- dispatch -- */

static int s_route_busy(const sv_service *s, const cm_frames *f)
{
    const size_t len = cm_frames_size(f, 0);
    for (uint32_t i = 0; i < s->p.threads; i++) {
        const s_worker *wk = &s->workers[i];
        if (wk->held && wk->route_len == len && memcmp(wk->route, cm_frames_data(f, 0), len) == 0)
            return 1;
    }
    return 0;
}

/* Hands f to worker wk: [wk][job][f's frames]. 0, or the send's error
 * (then f stays with the caller). */
static int s_give(sv_service *s, s_worker *wk, cm_frames *f)
{
    const size_t nf = cm_frames_count(f);
    s_job job = {.held = s->cur, .max_k = s->p.max_k, .max_exclude = s->p.max_exclude};
    cm_iov stack[8];
    cm_iov *iov = nf + 2 <= 8 ? stack : malloc((nf + 2) * sizeof *iov);
    if (!iov)
        return CM_ENOMEM;
    iov[0] = (cm_iov){wk->id, sizeof wk->id};
    iov[1] = (cm_iov){&job, sizeof job};
    for (size_t i = 0; i < nf; i++)
        iov[2 + i] = (cm_iov){cm_frames_data(f, i), cm_frames_size(f, i)};
    int rc = cm_sock_send(s->back, iov, nf + 2);
    if (iov != stack)
        free(iov);
    if (rc != 0)
        return rc;
    s->cur->refs++;
    wk->held = s->cur;
    wk->ready = 0;
    wk->route_len = cm_frames_size(f, 0);
    memcpy(wk->route, cm_frames_data(f, 0), wk->route_len);
    atomic_fetch_add(&s->dispatched, 1);
    return 0;
}

/* Gives waiting requests, oldest first, to idle workers; a request whose
 * client has one with a worker waits (so that client's replies stay in
 * order), and so do the ones behind it from the same client. */
static int s_dispatch(sv_service *s)
{
    size_t kept = 0;
    uint32_t next = 0;
    for (size_t i = 0; i < s->n_pending; i++) {
        cm_frames *f = s->pending[i];
        s_worker *idle = NULL;
        for (; next < s->p.threads && !idle; next++)
            if (s->workers[next].ready)
                idle = &s->workers[next];
        if (idle && s_route_busy(s, f)) {
            next--;   /* this worker stays idle for the next request */
            idle = NULL;
        }
        if (idle) {
            int rc = s_give(s, idle, f);
            if (rc == CM_ECLOSED)
                return rc;
            if (rc == 0) {
                cm_frames_destroy(&f);
                continue;
            }
            cm_log(CM_LOG_ERROR, "serve: cannot hand a request to a worker: %s",
                   cm_sock_errmsg(s->back));
        }
        s->pending[kept++] = f;
    }
    s->n_pending = kept;
    return 0;
}

/* A worker spoke: hello ([id][empty]) or a reply ([id][route]...[RecReply]),
 * which goes to the client. */
static int s_from_worker(sv_service *s, cm_frames *f)
{
    const size_t nf = cm_frames_count(f);
    const uint8_t *id = cm_frames_data(f, 0);
    if (nf < 2 || cm_frames_size(f, 0) != 2 || id[1] >= s->p.threads)
        return 0;   /* cannot happen: only our workers connect to inproc */
    s_worker *wk = &s->workers[id[1]];
    wk->ready = 1;
    if (!wk->held)
        return 0;   /* hello */
    s_held_release(&wk->held);
    wk->route_len = 0;
    if (cm_frames_size(f, nf - 1) == 0)
        return 0;   /* the worker could not make a reply */
    cm_iov iov[3];
    const size_t n = nf - 1 < 3 ? nf - 1 : 3;
    for (size_t i = 0; i < n; i++)
        iov[i] = (cm_iov){cm_frames_data(f, 1 + i), cm_frames_size(f, 1 + i)};
    /* counted before the send, so a client holding its reply sees it */
    atomic_fetch_add(&s->requests, 1);
    int rc = cm_sock_send(s->sock, iov, n);
    if (rc == CM_ECLOSED)
        return rc;
    if (rc != 0) {
        /* the client is gone, or does not read its replies: never wait for it */
        s->dropped++;
        int64_t now = s_now_ms();
        if (now - s->last_drop_log_ms >= 60000) {
            s->last_drop_log_ms = now;
            cm_log(CM_LOG_WARN, "serve: a reply was dropped (%llu so far): %s",
                   (unsigned long long)s->dropped, cm_sock_errmsg(s->sock));
        }
    }
    return 0;
}

/* Receives what is waiting on sock, at most `most` messages; each goes to
 * the worker handler or the pending queue. */
static int s_drain(sv_service *s, cm_sock *sock, size_t most)
{
    for (size_t i = 0; i < most; i++) {
        cm_frames *f = NULL;
        int rc = cm_sock_recv(sock, &f, 0);
        if (rc == CM_ETIMEDOUT)
            return 0;
        if (rc != 0)
            return rc;
        if (sock == s->back) {
            rc = s_from_worker(s, f);
            cm_frames_destroy(&f);
            if (rc != 0)
                return rc;
        } else {
            s->pending[s->n_pending++] = f;
            s->received++;
        }
    }
    return 0;
}

static int s_busy(const sv_service *s)
{
    for (uint32_t i = 0; i < s->p.threads; i++)
        if (s->workers[i].held)
            return 1;
    return 0;
}

int sv_service_run(sv_service *s, atomic_int *stop)
{
    const uint64_t max = s->p.max_requests;
    int rc = 0;
    while (!(stop && atomic_load(stop))) {
        /* after max_requests, stop reading and finish what was taken */
        const int taking = !max || s->received < max;
        if (!taking && s->n_pending == 0 && !s_busy(s))
            break;
        s_maybe_reload(s);
        cm_sock *socks[2] = {s->back, s->sock};
        const int read_clients = taking && s->n_pending < s->p.queue;
        uint64_t ready = 0;
        rc = cm_sock_poll(socks, read_clients ? 2 : 1, s->p.poll_ms, &ready);
        if (rc == 0 && (ready & 1))
            rc = s_drain(s, s->back, S_MAX_THREADS);
        if (rc == 0 && (ready & 2)) {
            size_t room = s->p.queue - s->n_pending;
            if (max && max - s->received < room)
                room = (size_t)(max - s->received);
            rc = s_drain(s, s->sock, room);
        }
        if (rc == 0)
            rc = s_dispatch(s);
        if (rc == CM_ECLOSED)
            return 0;
        if (rc != 0) {
            cm_log(CM_LOG_ERROR, "serve: receive failed: %s", cm_sock_errmsg(s->sock));
            return rc;
        }
    }
    return 0;
}
