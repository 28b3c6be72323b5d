/* heartbeat: one thread per rank, beats to rank 0 and its answers.
 *
 * Wire: one text frame (after the route on the monitor's ROUTER),
 * "<type> <rank> <pid> <host> <text>", type B (beat, text: what the rank
 * does), F (the rank's own failure, text: its reason), Y (goodbye) from a
 * rank; A (answer, text: what the scheduler does) and K (taken: an F or a
 * Y) from the monitor. Text frames keep the channel readable in a packet
 * dump and independent of the training protocol. */
#include "common/heartbeat.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

#define S_MSG_MAX 512

/* What the monitor knows of one rank. */
typedef struct {
    double last;                   /* when its last beat came (start: the thread's start) */
    int pid;
    int seen;                      /* it beat at least once */
    int bye;                       /* it said goodbye: no longer watched */
    char host[CM_HB_HOST_MAX];
    char doing[CM_HB_TEXT_MAX];
} s_peer;

struct cm_hb {
    cm_hb_params p;
    cm_sock *sock;                 /* ROUTER on rank 0, else DEALER; the thread's only */
    char endpoint[CM_ENDPOINT_MAX];/* rank 0: what the bind resolved to */
    char host[CM_HB_HOST_MAX];     /* this host's name */
    pthread_t tid;
    int started;
    s_peer *peers;                 /* rank 0: one per rank; seen and doing under lock */
    pthread_mutex_t lock;          /* guards the fields below */
    int sched_heard;               /* rank > 0: the scheduler answered */
    char sched_doing[CM_HB_TEXT_MAX];
    pthread_cond_t cond;           /* signalled when taken, byes or failed change */
    char doing[CM_HB_TEXT_MAX];
    unsigned doing_seq;            /* bumped when doing changes */
    int stop, paused, failed;
    char reason[S_MSG_MAX];
    char report[S_MSG_MAX];        /* rank > 0: a failure to forward */
    int report_pending, report_taken;
    int finishing, bye_taken;      /* rank > 0: goodbye asked, and answered */
    int byes;                      /* rank 0: ranks that said goodbye */
};

const char *cm_hb_role(int rank, int n_servers)
{
    return rank == 0 ? "scheduler" : rank <= n_servers ? "server" : "worker";
}

/* -------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------- */

/* Records the first failure and tells the owner (which may not return). */
static void s_fail(cm_hb *hb, const char *reason)
{
    pthread_mutex_lock(&hb->lock);
    int first = !hb->failed;
    if (first) {
        hb->failed = 1;
        snprintf(hb->reason, sizeof hb->reason, "%.*s", (int)sizeof hb->reason - 1, reason);
    }
    pthread_cond_broadcast(&hb->cond);
    pthread_mutex_unlock(&hb->lock);
    if (first && hb->p.on_fail)
        hb->p.on_fail(hb->p.arg, reason);
}

static int s_send(cm_hb *hb, const void *route, size_t route_size, char type, const char *text)
{
    char msg[S_MSG_MAX];
    int n = snprintf(msg, sizeof msg, "%c %d %d %s %s", type, hb->p.rank, (int)getpid(),
                     hb->host, text ? text : "");
    if (n < 0)
        return CM_EINVAL;
    if ((size_t)n >= sizeof msg)
        n = (int)sizeof msg - 1;
    cm_iov iov[2];
    size_t k = 0;
    if (route)
        iov[k++] = (cm_iov){route, route_size};
    iov[k++] = (cm_iov){msg, (size_t)n};
    return cm_sock_send(hb->sock, iov, k);
}

typedef struct {
    char type;
    int rank, pid;
    char host[CM_HB_HOST_MAX];
    const char *text;              /* into the parser's buffer */
} s_beat;

/* Parses "<type> <rank> <pid> <host> <text>" from untrusted bytes. */
static int s_parse(const void *data, size_t size, char *buf, s_beat *b)
{
    if (size < 7 || size >= S_MSG_MAX)
        return CM_EPROTO;
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *p = buf, *end;
    b->type = *p++;
    if (*p++ != ' ')
        return CM_EPROTO;
    long rank = strtol(p, &end, 10);
    if (end == p || *end != ' ' || rank < 0 || rank > 1 << 20)
        return CM_EPROTO;
    p = end + 1;
    long pid = strtol(p, &end, 10);
    if (end == p || *end != ' ' || pid < 0 || pid > 1L << 30)
        return CM_EPROTO;
    p = end + 1;
    char *sp = strchr(p, ' ');
    if (!sp || sp == p || (size_t)(sp - p) >= sizeof b->host)
        return CM_EPROTO;
    memcpy(b->host, p, (size_t)(sp - p));
    b->host[sp - p] = '\0';
    b->rank = (int)rank;
    b->pid = (int)pid;
    b->text = sp + 1;
    return 0;
}

/* -------------------------------------------------------------------------
 * The monitor (rank 0) and a watched rank, one message at a time
 * ------------------------------------------------------------------------- */

static void s_monitor_on(cm_hb *hb, cm_frames *f)
{
    char buf[S_MSG_MAX];
    s_beat b;
    if (cm_frames_count(f) != 2 ||
        s_parse(cm_frames_data(f, 1), cm_frames_size(f, 1), buf, &b) != 0 || b.rank < 1 ||
        b.rank >= hb->p.size) {
        cm_log(CM_LOG_WARN, "heartbeat: ignoring a malformed message");
        return;
    }
    /* on a secured van the connection says whose beat it is: a rank may
     * speak only for itself (a field of the message proves nothing) */
    const int peer = cm_frames_peer(f);
    if (peer != CM_PEER_ANY && peer != b.rank) {
        cm_log(CM_LOG_WARN, "heartbeat: ignoring a message for rank %d on rank %d's connection",
               b.rank, peer);
        return;
    }
    const void *route = cm_frames_data(f, 0);
    size_t route_size = cm_frames_size(f, 0);
    s_peer *k = &hb->peers[b.rank];
    k->last = cm_now();
    k->pid = b.pid;
    snprintf(k->host, sizeof k->host, "%s", b.host);
    if (b.type == 'B') {
        char doing[CM_HB_TEXT_MAX];
        pthread_mutex_lock(&hb->lock);
        k->seen = 1;
        snprintf(k->doing, sizeof k->doing, "%s", b.text);
        memcpy(doing, hb->doing, sizeof doing);
        pthread_mutex_unlock(&hb->lock);
        s_send(hb, route, route_size, 'A', doing);
    } else if (b.type == 'Y') {
        s_send(hb, route, route_size, 'K', "");
        pthread_mutex_lock(&hb->lock);
        if (!k->bye) {
            k->bye = 1;
            hb->byes++;
        }
        pthread_cond_broadcast(&hb->cond);
        pthread_mutex_unlock(&hb->lock);
    } else if (b.type == 'F') {
        /* taken before it is handed on: the owner may end the process */
        s_send(hb, route, route_size, 'K', "");
        char reason[S_MSG_MAX + 2 * CM_HB_TEXT_MAX];
        snprintf(reason, sizeof reason, "rank %d (%s) on %s, pid %d, failed while %s: %s",
                 b.rank, cm_hb_role(b.rank, hb->p.n_servers), b.host, b.pid,
                 k->doing[0] ? k->doing : "starting", b.text);
        s_fail(hb, reason);
    } else {
        cm_log(CM_LOG_WARN, "heartbeat: ignoring message type '%c' from rank %d", b.type,
               b.rank);
    }
}

/* Rank 0: a rank not heard from for the limit has stalled. */
static void s_monitor_check(cm_hb *hb, double now)
{
    for (int r = 1; r < hb->p.size; r++) {
        s_peer *k = &hb->peers[r];
        if (k->bye || now - k->last <= hb->p.limit)
            continue;
        char reason[S_MSG_MAX];
        if (k->seen)
            snprintf(reason, sizeof reason,
                     "rank %d (%s) on %s, pid %d, stopped: no heartbeat for %.1f s (limit "
                     "heartbeat x heartbeat_misses = %.1f s); it was %s",
                     r, cm_hb_role(r, hb->p.n_servers), k->host, k->pid, now - k->last,
                     hb->p.limit, k->doing[0] ? k->doing : "starting");
        else
            snprintf(reason, sizeof reason,
                     "rank %d (%s) sent no heartbeat in its first %.1f s (limit heartbeat x "
                     "heartbeat_misses = %.1f s); its host is not known yet",
                     r, cm_hb_role(r, hb->p.n_servers), now - k->last, hb->p.limit);
        s_fail(hb, reason);
        return;
    }
}

typedef struct {
    double last_answer;            /* when the scheduler last answered */
    int answered;
    int pid;
    char host[CM_HB_HOST_MAX];
    char doing[CM_HB_TEXT_MAX];
} s_sched_view;

static void s_rank_on(cm_hb *hb, cm_frames *f, s_sched_view *v)
{
    char buf[S_MSG_MAX];
    s_beat b;
    if (cm_frames_count(f) != 1 ||
        s_parse(cm_frames_data(f, 0), cm_frames_size(f, 0), buf, &b) != 0 || b.rank != 0) {
        cm_log(CM_LOG_WARN, "heartbeat: ignoring a malformed answer");
        return;
    }
    v->last_answer = cm_now();
    v->answered = 1;
    v->pid = b.pid;
    snprintf(v->host, sizeof v->host, "%s", b.host);
    if (b.type == 'A') {
        snprintf(v->doing, sizeof v->doing, "%s", b.text);
        pthread_mutex_lock(&hb->lock);
        hb->sched_heard = 1;
        memcpy(hb->sched_doing, v->doing, sizeof hb->sched_doing);
        pthread_mutex_unlock(&hb->lock);
    } else if (b.type == 'K') {
        pthread_mutex_lock(&hb->lock);
        if (hb->finishing)
            hb->bye_taken = 1;
        if (hb->report_pending)
            hb->report_taken = 1;
        pthread_cond_broadcast(&hb->cond);
        pthread_mutex_unlock(&hb->lock);
    }
}

/* -------------------------------------------------------------------------
 * The thread
 * ------------------------------------------------------------------------- */

static void *s_main(void *arg)
{
    cm_hb *hb = arg;
    const int monitor = hb->p.rank == 0;
    cm_log_set_identity(monitor ? "sch" : hb->p.rank <= hb->p.n_servers ? "ps" : "wk",
                        hb->p.rank);
    const double start = cm_now();
    for (int r = 0; monitor && r < hb->p.size; r++)
        hb->peers[r].last = start;
    s_sched_view v = {.last_answer = start};
    double next_beat = start, last_beat = start - hb->p.interval, last_turn = start;
    unsigned seq_sent = 0;
    int report_sent = 0, bye_sent = 0;
    /* short slices: a goodbye or a report goes out soon after it is asked */
    int slice = (int)(hb->p.interval * 100);
    slice = slice < 5 ? 5 : slice > 100 ? 100 : slice;
    for (;;) {
        pthread_mutex_lock(&hb->lock);
        int stop = hb->stop, paused = hb->paused, failed = hb->failed;
        int report = hb->report_pending && !report_sent, bye = hb->finishing && !bye_sent;
        char text[S_MSG_MAX];
        snprintf(text, sizeof text, "%s", report ? hb->report : hb->doing);
        unsigned seq = hb->doing_seq;
        pthread_mutex_unlock(&hb->lock);
        if (stop)
            break;
        double now = cm_now();
        last_turn = now;
        if (!monitor && !paused) {
            if (report && s_send(hb, NULL, 0, 'F', text) == 0)
                report_sent = 1;
            if (bye && s_send(hb, NULL, 0, 'Y', "") == 0)
                bye_sent = 1;
            /* a new state goes out early (at most ten a period), so that a
             * stall names what the rank was doing, not what it did a
             * beat ago */
            int fresh = seq != seq_sent && now - last_beat >= hb->p.interval / 10;
            if (!report && !bye_sent && (now >= next_beat || fresh)) {
                s_send(hb, NULL, 0, 'B', text);
                next_beat = now + hb->p.interval;
                last_beat = now;
                seq_sent = seq;
            }
        }
        /* everything queued is read before anyone is judged: a process that
         * was descheduled for a while must not blame the peers whose
         * beats wait in its socket */
        cm_frames *f = NULL;
        int rc, wait = slice;
        while ((rc = cm_sock_recv(hb->sock, &f, wait)) == 0) {
            if (!paused) {
                if (monitor)
                    s_monitor_on(hb, f);
                else
                    s_rank_on(hb, f, &v);
            }
            cm_frames_destroy(&f);
            wait = 0;
        }
        if (rc == CM_ECLOSED)
            break;
        if (rc != CM_ETIMEDOUT && rc != CM_EPROTO) {
            cm_log(CM_LOG_WARN, "heartbeat: %s", cm_sock_errmsg(hb->sock));
            struct timespec ts = {0, slice * 1000000L};
            nanosleep(&ts, NULL);
        }
        now = cm_now();
        /* this thread did not run for a good part of the limit: the whole
         * process was stopped or starved, and the silence it would find is
         * its own (what the peers sent may still be on the way); they get
         * a fresh window instead of the blame. A stopped rank that is
         * continued as the job is killed must not blame a healthy one. */
        if (now - last_turn > slice / 1000.0 + hb->p.limit / 2) {
            v.last_answer = now;
            for (int r = 0; monitor && r < hb->p.size; r++)
                hb->peers[r].last = now;
        }
        if (paused || failed)
            continue;
        if (monitor) {
            s_monitor_check(hb, now);
        } else if (!bye_sent && now - v.last_answer > hb->p.limit) {
            char reason[S_MSG_MAX];
            if (v.answered)
                snprintf(reason, sizeof reason,
                         "the scheduler (rank 0 on %s, pid %d) stopped: no answer to "
                         "heartbeats for %.1f s (limit heartbeat x heartbeat_misses = %.1f s); "
                         "it was %s",
                         v.host, v.pid, now - v.last_answer, hb->p.limit,
                         v.doing[0] ? v.doing : "starting");
            else
                snprintf(reason, sizeof reason,
                         "the scheduler (rank 0) answered no heartbeat in %.1f s (limit "
                         "heartbeat x heartbeat_misses = %.1f s)",
                         now - v.last_answer, hb->p.limit);
            s_fail(hb, reason);
        }
    }
    return NULL;
}

/* -------------------------------------------------------------------------
 * The interface
 * ------------------------------------------------------------------------- */

cm_hb *cm_hb_new(const cm_hb_params *p, const char *endpoint, cm_error *err)
{
    if (!p || !p->van || !endpoint || p->size < 1 || p->rank < 0 || p->rank >= p->size ||
        !(p->interval > 0) || !(p->limit >= p->interval)) {
        cm_error_set(err, CM_EINVAL, "heartbeat: bad parameters (rank %d of %d, interval "
                     "%g s, limit %g s)", p ? p->rank : -1, p ? p->size : -1,
                     p ? p->interval : 0, p ? p->limit : 0);
        return NULL;
    }
    cm_hb *hb = calloc(1, sizeof *hb);
    if (!hb) {
        cm_error_set(err, CM_ENOMEM, "heartbeat: out of memory");
        return NULL;
    }
    hb->p = *p;
    snprintf(hb->doing, sizeof hb->doing, "starting");
    if (gethostname(hb->host, sizeof hb->host) != 0 || !hb->host[0])
        snprintf(hb->host, sizeof hb->host, "?");
    hb->host[sizeof hb->host - 1] = '\0';
    for (char *c = hb->host; *c; c++)
        if (*c == ' ')
            *c = '_';
    pthread_mutex_init(&hb->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&hb->cond, &ca);
    pthread_condattr_destroy(&ca);
    const int monitor = p->rank == 0;
    if (monitor && !(hb->peers = calloc((size_t)p->size, sizeof *hb->peers))) {
        cm_error_set(err, CM_ENOMEM, "heartbeat: out of memory");
        goto fail;
    }
    hb->sock = cm_sock_new(p->van, monitor ? CM_SOCK_ROUTER : CM_SOCK_DEALER, err);
    if (!hb->sock)
        goto fail;
    if (monitor && cm_sock_bind(hb->sock, endpoint, hb->endpoint) != 0) {
        cm_error_set(err, CM_EIO, "heartbeat: cannot bind %s: %s", endpoint,
                     cm_sock_errmsg(hb->sock));
        goto fail;
    }
    if (!monitor && cm_sock_connect(hb->sock, endpoint) != 0) {
        cm_error_set(err, CM_EIO, "heartbeat: cannot connect to the scheduler at %s: %s",
                     endpoint, cm_sock_errmsg(hb->sock));
        goto fail;
    }
    if (pthread_create(&hb->tid, NULL, s_main, hb) != 0) {
        cm_error_set(err, CM_ENOMEM, "heartbeat: cannot start its thread");
        goto fail;
    }
    hb->started = 1;
    return hb;
fail:
    cm_hb_destroy(&hb);
    return NULL;
}

void cm_hb_destroy(cm_hb **ph)
{
    if (!ph || !*ph)
        return;
    cm_hb *hb = *ph;
    if (hb->started) {
        pthread_mutex_lock(&hb->lock);
        hb->stop = 1;
        pthread_mutex_unlock(&hb->lock);
        pthread_join(hb->tid, NULL);
    }
    cm_sock_destroy(&hb->sock);
    pthread_cond_destroy(&hb->cond);
    pthread_mutex_destroy(&hb->lock);
    free(hb->peers);
    free(hb);
    *ph = NULL;
}

const char *cm_hb_endpoint(const cm_hb *hb)
{
    return hb ? hb->endpoint : "";
}

void cm_hb_doing(cm_hb *hb, const char *fmt, ...)
{
    if (!hb)
        return;
    char text[CM_HB_TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&hb->lock);
    memcpy(hb->doing, text, sizeof text);
    hb->doing_seq++;
    pthread_mutex_unlock(&hb->lock);
}

int cm_hb_failed(cm_hb *hb, char *buf, size_t n)
{
    if (!hb)
        return 0;
    pthread_mutex_lock(&hb->lock);
    int failed = hb->failed;
    if (failed && buf && n)
        snprintf(buf, n, "%s", hb->reason);
    pthread_mutex_unlock(&hb->lock);
    return failed;
}

/* Waits until *flag reaches want, a failure was found, or wait_ms passed.
 * Called with the lock held. */
static int s_wait_locked(cm_hb *hb, const int *flag, int want, int wait_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (*flag < want && !hb->failed)
        if (pthread_cond_timedwait(&hb->cond, &hb->lock, &until) != 0)
            break;
    return *flag >= want ? 0 : hb->failed ? CM_ECLOSED : CM_ETIMEDOUT;
}

int cm_hb_report(cm_hb *hb, const char *reason, int wait_ms)
{
    if (!hb || hb->p.rank == 0)
        return CM_ESTATE;
    pthread_mutex_lock(&hb->lock);
    snprintf(hb->report, sizeof hb->report, "%s", reason ? reason : "");
    hb->report_pending = 1;
    int rc = s_wait_locked(hb, &hb->report_taken, 1, wait_ms);
    pthread_mutex_unlock(&hb->lock);
    return rc;
}

int cm_hb_finish(cm_hb *hb, int wait_ms)
{
    if (!hb)
        return 0;
    pthread_mutex_lock(&hb->lock);
    int rc;
    if (hb->p.rank == 0) {
        rc = s_wait_locked(hb, &hb->byes, hb->p.size - 1, wait_ms);
    } else {
        hb->finishing = 1;
        rc = s_wait_locked(hb, &hb->bye_taken, 1, wait_ms);
    }
    pthread_mutex_unlock(&hb->lock);
    return rc;
}

int cm_hb_heard(cm_hb *hb, int rank, char *buf, size_t n)
{
    if (!hb || rank < 0 || rank >= hb->p.size || (hb->p.rank == 0) == (rank == 0))
        return 0;
    pthread_mutex_lock(&hb->lock);
    int heard = rank == 0 ? hb->sched_heard : hb->peers[rank].seen;
    if (heard && buf && n)
        snprintf(buf, n, "%s", rank == 0 ? hb->sched_doing : hb->peers[rank].doing);
    pthread_mutex_unlock(&hb->lock);
    return heard;
}

void cm_hb_pause(cm_hb *hb)
{
    if (!hb)
        return;
    pthread_mutex_lock(&hb->lock);
    hb->paused = 1;
    pthread_mutex_unlock(&hb->lock);
}
