#include "worker/link.h"

#include <stdlib.h>

#include "common/log.h"

struct wk_link {
    cm_sock *ctl;          /* DEALER to the scheduler */
    int rank;              /* sender of every message */
    double timeout;        /* seconds a clock is waited for */
    uint64_t min_clock;    /* the slowest worker's clock this epoch, as last heard */
    double last_report;    /* when PROGRESS was last sent */
};

wk_link *wk_link_new(cm_van *van, const char *ep, int rank, double timeout, cm_error *err)
{
    wk_link *l = calloc(1, sizeof *l);
    if (!l) {
        cm_error_set(err, CM_ENOMEM, "worker: out of memory");
        return NULL;
    }
    l->rank = rank;
    l->timeout = timeout;
    if (!(l->ctl = cm_sock_new(van, CM_SOCK_DEALER, err))) {
        free(l);
        return NULL;
    }
    if (cm_sock_connect(l->ctl, ep) != 0) {
        cm_error_set(err, CM_EIO, "worker: cannot connect to the scheduler at %s: %s", ep,
                     cm_sock_errmsg(l->ctl));
        wk_link_destroy(&l);
        return NULL;
    }
    return l;
}

void wk_link_destroy(wk_link **pl)
{
    if (!pl || !*pl)
        return;
    cm_sock_destroy(&(*pl)->ctl);
    free(*pl);
    *pl = NULL;
}

cm_sock *wk_link_sock(wk_link *l)
{
    return l->ctl;
}

int wk_link_tell(wk_link *l, cm_hdr *h, cm_error *err)
{
    h->sender = l->rank;
    int rc = cm_msg_send(l->ctl, NULL, 0, h, NULL, 0, NULL, 0);
    if (rc != 0)
        return cm_error_set(err, rc, "worker: cannot reach the scheduler: %s",
                            cm_sock_errmsg(l->ctl));
    return 0;
}

void wk_link_epoch_start(wk_link *l)
{
    l->min_clock = 0;
    l->last_report = cm_now();
}

int wk_link_progress(wk_link *l, uint32_t epoch, uint64_t done, double loss, cm_error *err)
{
    double now = cm_now();
    if (now - l->last_report < 0.25)
        return 0;
    l->last_report = now;
    cm_hdr h = cm_hdr_make(CM_OP_PROGRESS);
    h.epoch = epoch;
    h.body = CM_BODY_PROGRESS;
    h.progress = (cm_progress){done, loss};
    return wk_link_tell(l, &h, err);
}

int wk_link_clock(wk_link *l, uint32_t epoch, uint64_t clock, cm_error *err)
{
    cm_hdr h = cm_hdr_make(CM_OP_CLOCK);
    h.epoch = epoch;
    h.clock = clock;
    return wk_link_tell(l, &h, err);
}

int wk_link_recv_clock(wk_link *l, uint32_t epoch, int wait, const char *what, cm_error *err)
{
    cm_msg m = {0};
    cm_error e = {0};
    int rc = cm_msg_recv(l->ctl, &m, wait ? (int)(l->timeout * 1000) : 0, &e);
    int op = m.hdr.op;
    uint32_t ep = m.hdr.epoch;
    uint64_t clk = m.hdr.clock;
    cm_msg_release(&m);
    if (rc == CM_ETIMEDOUT)
        return wait ? cm_error_set(err, rc, "worker: waited %.0f s for %s", l->timeout, what)
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
    if (ep == epoch && clk > l->min_clock)
        l->min_clock = clk;
    return 0;
}

int wk_link_wait_clock(wk_link *l, uint32_t epoch, uint64_t c, uint64_t staleness,
                       cm_error *err)
{
    while (c > l->min_clock + staleness) {
        int rc = wk_link_recv_clock(l, epoch, 1, "the slowest worker's clock", err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

uint64_t wk_link_min_clock(const wk_link *l)
{
    return l->min_clock;
}
