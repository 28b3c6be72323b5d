/* link: a worker's control channel to the scheduler, as the worker loop
 * and its trainers (worker/trainer.h) use it.
 *
 * It owns the DEALER socket connected to the scheduler and what the
 * schedules keep between messages: the least clock of all workers as last
 * heard (SSP/BSP minibatches, the blocks gate) and when progress was last
 * reported. One thread: the worker's. */
#ifndef PSREC_WORKER_LINK_H
#define PSREC_WORKER_LINK_H

#include <stdint.h>

#include "common/err.h"
#include "common/msg.h"
#include "common/van.h"

typedef struct wk_link wk_link;

/* Connects to the scheduler at ep; rank names the sender of every message
 * and timeout (seconds) bounds the waits for a clock. NULL with *err set
 * when the socket cannot be made or connected. */
wk_link *wk_link_new(cm_van *van, const char *ep, int rank, double timeout, cm_error *err);
void wk_link_destroy(wk_link **pl);

/* The socket, for the worker loop's own receives (plan, orders). */
cm_sock *wk_link_sock(wk_link *l);

/* Sends a control message (op, epoch and body as the caller set them);
 * the sender is set here. */
int wk_link_tell(wk_link *l, cm_hdr *h, cm_error *err);

/* At the start of an epoch's order: no clock heard yet, progress last
 * reported now. */
void wk_link_epoch_start(wk_link *l);

/* PROGRESS (examples done this epoch, their loss so far), at most every
 * quarter second: calls in between send nothing. err may be NULL. */
int wk_link_progress(wk_link *l, uint32_t epoch, uint64_t done, double loss, cm_error *err);

/* CLOCK: this worker has done `clock` minibatches (or pushed through that
 * many rounds) of epoch. */
int wk_link_clock(wk_link *l, uint32_t epoch, uint64_t clock, cm_error *err);

/* Inside an epoch: takes the scheduler's next message, which must be a
 * CLOCK (the least clock of all workers; kept when it is for `epoch`).
 * wait: up to the timeout (CM_ETIMEDOUT then says `what` was awaited);
 * else only a message already here (CM_ETIMEDOUT, err untouched, when
 * there is none). */
int wk_link_recv_clock(wk_link *l, uint32_t epoch, int wait, const char *what, cm_error *err);

/* SSP/BSP: before minibatch c (0-based) of epoch, waits until the slowest
 * worker has done at least c - staleness minibatches. */
int wk_link_wait_clock(wk_link *l, uint32_t epoch, uint64_t c, uint64_t staleness,
                       cm_error *err);

/* The least clock of all workers as last heard this epoch. */
uint64_t wk_link_min_clock(const wk_link *l);

#endif
