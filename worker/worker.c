#include "worker/worker.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/affinity.h"
#include "common/dataset.h"
#include "common/features.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/msg.h"
#include "common/rng.h"
#include "common/slots.h"
#include "common/sorted.h"
#include "worker/blocks.h"
#include "worker/evalset.h"
#include "worker/implicit_train.h"
#include "worker/ingest.h"
#include "worker/kv.h"
#include "worker/models/model.h"
#include "worker/reglearn.h"
#include "worker/sparse.h"

/* Keys touched by one batch for one table, with the rows pulled for them
 * and their gradient sums. Buffers are reused from batch to batch. */
typedef struct {
    uint64_t *uniq;       /* unique sorted keys */
    uint32_t *idx;        /* per example: position in uniq */
    size_t n_uniq;
    float *rows;          /* n_uniq * dim pulled values */
    float *grads;         /* n_uniq * dim gradient sums */
} s_tkeys;

typedef struct {
    const wk_params *p;
    const wk_model_ops *model;
    wk_model_ctx ctx;
    int dims[WK_MAX_TABLES];
    int row_floats[WK_MAX_TABLES];  /* weights + optimizer state */
    cm_optim optim;                 /* the tables' optimizer (blocks schedule) */
    cm_table_spec user_table;       /* table 0's parameters (blocks: local init) */
    wk_blocks *blocks;              /* blocks schedule: this shard by item block */
    uint32_t *iloc;                 /* blocks, until indexed: each rating's item as a */
    uint64_t *iuniq;                /* place in iuniq, the shard's n_iuniq sorted */
    size_t n_iuniq;                 /* items (s_send_items numbers them once) */
    uint32_t bpw;                   /* blocks: item blocks per worker */
    uint32_t gate_epoch;            /* blocks, 2 per worker: the epoch running */
    uint64_t gate_need;             /* rounds every worker must have pushed through */
    uint64_t pushed;                /* rounds whose pushes this worker reported acked */
    uint64_t pushed_target;         /* rounds whose pushes are sent */
    cm_error *gate_err;             /* where the gate reports */
    wk_dsgd *dsgd;                  /* blocks: which block in which round */
    int family;                     /* the model's cm_family */
    wk_sparse *sparse;              /* sparse-feature models: examples instead of ratings */
    wk_implicit *implicit;          /* model = implicit: positives, sampler, ranking */
    size_t raw_train, raw_test;     /* implicit: shard rows before positive_threshold */
    size_t epoch_done;              /* examples trained so far this epoch */
    double epoch_sq;
    double last_report;
    uint32_t progress_epoch;
    uint64_t min_clock;             /* SSP/BSP: the slowest worker's clock, as last heard */
    /* this worker's shard, owned copies; the validation rows ride at the
     * end of test (one evaluation pass scores both): the first n_test are
     * the test file's */
    cm_ratings train, test;
    size_t n_test;
    /* control and data connections */
    cm_sock *ctl;
    wk_kv *kv;
    /* batch buffers, sized for the larger of batch and eval batch */
    size_t cap;
    uint64_t *ex_keys;    /* per-example keys of one table */
    uint64_t *scratch;    /* 2*cap for dedupe */
    float *label;
    float *pred;
    uint32_t *order;      /* shuffled example order */
    s_tkeys tk[2];
    /* the second set of batch buffers: with ASP the next minibatch's pull
     * is in flight while this one computes (s_train_epoch) */
    s_tkeys tk_alt[2];
    float *label_alt;
    wk_pull reqs[2];      /* the pull in flight */
    /* evaluation of rating models: the test shard's chunks (built at the
     * first evaluation) and two sets of rows, so that the pull of chunk
     * c + 1 is in flight while chunk c is scored */
    wk_evalset *evalset;
    float *erows[2][2];   /* [set][table] */
    float *epred;
    unsigned char *eknown[2]; /* per distinct key of a chunk: a row the servers know */
    uint32_t **eplace;        /* blocks: per chunk, its users' places among the held
                                 rows (wk_blocks_user_places), found once */
    float ***eitem;           /* blocks, shared item rows: per chunk, each item's row
                                 in the servers' memory (NULL: none), found once */
} s_worker;

static void s_free_eitem(s_worker *w)
{
    for (size_t c = 0; w->eitem && c < wk_evalset_count(w->evalset); c++)
        free(w->eitem[c]);
    free(w->eitem);
    w->eitem = NULL;
}

/* ---------------------------------------------------------------------
 * Setup
 * ------------------------------------------------------------------- */

static int s_alloc(s_worker *w, size_t cap, cm_error *err)
{
    w->cap = cap;
    w->ex_keys = malloc(cap * sizeof *w->ex_keys);
    w->scratch = malloc(2 * cap * sizeof *w->scratch);
    w->label = malloc(cap * sizeof *w->label);
    w->label_alt = malloc(cap * sizeof *w->label_alt);
    w->pred = malloc(cap * sizeof *w->pred);
    int ok = w->ex_keys && w->scratch && w->label && w->label_alt && w->pred;
    for (int t = 0; t < 4; t++) {
        s_tkeys *k = t < 2 ? &w->tk[t] : &w->tk_alt[t - 2];
        size_t dim = (size_t)w->dims[t % 2];
        k->uniq = malloc(cap * sizeof(uint64_t));
        k->idx = malloc(cap * sizeof(uint32_t));
        k->rows = aligned_alloc(64, ((cap * dim * sizeof(float)) + 63) / 64 * 64);
        k->grads = aligned_alloc(64, ((cap * dim * sizeof(float)) + 63) / 64 * 64);
        ok = ok && k->uniq && k->idx && k->rows && k->grads;
    }
    return ok ? 0 : cm_error_set(err, CM_ENOMEM, "worker: out of memory for batch buffers");
}

static void s_free(s_worker *w)
{
    free(w->ex_keys);
    free(w->scratch);
    free(w->label);
    free(w->label_alt);
    free(w->pred);
    free(w->order);
    for (int t = 0; t < 4; t++) {
        s_tkeys *k = t < 2 ? &w->tk[t] : &w->tk_alt[t - 2];
        free(k->uniq);
        free(k->idx);
        free(k->rows);
        free(k->grads);
    }
    wk_dsgd_destroy(&w->dsgd);
    for (size_t c = 0; w->eplace && c < wk_evalset_count(w->evalset); c++)
        free(w->eplace[c]);
    free(w->eplace);
    s_free_eitem(w);
    wk_evalset_destroy(&w->evalset);
    for (int t = 0; t < 4; t++)
        free(w->erows[t / 2][t % 2]);
    free(w->epred);
    free(w->eknown[0]);
    free(w->eknown[1]);
    cm_ratings_free(&w->train);
    cm_ratings_free(&w->test);
    wk_blocks_destroy(&w->blocks);
    free(w->iloc);
    free(w->iuniq);
    wk_sparse_destroy(&w->sparse);
    wk_implicit_destroy(&w->implicit);
    wk_kv_destroy(&w->kv);
    cm_sock_destroy(&w->ctl);
}

/* Loads `path` and keeps the rows of the users this worker owns
 * (worker/ingest.h: a scan, or under MPI an all-to-all among the workers). */
static int s_load_shard(const wk_params *p, const char *path, cm_ratings *out,
                        double *noise_floor, size_t *bad_lines, cm_error *err)
{
    cm_load_opts opts = cm_load_opts_default();
    opts.max_bad_lines = p->job->max_bad_lines;
    /* every worker reads the same file: only the first reports bad lines */
    opts.log_bad_lines = p->index == 0 ? opts.log_bad_lines : 0;
    wk_ratings_columns(p->job, &opts);
    wk_ingest in = {.boot = p->boot, .first_rank = 1 + (int)p->n_servers,
                    .index = p->index, .n_workers = p->n_workers,
                    .force_scan = p->job->ingest == CM_INGEST_SCAN};
    return wk_ingest_ratings(&in, path, &opts, out, noise_floor, bad_lines, err);
}

/* Validation rows (docs/validation.md): the job's validation file's share
 * of this worker, or the rows of its training shard that cm_ratings_carve
 * holds out (then not trained on). They are appended to w->test after the
 * test file's n_test rows. */
static int s_validation(s_worker *w, cm_error *err)
{
    const cm_job *job = w->p->job;
    cm_ratings v = {0}, kept = {0};
    int rc = 0;
    if (job->validation[0]) {
        double nf = -1;
        size_t bad = 0;
        if ((rc = s_load_shard(w->p, job->validation, &v, &nf, &bad, err)) != 0)
            return rc;
    } else if (job->validation_fraction > 0) {
        if ((rc = cm_ratings_carve(&w->train, job->validation_fraction, job->seed, &kept, &v,
                                   err)) != 0)
            return rc;
        cm_ratings_free(&w->train);
        w->train = kept;
    }
    if (v.n == 0) {
        cm_ratings_free(&v);
        return 0;
    }
    const size_t n = w->test.n + v.n;
    uint64_t *user = malloc(n * sizeof *user), *item = malloc(n * sizeof *item);
    float *rating = malloc(n * sizeof *rating);
    if (!user || !item || !rating) {
        free(user);
        free(item);
        free(rating);
        cm_ratings_free(&v);
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for %zu validation rows",
                            v.n);
    }
    const cm_ratings *parts[2] = {&w->test, &v};
    for (size_t k = 0, at = 0; k < 2; at += parts[k]->n, k++) {
        if (parts[k]->n == 0)
            continue;
        memcpy(user + at, parts[k]->user, parts[k]->n * sizeof *user);
        memcpy(item + at, parts[k]->item, parts[k]->n * sizeof *item);
        memcpy(rating + at, parts[k]->rating, parts[k]->n * sizeof *rating);
    }
    cm_ratings_free(&v);
    const double nf = w->test.noise_floor;
    const size_t bad = w->test.bad_lines;
    cm_ratings_free(&w->test);
    if ((rc = cm_ratings_adopt(user, item, rating, n, &w->test, err)) != 0)
        return rc;
    w->test.noise_floor = nf;
    w->test.bad_lines = bad;
    return 0;
}

/* Sends a control message (op, epoch and body as the caller set them) to
 * the scheduler. */
static int s_tell(s_worker *w, cm_hdr *h, cm_error *err)
{
    h->sender = w->p->rank;
    int rc = cm_msg_send(w->ctl, NULL, 0, h, NULL, 0, NULL, 0);
    if (rc != 0)
        return cm_error_set(err, rc, "worker: cannot reach the scheduler: %s",
                            cm_sock_errmsg(w->ctl));
    return 0;
}

/* A control message of op for epoch, with no body yet. */
static cm_hdr s_ctl(int op, uint32_t epoch)
{
    cm_hdr h = cm_hdr_make(op);
    h.epoch = epoch;
    return h;
}

/* PROGRESS: examples done this epoch and their loss so far. */
static int s_progress(s_worker *w, uint32_t epoch, uint64_t done, double loss, cm_error *err)
{
    cm_hdr h = s_ctl(CM_OP_PROGRESS, epoch);
    h.body = CM_BODY_PROGRESS;
    h.progress = (cm_progress){done, loss};
    return s_tell(w, &h, err);
}

/* EPOCH_DONE: the epoch's loss over n examples, from t0 on; max_lead -1
 * when this schedule does not track clocks. */
static int s_epoch_done(s_worker *w, uint32_t epoch, double loss, uint64_t n, double t0,
                        int64_t max_lead, cm_error *err)
{
    cm_hdr h = s_ctl(CM_OP_EPOCH_DONE, epoch);
    h.body = CM_BODY_EPOCH;
    h.epoch_done = (cm_epoch_done){loss, n, cm_now() - t0, max_lead};
    return s_tell(w, &h, err);
}

/* Fills the batch's deduplicated keys for rows[first..first+m) in `order`
 * (or in file order when order is NULL). */
static void s_make_batch(s_worker *w, const cm_ratings *d, const uint32_t *order,
                         size_t first, size_t m, wk_batch *b)
{
    const uint64_t *cols[2] = {d->user, d->item};
    for (int t = 0; t < 2; t++) {
        for (size_t j = 0; j < m; j++) {
            size_t row = order ? order[first + j] : first + j;
            w->ex_keys[j] = cols[t][row];
        }
        cm_dedupe_u64(w->ex_keys, m, w->tk[t].uniq, w->tk[t].idx, &w->tk[t].n_uniq, w->scratch);
    }
    for (size_t j = 0; j < m; j++)
        w->label[j] = d->rating[order ? order[first + j] : first + j];
    b->n = m;
    b->uidx = w->tk[0].idx;
    b->iidx = w->tk[1].idx;
    b->label = w->label;
}

/* Starts the pull of the rows of the batch in w->tk. */
static int s_pull_start(s_worker *w, uint32_t flags, cm_error *err)
{
    for (int t = 0; t < 2; t++)
        w->reqs[t] = (wk_pull){(uint32_t)t, w->tk[t].uniq, w->tk[t].n_uniq, w->tk[t].rows,
                               flags, 0};
    return wk_kv_pull_start(w->kv, w->reqs, 2, err);
}

static int s_pull_batch(s_worker *w, uint32_t flags, cm_error *err)
{
    int rc = s_pull_start(w, flags, err);
    return rc != 0 ? rc : wk_kv_pull_wait(w->kv, err);
}

/* Swaps the two sets of batch buffers. */
static void s_swap_sets(s_worker *w)
{
    for (int t = 0; t < 2; t++) {
        s_tkeys k = w->tk[t];
        w->tk[t] = w->tk_alt[t];
        w->tk_alt[t] = k;
    }
    float *l = w->label;
    w->label = w->label_alt;
    w->label_alt = l;
}

/* ---------------------------------------------------------------------
 * Epochs
 * ------------------------------------------------------------------- */

/* Inside an epoch: takes the scheduler's next message, which must be a
 * CLOCK (the least clock of all workers; kept in w->min_clock when it is
 * for `epoch`). wait: up to the job's timeout (CM_ETIMEDOUT then says
 * `what` was awaited); else only a message already here (CM_ETIMEDOUT,
 * err untouched, when there is none). */
static int s_recv_clock(s_worker *w, uint32_t epoch, int wait, const char *what,
                        cm_error *err)
{
    const cm_job *job = w->p->job;
    cm_msg m = {0};
    cm_error e = {0};
    int rc = cm_msg_recv(w->ctl, &m, wait ? (int)(job->timeout * 1000) : 0, &e);
    int op = m.hdr.op;
    uint32_t ep = m.hdr.epoch;
    uint64_t clk = m.hdr.clock;
    cm_msg_release(&m);
    if (rc == CM_ETIMEDOUT)
        return wait ? cm_error_set(err, rc, "worker: waited %.0f s for %s", job->timeout, what)
                    : rc;
    if (rc != 0) {
        if (err)
            *err = e;
        return rc;
    }
    if (op == CM_OP_STOP)
        return cm_error_set(err, CM_ECLOSED, "worker: stopped while waiting for %s", what);
    if (op != CM_OP_CLOCK)
        return cm_error_set(err, CM_EPROTO, "worker: unexpected %s inside an epoch",
                            cm_op_name(op));
    if (ep == epoch && clk > w->min_clock)
        w->min_clock = clk;
    return 0;
}

/* SSP/BSP: before minibatch `c` (0-based) waits until the slowest worker
 * has done at least c - staleness minibatches of this epoch. */
static int s_wait_clock(s_worker *w, uint32_t epoch, uint64_t c, cm_error *err)
{
    const cm_job *job = w->p->job;
    const uint64_t s = job->consistency == CM_CONS_BSP ? 0 : (uint64_t)job->staleness;
    while (c > w->min_clock + s) {
        int rc = s_recv_clock(w, epoch, 1, "the slowest worker's clock", err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int s_train_epoch(s_worker *w, uint32_t epoch, cm_error *err)
{
    const cm_job *job = w->p->job;
    const size_t n = w->train.n;
    double t0 = cm_now(), last_report = t0;
    cm_rng rng;
    cm_rng_seed(&rng, cm_mix64(job->seed ^ cm_mix64(((uint64_t)w->p->index << 32) | epoch)));
    for (size_t j = 0; j < n; j++)
        w->order[j] = (uint32_t)j;
    cm_rng_shuffle_u32(&rng, w->order, n);

    double sq = 0;
    const size_t bs = (size_t)job->batch;
    const int synced = job->consistency != CM_CONS_ASP;
    /* ASP never waits for other workers, so it also need not wait for its
     * own pulls: batch t+1's rows are pulled while batch t computes (they
     * miss batch t's own update: one minibatch of staleness, which ASP
     * allows anyway). SSP and BSP keep pull, compute, push in lockstep so
     * their bounds stay exact. */
    const int pipelined = !synced;
    uint64_t clock = 0, max_lead = 0;
    w->min_clock = 0;
    wk_batch next;
    if (pipelined && n > 0) {
        s_make_batch(w, &w->train, w->order, 0, n < bs ? n : bs, &next);
        int rc = s_pull_start(w, 0, err);
        if (rc != 0)
            return rc;
    }
    for (size_t first = 0; first < n; first += bs, clock++) {
        size_t m = n - first < bs ? n - first : bs;
        wk_batch b;
        int rc;
        if (synced) {
            if ((rc = s_wait_clock(w, epoch, clock, err)) != 0)
                return rc;
            if (clock > w->min_clock && clock - w->min_clock > max_lead)
                max_lead = clock - w->min_clock;
        }
        if (pipelined) {
            b = next;
            if ((rc = wk_kv_pull_wait(w->kv, err)) != 0)
                return rc;
        } else {
            s_make_batch(w, &w->train, w->order, first, m, &b);
            if ((rc = s_pull_batch(w, 0, err)) != 0)
                return rc;
        }
        /* this batch's buffers, whatever the next one does with w->tk */
        s_tkeys cur[2] = {w->tk[0], w->tk[1]};
        if (pipelined && first + bs < n) {
            s_swap_sets(w);
            size_t m2 = n - (first + bs) < bs ? n - (first + bs) : bs;
            s_make_batch(w, &w->train, w->order, first + bs, m2, &next);
            if ((rc = s_pull_start(w, 0, err)) != 0)
                return rc;
        }
        const float *rows[2] = {cur[0].rows, cur[1].rows};
        float *grads[2] = {cur[0].grads, cur[1].grads};
        for (int t = 0; t < 2; t++)
            memset(grads[t], 0, cur[t].n_uniq * (size_t)w->dims[t] * sizeof(float));
        sq += w->model->train(&w->ctx, &b, w->dims[0], rows, grads);
        for (int t = 0; t < 2; t++) {
            rc = wk_kv_push(w->kv, (uint32_t)t, cur[t].uniq, cur[t].n_uniq, grads[t], err);
            if (rc != 0)
                return rc;
        }
        if (synced) {
            cm_hdr h = cm_hdr_make(CM_OP_CLOCK);
            h.sender = w->p->rank;
            h.epoch = epoch;
            h.clock = clock + 1;
            if ((rc = cm_msg_send(w->ctl, NULL, 0, &h, NULL, 0, NULL, 0)) != 0)
                return cm_error_set(err, rc, "worker: cannot reach the scheduler: %s",
                                    cm_sock_errmsg(w->ctl));
        }
        double now = cm_now();
        if (now - last_report > 0.25) {
            if ((rc = s_progress(w, epoch, first + m, sq, err)) != 0)
                return rc;
            last_report = now;
        }
    }
    int rc = wk_kv_flush(w->kv, err);
    if (rc != 0)
        return rc;
    /* the most minibatches this worker led the slowest by */
    return s_epoch_done(w, epoch, sq, n, t0, synced ? (int64_t)max_lead : -1, err);
}

static int s_block_progress(void *arg, size_t done)
{
    s_worker *w = arg;
    double now = cm_now();
    if (now - w->last_report < 0.25)
        return 0;
    w->last_report = now;
    return s_progress(w, w->progress_epoch, w->epoch_done + done, w->epoch_sq, NULL);
}

/* Blocks, k >= 2 per worker: tells the scheduler that this worker's pushes
 * of its first `rounds` rounds are acknowledged. */
static int s_tell_pushed(s_worker *w, uint64_t rounds, cm_error *err)
{
    cm_hdr h = cm_hdr_make(CM_OP_CLOCK);
    h.sender = w->p->rank;
    h.epoch = w->gate_epoch;
    h.clock = rounds;
    int rc = cm_msg_send(w->ctl, NULL, 0, &h, NULL, 0, NULL, 0);
    if (rc != 0)
        return cm_error_set(err, rc, "worker: cannot reach the scheduler: %s",
                            cm_sock_errmsg(w->ctl));
    w->pushed = rounds;
    return 0;
}

/* Blocks, k >= 2 per worker: the gate before pulling the next round's
 * block. That block was last trained k - 1 rounds before this one, so its
 * rows may be pulled once every worker's pushes of that round are
 * acknowledged (w->gate_need rounds pushed through): each worker reports
 * its own (a CLOCK of rounds pushed through) as the acks come in, and the
 * scheduler publishes the least of them. */
static int s_block_gate(void *arg, int wait)
{
    s_worker *w = arg;
    cm_error *err = w->gate_err;
    for (;;) {
        int rc = wait ? wk_kv_flush(w->kv, err) : wk_kv_poll(w->kv, err);
        if (rc != 0)
            return rc;
        if (w->pushed < w->pushed_target && wk_kv_pushes_pending(w->kv) == 0 &&
            (rc = s_tell_pushed(w, w->pushed_target, err)) != 0)
            return rc;
        if (w->min_clock >= w->gate_need)
            return 1;
        rc = s_recv_clock(w, w->gate_epoch, wait, "the other workers' pushes", err);
        if (rc == CM_ETIMEDOUT && !wait)
            return 0;
        if (rc != 0)
            return rc;
    }
}

/* One pass of the blocks schedule over block `block` of `epoch`. */
static int s_block_pass(s_worker *w, uint32_t epoch, uint32_t block, uint32_t next, int async,
                        double *sq, size_t *n, cm_error *err)
{
    wk_block_pass pass = {
        .block = block,
        .next = next,
        .seed = cm_mix64(w->p->job->seed ^
                         cm_mix64(((uint64_t)epoch << 40) ^ ((uint64_t)block << 20) ^
                                  w->p->index)),
        .progress = s_block_progress,
        .gate = async ? s_block_gate : NULL,
        .arg = w,
        .async = async,
    };
    size_t before = *n;
    double sq_before = *sq;
    int rc = wk_blocks_train(w->blocks, w->kv, w->model, &w->ctx, &w->optim, &pass, sq, n, err);
    w->epoch_done += *n - before; /* for the progress reports */
    w->epoch_sq += *sq - sq_before;
    return rc;
}

/* Blocks schedule, the EPOCH message of round `round` of `epoch`. With one
 * block per worker: train this round's block (the scheduler's barrier
 * separates rounds). With k >= 2: run all kW rounds of the epoch here, the
 * next block's rows coming in while one trains and the deltas going out
 * without waiting, rounds ordered by the gate alone (s_block_gate); every
 * push is acknowledged before EPOCH_DONE. */
static int s_train_block(s_worker *w, uint32_t epoch, uint32_t round, cm_error *err)
{
    double t0 = cm_now();
    if (round == 0) {
        w->epoch_done = 0;
        w->epoch_sq = 0;
    }
    w->progress_epoch = epoch;
    w->last_report = t0;
    double sq = 0;
    size_t n = 0;
    int rc = 0;
    if (w->bpw == 1) {
        const uint32_t block = wk_dsgd_block(w->dsgd, w->p->index, epoch, round);
        rc = s_block_pass(w, epoch, block, UINT32_MAX, 0, &sq, &n, err);
    } else {
        const uint32_t k = w->bpw, nb = k * w->p->n_workers;
        w->gate_epoch = epoch;
        w->gate_err = err;
        w->min_clock = w->pushed = w->pushed_target = 0;
        for (uint32_t r = 0; r < nb && rc == 0; r++) {
            /* the next block was last trained in round r + 1 - k: every
             * worker's pushes through that round */
            w->gate_need = r + 2 > k ? r + 2 - k : 0;
            w->pushed_target = r;
            const uint32_t me = w->p->index;
            uint32_t next = r + 1 < nb ? wk_dsgd_block(w->dsgd, me, epoch, r + 1) : UINT32_MAX;
            rc = s_block_pass(w, epoch, wk_dsgd_block(w->dsgd, me, epoch, r), next, 1, &sq, &n,
                              err);
        }
        if (rc == 0)
            rc = wk_kv_flush(w->kv, err);
    }
    if (rc != 0)
        return rc;
    return s_epoch_done(w, epoch, sq, n, t0, -1, err);
}

/* Before a checkpoint: the blocks schedule's user rows live on the worker
 * between checkpoints; push their changes so the servers' files hold the
 * whole model, then tell the scheduler. */
static int s_before_checkpoint(s_worker *w, uint32_t epoch, cm_error *err)
{
    if (w->blocks) {
        double t0 = cm_now();
        int rc = wk_blocks_writeback(w->blocks, w->kv, err);
        if (rc != 0)
            return rc;
        cm_log(CM_LOG_DEBUG, "worker %u: user rows written back in %.3f s", w->p->index,
               cm_now() - t0);
    }
    cm_hdr h = s_ctl(CM_OP_CHECKPOINT, epoch);
    return s_tell(w, &h, err);
}

static int s_sparse_progress(void *arg, size_t done, double loss)
{
    s_worker *w = arg;
    double now = cm_now();
    if (now - w->last_report < 0.25)
        return 0;
    w->last_report = now;
    return s_progress(w, w->progress_epoch, done, loss, NULL);
}

/* Sparse-feature models: one epoch of minibatches. The loss reported is
 * the squared error (regression) or the log loss (binary) summed. */
static int s_train_sparse(s_worker *w, uint32_t epoch, cm_error *err)
{
    double t0 = cm_now(), loss = 0;
    size_t n = 0;
    w->progress_epoch = epoch;
    w->last_report = t0;
    uint64_t seed = cm_mix64(w->p->job->seed ^ cm_mix64(((uint64_t)w->p->index << 32) | epoch));
    int rc = wk_sparse_train(w->sparse, w->kv, w->model, &w->ctx, seed, s_sparse_progress, w,
                             &loss, &n, err);
    if (rc != 0)
        return rc;
    if (wk_sparse_task(w->sparse) != CM_TASK_BINARY)
        loss *= 2; /* the model sums (y - t)^2 / 2 */
    /* sparse jobs have always reported a lead of 0 */
    return s_epoch_done(w, epoch, loss, n, t0, 0, err);
}

/* Learned l2 (reglearn.h): the chunk's validation ratings scored again
 * with every pulled row scaled by 1 +- eps. */
static int s_reg_chunk(s_worker *w, const wk_eval_chunk *ch, const float *const *rows,
                       const wk_batch *b, wk_reg_sums *reg, cm_error *err)
{
    const size_t n0 = ch->n_uniq[0] * (size_t)w->dims[0];
    const size_t n1 = ch->n_uniq[1] * (size_t)w->dims[1];
    float *buf = malloc((n0 + n1 + 2 * ch->n + 1) * sizeof *buf);
    if (!buf)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for learning l2");
    float *up = buf + n0 + n1, *down = up + ch->n;
    const float *scaled[2] = {buf, buf + n0};
    for (int k = 0; k < 2; k++) {
        const float t = k == 0 ? 1.f + WK_REG_EPS : 1.f - WK_REG_EPS;
        wk_reg_scale(rows[0], buf, n0, t);
        wk_reg_scale(rows[1], buf + n0, n1, t);
        w->model->predict(&w->ctx, b, w->dims[0], scaled, k == 0 ? up : down);
    }
    /* the validation ratings are the shard's last ones (from n_test on) */
    const size_t from = ch->first >= w->n_test ? 0 : w->n_test - ch->first;
    wk_reg_add(reg, 0, w->epred + from, up + from, down + from, b->label + from, ch->n - from);
    free(buf);
    return 0;
}

/* Moves this worker's l2 after an evaluation (each worker learns its own
 * from its validation rows; docs/validation.md). */
static void s_reg_update(s_worker *w, uint32_t epoch, const wk_reg_sums *reg)
{
    const double before = w->ctx.l2;
    w->ctx.l2 = (float)wk_reg_next(before, reg);
    cm_log(CM_LOG_INFO, "worker %u: epoch %u: learned l2 %.4g -> %.4g (dL_valid/dl2 %.3g)",
           w->p->index, epoch, before, (double)w->ctx.l2, wk_reg_grad(reg, w->p->job->lr));
}

/* Sparse-feature models: error sums, and AUC histograms for binary tasks. */
static int s_eval_sparse(s_worker *w, uint32_t epoch, cm_error *err)
{
    const int binary = wk_sparse_task(w->sparse) == CM_TASK_BINARY;
    uint64_t *hist = binary ? calloc(2 * (size_t)CM_AUC_BINS, sizeof *hist) : NULL;
    if (binary && !hist)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory");
    double ev[4], vv[4];
    wk_reg_sums reg = {0};
    int rc = wk_sparse_eval(w->sparse, w->kv, w->model, &w->ctx, ev, hist,
                            hist ? hist + CM_AUC_BINS : NULL, err);
    if (rc == 0)
        rc = wk_sparse_eval_valid(w->sparse, w->kv, w->model, &w->ctx, vv,
                                  w->p->job->regularization == 1 ? &reg : NULL, err);
    if (rc == 0 && w->p->job->regularization == 1)
        s_reg_update(w, epoch, &reg);
    if (rc == 0) {
        cm_hdr h = s_ctl(CM_OP_EVAL_DONE, epoch);
        h.body = CM_BODY_EVAL;
        /* ev and vv: squared error, absolute error, count, log loss */
        h.eval_done = (cm_eval_done){
            .test_sq = ev[0], .test_abs = ev[1], .test_n = (uint64_t)ev[2],
            .test_logloss = ev[3], .valid_sq = vv[0], .valid_abs = vv[1],
            .valid_n = (uint64_t)vv[2], .valid_logloss = vv[3],
            .n_auc = hist ? CM_AUC_BINS : 0, .auc_pos = hist,
            .auc_neg = hist ? hist + CM_AUC_BINS : NULL};
        rc = s_tell(w, &h, err);
    }
    free(hist);
    return rc;
}

/* A row that was never trained reads back as zeros (NO_CREATE pull). */
static int s_row_known(const float *row, int dim)
{
    for (int k = 0; k < dim; k++)
        if (row[k] != 0.f)
            return 1;
    return 0;
}

/* A row's dim weights into out, or zeros for a row nobody has (NULL). */
static void s_put_row(float *out, const float *row, size_t dim)
{
    if (row)
        memcpy(out, row, dim * sizeof *out);
    else
        memset(out, 0, dim * sizeof *out);
}

/* Blocks schedule: the rows of chunk c's users from the rows this worker
 * holds (users it does not hold read as zeros, as a pull without creating
 * would give), so evaluation needs no write-back. */
static void s_local_user_rows(s_worker *w, size_t c, float *out)
{
    const size_t dim = (size_t)w->dims[0], n = wk_evalset_chunk(w->evalset, c)->n_uniq[0];
    for (size_t k = 0; k < n; k++)
        s_put_row(out + k * dim, wk_blocks_user_row_at(w->blocks, w->eplace[c][k]), dim);
}

/* Blocks schedule with shared item rows: chunk c's item rows read from
 * the servers' memory (an item no server has reads as zeros, as a pull
 * without creating would give). */
static void s_placed_item_rows(s_worker *w, size_t c, float *out)
{
    const size_t dim = (size_t)w->dims[1], n = wk_evalset_chunk(w->evalset, c)->n_uniq[1];
    for (size_t k = 0; k < n; k++)
        s_put_row(out + k * dim, w->eitem[c][k], dim);
}

/* Where each chunk's item rows sit in the servers' memory, asked once
 * (without making rows): evaluation follows training, by when every item
 * with a training rating has its row, and rows never move. Where the rows
 * cannot be reached so, evaluation pulls them by messages. */
static int s_eval_places(s_worker *w, cm_error *err)
{
    const size_t n_chunks = wk_evalset_count(w->evalset);
    if (!(w->eitem = calloc(n_chunks + 1, sizeof *w->eitem)))
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for evaluation places");
    cm_error why = {0};
    for (size_t c = 0; c < n_chunks; c++) {
        const wk_eval_chunk *ch = wk_evalset_chunk(w->evalset, c);
        if (!(w->eitem[c] = malloc((ch->n_uniq[1] + 1) * sizeof **w->eitem))) {
            s_free_eitem(w);
            return cm_error_set(err, CM_ENOMEM, "worker: out of memory for evaluation places");
        }
        int rc = wk_kv_place(w->kv, 1, ch->uniq[1], ch->n_uniq[1], 0, w->eitem[c], &why);
        if (rc == CM_ENOTSUP) {
            s_free_eitem(w);
            cm_log(CM_LOG_DEBUG, "worker %u: evaluation pulls item rows (%s)", w->p->index,
                   why.msg);
            return 0;
        }
        if (rc != 0) {
            s_free_eitem(w);
            return cm_error_set(err, rc, "%s", why.msg);
        }
    }
    return 0;
}

/* Test ratings per evaluation chunk: one pull of at most this many rows
 * per table. */
#define S_EVAL_CHUNK 131072

static int s_eval_setup(s_worker *w, cm_error *err)
{
    w->evalset = wk_evalset_new(&w->test, S_EVAL_CHUNK, err);
    if (!w->evalset)
        return err ? err->code : CM_ENOMEM;
    size_t most = w->test.n < S_EVAL_CHUNK ? w->test.n : S_EVAL_CHUNK;
    w->epred = malloc((most + 1) * sizeof *w->epred);
    int ok = w->epred != NULL;
    for (int t = 0; t < 4; t++) {
        size_t rows = wk_evalset_max_uniq(w->evalset, t % 2) + 1;
        w->erows[t / 2][t % 2] = malloc(rows * (size_t)w->dims[t % 2] * sizeof(float));
        ok = ok && w->erows[t / 2][t % 2];
        if (t < 2)
            ok = ok && (w->eknown[t] = malloc(rows));
    }
    /* blocks: where each chunk's users sit among the held rows, once */
    const size_t n_chunks = wk_evalset_count(w->evalset);
    if (ok && w->blocks && (ok = (w->eplace = calloc(n_chunks + 1, sizeof *w->eplace)) != NULL))
        for (size_t c = 0; ok && c < n_chunks; c++) {
            const wk_eval_chunk *ch = wk_evalset_chunk(w->evalset, c);
            if ((ok = (w->eplace[c] = malloc((ch->n_uniq[0] + 1) * sizeof **w->eplace)) != NULL))
                wk_blocks_user_places(w->blocks, ch->uniq[0], ch->n_uniq[0], w->eplace[c]);
        }
    if (!ok)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for evaluation rows");
    if (w->blocks && wk_blocks_items_shared(w->blocks) && wk_blocks_holds_users(w->blocks))
        return s_eval_places(w, err);
    return 0;
}

/* Starts the pull of chunk c's rows into set c % 2 (items only when the
 * users are held here). */
static int s_eval_pull_start(s_worker *w, size_t c, int local, cm_error *err)
{
    const wk_eval_chunk *ch = wk_evalset_chunk(w->evalset, c);
    size_t n = 0;
    for (int t = local ? 1 : 0; t < 2; t++)
        w->reqs[n++] = (wk_pull){(uint32_t)t, ch->uniq[t], ch->n_uniq[t], w->erows[c % 2][t],
                                 CM_PULL_NO_CREATE, 0};
    return wk_kv_pull_start(w->kv, w->reqs, n, err);
}

static int s_eval(s_worker *w, uint32_t epoch, cm_error *err)
{
    const cm_ratings *d = &w->test;
    double sq = 0, ab = 0, vsq = 0, vab = 0;
    size_t unseen = 0;
    int rc;
    const int learn = w->p->job->regularization == 1;
    wk_reg_sums reg = {0};
    if (!w->evalset && (rc = s_eval_setup(w, err)) != 0)
        return rc;
    /* blocks: the users' rows are here and may be newer than the servers';
     * with shared item rows (placed) nothing is pulled */
    const int local = w->blocks && wk_blocks_holds_users(w->blocks);
    const int placed = local && w->eitem;
    const size_t n_chunks = wk_evalset_count(w->evalset);
    if (n_chunks > 0 && !placed && (rc = s_eval_pull_start(w, 0, local, err)) != 0)
        return rc;
    const double t0 = cm_now();
    double waited = 0;
    for (size_t c = 0; c < n_chunks; c++) {
        const double tw = cm_now();
        if (!placed && (rc = wk_kv_pull_wait(w->kv, err)) != 0)
            return rc;
        waited += cm_now() - tw;
        const wk_eval_chunk *ch = wk_evalset_chunk(w->evalset, c);
        const float *rows[2] = {w->erows[c % 2][0], w->erows[c % 2][1]};
        if (local)
            s_local_user_rows(w, c, w->erows[c % 2][0]);
        if (placed)
            s_placed_item_rows(w, c, w->erows[c % 2][1]);
        else if (c + 1 < n_chunks && (rc = s_eval_pull_start(w, c + 1, local, err)) != 0)
            return rc;
        for (int t = 0; t < 2; t++)
            for (size_t k = 0; k < ch->n_uniq[t]; k++)
                w->eknown[t][k] =
                    (unsigned char)s_row_known(rows[t] + k * w->dims[t], w->dims[t]);
        const float *label = d->rating + ch->first;
        wk_batch b = {ch->n, ch->idx[0], ch->idx[1], label};
        w->model->predict(&w->ctx, &b, w->dims[0], rows, w->epred);
        if (learn && ch->first + ch->n > w->n_test &&
            (rc = s_reg_chunk(w, ch, rows, &b, &reg, err)) != 0)
            return rc;
        for (size_t j = 0; j < ch->n; j++) {
            float pr = w->epred[j];
            if (pr < w->ctx.clip_lo)
                pr = w->ctx.clip_lo;
            if (pr > w->ctx.clip_hi)
                pr = w->ctx.clip_hi;
            double e = (double)pr - label[j];
            if (ch->first + j >= w->n_test) {
                vsq += e * e;
                vab += fabs(e);
                continue;
            }
            sq += e * e;
            ab += fabs(e);
            unseen += !(w->eknown[0][b.uidx[j]] & w->eknown[1][b.iidx[j]]);
        }
    }
    cm_log(CM_LOG_DEBUG, "worker %u: %zu test ratings scored in %.3f s (%.3f s waiting for rows)",
           w->p->index, d->n, cm_now() - t0, waited);
    if (learn)
        s_reg_update(w, epoch, &reg);
    cm_hdr h = s_ctl(CM_OP_EVAL_DONE, epoch);
    h.body = CM_BODY_EVAL;
    h.eval_done = (cm_eval_done){.test_sq = sq, .test_abs = ab, .test_n = w->n_test,
                                 .unseen = unseen, .valid_sq = vsq, .valid_abs = vab,
                                 .valid_n = d->n - w->n_test};
    return s_tell(w, &h, err);
}

/* ---------------------------------------------------------------------
 * Implicit feedback (worker/implicit_train.h does the work)
 * ------------------------------------------------------------------- */

/* Keeps the positives of the loaded shards (train and test alike). */
static int s_implicit_positives(s_worker *w, cm_error *err)
{
    const double thr = w->p->job->positive_threshold;
    cm_ratings *sets[2] = {&w->train, &w->test};
    size_t *raw[2] = {&w->raw_train, &w->raw_test};
    for (int k = 0; k < 2; k++) {
        cm_ratings pos = {0};
        int rc = wk_implicit_positives(sets[k], thr, &pos, err);
        if (rc != 0)
            return rc;
        *raw[k] = sets[k]->n;
        pos.noise_floor = -1;
        cm_ratings_free(sets[k]);
        *sets[k] = pos;
    }
    return 0;
}

/* Second HELLO: this shard's items (sorted keys) and their positives. */
static int s_send_items(s_worker *w, cm_error *err)
{
    const cm_ratings *tr = &w->train;
    uint32_t *loc = malloc((tr->n + 1) * sizeof *loc);
    uint64_t *uniq = NULL;
    float *count = NULL;
    size_t n = 0;
    int rc = loc ? wk_blocks_index_keys(tr->item, tr->n, loc, &uniq, &n) : CM_ENOMEM;
    if (rc == 0 && !(count = calloc(n + 1, sizeof *count)))
        rc = CM_ENOMEM;
    if (rc != 0) {
        rc = cm_error_set(err, rc, "worker: out of memory for %zu items", tr->n);
        goto out;
    }
    for (size_t j = 0; j < tr->n; j++)
        count[loc[j]] += 1.f;
    cm_hdr h = cm_hdr_make(CM_OP_HELLO);
    h.sender = w->p->rank;
    h.flags = CM_HELLO_ITEMS;
    h.dim = 1;
    if ((rc = cm_msg_send(w->ctl, NULL, 0, &h, uniq, n, count, n)) != 0)
        cm_error_set(err, rc, "worker: cannot send its items to the scheduler: %s",
                     cm_sock_errmsg(w->ctl));
    if (rc == 0 && cm_job_uses_blocks(w->p->job)) { /* wk_blocks_new numbers them alike */
        w->iloc = loc;
        w->iuniq = uniq;
        w->n_iuniq = n;
        loc = NULL;
        uniq = NULL;
    }
out:
    free(loc);
    free(uniq);
    free(count);
    return rc;
}

/* The PLAN of an implicit job carries the item universe: sorted keys and
 * their training positives over all workers. */
static int s_implicit_setup(s_worker *w, const cm_msg *m, cm_error *err)
{
    size_t n = (size_t)m->hdr.n_keys;
    if (n == 0 || !m->keys || !m->vals || m->n_vals != n)
        return cm_error_set(err, CM_EPROTO, "worker: the PLAN of an implicit job has no item "
                            "list (%zu keys, %zu counts)", n, m->n_vals);
    w->implicit = wk_implicit_new(w->p->job, &w->train, &w->test, m->keys, m->vals, n, w->dims,
                                  err);
    return w->implicit ? 0 : (err ? err->code : CM_ENOMEM);
}

/* Around each implicit minibatch: the same clocks and progress as
 * s_train_epoch's. */
typedef struct {
    s_worker *w;
    uint32_t epoch;
    int synced;
    uint64_t max_lead;
    double last_report;
} s_ihook;

static int s_ihook_before(void *arg, uint64_t clock, cm_error *err)
{
    s_ihook *h = arg;
    if (!h->synced)
        return 0;
    int rc = s_wait_clock(h->w, h->epoch, clock, err);
    if (rc == 0 && clock > h->w->min_clock && clock - h->w->min_clock > h->max_lead)
        h->max_lead = clock - h->w->min_clock;
    return rc;
}

static int s_ihook_after(void *arg, uint64_t clock, size_t done, double loss, cm_error *err)
{
    s_ihook *h = arg;
    s_worker *w = h->w;
    int rc;
    if (h->synced) {
        cm_hdr c = cm_hdr_make(CM_OP_CLOCK);
        c.sender = w->p->rank;
        c.epoch = h->epoch;
        c.clock = clock + 1;
        if ((rc = cm_msg_send(w->ctl, NULL, 0, &c, NULL, 0, NULL, 0)) != 0)
            return cm_error_set(err, rc, "worker: cannot reach the scheduler: %s",
                                cm_sock_errmsg(w->ctl));
    }
    double now = cm_now();
    if (now - h->last_report > 0.25) {
        if ((rc = s_progress(w, h->epoch, done, loss, err)) != 0)
            return rc;
        h->last_report = now;
    }
    return 0;
}

static int s_train_implicit(s_worker *w, uint32_t epoch, cm_error *err)
{
    double t0 = cm_now(), loss = 0;
    size_t n = 0;
    s_ihook h = {.w = w, .epoch = epoch, .synced = w->p->job->consistency != CM_CONS_ASP,
                 .last_report = t0};
    wk_implicit_hooks hooks = {s_ihook_before, s_ihook_after, &h};
    w->min_clock = 0;
    int rc = wk_implicit_train(w->implicit, w->kv, epoch, w->p->index, &hooks, &loss, &n, err);
    if (rc != 0)
        return rc;
    return s_epoch_done(w, epoch, loss, n, t0, h.synced ? (int64_t)h.max_lead : -1, err);
}

static int s_eval_implicit(s_worker *w, uint32_t epoch, cm_error *err)
{
    cm_hdr h = s_ctl(CM_OP_EVAL_DONE, epoch);
    h.body = CM_BODY_RANKING;
    int rc = wk_implicit_eval(w->implicit, w->kv, &h.ranking, err);
    if (rc != 0)
        return rc;
    return s_tell(w, &h, err);
}

/* ---------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------- */

static int s_hello_and_plan(s_worker *w, cm_error *err)
{
    const cm_ratings *tr = &w->train;
    /* the load each slot will see from this shard: one request per rating
     * for its user's slot and its item's slot, or per feature occurrence
     * (the scheduler evens it out) */
    const uint32_t n_slots = (uint32_t)w->p->job->slots;
    float *load = calloc(n_slots, sizeof *load);
    if (!load)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory");
    cm_hdr hh = s_ctl(CM_OP_HELLO, 0);
    hh.body = CM_BODY_HELLO;
    cm_hello *he = &hh.hello;
    if (w->sparse) {
        /* n_train, label sum, min, max, n_test, bad lines (train, test) */
        double st[7] = {0};
        wk_sparse_hello(w->sparse, st, load, n_slots);
        *he = (cm_hello){.n_train = (uint64_t)st[0], .label_sum = st[1], .label_min = st[2],
                         .label_max = st[3], .n_test = (uint64_t)st[4],
                         .bad_train = (uint64_t)st[5], .bad_test = (uint64_t)st[6],
                         .noise_floor = -1, .task = wk_sparse_task(w->sparse),
                         .n_valid = wk_sparse_n_valid(w->sparse)};
    } else {
        double sum = 0, lo = INFINITY, hi = -INFINITY;
        for (size_t j = 0; j < tr->n; j++) {
            sum += tr->rating[j];
            if (tr->rating[j] < lo)
                lo = tr->rating[j];
            if (tr->rating[j] > hi)
                hi = tr->rating[j];
            load[cm_slot_of(tr->user[j], 0, n_slots)] += 1.f;
            load[cm_slot_of(tr->item[j], 1, n_slots)] += 1.f;
        }
        /* implicit: raw_* are the rows before positive_threshold, for a
         * clear error when it leaves none */
        *he = (cm_hello){.n_train = tr->n, .label_sum = sum, .label_min = tr->n ? lo : 0,
                         .label_max = tr->n ? hi : 0, .n_test = w->n_test,
                         .bad_train = tr->bad_lines, .bad_test = w->test.bad_lines,
                         .noise_floor = w->test.noise_floor, .task = -1,
                         .raw_train = w->raw_train, .raw_test = w->raw_test,
                         .n_valid = w->test.n - w->n_test};
    }
    he->n_slot_load = n_slots;
    he->slot_load = load;
    cm_hb_doing(w->p->hb, "waiting for the plan");
    int rc = s_tell(w, &hh, err);
    free(load);
    if (rc != 0)
        return rc;
    /* implicit: for the sampler; blocks: to balance the blocks */
    if ((w->family == CM_FAMILY_IMPLICIT || cm_job_uses_blocks(w->p->job)) &&
        (rc = s_send_items(w, err)) != 0)
        return rc;
    cm_msg m = {0};
    rc = cm_msg_recv(w->ctl, &m, (int)(w->p->job->timeout * 1000), err);
    if (rc == CM_ETIMEDOUT)
        rc = cm_error_set(err, rc, "worker: no plan from the scheduler within %.0f s",
                          w->p->job->timeout);
    if (rc != 0)
        goto out;
    if (m.hdr.op == CM_OP_STOP) {
        rc = CM_ECLOSED;
        cm_error_set(err, rc, "worker: the scheduler stopped the job before training");
        goto out;
    }
    if (m.hdr.op != CM_OP_PLAN || m.hdr.body != CM_BODY_PLAN || m.hdr.n_slots == 0) {
        rc = cm_error_set(err, CM_EPROTO, "worker: expected a PLAN, got %s",
                          cm_op_name(m.hdr.op));
        goto out;
    }
    w->ctx.mean = (float)m.hdr.plan.mean;
    w->ctx.clip_lo = m.hdr.plan.clip_lo;
    w->ctx.clip_hi = m.hdr.plan.clip_hi;
    w->ctx.l2 = (float)w->p->job->l2;
    /* sparse regression scores start from the mean; binary ones from 0 */
    w->ctx.offset = w->sparse && wk_sparse_task(w->sparse) != CM_TASK_BINARY ? w->ctx.mean : 0.f;
    wk_kv_params kp = {
        .n_servers = w->p->n_servers,
        .server_eps = w->p->server_eps,
        .n_slots = (uint32_t)m.hdr.n_slots,
        .slot_map = m.hdr.slots,
        .n_tables = (uint32_t)w->model->n_tables,
        .dims = w->dims,
        .row_floats = w->row_floats,
        .rank = w->p->rank,
        .timeout_ms = (int)(w->p->job->timeout * 1000),
        .wire_f16 = w->p->job->wire_dtype == 1,
    };
    /* under MPI the runtime says which servers share this host (their rows
     * may be shared in place whatever the transport); transport = tcp
     * keeps every row on the wire */
    kp.no_shared_rows = w->p->job->shared_rows == 1;
    unsigned char *here = NULL;
    if (w->p->boot && cm_boot_is_mpi(w->p->boot) && w->p->job->transport != 1 &&
        (here = calloc(w->p->n_servers + 1, 1)) != NULL) {
        for (uint32_t i = 0; i < w->p->n_servers; i++)
            here[i] = (unsigned char)cm_boot_same_host(w->p->boot, 1 + (int)i);
        kp.server_here = here;
    }
    w->kv = wk_kv_new(w->p->van, &kp, err);
    free(here);
    if (!w->kv) {
        rc = err ? err->code : CM_EIO;
        goto out;
    }
    if (w->family == CM_FAMILY_IMPLICIT && (rc = s_implicit_setup(w, &m, err)) != 0)
        goto out;
    if (cm_job_uses_blocks(w->p->job)) {
        /* the plan lists every worker's items with their training ratings */
        const size_t n_items = m.keys && m.vals && m.n_vals == m.hdr.n_keys ? m.hdr.n_keys : 0;
        wk_block_map map = {m.keys, m.vals, n_items};
        const uint32_t k = m.hdr.plan.blocks_per_worker;
        w->bpw = k >= 1 && k <= CM_MAX_BLOCKS_PER_WORKER ? k : 1;
        wk_dsgd_destroy(&w->dsgd);
        if (!(w->dsgd = wk_dsgd_new(w->p->n_workers, w->bpw, w->p->job->seed))) {
            rc = cm_error_set(err, CM_ENOMEM, "worker: out of memory");
            goto out;
        }
        const wk_key_index items = {w->iloc, w->iuniq, w->n_iuniq};
        if (!(w->blocks = wk_blocks_new(&w->train, w->bpw * w->p->n_workers, w->dims[0],
                                        w->row_floats, w->p->job->resume[0] ? NULL
                                                                           : &w->user_table,
                                        &map, w->iloc ? &items : NULL, err)))
            rc = err ? err->code : CM_ENOMEM;
        free(w->iloc);
        free(w->iuniq);
        w->iloc = NULL;
        w->iuniq = NULL;
        double before = -1, after = -1;
        if (rc == 0)
            wk_blocks_spread(w->blocks, &before, &after);
        if (w->p->index == 0 && after >= 0)
            cm_log(CM_LOG_INFO, "blocks: %u of %zu items, max/mean ratings per block %.3f "
                   "by hash, %.3f balanced", w->bpw * w->p->n_workers, n_items, before, after);
    }
out:
    cm_msg_release(&m);
    return rc;
}

/* The next order from the scheduler. It may be waiting on slower workers
 * for as long as they take, so the limit is not a timeout but the
 * heartbeat: the wait is cut into slices that look at it (without one, as
 * in tests that run a worker alone, it waits for the order). */
static int s_next_order(s_worker *w, cm_msg *m, cm_error *err)
{
    cm_hb *hb = w->p->hb;
    for (;;) {
        memset(m, 0, sizeof *m);
        int rc = cm_msg_recv(w->ctl, m, hb ? 500 : -1, err);
        if (rc == 0)
            return 0;
        cm_msg_release(m);
        char why[256];
        if (rc == CM_ETIMEDOUT && cm_hb_failed(hb, why, sizeof why))
            return cm_error_set(err, CM_ECLOSED, "worker: the job failed: %s", why);
        if (rc != CM_ETIMEDOUT)
            return cm_error_prefix(err, "worker: control channel");
    }
}

static int s_serve(s_worker *w, cm_error *err)
{
    cm_hb *hb = w->p->hb;
    for (;;) {
        cm_msg m = {0};
        int rc = s_next_order(w, &m, err);
        if (rc != 0)
            return rc;
        int op = m.hdr.op;
        uint32_t epoch = m.hdr.epoch;
        uint32_t round = (uint32_t)m.hdr.clock;
        cm_msg_release(&m);
        if (op == CM_OP_STOP)
            return 0;
        if (op == CM_OP_CLOCK)
            continue; /* a clock published after this worker's last wait */
        if (op == CM_OP_EPOCH)
            cm_hb_doing(hb, "training epoch %u%s", epoch, round ? " (a later round)" : "");
        else if (op == CM_OP_EVAL)
            cm_hb_doing(hb, "evaluating after epoch %u", epoch);
        else if (op == CM_OP_CHECKPOINT)
            cm_hb_doing(hb, "handing its rows back for the checkpoint of epoch %u", epoch);
        if (op == CM_OP_EPOCH && w->implicit)
            rc = s_train_implicit(w, epoch, err);
        else if (op == CM_OP_EVAL && w->implicit)
            rc = s_eval_implicit(w, epoch, err);
        else if (op == CM_OP_EPOCH && w->sparse)
            rc = s_train_sparse(w, epoch, err);
        else if (op == CM_OP_EVAL && w->sparse)
            rc = s_eval_sparse(w, epoch, err);
        else if (op == CM_OP_EPOCH && w->blocks)
            rc = s_train_block(w, epoch, round, err);
        else if (op == CM_OP_EPOCH)
            rc = s_train_epoch(w, epoch, err);
        else if (op == CM_OP_EVAL)
            rc = s_eval(w, epoch, err);
        else if (op == CM_OP_CHECKPOINT)
            rc = s_before_checkpoint(w, epoch, err);
        else
            rc = cm_error_set(err, CM_EPROTO, "worker: unexpected %s from the scheduler",
                              cm_op_name(op));
        if (rc != 0)
            return rc;
        cm_hb_doing(hb, "waiting for the scheduler after epoch %u", epoch);
    }
}

int wk_run(const wk_params *p, cm_error *err)
{
    s_worker w = {.p = p, .family = cm_job_model(p->job)->family};
    int rc = 0;
    w.model = wk_model_find(p->job->model);
    if (!w.model)
        return cm_error_set(err, CM_ECONFIG, "worker: unknown model '%s'", p->job->model);
    for (size_t t = 0; t < w.model->n_tables; t++) {
        cm_table_spec tp;
        w.model->table_params(p->job, t, &tp);
        w.dims[t] = tp.dim;
        w.row_floats[t] = tp.dim + cm_optim_state_floats(tp.optim.kind, tp.dim);
        w.optim = tp.optim;
        if (t == 0)
            w.user_table = tp;
    }
    if (p->job->worker_affinity == CM_AFFINITY_AUTO && p->boot) {
        /* one worker on a host has no other worker to share a CPU with */
        int index, peers;
        cm_boot_host_place(p->boot, 1 + (int)p->n_servers, (int)p->n_workers, &index, &peers);
        int cpu = peers > 1 ? cm_pin_thread(index, peers) : -1;
        if (cpu >= 0)
            cm_log(CM_LOG_DEBUG, "worker %u: pinned to CPU %d (%d of %d workers on this host)",
                   p->index, cpu, index + 1, peers);
    }
    w.ctl = cm_sock_new(p->van, CM_SOCK_DEALER, err);
    if (!w.ctl)
        return err ? err->code : CM_EIO;
    if (cm_sock_connect(w.ctl, p->sched_ep) != 0) {
        rc = cm_error_set(err, CM_EIO, "worker: cannot connect to the scheduler at %s: %s",
                          p->sched_ep, cm_sock_errmsg(w.ctl));
        goto out;
    }
    if (cm_job_is_sparse(p->job)) {
        if (!(w.sparse = wk_sparse_new(p->job, p->index, p->n_workers, w.dims[0], err))) {
            rc = err ? err->code : CM_ENOMEM;
            goto out;
        }
        if ((rc = s_hello_and_plan(&w, err)) != 0)
            goto out;
        rc = s_serve(&w, err);
        goto out;
    }
    double nf = -1;
    size_t bad = 0;
    cm_hb_doing(p->hb, "loading its data shard");
    if ((rc = s_load_shard(p, p->job->train, &w.train, &nf, &bad, err)) != 0)
        goto out;
    w.train.bad_lines = bad;
    if (p->job->test[0]) {
        if ((rc = s_load_shard(p, p->job->test, &w.test, &nf, &bad, err)) != 0)
            goto out;
        w.test.noise_floor = nf;
        w.test.bad_lines = bad;
    } else {
        w.test.noise_floor = -1;
    }
    w.n_test = w.test.n;
    if (w.family != CM_FAMILY_IMPLICIT && (rc = s_validation(&w, err)) != 0)
        goto out;
    if (w.family == CM_FAMILY_IMPLICIT) {
        if ((rc = s_implicit_positives(&w, err)) != 0)
            goto out;
        w.n_test = w.test.n; /* the positives kept; no validation rows */
        if ((rc = s_hello_and_plan(&w, err)) != 0)
            goto out;
        rc = s_serve(&w, err);
        goto out;
    }
    size_t cap = (size_t)p->job->batch;
    if (cap < 4096)
        cap = 4096;
    if ((rc = s_alloc(&w, cap, err)) != 0)
        goto out;
    w.order = malloc((w.train.n + 1) * sizeof *w.order);
    if (!w.order) {
        rc = cm_error_set(err, CM_ENOMEM, "worker: out of memory");
        goto out;
    }
    if ((rc = s_hello_and_plan(&w, err)) != 0)
        goto out;
    rc = s_serve(&w, err);
out:
    if (rc != 0 && w.ctl && rc != CM_ECLOSED) {
        /* best effort: let the scheduler stop the job instead of waiting */
        cm_hdr h = cm_hdr_make(CM_OP_ERROR);
        h.sender = p->rank;
        h.status = rc;
        snprintf(h.error, sizeof h.error, "%.255s", err ? err->msg : cm_strerror(rc));
        if (cm_msg_send(w.ctl, NULL, 0, &h, NULL, 0, NULL, 0) == 0) {
            /* wait for the scheduler's STOP (a few seconds at most): closing
             * the socket at once could drop the report before it is read */
            for (int i = 0; i < 50; i++) {
                cm_msg m = {0};
                int r = cm_msg_recv(w.ctl, &m, 100, NULL);
                int op = m.hdr.op;
                cm_msg_release(&m);
                if (r == 0 && op == CM_OP_STOP)
                    break;
                if (r != 0 && r != CM_ETIMEDOUT && r != CM_EPROTO)
                    break;
            }
        }
    }
    s_free(&w);
    return rc;
}
