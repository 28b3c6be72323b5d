/* server: a parameter server's request loop (one thread owns it).
 *
 * Requests and replies (frames as common/msg.h lays them out):
 *   PULL  table, dim, keys [, flags CM_PULL_NO_CREATE]
 *         -> REPLY table, dim, values of the n_keys rows in the order asked
 *            (the keys frame is left empty: keys implied), stats[0] = rows
 *            that were missing and read as zeros when NO_CREATE was set.
 *            dim must be the table's dim; 0 is accepted and means "the
 *            table's" (workers send the table's dim, see worker/kv.c).
 *   PUSH  table, dim, keys, n_keys * dim gradients
 *         -> REPLY ack (no frames); dim must be the table's.
 *   STOP  -> REPLY with stats {rows, bytes} per table; the loop returns 0.
 * req_id, table and clock are echoed on every reply. Anything else (an
 * unknown table, a wrong dim, an unexpected op, a malformed message) gets
 * an OP_ERROR reply naming the problem and a warning in the log, and the
 * server goes on serving. Status codes on those: CM_ENOTFOUND unknown
 * table, CM_EINVAL wrong dim, CM_EPROTO malformed or unexpected op,
 * CM_ENOMEM when rows could not be made (a push may then have updated the
 * rows before the failing one).
 *
 * Only the transport itself failing (recv gives CM_EIO or CM_ECLOSED, or
 * a reply send gives CM_ECLOSED) ends the loop with that code. A reply
 * that cannot be delivered for another reason (the worker went away: the
 * ROUTER refuses unknown routes) is logged and dropped.
 *
 * Pull replies go out of one buffer the server keeps and grows: no
 * allocation per request once it has seen its largest pull. */
#include "ps/server.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/msg.h"

/* The STOP reply carries two stats per table in one header. */
#define S_MAX_TABLES (CM_HDR_MAX_STATS / 2)

struct ps_server {
    cm_sock *sock;                        /* the bound ROUTER */
    char endpoint[CM_ENDPOINT_MAX];       /* what the bind resolved to */
    ps_table **tables;                    /* n_tables tables, owned */
    size_t n_tables;
    float *buf;                           /* pull reply values, reused */
    size_t buf_cap;                       /* floats in buf */
    uint64_t n_requests;                  /* answered, errors included */
    uint64_t n_errors;                    /* answered with OP_ERROR */
};

/* ---------------------------------------------------------------------------
 * Lifecycle */

ps_server *ps_server_new(cm_van *van, const char *endpoint, const ps_table_params *tables,
                         size_t n_tables, cm_error *err)
{
    if (!van || !endpoint || (n_tables && !tables)) {
        cm_error_set(err, CM_EINVAL, "server: missing van, endpoint or tables");
        return NULL;
    }
    if (n_tables > S_MAX_TABLES) {
        cm_error_set(err, CM_EINVAL, "server: %zu tables, at most %d", n_tables,
                     S_MAX_TABLES);
        return NULL;
    }
    ps_server *s = calloc(1, sizeof *s);
    if (!s || (n_tables && !(s->tables = calloc(n_tables, sizeof *s->tables)))) {
        cm_error_set(err, CM_ENOMEM, "server: out of memory");
        goto fail;
    }
    s->n_tables = n_tables;
    for (size_t i = 0; i < n_tables; i++) {
        s->tables[i] = ps_table_new(&tables[i], err);
        if (!s->tables[i]) {
            cm_error_prefix(err, "server: table %zu", i);
            goto fail;
        }
    }
    s->sock = cm_sock_new(van, CM_SOCK_ROUTER, err);
    if (!s->sock) {
        cm_error_prefix(err, "server");
        goto fail;
    }
    int rc = cm_sock_bind(s->sock, endpoint, s->endpoint);
    if (rc < 0) {
        cm_error_set(err, rc, "server: bind %s: %s", endpoint, cm_sock_errmsg(s->sock));
        goto fail;
    }
    if (!s->endpoint[0])
        snprintf(s->endpoint, sizeof s->endpoint, "%s", endpoint);
    return s;
fail:
    ps_server_destroy(&s);
    return NULL;
}

void ps_server_destroy(ps_server **ps)
{
    if (!ps || !*ps)
        return;
    ps_server *s = *ps;
    cm_sock_destroy(&s->sock);
    for (size_t i = 0; i < s->n_tables; i++)
        ps_table_destroy(&s->tables[i]);
    free(s->tables);
    free(s->buf);
    free(s);
    *ps = NULL;
}

const char *ps_server_endpoint(const ps_server *s)
{
    return s->endpoint;
}

ps_table *ps_server_table(ps_server *s, size_t i)
{
    return i < s->n_tables ? s->tables[i] : NULL;
}

/* ---------------------------------------------------------------------------
 * Replies */

/* A reply header echoing the request's id, table and clock. */
static cm_hdr s_reply_hdr(const cm_msg *m)
{
    cm_hdr h = cm_hdr_make(CM_OP_REPLY);
    h.req_id = m->hdr.req_id;
    h.table = m->hdr.table;
    h.clock = m->hdr.clock;
    return h;
}

/* Result of sending a reply: CM_ECLOSED ends the loop, anything else is
 * the one request's problem (logged). */
static int s_sent(ps_server *s, const cm_msg *m, int rc)
{
    if (rc == 0)
        return 0;
    if (rc == CM_ECLOSED)
        return rc;
    cm_log(CM_LOG_WARN, "ps: reply to %s req %" PRIu64 " not sent: %s",
           cm_op_name(m->hdr.op), m->hdr.req_id, cm_sock_errmsg(s->sock));
    return 0;
}

/* Logs and answers a rejected request with OP_ERROR. */
static int s_reject(ps_server *s, const cm_msg *m, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int s_reject(ps_server *s, const cm_msg *m, int status, const char *fmt, ...)
{
    char text[CM_HDR_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    s->n_errors++;
    cm_log(CM_LOG_WARN, "ps: rejected %s req %" PRIu64 ": %s", cm_op_name(m->hdr.op),
           m->hdr.req_id, text);
    return s_sent(s, m, cm_msg_reply_error(s->sock, m, status, text));
}

/* ---------------------------------------------------------------------------
 * Handlers: 0 to go on serving, CM_ECLOSED to stop. */

/* The table a PULL/PUSH names, or NULL after rejecting the request. */
static ps_table *s_table_for(ps_server *s, const cm_msg *m, int *rc)
{
    const cm_hdr *h = &m->hdr;
    *rc = 0;
    if (h->table >= s->n_tables) {
        *rc = s_reject(s, m, CM_ENOTFOUND, "unknown table %" PRIu32 " (server has %zu)",
                       h->table, s->n_tables);
        return NULL;
    }
    ps_table *t = s->tables[h->table];
    uint32_t dim = (uint32_t)ps_table_dim(t);
    if (h->dim != dim && !(h->op == CM_OP_PULL && h->dim == 0)) {
        *rc = s_reject(s, m, CM_EINVAL, "table %" PRIu32 " has dim %" PRIu32 ", request says %" PRIu32,
                       h->table, dim, h->dim);
        return NULL;
    }
    return t;
}

static int s_on_pull(ps_server *s, const cm_msg *m)
{
    int rc;
    ps_table *t = s_table_for(s, m, &rc);
    if (!t)
        return rc;
    size_t dim = (size_t)ps_table_dim(t);
    size_t n = (size_t)m->hdr.n_keys;
    size_t need = n * dim;
    if (need > s->buf_cap) {
        size_t cap = s->buf_cap ? s->buf_cap : 4096;
        while (cap < need)
            cap *= 2;
        float *nb = realloc(s->buf, cap * sizeof *nb);
        if (!nb)
            return s_reject(s, m, CM_ENOMEM, "out of memory for %zu values", need);
        s->buf = nb;
        s->buf_cap = cap;
    }
    int create = !(m->hdr.flags & CM_PULL_NO_CREATE);
    size_t missing = 0;
    rc = ps_table_pull(t, m->keys, n, s->buf, create, &missing);
    if (rc < 0)
        return s_reject(s, m, rc, "table %" PRIu32 ": cannot make rows: %s", m->hdr.table,
                        cm_strerror(rc));
    cm_hdr h = s_reply_hdr(m);
    h.dim = (uint32_t)dim;
    if (!create) {
        h.n_stats = 1;
        h.stats[0] = (double)missing;
    }
    return s_sent(s, m, cm_msg_send(s->sock, m->route, m->route_size, &h, NULL, 0, s->buf, need));
}

static int s_on_push(ps_server *s, const cm_msg *m)
{
    int rc;
    ps_table *t = s_table_for(s, m, &rc);
    if (!t)
        return rc;
    size_t n = (size_t)m->hdr.n_keys;
    /* msg.c checked this already; a push must never read past the frame. */
    if (m->n_vals != n * (size_t)ps_table_dim(t) || !m->vals)
        return s_reject(s, m, CM_EPROTO, "%zu values for %zu keys x dim %d", m->n_vals, n,
                        ps_table_dim(t));
    rc = ps_table_push(t, m->keys, n, m->vals);
    if (rc < 0)
        return s_reject(s, m, rc, "table %" PRIu32 ": cannot make rows: %s", m->hdr.table,
                        cm_strerror(rc));
    cm_hdr h = s_reply_hdr(m);
    h.dim = (uint32_t)ps_table_dim(t);
    return s_sent(s, m, cm_msg_send(s->sock, m->route, m->route_size, &h, NULL, 0, NULL, 0));
}

static int s_on_stop(ps_server *s, const cm_msg *m)
{
    cm_hdr h = s_reply_hdr(m);
    h.n_stats = 2 * s->n_tables;
    for (size_t i = 0; i < s->n_tables; i++) {
        h.stats[2 * i] = (double)ps_table_rows(s->tables[i]);
        h.stats[2 * i + 1] = (double)ps_table_bytes(s->tables[i]);
    }
    return s_sent(s, m, cm_msg_send(s->sock, m->route, m->route_size, &h, NULL, 0, NULL, 0));
}

/* ---------------------------------------------------------------------------
 * The loop */

int ps_server_run(ps_server *s)
{
    cm_log(CM_LOG_INFO, "ps: serving %zu table%s on %s", s->n_tables,
           s->n_tables == 1 ? "" : "s", s->endpoint);
    for (;;) {
        cm_msg m;
        cm_error e = {0};
        int rc = cm_msg_recv(s->sock, &m, -1, &e);
        if (rc == CM_ETIMEDOUT) {
            cm_msg_release(&m);
            continue;
        }
        if (rc == CM_EPROTO || rc == CM_ENOMEM) {
            /* One bad message: say why, answer it if we know who sent it. */
            s->n_requests++;
            s->n_errors++;
            cm_log(CM_LOG_WARN, "ps: bad message: %s", e.msg);
            if (m.route && m.route_size)
                rc = s_sent(s, &m, cm_msg_reply_error(s->sock, &m, rc, e.msg));
            else
                rc = 0;
            cm_msg_release(&m);
            if (rc < 0)
                return rc;
            continue;
        }
        if (rc < 0) {
            cm_log(rc == CM_ECLOSED ? CM_LOG_INFO : CM_LOG_ERROR, "ps: transport: %s",
                   e.msg);
            cm_msg_release(&m);
            return rc;
        }
        s->n_requests++;
        int stop = 0;
        switch (m.hdr.op) {
        case CM_OP_PULL:
            rc = s_on_pull(s, &m);
            break;
        case CM_OP_PUSH:
            rc = s_on_push(s, &m);
            break;
        case CM_OP_STOP:
            rc = s_on_stop(s, &m);
            stop = 1;
            break;
        default:
            rc = s_reject(s, &m, CM_EPROTO, "unexpected op %s (%d)", cm_op_name(m.hdr.op),
                          m.hdr.op);
            break;
        }
        cm_msg_release(&m);
        if (rc < 0)
            return rc;
        if (stop) {
            cm_log(CM_LOG_INFO, "ps: stop after %" PRIu64 " requests (%" PRIu64 " rejected)",
                   s->n_requests, s->n_errors);
            return 0;
        }
    }
}
