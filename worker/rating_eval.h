/* rating_eval: evaluation of the rating model (mf) over a worker's test
 * and validation rows, for both schedules.
 *
 * The test rows are cut into chunks once (worker/evalset.h); each
 * evaluation pulls a chunk's rows without creating any (a row never
 * trained reads as zeros) while the previous chunk is scored. Under the
 * blocks schedule the user rows this worker holds are read in place (they
 * may be newer than the servers'), and with shared item rows the item rows
 * are read from the servers' memory: then nothing is pulled. One thread:
 * the worker's. */
#ifndef PSREC_WORKER_RATING_EVAL_H
#define PSREC_WORKER_RATING_EVAL_H

#include <stdint.h>

#include "common/ctl.h"
#include "common/err.h"
#include "worker/blocks.h"
#include "worker/kv.h"
#include "worker/models/model.h"
#include "worker/shard.h"
#include "worker/worker.h"

typedef struct wk_rating_eval wk_rating_eval;

/* The evaluation of shard's test rows; the chunks are cut at the first
 * run (with shared item rows, where each item's row sits is asked then,
 * once: after training, every item with a training rating has its row).
 * p, shard, model, dims, kv and blocks (NULL: minibatch) are borrowed and
 * must outlive the result. */
wk_rating_eval *wk_rating_eval_new(const wk_params *p, const wk_shard *shard,
                                   const wk_model_ops *model, const int *dims, wk_kv *kv,
                                   wk_blocks *blocks, cm_error *err);
void wk_rating_eval_destroy(wk_rating_eval **pe);

/* The evaluation after epoch: scores the rows with ctx; out gets the test
 * and validation error sums and the test rows whose user or item never
 * trained (its other fields zeroed). With regularization = learned, the
 * validation rows also move ctx->l2 (reglearn.h). */
int wk_rating_eval_run(wk_rating_eval *e, uint32_t epoch, wk_model_ctx *ctx,
                       cm_eval_done *out, cm_error *err);

#endif
