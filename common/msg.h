/* msg: psrec messages on top of the van.
 *
 * A message is multipart (docs/protocol.md has the full rules):
 *
 *   [route]  header  [keys]  [values]
 *
 *   route   only on a ROUTER: the peer's identity (one frame); a DEALER
 *           neither sends nor receives it.
 *   header  a protobuf-c psrec.pb.Header (converted here to the plain
 *           cm_hdr). Always present.
 *   keys    raw little-endian u64, hdr.n_keys of them; strictly ascending
 *           (sorted, unique) for PULL and PUSH. Sent when there are keys,
 *           and sent EMPTY when there are values but no keys ("keys
 *           implied": the rows of a PULL reply come in the order asked for,
 *           or one dense row).
 *   values  raw f32 (or f16 when hdr.dtype says so), hdr.n_keys * hdr.dim
 *           of them; sent only when there are values.
 *
 * So after the route there are 1 (header), 2 (header, keys) or 3 (header,
 * keys or empty, values) frames, and whenever values are present
 * n_values == hdr.n_keys * hdr.dim, hdr.n_keys counting rows whether or not
 * their keys travel. Every received message is validated (frame count,
 * sizes against n_keys and dim, key order, op) before anyone reads it; a
 * bad one gives CM_EPROTO with the reason, and, when its header decoded,
 * enough of it (route, req_id, op) to send an error reply. */
#ifndef PSREC_COMMON_MSG_H
#define PSREC_COMMON_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "common/ctl.h"
#include "common/err.h"
#include "common/van.h"

typedef enum {
    CM_OP_NONE = 0,
    CM_OP_PULL = 1,
    CM_OP_PUSH = 2,
    CM_OP_REPLY = 3,
    CM_OP_ERROR = 4,
    CM_OP_HELLO = 10,
    CM_OP_PLAN = 11,
    CM_OP_EPOCH = 12,
    CM_OP_EPOCH_DONE = 13,
    CM_OP_EVAL = 14,
    CM_OP_EVAL_DONE = 15,
    CM_OP_PROGRESS = 16,
    CM_OP_STOP = 17,
    CM_OP_CHECKPOINT = 18,
    CM_OP_LOAD = 19,
    CM_OP_CLOCK = 20,
    CM_OP_SLOTS = 40           /* scheduler -> server: the slot map (hdr.slots);
                                  the server then takes only its slots' keys */
} cm_op;

/* Flags on a PULL. */
#define CM_PULL_NO_CREATE 1u   /* missing rows read as zeros, not created */
#define CM_PULL_FULL 2u        /* whole rows: weights then optimizer state */
#define CM_PULL_PLACE 32u      /* where the rows sit in a shared table's file
                                  (made if missing), not their values */
#define CM_PULL_KEEP 64u       /* keep the keys' rows for a push that names
                                  this pull (hdr.key_ref); echoed on the reply
                                  when kept */
/* A server keeps the rows of each peer's last CM_KEEP_PULLS pulls with
 * CM_PULL_KEEP (a ring: every such pull takes the next place, kept or
 * not), so a worker knows which of its pulls a push may still name. */
#define CM_KEEP_PULLS 4
#define CM_KEEP_MAX_KEYS (1u << 16) /* larger pulls are not kept: at most
                                       2 MiB of row pointers per worker on
                                       a server */
/* Flags on a PUSH. */
#define CM_PUSH_DELTA 4u       /* values are deltas added to whole rows */
#define CM_PUSH_SET 16u        /* values are whole rows that replace the servers'
                                  rows (made if missing): rows only the sender
                                  trains */

/* Flag on a HELLO. */
#define CM_HELLO_ITEMS 8u      /* implicit: a worker's second HELLO, its training
                                  items as sorted keys with their positives as
                                  values (dim 1); the PLAN answers with the
                                  merged list of every worker's items */

/* Element type of the values frame (hdr.dtype). Values are always floats
 * to the code on both ends: cm_msg_send converts them to halves and
 * cm_msg_recv back (common/half.h). On a PULL, dtype asks for the reply's
 * values in that type. */
#define CM_DTYPE_F32 0u
#define CM_DTYPE_F16 1u

#define CM_HDR_ERROR_MAX 256
#define CM_HDR_PATH_MAX 1024

/* How the keys frame is written. Sorted keys (PULL, PUSH) go as gaps
 * whenever that is shorter: the first key, then each key minus the one
 * before minus one, each an unsigned LEB128 varint (dense ids take one
 * byte instead of eight). Receivers always see plain u64 keys. */
#define CM_KEYS_RAW 0u
#define CM_KEYS_GAPS 1u

/* The plain form of the protobuf header. */
typedef struct {
    int op;                        /* cm_op */
    uint32_t table;
    uint64_t req_id;
    uint64_t clock;
    uint64_t n_keys;               /* keys in the keys frame */
    uint32_t dim;                  /* values per key in the values frame */
    int32_t status;                /* 0 or CM_E* on replies */
    char error[CM_HDR_ERROR_MAX];  /* with OP_ERROR */
    uint32_t flags;
    uint32_t dtype;                /* CM_DTYPE_F32 or CM_DTYPE_F16 (values frame) */
    uint32_t epoch;
    int32_t sender;                /* rank of the sender */
    size_t n_slots;
    uint32_t *slots;               /* PLAN: slot -> server; owned by whoever built the hdr */
    char path[CM_HDR_PATH_MAX];    /* CHECKPOINT/LOAD: the checkpoint's name inside
                                    * the job's checkpoint_dir (never a path; LOAD
                                    * "": the job's resume setting) */
    uint32_t key_enc;              /* keys frame: CM_KEYS_RAW or CM_KEYS_GAPS; set by
                                    * cm_msg_send, undone by cm_msg_recv */
    uint64_t key_ref;              /* PUSH: 0, or the req_id of an earlier PULL with
                                    * CM_PULL_KEEP whose keys this push's rows are
                                    * (no keys frame then) */
    int body;                      /* cm_body_kind: which member below is set
                                    * (common/ctl.h says which op carries which) */
    union {
        cm_hello hello;
        cm_plan plan;
        cm_progress progress;
        cm_epoch_done epoch_done;
        cm_eval_done eval_done;
        cm_ranking_done ranking;
        cm_place_reply place;
        cm_pull_reply pulled;
        cm_ckpt_reply ckpt;
        cm_load_reply loaded;
        cm_table_stats tables;
    };
} cm_hdr;

/* A received message. keys/vals point into the received frames (or an
 * aligned copy when a frame was misaligned) and live until release. */
typedef struct {
    cm_hdr hdr;
    const uint64_t *keys;          /* hdr.n_keys keys, or NULL */
    const float *vals;             /* n_vals values, or NULL */
    size_t n_vals;
    const void *route;             /* ROUTER: identity of the sender */
    size_t route_size;
    int peer;                      /* the rank the connection authenticated
                                    * (common/van.h), or CM_PEER_ANY */
    cm_frames *frames_;            /* private */
    void *copy_;                   /* private */
} cm_msg;

/* Zeroed header with op set. */
cm_hdr cm_hdr_make(int op);

/* Sends header (+ keys if n_keys > 0) (+ values if n_vals > 0). `route`
 * is the ROUTER identity to address (ignored on a DEALER). hdr->n_keys is
 * set from n_keys here, or, with values but no keys, to the number of rows
 * n_vals / dim. A zero hdr->dim is derived: n_vals / n_keys, or n_vals (one
 * row) without keys. Refuses with CM_EINVAL (reason in cm_sock_errmsg)
 * what the receiver would reject: values that are not whole rows, PULL or
 * PUSH without keys or with keys out of order, PULL with values, PUSH
 * without, a ROUTER send without a route. */
int cm_msg_send(cm_sock *s, const void *route, size_t route_size, cm_hdr *hdr,
                const uint64_t *keys, size_t n_keys, const float *vals, size_t n_vals);

/* The same, but vals (malloc'd, or NULL) passes to the transport, which
 * sends large values without copying them and frees them once sent;
 * freed here on any failure too. */
int cm_msg_send_owned(cm_sock *s, const void *route, size_t route_size, cm_hdr *hdr,
                      const uint64_t *keys, size_t n_keys, float *vals, size_t n_vals);

/* Receives and validates one message (timeout_ms -1: forever). *m is
 * overwritten (release a previous message first).
 * 0: *m is filled and must be released. CM_ETIMEDOUT: nothing came.
 * CM_EPROTO: malformed; err says why; *m still holds what decoded (route,
 * hdr.req_id, hdr.op) and must be released. */
int cm_msg_recv(cm_sock *s, cm_msg *m, int timeout_ms, cm_error *err);

/* Frees what *m holds; safe on a zeroed or released msg. */
void cm_msg_release(cm_msg *m);

/* Replies on a ROUTER to the sender of `req` with OP_ERROR, status and
 * text (req_id, table and clock echoed; NULL text: cm_strerror(status)).
 * Works on a message that cm_msg_recv rejected with CM_EPROTO. */
int cm_msg_reply_error(cm_sock *s, const cm_msg *req, int status, const char *text);

/* The rank m speaks for. On an authenticated connection (m->peer a
 * rank) that is the connection's rank, and hdr.sender must name it: a
 * message claiming another rank is CM_EPERM with the reason in err. With
 * no authenticated peer (inproc inside one process, or a job that runs
 * unencrypted on a trusted network) it is hdr.sender. */
int cm_msg_rank(const cm_msg *m, int *rank, cm_error *err);

/* Writes text from a peer into out (n bytes, n >= 8) as quoted data:
 * between double quotes, at most max bytes of it, quotes, backslashes and
 * bytes outside printable ASCII escaped (\xNN), "..." after the quote when
 * it was cut. For logs and error messages that repeat what a peer said. */
void cm_msg_quote(const char *text, size_t max, char *out, size_t n);

/* Name of an op ("PULL"); "?" if unknown. */
const char *cm_op_name(int op);

#endif
