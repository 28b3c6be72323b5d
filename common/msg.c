/* msg: psrec messages (header + key/value frames) on top of the van.
 * The frame layout and the validation rules are in msg.h and
 * docs/protocol.md; s_validate below is their executable form. */
#include "common/msg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/codec.h"
#include "common/half.h"
#include "common/van_impl.h"

/* ------------------------------------------------------------ helpers -- */

static int s_known_op(int op)
{
    switch (op) {
    case CM_OP_PULL:
    case CM_OP_PUSH:
    case CM_OP_REPLY:
    case CM_OP_ERROR:
    case CM_OP_HELLO:
    case CM_OP_PLAN:
    case CM_OP_EPOCH:
    case CM_OP_EPOCH_DONE:
    case CM_OP_EVAL:
    case CM_OP_EVAL_DONE:
    case CM_OP_PROGRESS:
    case CM_OP_STOP:
    case CM_OP_CHECKPOINT:
    case CM_OP_LOAD:
    case CM_OP_CLOCK:
    case CM_OP_SLOTS:
        return 1;
    default:
        return 0;
    }
}

static int s_needs_keys(int op)
{
    return op == CM_OP_PULL || op == CM_OP_PUSH;
}

/* Index of the first key that is not greater than the one before, or n. */
static size_t s_first_unsorted(const uint64_t *keys, size_t n)
{
    for (size_t i = 1; i < n; i++)
        if (keys[i] <= keys[i - 1])
            return i;
    return n;
}

cm_hdr cm_hdr_make(int op)
{
    cm_hdr h;
    memset(&h, 0, sizeof h);
    h.op = op;
    return h;
}

const char *cm_op_name(int op)
{
    switch (op) {
    case CM_OP_NONE: return "NONE";
    case CM_OP_PULL: return "PULL";
    case CM_OP_PUSH: return "PUSH";
    case CM_OP_REPLY: return "REPLY";
    case CM_OP_ERROR: return "ERROR";
    case CM_OP_HELLO: return "HELLO";
    case CM_OP_PLAN: return "PLAN";
    case CM_OP_EPOCH: return "EPOCH";
    case CM_OP_EPOCH_DONE: return "EPOCH_DONE";
    case CM_OP_EVAL: return "EVAL";
    case CM_OP_EVAL_DONE: return "EVAL_DONE";
    case CM_OP_PROGRESS: return "PROGRESS";
    case CM_OP_STOP: return "STOP";
    case CM_OP_CHECKPOINT: return "CHECKPOINT";
    case CM_OP_LOAD: return "LOAD";
    case CM_OP_CLOCK: return "CLOCK";
    case CM_OP_SLOTS: return "SLOTS";
    default: return "?";
    }
}

/* --------------------------------------------------------- key gaps -- */

/* Writes keys[0..n) as varint gaps into out (room for 10 n bytes) while
 * they strictly ascend; returns the bytes written and sets *bad to the
 * first key that does not ascend (n when all do). */
static size_t s_gaps_encode(const uint64_t *keys, size_t n, uint8_t *out, size_t *bad)
{
    uint8_t *p = out;
    *bad = n;
    for (size_t i = 0; i < n; i++) {
        if (i && keys[i] <= keys[i - 1]) {
            *bad = i;
            break;
        }
        uint64_t v = i ? keys[i] - keys[i - 1] - 1 : keys[0];
        while (v >= 0x80) {
            *p++ = (uint8_t)(v | 0x80);
            v >>= 7;
        }
        *p++ = (uint8_t)v;
    }
    return (size_t)(p - out);
}

/* Reads n keys from len bytes of gaps into keys; 0, or -1 with *why set
 * when the bytes are not exactly n well-formed gaps of keys below 2^64. */
static int s_gaps_decode(const uint8_t *in, size_t len, uint64_t *keys, size_t n,
                         const char **why)
{
    size_t at = 0;
    uint64_t prev = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        for (int shift = 0;; shift += 7) {
            if (at == len) {
                *why = "ends inside a key";
                return -1;
            }
            uint8_t b = in[at++];
            if (shift == 63 && b > 1) {
                *why = "has a gap beyond 64 bits";
                return -1;
            }
            v |= (uint64_t)(b & 0x7f) << shift;
            if (!(b & 0x80))
                break;
        }
        if (i > 0 && (prev == UINT64_MAX || v > UINT64_MAX - prev - 1)) {
            *why = "has keys beyond 2^64";
            return -1;
        }
        prev = keys[i] = i ? prev + v + 1 : v;
    }
    if (at != len) {
        *why = "has bytes after the last key";
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------------- send -- */

/* What cm_msg_send refuses before anything is packed: counts without
 * arrays, values that are not keys x dim, a push or pull of the wrong
 * shape, an unknown dtype. Settles hdr->dim (when 0) and hdr->n_keys. */
static int s_send_check(cm_sock *s, int router, const void *route, size_t route_size,
                        cm_hdr *hdr, const uint64_t *keys, size_t n_keys, const float *vals,
                        size_t n_vals)
{
    const char *op = cm_op_name(hdr->op);
    if ((n_keys && !keys) || (n_vals && !vals))
        return cm_sock_seterr_(s, CM_EINVAL, "msg send %s: counts without arrays", op);
    if (router && (!route || route_size == 0))
        return cm_sock_seterr_(s, CM_EINVAL, "msg send %s: a ROUTER needs a route", op);

    uint64_t rows = n_keys;
    if (n_vals > 0) {
        if (hdr->dim == 0) {
            size_t d = n_keys ? n_vals / n_keys : n_vals;
            if (d == 0 || d > UINT32_MAX)
                return cm_sock_seterr_(s, CM_EINVAL, "msg send %s: %zu values for %zu keys",
                                       op, n_vals, n_keys);
            hdr->dim = (uint32_t)d;
        }
        if (n_vals % hdr->dim != 0 || (n_keys && n_vals / hdr->dim != n_keys))
            return cm_sock_seterr_(s, CM_EINVAL,
                                   "msg send %s: %zu values are not %zu keys x dim %" PRIu32,
                                   op, n_vals, n_keys, hdr->dim);
        rows = n_vals / hdr->dim;
    }
    if (hdr->op == CM_OP_PUSH && hdr->key_ref && n_keys)
        return cm_sock_seterr_(s, CM_EINVAL, "msg send PUSH: a push naming pull %" PRIu64
                                             "'s keys carries none of its own", hdr->key_ref);
    if (s_needs_keys(hdr->op)) {
        if (n_keys == 0 && !(hdr->op == CM_OP_PUSH && hdr->key_ref))
            return cm_sock_seterr_(s, CM_EINVAL, "msg send %s: no keys", op);
        if (hdr->op == CM_OP_PULL && n_vals)
            return cm_sock_seterr_(s, CM_EINVAL, "msg send PULL: a pull carries no values");
        if (hdr->op == CM_OP_PUSH && !n_vals)
            return cm_sock_seterr_(s, CM_EINVAL, "msg send PUSH: a push needs values");
    }
    hdr->n_keys = rows;
    if (hdr->dtype != CM_DTYPE_F32 && hdr->dtype != CM_DTYPE_F16)
        return cm_sock_seterr_(s, CM_EINVAL, "msg send %s: unknown dtype %" PRIu32, op,
                               hdr->dtype);
    return 0;
}

/* Sorted keys as gaps where that is shorter (never longer on the wire):
 * one walk checks their order and writes the gaps. Sets hdr->key_enc;
 * *gaps (malloc'd) is NULL when the keys go raw. */
static int s_send_keys(cm_sock *s, cm_hdr *hdr, const uint64_t *keys, size_t n_keys,
                       uint8_t **gaps, size_t *gaps_len)
{
    *gaps = NULL;
    *gaps_len = 0;
    hdr->key_enc = CM_KEYS_RAW;
    if (!s_needs_keys(hdr->op) || !n_keys)
        return 0;
    size_t bad;
    if (n_keys <= SIZE_MAX / 10 && (*gaps = malloc(10 * n_keys)))
        *gaps_len = s_gaps_encode(keys, n_keys, *gaps, &bad);
    else
        bad = s_first_unsorted(keys, n_keys);
    if (bad < n_keys) {
        free(*gaps);
        *gaps = NULL;
        return cm_sock_seterr_(s, CM_EINVAL, "msg send %s: keys not strictly ascending at %zu",
                               cm_op_name(hdr->op), bad);
    }
    if (*gaps && *gaps_len < n_keys * sizeof *keys) {
        hdr->key_enc = CM_KEYS_GAPS;
    } else {
        free(*gaps);
        *gaps = NULL;
    }
    return 0;
}

/* cm_msg_send; *owned (NULL, or vals itself, malloc'd) passes to the van
 * with the values frame when it can (*owned is then NULL). */
static int s_send(cm_sock *s, const void *route, size_t route_size, cm_hdr *hdr,
                  const uint64_t *keys, size_t n_keys, const float *vals, size_t n_vals,
                  float **owned)
{
    if (!s)
        return CM_EINVAL;
    if (!hdr)
        return cm_sock_seterr_(s, CM_EINVAL, "msg send: no header");
    const char *op = cm_op_name(hdr->op);
    int router = cm_sock_type_of(s) == CM_SOCK_ROUTER;
    uint8_t *gaps = NULL;
    size_t gaps_len = 0;
    int rc = s_send_check(s, router, route, route_size, hdr, keys, n_keys, vals, n_vals);
    if (rc != 0 || (rc = s_send_keys(s, hdr, keys, n_keys, &gaps, &gaps_len)) != 0)
        return rc;

    uint16_t *halves = NULL;
    if (n_vals && hdr->dtype == CM_DTYPE_F16) {
        if (!(halves = malloc(n_vals * sizeof *halves))) {
            free(gaps);
            return cm_sock_seterr_(s, CM_ENOMEM, "msg send %s: out of memory", op);
        }
        cm_half_from_f32(vals, halves, n_vals);
    }
    uint8_t *packed = NULL;
    size_t packed_len = 0;
    if (cm_codec_hdr_pack(hdr, &packed, &packed_len) < 0) {
        free(halves);
        free(gaps);
        return cm_sock_seterr_(s, CM_ENOMEM, "msg send %s: out of memory", op);
    }
    cm_iov iov[4];
    size_t n = 0;
    if (router)
        iov[n++] = (cm_iov){route, route_size};
    iov[n++] = (cm_iov){packed, packed_len};
    if (gaps)
        iov[n++] = (cm_iov){gaps, gaps_len};
    else if (n_keys || n_vals)
        iov[n++] = (cm_iov){keys, n_keys * sizeof *keys};   /* empty when keys are implied */
    if (n_vals && halves)
        iov[n++] = (cm_iov){halves, n_vals * sizeof *halves};
    else if (n_vals)
        iov[n++] = (cm_iov){vals, n_vals * sizeof *vals};
    if (*owned && n_vals && !halves) {
        rc = cm_sock_send_owned(s, iov, n, *owned);
        *owned = NULL;
    } else {
        rc = cm_sock_send(s, iov, n);
    }
    free(packed);
    free(halves);
    free(gaps);
    return rc;
}

int cm_msg_send(cm_sock *s, const void *route, size_t route_size, cm_hdr *hdr,
                const uint64_t *keys, size_t n_keys, const float *vals, size_t n_vals)
{
    float *none = NULL;
    return s_send(s, route, route_size, hdr, keys, n_keys, vals, n_vals, &none);
}

int cm_msg_send_owned(cm_sock *s, const void *route, size_t route_size, cm_hdr *hdr,
                      const uint64_t *keys, size_t n_keys, float *vals, size_t n_vals)
{
    float *owned = vals;
    int rc = s_send(s, route, route_size, hdr, keys, n_keys, vals, n_vals, &owned);
    free(owned);
    return rc;
}

/* --------------------------------------------------------------- recv -- */

/* The body frames' sizes against the header: kbytes and vbytes are the
 * keys and values frames' sizes (0 when absent), `body` the frames after
 * the route. Gives the number of values and whether the keys are implied
 * (an empty keys frame before values). */
static int s_check_shape(const cm_hdr *h, size_t body, size_t kbytes, size_t vbytes,
                         size_t *n_vals_out, int *implied_out, cm_error *err)
{
    const char *op = cm_op_name(h->op);
    uint64_t req = h->req_id;
    if (!s_known_op(h->op))
        return cm_error_set(err, CM_EPROTO, "req %" PRIu64 ": unknown op %d", req, h->op);
    if (body > 3)
        return cm_error_set(err, CM_EPROTO,
                            "%s req %" PRIu64 ": %zu frames after the route, at most 3 "
                            "(header, keys, values)", op, req, body);
    uint64_t n_keys = h->n_keys;
    const size_t esize = h->dtype == CM_DTYPE_F16 ? sizeof(uint16_t) : sizeof(float);
    if (vbytes % esize)
        return cm_error_set(err, CM_EPROTO,
                            "%s req %" PRIu64 ": values frame of %zu bytes is not a "
                            "multiple of %zu", op, req, vbytes, esize);
    size_t n_vals = vbytes / esize;
    /* An empty keys frame before a values frame means "keys implied": the
     * rows of a PULL reply come back in the order they were asked for, and
     * a PUSH naming an earlier pull's keys (key_ref) carries none. */
    const int by_ref = h->op == CM_OP_PUSH && h->key_ref != 0;
    if (by_ref && kbytes != 0)
        return cm_error_set(err, CM_EPROTO,
                            "PUSH req %" PRIu64 ": names pull %" PRIu64 "'s keys but carries "
                            "a keys frame of %zu bytes", req, h->key_ref, kbytes);
    int implied = kbytes == 0 && n_vals > 0 && (!s_needs_keys(h->op) || by_ref);
    const int gaps = h->key_enc == CM_KEYS_GAPS;
    if (gaps && (n_keys == 0 || kbytes < n_keys || kbytes > 10 * n_keys))
        return cm_error_set(err, CM_EPROTO,
                            "%s req %" PRIu64 ": keys frame of %zu bytes cannot hold %" PRIu64
                            " keys as gaps", op, req, kbytes, n_keys);
    if (!implied && !gaps &&
        (n_keys > SIZE_MAX / sizeof(uint64_t) || kbytes != n_keys * sizeof(uint64_t)))
        return cm_error_set(err, CM_EPROTO,
                            "%s req %" PRIu64 ": keys frame of %zu bytes, expected %" PRIu64
                            " keys (8 bytes each)", op, req, kbytes, n_keys);
    if (n_vals > 0) {
        if (h->dim == 0)
            return cm_error_set(err, CM_EPROTO,
                                "%s req %" PRIu64 ": %zu values but dim is 0", op, req, n_vals);
        if (n_vals % h->dim != 0 || n_vals / h->dim != n_keys)
            return cm_error_set(err, CM_EPROTO,
                                "%s req %" PRIu64 ": %zu values, expected n_keys %" PRIu64
                                " x dim %" PRIu32, op, req, n_vals, n_keys, h->dim);
    }
    if (s_needs_keys(h->op)) {
        if (n_keys == 0)
            return cm_error_set(err, CM_EPROTO, "%s req %" PRIu64 ": no keys", op, req);
        if (h->op == CM_OP_PULL && body > 2)
            return cm_error_set(err, CM_EPROTO,
                                "PULL req %" PRIu64 ": a pull carries no values frame", req);
        if (h->op == CM_OP_PUSH && n_vals == 0)
            return cm_error_set(err, CM_EPROTO, "PUSH req %" PRIu64 ": no values", req);
    }
    *n_vals_out = n_vals;
    *implied_out = implied;
    return 0;
}

/* Points m->keys and m->vals at the keys frame kp (kbytes) and the values
 * frame vp (vbytes, n_vals values), or into one aligned copy when a
 * frame's bytes are misaligned (ZeroMQ's tcp decoder hands out slices of
 * its buffer), the keys come as gaps, or the values as halves. */
static int s_point_body(cm_msg *m, const void *kp, size_t kbytes, const void *vp,
                        size_t vbytes, size_t n_vals, cm_error *err)
{
    const cm_hdr *h = &m->hdr;
    const char *op = cm_op_name(h->op);
    uint64_t req = h->req_id;
    uint64_t n_keys = h->n_keys;
    const int gaps = h->key_enc == CM_KEYS_GAPS;
    int copy_k = kp && (gaps || (uintptr_t)kp % _Alignof(uint64_t) != 0);
    const size_t kcopy = gaps ? (size_t)n_keys * sizeof(uint64_t) : kbytes;
    /* halves are widened into the copy, so the code reading m->vals always
     * sees floats */
    const int half = vp && h->dtype == CM_DTYPE_F16;
    int copy_v = half || (vp && (uintptr_t)vp % _Alignof(float) != 0);
    if (copy_k || copy_v) {
        size_t koff = 0, voff = copy_k ? (kcopy + 63) / 64 * 64 : 0;
        size_t total = voff + (copy_v ? n_vals * sizeof(float) : 0);
        m->copy_ = aligned_alloc(64, (total + 63) / 64 * 64);
        if (!m->copy_)
            return cm_error_set(err, CM_ENOMEM, "%s req %" PRIu64 ": out of memory", op, req);
        if (copy_k && gaps) {
            const char *why = "";
            uint64_t *kd = (uint64_t *)((char *)m->copy_ + koff);
            if (s_gaps_decode(kp, kbytes, kd, (size_t)n_keys, &why) != 0)
                return cm_error_set(err, CM_EPROTO, "%s req %" PRIu64 ": keys frame %s", op,
                                    req, why);
            kp = kd;
        } else if (copy_k) {
            kp = memcpy((char *)m->copy_ + koff, kp, kbytes);
        }
        if (half) {
            /* the frame may be misaligned for u16 too: widen from a copy */
            float *dst = (float *)((char *)m->copy_ + voff);
            uint16_t tmp[256];
            for (size_t i = 0; i < n_vals; i += 256) {
                size_t c = n_vals - i < 256 ? n_vals - i : 256;
                memcpy(tmp, (const char *)vp + i * sizeof *tmp, c * sizeof *tmp);
                cm_half_to_f32(tmp, dst + i, c);
            }
            vp = dst;
        } else if (copy_v) {
            vp = memcpy((char *)m->copy_ + voff, vp, vbytes);
        }
    }
    m->keys = kp;
    m->vals = vp;
    m->n_vals = n_vals;
    return 0;
}

/* Checks the body frames (header already decoded into m->hdr) and points
 * m->keys / m->vals at them. `first` is the index of the header frame. */
static int s_validate(cm_msg *m, size_t first, cm_error *err)
{
    const cm_frames *f = m->frames_;
    const cm_hdr *h = &m->hdr;
    size_t body = cm_frames_count(f) - first;
    size_t kbytes = body >= 2 ? cm_frames_size(f, first + 1) : 0;
    size_t vbytes = body >= 3 ? cm_frames_size(f, first + 2) : 0;
    size_t n_vals = 0;
    int implied = 0;
    int rc = s_check_shape(h, body, kbytes, vbytes, &n_vals, &implied, err);
    if (rc != 0)
        return rc;
    const void *kp = kbytes ? cm_frames_data(f, first + 1) : NULL;
    const void *vp = vbytes ? cm_frames_data(f, first + 2) : NULL;
    if ((rc = s_point_body(m, kp, kbytes, vp, vbytes, n_vals, err)) != 0)
        return rc;

    uint64_t n_keys = h->n_keys;
    if (s_needs_keys(h->op) && !implied) {
        const char *op = cm_op_name(h->op);
        uint64_t req = h->req_id;
        size_t bad = s_first_unsorted(m->keys, (size_t)n_keys);
        if (bad < n_keys) {
            if (m->keys[bad] == m->keys[bad - 1])
                return cm_error_set(err, CM_EPROTO,
                                    "%s req %" PRIu64 ": duplicate key %" PRIu64 " at %zu",
                                    op, req, m->keys[bad], bad);
            return cm_error_set(err, CM_EPROTO,
                                "%s req %" PRIu64 ": keys not sorted: %" PRIu64 " at %zu "
                                "after %" PRIu64, op, req, m->keys[bad], bad, m->keys[bad - 1]);
        }
    }
    return 0;
}

int cm_msg_recv(cm_sock *s, cm_msg *m, int timeout_ms, cm_error *err)
{
    if (!m)
        return cm_error_set(err, CM_EINVAL, "msg recv: no message");
    memset(m, 0, sizeof *m);
    m->peer = CM_PEER_ANY;
    if (!s)
        return cm_error_set(err, CM_EINVAL, "msg recv: no socket");
    int rc = cm_sock_recv(s, &m->frames_, timeout_ms);
    if (rc < 0)
        return cm_error_set(err, rc, "%s", cm_sock_errmsg(s));
    m->peer = cm_frames_peer(m->frames_);

    size_t n = cm_frames_count(m->frames_), first = 0;
    if (cm_sock_type_of(s) == CM_SOCK_ROUTER) {
        /* A ROUTER prepends exactly one identity frame per DEALER peer. */
        if (n == 0)
            return cm_error_set(err, CM_EPROTO, "message without a route frame");
        m->route = cm_frames_data(m->frames_, 0);
        m->route_size = cm_frames_size(m->frames_, 0);
        first = 1;
    }
    if (n <= first)
        return cm_error_set(err, CM_EPROTO, "empty message: no header frame");
    rc = cm_codec_hdr_unpack(cm_frames_data(m->frames_, first),
                             cm_frames_size(m->frames_, first), &m->hdr, err);
    if (rc < 0)
        return rc;
    return s_validate(m, first, err);
}

void cm_msg_release(cm_msg *m)
{
    if (!m)
        return;
    cm_frames_destroy(&m->frames_);
    free(m->copy_);
    cm_codec_hdr_free(&m->hdr);
    memset(m, 0, sizeof *m);
}

int cm_msg_rank(const cm_msg *m, int *rank, cm_error *err)
{
    if (!m || !rank)
        return cm_error_set(err, CM_EINVAL, "msg rank: no message");
    *rank = m->hdr.sender;
    if (m->peer == CM_PEER_ANY)
        return 0;
    *rank = m->peer;
    if (m->hdr.sender != m->peer)
        return cm_error_set(err, CM_EPERM,
                            "%s says it is from rank %" PRId32 " on the connection of rank %d",
                            cm_op_name(m->hdr.op), m->hdr.sender, m->peer);
    return 0;
}

void cm_msg_quote(const char *text, size_t max, char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    if (n < 8) {
        if (n)
            out[0] = '\0';
        return;
    }
    if (!text)
        text = "";
    out[o++] = '"';
    /* room kept for: closing quote, "...", NUL */
    for (; text[i] && i < max; i++) {
        unsigned char c = (unsigned char)text[i];
        size_t need = (c == '"' || c == '\\') ? 2 : (c < 0x20 || c > 0x7e) ? 4 : 1;
        if (o + need + 5 > n)
            break;
        if (need == 2) {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (need == 4) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    if (text[i]) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

int cm_msg_reply_error(cm_sock *s, const cm_msg *req, int status, const char *text)
{
    if (!s)
        return CM_EINVAL;
    if (!req)
        return cm_sock_seterr_(s, CM_EINVAL, "reply error: no request");
    cm_hdr h = cm_hdr_make(CM_OP_ERROR);
    h.req_id = req->hdr.req_id;
    h.table = req->hdr.table;
    h.clock = req->hdr.clock;
    h.status = status;
    snprintf(h.error, sizeof h.error, "%s", text ? text : cm_strerror(status));
    return cm_msg_send(s, req->route, req->route_size, &h, NULL, 0, NULL, 0);
}
