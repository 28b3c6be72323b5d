/* server: a parameter server's request loop (one thread owns it).
 *
 * Requests and replies (frames as common/msg.h lays them out):
 *   PULL  table, dim, keys [, flags CM_PULL_NO_CREATE]
 *         -> REPLY table, dim, values of the n_keys rows in the order asked
 *            (the keys frame is left empty: keys implied); with NO_CREATE
 *            its body (cm_pull_reply) counts the rows that were missing and
 *            read as zeros.
 *            dim must be the table's dim; 0 is accepted and means "the
 *            table's" (workers send the table's dim, see worker/kv.c).
 *   PULL  with CM_PULL_PLACE (a shared table): -> REPLY whose keys frame
 *         holds each row's index in the table's memory file (rows made
 *         when missing; with NO_CREATE too, UINT64_MAX for a missing key)
 *         and whose body (cm_place_reply) says how to map that file.
 *   PULL  with CM_PULL_KEEP: as a pull; the server keeps the rows of the
 *         peer's last CM_KEEP_PULLS such pulls and says CM_PULL_KEEP on the
 *         reply when it kept this one.
 *   PUSH  with key_ref = a kept pull's req_id, no keys: gradients for that
 *         pull's keys, applied to its rows without lookups.
 *   PUSH  table, dim, keys, n_keys * dim gradients
 *         -> REPLY ack (no frames); dim must be the table's.
 *   STOP  -> REPLY whose body (cm_table_stats) has rows and bytes per table;
 *         the loop returns 0.
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
#include <unistd.h>

#include "common/ckpt.h"
#include "common/log.h"
#include "common/sorted.h"
#include "common/msg.h"
#include "common/slots.h"

/* The STOP and EPOCH replies report on at most this many tables. */
#define S_MAX_TABLES CM_CTL_MAX_TABLES
#define S_OWN_REPLY 16384 /* values from which a pull reply has a buffer of its own */
#define S_BUF0 4096       /* floats of the reused reply buffer at first */

/* One kept pull of a peer (CM_PULL_KEEP): its rows, for a push that
 * names it (hdr.key_ref). */
typedef struct {
    uint64_t req_id;                      /* 0: none */
    uint32_t table;
    int kept;                             /* rows holds the n rows */
    size_t n;
    float **rows;
    size_t cap;                           /* entries allocated in rows */
} s_kept;

/* A peer (worker) that asked to keep pulls, by its route. */
typedef struct {
    uint8_t *route;
    size_t route_size;
    s_kept ring[CM_KEEP_PULLS];
    uint64_t n_pulls;                     /* kept pulls asked for so far */
} s_peer;

struct ps_server {
    cm_sock *sock;                        /* the bound ROUTER */
    s_peer *peers;                        /* n_peers, searched by route */
    size_t n_peers, cap_peers;
    char endpoint[CM_ENDPOINT_MAX];       /* what the bind resolved to */
    ps_table **tables;                    /* n_tables tables, owned */
    size_t n_tables;
    float *buf;                           /* pull reply values, reused */
    size_t buf_cap;                       /* floats in buf */
    uint64_t n_requests;                  /* answered, errors included */
    uint64_t n_errors;                    /* answered with OP_ERROR */
    int index;                            /* 0..servers-1: names checkpoint files */
    uint32_t *slot_map;                   /* from the scheduler's SLOTS: slot -> server;
                                           * NULL until then (no slot check) */
    uint32_t n_slots;
    char ckpt_root[CM_HDR_PATH_MAX];      /* the job's checkpoint_dir; "": none */
    char resume[CM_HDR_PATH_MAX];         /* the job's resume setting; "": none */
    cm_log_budget warn;                   /* WARN lines about requests: a few a minute */
    cm_hb *hb;                            /* what it does; the job's failure; may be NULL */
    uint32_t epoch;                       /* the last EPOCH announced (for hb) */
};

/* Rejections logged per minute; the rest are counted and summed up in the
 * next line, so a flood of bad messages cannot flood the log. */
#define S_LOG_PER_MINUTE 10

/* ---------------------------------------------------------------------------
 * Lifecycle */

ps_server *ps_server_new(cm_van *van, const char *endpoint, const cm_table_spec *tables,
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
    s->warn.per_minute = S_LOG_PER_MINUTE;
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
    for (size_t p = 0; p < s->n_peers; p++) {
        free(s->peers[p].route);
        for (int k = 0; k < CM_KEEP_PULLS; k++)
            free(s->peers[p].ring[k].rows);
    }
    free(s->peers);
    free(s->slot_map);
    free(s->tables);
    free(s->buf);
    free(s);
    *ps = NULL;
}

/* Confines every table to this server's slots (once the slot map is in). */
static void s_confine(ps_server *s)
{
    for (size_t i = 0; s->slot_map && i < s->n_tables; i++)
        ps_table_confine(s->tables[i], s->slot_map, s->n_slots, (uint32_t)i, s->index);
}

void ps_server_set_index(ps_server *s, int index)
{
    s->index = index;
    s_confine(s);
}

void ps_server_set_checkpoints(ps_server *s, const char *root, const char *resume)
{
    snprintf(s->ckpt_root, sizeof s->ckpt_root, "%s", root ? root : "");
    snprintf(s->resume, sizeof s->resume, "%s", resume ? resume : "");
}

void ps_server_set_heartbeat(ps_server *s, cm_hb *hb)
{
    s->hb = hb;
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

/* The reused reply buffer's floats once it holds need, grown from have
 * (0: none yet) by doubling from S_BUF0. */
static size_t s_buf_floats(size_t have, size_t need)
{
    size_t cap = have ? have : S_BUF0;
    while (cap < need)
        cap *= 2;
    return cap;
}

size_t ps_server_reply_bytes(size_t floats, int own)
{
    if (own && floats >= S_OWN_REPLY)
        return floats * sizeof(float);
    return s_buf_floats(0, floats) * sizeof(float);
}

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

/* Logs (rate-limited) and answers a rejected request with OP_ERROR. */
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
    uint64_t quiet = 0;
    if (cm_log_budget_take(&s->warn, &quiet))
        cm_log(CM_LOG_WARN, "ps: rejected %s req %" PRIu64 " from rank %d: %s%s%.0f%s",
               cm_op_name(m->hdr.op), m->hdr.req_id,
               m->peer != CM_PEER_ANY ? m->peer : (int)m->hdr.sender, text,
               quiet ? " (and " : "", (double)quiet,
               quiet ? " more not logged in the last minute)" : "");
    return s_sent(s, m, cm_msg_reply_error(s->sock, m, status, text));
}

/* Rejects m, a PULL or PUSH with keys, after its table failed with rc:
 * CM_EPERM when the request named a key of another server's slot (the
 * table's confinement, set from the slot map: the first such key is
 * named), else rows could not be made. */
static int s_reject_rows(ps_server *s, const cm_msg *m, int rc)
{
    for (uint64_t i = 0; rc == CM_EPERM && s->slot_map && m->keys && i < m->hdr.n_keys; i++) {
        const uint32_t slot = cm_slot_of(m->keys[i], m->hdr.table, s->n_slots);
        if ((int)s->slot_map[slot] != s->index)
            return s_reject(s, m, CM_EPERM, "key %" PRIu64 " of table %" PRIu32 " is in slot %"
                            PRIu32 " of server %" PRIu32 ", not of this server (%d)",
                            m->keys[i], m->hdr.table, slot, s->slot_map[slot], s->index);
    }
    return s_reject(s, m, rc, "table %" PRIu32 ": cannot make rows: %s", m->hdr.table,
                    cm_strerror(rc));
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
    int whole = (h->op == CM_OP_PULL && (h->flags & (CM_PULL_FULL | CM_PULL_PLACE))) ||
                (h->op == CM_OP_PUSH && (h->flags & (CM_PUSH_DELTA | CM_PUSH_SET)));
    uint32_t dim = (uint32_t)(whole ? ps_table_row_floats(t) : ps_table_dim(t));
    if (h->dim != dim && !(h->op == CM_OP_PULL && h->dim == 0)) {
        *rc = s_reject(s, m, CM_EINVAL, "table %" PRIu32 " has dim %" PRIu32 ", request says %" PRIu32,
                       h->table, dim, h->dim);
        return NULL;
    }
    return t;
}

/* The peer that sent m, made on its first kept pull when `make`; NULL
 * when unknown (or out of memory). A linear search: a server has one
 * peer per worker. */
static s_peer *s_peer_of(ps_server *s, const cm_msg *m, int make)
{
    for (size_t p = 0; p < s->n_peers; p++)
        if (s->peers[p].route_size == m->route_size &&
            !memcmp(s->peers[p].route, m->route, m->route_size))
            return &s->peers[p];
    if (!make || !m->route_size)
        return NULL;
    if (s->n_peers == s->cap_peers) {
        size_t cap = s->cap_peers ? 2 * s->cap_peers : 8;
        s_peer *np = realloc(s->peers, cap * sizeof *np);
        if (!np)
            return NULL;
        s->peers = np;
        s->cap_peers = cap;
    }
    s_peer *p = &s->peers[s->n_peers];
    memset(p, 0, sizeof *p);
    if (!(p->route = malloc(m->route_size)))
        return NULL;
    memcpy(p->route, m->route, m->route_size);
    p->route_size = m->route_size;
    s->n_peers++;
    return p;
}

/* The ring place for m, a pull with CM_PULL_KEEP: taken whether or not
 * the rows can be kept (the worker counts places the same way), room made
 * for n rows; NULL when they cannot be kept (no memory, too many). */
static s_kept *s_keep_place(ps_server *s, const cm_msg *m, size_t n)
{
    s_peer *p = s_peer_of(s, m, 1);
    if (!p)
        return NULL;
    s_kept *k = &p->ring[p->n_pulls++ % CM_KEEP_PULLS];
    k->req_id = m->hdr.req_id;
    k->table = m->hdr.table;
    k->kept = 0;
    k->n = n;
    if (n > CM_KEEP_MAX_KEYS)
        return NULL;
    if (n > k->cap) {
        float **r = realloc(k->rows, n * sizeof *r);
        if (!r)
            return NULL;
        k->rows = r;
        k->cap = n;
    }
    return k;
}

/* PULL with CM_PULL_PLACE: the rows' indexes in the table's memory file
 * (made when missing; with CM_PULL_NO_CREATE a missing key's index is
 * UINT64_MAX), as the keys frame of the reply, and in its body what a
 * process on this host needs to map it (cm_place_reply). */
static int s_on_place(ps_server *s, const cm_msg *m, ps_table *t)
{
    ps_table_share_info sh;
    if ((m->hdr.flags & ~CM_PULL_NO_CREATE) != CM_PULL_PLACE)
        return s_reject(s, m, CM_EINVAL, "PLACE takes no other pull flag than NO_CREATE "
                                         "(flags %" PRIu32 ")", m->hdr.flags);
    if (ps_table_share(t, &sh) != 0)
        return s_reject(s, m, CM_ENOTSUP, "table %" PRIu32 " does not share its rows",
                        m->hdr.table);
    size_t n = (size_t)m->hdr.n_keys;
    uint64_t *idx = malloc((n + 1) * sizeof *idx);
    if (!idx)
        return s_reject(s, m, CM_ENOMEM, "out of memory for %zu places", n);
    int rc = ps_table_place(t, m->keys, n, !(m->hdr.flags & CM_PULL_NO_CREATE), idx);
    if (rc != 0) {
        free(idx);
        return s_reject_rows(s, m, rc);
    }
    ps_table_share(t, &sh); /* the file may have grown */
    cm_hdr h = s_reply_hdr(m);
    h.body = CM_BODY_PLACE;
    h.place = (cm_place_reply){getpid(), sh.fd, sh.token, sh.header, sh.stride, sh.bytes};
    rc = cm_msg_send(s->sock, m->route, m->route_size, &h, idx, n, NULL, 0);
    free(idx);
    return s_sent(s, m, rc);
}

static int s_on_pull(ps_server *s, const cm_msg *m)
{
    int rc;
    ps_table *t = s_table_for(s, m, &rc);
    if (!t)
        return rc;
    if (m->hdr.flags & CM_PULL_PLACE)
        return s_on_place(s, m, t);
    const int full = (m->hdr.flags & CM_PULL_FULL) != 0;
    size_t dim = (size_t)(full ? ps_table_row_floats(t) : ps_table_dim(t));
    size_t n = (size_t)m->hdr.n_keys;
    size_t need = n * dim;
    /* a large f32 reply gets a buffer of its own that goes out uncopied */
    float *own = NULL;
    if (need >= S_OWN_REPLY && (full || m->hdr.dtype == CM_DTYPE_F32) &&
        !(own = malloc(need * sizeof *own)))
        return s_reject(s, m, CM_ENOMEM, "out of memory for %zu values", need);
    float *out = own ? own : s->buf;
    if (!own && need > s->buf_cap) {
        size_t cap = s_buf_floats(s->buf_cap, need);
        float *nb = realloc(s->buf, cap * sizeof *nb);
        if (!nb)
            return s_reject(s, m, CM_ENOMEM, "out of memory for %zu values", need);
        s->buf = out = nb;
        s->buf_cap = cap;
    }
    int create = !(m->hdr.flags & CM_PULL_NO_CREATE);
    size_t missing = 0;
    if (full && !create) {
        free(own);
        return s_reject(s, m, CM_EINVAL, "a full-row pull always makes missing rows");
    }
    /* a kept pull: its rows stay known for a push that names it */
    s_kept *keep = NULL;
    if (m->hdr.flags & CM_PULL_KEEP) {
        if (m->hdr.flags != CM_PULL_KEEP) {
            free(own);
            return s_reject(s, m, CM_EINVAL, "KEEP takes no other pull flags (flags %" PRIu32
                            ")", m->hdr.flags);
        }
        keep = s_keep_place(s, m, n);
    }
    if (keep && ps_table_pull_keep(t, m->keys, n, out, keep->rows) == 0) {
        keep->kept = 1;
        rc = 0;
    } else {
        rc = full ? ps_table_pull_full(t, m->keys, n, out)
                  : ps_table_pull(t, m->keys, n, out, create, &missing);
    }
    if (rc < 0) {
        free(own);
        return s_reject_rows(s, m, rc);
    }
    cm_hdr h = s_reply_hdr(m);
    h.dim = (uint32_t)dim;
    if (keep && keep->kept)
        h.flags = CM_PULL_KEEP;
    /* weights in the type asked for; whole rows (optimizer state, whose
     * sums may pass the half range) always as f32 */
    h.dtype = full ? CM_DTYPE_F32 : m->hdr.dtype;
    if (!create) {
        h.body = CM_BODY_PULLED;
        h.pulled.missing = missing;
    }
    if (own)
        return s_sent(s, m, cm_msg_send_owned(s->sock, m->route, m->route_size, &h, NULL, 0, own,
                                              need));
    return s_sent(s, m, cm_msg_send(s->sock, m->route, m->route_size, &h, NULL, 0, s->buf, need));
}

static int s_on_push(ps_server *s, const cm_msg *m)
{
    int rc;
    ps_table *t = s_table_for(s, m, &rc);
    if (!t)
        return rc;
    size_t n = (size_t)m->hdr.n_keys;
    const int delta = (m->hdr.flags & CM_PUSH_DELTA) != 0;
    const int set = (m->hdr.flags & CM_PUSH_SET) != 0;
    if (delta && set)
        return s_reject(s, m, CM_EPROTO, "a push is either deltas or whole rows, not both");
    const int dim = delta || set ? ps_table_row_floats(t) : ps_table_dim(t);
    /* msg.c checked this already; a push must never read past the frame. */
    if (m->n_vals != n * (size_t)dim || !m->vals)
        return s_reject(s, m, CM_EPROTO, "%zu values for %zu keys x dim %d", m->n_vals, n,
                        dim);
    if (m->hdr.key_ref) {
        /* the keys of an earlier kept pull of this peer */
        s_peer *p = s_peer_of(s, m, 0);
        const s_kept *k = NULL;
        for (int i = 0; p && i < CM_KEEP_PULLS && !k; i++)
            if (p->ring[i].req_id == m->hdr.key_ref && p->ring[i].kept)
                k = &p->ring[i];
        if (delta || set)
            return s_reject(s, m, CM_EPROTO, "a push naming pull %" PRIu64 "'s keys carries "
                            "gradients, not deltas or rows", m->hdr.key_ref);
        if (!k || k->table != m->hdr.table || k->n != n)
            return s_reject(s, m, CM_ENOTFOUND, "no kept pull %" PRIu64 " of %zu keys of "
                            "table %" PRIu32 " from this worker (it keeps its last %d)",
                            m->hdr.key_ref, n, m->hdr.table, CM_KEEP_PULLS);
        rc = ps_table_push_kept(t, k->rows, n, m->vals);
    } else {
        rc = delta ? ps_table_push_delta(t, m->keys, n, m->vals)
             : set ? ps_table_push_rows(t, m->keys, n, m->vals)
                   : ps_table_push(t, m->keys, n, m->vals);
    }
    if (rc < 0)
        return s_reject_rows(s, m, rc);
    cm_hdr h = s_reply_hdr(m);
    h.dim = (uint32_t)dim;
    return s_sent(s, m, cm_msg_send(s->sock, m->route, m->route_size, &h, NULL, 0, NULL, 0));
}

static int s_on_stop(ps_server *s, const cm_msg *m)
{
    cm_hdr h = s_reply_hdr(m);
    h.body = CM_BODY_TABLES;
    h.tables.n = s->n_tables;
    for (size_t i = 0; i < s->n_tables; i++) {
        h.tables.table[i].rows = ps_table_rows(s->tables[i]);
        h.tables.table[i].bytes = ps_table_bytes(s->tables[i]);
    }
    return s_sent(s, m, cm_msg_send(s->sock, m->route, m->route_size, &h, NULL, 0, NULL, 0));
}

/* EPOCH (from the scheduler, as an epoch starts): tables learn the epoch
 * (time-to-live eviction) and evict; the reply's body carries their
 * counters (cm_table_stats). */
static int s_on_epoch(ps_server *s, const cm_msg *m)
{
    cm_hdr h = s_reply_hdr(m);
    h.body = CM_BODY_TABLES;
    h.tables.n = s->n_tables;
    for (size_t i = 0; i < s->n_tables; i++) {
        ps_table_set_epoch(s->tables[i], m->hdr.epoch);
        ps_table_evict(s->tables[i]);
        ps_table_counters c;
        ps_table_stats(s->tables[i], &c);
        h.tables.table[i] = (cm_table_stat){c.rows, c.bytes, c.evicted, c.admitted, c.pending,
                                            c.dropped};
    }
    return s_sent(s, m, cm_msg_send(s->sock, m->route, m->route_size, &h, NULL, 0, NULL, 0));
}

/* ---------------------------------------------------------------------------
 * Checkpoints */

/* Writes one table's rows, sorted by key, to path, straight from the
 * table's slab. */
static int s_write_shard(ps_table *t, uint32_t table, const char *path, uint64_t *out,
                         cm_error *err)
{
    size_t n = ps_table_rows(t), rf = (size_t)ps_table_row_floats(t);
    uint64_t *keys = malloc((n + 1) * sizeof *keys), *at = malloc((n + 1) * sizeof *at);
    uint64_t *tk = malloc((n + 1) * sizeof *tk), *tv = malloc((n + 1) * sizeof *tv);
    const float **rows = malloc((n + 1) * sizeof *rows);
    int rc = 0;
    if (!keys || !at || !tk || !tv || !rows) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory for %zu rows", path, n);
        goto out;
    }
    size_t pos = 0, i = 0;
    const float *row;
    while (i < n && ps_table_next(t, &pos, &keys[i], &row))
        at[i++] = (uint64_t)(uintptr_t)row;
    n = i;
    cm_sort_u64_pairs(keys, at, n, tk, tv);
    for (i = 0; i < n; i++)
        rows[i] = (const float *)(uintptr_t)at[i];
    out[2] = n;
    rc = cm_shard_write_rows(path, table, ps_table_dim(t), (int)rf, keys, rows, n, &out[0],
                             &out[1], err);
out:
    free(keys);
    free(at);
    free(tk);
    free(tv);
    free(rows);
    return rc;
}

/* The directory a CHECKPOINT or LOAD names: hdr.path is a checkpoint's
 * name inside the job's checkpoint directory, never a path from the wire
 * (LOAD "": the job's own resume setting). 0, or the rejection's result in
 * *rc and 1. */
static int s_ckpt_dir(ps_server *s, const cm_msg *m, char *dir, size_t n, int *rc)
{
    const char *name = m->hdr.path;
    char q[96];
    *rc = 0;
    if (m->hdr.op == CM_OP_LOAD && !name[0]) {
        if (!s->resume[0] || strcmp(s->resume, "auto") == 0) {
            *rc = s_reject(s, m, CM_EPERM, "load: no checkpoint named, and the job names "
                                           "none to resume from");
            return 1;
        }
        /* the job's own setting, as cm_ckpt_resolve reads it */
        int len;
        if (strchr(s->resume, '/') || !s->ckpt_root[0] || access(s->resume, F_OK) == 0)
            len = snprintf(dir, n, "%s", s->resume);
        else
            len = snprintf(dir, n, "%s/%s", s->ckpt_root, s->resume);
        if (len < 0 || (size_t)len >= n) {
            *rc = s_reject(s, m, CM_EINVAL, "load: the resume path is too long");
            return 1;
        }
        return 0;
    }
    cm_msg_quote(name, 64, q, sizeof q);
    if (!name[0] || strchr(name, '/') || strstr(name, "..") || name[0] == '.') {
        *rc = s_reject(s, m, CM_EPERM, "%s: %s is not a checkpoint name (no '/', no '..')",
                       cm_op_name(m->hdr.op), q);
        return 1;
    }
    if (!s->ckpt_root[0]) {
        *rc = s_reject(s, m, CM_EPERM, "%s %s: this job has no checkpoint_dir",
                       cm_op_name(m->hdr.op), q);
        return 1;
    }
    if ((size_t)snprintf(dir, n, "%s/%s", s->ckpt_root, name) >= n) {
        *rc = s_reject(s, m, CM_EINVAL, "%s %s: path too long", cm_op_name(m->hdr.op), q);
        return 1;
    }
    return 0;
}

/* CHECKPOINT: every table's rows into the named checkpoint; the reply's
 * body says each shard file's size, checksum and rows, in table order. */
static int s_on_checkpoint(ps_server *s, const cm_msg *m)
{
    cm_hdr h = s_reply_hdr(m);
    h.body = CM_BODY_CKPT;
    h.ckpt.n = s->n_tables;
    char dir[CM_HDR_PATH_MAX];
    int drc;
    if (s_ckpt_dir(s, m, dir, sizeof dir, &drc))
        return drc;
    for (size_t i = 0; i < s->n_tables; i++) {
        char path[CM_HDR_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/t%zu-s%d.rows", dir, i, s->index);
        cm_error e = {0};
        double t0 = cm_now();
        uint64_t info[3]; /* size, checksum, rows */
        int rc = s_write_shard(s->tables[i], (uint32_t)i, path, info, &e);
        if (rc != 0)
            return s_reject(s, m, rc, "checkpoint: %s", e.msg);
        h.ckpt.shard[i].size = info[0];
        h.ckpt.shard[i].checksum = info[1];
        h.ckpt.shard[i].rows = info[2];
        cm_log(CM_LOG_DEBUG, "%s: %llu rows written in %.3f s", path,
               (unsigned long long)info[2], cm_now() - t0);
    }
    return s_sent(s, m, cm_msg_send(s->sock, m->route, m->route_size, &h, NULL, 0, NULL, 0));
}

/* LOAD: from the checkpoint in hdr.path, every row whose slot the slot map
 * in hdr.slots gives to this server. Rows of other slots are skipped, so a
 * checkpoint written by any number of servers loads on any number. */
static int s_on_load(ps_server *s, const cm_msg *m)
{
    cm_manifest man;
    cm_error e = {0};
    uint64_t loaded = 0;
    char dir[CM_HDR_PATH_MAX];
    int rc;
    if (s_ckpt_dir(s, m, dir, sizeof dir, &rc))
        return rc;
    rc = cm_manifest_read(dir, &man, &e);
    if (rc != 0)
        return s_reject(s, m, rc, "load: %s", e.msg);
    const uint32_t n_slots = (uint32_t)m->hdr.n_slots;
    if (n_slots == 0 || n_slots != man.n_slots) {
        rc = s_reject(s, m, CM_EINVAL, "load: slot map of %u slots, checkpoint has %u", n_slots,
                      man.n_slots);
        goto out;
    }
    for (size_t f = 0; f < man.n_files; f++) {
        const cm_ckpt_file *cf = &man.files[f];
        if (cf->table >= s->n_tables) {
            rc = s_reject(s, m, CM_EINVAL, "load: %s holds table %u, the model has %zu",
                          cf->name, cf->table, s->n_tables);
            goto out;
        }
        /* skip a file none of whose slots are ours */
        int mine = cf->n_slots == 0;
        for (size_t k = 0; k < cf->n_slots && !mine; k++)
            mine = cf->slots[k] < n_slots && (int)m->hdr.slots[cf->slots[k]] == s->index;
        if (!mine)
            continue;
        char path[CM_HDR_PATH_MAX + CM_CKPT_NAME_MAX + 2];
        snprintf(path, sizeof path, "%s/%s", dir, cf->name);
        cm_shard sh;
        rc = cm_shard_read(path, cf->size, cf->checksum, &sh, &e);
        if (rc != 0) {
            rc = s_reject(s, m, rc, "load: %s", e.msg);
            goto out;
        }
        ps_table *t = s->tables[cf->table];
        if (sh.dim != ps_table_dim(t) || sh.row_floats != ps_table_row_floats(t)) {
            rc = s_reject(s, m, CM_EINVAL,
                          "load: %s has rows of %d weights + %d state, the table %d + %d",
                          path, sh.dim, sh.row_floats - sh.dim, ps_table_dim(t),
                          ps_table_row_floats(t) - ps_table_dim(t));
            cm_shard_free(&sh);
            goto out;
        }
        for (size_t i = 0; i < sh.n && rc == 0; i++) {
            uint32_t slot = cm_slot_of(sh.keys[i], cf->table, n_slots);
            if ((int)m->hdr.slots[slot] != s->index)
                continue;
            rc = ps_table_load_row(t, sh.keys[i], sh.rows + i * (size_t)sh.row_floats);
            loaded++;
        }
        cm_shard_free(&sh);
        if (rc != 0) {
            rc = s_reject(s, m, rc, "load: %s", rc == CM_EPERM
                          ? "a row of another server's slot (SLOTS gave another map)"
                          : "out of memory");
            goto out;
        }
    }
    cm_log(CM_LOG_INFO, "ps: loaded %" PRIu64 " rows from %s", loaded, dir);
    cm_hdr h = s_reply_hdr(m);
    h.body = CM_BODY_LOADED;
    h.loaded.rows = loaded;
    rc = s_sent(s, m, cm_msg_send(s->sock, m->route, m->route_size, &h, NULL, 0, NULL, 0));
out:
    cm_manifest_free(&man);
    return rc;
}

/* SLOTS (from the scheduler, before any worker has the plan): the slot
 * map; from now on PULL and PUSH name only keys of this server's slots. */
static int s_on_slots(ps_server *s, const cm_msg *m)
{
    uint32_t n = (uint32_t)m->hdr.n_slots;
    if (n == 0 || !m->hdr.slots)
        return s_reject(s, m, CM_EINVAL, "SLOTS without a slot map");
    uint32_t *map = malloc(n * sizeof *map);
    if (!map)
        return s_reject(s, m, CM_ENOMEM, "out of memory for %" PRIu32 " slots", n);
    memcpy(map, m->hdr.slots, n * sizeof *map);
    uint32_t *old = s->slot_map; /* the tables' until they have the new one */
    s->slot_map = map;
    s->n_slots = n;
    s_confine(s);
    free(old);
    cm_hdr h = s_reply_hdr(m);
    return s_sent(s, m, cm_msg_send(s->sock, m->route, m->route_size, &h, NULL, 0, NULL, 0));
}

/* 1 for the operations only the scheduler may ask for. */
static int s_is_control(int op)
{
    return op == CM_OP_STOP || op == CM_OP_EPOCH || op == CM_OP_CHECKPOINT ||
           op == CM_OP_LOAD || op == CM_OP_SLOTS;
}

/* ---------------------------------------------------------------------------
 * The loop */

/* One request from a peer: its sender checked (control operations come
 * from the scheduler only), then its handler; *stop after STOP. */
static int s_dispatch(ps_server *s, const cm_msg *m, int *stop)
{
    int from = 0;
    cm_error e = {0};
    if (cm_msg_rank(m, &from, &e) != 0)
        return s_reject(s, m, CM_EPERM, "%s", e.msg);
    if (s_is_control(m->hdr.op) && from != 0)
        return s_reject(s, m, CM_EPERM, "%s is taken from the scheduler (rank 0) only",
                        cm_op_name(m->hdr.op));
    int rc;
    switch (m->hdr.op) {
    case CM_OP_PULL:
        return s_on_pull(s, m);
    case CM_OP_PUSH:
        return s_on_push(s, m);
    case CM_OP_CHECKPOINT:
        cm_hb_doing(s->hb, "writing its checkpoint files after epoch %u", m->hdr.epoch);
        rc = s_on_checkpoint(s, m);
        cm_hb_doing(s->hb, "serving epoch %u", s->epoch);
        return rc;
    case CM_OP_EPOCH:
        s->epoch = m->hdr.epoch;
        cm_hb_doing(s->hb, "serving epoch %u", s->epoch);
        return s_on_epoch(s, m);
    case CM_OP_LOAD:
        cm_hb_doing(s->hb, "loading a checkpoint");
        rc = s_on_load(s, m);
        cm_hb_doing(s->hb, "serving, before the first epoch");
        return rc;
    case CM_OP_SLOTS:
        return s_on_slots(s, m);
    case CM_OP_STOP:
        *stop = 1;
        return s_on_stop(s, m);
    default:
        return s_reject(s, m, CM_EPROTO, "unexpected op %s (%d)", cm_op_name(m->hdr.op),
                        m->hdr.op);
    }
}

int ps_server_run(ps_server *s)
{
    cm_log(CM_LOG_INFO, "ps: serving %zu table%s on %s", s->n_tables,
           s->n_tables == 1 ? "" : "s", s->endpoint);
    cm_hb_doing(s->hb, "serving, before the first epoch");
    /* Idle for long is normal (workers compute, evaluate): the heartbeat,
     * not a timeout, says when the job is gone, so the wait is cut into
     * slices that look at it. */
    const int slice_ms = s->hb ? 500 : -1;
    for (;;) {
        cm_msg m;
        cm_error e = {0};
        int rc = cm_msg_recv(s->sock, &m, slice_ms, &e);
        if (rc == CM_ETIMEDOUT) {
            cm_msg_release(&m);
            char why[256];
            if (cm_hb_failed(s->hb, why, sizeof why)) {
                cm_log(CM_LOG_INFO, "ps: the job failed: %s", why);
                return CM_ECLOSED;
            }
            continue;
        }
        if (rc == CM_EPROTO || rc == CM_ENOMEM) {
            /* One bad message: say why, answer it if we know who sent it. */
            s->n_requests++;
            s->n_errors++;
            uint64_t quiet = 0;
            if (cm_log_budget_take(&s->warn, &quiet))
                cm_log(CM_LOG_WARN, "ps: bad message: %s%s%.0f%s", e.msg,
                       quiet ? " (and " : "", (double)quiet,
                       quiet ? " more not logged in the last minute)" : "");
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
        rc = s_dispatch(s, &m, &stop);
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
