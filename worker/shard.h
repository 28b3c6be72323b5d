/* shard: the ratings one worker trains on and scores, for the families
 * that read (user, item, rating) rows (mf's two schedules, implicit).
 *
 * The training and test files' rows of the users this worker owns
 * (worker/ingest.h), the validation rows appended to the test rows, what
 * HELLO says about them, and the shard's items for the scheduler. One
 * thread: the worker's. */
#ifndef PSREC_WORKER_SHARD_H
#define PSREC_WORKER_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "common/ctl.h"
#include "common/dataset.h"
#include "common/err.h"
#include "worker/worker.h"

typedef struct {
    cm_ratings train;
    /* the test file's rows, then the validation rows (one evaluation pass
     * scores both): the first n_test are the test file's */
    cm_ratings test;
    size_t n_test;
    size_t raw_train, raw_test; /* implicit: rows before positive_threshold */
} wk_shard;

/* Loads this worker's rows of the job's train and test files into s
 * (zeroed by the caller); n_test is the test file's rows. */
int wk_shard_load(const wk_params *p, wk_shard *s, cm_error *err);

/* Validation rows (docs/validation.md): the job's validation file's share
 * of this worker, or the rows of the training shard that cm_ratings_carve
 * holds out (then not trained on), appended to s->test. */
int wk_shard_validation(const wk_params *p, wk_shard *s, cm_error *err);

/* HELLO's statistics of the shard; adds one request per rating to its
 * user's slot and its item's slot in he->slot_load (he->n_slot_load
 * floats). */
void wk_shard_hello(const wk_shard *s, cm_hello *he);

/* The training rows' items for a second HELLO: *items the n sorted
 * distinct items, *count each one's training rows, *loc (n_train) each
 * row's item as a place in *items; the caller frees all three. */
int wk_shard_items(const wk_shard *s, uint32_t **loc, uint64_t **items, float **count,
                   size_t *n, cm_error *err);

void wk_shard_free(wk_shard *s);

#endif
