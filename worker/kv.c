#include "worker/kv.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/log.h"
#include "common/msg.h"
#include "common/slots.h"
#include "common/table_spec.h"

/* One request in flight: which caller request it serves and where its
 * rows go. Pull requests of one wk_kv_pull call get consecutive ids. */
typedef struct {
    size_t req;       /* index into the caller's wk_pull array */
    size_t off;       /* first entry in kv->pos for this request */
    size_t count;     /* keys in this request */
    int done;
    int direct;       /* the caller's whole request went to one server as it
                         was: rows land in out in order, no scatter */
} s_pending;

/* A server's table file as mapped here (wk_kv_place). A file that grew
 * is mapped again; the older mappings stay until destroy, so pointers
 * handed out into them stay valid. */
typedef struct s_map {
    char *base;
    size_t bytes;
    cm_place_reply at;      /* which file (the PLACE reply's body) */
    struct s_map *older;
} s_map;

/* A pull sent with CM_PULL_KEEP, as the server's ring holds it: the keys
 * (a copy, to compare with a push's), and whether the reply said kept. */
typedef struct {
    uint64_t req_id;        /* 0: none */
    uint32_t table;
    int kept;
    uint64_t *keys;
    size_t n, cap;
} s_keep;

struct wk_kv {
    cm_sock **socks;        /* one DEALER per server */
    int plain_keys;         /* never name a pull's keys in a push */
    int no_shared_rows;     /* wk_kv_place always refuses (shared_rows = off) */
    s_keep *keep;           /* per server, CM_KEEP_PULLS: the server's ring */
    uint64_t *keep_pulls;   /* per server: kept pulls asked for so far */
    int *local;             /* per server: on this host (wk_kv_params.server_here) */
    int here_known;         /* 1: local[] came from the runtime's locality */
    s_map **maps;           /* per server x table: newest mapping, or NULL */
    uint32_t n_servers;
    uint32_t *slot_map;     /* slot -> server */
    uint32_t n_slots;
    int *dims;              /* per table: weights per row */
    int *row_floats;        /* per table: weights + optimizer state */
    uint32_t n_tables;
    int rank;
    int timeout_ms;
    uint32_t wire_dtype;        /* CM_DTYPE_F32 or CM_DTYPE_F16 */
    uint64_t next_req;      /* next request id */
    size_t pushes_pending;  /* pushes sent and not yet acknowledged */
    /* scratch reused across calls (grown, never shrunk) */
    uint32_t *server_of;    /* per key of a call: its server */
    uint64_t *keys;         /* keys grouped by (request, server) */
    uint32_t *pos;          /* for each grouped key, its index in the request */
    float *vals;            /* push: gradients grouped by server */
    size_t cap_keys, cap_vals;
    size_t *seg_count;      /* per server counts (n_servers + 1) */
    /* the pull in flight (wk_kv_pull_start .. wk_kv_pull_wait): its own
     * key scratch, so pushes sent meanwhile do not disturb it */
    const wk_pull *f_reqs;  /* the caller's requests; NULL: no pull in flight */
    uint64_t f_base;        /* request id of pending[0] */
    size_t f_pending, f_done;
    s_pending *pending;
    size_t cap_pending;
    uint64_t *f_keys;       /* pull keys grouped by (request, server) */
    uint32_t *f_pos;        /* for each grouped key, its index in its request */
    size_t f_cap;
    wk_kv_counters counters;
};

static int s_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 1024;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return CM_ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

/* Makes room for n keys in the three per-key scratch arrays. */
static int s_reserve_keys(wk_kv *kv, size_t n)
{
    if (n <= kv->cap_keys)
        return 0;
    size_t cap = kv->cap_keys;
    if (s_grow((void **)&kv->keys, &cap, n, sizeof *kv->keys) != 0)
        return CM_ENOMEM;
    uint32_t *pos = realloc(kv->pos, cap * sizeof *pos);
    if (!pos)
        return CM_ENOMEM;
    kv->pos = pos;
    uint32_t *so = realloc(kv->server_of, cap * sizeof *so);
    if (!so)
        return CM_ENOMEM;
    kv->server_of = so;
    kv->cap_keys = cap;
    return 0;
}

wk_kv *wk_kv_new(cm_van *van, const wk_kv_params *p, cm_error *err)
{
    wk_kv *kv = calloc(1, sizeof *kv);
    if (!kv) {
        cm_error_set(err, CM_ENOMEM, "kv: out of memory");
        return NULL;
    }
    kv->n_servers = p->n_servers;
    kv->n_slots = p->n_slots;
    kv->n_tables = p->n_tables;
    kv->rank = p->rank;
    kv->timeout_ms = p->timeout_ms;
    kv->wire_dtype = p->wire_f16 ? CM_DTYPE_F16 : CM_DTYPE_F32;
    kv->next_req = 1;
    kv->socks = calloc(p->n_servers, sizeof *kv->socks);
    kv->slot_map = malloc(p->n_slots * sizeof *kv->slot_map);
    kv->dims = malloc(p->n_tables * sizeof *kv->dims);
    kv->row_floats = malloc(p->n_tables * sizeof *kv->row_floats);
    kv->seg_count = calloc(p->n_servers + 1, sizeof *kv->seg_count);
    kv->local = calloc(p->n_servers + 1, sizeof *kv->local);
    kv->plain_keys = p->plain_keys;
    kv->no_shared_rows = p->no_shared_rows;
    kv->keep = calloc((size_t)p->n_servers * CM_KEEP_PULLS + 1, sizeof *kv->keep);
    kv->keep_pulls = calloc(p->n_servers + 1, sizeof *kv->keep_pulls);
    kv->maps = calloc((size_t)p->n_servers * p->n_tables + 1, sizeof *kv->maps);
    if (!kv->socks || !kv->slot_map || !kv->dims || !kv->row_floats || !kv->seg_count ||
        !kv->local || !kv->maps || !kv->keep || !kv->keep_pulls) {
        cm_error_set(err, CM_ENOMEM, "kv: out of memory");
        goto fail;
    }
    kv->here_known = p->server_here != NULL;
    memcpy(kv->slot_map, p->slot_map, p->n_slots * sizeof *kv->slot_map);
    memcpy(kv->dims, p->dims, p->n_tables * sizeof *kv->dims);
    memcpy(kv->row_floats, p->row_floats ? p->row_floats : p->dims,
           p->n_tables * sizeof *kv->row_floats);
    for (uint32_t s = 0; s < p->n_slots; s++)
        if (kv->slot_map[s] >= p->n_servers) {
            cm_error_set(err, CM_EINVAL, "kv: slot %u maps to server %u of %u", s,
                         kv->slot_map[s], p->n_servers);
            goto fail;
        }
    for (uint32_t i = 0; i < p->n_servers; i++) {
        kv->local[i] = p->server_here ? p->server_here[i] != 0
                                      : !strncmp(p->server_eps[i], "ipc://", 6) ||
                                            !strncmp(p->server_eps[i], "inproc://", 9);
        kv->socks[i] = cm_sock_new(van, CM_SOCK_DEALER, err);
        if (!kv->socks[i])
            goto fail;
        if (cm_sock_connect(kv->socks[i], p->server_eps[i]) != 0) {
            cm_error_set(err, CM_EIO, "kv: cannot connect to server %u at %s: %s", i,
                         p->server_eps[i], cm_sock_errmsg(kv->socks[i]));
            goto fail;
        }
    }
    return kv;
fail:
    wk_kv_destroy(&kv);
    return NULL;
}

void wk_kv_destroy(wk_kv **pkv)
{
    if (!pkv || !*pkv)
        return;
    wk_kv *kv = *pkv;
    if (kv->socks)
        for (uint32_t i = 0; i < kv->n_servers; i++)
            cm_sock_destroy(&kv->socks[i]);
    free(kv->socks);
    for (size_t i = 0; kv->maps && i < (size_t)kv->n_servers * kv->n_tables; i++)
        for (s_map *m = kv->maps[i], *o; m; m = o) {
            o = m->older;
            munmap(m->base, m->bytes);
            free(m);
        }
    free(kv->maps);
    free(kv->local);
    for (size_t i = 0; kv->keep && i < (size_t)kv->n_servers * CM_KEEP_PULLS; i++)
        free(kv->keep[i].keys);
    free(kv->keep);
    free(kv->keep_pulls);
    free(kv->slot_map);
    free(kv->dims);
    free(kv->row_floats);
    free(kv->server_of);
    free(kv->keys);
    free(kv->pos);
    free(kv->vals);
    free(kv->pending);
    free(kv->f_keys);
    free(kv->f_pos);
    free(kv->seg_count);
    free(kv);
    *pkv = NULL;
}

/* Kept keys. A plain pull of at most CM_KEEP_MAX_KEYS keys goes with
 * CM_PULL_KEEP: the server keeps its rows in the next place of its ring
 * for this worker, and kv notes the keys in the same place of its copy of
 * the ring. A gradient push of exactly those keys to that server while the
 * place still holds them (fewer than CM_KEEP_PULLS later kept pulls) and
 * once the reply said kept names the pull (key_ref) instead of sending
 * keys; the server applies it without lookups. Keys are compared whole,
 * not by a hash. The server checks the name against its ring, so a copy
 * that went wrong gives an error, never another row. Returns the flags to
 * send. */
static uint32_t s_keep_note(wk_kv *kv, uint32_t srv, uint32_t table, uint32_t flags,
                            uint64_t req_id, const uint64_t *keys, size_t n)
{
    if (flags != 0 || kv->plain_keys || n > CM_KEEP_MAX_KEYS)
        return flags;
    s_keep *k = &kv->keep[(size_t)srv * CM_KEEP_PULLS + kv->keep_pulls[srv] % CM_KEEP_PULLS];
    if (n > k->cap) {
        uint64_t *nk = realloc(k->keys, n * sizeof *nk);
        if (!nk)
            return flags; /* not kept: neither side takes a place */
        k->keys = nk;
        k->cap = n;
    }
    kv->keep_pulls[srv]++;
    k->req_id = req_id;
    k->table = table;
    k->kept = 0;
    k->n = n;
    memcpy(k->keys, keys, n * sizeof *keys);
    return flags | CM_PULL_KEEP;
}

/* The reply to pull req_id from server srv said its rows are kept. */
static void s_keep_mark(wk_kv *kv, uint32_t srv, uint64_t req_id)
{
    for (int i = 0; i < CM_KEEP_PULLS; i++) {
        s_keep *k = &kv->keep[(size_t)srv * CM_KEEP_PULLS + i];
        if (k->req_id == req_id)
            k->kept = 1;
    }
}

/* A kept pull of exactly these keys that a push to srv may name, or 0. */
static uint64_t s_keep_find(const wk_kv *kv, uint32_t srv, uint32_t table,
                            const uint64_t *keys, size_t n)
{
    if (kv->plain_keys)
        return 0;
    for (int i = 0; i < CM_KEEP_PULLS; i++) {
        const s_keep *k = &kv->keep[(size_t)srv * CM_KEEP_PULLS + i];
        if (k->req_id && k->kept && k->table == table && k->n == n &&
            !memcmp(k->keys, keys, n * sizeof *keys))
            return k->req_id;
    }
    return 0;
}

/* Floats per row a pull returns. */
static size_t s_pull_dim(const wk_kv *kv, const wk_pull *r)
{
    return (size_t)((r->flags & CM_PULL_FULL) ? kv->row_floats[r->table] : kv->dims[r->table]);
}

/* Receives one reply from any server and accounts for it: a push ack
 * lowers pushes_pending; a pull reply in [base, base + n_pending) is
 * scattered into its caller's output. */
/* Handles the replies that arrive within timeout_ms (0: those already
 * here; none is then not an error). */
static int s_recv_within(wk_kv *kv, int timeout_ms, cm_error *err)
{
    const wk_pull *reqs = kv->f_reqs;
    const uint64_t base = kv->f_base;
    s_pending *pending = kv->pending;
    const size_t n_pending = reqs ? kv->f_pending : 0;
    uint64_t ready = 0;
    int rc = cm_sock_poll(kv->socks, kv->n_servers, timeout_ms, &ready);
    if (rc != 0)
        return cm_error_set(err, rc, "kv: poll failed: %s", cm_strerror(rc));
    if (!ready && timeout_ms == 0)
        return 0;
    if (!ready)
        return cm_error_set(err, CM_ETIMEDOUT,
                            "kv: no reply from the servers within %d ms", kv->timeout_ms);
    for (uint32_t s = 0; s < kv->n_servers; s++) {
        if (!(ready & (1ULL << s)))
            continue;
        cm_msg m = {0};
        rc = cm_msg_recv(kv->socks[s], &m, 0, err);
        if (rc == CM_ETIMEDOUT)
            continue;
        if (rc != 0) {
            cm_error_prefix(err, "kv: bad reply from server %u", s);
            cm_msg_release(&m);
            return rc;
        }
        kv->counters.bytes_in += m.n_vals * (m.hdr.dtype == CM_DTYPE_F16 ? 2 : sizeof(float));
        if (m.hdr.op == CM_OP_ERROR) {
            rc = cm_error_set(err, CM_EREMOTE, "server %u refused request %llu: %s", s,
                              (unsigned long long)m.hdr.req_id, m.hdr.error);
            cm_msg_release(&m);
            return rc;
        }
        if (m.hdr.op != CM_OP_REPLY) {
            rc = cm_error_set(err, CM_EPROTO, "kv: server %u sent unexpected %s", s,
                              cm_op_name(m.hdr.op));
            cm_msg_release(&m);
            return rc;
        }
        uint64_t id = m.hdr.req_id;
        if (id >= base && id < base + n_pending) {
            s_pending *pd = &pending[id - base];
            const wk_pull *r = &reqs[pd->req];
            size_t dim = s_pull_dim(kv, r);
            if (pd->done || m.n_vals != pd->count * dim) {
                rc = cm_error_set(err, CM_EPROTO,
                                  "kv: server %u answered request %llu with %zu values, "
                                  "expected %zu",
                                  s, (unsigned long long)id, m.n_vals, pd->count * dim);
                cm_msg_release(&m);
                return rc;
            }
            const size_t stride = r->stride ? r->stride : dim;
            if (pd->direct && stride == dim) {
                memcpy(r->out, m.vals, pd->count * dim * sizeof(float));
            } else if (pd->direct) {
                for (size_t j = 0; j < pd->count; j++)
                    memcpy(r->out + j * stride, m.vals + j * dim, dim * sizeof(float));
            } else {
                const uint32_t *pos = kv->f_pos + pd->off;
                for (size_t j = 0; j < pd->count; j++)
                    memcpy(r->out + (size_t)pos[j] * stride, m.vals + j * dim,
                           dim * sizeof(float));
            }
            if (m.hdr.flags & CM_PULL_KEEP)
                s_keep_mark(kv, s, id);
            pd->done = 1;
            kv->f_done++;
        } else if (kv->pushes_pending > 0 && m.n_vals == 0) {
            kv->pushes_pending--;
        } else {
            rc = cm_error_set(err, CM_EPROTO, "kv: server %u sent an unexpected reply %llu",
                              s, (unsigned long long)id);
            cm_msg_release(&m);
            return rc;
        }
        cm_msg_release(&m);
    }
    return 0;
}

static int s_recv_one(wk_kv *kv, cm_error *err)
{
    return s_recv_within(kv, kv->timeout_ms, err);
}

/* Groups the keys of one request by server (counting sort, stable, so each
 * group stays sorted). Fills kv->keys/pos from `at` and seg_count[s] with
 * the start of server s's group (seg_count[n_servers] = end). */
static void s_group(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n, size_t at,
                    uint64_t *out_keys, uint32_t *out_pos)
{
    size_t *start = kv->seg_count;
    memset(start, 0, (kv->n_servers + 1) * sizeof *start);
    for (size_t i = 0; i < n; i++) {
        uint32_t s = kv->slot_map[cm_slot_of(keys[i], table, kv->n_slots)];
        kv->server_of[i] = s;
        start[s + 1]++;
    }
    for (uint32_t s = 0; s < kv->n_servers; s++)
        start[s + 1] += start[s];
    /* fill using a running cursor per server, then restore starts */
    for (size_t i = 0; i < n; i++) {
        size_t slot = at + start[kv->server_of[i]]++;
        out_keys[slot] = keys[i];
        out_pos[slot] = (uint32_t)i;
    }
    for (uint32_t s = kv->n_servers; s > 0; s--)
        start[s] = start[s - 1];
    start[0] = 0;
}

/* Sends one PULL or PUSH to server `srv` and counts it. `own`: NULL, or
 * vals itself, a malloc'd buffer that passes to the transport (freed in
 * any case). */
/* One request to a server: its header's fields and its frames. */
typedef struct {
    int op;                /* CM_OP_PULL or CM_OP_PUSH */
    uint32_t table;
    size_t dim;            /* floats per row in vals (push) or in the reply (pull) */
    uint32_t flags;
    uint64_t req_id;
    uint64_t key_ref;      /* a kept key list instead of keys, or 0 */
    const uint64_t *keys;  /* n keys */
    size_t n;
    const float *vals;     /* n_vals values (push) */
    size_t n_vals;
    float *own;            /* vals whose buffer the message takes, or NULL */
} s_req;

static int s_request(wk_kv *kv, uint32_t srv, const s_req *r, cm_error *err)
{
    cm_hdr h = cm_hdr_make(r->op);
    h.table = r->table;
    h.key_ref = r->key_ref;
    h.dim = (uint32_t)r->dim;
    h.flags = r->flags;
    h.sender = kv->rank;
    h.req_id = r->req_id;
    /* halves for gradients and weights; whole rows and row deltas (which
     * carry optimizer state) stay f32 */
    if (!(r->flags & (CM_PULL_FULL | CM_PUSH_DELTA | CM_PUSH_SET)))
        h.dtype = kv->wire_dtype;
    int rc = r->own
                 ? cm_msg_send_owned(kv->socks[srv], NULL, 0, &h, r->keys, r->n, r->own,
                                     r->n_vals)
                 : cm_msg_send(kv->socks[srv], NULL, 0, &h, r->keys, r->n, r->vals, r->n_vals);
    if (rc != 0)
        return cm_error_set(err, rc, "kv: send to server %u failed: %s", srv,
                            cm_sock_errmsg(kv->socks[srv]));
    kv->counters.requests++;
    kv->counters.pushes_by_ref += r->key_ref != 0;
    kv->counters.bytes_out +=
        r->n * sizeof(uint64_t) + r->n_vals * (h.dtype == CM_DTYPE_F16 ? 2 : sizeof(float));
    return 0;
}

/* Makes room for n keys of the pull in flight. */
static int s_reserve_flight(wk_kv *kv, size_t n)
{
    if (n <= kv->f_cap)
        return 0;
    size_t cap = kv->f_cap;
    if (s_grow((void **)&kv->f_keys, &cap, n, sizeof *kv->f_keys) != 0)
        return CM_ENOMEM;
    uint32_t *pos = realloc(kv->f_pos, cap * sizeof *pos);
    if (!pos)
        return CM_ENOMEM;
    kv->f_pos = pos;
    kv->f_cap = cap;
    return s_reserve_keys(kv, cap); /* server_of is shared, sized alike */
}

int wk_kv_pull_start(wk_kv *kv, const wk_pull *reqs, size_t n, cm_error *err)
{
    if (kv->f_reqs)
        return cm_error_set(err, CM_ESTATE, "kv: a pull is already in flight");
    size_t total = 0;
    for (size_t r = 0; r < n; r++) {
        if (reqs[r].table >= kv->n_tables)
            return cm_error_set(err, CM_EINVAL, "kv: no table %u", reqs[r].table);
        if (reqs[r].stride && reqs[r].stride < s_pull_dim(kv, &reqs[r]))
            return cm_error_set(err, CM_EINVAL, "kv: rows %zu floats apart cannot hold %zu",
                                reqs[r].stride, s_pull_dim(kv, &reqs[r]));
        total += reqs[r].n;
    }
    if (s_reserve_flight(kv, total) != 0)
        return cm_error_set(err, CM_ENOMEM, "kv: out of memory for %zu keys", total);
    size_t need_pending = n * kv->n_servers;
    if (s_grow((void **)&kv->pending, &kv->cap_pending, need_pending, sizeof *kv->pending))
        return cm_error_set(err, CM_ENOMEM, "kv: out of memory");

    uint64_t base = kv->next_req;
    size_t n_pending = 0, at = 0;
    for (size_t r = 0; r < n; r++) {
        const wk_pull *q = &reqs[r];
        if (q->n == 0)
            continue;
        if (kv->n_servers == 1) {
            /* one server: the sorted keys go as they are, no grouping */
            uint32_t fl = s_keep_note(kv, 0, q->table, q->flags, base + n_pending, q->keys,
                                      q->n);
            int rc = s_request(kv, 0,
                               &(s_req){.op = CM_OP_PULL, .table = q->table,
                                        .dim = s_pull_dim(kv, q), .flags = fl,
                                        .req_id = base + n_pending, .keys = q->keys, .n = q->n},
                               err);
            if (rc != 0)
                return rc;
            kv->pending[n_pending++] = (s_pending){r, 0, q->n, 0, 1};
            continue;
        }
        s_group(kv, q->table, q->keys, q->n, at, kv->f_keys, kv->f_pos);
        for (uint32_t s = 0; s < kv->n_servers; s++) {
            size_t b = kv->seg_count[s], e = kv->seg_count[s + 1];
            if (e == b)
                continue;
            uint32_t fl = s_keep_note(kv, s, q->table, q->flags, base + n_pending,
                                      kv->f_keys + at + b, e - b);
            int rc = s_request(kv, s,
                               &(s_req){.op = CM_OP_PULL, .table = q->table,
                                        .dim = s_pull_dim(kv, q), .flags = fl,
                                        .req_id = base + n_pending,
                                        .keys = kv->f_keys + at + b, .n = e - b},
                               err);
            if (rc != 0)
                return rc;
            kv->pending[n_pending++] = (s_pending){r, at + b, e - b, 0, 0};
        }
        at += q->n;
    }
    kv->next_req = base + n_pending;
    kv->f_reqs = reqs;
    kv->f_base = base;
    kv->f_pending = n_pending;
    kv->f_done = 0;
    return 0;
}

int wk_kv_pull_wait(wk_kv *kv, cm_error *err)
{
    if (!kv->f_reqs)
        return 0;
    while (kv->f_done < kv->f_pending) {
        int rc = s_recv_one(kv, err);
        if (rc != 0) {
            kv->f_reqs = NULL; /* the connection state is unknown now: the caller stops */
            return rc;
        }
    }
    kv->f_reqs = NULL;
    return 0;
}

int wk_kv_pull(wk_kv *kv, const wk_pull *reqs, size_t n, cm_error *err)
{
    int rc = wk_kv_pull_start(kv, reqs, n, err);
    return rc != 0 ? rc : wk_kv_pull_wait(kv, err);
}

/* `own`: NULL, or grads itself, a malloc'd buffer that passes to kv
 * (freed in any case); its values, or each server's share of them in a
 * buffer of its own, then go out without the transport copying them. */
static int s_push(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n,
                  const float *grads, uint32_t flags, float *own, cm_error *err)
{
    int rc = 0;
    if (table >= kv->n_tables) {
        rc = cm_error_set(err, CM_EINVAL, "kv: no table %u", table);
        goto out;
    }
    if (n == 0)
        goto out;
    size_t dim = (size_t)((flags & (CM_PUSH_DELTA | CM_PUSH_SET)) ? kv->row_floats[table]
                                                                  : kv->dims[table]);
    if (kv->n_servers == 1) {
        /* one server: keys and values go as they are, no grouping copy */
        uint64_t ref = flags ? 0 : s_keep_find(kv, 0, table, keys, n);
        rc = s_request(kv, 0,
                       &(s_req){.op = CM_OP_PUSH, .table = table, .dim = dim, .flags = flags,
                                .req_id = kv->next_req++, .key_ref = ref,
                                .keys = ref ? NULL : keys, .n = ref ? 0 : n, .vals = grads,
                                .n_vals = n * dim, .own = own},
                       err);
        own = NULL;
        if (rc == 0)
            kv->pushes_pending++;
        goto out;
    }
    if (s_reserve_keys(kv, n) != 0) {
        rc = cm_error_set(err, CM_ENOMEM, "kv: out of memory for %zu keys", n);
        goto out;
    }
    if (!own && s_grow((void **)&kv->vals, &kv->cap_vals, n * dim, sizeof *kv->vals)) {
        rc = cm_error_set(err, CM_ENOMEM, "kv: out of memory for %zu values", n * dim);
        goto out;
    }
    s_group(kv, table, keys, n, 0, kv->keys, kv->pos);
    for (uint32_t s = 0; s < kv->n_servers && rc == 0; s++) {
        size_t b = kv->seg_count[s], e = kv->seg_count[s + 1];
        if (e == b)
            continue;
        float *part = own ? malloc((e - b) * dim * sizeof *part) : NULL;
        float *vals = own ? part : kv->vals + b * dim;
        if (!vals) {
            rc = cm_error_set(err, CM_ENOMEM, "kv: out of memory for %zu values", n * dim);
            break;
        }
        for (size_t i = b; i < e; i++)
            memcpy(vals + (i - b) * dim, grads + (size_t)kv->pos[i] * dim, dim * sizeof(float));
        uint64_t ref = flags ? 0 : s_keep_find(kv, s, table, kv->keys + b, e - b);
        rc = s_request(kv, s,
                       &(s_req){.op = CM_OP_PUSH, .table = table, .dim = dim, .flags = flags,
                                .req_id = kv->next_req++, .key_ref = ref,
                                .keys = ref ? NULL : kv->keys + b, .n = ref ? 0 : e - b,
                                .vals = vals, .n_vals = (e - b) * dim, .own = part},
                       err);
        if (rc == 0)
            kv->pushes_pending++;
    }
out:
    free(own);
    return rc;
}

int wk_kv_push(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n, const float *grads,
               cm_error *err)
{
    return s_push(kv, table, keys, n, grads, 0, NULL, err);
}

int wk_kv_push_delta(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n,
                     const float *deltas, cm_error *err)
{
    return s_push(kv, table, keys, n, deltas, CM_PUSH_DELTA, NULL, err);
}

int wk_kv_push_rows(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n,
                    const float *rows, cm_error *err)
{
    return s_push(kv, table, keys, n, rows, CM_PUSH_SET, NULL, err);
}

int wk_kv_push_rows_owned(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n,
                          float *rows, cm_error *err)
{
    return s_push(kv, table, keys, n, rows, CM_PUSH_SET, rows, err);
}

int wk_kv_flush(wk_kv *kv, cm_error *err)
{
    while (kv->pushes_pending > 0) {
        int rc = s_recv_one(kv, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int wk_kv_poll(wk_kv *kv, cm_error *err)
{
    int rc = s_recv_within(kv, 0, err);
    if (rc != 0)
        kv->f_reqs = NULL; /* as for a failed wait: the caller stops */
    return rc;
}

/* Server srv's file for `table` as its PLACE reply st describes, mapped
 * (again if it grew) into *out. */
/* Maps `bytes` of fd where every row lands on a multiple of `row` bytes:
 * (address + header) % row == 0, so that rows of every server's file (and
 * of every mapping of a grown one) lie a whole number of rows apart and a
 * block whose rows span several files still trains in place (worker/
 * blocks.c). A page-aligned address steps through all such residues
 * within row / 64 pages (rows are whole 64-byte lines, the header whole
 * pages): a reservation that much larger is taken and trimmed around the
 * file. MAP_FAILED when nothing could be mapped. */
static void *s_map_rows(int fd, size_t bytes, size_t header, size_t row)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t extra = (row / 64 + 1) * page;
    char *res = row % 64 == 0 && page % 64 == 0 && header % page == 0
                    ? mmap(NULL, bytes + extra, PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                    : MAP_FAILED;
    if (res == MAP_FAILED) /* a row or header of another shape: rows copied instead */
        return mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    size_t skip = 0; /* found within row / 64 pages, as said above */
    while (((uintptr_t)res + skip + header) % row != 0)
        skip += page;
    void *p = mmap(res + skip, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    if (p == MAP_FAILED) {
        munmap(res, bytes + extra);
        return MAP_FAILED;
    }
    if (skip > 0)
        munmap(res, skip);
    munmap(res + skip + bytes, extra - skip);
    return p;
}

static int s_map_file(wk_kv *kv, uint32_t srv, uint32_t table, const cm_place_reply *st,
                      s_map **out, cm_error *err)
{
    s_map **slot = &kv->maps[(size_t)srv * kv->n_tables + table];
    s_map *m = *slot;
    const size_t bytes = (size_t)st->bytes;
    if (m && m->at.pid == st->pid && m->at.fd == st->fd && m->at.token == st->token &&
        m->bytes >= bytes) {
        *out = m;
        return 0;
    }
    char path[64];
    if (st->pid == (int64_t)getpid())
        snprintf(path, sizeof path, "/proc/self/fd/%" PRId32, st->fd);
    else
        snprintf(path, sizeof path, "/proc/%" PRId64 "/fd/%" PRId32, st->pid, st->fd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return cm_error_set(err, CM_ENOTSUP, "kv: cannot open server %u's table %u file %s",
                            srv, table, path);
    void *base = s_map_rows(fd, bytes, (size_t)st->header, (size_t)st->stride * sizeof(float));
    close(fd);
    if (base == MAP_FAILED)
        return cm_error_set(err, CM_ENOTSUP, "kv: cannot map %zu bytes of %s", bytes, path);
    cm_share_head head;
    memcpy(&head, base, sizeof head);
    if (head.magic != CM_SHARE_MAGIC || head.token != st->token) {
        munmap(base, bytes);
        return cm_error_set(err, CM_ENOTSUP,
                            "kv: %s is not server %u's table %u (another host?)", path, srv,
                            table);
    }
    s_map *nm = malloc(sizeof *nm);
    if (!nm) {
        munmap(base, bytes);
        return cm_error_set(err, CM_ENOMEM, "kv: out of memory");
    }
    *nm = (s_map){base, bytes, *st, m};
    *out = *slot = nm;
    return 0;
}

/* One server's PLACE: keys[0..n) (sorted), their rows into rows[pos[i]]
 * (pos NULL: rows[i]). */
static int s_place_one(wk_kv *kv, uint32_t srv, uint32_t table, const uint64_t *keys, size_t n,
                       const uint32_t *pos, int create, float **rows, cm_error *err)
{
    const size_t rf = (size_t)kv->row_floats[table];
    const uint32_t flags = CM_PULL_PLACE | (create ? 0 : CM_PULL_NO_CREATE);
    int rc = s_request(kv, srv,
                       &(s_req){.op = CM_OP_PULL, .table = table, .dim = rf, .flags = flags,
                                .req_id = kv->next_req++, .keys = keys, .n = n},
                       err);
    if (rc != 0)
        return rc;
    cm_msg m = {0};
    if ((rc = cm_msg_recv(kv->socks[srv], &m, kv->timeout_ms, err)) != 0) {
        if (rc == CM_ETIMEDOUT)
            cm_error_set(err, rc, "kv: no reply from server %u within %d ms", srv,
                         kv->timeout_ms);
        else
            cm_error_prefix(err, "kv: bad reply from server %u", srv);
        cm_msg_release(&m);
        return rc;
    }
    if (m.hdr.op == CM_OP_ERROR) {
        rc = cm_error_set(err, m.hdr.status == CM_ENOTSUP ? CM_ENOTSUP : CM_EREMOTE,
                          "server %u refused to place rows: %s", srv, m.hdr.error);
        cm_msg_release(&m);
        return rc;
    }
    const cm_place_reply *st = &m.hdr.place;
    const int placed = m.hdr.body == CM_BODY_PLACE;
    if (m.hdr.op != CM_OP_REPLY || m.hdr.n_keys != n || m.n_vals != 0 || !placed ||
        st->pid < 1 || st->fd < 0 || st->header < 16 || st->stride < rf ||
        st->bytes < st->header || st->bytes > (uint64_t)1e15) {
        rc = cm_error_set(err, CM_EPROTO, "kv: server %u answered a PLACE of %zu keys with "
                                          "%s of %" PRIu64 " keys and %s", srv, n,
                          cm_op_name(m.hdr.op), m.hdr.n_keys,
                          placed ? "a file it cannot be" : "no file to map");
        cm_msg_release(&m);
        return rc;
    }
    s_map *map = NULL;
    rc = s_map_file(kv, srv, table, st, &map, err);
    const size_t header = (size_t)st->header, stride = (size_t)st->stride * sizeof(float);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        uint64_t at = m.keys[i];
        if (!create && at == UINT64_MAX) {
            rows[pos ? pos[i] : i] = NULL; /* no such row */
            continue;
        }
        if (at >= (map->bytes - header) / stride) {
            rc = cm_error_set(err, CM_EPROTO, "kv: server %u placed key %" PRIu64 " at row %"
                                              PRIu64 ", beyond its file of %zu bytes",
                              srv, keys[i], at, map->bytes);
            break;
        }
        rows[pos ? pos[i] : i] = (float *)(map->base + header + at * stride);
    }
    cm_msg_release(&m);
    return rc;
}

/* Why server srv's rows cannot be shared with this worker. */
static int s_not_here(const wk_kv *kv, uint32_t srv, cm_error *err)
{
    if (kv->here_known)
        return cm_error_set(err, CM_ENOTSUP, "kv: server %u runs on another host (rows are "
                                             "shared with the servers of this host only)", srv);
    return cm_error_set(err, CM_ENOTSUP, "kv: server %u is reached over tcp (rows are shared "
                                         "over ipc:// and inproc:// only)", srv);
}

int wk_kv_place(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n, int create,
                float **rows, cm_error *err)
{
    if (table >= kv->n_tables)
        return cm_error_set(err, CM_EINVAL, "kv: no table %u", table);
    if (kv->f_reqs)
        return cm_error_set(err, CM_ESTATE, "kv: place while a pull is in flight");
    if (kv->no_shared_rows)
        return cm_error_set(err, CM_ENOTSUP, "kv: shared rows switched off "
                                             "(shared_rows = off)");
    if (n == 0)
        return 0;
    int rc = wk_kv_flush(kv, err);
    if (rc != 0)
        return rc;
    if (kv->n_servers == 1) {
        if (!kv->local[0])
            return s_not_here(kv, 0, err);
        return s_place_one(kv, 0, table, keys, n, NULL, create, rows, err);
    }
    if (s_reserve_keys(kv, n) != 0)
        return cm_error_set(err, CM_ENOMEM, "kv: out of memory for %zu keys", n);
    s_group(kv, table, keys, n, 0, kv->keys, kv->pos);
    for (uint32_t s = 0; s < kv->n_servers; s++)
        if (kv->seg_count[s + 1] > kv->seg_count[s] && !kv->local[s])
            return s_not_here(kv, s, err);
    for (uint32_t s = 0; s < kv->n_servers && rc == 0; s++) {
        size_t b = kv->seg_count[s], e = kv->seg_count[s + 1];
        if (e > b)
            rc = s_place_one(kv, s, table, kv->keys + b, e - b, kv->pos + b, create, rows, err);
    }
    return rc;
}

size_t wk_kv_pushes_pending(const wk_kv *kv)
{
    return kv->pushes_pending;
}

wk_kv_counters wk_kv_get_counters(const wk_kv *kv)
{
    return kv->counters;
}
