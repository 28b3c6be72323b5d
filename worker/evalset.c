#include "worker/evalset.h"

#include <stdlib.h>

#include "common/sorted.h"

struct wk_evalset {
    wk_eval_chunk *chunks;
    size_t n_chunks;
    uint64_t *keys;      /* every chunk's uniq[0] and uniq[1], back to back */
    uint32_t *idx;       /* 2 per rating: the users' then the items' */
    size_t max_uniq[2];
};

wk_evalset *wk_evalset_new(const cm_ratings *test, size_t chunk, cm_error *err)
{
    wk_evalset *s = calloc(1, sizeof *s);
    const size_t n = test->n;
    const size_t m = chunk < n ? chunk : n;
    uint64_t *scratch = NULL;
    if (!s)
        goto oom;
    if (chunk == 0 || n >= UINT32_MAX) {
        cm_error_set(err, CM_EINVAL, "worker: cannot cut %zu test ratings into chunks of %zu",
                     n, chunk);
        free(s);
        return NULL;
    }
    s->n_chunks = n ? (n + chunk - 1) / chunk : 0;
    s->chunks = calloc(s->n_chunks + 1, sizeof *s->chunks);
    s->keys = malloc((2 * n + 1) * sizeof *s->keys);
    s->idx = malloc((2 * n + 1) * sizeof *s->idx);
    scratch = malloc((2 * m + 1) * sizeof *scratch);
    if (!s->chunks || !s->keys || !s->idx || !scratch)
        goto oom;
    const uint64_t *cols[2] = {test->user, test->item};
    size_t used = 0;
    for (size_t c = 0; c < s->n_chunks; c++) {
        wk_eval_chunk *ch = &s->chunks[c];
        ch->first = c * chunk;
        ch->n = n - ch->first < chunk ? n - ch->first : chunk;
        for (int t = 0; t < 2; t++) {
            /* uniq has room for the chunk: cm_dedupe_u64 borrows it as scratch */
            uint64_t *uniq = s->keys + used;
            uint32_t *idx = s->idx + (size_t)t * n + ch->first;
            cm_dedupe_u64(cols[t] + ch->first, ch->n, uniq, idx, &ch->n_uniq[t], scratch);
            ch->uniq[t] = uniq;
            ch->idx[t] = idx;
            used += ch->n_uniq[t];
            if (ch->n_uniq[t] > s->max_uniq[t])
                s->max_uniq[t] = ch->n_uniq[t];
        }
    }
    free(scratch);
    /* give back the room that duplicates left unused; the chunks' key
     * pointers follow the array if it moves */
    uint64_t *keys = realloc(s->keys, (used + 1) * sizeof *keys);
    if (keys) {
        s->keys = keys;
        used = 0;
        for (size_t c = 0; c < s->n_chunks; c++)
            for (int t = 0; t < 2; t++) {
                s->chunks[c].uniq[t] = keys + used;
                used += s->chunks[c].n_uniq[t];
            }
    }
    return s;
oom:
    cm_error_set(err, CM_ENOMEM, "worker: out of memory indexing %zu test ratings", n);
    free(scratch);
    wk_evalset_destroy(&s);
    return NULL;
}

void wk_evalset_destroy(wk_evalset **ps)
{
    if (!ps || !*ps)
        return;
    free((*ps)->chunks);
    free((*ps)->keys);
    free((*ps)->idx);
    free(*ps);
    *ps = NULL;
}

size_t wk_evalset_count(const wk_evalset *s)
{
    return s->n_chunks;
}

const wk_eval_chunk *wk_evalset_chunk(const wk_evalset *s, size_t c)
{
    return c < s->n_chunks ? &s->chunks[c] : NULL;
}

size_t wk_evalset_max_uniq(const wk_evalset *s, int t)
{
    return s->max_uniq[t];
}
