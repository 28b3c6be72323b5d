/* service: psrec serve, a ZeroMQ request/reply server for top-K queries.
 *
 * A ROUTER socket receives [route][RecRequest] from DEALER clients (or
 * [route][empty][RecRequest] from REQ clients) and answers each with
 * [route][RecReply] (the empty delimiter echoed for REQ). A malformed
 * request gets a RecReply with status CM_EPROTO and the reason, never a
 * crash, and the server keeps serving. Unknown users get the popularity
 * fallback, flagged in the reply (score.h).
 *
 * Bounded work: a message above max_msg_bytes is dropped with its
 * connection before it is read (nothing is allocated for it); a request
 * with k above max_k or more than max_exclude excluded ids gets a
 * CM_ERANGE reply naming the limit (the ids are counted before the
 * request is decoded). The thread that runs the server only moves frames:
 * requests are answered by a pool of `threads` workers, so one slow
 * request occupies one worker while the others keep answering. Requests
 * of one client are answered one at a time, in order (a pipelining DEALER
 * gets its replies in order). At most `queue` requests wait for a worker;
 * beyond that the server stops reading and ZeroMQ's per-client queues
 * (a few messages each) fill, then the clients' sends wait.
 *
 * With curve_secret set the socket is a CURVE server: traffic is
 * encrypted and only clients that know the server's public key complete
 * the handshake (docs/serving.md). Clients are not authenticated further.
 *
 * Hot reload: every poll_ms the server stats the model file; when its
 * (device, inode, mtime, size) changed it reads the new file into memory
 * and validates it completely (checksum included) before swapping it in
 * and bumping model_version. Requests already with a worker finish on the
 * model they started with, which is freed when the last of them is done.
 * A file that fails validation (torn, corrupt) is logged once and the old
 * model keeps serving; the file is tried again when it changes again.
 *
 * Threads: the server is owned by the thread that calls sv_service_run
 * (it may be created by another thread before that); sv_service_new starts
 * the workers and sv_service_destroy stops them. */
#ifndef PSREC_SERVE_SERVICE_H
#define PSREC_SERVE_SERVICE_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/err.h"
#include "common/van.h"

typedef struct sv_service sv_service;

typedef struct {
    const char *model;       /* a .psm file or an export directory */
    const char *bind;        /* endpoint, e.g. tcp://127.0.0.1:5555 */
    int poll_ms;             /* reload check period; default 200 */
    uint64_t max_requests;   /* stop after this many requests; 0: never */
    uint32_t max_k;          /* largest k served; default 1000 */
    uint32_t max_exclude;    /* most excluded ids in a request; default 100000 */
    int64_t max_msg_bytes;   /* largest request message; default 1 MiB */
    uint32_t threads;        /* workers answering requests; default 4, at most 64 */
    uint32_t queue;          /* requests waiting for a worker; default 64 */
    const uint8_t *curve_secret; /* CURVE secret key (CM_KEY_BYTES) or NULL: plain */
} sv_service_params;

sv_service_params sv_service_params_default(void);

/* Loads the model, binds a ROUTER socket on van (with the limits of p;
 * with its CURVE key the van is secured, cm_van_secure, so van must not
 * have made a socket yet) and starts the workers. NULL on failure with the
 * reason (model file, key, endpoint, limits) in err. */
sv_service *sv_service_new(cm_van *van, const sv_service_params *p, cm_error *err);

/* The bound endpoint (a "tcp://host:*" bind resolved to its port). */
const char *sv_service_endpoint(const sv_service *s);

/* Serves until *stop becomes nonzero (stop may be NULL; it is checked at
 * least every poll_ms), the van is shut down (cm_van_shutdown), or
 * max_requests were answered. 0 on those; a CM_E* code on a socket error. */
int sv_service_run(sv_service *s, atomic_int *stop);

/* The version of the model being served: 1, plus one per reload. */
uint64_t sv_service_model_version(const sv_service *s);

/* Requests answered so far (including error replies). */
uint64_t sv_service_requests(const sv_service *s);

/* Requests handed to a worker so far (tests wait on it: a request is
 * being worked on once this counts it). */
uint64_t sv_service_dispatched(const sv_service *s);

/* Stops and joins the workers, closes the sockets, frees the model,
 * NULLs *ps; no-op on NULL. */
void sv_service_destroy(sv_service **ps);

#endif
