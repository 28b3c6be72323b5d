#include "scheduler/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/ckpt.h"
#include "common/features.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/msg.h"
#include "common/stop.h"
#include "scheduler/best.h"
#include "scheduler/partition.h"
#include "scheduler/report.h"

/* Tables whose rows and bytes the metrics report one by one. */
#define S_MAX_TABLES 8

#define S_ROUTE_MAX 256

/* What the scheduler knows of one worker. */
typedef struct {
    unsigned char route[S_ROUTE_MAX];   /* ROUTER identity of its DEALER */
    size_t route_size;
    int rank;
    cm_hello hello;                     /* its HELLO (slot loads not kept) */
    cm_epoch_done epoch_done;           /* its last EPOCH_DONE */
    cm_eval_done eval;                  /* its last EVAL_DONE (histograms not kept) */
    cm_ranking_done ranking;            /* implicit: its last EVAL_DONE */
    uint64_t done;                      /* examples done this epoch */
    double sq;                          /* running squared error this epoch */
    int finished;                       /* answered the current phase */
    uint64_t clock;                     /* SSP/BSP: minibatches done this epoch */
    int items_in;                       /* implicit: its item list arrived */
} s_wk;

typedef struct {
    const sch_params *p;
    s_wk *wk;
    sch_progress *progress;
    sch_metrics *metrics;
    uint64_t n_train, n_test;
    double t_start;       /* when the scheduler started */
    double mean;          /* global mean of the training ratings */
    float clip_lo, clip_hi;
    uint32_t n_slots;
    uint32_t *slot_map;   /* slot -> server index */
    cm_sock **srv;        /* one DEALER per server (checkpoint, load) */
    int first_epoch;      /* 1, or the epoch after the resumed checkpoint */
    double *load;         /* job->slots expected requests per slot (HELLOs) */
    int load_ok;          /* every worker sent its loads */
    int warned_unseen;    /* the unseen-ids warning was given */
    uint64_t min_sent;    /* SSP/BSP: the slowest clock last sent to the workers */
    int task;             /* -1 ratings (mf), else the cm_task of a sparse model */
    uint64_t *auc_pos, *auc_neg; /* binary tasks: merged AUC histograms */
    double last_ckpt;     /* when the last checkpoint was written */
    /* implicit feedback: the item universe, merged from the workers' lists
     * (blocks schedule: too, so that workers can balance the blocks) */
    int implicit;
    int want_items;       /* the workers send their item lists (implicit, blocks) */
    uint32_t bpw;         /* blocks schedule: item blocks per worker */
    size_t n_items;
    uint64_t *items;      /* sorted keys */
    double *counts;       /* training positives per item */
    int warned_cold;      /* the cold test users/items warning was given */
    cm_log_budget warn;   /* warnings about peers' messages: a few a minute */
    /* validation (docs/validation.md) */
    uint64_t n_valid;     /* validation examples over all workers */
    sch_best best;        /* the chosen epoch so far */
    double valid_metric;  /* the last evaluation's; < 0 when none */
    double chosen[4];     /* the chosen epoch's test RMSE, MAE, AUC, log loss */
} s_sched;

/* Warnings about what peers sent, at most this many a minute: a flood of
 * bad messages must not flood the log. */
#define S_WARN_PER_MINUTE 10
/* A worker's error text, quoted, is cut to this many bytes. */
#define S_PEER_TEXT_MAX 200

#define S_WARN(s, fmt, ...)                                                                 \
    do {                                                                                    \
        uint64_t q_ = 0;                                                                    \
        if (cm_log_budget_take(&(s)->warn, &q_))                                                           \
            cm_log(CM_LOG_WARN, fmt "%s%.0f%s", __VA_ARGS__, q_ ? " (and " : "", (double)q_, \
                   q_ ? " more in the last minute not logged)" : "");                       \
    } while (0)

/* The rank a worker's control message speaks for: the rank of its
 * authenticated connection (common/msg.h cm_msg_rank), which must be one of
 * the job's worker ranks. -1 (and a warning) otherwise. */
static int s_worker_rank(s_sched *s, const cm_msg *m)
{
    int rank = -1;
    cm_error e = {0};
    if (cm_msg_rank(m, &rank, &e) != 0) {
        S_WARN(s, "scheduler: %s refused: %s", cm_op_name(m->hdr.op), e.msg);
        return -1;
    }
    int first = 1 + (int)s->p->n_servers;
    if (rank < first || rank >= first + (int)s->p->n_workers) {
        S_WARN(s, "scheduler: %s from rank %d refused: not a worker rank of this job (%d..%d)",
               cm_op_name(m->hdr.op), rank, first, first + (int)s->p->n_workers - 1);
        return -1;
    }
    return rank;
}

static int s_send(s_sched *s, uint32_t w, cm_hdr *h, cm_error *err)
{
    int rc = cm_msg_send(s->p->ctl, s->wk[w].route, s->wk[w].route_size, h, NULL, 0, NULL, 0);
    if (rc != 0)
        return cm_error_set(err, rc, "scheduler: cannot reach worker rank %d: %s",
                            s->wk[w].rank, cm_sock_errmsg(s->p->ctl));
    return 0;
}

/* Sends op for epoch (and sub-epoch `clock`) to every worker. Progress
 * counts restart with each epoch, not with each sub-epoch. */
static int s_broadcast(s_sched *s, int op, uint32_t epoch, uint64_t clock, cm_error *err)
{
    for (uint32_t w = 0; w < s->p->n_workers; w++) {
        cm_hdr h = cm_hdr_make(op);
        h.epoch = epoch;
        h.clock = clock;
        h.sender = 0;
        int rc = s_send(s, w, &h, err);
        if (rc != 0)
            return rc;
        s->wk[w].finished = 0;
        s->wk[w].clock = 0;
        s->min_sent = 0;
        if (clock == 0) {
            s->wk[w].done = 0;
            s->wk[w].sq = 0;
        }
    }
    return 0;
}

static int s_find(const s_sched *s, const cm_msg *m)
{
    for (uint32_t w = 0; w < s->p->n_workers; w++)
        if (s->wk[w].route_size == m->route_size &&
            memcmp(s->wk[w].route, m->route, m->route_size) == 0)
            return (int)w;
    return -1;
}

/* SSP/BSP: sends the slowest unfinished worker's clock to the unfinished
 * workers when it moved (finished workers no longer hold anyone back). */
static void s_publish_clock(s_sched *s, uint32_t epoch)
{
    uint64_t mn = UINT64_MAX;
    for (uint32_t w = 0; w < s->p->n_workers; w++)
        if (!s->wk[w].finished && s->wk[w].clock < mn)
            mn = s->wk[w].clock;
    if (mn == UINT64_MAX || mn <= s->min_sent)
        return;
    s->min_sent = mn;
    for (uint32_t w = 0; w < s->p->n_workers; w++) {
        if (s->wk[w].finished)
            continue;
        cm_hdr h = cm_hdr_make(CM_OP_CLOCK);
        h.epoch = epoch;
        h.clock = mn;
        s_send(s, w, &h, NULL);
    }
}

/* Receives the next well-formed control message into *m (released by the
 * caller on 0). Malformed ones are logged and skipped. CM_ETIMEDOUT after
 * the job's timeout of silence, for the caller to explain; other failures
 * of the channel come back with *err set. */
static int s_recv_ctl(s_sched *s, cm_msg *m, cm_error *err)
{
    for (;;) {
        cm_error e = {0};
        memset(m, 0, sizeof *m);
        int rc = cm_msg_recv(s->p->ctl, m, (int)(s->p->job->timeout * 1000), &e);
        if (rc == 0)
            return 0;
        cm_msg_release(m);
        if (rc == CM_ETIMEDOUT)
            return rc;
        if (rc != CM_EPROTO)
            return cm_error_set(err, rc, "scheduler: control channel: %s", e.msg);
        S_WARN(s, "scheduler: ignoring a malformed control message: %s", e.msg);
    }
}

/* The body a worker's answer `op` carries (common/ctl.h). */
static int s_body_of(const s_sched *s, int op)
{
    if (op == CM_OP_EPOCH_DONE)
        return CM_BODY_EPOCH;
    if (op == CM_OP_EVAL_DONE)
        return s->implicit ? CM_BODY_RANKING : CM_BODY_EVAL;
    return CM_BODY_NONE;
}

/* Receives control messages until every worker answered `want` for
 * `epoch`. PROGRESS messages move the bar. Silence longer than the job's
 * timeout, or an OP_ERROR from a worker, fails the job. */
static int s_gather(s_sched *s, int want, uint32_t epoch, double t0, cm_error *err)
{
    const cm_job *job = s->p->job;
    uint32_t left = s->p->n_workers;
    while (left > 0) {
        cm_msg m;
        int rc = s_recv_ctl(s, &m, err);
        if (rc == CM_ETIMEDOUT) {
            for (uint32_t w = 0; w < s->p->n_workers; w++)
                if (!s->wk[w].finished)
                    return cm_error_set(err, rc,
                                        "scheduler: no word from worker rank %d for %.0f s "
                                        "(raise `timeout` if it is just slow)",
                                        s->wk[w].rank, job->timeout);
        }
        if (rc != 0)
            return rc;
        int w = s_find(s, &m);
        int from = w < 0 ? -1 : s_worker_rank(s, &m);
        if (w < 0 || from != s->wk[w].rank) {
            /* a route is taken as a worker's only on that worker's connection */
            if (w < 0)
                S_WARN(s, "scheduler: %s from an unknown peer ignored", cm_op_name(m.hdr.op));
            cm_msg_release(&m);
            continue;
        }
        s_wk *k = &s->wk[w];
        if (m.hdr.op == CM_OP_ERROR) {
            char q[S_PEER_TEXT_MAX + 16];
            cm_msg_quote(m.hdr.error, S_PEER_TEXT_MAX, q, sizeof q);
            rc = cm_error_set(err, CM_EREMOTE, "worker rank %d failed: %s", k->rank, q);
            cm_msg_release(&m);
            return rc;
        }
        if (m.hdr.op == CM_OP_CLOCK && m.hdr.epoch == epoch) {
            if (m.hdr.clock > k->clock)
                k->clock = m.hdr.clock;
            s_publish_clock(s, epoch);
        } else if (m.hdr.op == CM_OP_PROGRESS && m.hdr.body == CM_BODY_PROGRESS &&
                   m.hdr.epoch == epoch) {
            k->done = m.hdr.progress.done;
            k->sq = m.hdr.progress.loss;
            uint64_t done = 0;
            double sq = 0;
            for (uint32_t i = 0; i < s->p->n_workers; i++) {
                done += s->wk[i].done;
                sq += s->wk[i].sq;
            }
            double shown = done ? (s->implicit ? sq / (double)done : sqrt(sq / (double)done)) : 0;
            sch_progress_update(s->progress, (int)epoch, job->epochs, done, s->n_train, shown,
                                cm_now() - t0);
        } else if (m.hdr.op == want && m.hdr.epoch == epoch && !k->finished &&
                   m.hdr.body == s_body_of(s, want)) {
            if (m.hdr.body == CM_BODY_EPOCH)
                k->epoch_done = m.hdr.epoch_done;
            else if (m.hdr.body == CM_BODY_RANKING)
                k->ranking = m.hdr.ranking;
            else if (m.hdr.body == CM_BODY_EVAL) {
                const cm_eval_done *ev = &m.hdr.eval_done;
                /* binary tasks: the AUC histograms */
                if (s->auc_pos && ev->n_auc == CM_AUC_BINS)
                    for (size_t b = 0; b < CM_AUC_BINS; b++) {
                        s->auc_pos[b] += ev->auc_pos[b];
                        s->auc_neg[b] += ev->auc_neg[b];
                    }
                k->eval = *ev;
                k->eval.n_auc = 0;
                k->eval.auc_pos = k->eval.auc_neg = NULL;
            }
            k->finished = 1;
            left--;
            if (want == CM_OP_EPOCH_DONE)
                s_publish_clock(s, epoch);
        } else {
            cm_log(CM_LOG_WARN, "scheduler: unexpected %s (epoch %u) from worker rank %d",
                   cm_op_name(m.hdr.op), m.hdr.epoch, k->rank);
        }
        cm_msg_release(&m);
    }
    return 0;
}

/* Adds a worker's item list (sorted keys, positives as values) to the
 * universe. A list that is not sorted and unique, or whose counts do not
 * match its keys, is refused with CM_EPROTO. */
static int s_merge_items(s_sched *s, const cm_msg *m, int rank, cm_error *err)
{
    size_t n = (size_t)m->hdr.n_keys;
    if (n == 0)
        return 0;
    if (!m->keys || !m->vals || m->n_vals != n)
        return cm_error_set(err, CM_EPROTO, "scheduler: worker rank %d sent %zu items with "
                            "%zu counts", rank, n, m->n_vals);
    for (size_t i = 0; i < n; i++)
        if ((i > 0 && m->keys[i] <= m->keys[i - 1]) || !(m->vals[i] >= 0))
            return cm_error_set(err, CM_EPROTO, "scheduler: worker rank %d sent a bad item "
                                "list (item %zu: key %llu, count %g)", rank, i,
                                (unsigned long long)m->keys[i], m->vals[i]);
    size_t cap = s->n_items + n;
    uint64_t *keys = malloc(cap * sizeof *keys);
    double *counts = malloc(cap * sizeof *counts);
    if (!keys || !counts) {
        free(keys);
        free(counts);
        return cm_error_set(err, CM_ENOMEM, "scheduler: out of memory for %zu items", cap);
    }
    size_t a = 0, b = 0, o = 0;
    while (a < s->n_items || b < n) {
        if (b == n || (a < s->n_items && s->items[a] < m->keys[b])) {
            keys[o] = s->items[a];
            counts[o++] = s->counts[a++];
        } else if (a == s->n_items || m->keys[b] < s->items[a]) {
            keys[o] = m->keys[b];
            counts[o++] = m->vals[b++];
        } else {
            keys[o] = s->items[a];
            counts[o++] = s->counts[a++] + m->vals[b++];
        }
    }
    free(s->items);
    free(s->counts);
    s->items = keys;
    s->counts = counts;
    s->n_items = o;
    return 0;
}

/* First contact: every worker's HELLO, in any order (implicit jobs: and
 * each worker's item list, which follows its HELLO). */
static int s_hellos(s_sched *s, cm_error *err)
{
    const cm_job *job = s->p->job;
    uint32_t got = 0, items = s->want_items ? 0 : s->p->n_workers;
    cm_hb_doing(s->p->hb, "waiting for the workers' HELLO");
    while (got < s->p->n_workers || items < s->p->n_workers) {
        cm_msg m;
        int rc = s_recv_ctl(s, &m, err);
        if (rc == CM_ETIMEDOUT)
            return cm_error_set(err, rc,
                                "scheduler: only %u of %u workers reported%s within %.0f s",
                                got < s->p->n_workers ? got : items, s->p->n_workers,
                                got < s->p->n_workers ? "" : " their items", job->timeout);
        if (rc != 0)
            return rc;
        /* only the job's workers, each on its own connection, are heard */
        int from = s_worker_rank(s, &m);
        int known = s_find(s, &m);
        if (from < 0 || (known >= 0 && s->wk[known].rank != from)) {
            cm_msg_release(&m);
            continue;
        }
        int present = -1;
        for (uint32_t w = 0; w < got; w++)
            if (s->wk[w].rank == from)
                present = (int)w;
        if (m.hdr.op == CM_OP_ERROR) {
            char q[S_PEER_TEXT_MAX + 16];
            cm_msg_quote(m.hdr.error, S_PEER_TEXT_MAX, q, sizeof q);
            rc = cm_error_set(err, CM_EREMOTE, "worker rank %d failed: %s", from, q);
            /* remember it so that it, too, gets the STOP */
            if (got < s->p->n_workers && m.route_size <= S_ROUTE_MAX && known < 0 &&
                present < 0) {
                s_wk *k = &s->wk[got++];
                memcpy(k->route, m.route, m.route_size);
                k->route_size = m.route_size;
                k->rank = from;
            }
            cm_msg_release(&m);
            return rc;
        }
        if (s->want_items && m.hdr.op == CM_OP_HELLO && (m.hdr.flags & CM_HELLO_ITEMS)) {
            int w = known;
            if (w < 0 || s->wk[w].items_in) {
                S_WARN(s, "scheduler: unexpected item list from rank %d", from);
            } else {
                s->wk[w].items_in = 1;
                items++;
                rc = s_merge_items(s, &m, s->wk[w].rank, err);
            }
            cm_msg_release(&m);
            if (rc != 0)
                return rc;
            continue;
        }
        if (m.hdr.op != CM_OP_HELLO || m.route_size > S_ROUTE_MAX || known >= 0 ||
            present >= 0) {
            /* a second HELLO for a rank already present never takes its place */
            S_WARN(s, "scheduler: %s from rank %d before start refused%s",
                   cm_op_name(m.hdr.op), from,
                   present >= 0 && m.hdr.op == CM_OP_HELLO ? ": that rank is already present"
                                                          : "");
            cm_msg_release(&m);
            continue;
        }
        s_wk *k = &s->wk[got++];
        memcpy(k->route, m.route, m.route_size);
        k->route_size = m.route_size;
        k->rank = from;
        const cm_hello *he = &m.hdr.hello;
        /* the expected request load per slot, summed over the workers */
        if (he->n_slot_load == (size_t)job->slots && s->load)
            for (size_t j = 0; j < he->n_slot_load; j++)
                s->load[j] += he->slot_load[j];
        else if (s->load)
            s->load_ok = 0;
        k->hello = *he;
        k->hello.n_slot_load = 0;
        k->hello.slot_load = NULL;
        cm_msg_release(&m);
    }
    return 0;
}

/* The validation metric's name: log loss for binary tasks (a proper
 * scoring rule, a plain sum over the workers), else RMSE. */
static const char *s_valid_name(const s_sched *s)
{
    return s->task == CM_TASK_BINARY ? "log loss" : "RMSE";
}

static int s_plan(s_sched *s, sch_result *res, cm_error *err)
{
    const cm_job *job = s->p->job;
    double sum = 0, lo = INFINITY, hi = -INFINITY, nf = -1;
    uint64_t bad_train = 0, bad_test = 0, raw_train = 0;
    for (uint32_t w = 0; w < s->p->n_workers; w++) {
        const cm_hello *he = &s->wk[w].hello;
        s->n_train += he->n_train;
        sum += he->label_sum;
        if (he->n_train > 0) {
            lo = fmin(lo, he->label_min);
            hi = fmax(hi, he->label_max);
        }
        s->n_test += he->n_test;
        s->n_valid += he->n_valid;
        raw_train += he->raw_train;
        bad_train = he->bad_train;
        bad_test = he->bad_test;
        nf = he->noise_floor;
        s->task = cm_job_is_sparse(job) ? he->task : -1;
    }
    if (s->task == CM_TASK_BINARY) {
        s->auc_pos = calloc(2 * (size_t)CM_AUC_BINS, sizeof *s->auc_pos);
        if (!s->auc_pos)
            return cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
        s->auc_neg = s->auc_pos + CM_AUC_BINS;
    }
    if (s->n_train == 0 && s->implicit && raw_train > 0)
        return cm_error_set(err, CM_EINVAL, "%s: no positives: none of its %llu rows has a "
                            "rating >= positive_threshold %g", job->train,
                            (unsigned long long)raw_train, job->positive_threshold);
    if (s->n_train == 0)
        return cm_error_set(err, CM_EINVAL, "%s: no training rows", job->train);
    res->n_items = s->n_items;
    if (bad_train || bad_test)
        cm_log(CM_LOG_WARN, "skipped malformed lines: %llu in %s, %llu in %s",
               (unsigned long long)bad_train, job->train, (unsigned long long)bad_test,
               job->test[0] ? job->test : "(no test file)");
    res->n_train = s->n_train;
    res->n_test = s->n_test;
    res->noise_floor = job->test[0] ? nf : -1;
    s->mean = sum / (double)s->n_train;
    s->clip_lo = (float)lo;
    s->clip_hi = (float)hi;
    if (!s->n_slots)
        s->n_slots = (uint32_t)job->slots;
    s->slot_map = malloc((size_t)s->n_slots * sizeof *s->slot_map);
    if (!s->slot_map)
        return cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
    sch_plan_slots(s->slot_map, s->n_slots, s->p->n_servers, NULL);
    if (s->load_ok && s->n_slots == (uint32_t)job->slots && s->p->n_servers > 1) {
        /* load-aware: heaviest slots first to the least loaded server */
        double before = sch_plan_imbalance(s->slot_map, s->n_slots, s->p->n_servers, s->load);
        sch_plan_slots(s->slot_map, s->n_slots, s->p->n_servers, s->load);
        double after = sch_plan_imbalance(s->slot_map, s->n_slots, s->p->n_servers, s->load);
        cm_log(CM_LOG_INFO, "slot plan: max/mean server load %.3f round-robin, %.3f load-aware",
               before, after);
        res->load_imbalance_before = before;
        res->load_imbalance = after;
    }
    if (s->implicit)
        fprintf(s->p->out,
                "psrec: implicit (%s, %d negative%s, %s sampler) on %llu positives of %llu "
                "rows, %zu items (%u worker%s, %u server%s), %llu held out\n",
                job->loss == CM_LOSS_LOGISTIC ? "logistic" : "bpr", job->negatives,
                job->negatives == 1 ? "" : "s",
                job->sampler == CM_SAMPLER_POPULARITY ? "popularity" : "uniform",
                (unsigned long long)s->n_train, (unsigned long long)raw_train, s->n_items,
                s->p->n_workers, s->p->n_workers == 1 ? "" : "s", s->p->n_servers,
                s->p->n_servers == 1 ? "" : "s", (unsigned long long)s->n_test);
    else
        fprintf(s->p->out,
                "psrec: %s on %llu ratings (%u worker%s, %u server%s), %llu held out; "
                "global mean %.4f\n",
                job->model, (unsigned long long)s->n_train, s->p->n_workers,
                s->p->n_workers == 1 ? "" : "s", s->p->n_servers,
                s->p->n_servers == 1 ? "" : "s", (unsigned long long)s->n_test, s->mean);
    if (s->n_valid > 0) {
        char from[CM_PATH_MAX + 64];
        if (job->validation[0])
            snprintf(from, sizeof from, "%s", job->validation);
        else
            snprintf(from, sizeof from, "%g%% carved from %s, not trained on",
                     100 * job->validation_fraction, job->train);
        fprintf(s->p->out, "validation: %llu examples (%s); the epoch with the lowest "
                "validation %s is kept; patience %d%s\n", (unsigned long long)s->n_valid, from,
                s_valid_name(s), job->patience, job->patience ? "" : " (no early stop)");
    }
    if (s->implicit && job->validation[0])
        cm_log(CM_LOG_WARN, "validation = %s: not used by implicit (every positive is trained "
               "on and the last epoch reported; docs/validation.md)", job->validation);
    res->n_valid = s->n_valid;
    fflush(s->p->out);
    return 0;
}

/* Blocks schedule: item blocks per worker. From two on a worker pulls its
 * next block while it trains one, and smaller blocks keep their rows
 * nearer the cores: enough blocks that one holds at most 8 MiB of item
 * rows (about dim + 2 floats a row with AdaGrad's state). */
static uint32_t s_blocks_per_worker(const s_sched *s)
{
    const cm_job *job = s->p->job;
    if (job->blocks_per_worker > 0)
        return (uint32_t)job->blocks_per_worker;
    double bytes = (double)s->n_items / s->p->n_workers * (job->dim + 2) * 4.0;
    double k = ceil(bytes / (8.0 * 1024 * 1024));
    return k < 1 ? 1 : k > CM_MAX_BLOCKS_PER_WORKER ? CM_MAX_BLOCKS_PER_WORKER : (uint32_t)k;
}

static int s_ask_servers(s_sched *s, cm_hdr *h, cm_msg *replies, cm_error *err);

/* The slot map to every server, before any worker has the plan: from then
 * on a server takes only keys of its own slots. */
static int s_send_slots(s_sched *s, cm_error *err)
{
    cm_msg *rep = calloc(s->p->n_servers + 1, sizeof *rep);
    if (!rep)
        return cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
    cm_hdr h = cm_hdr_make(CM_OP_SLOTS);
    h.slots = s->slot_map;
    h.n_slots = s->n_slots;
    int rc = s_ask_servers(s, &h, rep, err);
    for (uint32_t i = 0; i < s->p->n_servers; i++)
        cm_msg_release(&rep[i]);
    free(rep);
    return rc;
}

static int s_send_plan(s_sched *s, cm_error *err)
{
    int rc = s_send_slots(s, err);
    if (rc != 0)
        return rc;
    s->bpw = s_blocks_per_worker(s);
    /* implicit, blocks: the item universe rides along, keys and their counts */
    float *counts = NULL;
    if (s->want_items) {
        counts = malloc((s->n_items + 1) * sizeof *counts);
        if (!counts)
            return cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
        for (size_t i = 0; i < s->n_items; i++)
            counts[i] = (float)s->counts[i];
    }
    for (uint32_t w = 0; w < s->p->n_workers && rc == 0; w++) {
        cm_hdr h = cm_hdr_make(CM_OP_PLAN);
        h.body = CM_BODY_PLAN;
        h.plan = (cm_plan){s->mean, s->clip_lo, s->clip_hi, s->bpw};
        h.slots = s->slot_map;
        h.n_slots = s->n_slots;
        if (!counts) {
            rc = s_send(s, w, &h, err);
            continue;
        }
        h.dim = 1;
        rc = cm_msg_send(s->p->ctl, s->wk[w].route, s->wk[w].route_size, &h, s->items,
                         s->n_items, counts, s->n_items);
        if (rc != 0)
            cm_error_set(err, rc, "scheduler: cannot reach worker rank %d: %s", s->wk[w].rank,
                         cm_sock_errmsg(s->p->ctl));
    }
    free(counts);
    return rc;
}

/* ---------------------------------------------------------------------
 * Checkpoints
 * ------------------------------------------------------------------- */

/* Server i's hostname, for messages. */
static const char *s_server_host(const s_sched *s, uint32_t i, char *buf, size_t n)
{
    if (s->p->server_hosts && s->p->server_hosts[i])
        return s->p->server_hosts[i];
    if (gethostname(buf, n) != 0 || !memchr(buf, '\0', n))
        snprintf(buf, n, "localhost");
    return buf;
}

/* Sends h to every server, then waits for all replies; reply i goes to
 * replies[i] (released by the caller). */
static int s_ask_servers(s_sched *s, cm_hdr *h, cm_msg *replies, cm_error *err)
{
    const uint32_t n = s->p->n_servers;
    int timeout_ms = (int)(s->p->job->timeout * 1000);
    for (uint32_t i = 0; i < n; i++) {
        int rc = cm_msg_send(s->srv[i], NULL, 0, h, NULL, 0, NULL, 0);
        if (rc != 0)
            return cm_error_set(err, rc, "scheduler: cannot reach server %u: %s", i,
                                cm_sock_errmsg(s->srv[i]));
    }
    for (uint32_t i = 0; i < n; i++) {
        cm_error e = {0};
        char buf[256];
        int rc = cm_msg_recv(s->srv[i], &replies[i], timeout_ms, &e);
        if (rc == CM_ETIMEDOUT)
            return cm_error_set(err, rc, "scheduler: server %u on host %s did not answer %s "
                                "within %.0f s", i, s_server_host(s, i, buf, sizeof buf),
                                cm_op_name(h->op), s->p->job->timeout);
        if (rc != 0)
            return cm_error_set(err, rc, "scheduler: server %u on host %s: %s", i,
                                s_server_host(s, i, buf, sizeof buf), e.msg);
        if (replies[i].hdr.op == CM_OP_ERROR)
            return cm_error_set(err, CM_EREMOTE, "server %u on host %s: %s", i,
                                s_server_host(s, i, buf, sizeof buf), replies[i].hdr.error);
    }
    return 0;
}

/* Proves at start-up that checkpoint_dir is one filesystem for the
 * scheduler and every server: each server wrote its endpoint into it
 * (.psrec-token-<i>) before the bootstrap's allgather, so each mark is
 * there by now wherever the servers' writes are visible from here.
 * Refuses, naming the hosts, before any training (docs/checkpoints.md). */
static int s_ckpt_same_fs(s_sched *s, cm_error *err)
{
    const sch_params *p = s->p;
    const char *root = p->job->checkpoint_dir;
    char here[256], host[256], list[1024] = "";
    size_t used = 0;
    uint32_t missing = 0;
    if (gethostname(here, sizeof here) != 0 || !memchr(here, '\0', sizeof here))
        snprintf(here, sizeof here, "localhost");
    for (uint32_t i = 0; i < p->n_servers; i++) {
        cm_error e = {0};
        int rc = cm_ckpt_token_check(root, (int)i, p->server_eps[i], &e);
        if (rc == 0) {
            cm_ckpt_token_remove(root, (int)i, p->server_eps[i]);
            continue;
        }
        if (rc == CM_ESTATE)
            return cm_error_set(err, CM_ECONFIG, "checkpoint_dir: %s; two jobs must not share "
                                                 "one checkpoint_dir", e.msg);
        if (rc != CM_ENOTFOUND)
            return cm_error_set(err, rc, "checkpoint_dir: %s", e.msg);
        if (missing++ < 8 && used < sizeof list) {
            int k = snprintf(list + used, sizeof list - used, "%sserver %u on host %s",
                             used ? ", " : "", i, s_server_host(s, i, host, sizeof host));
            used += k > 0 ? (size_t)k : 0;
        }
    }
    if (missing)
        return cm_error_set(err, CM_ECONFIG,
                            "checkpoint_dir %s is not one filesystem for every server: the "
                            "scheduler on host %s does not see what %s%s wrote there at "
                            "start-up. Put checkpoint_dir on a shared filesystem that every "
                            "host mounts at the same path (NFS, Lustre, ...), or leave it "
                            "unset (docs/checkpoints.md)",
                            root, here, list, missing > 8 ? " and others" : "");
    return 0;
}

/* The manifest's file list from the servers' checkpoint replies: a file
 * per server and table, with the slots the server holds; *rows and
 * *bytes their totals. */
static int s_ckpt_files(const s_sched *s, const cm_msg *rep, cm_manifest *m, uint64_t *rows,
                        uint64_t *bytes, cm_error *err)
{
    const uint32_t n_tab = (uint32_t)s->p->n_tables;
    for (uint32_t i = 0; i < s->p->n_servers; i++) {
        const cm_ckpt_reply *cr = &rep[i].hdr.ckpt;
        if (rep[i].hdr.body != CM_BODY_CKPT || cr->n != n_tab)
            return cm_error_set(err, CM_EPROTO, "server %u: checkpoint reply lists %zu tables, "
                                "expected %u", i, rep[i].hdr.body == CM_BODY_CKPT ? cr->n : 0,
                                n_tab);
        for (uint32_t t = 0; t < n_tab; t++) {
            cm_ckpt_file *f = &m->files[m->n_files++];
            snprintf(f->name, sizeof f->name, "t%u-s%u.rows", t, i);
            f->table = t;
            f->size = cr->shard[t].size;
            f->checksum = cr->shard[t].checksum;
            f->rows = cr->shard[t].rows;
            f->writer = (int)i + 1;
            f->slots = malloc(s->n_slots * sizeof *f->slots);
            if (!f->slots)
                return cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
            for (uint32_t k = 0; k < s->n_slots; k++)
                if (s->slot_map[k] == i)
                    f->slots[f->n_slots++] = k;
            *rows += f->rows;
            *bytes += f->size;
        }
    }
    return 0;
}

/* A checkpoint is published only when every file is in dir as its
 * server reported it. */
static int s_ckpt_verify(const s_sched *s, const char *dir, const cm_manifest *m,
                         cm_error *err)
{
    for (size_t f = 0; f < m->n_files; f++) {
        cm_error e = {0};
        if (cm_ckpt_check_files(dir, &m->files[f], 1, &e) != 0) {
            char host[256];
            uint32_t i = (uint32_t)m->files[f].writer - 1;
            return cm_error_set(err, e.code == CM_ENOTFOUND ? CM_EIO : e.code,
                                "checkpoint %s not published: server %u on host %s wrote %s "
                                "(%llu bytes), which the scheduler does not find as reported: "
                                "%s",
                                dir, i, s_server_host(s, i, host, sizeof host), m->files[f].name,
                                (unsigned long long)m->files[f].size, e.msg);
        }
    }
    return 0;
}

/* The rest of the manifest: the job, its tables and slot map, the epoch,
 * its metrics and the validation's choice so far. */
static void s_ckpt_describe(const s_sched *s, int epoch, const sch_result *res,
                            char *job_text, cm_manifest *m)
{
    const sch_params *p = s->p;
    m->version = 1;
    m->job = job_text;
    snprintf(m->model, sizeof m->model, "%s", p->job->model);
    m->n_tables = (uint32_t)p->n_tables;
    m->tables = (cm_ckpt_table *)p->tables;
    m->n_slots = s->n_slots;
    m->slot_map = s->slot_map;
    m->epoch = (uint32_t)epoch;
    m->global_mean = s->mean;
    m->clip_lo = s->clip_lo;
    m->clip_hi = s->clip_hi;
    m->train_rmse = res->train_rmse;
    m->test_rmse = res->test_rmse;
    m->test_mae = res->test_mae;
    m->created_unix = (uint64_t)time(NULL);
    if (s->best.epoch > 0) {
        m->valid_metric = s->valid_metric;
        m->best_epoch = (uint32_t)s->best.epoch;
        m->best_valid = s->best.metric;
        m->stale_evals = (uint32_t)s->best.stale;
        m->best_test_rmse = s->chosen[0];
        m->best_test_mae = s->chosen[1];
        m->best_test_auc = s->chosen[2];
        m->best_test_logloss = s->chosen[3];
    }
    m->n_servers = p->n_servers;
    m->n_workers = p->n_workers;
}

static int s_checkpoint(s_sched *s, int epoch, const sch_result *res, cm_error *err)
{
    const sch_params *p = s->p;
    const cm_job *job = p->job;
    const uint32_t n_srv = p->n_servers, n_tab = (uint32_t)p->n_tables;
    double t0 = cm_now();
    char name[64], dir[CM_HDR_PATH_MAX];
    cm_ckpt_dirname((uint32_t)epoch, name, sizeof name);
    int rc = cm_ckpt_mkdir(job->checkpoint_dir, name, dir, sizeof dir, err);
    if (rc != 0)
        return rc;
    cm_msg *rep = calloc(n_srv, sizeof *rep);
    cm_manifest m = {0};
    m.files = calloc((size_t)n_srv * n_tab, sizeof *m.files);
    char *job_text = NULL;
    size_t job_len = 0;
    FILE *jf = open_memstream(&job_text, &job_len);
    if (!rep || !m.files || !jf) {
        rc = cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
        goto out;
    }
    cm_job_print(jf, job);
    fclose(jf);
    jf = NULL;
    /* workers first: the rows they hold (blocks: users) reach the servers */
    if ((rc = s_broadcast(s, CM_OP_CHECKPOINT, (uint32_t)epoch, 0, err)) != 0 ||
        (rc = s_gather(s, CM_OP_CHECKPOINT, (uint32_t)epoch, t0, err)) != 0)
        goto out;
    cm_hdr h = cm_hdr_make(CM_OP_CHECKPOINT);
    h.epoch = (uint32_t)epoch;
    /* a name: each server writes inside its own job's checkpoint_dir */
    snprintf(h.path, sizeof h.path, "%s", name);
    if ((rc = s_ask_servers(s, &h, rep, err)) != 0)
        goto out;
    uint64_t rows = 0, bytes = 0;
    if ((rc = s_ckpt_files(s, rep, &m, &rows, &bytes, err)) != 0 ||
        (rc = s_ckpt_verify(s, dir, &m, err)) != 0)
        goto out;
    s_ckpt_describe(s, epoch, res, job_text, &m);
    if ((rc = cm_manifest_write(dir, &m, err)) != 0)
        goto out;
    if ((rc = cm_ckpt_publish(job->checkpoint_dir, name, job->checkpoint_keep, err)) != 0)
        goto out;
    s->last_ckpt = cm_now();
    cm_log(CM_LOG_INFO, "checkpoint %s: %llu rows, %.1f MiB in %.2f s", dir,
           (unsigned long long)rows, bytes / 1048576.0, s->last_ckpt - t0);
out:
    if (jf)
        fclose(jf);
    free(job_text);
    for (size_t f = 0; m.files && f < m.n_files; f++)
        free(m.files[f].slots);
    free(m.files);
    for (uint32_t i = 0; rep && i < n_srv; i++)
        cm_msg_release(&rep[i]);
    free(rep);
    return rc;
}

/* Points the servers at a checkpoint and sets where training goes on. */
static int s_resume(s_sched *s, cm_error *err)
{
    const sch_params *p = s->p;
    const cm_job *job = p->job;
    char dir[CM_HDR_PATH_MAX];
    cm_manifest m = {0};
    cm_msg *rep = NULL;
    /* auto with nothing written yet (a crash before the first checkpoint,
     * or a first run under a restart loop) is a fresh start */
    if (strcmp(job->resume, "auto") == 0) {
        int any = cm_ckpt_any(job->checkpoint_dir, err);
        if (any < 0)
            return any;
        if (any == 0) {
            fprintf(p->out, "resume = auto: no checkpoint under %s yet; starting from "
                            "scratch\n", job->checkpoint_dir);
            fflush(p->out);
            return 0;
        }
    }
    int rc = cm_ckpt_resolve(job->checkpoint_dir, job->resume, dir, sizeof dir, err);
    if (rc != 0)
        return rc;
    if ((rc = cm_manifest_read(dir, &m, err)) != 0)
        goto out;
    if (strcmp(m.model, job->model) != 0 || m.n_tables != p->n_tables) {
        rc = cm_error_set(err, CM_ECONFIG, "%s: checkpoint of model '%s' with %zu tables, the "
                          "job trains '%s' with %zu", dir, m.model, m.n_tables, job->model,
                          p->n_tables);
        goto out;
    }
    for (size_t t = 0; t < m.n_tables; t++)
        if (m.tables[t].dim != p->tables[t].dim ||
            m.tables[t].row_floats != p->tables[t].row_floats) {
            rc = cm_error_set(err, CM_ECONFIG,
                              "%s: table %s has rows of %d weights + %d optimizer state, the "
                              "job's have %d + %d (dim and optimizer must match to resume)",
                              dir, m.tables[t].name, m.tables[t].dim,
                              m.tables[t].row_floats - m.tables[t].dim, p->tables[t].dim,
                              p->tables[t].row_floats - p->tables[t].dim);
            goto out;
        }
    if (m.n_slots != s->n_slots) {
        /* a key's slot depends on the slot count: keep the checkpoint's */
        cm_log(CM_LOG_INFO, "resume: using the checkpoint's %u slots", m.n_slots);
        s->n_slots = m.n_slots;
        free(s->slot_map);
        s->slot_map = malloc((size_t)s->n_slots * sizeof *s->slot_map);
        if (!s->slot_map) {
            rc = cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
            goto out;
        }
        sch_plan_slots(s->slot_map, s->n_slots, p->n_servers, NULL);
    }
    rep = calloc(p->n_servers, sizeof *rep);
    if (!rep) {
        rc = cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
        goto out;
    }
    cm_hdr h = cm_hdr_make(CM_OP_LOAD);
    /* servers load by name inside checkpoint_dir; "" when the job's resume
     * names a directory elsewhere, which every server reads from its own
     * copy of the job */
    size_t rl = strlen(job->checkpoint_dir);
    if (rl && strncmp(dir, job->checkpoint_dir, rl) == 0 && dir[rl] == '/' &&
        !strchr(dir + rl + 1, '/'))
        snprintf(h.path, sizeof h.path, "%s", dir + rl + 1);
    h.slots = s->slot_map;
    h.n_slots = s->n_slots;
    if ((rc = s_ask_servers(s, &h, rep, err)) != 0)
        goto out;
    uint64_t rows = 0;
    for (uint32_t i = 0; i < p->n_servers; i++)
        rows += rep[i].hdr.body == CM_BODY_LOADED ? rep[i].hdr.loaded.rows : 0;
    s->first_epoch = (int)m.epoch + 1;
    fprintf(p->out, "resumed from %s: epoch %u done (%llu rows, written by %u server%s)\n",
            dir, m.epoch, (unsigned long long)rows, m.n_servers, m.n_servers == 1 ? "" : "s");
    if (m.best_epoch > 0 && m.best_epoch <= m.epoch) {
        /* the choice so far goes on: the same epoch stays chosen and the
         * evaluations without improvement keep counting */
        s->best.epoch = (int)m.best_epoch;
        s->best.metric = m.best_valid;
        s->best.stale = (int)m.stale_evals;
        s->valid_metric = m.valid_metric;
        s->chosen[0] = m.best_test_rmse;
        s->chosen[1] = m.best_test_mae;
        s->chosen[2] = m.best_test_auc;
        s->chosen[3] = m.best_test_logloss;
        fprintf(p->out, "resumed: epoch %d chosen so far (validation %s %.4f), %d evaluation%s "
                "without improvement since\n", s->best.epoch, s_valid_name(s), s->best.metric,
                s->best.stale, s->best.stale == 1 ? "" : "s");
    }
    fflush(p->out);
out:
    for (uint32_t i = 0; rep && i < p->n_servers; i++)
        cm_msg_release(&rep[i]);
    free(rep);
    cm_manifest_free(&m);
    return rc;
}

/* Implicit feedback: EVAL to every worker, then the ranking metrics from
 * their sums (worker/implicit_train.h lists them), averaged over the test users
 * that could be scored. */
static int s_eval_ranking(s_sched *s, int e, double t0, sch_ranking *rk, double *users,
                          cm_error *err)
{
    const cm_job *job = s->p->job;
    int rc = s_broadcast(s, CM_OP_EVAL, (uint32_t)e, 0, err);
    if (rc == 0)
        rc = s_gather(s, CM_OP_EVAL_DONE, (uint32_t)e, t0, err);
    if (rc != 0)
        return rc;
    cm_ranking_done sum = {0}; /* counts summed as doubles, as the report prints them */
    double cold_users = 0, cold_items = 0, positives = 0, repeats = 0, n = 0;
    for (uint32_t w = 0; w < s->p->n_workers; w++) {
        const cm_ranking_done *r = &s->wk[w].ranking;
        sum.recall += r->recall;
        sum.ndcg += r->ndcg;
        sum.hit += r->hit;
        n += (double)r->users;
        sum.pop_recall += r->pop_recall;
        sum.pop_ndcg += r->pop_ndcg;
        sum.pop_hit += r->pop_hit;
        cold_users += (double)r->cold_users;
        cold_items += (double)r->cold_items;
        positives += (double)r->positives;
        repeats += (double)r->repeats;
    }
    *users = n;
    rk->k = job->top_k;
    if (n > 0) {
        rk->recall = sum.recall / n;
        rk->ndcg = sum.ndcg / n;
        rk->hr = sum.hit / n;
        rk->pop_recall = sum.pop_recall / n;
        rk->pop_ndcg = sum.pop_ndcg / n;
        rk->pop_hr = sum.pop_hit / n;
    } else {
        rk->recall = rk->ndcg = rk->hr = 0;
        rk->pop_recall = rk->pop_ndcg = rk->pop_hr = 0;
    }
    if (!s->warned_cold && (cold_users > 0 || cold_items > 0 || repeats > 0) &&
        (s->warned_cold = 1))
        cm_log(CM_LOG_WARN,
               "%s: of %llu test positives, %.0f users have no training positive and %.0f "
               "positives name an item without one (not scored), %.0f repeat a training "
               "positive of their user (left out); %.0f positives of %.0f users are scored",
               job->test, (unsigned long long)s->n_test, cold_users, cold_items, repeats,
               positives, n);
    if (n == 0 && !s->warned_cold && (s->warned_cold = 1))
        cm_log(CM_LOG_WARN, "%s: no test user can be scored (no test positive of a user "
               "with training positives)", job->test);
    return 0;
}

/* A non-finite loss means non-finite weights: the job stops here, before
 * anything of this epoch is reported as a result or checkpointed (a
 * diverged model must not be published, nor an earlier epoch's metric
 * printed as the final one). */
static int s_check_finite(const cm_job *job, int e, const char *what, double v, cm_error *err)
{
    if (isfinite(v))
        return 0;
    return cm_error_set(err, CM_ERANGE,
                        "epoch %d: training diverged: the %s is %s; stopping without "
                        "checkpointing this epoch (lr = %g with optimizer %s is too large "
                        "for this data: lower lr, or see docs/optimizers.md)",
                        e, what, isnan(v) ? "nan" : "infinite", job->lr,
                        cm_optimizer_name(job->optimizer));
}

/* The job was asked to stop (SIGTERM: preemption, a time limit) after
 * epoch e, whose checkpoint is written when checkpoints are on. */
static int s_stopped(const cm_job *job, int sig, int e, cm_error *err)
{
    if (!job->checkpoint_dir[0])
        return cm_error_set(err, CM_ESTATE, "stopped by signal %d (%s) after epoch %d of %d; "
                            "no checkpoint_dir, so this run's progress is not saved", sig,
                            strsignal(sig), e, job->epochs);
    char name[64];
    cm_ckpt_dirname((uint32_t)e, name, sizeof name);
    return cm_error_set(err, CM_ESTATE, "stopped by signal %d (%s) after epoch %d of %d; "
                        "checkpoint %s/%s is written: run the job again with --resume auto to "
                        "go on from it", sig, strsignal(sig), e, job->epochs,
                        job->checkpoint_dir, name);
}

/* One epoch's figures: gathered from the servers and workers, then
 * printed, recorded and kept as the result. -1 where a figure does not
 * apply (no test data, another task, not this epoch). */
typedef struct {
    int e;
    /* server tables as the epoch started: totals and per table */
    double srv_rows, srv_bytes, srv_evicted, srv_dropped;
    double tab_rows[S_MAX_TABLES], tab_bytes[S_MAX_TABLES];
    /* training */
    double secs, n, train_mse;
    double max_lead; /* -1: not tracked (asp, blocks) */
    /* evaluation */
    double rmse, mae, auc, logloss;
    uint64_t unseen;
    sch_ranking rk;
    double eval_users;
    double vmetric; /* validation metric */
    int improved;   /* vmetric is the best so far */
} s_epoch;

/* Servers first: they age their rows and report their tables. */
static int s_epoch_servers(s_sched *s, s_epoch *ep, cm_error *err)
{
    cm_msg *rep = calloc(s->p->n_servers, sizeof *rep);
    cm_hdr h = cm_hdr_make(CM_OP_EPOCH);
    h.epoch = (uint32_t)ep->e;
    int rc = rep ? s_ask_servers(s, &h, rep, err)
                 : cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
    for (uint32_t i = 0; rep && i < s->p->n_servers; i++) {
        const cm_table_stats *ts = &rep[i].hdr.tables;
        for (size_t k = 0; rc == 0 && rep[i].hdr.body == CM_BODY_TABLES && k < ts->n; k++) {
            const cm_table_stat *t = &ts->table[k];
            if (k < S_MAX_TABLES) {
                ep->tab_rows[k] += (double)t->rows;
                ep->tab_bytes[k] += (double)t->bytes;
            }
            ep->srv_rows += (double)t->rows;
            ep->srv_bytes += (double)t->bytes;
            ep->srv_evicted += (double)t->evicted;
            ep->srv_dropped += (double)t->dropped;
        }
        cm_msg_release(&rep[i]);
    }
    free(rep);
    return rc;
}

/* The workers train the epoch: minibatch, one round; blocks, one block per
 * worker: one round per block, each a barrier; more per worker: the
 * workers run the rounds themselves, ordered by the pushed-through clocks
 * they send. */
static int s_epoch_train(s_sched *s, s_epoch *ep, double t0, cm_error *err)
{
    const cm_job *job = s->p->job;
    cm_hb_doing(s->p->hb, "waiting for the workers to train epoch %d", ep->e);
    const uint32_t rounds = cm_job_uses_blocks(job) && s->bpw == 1 ? s->p->n_workers : 1;
    double sq = 0;
    int rc = 0;
    for (uint32_t r = 0; r < rounds && rc == 0; r++) {
        rc = s_broadcast(s, CM_OP_EPOCH, (uint32_t)ep->e, r, err);
        if (rc == 0)
            rc = s_gather(s, CM_OP_EPOCH_DONE, (uint32_t)ep->e, t0, err);
        for (uint32_t w = 0; w < s->p->n_workers && rc == 0; w++) {
            const cm_epoch_done *d = &s->wk[w].epoch_done;
            sq += d->loss;
            ep->n += (double)d->n;
            ep->max_lead = fmax(ep->max_lead, (double)d->max_lead);
        }
    }
    if (rc != 0)
        return rc;
    ep->secs = cm_now() - t0;
    sch_progress_clear(s->progress);
    ep->train_mse = ep->n > 0 ? sq / ep->n : 0;
    return s_check_finite(job, ep->e, "training loss", ep->train_mse, err);
}

/* The workers evaluate the epoch on the test and validation data (rating
 * and sparse models; implicit ranks in s_eval_ranking); a better
 * validation metric makes the epoch the chosen one. */
static int s_epoch_evaluate(s_sched *s, s_epoch *ep, double t0, cm_error *err)
{
    const cm_job *job = s->p->job;
    const uint32_t e = (uint32_t)ep->e;
    cm_hb_doing(s->p->hb, "waiting for the workers to evaluate epoch %d", ep->e);
    if (s->auc_pos)
        memset(s->auc_pos, 0, 2 * (size_t)CM_AUC_BINS * sizeof *s->auc_pos);
    int rc = s_broadcast(s, CM_OP_EVAL, e, 0, err);
    if (rc == 0)
        rc = s_gather(s, CM_OP_EVAL_DONE, e, t0, err);
    if (rc != 0)
        return rc;
    double tsq = 0, tab = 0, tn = 0, tll = 0, vsq = 0, vn = 0, vll = 0;
    for (uint32_t w = 0; w < s->p->n_workers; w++) {
        const cm_eval_done *ev = &s->wk[w].eval;
        tsq += ev->test_sq;
        tab += ev->test_abs;
        tn += (double)ev->test_n;
        ep->unseen += ev->unseen;
        tll += ev->test_logloss;
        vsq += ev->valid_sq;
        vn += (double)ev->valid_n;
        vll += ev->valid_logloss;
    }
    if ((rc = s_check_finite(job, ep->e, "test loss", tsq + tll, err)) != 0 ||
        (rc = s_check_finite(job, ep->e, "validation loss", vsq + vll, err)) != 0)
        return rc;
    if (vn > 0)
        ep->vmetric = s->task == CM_TASK_BINARY ? vll / vn : sqrt(vsq / vn);
    ep->rmse = tn > 0 ? sqrt(tsq / tn) : -1;
    ep->mae = tn > 0 ? tab / tn : -1;
    if (s->task == CM_TASK_BINARY && tn > 0) {
        ep->auc = cm_auc_from_hist(s->auc_pos, s->auc_neg);
        ep->logloss = tll / tn;
    }
    if (!s->warned_unseen && ep->unseen > 0 && (s->warned_unseen = 1))
        cm_log(CM_LOG_WARN,
               "%s: %llu of %llu test rows have a user or item never seen in "
               "training; they are predicted from the global mean and whichever "
               "bias is known",
               job->test, (unsigned long long)ep->unseen, (unsigned long long)s->n_test);
    if (ep->vmetric >= 0) {
        s->valid_metric = ep->vmetric;
        if ((ep->improved = sch_best_add(&s->best, ep->e, ep->vmetric)) != 0) {
            s->chosen[0] = ep->rmse;
            s->chosen[1] = ep->mae;
            s->chosen[2] = ep->auc;
            s->chosen[3] = ep->logloss;
        }
    }
    return 0;
}

/* The epoch's line on the output. */
static void s_epoch_print(s_sched *s, const s_epoch *ep, double rate)
{
    const cm_job *job = s->p->job;
    FILE *out = s->p->out;
    if (s->implicit)
        fprintf(out, "epoch %3d/%d  train_loss %.4f", ep->e, job->epochs, ep->train_mse);
    else if (s->task == CM_TASK_BINARY)
        fprintf(out, "epoch %3d/%d  train_logloss %.4f", ep->e, job->epochs, ep->train_mse);
    else
        fprintf(out, "epoch %3d/%d  train_rmse %.4f", ep->e, job->epochs, sqrt(ep->train_mse));
    if (ep->rk.recall >= 0) {
        char text[256];
        sch_ranking_text(text, sizeof text, &ep->rk);
        fprintf(out, "  %s", text);
    } else if (ep->auc >= 0)
        fprintf(out, "  test_auc %.4f  test_logloss %.4f", ep->auc, ep->logloss);
    else if (ep->rmse >= 0)
        fprintf(out, "  test_rmse %.4f  test_mae %.4f", ep->rmse, ep->mae);
    if (ep->vmetric >= 0)
        fprintf(out, "  valid_%s %.4f%s", s->task == CM_TASK_BINARY ? "logloss" : "rmse",
                ep->vmetric, ep->improved ? " (best)" : "");
    fprintf(out, "  %.3gM ex/s  %.2f s\n", rate / 1e6, ep->secs);
    fflush(out);
}

/* The epoch's record in the metrics file. */
static int s_epoch_record(s_sched *s, const s_epoch *ep, const sch_result *res, double rate,
                          cm_error *err)
{
    const cm_job *job = s->p->job;
    const sch_ranking *rk = &ep->rk;
    sch_field f[] = {
        {"epoch", ep->e, 0},
        {"train_loss", ep->train_mse, 0},
        {"train_rmse", s->task == CM_TASK_BINARY ? -1 : sqrt(ep->train_mse), 1},
        {"test_rmse", ep->rmse, 1},
        {"test_mae", ep->mae, 1},
        {"examples_per_s", rate, 0},
        {"seconds", ep->secs, 0},
        {"elapsed", cm_now() - s->t_start, 0},
        {"noise_floor", res->noise_floor, 1},
        {"test_auc", ep->auc, 1},
        {"test_logloss", ep->logloss, 1},
        /* server tables as the epoch started */
        {"server_rows", ep->srv_rows, 0},
        {"server_bytes", ep->srv_bytes, 0},
        {"evicted", ep->srv_evicted, 0},
        {"dropped_gradients", ep->srv_dropped, 0},
        {"max_lead", ep->max_lead, 1},
        /* validation: the metric of this epoch, and the chosen epoch so far */
        {"valid_rmse", s->task != CM_TASK_BINARY ? ep->vmetric : -1, 1},
        {"valid_logloss", s->task == CM_TASK_BINARY ? ep->vmetric : -1, 1},
        {"best_epoch", s->best.epoch > 0 ? s->best.epoch : -1, 1},
        /* implicit feedback only (the count below leaves them out) */
        {"top_k", job->top_k, 0},
        {"recall_at_k", rk->recall, 1},
        {"ndcg_at_k", rk->ndcg, 1},
        {"hr_at_k", rk->hr, 1},
        {"pop_recall_at_k", rk->pop_recall, 1},
        {"pop_ndcg_at_k", rk->pop_ndcg, 1},
        {"pop_hr_at_k", rk->pop_hr, 1},
        {"eval_users", ep->eval_users, 1},
    };
    size_t nf = sizeof f / sizeof f[0] - (s->implicit ? 0 : 8);
    if (s->implicit)
        f[2].value = -1; /* no rmse of a ranking loss */
    /* then each table's rows and bytes over all servers:
     * rows_<table>, bytes_<table> */
    sch_field all[sizeof f / sizeof f[0] + 2 * S_MAX_TABLES];
    char names[2 * S_MAX_TABLES][80];
    /* a binary task's squared error is not its metric: leave
     * test_rmse and test_mae out rather than have scripts read them */
    size_t kept = 0;
    for (size_t k = 0; k < nf; k++)
        if (s->task != CM_TASK_BINARY ||
            (strcmp(f[k].name, "test_rmse") != 0 && strcmp(f[k].name, "test_mae") != 0))
            all[kept++] = f[k];
    nf = kept;
    for (size_t t = 0; t < s->p->n_tables && t < S_MAX_TABLES; t++) {
        snprintf(names[2 * t], sizeof names[0], "rows_%s", s->p->tables[t].name);
        snprintf(names[2 * t + 1], sizeof names[0], "bytes_%s", s->p->tables[t].name);
        all[nf++] = (sch_field){names[2 * t], ep->tab_rows[t], 0};
        all[nf++] = (sch_field){names[2 * t + 1], ep->tab_bytes[t], 0};
    }
    return sch_metrics_write(s->metrics, all, nf, err);
}

/* The epoch's figures into the job's result (the last epoch's stay). */
static void s_epoch_result(const s_epoch *ep, sch_result *res)
{
    res->epochs = ep->e;
    if (ep->max_lead > res->max_lead)
        res->max_lead = ep->max_lead;
    res->train_rmse = sqrt(ep->train_mse);
    if (ep->rk.recall >= 0) {
        res->top_k = ep->rk.k;
        res->recall = ep->rk.recall;
        res->ndcg = ep->rk.ndcg;
        res->hr = ep->rk.hr;
        res->pop_recall = ep->rk.pop_recall;
        res->pop_ndcg = ep->rk.pop_ndcg;
        res->pop_hr = ep->rk.pop_hr;
        res->eval_users = (uint64_t)ep->eval_users;
    }
    if (ep->rmse >= 0) {
        res->test_rmse = ep->rmse;
        res->test_mae = ep->mae;
        res->n_unseen = ep->unseen;
        res->test_auc = ep->auc;
        res->test_logloss = ep->logloss;
    }
}

/* Writes the checkpoint of epoch e where one is due (checkpoint_every,
 * the last epoch, a stop, a better or the last validation metric,
 * checkpoint_secs); the chosen epoch's is published as the best. */
static int s_epoch_checkpoint(s_sched *s, const s_epoch *ep, int stop, int early,
                              const sch_result *res, cm_error *err)
{
    const cm_job *job = s->p->job;
    const int e = ep->e;
    if (!job->checkpoint_dir[0] ||
        !((job->checkpoint_every > 0 && e % job->checkpoint_every == 0) || e == job->epochs ||
          stop || ep->improved || early ||
          (job->checkpoint_secs > 0 && cm_now() - s->last_ckpt >= job->checkpoint_secs)))
        return 0;
    cm_hb_doing(s->p->hb, "writing the checkpoint of epoch %d", e);
    int rc = s_checkpoint(s, e, res, err);
    if (rc != 0)
        return rc;
    /* after LATEST: the chosen epoch's model is what export reads */
    if (!ep->improved)
        return 0;
    char name[64];
    cm_ckpt_dirname((uint32_t)e, name, sizeof name);
    return cm_ckpt_publish_best(job->checkpoint_dir, name, err);
}

static int s_epochs(s_sched *s, sch_result *res, cm_error *err)
{
    const cm_job *job = s->p->job;
    double train_secs = 0;
    uint64_t examples = 0;
    for (int e = s->first_epoch; e <= job->epochs; e++) {
        s_epoch ep = {.e = e, .max_lead = -1, .rmse = -1, .mae = -1, .auc = -1,
                      .logloss = -1, .rk = {job->top_k, -1, -1, -1, -1, -1, -1},
                      .eval_users = -1, .vmetric = -1};
        int rc = s_epoch_servers(s, &ep, err);
        if (rc != 0)
            return rc;
        const double t0 = cm_now();
        if ((rc = s_epoch_train(s, &ep, t0, err)) != 0)
            return rc;
        train_secs += ep.secs;
        examples += (uint64_t)ep.n;
        const int evaluate = (s->n_test > 0 || s->n_valid > 0) &&
                             (e % job->eval_every == 0 || e == job->epochs);
        if (evaluate && s->implicit)
            rc = s_eval_ranking(s, e, t0, &ep.rk, &ep.eval_users, err);
        else if (evaluate)
            rc = s_epoch_evaluate(s, &ep, t0, err);
        if (rc != 0)
            return rc;
        const double rate = ep.secs > 0 ? ep.n / ep.secs : 0;
        s_epoch_print(s, &ep, rate);
        if (s->metrics && (rc = s_epoch_record(s, &ep, res, rate, err)) != 0)
            return rc;
        s_epoch_result(&ep, res);
        res->seconds = train_secs;
        res->examples_per_s = train_secs > 0 ? (double)examples / train_secs : 0;
        const int stop = e < job->epochs ? cm_stop_requested() : 0;
        const int early = e < job->epochs && ep.vmetric >= 0 && sch_best_exhausted(&s->best);
        if ((rc = s_epoch_checkpoint(s, &ep, stop, early, res, err)) != 0)
            return rc;
        if (stop)
            return s_stopped(job, stop, e, err);
        if (early) {
            res->early_stopped = 1;
            fprintf(s->p->out, "early stop after epoch %d of %d: validation %s has not improved "
                    "on epoch %d's %.4f for %d evaluation%s (patience %d)\n", e, job->epochs,
                    s_valid_name(s), s->best.epoch, s->best.metric, s->best.stale,
                    s->best.stale == 1 ? "" : "s", job->patience);
            fflush(s->p->out);
            return 0;
        }
    }
    return 0;
}

int sch_stop_servers(cm_van *van, uint32_t n_servers, const char *const *server_eps,
                     int timeout_ms, uint64_t *rows, uint64_t *bytes, cm_error *err)
{
    int rc = 0;
    if (rows)
        *rows = 0;
    if (bytes)
        *bytes = 0;
    for (uint32_t i = 0; i < n_servers; i++) {
        cm_sock *d = cm_sock_new(van, CM_SOCK_DEALER, err);
        if (!d)
            return err ? err->code : CM_EIO;
        cm_hdr h = cm_hdr_make(CM_OP_STOP);
        cm_msg m = {0};
        int r = cm_sock_connect(d, server_eps[i]);
        if (r == 0)
            r = cm_msg_send(d, NULL, 0, &h, NULL, 0, NULL, 0);
        if (r == 0)
            r = cm_msg_recv(d, &m, timeout_ms, err);
        if (r == 0 && m.hdr.op == CM_OP_REPLY) {
            for (size_t k = 0; m.hdr.body == CM_BODY_TABLES && k < m.hdr.tables.n; k++) {
                if (rows)
                    *rows += m.hdr.tables.table[k].rows;
                if (bytes)
                    *bytes += m.hdr.tables.table[k].bytes;
            }
        } else if (rc == 0) {
            rc = cm_error_set(err, r ? r : CM_EPROTO, "scheduler: server %u (%s) did not stop "
                              "cleanly", i, server_eps[i]);
        }
        cm_msg_release(&m);
        cm_sock_destroy(&d);
    }
    return rc;
}

/* The run's result becomes the chosen epoch's: its test figures (the test
 * data played no part in choosing it). */
static void s_choose(s_sched *s, sch_result *res)
{
    res->best_epoch = s->best.epoch;
    res->valid_metric = s->best.metric;
    if (s->chosen[0] >= 0) {
        res->test_rmse = s->chosen[0];
        res->test_mae = s->chosen[1];
        res->test_auc = s->chosen[2];
        res->test_logloss = s->chosen[3];
    }
}

/* " (epoch 7 of 12, chosen on validation RMSE 0.9123)" on the final line. */
static void s_print_chosen(const s_sched *s, const sch_result *res)
{
    if (s->p->job->refit_part_ == 2)
        fprintf(s->p->out, " (refit: all %llu training examples, the epoch count chosen on "
                "validation)", (unsigned long long)res->n_train);
    else if (res->best_epoch > 0)
        fprintf(s->p->out, " (epoch %d of %d, chosen on validation %s %.4f%s)", res->best_epoch,
                res->epochs, s_valid_name(s), res->valid_metric,
                res->early_stopped ? ", stopped early" : "");
}

/* The metrics file's last record: what the run reports as its result. */
static int s_final_record(s_sched *s, const sch_result *res, cm_error *err)
{
    const int binary = s->task == CM_TASK_BINARY;
    const double valid = res->best_epoch > 0 ? res->valid_metric : -1;
    sch_field f[] = {
        {"final", 1, 0},
        {"epochs", res->epochs, 0},
        {"chosen_epoch", res->best_epoch > 0 ? res->best_epoch : res->epochs, 0},
        {"chosen_on_validation", res->best_epoch > 0, 0},
        {"early_stop", res->early_stopped, 0},
        /* as on the epoch lines: a binary task has no RMSE or MAE at all, a
         * regression's AUC and log loss are null */
        {binary ? "valid_logloss" : "valid_rmse", valid, 1},
        {binary ? "test_auc" : "test_rmse", binary ? res->test_auc : res->test_rmse, 1},
        {binary ? "test_logloss" : "test_mae", binary ? res->test_logloss : res->test_mae, 1},
        {"test_auc", -1, 1},
        {"test_logloss", -1, 1},
    };
    return sch_metrics_write(s->metrics, f, sizeof f / sizeof f[0] - (binary ? 2 : 0), err);
}

void sch_result_init(sch_result *res)
{
    memset(res, 0, sizeof *res);
    res->test_rmse = res->test_mae = res->noise_floor = -1;
    res->test_auc = res->test_logloss = -1;
    res->max_lead = -1;
    res->recall = res->ndcg = res->hr = -1;
    res->pop_recall = res->pop_ndcg = res->pop_hr = -1;
}

/* The job's last line: the final test metrics (or the validation choice
 * when there is no test file), with the chosen epoch. */
static void s_print_final(const s_sched *s, const sch_result *res)
{
    FILE *out = s->p->out;
    /* a validation run that a refit follows does not give the result */
    const char *final = s->p->job->refit_part_ == 1 ? "validation run:" : "final";
    if (res->recall >= 0) {
        sch_ranking rk = {res->top_k, res->recall, res->ndcg, res->hr, res->pop_recall,
                          res->pop_ndcg, res->pop_hr};
        char text[256];
        sch_ranking_text(text, sizeof text, &rk);
        fprintf(out, "%s %s over %llu users after %d epochs, %.2f s training\n", final, text,
                (unsigned long long)res->eval_users, res->epochs, res->seconds);
        fflush(out);
    } else if (res->test_auc >= 0) {
        fprintf(out, "%s test AUC %.4f  log loss %.4f", final, res->test_auc, res->test_logloss);
        s_print_chosen(s, res);
        fprintf(out, " after %d epochs, %.2f s training\n", res->epochs, res->seconds);
        fflush(out);
    } else if (res->test_rmse >= 0) {
        fprintf(out, "%s test RMSE %.4f  MAE %.4f", final, res->test_rmse, res->test_mae);
        s_print_chosen(s, res);
        fprintf(out, " after %d epochs, %.2f s training", res->epochs, res->seconds);
        if (res->noise_floor >= 0)
            fprintf(out, "  (noise floor %.4f, %.1f%% above)", res->noise_floor,
                    100.0 * (res->test_rmse / res->noise_floor - 1.0));
        fputc('\n', out);
        fflush(out);
    } else if (res->best_epoch > 0) {
        /* no test file: the choice is the result */
        fprintf(out, "%s validation %s %.4f (epoch %d of %d%s; no test file) after %d "
                "epochs, %.2f s training\n", final, s_valid_name(s), res->valid_metric,
                res->best_epoch, res->epochs, res->early_stopped ? ", stopped early" : "",
                res->epochs, res->seconds);
        fflush(out);
    }
}

/* Connects a DEALER to every server. */
static int s_connect_servers(s_sched *s, cm_error *err)
{
    const sch_params *p = s->p;
    for (uint32_t i = 0; i < p->n_servers; i++) {
        if (!(s->srv[i] = cm_sock_new(p->van, CM_SOCK_DEALER, err)))
            return err ? err->code : CM_EIO;
        if (cm_sock_connect(s->srv[i], p->server_eps[i]) != 0)
            return cm_error_set(err, CM_EIO, "scheduler: cannot connect to server %u at %s: %s",
                                i, p->server_eps[i], cm_sock_errmsg(s->srv[i]));
    }
    return 0;
}

int sch_run(const sch_params *p, sch_result *res, cm_error *err)
{
    s_sched s = {.p = p, .t_start = cm_now(), .first_epoch = 1, .load_ok = 1,
                 .warn = {.per_minute = S_WARN_PER_MINUTE},
                 .implicit = cm_job_model(p->job)->family == CM_FAMILY_IMPLICIT,
                 .best = sch_best_start(p->job->patience), .valid_metric = -1,
                 .chosen = {-1, -1, -1, -1}};
    s.want_items = s.implicit || cm_job_uses_blocks(p->job);
    s.last_ckpt = s.t_start;
    sch_result_init(res);
    int rc = 0;
    s.wk = calloc(p->n_workers, sizeof *s.wk);
    s.progress = sch_progress_new(p->job->progress);
    if (!s.wk || !s.progress) {
        rc = cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
        goto out;
    }
    s.srv = calloc(p->n_servers, sizeof *s.srv);
    s.load = calloc((size_t)p->job->slots, sizeof *s.load);
    if (!s.srv || !s.load) {
        rc = cm_error_set(err, CM_ENOMEM, "scheduler: out of memory");
        goto out;
    }
    if ((rc = s_connect_servers(&s, err)) != 0)
        goto out;
    if (p->job->metrics[0] &&
        !(s.metrics = sch_metrics_open(p->job->metrics,
                                        p->job->resume[0] != 0 || p->job->refit_part_ == 2,
                                        p->job->refit_part_ == 2 ? "refit" : NULL, err))) {
        rc = err ? err->code : CM_EIO;
        goto out;
    }
    if ((rc = s_hellos(&s, err)) != 0)
        goto out;
    if (p->job->checkpoint_dir[0] && (rc = s_ckpt_same_fs(&s, err)) != 0)
        goto out;
    /* a fresh run must not leave an earlier run's chosen epoch for export */
    if (p->job->checkpoint_dir[0] && !p->job->resume[0] &&
        (rc = cm_ckpt_forget_best(p->job->checkpoint_dir, err)) != 0)
        goto out;
    if ((rc = s_plan(&s, res, err)) != 0)
        goto out;
    if (p->job->resume[0] && (rc = s_resume(&s, err)) != 0)
        goto out;
    if ((rc = s_send_plan(&s, err)) != 0)
        goto out;
    if (s.implicit)
        sch_progress_set_label(s.progress, "loss");
    if ((rc = s_epochs(&s, res, err)) != 0)
        goto out;
    if (s.best.epoch > 0)
        s_choose(&s, res);
    if (s.metrics && (rc = s_final_record(&s, res, err)) != 0)
        goto out;
    s_print_final(&s, res);
out:
    sch_progress_destroy(&s.progress);
    sch_metrics_close(&s.metrics);
    if (rc != 0 && p->say_errors_as && err) {
        fprintf(stderr, "%s%s\n", p->say_errors_as, err->msg);
        fflush(stderr);
        res->error_said = 1;
    }
    /* stop everyone, success or not, so no role waits forever */
    if (s.wk)
        for (uint32_t w = 0; w < p->n_workers; w++)
            if (s.wk[w].route_size) {
                cm_hdr h = cm_hdr_make(CM_OP_STOP);
                s_send(&s, w, &h, NULL);
            }
    cm_error se = {0};
    cm_hb_doing(p->hb, "stopping the servers");
    /* after a failure the job ends by the runtime's abort: a stalled server
     * must not hold that up by a whole timeout */
    int stop_ms = (int)(p->job->timeout * 1000);
    if (rc != 0 && stop_ms > 1000)
        stop_ms = 1000;
    int src = sch_stop_servers(p->van, p->n_servers, p->server_eps, stop_ms,
                               &res->server_rows,
                               &res->server_bytes, &se);
    if (src != 0)
        cm_log(CM_LOG_WARN, "%s", se.msg);
    else
        cm_log(CM_LOG_INFO, "servers held %llu rows in %.1f MiB",
               (unsigned long long)res->server_rows, res->server_bytes / 1048576.0);
    for (uint32_t i = 0; s.srv && i < p->n_servers; i++)
        cm_sock_destroy(&s.srv[i]);
    free(s.srv);
    free(s.slot_map);
    free(s.load);
    free(s.auc_pos);
    free(s.items);
    free(s.counts);
    free(s.wk);
    return rc;
}
