/* Helpers for the serving tests: deterministic checkpoints and models. */
#ifndef PSREC_TESTS_SERVE_HELPERS_H
#define PSREC_TESTS_SERVE_HELPERS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/ckpt.h"
#include "common/hash.h"

/* Id of row i of table t (0 user, 1 item). */
static inline uint64_t sh_id(uint32_t t, size_t i) { return t == 0 ? 1 + 3 * i : 10 + 7 * i; }

/* Weight j of the row of id in table t, in [-0.5, 0.5): a seeded hash so
 * every test can recompute what a checkpoint holds. */
static inline float sh_val(uint64_t seed, uint32_t t, uint64_t id, int j)
{
    uint64_t x = cm_mix64(seed * 0x9e3779b97f4a7c15ull + id * 1000003ull + (uint64_t)t * 7919 +
                          (uint64_t)j);
    return (float)(x >> 40) / (float)(1u << 24) - 0.5f;
}

/* Writes an "mf" checkpoint into dir (which must exist): tables user
 * (n_users rows) and item (n_items rows), rows of dim weights then
 * row_floats - dim optimizer floats (99, to be dropped by export), each
 * table split over n_shards files (row i in shard i % n_shards). */
static inline int sh_make_ckpt(const char *dir, size_t n_users, size_t n_items, int dim,
                               int row_floats, int n_shards, uint64_t seed, double gm,
                               cm_error *err)
{
    static char job[] = "";
    cm_ckpt_table tables[2];
    memset(tables, 0, sizeof tables);
    cm_ckpt_file files[2 * 16];
    memset(files, 0, sizeof files);
    size_t nf = 0;
    int rc = 0;
    for (uint32_t t = 0; t < 2; t++) {
        snprintf(tables[t].name, sizeof tables[t].name, "%s", t == 0 ? "user" : "item");
        tables[t].dim = dim;
        tables[t].row_floats = row_floats;
        size_t n = t == 0 ? n_users : n_items;
        uint64_t *keys = malloc((n + 1) * sizeof *keys);
        float *rows = malloc((n + 1) * (size_t)row_floats * sizeof *rows);
        for (int s = 0; s < n_shards && rc == 0; s++) {
            size_t k = 0;
            for (size_t i = (size_t)s; i < n; i += (size_t)n_shards, k++) {
                keys[k] = sh_id(t, i);
                for (int j = 0; j < row_floats; j++)
                    rows[k * (size_t)row_floats + (size_t)j] =
                        j < dim ? sh_val(seed, t, keys[k], j) : 99.f;
            }
            cm_ckpt_file *cf = &files[nf++];
            snprintf(cf->name, sizeof cf->name, "t%u-w%d.rows", t, s);
            char path[4096];
            if (snprintf(path, sizeof path, "%s/%s", dir, cf->name) >= (int)sizeof path)
                rc = CM_EINVAL;
            cf->table = t;
            cf->rows = k;
            cf->writer = s;
            if (rc == 0)
                rc = cm_shard_write(path, t, dim, row_floats, keys, rows, k, &cf->size,
                                    &cf->checksum, err);
        }
        free(keys);
        free(rows);
    }
    if (rc != 0)
        return rc;
    cm_manifest m;
    memset(&m, 0, sizeof m);
    m.version = 1;
    m.job = job;
    snprintf(m.model, sizeof m.model, "mf");
    m.n_tables = 2;
    m.tables = tables;
    m.n_files = nf;
    m.files = files;
    m.global_mean = gm;
    m.clip_lo = 1.f;
    m.clip_hi = 5.f;
    m.epoch = 1;
    return cm_manifest_write(dir, &m, err);
}

#endif
