#define _GNU_SOURCE
#include "serve/server.h"

#include <errno.h>
#include <fcntl.h>
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

/* What identifies one version of the model file on disk. */
typedef struct {
    int valid;
    dev_t dev;
    ino_t ino;
    struct timespec mtime;
    off_t size;
} s_sig;

struct sv_server {
    sv_server_params p;            /* copy; strings below are owned */
    char path[4096];               /* the model file polled */
    char endpoint[CM_ENDPOINT_MAX];
    cm_sock *sock;                 /* ROUTER */
    sv_model *model;               /* being served */
    sv_scorer *scorer;
    sv_hit *hits;                  /* max_k */
    uint64_t *items;               /* max_k, reply arrays */
    float *scores;
    s_sig cur;                     /* the file the model came from */
    s_sig failed;                  /* the last file that failed to load */
    int64_t last_check_ms;
    _Atomic uint64_t version;
    _Atomic uint64_t requests;
};

sv_server_params sv_server_params_default(void)
{
    return (sv_server_params){.model = NULL, .bind = NULL, .poll_ms = 200,
                              .max_requests = 0, .max_k = 1000};
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

/* --------------------------------------------------------- lifecycle -- */

sv_server *sv_server_new(cm_van *van, const sv_server_params *p, cm_error *err)
{
    if (!p->model || !p->bind) {
        cm_error_set(err, CM_EINVAL, "serve: a model and an endpoint are needed");
        return NULL;
    }
    sv_server *s = calloc(1, sizeof *s);
    if (!s) {
        cm_error_set(err, CM_ENOMEM, "serve: out of memory");
        return NULL;
    }
    s->p = *p;
    if (s->p.poll_ms <= 0)
        s->p.poll_ms = 200;
    if (s->p.max_k == 0)
        s->p.max_k = 1000;
    s->p.model = s->p.bind = NULL;   /* not kept: the caller's strings */
    sv_model_path(p->model, s->path, sizeof s->path);
    s->model = s_load(s->path, &s->cur, err);
    if (!s->model)
        goto fail;
    s->scorer = sv_scorer_new(err);
    s->hits = malloc(s->p.max_k * sizeof *s->hits);
    s->items = malloc(s->p.max_k * sizeof *s->items);
    s->scores = malloc(s->p.max_k * sizeof *s->scores);
    if (!s->scorer || !s->hits || !s->items || !s->scores) {
        cm_error_set(err, CM_ENOMEM, "serve: out of memory");
        goto fail;
    }
    s->sock = cm_sock_new(van, CM_SOCK_ROUTER, err);
    if (!s->sock)
        goto fail;
    if (cm_sock_bind(s->sock, p->bind, s->endpoint) != 0) {
        cm_error_set(err, CM_EIO, "serve: cannot bind %s: %s", p->bind,
                     cm_sock_errmsg(s->sock));
        goto fail;
    }
    atomic_store(&s->version, 1);
    s->last_check_ms = s_now_ms();
    return s;
fail:
    sv_server_destroy(&s);
    return NULL;
}

void sv_server_destroy(sv_server **ps)
{
    if (!ps || !*ps)
        return;
    sv_server *s = *ps;
    cm_sock_destroy(&s->sock);
    sv_model_destroy(&s->model);
    sv_scorer_destroy(&s->scorer);
    free(s->hits);
    free(s->items);
    free(s->scores);
    free(s);
    *ps = NULL;
}

const char *sv_server_endpoint(const sv_server *s) { return s->endpoint; }
uint64_t sv_server_model_version(const sv_server *s) { return atomic_load(&s->version); }
uint64_t sv_server_requests(const sv_server *s) { return atomic_load(&s->requests); }

/* ------------------------------------------------------------ reload -- */

static void s_maybe_reload(sv_server *s)
{
    int64_t now = s_now_ms();
    if (now - s->last_check_ms < s->p.poll_ms)
        return;
    s->last_check_ms = now;
    struct stat st;
    if (stat(s->path, &st) != 0)
        return;   /* gone for now: keep serving what we have */
    s_sig sig = s_sig_of(&st);
    if (s_sig_eq(&sig, &s->cur) || s_sig_eq(&sig, &s->failed))
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
    sv_model *old = s->model;
    s->model = m;
    s->cur = got;
    s->failed.valid = 0;
    sv_model_destroy(&old);
    uint64_t v = atomic_fetch_add(&s->version, 1) + 1;
    cm_log(CM_LOG_INFO, "serve: reloaded %s: version %llu, %zu users, %zu items", s->path,
           (unsigned long long)v, sv_model_n_users(m), sv_model_n_items(m));
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

/* Answers one request. frames: [route][payload] (DEALER) or
 * [route][empty][payload] (REQ). */
static void s_handle(sv_server *s, cm_frames *f)
{
    const size_t nf = cm_frames_count(f);
    cm_rec_request req = {0};
    cm_rec_reply rep = {0};
    cm_error err = {0};
    size_t head = 1;   /* envelope frames echoed back */
    if (nf == 3 && cm_frames_size(f, 1) == 0)
        head = 2;
    rep.model_version = atomic_load(&s->version);
    if (nf != head + 1) {
        s_fail(&rep, CM_EPROTO, "expected one RecRequest frame after the route, got %zu frames",
               nf - 1);
    } else if (cm_codec_rec_request_unpack(cm_frames_data(f, head), cm_frames_size(f, head),
                                           &req, &err) != 0) {
        s_fail(&rep, err.code ? err.code : CM_EPROTO, "bad RecRequest: %s",
               err.msg[0] ? err.msg : cm_strerror(CM_EPROTO));
    } else if (req.k == 0 || req.k > s->p.max_k) {
        s_fail(&rep, CM_ERANGE, "k = %u: must be 1..%u", req.k, s->p.max_k);
    } else {
        size_t n = 0;
        int fb = 0;
        int rc = sv_recommend(s->scorer, s->model, req.user, req.k, req.exclude,
                              req.n_exclude, s->hits, &n, &fb, &err);
        if (rc != 0) {
            s_fail(&rep, rc, "%s", err.msg);
        } else {
            for (size_t j = 0; j < n; j++) {
                s->items[j] = s->hits[j].item;
                s->scores[j] = s->hits[j].score;
            }
            rep.n = n;
            rep.items = s->items;
            rep.scores = s->scores;
            rep.fallback = fb;
        }
    }
    free(req.exclude);
    if (rep.status != 0)
        cm_log(CM_LOG_DEBUG, "serve: error reply: %s", rep.error);

    uint8_t *buf = NULL;
    size_t len = 0;
    if (cm_codec_rec_reply_pack(&rep, &buf, &len) != 0) {
        cm_log(CM_LOG_ERROR, "serve: cannot pack a reply (out of memory)");
        return;
    }
    cm_iov iov[3];
    for (size_t i = 0; i < head; i++)
        iov[i] = (cm_iov){cm_frames_data(f, i), cm_frames_size(f, i)};
    iov[head] = (cm_iov){buf, len};
    /* counted before the send, so a client holding its reply sees it */
    atomic_fetch_add(&s->requests, 1);
    if (cm_sock_send(s->sock, iov, head + 1) != 0)
        cm_log(CM_LOG_DEBUG, "serve: reply not sent: %s", cm_sock_errmsg(s->sock));
    free(buf);
}

int sv_server_run(sv_server *s, atomic_int *stop)
{
    uint64_t served = 0;
    while (!(stop && atomic_load(stop))) {
        if (s->p.max_requests && served >= s->p.max_requests)
            return 0;
        s_maybe_reload(s);
        cm_frames *f = NULL;
        int rc = cm_sock_recv(s->sock, &f, s->p.poll_ms);
        if (rc == CM_ETIMEDOUT)
            continue;
        if (rc == CM_ECLOSED)
            return 0;
        if (rc != 0) {
            cm_log(CM_LOG_ERROR, "serve: receive failed: %s", cm_sock_errmsg(s->sock));
            return rc;
        }
        s_handle(s, f);
        cm_frames_destroy(&f);
        served++;
    }
    return 0;
}
