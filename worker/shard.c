#include "worker/shard.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/slots.h"
#include "worker/blocks.h"
#include "worker/ingest.h"
#include "worker/sparse.h"

/* Loads `path` and keeps the rows of the users this worker owns. */
static int s_load(const wk_params *p, const char *path, cm_ratings *out, double *noise_floor,
                  size_t *bad_lines, cm_error *err)
{
    cm_load_opts opts = cm_load_opts_default();
    opts.max_bad_lines = p->job->max_bad_lines;
    /* every worker reads the same file: only the first reports bad lines */
    opts.log_bad_lines = p->index == 0 ? opts.log_bad_lines : 0;
    wk_ratings_columns(p->job, &opts);
    wk_ingest in = {.boot = p->boot, .first_rank = 1 + (int)p->n_servers,
                    .index = p->index, .n_workers = p->n_workers,
                    .force_scan = p->job->ingest == CM_INGEST_SCAN};
    return wk_ingest_ratings(&in, path, &opts, out, noise_floor, bad_lines, err);
}

int wk_shard_load(const wk_params *p, wk_shard *s, cm_error *err)
{
    double nf = -1;
    size_t bad = 0;
    int rc;
    cm_hb_doing(p->hb, "loading its data shard");
    if ((rc = s_load(p, p->job->train, &s->train, &nf, &bad, err)) != 0)
        return rc;
    s->train.bad_lines = bad;
    if (p->job->test[0]) {
        if ((rc = s_load(p, p->job->test, &s->test, &nf, &bad, err)) != 0)
            return rc;
        s->test.noise_floor = nf;
        s->test.bad_lines = bad;
    } else {
        s->test.noise_floor = -1;
    }
    s->n_test = s->test.n;
    return 0;
}

int wk_shard_validation(const wk_params *p, wk_shard *s, cm_error *err)
{
    const cm_job *job = p->job;
    cm_ratings v = {0}, kept = {0};
    int rc = 0;
    if (job->validation[0]) {
        double nf = -1;
        size_t bad = 0;
        if ((rc = s_load(p, job->validation, &v, &nf, &bad, err)) != 0)
            return rc;
    } else if (job->validation_fraction > 0) {
        if ((rc = cm_ratings_carve(&s->train, job->validation_fraction, job->seed, &kept, &v,
                                   err)) != 0)
            return rc;
        cm_ratings_free(&s->train);
        s->train = kept;
    }
    if (v.n == 0) {
        cm_ratings_free(&v);
        return 0;
    }
    const size_t n = s->test.n + v.n;
    uint64_t *user = malloc(n * sizeof *user), *item = malloc(n * sizeof *item);
    float *rating = malloc(n * sizeof *rating);
    if (!user || !item || !rating) {
        free(user);
        free(item);
        free(rating);
        cm_ratings_free(&v);
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for %zu validation rows",
                            v.n);
    }
    const cm_ratings *parts[2] = {&s->test, &v};
    for (size_t k = 0, at = 0; k < 2; at += parts[k]->n, k++) {
        if (parts[k]->n == 0)
            continue;
        memcpy(user + at, parts[k]->user, parts[k]->n * sizeof *user);
        memcpy(item + at, parts[k]->item, parts[k]->n * sizeof *item);
        memcpy(rating + at, parts[k]->rating, parts[k]->n * sizeof *rating);
    }
    cm_ratings_free(&v);
    const double nf = s->test.noise_floor;
    const size_t bad = s->test.bad_lines;
    cm_ratings_free(&s->test);
    if ((rc = cm_ratings_adopt(user, item, rating, n, &s->test, err)) != 0)
        return rc;
    s->test.noise_floor = nf;
    s->test.bad_lines = bad;
    return 0;
}

void wk_shard_hello(const wk_shard *s, cm_hello *he)
{
    const cm_ratings *tr = &s->train;
    float *load = he->slot_load;
    const uint32_t n_slots = (uint32_t)he->n_slot_load;
    double sum = 0, lo = INFINITY, hi = -INFINITY;
    for (size_t j = 0; j < tr->n; j++) {
        sum += tr->rating[j];
        if (tr->rating[j] < lo)
            lo = tr->rating[j];
        if (tr->rating[j] > hi)
            hi = tr->rating[j];
        load[cm_slot_of(tr->user[j], 0, n_slots)] += 1.f;
        load[cm_slot_of(tr->item[j], 1, n_slots)] += 1.f;
    }
    he->n_train = tr->n;
    he->label_sum = sum;
    he->label_min = tr->n ? lo : 0;
    he->label_max = tr->n ? hi : 0;
    he->n_test = s->n_test;
    he->bad_train = tr->bad_lines;
    he->bad_test = s->test.bad_lines;
    he->noise_floor = s->test.noise_floor;
    he->task = -1;
    /* implicit: the rows before positive_threshold, for a clear error
     * when it leaves none */
    he->raw_train = s->raw_train;
    he->raw_test = s->raw_test;
    he->n_valid = s->test.n - s->n_test;
}

int wk_shard_items(const wk_shard *s, uint32_t **loc, uint64_t **items, float **count,
                   size_t *n, cm_error *err)
{
    const cm_ratings *tr = &s->train;
    *items = NULL;
    *count = NULL;
    *n = 0;
    *loc = malloc((tr->n + 1) * sizeof **loc);
    int rc = *loc ? wk_blocks_index_keys(tr->item, tr->n, *loc, items, n) : CM_ENOMEM;
    if (rc == 0 && !(*count = calloc(*n + 1, sizeof **count)))
        rc = CM_ENOMEM;
    if (rc != 0) {
        free(*loc);
        free(*items);
        *loc = NULL;
        *items = NULL;
        return cm_error_set(err, rc, "worker: out of memory for %zu items", tr->n);
    }
    for (size_t j = 0; j < tr->n; j++)
        (*count)[(*loc)[j]] += 1.f;
    return 0;
}

void wk_shard_free(wk_shard *s)
{
    cm_ratings_free(&s->train);
    cm_ratings_free(&s->test);
}
