/* Tests for ps/table.c: parameters, deterministic row initialisation,
 * pull with and without creation, push through SGD and AdaGrad (values
 * computed by hand), growth to many rows, accounting and alignment. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/rng.h"
#include "ps/table.h"

#define TOL 1e-6f

static ps_table_params s_params(int dim, int kind, uint64_t seed)
{
    ps_table_params p = {
        .dim = dim,
        .zero_prefix = 0,
        .init_std = 0.1f,
        .seed = seed,
        .optim = {.kind = kind, .lr = 0.1f, .eps = 1e-8f, .init_accum = 0.1f},
    };
    return p;
}

static ps_table *s_new(const ps_table_params *p)
{
    cm_error e = {0};
    ps_table *t = ps_table_new(p, &e);
    cr_assert_not_null(t, "ps_table_new: %s", e.msg);
    return t;
}

/* ------------------------------------------------------------------------ */

Test(table, new_and_destroy)
{
    ps_table_params p = s_params(8, CM_OPT_SGD, 1);
    ps_table *t = s_new(&p);
    cr_assert_eq(ps_table_dim(t), 8);
    cr_assert_eq(ps_table_rows(t), 0);
    cr_assert_gt(ps_table_bytes(t), 0);
    ps_table_destroy(&t);
    cr_assert_null(t);
    ps_table_destroy(&t);   /* no-op on NULL */
    ps_table_destroy(NULL);
}

Test(table, new_rejects_bad_params)
{
    struct {
        const char *what;
        ps_table_params p;
    } bad[8];
    int n = 0;
    ps_table_params base = s_params(4, CM_OPT_ADAGRAD, 1);
    bad[n].what = "dim 0";
    bad[n].p = base;
    bad[n++].p.dim = 0;
    bad[n].what = "negative dim";
    bad[n].p = base;
    bad[n++].p.dim = -3;
    bad[n].what = "zero_prefix > dim";
    bad[n].p = base;
    bad[n++].p.zero_prefix = 5;
    bad[n].what = "negative init_std";
    bad[n].p = base;
    bad[n++].p.init_std = -1.0f;
    bad[n].what = "NaN lr";
    bad[n].p = base;
    bad[n++].p.optim.lr = NAN;
    bad[n].what = "unknown optimizer";
    bad[n].p = base;
    bad[n++].p.optim.kind = 77;
    bad[n].what = "adagrad 0/0";
    bad[n].p = base;
    bad[n].p.optim.eps = 0.0f;
    bad[n++].p.optim.init_accum = 0.0f;
    for (int i = 0; i < n; i++) {
        cm_error e = {0};
        ps_table *t = ps_table_new(&bad[i].p, &e);
        cr_assert_null(t, "%s accepted", bad[i].what);
        cr_assert_eq(e.code, CM_EINVAL, "%s: code %d", bad[i].what, e.code);
        cr_assert_neq(e.msg[0], '\0', "%s: no message", bad[i].what);
    }
    cr_assert_null(ps_table_new(NULL, NULL));
}

/* ------------------------------------------------------------------------ */
/* Deterministic initialisation */

Test(table, init_is_deterministic_in_seed_and_key)
{
    ps_table_params p = s_params(16, CM_OPT_SGD, 1234);
    ps_table *a = s_new(&p);
    ps_table *b = s_new(&p);
    ps_table_params q = p;
    q.seed = 1235;
    ps_table *c = s_new(&q);

    /* The same keys in a different order (and with different company)
     * give the same rows: only (seed, key) matters. */
    const uint64_t ka[3] = {5, 77, UINT64_MAX};
    const uint64_t kb[4] = {0, UINT64_MAX, 77, 5};
    float ra[3 * 16], rb[4 * 16], rc[3 * 16];
    cr_assert_eq(ps_table_pull(a, ka, 3, ra, 1, NULL), 0);
    cr_assert_eq(ps_table_pull(b, kb, 4, rb, 1, NULL), 0);
    cr_assert_eq(ps_table_pull(c, ka, 3, rc, 1, NULL), 0);
    cr_assert_eq(memcmp(ra + 0 * 16, rb + 3 * 16, 16 * sizeof(float)), 0);
    cr_assert_eq(memcmp(ra + 1 * 16, rb + 2 * 16, 16 * sizeof(float)), 0);
    cr_assert_eq(memcmp(ra + 2 * 16, rb + 1 * 16, 16 * sizeof(float)), 0);

    /* Different key, different row; different seed, different row. */
    cr_assert_neq(memcmp(ra + 0 * 16, ra + 1 * 16, 16 * sizeof(float)), 0);
    for (int i = 0; i < 3; i++)
        cr_assert_neq(memcmp(ra + i * 16, rc + i * 16, 16 * sizeof(float)), 0);

    /* ps_table_init_row is exactly what a pull of a fresh row returns. */
    float want[16];
    ps_table_init_row(&p, 77, want);
    cr_assert_eq(memcmp(want, ra + 16, sizeof want), 0);

    /* Pulling again returns the same, made-once row. */
    float again[16];
    cr_assert_eq(ps_table_pull(a, &ka[1], 1, again, 1, NULL), 0);
    cr_assert_eq(memcmp(again, want, sizeof want), 0);
    cr_assert_eq(ps_table_rows(a), 3);

    ps_table_destroy(&a);
    ps_table_destroy(&b);
    ps_table_destroy(&c);
}

Test(table, init_zero_prefix)
{
    ps_table_params p = s_params(10, CM_OPT_ADAGRAD, 9);
    p.zero_prefix = 2;
    float row[10];
    for (uint64_t key = 0; key < 50; key++) {
        ps_table_init_row(&p, key, row);
        cr_assert_eq(row[0], 0.0f);
        cr_assert_eq(row[1], 0.0f);
        int nonzero = 0;
        for (int j = 2; j < 10; j++)
            nonzero += row[j] != 0.0f;
        cr_assert_eq(nonzero, 8, "key %llu", (unsigned long long)key);
    }
    p.zero_prefix = 10;
    ps_table_init_row(&p, 3, row);
    for (int j = 0; j < 10; j++)
        cr_assert_eq(row[j], 0.0f);
    p.zero_prefix = 0;
    p.init_std = 0.0f;
    ps_table_init_row(&p, 3, row);
    for (int j = 0; j < 10; j++)
        cr_assert_eq(row[j], 0.0f);
}

Test(table, init_distribution)
{
    /* 20000 keys x 8 weights ~ N(0, 0.05^2): mean and sd within a few
     * standard errors. */
    ps_table_params p = s_params(8, CM_OPT_SGD, 42);
    p.init_std = 0.05f;
    double sum = 0, sum2 = 0;
    size_t n = 0;
    float row[8];
    for (uint64_t key = 0; key < 20000; key++) {
        ps_table_init_row(&p, key * 0x9e3779b97f4a7c15ULL, row);
        for (int j = 0; j < 8; j++) {
            sum += row[j];
            sum2 += (double)row[j] * row[j];
            n++;
        }
    }
    double mean = sum / n, sd = sqrt(sum2 / n - mean * mean);
    cr_assert_lt(fabs(mean), 0.05 * 5 / sqrt((double)n), "mean %g", mean);
    cr_assert_lt(fabs(sd - 0.05), 0.05 * 0.02, "sd %g", sd);
}

/* ------------------------------------------------------------------------ */
/* Pull */

Test(table, pull_create_vs_no_create)
{
    ps_table_params p = s_params(4, CM_OPT_ADAGRAD, 7);
    ps_table *t = s_new(&p);
    const uint64_t keys[3] = {10, 20, 30};
    float out[12];
    size_t missing = 999;

    /* No-create on an empty table: zeros, all missing, nothing made. */
    memset(out, 0xff, sizeof out);
    cr_assert_eq(ps_table_pull(t, keys, 3, out, 0, &missing), 0);
    cr_assert_eq(missing, 3);
    for (int i = 0; i < 12; i++)
        cr_assert_eq(out[i], 0.0f);
    cr_assert_eq(ps_table_rows(t), 0);
    cr_assert_null(ps_table_find(t, 20));

    /* Create the middle one. */
    cr_assert_eq(ps_table_pull(t, &keys[1], 1, out, 1, &missing), 0);
    cr_assert_eq(missing, 0);
    cr_assert_eq(ps_table_rows(t), 1);
    float want[4];
    ps_table_init_row(&p, 20, want);
    cr_assert_eq(memcmp(out, want, sizeof want), 0);

    /* No-create again: one found (its values), two missing (zeros). */
    memset(out, 0xff, sizeof out);
    cr_assert_eq(ps_table_pull(t, keys, 3, out, 0, &missing), 0);
    cr_assert_eq(missing, 2);
    for (int j = 0; j < 4; j++) {
        cr_assert_eq(out[j], 0.0f);
        cr_assert_eq(out[4 + j], want[j]);
        cr_assert_eq(out[8 + j], 0.0f);
    }
    cr_assert_eq(ps_table_rows(t), 1);
    cr_assert_eq(ps_table_pull(t, keys, 3, out, 0, NULL), 0);   /* NULL count ok */

    /* Empty pulls are fine. */
    cr_assert_eq(ps_table_pull(t, NULL, 0, NULL, 1, &missing), 0);
    cr_assert_eq(missing, 0);
    cr_assert_eq(ps_table_pull(t, NULL, 0, NULL, 0, &missing), 0);

    /* The state after the weights is the optimizer's initial state. */
    const float *row = ps_table_find(t, 20);
    cr_assert_not_null(row);
    for (int j = 0; j < 4; j++) {
        cr_assert_eq(row[j], want[j]);
        cr_assert_eq(row[4 + j], 0.1f);
    }
    ps_table_destroy(&t);
}

/* ------------------------------------------------------------------------ */
/* Push */

Test(table, push_sgd)
{
    ps_table_params p = s_params(3, CM_OPT_SGD, 1);
    p.optim.lr = 0.5f;
    ps_table *t = s_new(&p);

    /* Key 4 exists (pulled); key 9 is made by the push itself. */
    const uint64_t k4 = 4;
    float w4[3];
    cr_assert_eq(ps_table_pull(t, &k4, 1, w4, 1, NULL), 0);
    const uint64_t keys[2] = {4, 9};
    const float g[6] = {1.0f, -2.0f, 0.25f, 0.5f, 0.0f, -4.0f};
    cr_assert_eq(ps_table_push(t, keys, 2, g), 0);
    cr_assert_eq(ps_table_rows(t), 2);

    float w9[3];
    ps_table_init_row(&p, 9, w9);
    float out[6];
    cr_assert_eq(ps_table_pull(t, keys, 2, out, 0, NULL), 0);
    for (int j = 0; j < 3; j++) {
        cr_assert_float_eq(out[j], w4[j] - 0.5f * g[j], TOL);
        cr_assert_float_eq(out[3 + j], w9[j] - 0.5f * g[3 + j], TOL);
    }

    /* Twice more on key 4: three steps in all. */
    cr_assert_eq(ps_table_push(t, keys, 1, g), 0);
    cr_assert_eq(ps_table_push(t, keys, 1, g), 0);
    cr_assert_eq(ps_table_pull(t, keys, 1, out, 0, NULL), 0);
    for (int j = 0; j < 3; j++)
        cr_assert_float_eq(out[j], w4[j] - 1.5f * g[j], TOL);
    ps_table_destroy(&t);
}

Test(table, push_sgd_exact_values)
{
    /* init_std 0: rows start at zero, so the values are fully by hand. */
    ps_table_params p = s_params(2, CM_OPT_SGD, 1);
    p.init_std = 0.0f;
    p.optim.lr = 0.1f;
    ps_table *t = s_new(&p);
    const uint64_t key = 123;
    const float g1[2] = {1.0f, -3.0f}, g2[2] = {2.0f, 1.0f};
    cr_assert_eq(ps_table_push(t, &key, 1, g1), 0);
    cr_assert_eq(ps_table_push(t, &key, 1, g2), 0);
    float out[2];
    cr_assert_eq(ps_table_pull(t, &key, 1, out, 1, NULL), 0);
    cr_assert_float_eq(out[0], -0.3f, TOL);   /* -0.1*(1+2) */
    cr_assert_float_eq(out[1], 0.2f, TOL);    /* -0.1*(-3+1) */
    ps_table_destroy(&t);
}

Test(table, push_adagrad)
{
    /* Weights start at (0, 0) (zero_prefix = dim); the accumulator at
     * 0.1. Same hand-computed trajectory as in test_optim, but w0 starts
     * at 0, so subtract 1 from the optim test's w0 values. */
    ps_table_params p = s_params(2, CM_OPT_ADAGRAD, 5);
    p.zero_prefix = 2;
    ps_table *t = s_new(&p);
    const uint64_t keys[2] = {1, 2};
    /* Key 2 gets the same gradients as key 1 but negated: mirror values. */
    const float g1[4] = {0.3f, -0.4f, -0.3f, 0.4f};
    const float g2[4] = {0.3f, 0.2f, -0.3f, -0.2f};
    const float g3[4] = {0.0f, 1.0f, 0.0f, -1.0f};
    cr_assert_eq(ps_table_push(t, keys, 2, g1), 0);
    cr_assert_eq(ps_table_push(t, keys, 2, g2), 0);
    float out[4];
    cr_assert_eq(ps_table_pull(t, keys, 2, out, 0, NULL), 0);
    cr_assert_float_eq(out[0], 0.874480612f - 1.0f, TOL);
    cr_assert_float_eq(out[1], 0.041931616f, TOL);
    cr_assert_float_eq(out[2], 1.0f - 0.874480612f, TOL);
    cr_assert_float_eq(out[3], -0.041931616f, TOL);
    cr_assert_eq(ps_table_push(t, keys, 2, g3), 0);
    cr_assert_eq(ps_table_pull(t, keys, 2, out, 0, NULL), 0);
    cr_assert_float_eq(out[0], 0.874480612f - 1.0f, TOL);
    cr_assert_float_eq(out[1], -0.045774186f, TOL);
    cr_assert_float_eq(out[3], 0.045774186f, TOL);

    const float *row = ps_table_find(t, 1);
    cr_assert_not_null(row);
    cr_assert_float_eq(row[2], 0.28f, TOL);   /* accumulators */
    cr_assert_float_eq(row[3], 1.30f, TOL);
    cr_assert_eq(ps_table_rows(t), 2);
    ps_table_destroy(&t);
}

/* ------------------------------------------------------------------------ */
/* Many rows, accounting, alignment, iteration */

Test(table, many_keys_growth_alignment_accounting)
{
    const int dim = 33;
    const size_t n = 100000;
    ps_table_params p = s_params(dim, CM_OPT_ADAGRAD, 2024);
    ps_table *t = s_new(&p);
    uint64_t *keys = malloc(n * sizeof *keys);
    float *out = malloc(n * dim * sizeof *out);
    cr_assert(keys && out);
    cm_rng r;
    cm_rng_seed(&r, 1);
    for (size_t i = 0; i < n; i++)
        keys[i] = cm_rng_next(&r) | 1;   /* random, distinct with near certainty */
    size_t before = ps_table_bytes(t);

    /* Pull in batches of 1000 so growth happens between and inside them. */
    for (size_t b = 0; b < n; b += 1000)
        cr_assert_eq(ps_table_pull(t, keys + b, 1000, out + b * dim, 1, NULL), 0);
    cr_assert_eq(ps_table_rows(t), n);

    /* Slab: at least n slots of round_up(2*33, 16) = 80 floats, plus the
     * index (>= 12 bytes a key), and not absurdly more (geometric chunks
     * leave at most a chunk as large as everything before it). */
    size_t slot = 80 * sizeof(float);
    size_t bytes = ps_table_bytes(t);
    cr_assert_gt(bytes, before);
    cr_assert_geq(bytes, n * slot + n * 12);
    cr_assert_leq(bytes, 3 * n * slot + n * 64);

    float want[33];
    for (size_t i = 0; i < n; i += 97) {
        ps_table_init_row(&p, keys[i], want);
        cr_assert_eq(memcmp(out + i * dim, want, sizeof want), 0, "row %zu", i);
    }
    for (size_t i = 0; i < n; i++) {
        const float *row = ps_table_find(t, keys[i]);
        cr_assert_not_null(row);
        cr_assert_eq((uintptr_t)row % 64, 0, "row %zu at %p", i, (const void *)row);
        cr_assert_eq(row[dim], 0.1f);   /* accumulator right after the weights */
        cr_assert_eq(row[2 * dim - 1], 0.1f);
    }

    /* Pushing to all of them does not add rows; a no-create pull sees
     * the update on every row. */
    float *g = calloc(n * dim, sizeof *g);
    cr_assert_not_null(g);
    for (size_t i = 0; i < n; i++)
        g[i * dim] = 1.0f;
    cr_assert_eq(ps_table_push(t, keys, n, g), 0);
    cr_assert_eq(ps_table_rows(t), n);
    float *out2 = malloc(n * dim * sizeof *out2);
    cr_assert_not_null(out2);
    size_t missing = 1;
    cr_assert_eq(ps_table_pull(t, keys, n, out2, 0, &missing), 0);
    cr_assert_eq(missing, 0);
    float step = 0.1f * 1.0f / sqrtf(1.1f + 1e-8f);
    for (size_t i = 0; i < n; i += 101) {
        cr_assert_float_eq(out2[i * dim], out[i * dim] - step, TOL);
        cr_assert_eq(out2[i * dim + 1], out[i * dim + 1]);
    }

    /* Iteration visits every row once. */
    size_t pos = 0, seen = 0;
    uint64_t key;
    const float *row;
    while (ps_table_next(t, &pos, &key, &row)) {
        cr_assert_eq(row, ps_table_find(t, key));
        seen++;
    }
    cr_assert_eq(seen, n);

    free(out2);
    free(g);
    free(out);
    free(keys);
    ps_table_destroy(&t);
}

Test(table, rows_aligned_for_every_dim)
{
    /* Slot = round_up(dim * (1 + state), 16) floats for SGD and AdaGrad. */
    for (int kind = CM_OPT_SGD; kind <= CM_OPT_ADAGRAD; kind++) {
        for (int dim = 1; dim <= 40; dim++) {
            ps_table_params p = s_params(dim, kind, 3);
            ps_table *t = s_new(&p);
            for (uint64_t k = 0; k < 200; k++) {
                float buf[40];
                cr_assert_eq(ps_table_pull(t, &k, 1, buf, 1, NULL), 0);
                const float *row = ps_table_find(t, k);
                cr_assert_eq((uintptr_t)row % 64, 0, "dim %d kind %d key %llu", dim, kind,
                             (unsigned long long)k);
            }
            ps_table_destroy(&t);
        }
    }
}

Test(table, special_keys)
{
    /* 0 and UINT64_MAX are keys like any other. */
    ps_table_params p = s_params(2, CM_OPT_SGD, 11);
    ps_table *t = s_new(&p);
    const uint64_t keys[2] = {0, UINT64_MAX};
    const float g[4] = {1, 1, 1, 1};
    cr_assert_eq(ps_table_push(t, keys, 2, g), 0);
    cr_assert_eq(ps_table_rows(t), 2);
    cr_assert_not_null(ps_table_find(t, 0));
    cr_assert_not_null(ps_table_find(t, UINT64_MAX));
    cr_assert_null(ps_table_find(t, 1));
    ps_table_destroy(&t);
}

Test(table, wide_rows_bounded_slack)
{
    /* dim 4096 (16 KiB slots): the geometric chunks stop early and the
     * fixed-size ones take over; every row still maps to its own slot,
     * and the slack stays within one 16 MiB chunk. */
    const int dim = 4096;
    const size_t n = 3000;
    ps_table_params p = s_params(dim, CM_OPT_SGD, 77);
    ps_table *t = s_new(&p);
    float *buf = malloc(dim * sizeof *buf), *want = malloc(dim * sizeof *want);
    cr_assert(buf && want);
    for (uint64_t k = 0; k < n; k++) {
        cr_assert_eq(ps_table_pull(t, &k, 1, buf, 1, NULL), 0);
        cr_assert_eq((uintptr_t)ps_table_find(t, k) % 64, 0);
    }
    for (uint64_t k = 0; k < n; k++) {
        ps_table_init_row(&p, k, want);
        cr_assert_eq(memcmp(ps_table_find(t, k), want, dim * sizeof *want), 0,
                     "key %llu", (unsigned long long)k);
    }
    size_t slab = n * dim * sizeof(float);
    cr_assert_geq(ps_table_bytes(t), slab);
    cr_assert_leq(ps_table_bytes(t), slab + ((size_t)16 << 20) + n * 64 + 4096);
    free(want);
    free(buf);
    ps_table_destroy(&t);
}
