#include "worker/ingest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/mem.h"
#include "common/slots.h"

int wk_ingest_exchanges(const wk_ingest *in, const char *path)
{
    return !in->force_scan && in->n_workers > 1 && cm_boot_can_exchange(in->boot) &&
           cm_dataset_is_binary(path) == 1;
}

static int s_scan(const wk_ingest *in, const char *path, const cm_load_opts *opts,
                  cm_ratings *out, double *noise_floor, size_t *bad_lines, cm_error *err)
{
    cm_ratings all = {0};
    int rc = cm_ratings_load(path, opts, &all, err);
    if (rc != 0)
        return rc;
    *noise_floor = all.noise_floor;
    *bad_lines = all.bad_lines;
    size_t n = 0;
    for (size_t j = 0; j < all.n; j++)
        n += cm_worker_of(all.user[j], in->n_workers) == in->index;
    uint64_t *u = malloc((n + 1) * sizeof *u);
    uint64_t *i = malloc((n + 1) * sizeof *i);
    float *r = malloc((n + 1) * sizeof *r);
    if (!u || !i || !r) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory for %zu rows", path, n);
        goto out;
    }
    n = 0;
    for (size_t j = 0; j < all.n; j++) {
        if (cm_worker_of(all.user[j], in->n_workers) != in->index)
            continue;
        u[n] = all.user[j];
        i[n] = all.item[j];
        r[n] = all.rating[j];
        n++;
    }
    rc = cm_ratings_from_arrays(u, i, r, n, out, err);
out:
    free(u);
    free(i);
    free(r);
    cm_ratings_free(&all);
    return rc;
}

/* Every worker learns whether every other one got this far; a failed
 * worker's message is passed to all. */
static int s_agree(const wk_ingest *in, int rc, cm_error *err)
{
    const uint32_t w = in->n_workers;
    char *mine = calloc(w, CM_ERROR_MSG_MAX);
    uint64_t *counts = malloc(w * sizeof *counts);
    void *all = NULL;
    uint64_t n = 0;
    int out = 0;
    if (!mine || !counts) {
        free(mine);
        free(counts);
        return cm_error_set(err, CM_ENOMEM, "ingest: out of memory");
    }
    for (uint32_t d = 0; d < w; d++) {
        counts[d] = 1;
        /* an empty text is "fine"; otherwise the reason */
        if (rc != 0)
            snprintf(mine + (size_t)d * CM_ERROR_MSG_MAX, CM_ERROR_MSG_MAX, "%s",
                     err->msg[0] ? err->msg : cm_strerror(rc));
    }
    cm_error xerr = {0};
    out = cm_boot_exchange(in->boot, in->first_rank, (int)w, CM_ERROR_MSG_MAX, mine, counts,
                           &all, &n, &xerr);
    if (out != 0) {
        *err = xerr;
    } else if (rc != 0) {
        out = rc;
    } else {
        for (uint32_t s = 0; s < w && s < n; s++) {
            const char *m = (const char *)all + (size_t)s * CM_ERROR_MSG_MAX;
            if (m[0]) {
                out = cm_error_set(err, CM_EREMOTE, "worker %u: %.*s", s,
                                   CM_ERROR_MSG_MAX - 32, m);
                break;
            }
        }
    }
    free(all);
    free(mine);
    free(counts);
    return out;
}

/* The columns whose checksums worker `index` of w verifies: column c
 * (user, item, rating) falls to worker c mod w, so no worker hashes the
 * whole file while the others wait for it at the exchange. */
static int s_verify_share(uint32_t index, uint32_t w)
{
    int mask = 0;
    for (uint32_t c = 0; c < 3; c++)
        if (c % w == index)
            mask |= 1 << c;
    return mask;
}

static int s_exchange(const wk_ingest *in, const char *path, const cm_load_opts *opts,
                      cm_ratings *out, double *noise_floor, size_t *bad_lines, cm_error *err)
{
    const uint32_t w = in->n_workers;
    cm_load_opts o = *opts;
    o.verify_checksum = opts->verify_checksum & s_verify_share(in->index, w);
    cm_ratings all = {0};
    uint32_t *owner = NULL;
    uint64_t *counts = calloc(w, sizeof *counts), *at = calloc(w, sizeof *at);
    /* the rows to send, a column each, grouped by destination; each column
     * travels in its own exchange and arrives as the column it becomes */
    uint64_t *su = NULL, *si = NULL;
    float *sr = NULL;
    void *ru = NULL, *ri = NULL, *rr = NULL;
    uint64_t n_recv = 0, n_i = 0, n_r = 0;
    int rc = counts && at ? 0 : cm_error_set(err, CM_ENOMEM, "ingest: out of memory");
    if (rc == 0)
        rc = cm_ratings_load(path, &o, &all, err);
    const size_t lo = all.n * in->index / w, hi = all.n * (in->index + 1) / w;
    if (rc == 0 && !(owner = malloc((hi - lo + 1) * sizeof *owner)))
        rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory for %zu rows", path, hi - lo);
    if (rc == 0) {
        for (size_t j = lo; j < hi; j++)
            counts[owner[j - lo] = cm_worker_of(all.user[j], w)]++;
        for (uint32_t d = 1; d < w; d++)
            at[d] = at[d - 1] + counts[d - 1];
        su = cm_alloc_big((hi - lo + 1) * sizeof *su);
        si = cm_alloc_big((hi - lo + 1) * sizeof *si);
        sr = cm_alloc_big((hi - lo + 1) * sizeof *sr);
        if (!su || !si || !sr)
            rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory for %zu rows", path, hi - lo);
    }
    if (rc == 0)
        for (size_t j = lo; j < hi; j++) {
            const uint64_t k = at[owner[j - lo]]++;
            su[k] = all.user[j];
            si[k] = all.item[j];
            sr[k] = all.rating[j];
        }
    free(owner);
    /* from here on every worker takes part in the same collectives */
    if ((rc = s_agree(in, rc, err)) != 0)
        goto out;
    if ((rc = cm_boot_exchange(in->boot, in->first_rank, (int)w, sizeof *su, su, counts, &ru,
                               &n_recv, err)) != 0 ||
        (rc = cm_boot_exchange(in->boot, in->first_rank, (int)w, sizeof *si, si, counts, &ri,
                               &n_i, err)) != 0 ||
        (rc = cm_boot_exchange(in->boot, in->first_rank, (int)w, sizeof *sr, sr, counts, &rr,
                               &n_r, err)) != 0)
        goto out;
    if (n_i != n_recv || n_r != n_recv) {
        rc = cm_error_set(err, CM_EPROTO, "%s: the exchange delivered %llu users, %llu items "
                          "and %llu ratings", path, (unsigned long long)n_recv,
                          (unsigned long long)n_i, (unsigned long long)n_r);
        goto out;
    }
    *noise_floor = all.noise_floor;
    *bad_lines = all.bad_lines;
    cm_log(CM_LOG_INFO, "%s: read rows %zu..%zu of %zu, kept %llu after the exchange among "
                        "%u workers", path, lo, hi, all.n, (unsigned long long)n_recv, w);
    rc = cm_ratings_adopt(ru, ri, rr, (size_t)n_recv, out, err); /* owns them now */
    ru = ri = rr = NULL;
out:
    free(ru);
    free(ri);
    free(rr);
    free(su);
    free(si);
    free(sr);
    free(counts);
    free(at);
    cm_ratings_free(&all);
    return rc;
}

int wk_ingest_ratings(const wk_ingest *in, const char *path, const cm_load_opts *opts,
                      cm_ratings *out, double *noise_floor, size_t *bad_lines, cm_error *err)
{
    memset(out, 0, sizeof *out);
    *noise_floor = -1;
    *bad_lines = 0;
    if (wk_ingest_exchanges(in, path))
        return s_exchange(in, path, opts, out, noise_floor, bad_lines, err);
    return s_scan(in, path, opts, out, noise_floor, bad_lines, err);
}
