/* evalset: a worker's test shard cut once into deduplicated chunks.
 *
 * Every evaluation of a rating model walks the same test ratings, so the
 * work that does not depend on the rows (the distinct users and items of
 * each chunk, and each rating's place among them) is done once, when the
 * first evaluation starts, and kept. Chunks are large (up to `chunk`
 * ratings, contiguous in file order): an evaluation then takes a few
 * pulls of many rows each instead of one small pull per minibatch. */
#ifndef PSREC_WORKER_EVALSET_H
#define PSREC_WORKER_EVALSET_H

#include <stddef.h>
#include <stdint.h>

#include "common/dataset.h"
#include "common/err.h"

/* One chunk: ratings [first, first + n) of the shard. */
typedef struct {
    size_t first, n;
    const uint64_t *uniq[2];   /* distinct users (0) and items (1), ascending */
    size_t n_uniq[2];
    const uint32_t *idx[2];    /* per rating: its row in uniq[t] */
} wk_eval_chunk;

typedef struct wk_evalset wk_evalset;

/* Cuts test into chunks of at most `chunk` ratings (chunk >= 1). The
 * ratings are read, not kept: test must outlive the set. */
wk_evalset *wk_evalset_new(const cm_ratings *test, size_t chunk, cm_error *err);
void wk_evalset_destroy(wk_evalset **ps);

size_t wk_evalset_count(const wk_evalset *s);
const wk_eval_chunk *wk_evalset_chunk(const wk_evalset *s, size_t c);
/* The most distinct keys of table t in any one chunk: rows to allocate. */
size_t wk_evalset_max_uniq(const wk_evalset *s, int t);

#endif
