/* server: psrec serve, a ZeroMQ request/reply server for top-K queries.
 *
 * A ROUTER socket receives [route][RecRequest] from DEALER clients (or
 * [route][empty][RecRequest] from REQ clients) and answers each with
 * [route][RecReply] (the empty delimiter echoed for REQ). A malformed
 * request gets a RecReply with status CM_EPROTO and the reason, never a
 * crash, and the server keeps serving. Unknown users get the popularity
 * fallback, flagged in the reply (score.h).
 *
 * Hot reload: every poll_ms the server stats the model file; when its
 * (device, inode, mtime, size) changed it reads the new file into memory
 * and validates it completely (checksum included) before swapping it in
 * and bumping model_version; the old model is freed after the swap. A
 * file that fails validation (torn, corrupt) is logged once and the old
 * model keeps serving; the file is tried again when it changes again.
 *
 * Threads: the server is owned by the thread that calls sv_server_run
 * (it may be created by another thread before that). */
#ifndef PSREC_SERVE_SERVER_H
#define PSREC_SERVE_SERVER_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/err.h"
#include "common/van.h"

typedef struct sv_server sv_server;

typedef struct {
    const char *model;       /* a .psm file or an export directory */
    const char *bind;        /* endpoint, e.g. tcp://127.0.0.1:5555 */
    int poll_ms;             /* reload check period; default 200 */
    uint64_t max_requests;   /* stop after this many requests; 0: never */
    uint32_t max_k;          /* largest k served; default 1000 */
} sv_server_params;

sv_server_params sv_server_params_default(void);

/* Loads the model and binds a ROUTER socket on van. NULL on failure with
 * the reason (model file or endpoint) in err. */
sv_server *sv_server_new(cm_van *van, const sv_server_params *p, cm_error *err);

/* The bound endpoint (a "tcp://host:*" bind resolved to its port). */
const char *sv_server_endpoint(const sv_server *s);

/* Serves until *stop becomes nonzero (stop may be NULL; it is checked at
 * least every poll_ms), the van is shut down (cm_van_shutdown), or
 * max_requests were answered. 0 on those; a CM_E* code on a socket error. */
int sv_server_run(sv_server *s, atomic_int *stop);

/* The version of the model being served: 1, plus one per reload. */
uint64_t sv_server_model_version(const sv_server *s);

/* Requests answered so far (including error replies). */
uint64_t sv_server_requests(const sv_server *s);

/* Closes the socket, frees the model, NULLs *ps; no-op on NULL. */
void sv_server_destroy(sv_server **ps);

#endif
