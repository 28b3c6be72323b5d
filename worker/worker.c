#include "worker/worker.h"

#include <stdlib.h>
#include <string.h>

#include "common/affinity.h"
#include "common/log.h"
#include "common/msg.h"
#include "worker/kv.h"
#include "worker/link.h"
#include "worker/models/model.h"
#include "worker/trainer.h"

typedef struct {
    const wk_params *p;
    const wk_model_ops *model;
    int dims[WK_MAX_TABLES];
    int row_floats[WK_MAX_TABLES];        /* weights + optimizer state */
    cm_table_spec tables[WK_MAX_TABLES];  /* each table's parameters */
    wk_link *link;                        /* the control channel */
    wk_kv *kv;                            /* the data connections, from the plan on */
    wk_trainer *trainer;                  /* the model family's */
} s_worker;

/* The trainer of the job's model, by its family in the model table (mf:
 * by its schedule). */
static wk_trainer *s_trainer_new(const wk_trainer_env *env, cm_error *err)
{
    const cm_job *job = env->p->job;
    switch (cm_job_model(job)->family) {
    case CM_FAMILY_SPARSE:
        return wk_trainer_sparse_new(env, err);
    case CM_FAMILY_IMPLICIT:
        return wk_trainer_implicit_new(env, err);
    default:
        return cm_job_uses_blocks(job) ? wk_trainer_blocks_new(env, err)
                                       : wk_trainer_minibatch_new(env, err);
    }
}

/* A control message of op for epoch, with no body yet. */
static cm_hdr s_ctl(int op, uint32_t epoch)
{
    cm_hdr h = cm_hdr_make(op);
    h.epoch = epoch;
    return h;
}

/* ---------------------------------------------------------------------
 * Hello and plan
 * ------------------------------------------------------------------- */

/* HELLO with the trainer's statistics and the load each slot will see
 * from this shard (the scheduler evens it out), then the shard's items
 * when the trainer has them. */
static int s_hello(s_worker *w, cm_error *err)
{
    const uint32_t n_slots = (uint32_t)w->p->job->slots;
    float *load = calloc(n_slots, sizeof *load);
    if (!load)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory");
    wk_hello he = {.hello = {.n_slot_load = n_slots, .slot_load = load}};
    int rc = w->trainer->ops->hello(w->trainer, &he, err);
    cm_hdr h = s_ctl(CM_OP_HELLO, 0);
    h.body = CM_BODY_HELLO;
    h.hello = he.hello;
    cm_hb_doing(w->p->hb, "waiting for the plan");
    if (rc == 0)
        rc = wk_link_tell(w->link, &h, err);
    free(load);
    if (rc != 0 || !he.send_items)
        return rc;
    /* the second HELLO: items (sorted keys) and their training rows */
    h = cm_hdr_make(CM_OP_HELLO);
    h.sender = w->p->rank;
    h.flags = CM_HELLO_ITEMS;
    h.dim = 1;
    if ((rc = cm_msg_send(wk_link_sock(w->link), NULL, 0, &h, he.items, he.n_items,
                          he.item_count, he.n_items)) != 0)
        cm_error_set(err, rc, "worker: cannot send its items to the scheduler: %s",
                     cm_sock_errmsg(wk_link_sock(w->link)));
    return rc;
}

/* The data connections to the servers, by the plan's slot map. */
static int s_connect(s_worker *w, const cm_msg *m, cm_error *err)
{
    const wk_params *p = w->p;
    wk_kv_params kp = {
        .n_servers = p->n_servers,
        .server_eps = p->server_eps,
        .n_slots = (uint32_t)m->hdr.n_slots,
        .slot_map = m->hdr.slots,
        .n_tables = (uint32_t)w->model->n_tables,
        .dims = w->dims,
        .row_floats = w->row_floats,
        .rank = p->rank,
        .timeout_ms = (int)(p->job->timeout * 1000),
        .wire_f16 = p->job->wire_dtype == 1,
    };
    /* under MPI the runtime says which servers share this host (their rows
     * may be shared in place whatever the transport); transport = tcp
     * keeps every row on the wire */
    kp.no_shared_rows = p->job->shared_rows == 1;
    unsigned char *here = NULL;
    if (p->boot && cm_boot_is_mpi(p->boot) && p->job->transport != 1 &&
        (here = calloc(p->n_servers + 1, 1)) != NULL) {
        for (uint32_t i = 0; i < p->n_servers; i++)
            here[i] = (unsigned char)cm_boot_same_host(p->boot, 1 + (int)i);
        kp.server_here = here;
    }
    w->kv = wk_kv_new(p->van, &kp, err);
    free(here);
    return w->kv ? 0 : (err ? err->code : CM_EIO);
}

static int s_hello_and_plan(s_worker *w, cm_error *err)
{
    const cm_job *job = w->p->job;
    int rc = s_hello(w, err);
    if (rc != 0)
        return rc;
    cm_msg m = {0};
    rc = cm_msg_recv(wk_link_sock(w->link), &m, (int)(job->timeout * 1000), err);
    if (rc == CM_ETIMEDOUT)
        rc = cm_error_set(err, rc, "worker: no plan from the scheduler within %.0f s",
                          job->timeout);
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
    const wk_model_ctx ctx = {.mean = (float)m.hdr.plan.mean, .l2 = (float)job->l2,
                              .clip_lo = m.hdr.plan.clip_lo, .clip_hi = m.hdr.plan.clip_hi};
    if ((rc = s_connect(w, &m, err)) == 0)
        rc = w->trainer->ops->plan(w->trainer, &m, w->kv, &ctx, err);
out:
    cm_msg_release(&m);
    return rc;
}

/* ---------------------------------------------------------------------
 * Orders
 * ------------------------------------------------------------------- */

/* The next order from the scheduler. It may be waiting on slower workers
 * for as long as they take, so the limit is not a timeout but the
 * heartbeat: the wait is cut into slices that look at it (without one, as
 * in tests that run a worker alone, it waits for the order). */
static int s_next_order(s_worker *w, cm_msg *m, cm_error *err)
{
    cm_hb *hb = w->p->hb;
    for (;;) {
        memset(m, 0, sizeof *m);
        int rc = cm_msg_recv(wk_link_sock(w->link), m, hb ? 500 : -1, err);
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

/* EPOCH: trains, then EPOCH_DONE. */
static int s_epoch(s_worker *w, uint32_t epoch, uint32_t round, cm_error *err)
{
    cm_hdr h = s_ctl(CM_OP_EPOCH_DONE, epoch);
    h.body = CM_BODY_EPOCH;
    wk_link_epoch_start(w->link);
    const double t0 = cm_now();
    int rc = w->trainer->ops->train_epoch(w->trainer, epoch, round, &h.epoch_done, err);
    if (rc != 0)
        return rc;
    h.epoch_done.seconds = cm_now() - t0;
    return wk_link_tell(w->link, &h, err);
}

/* EVAL: scores the held-out rows, then EVAL_DONE. */
static int s_eval(s_worker *w, uint32_t epoch, cm_error *err)
{
    wk_eval ev = {0};
    int rc = w->trainer->ops->evaluate(w->trainer, epoch, &ev, err);
    if (rc != 0)
        return rc;
    cm_hdr h = s_ctl(CM_OP_EVAL_DONE, epoch);
    h.body = ev.body;
    if (ev.body == CM_BODY_RANKING)
        h.ranking = ev.ranking;
    else
        h.eval_done = ev.eval;
    return wk_link_tell(w->link, &h, err);
}

/* CHECKPOINT: the servers' rows made whole, then the answer. */
static int s_checkpoint(s_worker *w, uint32_t epoch, cm_error *err)
{
    int rc = w->trainer->ops->before_checkpoint
                 ? w->trainer->ops->before_checkpoint(w->trainer, err)
                 : 0;
    if (rc != 0)
        return rc;
    cm_hdr h = s_ctl(CM_OP_CHECKPOINT, epoch);
    return wk_link_tell(w->link, &h, err);
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
        if (op == CM_OP_EPOCH) {
            cm_hb_doing(hb, "training epoch %u%s", epoch, round ? " (a later round)" : "");
            rc = s_epoch(w, epoch, round, err);
        } else if (op == CM_OP_EVAL) {
            cm_hb_doing(hb, "evaluating after epoch %u", epoch);
            rc = s_eval(w, epoch, err);
        } else if (op == CM_OP_CHECKPOINT) {
            cm_hb_doing(hb, "handing its rows back for the checkpoint of epoch %u", epoch);
            rc = s_checkpoint(w, epoch, err);
        } else {
            rc = cm_error_set(err, CM_EPROTO, "worker: unexpected %s from the scheduler",
                              cm_op_name(op));
        }
        if (rc != 0)
            return rc;
        cm_hb_doing(hb, "waiting for the scheduler after epoch %u", epoch);
    }
}

/* ---------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------- */

/* One worker on a host has no other worker to share a CPU with. */
static void s_pin(const wk_params *p)
{
    if (p->job->worker_affinity != CM_AFFINITY_AUTO || !p->boot)
        return;
    int index, peers;
    cm_boot_host_place(p->boot, 1 + (int)p->n_servers, (int)p->n_workers, &index, &peers);
    int cpu = peers > 1 ? cm_pin_thread(index, peers) : -1;
    if (cpu >= 0)
        cm_log(CM_LOG_DEBUG, "worker %u: pinned to CPU %d (%d of %d workers on this host)",
               p->index, cpu, index + 1, peers);
}

/* Best effort after a fatal error: tells the scheduler, so that it stops
 * the job instead of waiting, and waits for its STOP (a few seconds at
 * most): closing the socket at once could drop the report before it is
 * read. */
static void s_report(s_worker *w, int rc, const cm_error *err)
{
    cm_hdr h = cm_hdr_make(CM_OP_ERROR);
    h.status = rc;
    snprintf(h.error, sizeof h.error, "%.255s", err ? err->msg : cm_strerror(rc));
    if (wk_link_tell(w->link, &h, NULL) != 0)
        return;
    for (int i = 0; i < 50; i++) {
        cm_msg m = {0};
        int r = cm_msg_recv(wk_link_sock(w->link), &m, 100, NULL);
        int op = m.hdr.op;
        cm_msg_release(&m);
        if (r == 0 && op == CM_OP_STOP)
            break;
        if (r != 0 && r != CM_ETIMEDOUT && r != CM_EPROTO)
            break;
    }
}

int wk_run(const wk_params *p, cm_error *err)
{
    s_worker w = {.p = p};
    int rc = 0;
    w.model = wk_model_find(p->job->model);
    if (!w.model)
        return cm_error_set(err, CM_ECONFIG, "worker: unknown model '%s'", p->job->model);
    for (size_t t = 0; t < w.model->n_tables; t++) {
        w.model->table_params(p->job, t, &w.tables[t]);
        w.dims[t] = w.tables[t].dim;
        w.row_floats[t] = w.tables[t].dim + cm_optim_state_floats(w.tables[t].optim.kind,
                                                                   w.tables[t].dim);
    }
    s_pin(p);
    if (!(w.link = wk_link_new(p->van, p->sched_ep, p->rank, p->job->timeout, err)))
        return err ? err->code : CM_EIO;
    const wk_trainer_env env = {.p = p, .model = w.model, .dims = w.dims,
                                .row_floats = w.row_floats, .tables = w.tables,
                                .link = w.link};
    if (!(w.trainer = s_trainer_new(&env, err)))
        rc = err ? err->code : CM_ENOMEM;
    else
        cm_log(CM_LOG_DEBUG, "worker %u: %s trainer for model %s", p->index,
               w.trainer->ops->name, p->job->model);
    if (rc == 0)
        rc = s_hello_and_plan(&w, err);
    if (rc == 0)
        rc = s_serve(&w, err);
    if (rc != 0 && rc != CM_ECLOSED)
        s_report(&w, rc, err);
    wk_trainer_destroy(&w.trainer);
    wk_kv_destroy(&w.kv);
    wk_link_destroy(&w.link);
    return rc;
}
