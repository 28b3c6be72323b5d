/* Tests for ps/table.c: parameters, deterministic row initialisation,
 * pull with and without creation, push through SGD and AdaGrad (values
 * computed by hand), growth to many rows, accounting and alignment. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/config.h"
#include "common/rng.h"
#include "common/slots.h"
#include "ps/table.h"

#define TOL 1e-6f

static cm_table_spec s_params(int dim, int kind, uint64_t seed)
{
    cm_table_spec p = {
        .dim = dim,
        .zero_prefix = 0,
        .init_std = 0.1f,
        .seed = seed,
        .optim = {.kind = kind, .lr = 0.1f, .eps = 1e-8f, .init_accum = 0.1f},
    };
    return p;
}

static ps_table *s_new(const cm_table_spec *p)
{
    cm_error e = {0};
    ps_table *t = ps_table_new(p, &e);
    cr_assert_not_null(t, "ps_table_new: %s", e.msg);
    return t;
}

/* ------------------------------------------------------------------------ */

Test(table, new_and_destroy)
{
    cm_table_spec p = s_params(8, CM_OPT_SGD, 1);
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
        cm_table_spec p;
    } bad[8];
    int n = 0;
    cm_table_spec base = s_params(4, CM_OPT_ADAGRAD, 1);
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
    cm_table_spec p = s_params(16, CM_OPT_SGD, 1234);
    ps_table *a = s_new(&p);
    ps_table *b = s_new(&p);
    cm_table_spec q = p;
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

    /* cm_table_spec_init_row is exactly what a pull of a fresh row returns. */
    float want[16];
    cm_table_spec_init_row(&p, 77, want);
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
    cm_table_spec p = s_params(10, CM_OPT_ADAGRAD, 9);
    p.zero_prefix = 2;
    float row[10];
    for (uint64_t key = 0; key < 50; key++) {
        cm_table_spec_init_row(&p, key, row);
        cr_assert_eq(row[0], 0.0f);
        cr_assert_eq(row[1], 0.0f);
        int nonzero = 0;
        for (int j = 2; j < 10; j++)
            nonzero += row[j] != 0.0f;
        cr_assert_eq(nonzero, 8, "key %llu", (unsigned long long)key);
    }
    p.zero_prefix = 10;
    cm_table_spec_init_row(&p, 3, row);
    for (int j = 0; j < 10; j++)
        cr_assert_eq(row[j], 0.0f);
    p.zero_prefix = 0;
    p.init_std = 0.0f;
    cm_table_spec_init_row(&p, 3, row);
    for (int j = 0; j < 10; j++)
        cr_assert_eq(row[j], 0.0f);
}

Test(table, init_is_a_scaled_normal_stream_of_seed_and_key)
{
    /* A row is the start of one normal stream of (seed, key) times
     * init_std, written after the zero prefix: the optimizer and the other
     * parameters do not change it, the first values do not depend on dim,
     * and doubling init_std doubles every value exactly. */
    cm_table_spec p = s_params(33, CM_OPT_SGD, 5);
    p.zero_prefix = 1;
    cm_table_spec q = s_params(33, CM_OPT_ADAGRAD, 5);
    q.zero_prefix = 1;
    q.optim.lr = 0.7f;
    q.min_count = 3;
    q.max_rows = 10;
    cm_table_spec wide = s_params(64, CM_OPT_SGD, 5);
    cm_table_spec twice = p;
    twice.init_std = 0.2f;
    for (uint64_t key = 0; key < 200; key++) {
        float a[33], b[33], w[64], t[33];
        cm_table_spec_init_row(&p, key, a);
        cm_table_spec_init_row(&q, key, b);
        cm_table_spec_init_row(&wide, key, w);
        cm_table_spec_init_row(&twice, key, t);
        cr_assert_arr_eq(a, b, sizeof a, "key %" PRIu64, key);
        cr_assert_eq(a[0], 0.0f);
        cr_assert_arr_eq(a + 1, w, 32 * sizeof(float), "key %" PRIu64, key);
        for (int j = 0; j < 33; j++)
            cr_assert_eq(t[j], 2.0f * a[j], "key %" PRIu64 " weight %d", key, j);
    }
}

Test(table, init_weights_are_normal_at_every_position)
{
    /* Over 20000 keys, each of the 32 positions of a dim-33 row with a zero
     * prefix of 1 is N(0, 0.1^2): mean within 5 standard errors
     * (0.1 / sqrt(n)), sd within 5 of its standard errors (about
     * 0.1 / sqrt(2n)); neighbouring keys' rows are uncorrelated (5 / sqrt(n)). */
    enum { KEYS = 20000, DIM = 33 };
    cm_table_spec p = s_params(DIM, CM_OPT_ADAGRAD, 77);
    p.zero_prefix = 1;
    static float rows[KEYS][DIM];
    for (uint64_t key = 0; key < KEYS; key++)
        cm_table_spec_init_row(&p, 1000 + key, rows[key]);
    const double n = KEYS, sd = 0.1;
    for (int j = 1; j < DIM; j++) {
        double sum = 0, sum2 = 0, cross = 0;
        for (int k = 0; k < KEYS; k++) {
            sum += rows[k][j];
            sum2 += (double)rows[k][j] * rows[k][j];
            cross += (double)rows[k][j] * rows[(k + 1) % KEYS][j];
        }
        double mean = sum / n, s = sqrt(sum2 / n - mean * mean);
        cr_assert_lt(fabs(mean), 5 * sd / sqrt(n), "position %d: mean %g", j, mean);
        cr_assert_lt(fabs(s - sd), 5 * sd / sqrt(2 * n), "position %d: sd %g", j, s);
        cr_assert_lt(fabs(cross / n) / (sd * sd), 5 / sqrt(n), "position %d: correlation %g", j,
                     cross / n / (sd * sd));
    }
}

Test(table, init_distribution)
{
    /* 20000 keys x 8 weights ~ N(0, 0.05^2): mean within 5 standard errors
     * (0.05 / sqrt(n)), sd within 5 of its standard errors (0.05 / sqrt(2n)). */
    cm_table_spec p = s_params(8, CM_OPT_SGD, 42);
    p.init_std = 0.05f;
    double sum = 0, sum2 = 0;
    size_t n = 0;
    float row[8];
    for (uint64_t key = 0; key < 20000; key++) {
        cm_table_spec_init_row(&p, key * 0x9e3779b97f4a7c15ULL, row);
        for (int j = 0; j < 8; j++) {
            sum += row[j];
            sum2 += (double)row[j] * row[j];
            n++;
        }
    }
    double mean = sum / n, sd = sqrt(sum2 / n - mean * mean);
    cr_assert_lt(fabs(mean), 0.05 * 5 / sqrt((double)n), "mean %g", mean);
    cr_assert_lt(fabs(sd - 0.05), 0.05 * 5 / sqrt(2.0 * n), "sd %g", sd);
}

/* ------------------------------------------------------------------------ */
/* Pull */

Test(table, pull_create_vs_no_create)
{
    cm_table_spec p = s_params(4, CM_OPT_ADAGRAD, 7);
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
    cm_table_spec_init_row(&p, 20, want);
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
    cm_table_spec p = s_params(3, CM_OPT_SGD, 1);
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
    cm_table_spec_init_row(&p, 9, w9);
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
    cm_table_spec p = s_params(2, CM_OPT_SGD, 1);
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
    cm_table_spec p = s_params(2, CM_OPT_ADAGRAD, 5);
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
    cm_table_spec p = s_params(dim, CM_OPT_ADAGRAD, 2024);
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
        cm_table_spec_init_row(&p, keys[i], want);
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
            cm_table_spec p = s_params(dim, kind, 3);
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
    cm_table_spec p = s_params(2, CM_OPT_SGD, 11);
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
    cm_table_spec p = s_params(dim, CM_OPT_SGD, 77);
    ps_table *t = s_new(&p);
    float *buf = malloc(dim * sizeof *buf), *want = malloc(dim * sizeof *want);
    cr_assert(buf && want);
    for (uint64_t k = 0; k < n; k++) {
        cr_assert_eq(ps_table_pull(t, &k, 1, buf, 1, NULL), 0);
        cr_assert_eq((uintptr_t)ps_table_find(t, k) % 64, 0);
    }
    for (uint64_t k = 0; k < n; k++) {
        cm_table_spec_init_row(&p, k, want);
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

/* ------------------------------------------------------------------------ */
/* Admission */

static ps_table_counters s_stats(const ps_table *t)
{
    ps_table_counters c;
    memset(&c, 0xab, sizeof c);
    ps_table_stats(t, &c);
    return c;
}

Test(table, defaults_keep_counters_quiet)
{
    /* min_count 0 and 1 both admit at once; no eviction: evict is a no-op
     * and the table holds exactly what a default table holds. */
    for (uint32_t mc = 0; mc <= 1; mc++) {
        cm_table_spec p = s_params(5, CM_OPT_ADAGRAD, 3), q = p;
        q.min_count = mc;
        ps_table *a = s_new(&p), *b = s_new(&q);
        uint64_t keys[300];
        float g[300 * 5];
        for (int i = 0; i < 300; i++) {
            keys[i] = (uint64_t)i * 7919;
            for (int j = 0; j < 5; j++)
                g[i * 5 + j] = (float)(i - j) * 0.01f;
        }
        cr_assert_eq(ps_table_push(a, keys, 300, g), 0);
        cr_assert_eq(ps_table_push(b, keys, 300, g), 0);
        ps_table_set_epoch(a, 100);
        cr_assert_eq(ps_table_evict(a), 0);
        cr_assert_eq(ps_table_rows(a), 300);
        cr_assert_eq(ps_table_bytes(a), ps_table_bytes(b));
        for (int i = 0; i < 300; i++)
            cr_assert_eq(memcmp(ps_table_find(a, keys[i]), ps_table_find(b, keys[i]),
                                (size_t)ps_table_row_floats(a) * sizeof(float)),
                         0);
        ps_table_counters c = s_stats(a);
        cr_assert_eq(c.rows, 300);
        cr_assert_eq(c.bytes, ps_table_bytes(a));
        cr_assert_eq(c.evicted, 0);
        cr_assert_eq(c.admitted, 300);
        cr_assert_eq(c.pending, 0);
        cr_assert_eq(c.dropped, 0);
        ps_table_destroy(&a);
        ps_table_destroy(&b);
    }
}

Test(table, admission_after_min_count_pushes)
{
    cm_table_spec p = s_params(3, CM_OPT_SGD, 11);
    p.optim.lr = 0.5f;
    p.min_count = 3;
    ps_table *t = s_new(&p);
    const uint64_t k = 77, other = 78;
    const float g[3] = {1.0f, -2.0f, 0.5f};
    float out[3];
    size_t missing = 0;

    /* Pulls read zeros, make nothing and are not sightings. */
    for (int i = 0; i < 5; i++) {
        memset(out, 0xff, sizeof out);
        cr_assert_eq(ps_table_pull(t, &k, 1, out, 1, &missing), 0);
        cr_assert_eq(missing, 1);
        for (int j = 0; j < 3; j++)
            cr_assert_eq(out[j], 0.0f);
    }
    cr_assert_eq(ps_table_rows(t), 0);
    cr_assert_eq(s_stats(t).pending, 0);

    /* Pushes 1 and 2: dropped. */
    for (int i = 1; i <= 2; i++) {
        cr_assert_eq(ps_table_push(t, &k, 1, g), 0);
        cr_assert_null(ps_table_find(t, k));
        ps_table_counters c = s_stats(t);
        cr_assert_eq(c.rows, 0);
        cr_assert_eq(c.pending, 1);
        cr_assert_eq(c.dropped, (uint64_t)i);
        cr_assert_eq(c.admitted, 0);
    }
    cr_assert_eq(ps_table_pull(t, &k, 1, out, 1, &missing), 0);
    cr_assert_eq(out[0], 0.0f);

    /* Another key's pushes count apart. */
    cr_assert_eq(ps_table_push(t, &other, 1, g), 0);
    cr_assert_eq(s_stats(t).pending, 2);

    /* Push 3: the row is made with the standard initialisation and this
     * gradient is applied. */
    cr_assert_eq(ps_table_push(t, &k, 1, g), 0);
    float init[3];
    cm_table_spec_init_row(&p, k, init);
    const float *row = ps_table_find(t, k);
    cr_assert_not_null(row);
    for (int j = 0; j < 3; j++)
        cr_assert_eq(row[j], init[j] - 0.5f * g[j]);
    ps_table_counters c = s_stats(t);
    cr_assert_eq(c.rows, 1);
    cr_assert_eq(c.admitted, 1);
    cr_assert_eq(c.pending, 1);   /* `other` only */
    cr_assert_eq(c.dropped, 3);

    /* From now on it is an ordinary row. */
    cr_assert_eq(ps_table_push(t, &k, 1, g), 0);
    cr_assert_eq(ps_table_pull(t, &k, 1, out, 0, &missing), 0);
    cr_assert_eq(missing, 0);
    for (int j = 0; j < 3; j++)
        cr_assert_eq(out[j], init[j] - 0.5f * g[j] - 0.5f * g[j]);
    cr_assert_eq(s_stats(t).dropped, 3);
    ps_table_destroy(&t);
}

Test(table, admission_counts_each_key_of_a_push)
{
    /* min_count 2: in a push of several keys, each key counts for itself. */
    cm_table_spec p = s_params(2, CM_OPT_ADAGRAD, 12);
    p.min_count = 2;
    ps_table *t = s_new(&p);
    const uint64_t a[3] = {1, 2, 3}, b[2] = {2, 3}, c[1] = {1};
    float g[6] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
    cr_assert_eq(ps_table_push(t, a, 3, g), 0);
    cr_assert_eq(ps_table_rows(t), 0);
    cr_assert_eq(ps_table_push(t, b, 2, g), 0);
    cr_assert_eq(ps_table_rows(t), 2);
    cr_assert_null(ps_table_find(t, 1));
    cr_assert_not_null(ps_table_find(t, 2));
    /* AdaGrad from the fresh state: a = 0.1 + g^2 */
    const float *r2 = ps_table_find(t, 2);
    cr_assert_float_eq(r2[2], 0.1f + 0.01f, 1e-7);
    cr_assert_float_eq(r2[3], 0.1f + 0.04f, 1e-7);
    cr_assert_eq(ps_table_push(t, c, 1, g), 0);
    cr_assert_eq(ps_table_rows(t), 3);
    ps_table_counters s = s_stats(t);
    cr_assert_eq(s.dropped, 3);
    cr_assert_eq(s.pending, 0);
    cr_assert_eq(s.admitted, 3);
    ps_table_destroy(&t);
}

Test(table, admission_full_rows_and_loads)
{
    cm_table_spec p = s_params(2, CM_OPT_ADAGRAD, 13);
    p.min_count = 2;
    ps_table *t = s_new(&p);
    const int rf = ps_table_row_floats(t);
    cr_assert_eq(rf, 4);
    const uint64_t k = 5;

    /* A full-row pull of a key not admitted: zero weights, fresh state. */
    float out[4];
    cr_assert_eq(ps_table_pull_full(t, &k, 1, out), 0);
    cr_assert_eq(out[0], 0.0f);
    cr_assert_eq(out[1], 0.0f);
    cr_assert_eq(out[2], 0.1f);
    cr_assert_eq(out[3], 0.1f);
    cr_assert_eq(ps_table_rows(t), 0);

    /* Deltas count like pushes: the first is dropped, the second makes
     * the row (standard init) and is added. */
    const float d[4] = {0.5f, -0.5f, 1.0f, 2.0f};
    cr_assert_eq(ps_table_push_delta(t, &k, 1, d), 0);
    cr_assert_eq(ps_table_rows(t), 0);
    cr_assert_eq(s_stats(t).dropped, 1);
    cr_assert_eq(ps_table_push_delta(t, &k, 1, d), 0);
    float init[2];
    cm_table_spec_init_row(&p, k, init);
    const float *row = ps_table_find(t, k);
    cr_assert_not_null(row);
    cr_assert_eq(row[0], init[0] + 0.5f);
    cr_assert_eq(row[1], init[1] - 0.5f);
    cr_assert_eq(row[2], 0.1f + 1.0f);
    cr_assert_eq(row[3], 0.1f + 2.0f);

    /* A checkpoint load is admitted whatever the count, and clears it. */
    const uint64_t k2 = 6;
    cr_assert_eq(ps_table_push(t, &k2, 1, d), 0);
    cr_assert_eq(s_stats(t).pending, 1);
    const float stored[4] = {1, 2, 3, 4};
    cr_assert_eq(ps_table_load_row(t, k2, stored), 0);
    cr_assert_eq(memcmp(ps_table_find(t, k2), stored, sizeof stored), 0);
    cr_assert_eq(s_stats(t).pending, 0);
    const uint64_t k3 = 7;
    cr_assert_eq(ps_table_load_row(t, k3, stored), 0);
    cr_assert_eq(ps_table_rows(t), 3);
    ps_table_destroy(&t);
}

Test(table, admission_counters_are_bounded)
{
    /* max_pending 4: the fifth new key clears the counters first. */
    cm_table_spec p = s_params(1, CM_OPT_SGD, 14);
    p.min_count = 3;
    p.max_pending = 4;
    ps_table *t = s_new(&p);
    const float g[1] = {1.0f};
    for (uint64_t k = 1; k <= 4; k++)
        cr_assert_eq(ps_table_push(t, &k, 1, g), 0);
    const uint64_t k1 = 1;
    cr_assert_eq(ps_table_push(t, &k1, 1, g), 0);   /* key 1 seen twice */
    cr_assert_eq(s_stats(t).pending, 4);
    const uint64_t k5 = 5;
    cr_assert_eq(ps_table_push(t, &k5, 1, g), 0);
    cr_assert_eq(s_stats(t).pending, 1);
    /* Key 1 starts over: two more pushes are not enough. */
    cr_assert_eq(ps_table_push(t, &k1, 1, g), 0);
    cr_assert_eq(ps_table_push(t, &k1, 1, g), 0);
    cr_assert_null(ps_table_find(t, 1));
    cr_assert_eq(ps_table_push(t, &k1, 1, g), 0);
    cr_assert_not_null(ps_table_find(t, 1));

    /* Many rare keys never hold more than max_pending counters. */
    for (uint64_t k = 100; k < 10000; k++) {
        cr_assert_eq(ps_table_push(t, &k, 1, g), 0);
        cr_assert_leq(s_stats(t).pending, 4);
    }
    cr_assert_eq(ps_table_rows(t), 1);
    ps_table_destroy(&t);
}

/* ------------------------------------------------------------------------ */
/* Eviction */

static void s_touch_keys(ps_table *t, const uint64_t *keys, size_t n)
{
    float out[64 * 8];
    cr_assert_leq(n * (size_t)ps_table_dim(t), sizeof out / sizeof out[0]);
    cr_assert_eq(ps_table_pull(t, keys, n, out, 1, NULL), 0);
}

Test(table, evict_by_ttl)
{
    cm_table_spec p = s_params(2, CM_OPT_ADAGRAD, 21);
    p.ttl = 2;
    ps_table *t = s_new(&p);
    const uint64_t a = 1, b = 2, c = 3, all[3] = {1, 2, 3};
    ps_table_set_epoch(t, 0);
    s_touch_keys(t, all, 3);
    cr_assert_eq(ps_table_evict(t), 0);
    ps_table_set_epoch(t, 1);
    s_touch_keys(t, &a, 1);
    cr_assert_eq(ps_table_evict(t), 0);
    ps_table_set_epoch(t, 2);
    /* Reads without create count as touches too. */
    float out[2];
    cr_assert_eq(ps_table_pull(t, &b, 1, out, 0, NULL), 0);
    cr_assert_eq(ps_table_evict(t), 0);   /* c: 0 + 2 < 2 is false */

    ps_table_set_epoch(t, 3);
    cr_assert_eq(ps_table_evict(t), 1);   /* c: untouched in epochs 1 and 2 */
    cr_assert_null(ps_table_find(t, c));
    cr_assert_not_null(ps_table_find(t, a));
    cr_assert_not_null(ps_table_find(t, b));
    cr_assert_eq(ps_table_rows(t), 2);
    cr_assert_eq(ps_table_evict(t), 0);   /* idempotent within an epoch */

    ps_table_set_epoch(t, 4);
    cr_assert_eq(ps_table_evict(t), 1);   /* a */
    cr_assert_null(ps_table_find(t, a));
    cr_assert_not_null(ps_table_find(t, b));
    ps_table_counters s = s_stats(t);
    cr_assert_eq(s.rows, 1);
    cr_assert_eq(s.evicted, 2);
    cr_assert_eq(s.admitted, 3);

    /* An evicted key comes back as a fresh row with the standard init. */
    float w[2], init[2];
    cr_assert_eq(ps_table_pull(t, &c, 1, w, 1, NULL), 0);
    cm_table_spec_init_row(&p, c, init);
    cr_assert_eq(memcmp(w, init, sizeof w), 0);
    cr_assert_eq(ps_table_find(t, c)[2], 0.1f);   /* fresh AdaGrad state too */
    cr_assert_eq(s_stats(t).admitted, 4);

    /* An epoch going backwards (a resume) evicts nothing. */
    ps_table_set_epoch(t, 0);
    cr_assert_eq(ps_table_evict(t), 0);
    ps_table_destroy(&t);
}

Test(table, evict_lru_beyond_max_rows)
{
    cm_table_spec p = s_params(2, CM_OPT_SGD, 22);
    p.max_rows = 3;
    ps_table *t = s_new(&p);
    const float g[2] = {1.0f, 1.0f};
    for (uint64_t k = 1; k <= 3; k++)
        cr_assert_eq(ps_table_push(t, &k, 1, g), 0);
    cr_assert_eq(ps_table_rows(t), 3);

    /* Touch 1: now 2 is the least recently used, and goes for 4. */
    const uint64_t k1 = 1, k3 = 3, k4 = 4, k5 = 5;
    s_touch_keys(t, &k1, 1);
    cr_assert_eq(ps_table_push(t, &k4, 1, g), 0);
    cr_assert_eq(ps_table_rows(t), 3);
    cr_assert_null(ps_table_find(t, 2));
    cr_assert_not_null(ps_table_find(t, 1));
    cr_assert_not_null(ps_table_find(t, 3));
    cr_assert_not_null(ps_table_find(t, 4));

    /* Touch 3 (by a push): 1 is now the oldest, and goes for 5. */
    cr_assert_eq(ps_table_push(t, &k3, 1, g), 0);
    cr_assert_eq(ps_table_pull(t, &k5, 1, (float[2]){0}, 1, NULL), 0);
    cr_assert_null(ps_table_find(t, 1));
    cr_assert_not_null(ps_table_find(t, 3));
    cr_assert_not_null(ps_table_find(t, 4));
    cr_assert_not_null(ps_table_find(t, 5));

    /* The survivors kept their values: 3 had two steps. */
    float init[2];
    cm_table_spec_init_row(&p, 3, init);
    cr_assert_float_eq(ps_table_find(t, 3)[0], init[0] - 0.2f, TOL);

    ps_table_counters s = s_stats(t);
    cr_assert_eq(s.rows, 3);
    cr_assert_eq(s.evicted, 2);
    cr_assert_eq(s.admitted, 5);
    cr_assert_eq(ps_table_evict(t), 0);   /* at max_rows, not beyond */

    /* One push of more keys than max_rows: the later ones stay, and each
     * gradient went to its own row. */
    uint64_t many[10];
    float gm[20];
    for (int i = 0; i < 10; i++) {
        many[i] = 100 + (uint64_t)i;
        gm[2 * i] = gm[2 * i + 1] = (float)i;
    }
    cr_assert_eq(ps_table_push(t, many, 10, gm), 0);
    cr_assert_eq(ps_table_rows(t), 3);
    for (int i = 7; i < 10; i++) {
        const float *r = ps_table_find(t, many[i]);
        cr_assert_not_null(r);
        cm_table_spec_init_row(&p, many[i], init);
        cr_assert_float_eq(r[0], init[0] - 0.1f * (float)i, TOL);
    }
    ps_table_destroy(&t);
}

Test(table, evict_reuses_slots)
{
    cm_table_spec p = s_params(4, CM_OPT_ADAM, 23);
    p.optim = cm_optim_default(CM_OPT_ADAM, 0.01f);
    p.ttl = 1;
    ps_table *t = s_new(&p);
    uint64_t keys[200];
    for (int i = 0; i < 200; i++)
        keys[i] = (uint64_t)i * 1000003u;
    ps_table_set_epoch(t, 0);
    for (int i = 0; i < 200; i += 50)
        s_touch_keys(t, keys + i, 50);
    size_t bytes = ps_table_bytes(t);
    const float *old_rows[200];
    for (int i = 0; i < 200; i++)
        old_rows[i] = ps_table_find(t, keys[i]);

    ps_table_set_epoch(t, 2);
    cr_assert_eq(ps_table_evict(t), 200);
    cr_assert_eq(ps_table_rows(t), 0);
    size_t pos = 0;
    cr_assert_eq(ps_table_next(t, &pos, NULL, NULL), 0);

    /* 200 new keys fit in the freed slots: no growth, same addresses. */
    for (int i = 0; i < 200; i += 50) {
        uint64_t fresh[50];
        for (int j = 0; j < 50; j++)
            fresh[j] = keys[i + j] + 1;
        s_touch_keys(t, fresh, 50);
    }
    cr_assert_eq(ps_table_rows(t), 200);
    cr_assert_eq(ps_table_bytes(t), bytes);
    for (int i = 0; i < 200; i++) {
        const float *r = ps_table_find(t, keys[i] + 1);
        int found = 0;
        for (int j = 0; j < 200 && !found; j++)
            found = r == old_rows[j];
        cr_assert(found, "row %d not in a reused slot", i);
        /* a reused slot is a fresh row: initial weights, Adam state 0 */
        float init[4];
        cm_table_spec_init_row(&p, keys[i] + 1, init);
        cr_assert_eq(memcmp(r, init, sizeof init), 0);
        for (int j = 4; j < ps_table_row_floats(t); j++)
            cr_assert_eq(r[j], 0.0f);
    }
    ps_table_destroy(&t);
}

Test(table, iteration_after_eviction)
{
    cm_table_spec p = s_params(3, CM_OPT_FTRL, 24);
    p.optim = cm_optim_default(CM_OPT_FTRL, 0.1f);
    p.ttl = 1;
    ps_table *t = s_new(&p);
    ps_table_set_epoch(t, 1);
    uint64_t even[32], odd[32];
    for (int i = 0; i < 32; i++) {
        even[i] = 2 * (uint64_t)i;
        odd[i] = 2 * (uint64_t)i + 1;
    }
    s_touch_keys(t, even, 32);
    s_touch_keys(t, odd, 16);
    s_touch_keys(t, odd + 16, 16);
    ps_table_set_epoch(t, 2);
    s_touch_keys(t, odd, 16);
    s_touch_keys(t, odd + 16, 16);
    ps_table_set_epoch(t, 3);
    cr_assert_eq(ps_table_evict(t), 32);

    size_t pos = 0, n = 0;
    uint64_t key;
    const float *row;
    int seen[64] = {0};
    while (ps_table_next(t, &pos, &key, &row)) {
        cr_assert_lt(key, 64);
        cr_assert_eq(key % 2, 1, "even key %" PRIu64 " survived", key);
        cr_assert_eq(row, ps_table_find(t, key));
        cr_assert_eq(seen[key]++, 0);
        n++;
    }
    cr_assert_eq(n, 32);
    cr_assert_eq(n, ps_table_rows(t));
    ps_table_destroy(&t);
}

Test(table, sampled_lru_keeps_the_hot_rows)
{
    /* Well above the exact-scan size: 100 hot keys touched every round
     * with a stream of cold keys never seen again. */
    cm_table_spec p = s_params(2, CM_OPT_SGD, 25);
    p.max_rows = 1000;
    ps_table *t = s_new(&p);
    uint64_t hot[100];
    for (int i = 0; i < 100; i++)
        hot[i] = 1000000 + (uint64_t)i;
    float out[100 * 2];
    uint64_t cold = 0;
    for (int round = 0; round < 200; round++) {
        cr_assert_eq(ps_table_pull(t, hot, 100, out, 1, NULL), 0);
        uint64_t batch[50];
        for (int i = 0; i < 50; i++)
            batch[i] = cold++;
        cr_assert_eq(ps_table_pull(t, batch, 50, out, 1, NULL), 0);
        cr_assert_leq(ps_table_rows(t), 1000);
    }
    cr_assert_eq(ps_table_rows(t), 1000);
    for (int i = 0; i < 100; i++)
        cr_assert_not_null(ps_table_find(t, hot[i]), "hot key %d evicted", i);
    ps_table_counters s = s_stats(t);
    cr_assert_eq(s.evicted, 100 + 200 * 50 - 1000);
    cr_assert_eq(s.admitted, s.rows + s.evicted);
    /* Slab: at most one chunk beyond what 1000 rows need. */
    cm_table_spec q = p;
    q.max_rows = 0;
    ps_table *u = s_new(&q);
    for (uint64_t k = 0; k < 1000; k++)
        cr_assert_eq(ps_table_pull(u, &k, 1, out, 1, NULL), 0);
    cr_assert_lt(ps_table_bytes(t), 3 * ps_table_bytes(u));
    ps_table_destroy(&u);
    ps_table_destroy(&t);
}

Test(table, admission_and_eviction_together)
{
    /* An evicted key starts over: min_count pushes again. */
    cm_table_spec p = s_params(1, CM_OPT_SGD, 26);
    p.min_count = 2;
    p.ttl = 1;
    ps_table *t = s_new(&p);
    const uint64_t k = 9;
    const float g[1] = {1.0f};
    ps_table_set_epoch(t, 0);
    cr_assert_eq(ps_table_push(t, &k, 1, g), 0);
    cr_assert_eq(ps_table_push(t, &k, 1, g), 0);
    cr_assert_not_null(ps_table_find(t, k));
    ps_table_set_epoch(t, 5);
    cr_assert_eq(ps_table_evict(t), 1);
    cr_assert_eq(ps_table_push(t, &k, 1, g), 0);
    cr_assert_null(ps_table_find(t, k));
    cr_assert_eq(ps_table_push(t, &k, 1, g), 0);
    cr_assert_not_null(ps_table_find(t, k));
    ps_table_counters s = s_stats(t);
    cr_assert_eq(s.admitted, 2);
    cr_assert_eq(s.evicted, 1);
    cr_assert_eq(s.dropped, 2);
    /* The bookkeeping is counted in the bytes. */
    cm_table_spec q = s_params(1, CM_OPT_SGD, 26);
    ps_table *u = s_new(&q);
    cr_assert_eq(ps_table_push(u, &k, 1, g), 0);
    cr_assert_gt(ps_table_bytes(t), ps_table_bytes(u));
    ps_table_destroy(&u);
    ps_table_destroy(&t);
}

/* ------------------------------------------------------------------------ */
/* Adam and FTRL tables */

Test(table, adam_and_ftrl_rows)
{
    /* Adam: each row counts its own steps (lazy). */
    cm_table_spec p = s_params(2, CM_OPT_ADAM, 31);
    p.optim = cm_optim_default(CM_OPT_ADAM, 0.01f);
    ps_table *t = s_new(&p);
    cr_assert_eq(ps_table_row_floats(t), 7);
    const uint64_t a = 1, b = 2;
    const float g[2] = {1.0f, -1.0f};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ps_table_push(t, &a, 1, g), 0);
    cr_assert_eq(ps_table_push(t, &b, 1, g), 0);
    cr_assert_eq(ps_table_find(t, a)[6], 3.0f);
    cr_assert_eq(ps_table_find(t, b)[6], 1.0f);
    float init[2];
    cm_table_spec_init_row(&p, b, init);
    cr_assert_float_eq(ps_table_find(t, b)[0], init[0] - 0.01f, 1e-7);
    cr_assert_float_eq(ps_table_find(t, b)[1], init[1] + 0.01f, 1e-7);
    ps_table_destroy(&t);

    /* FTRL: a fresh row reads its standard initial weights, and a zero
     * gradient leaves them exactly. */
    p = s_params(3, CM_OPT_FTRL, 32);
    p.optim = cm_optim_default(CM_OPT_FTRL, 0.1f);
    p.optim.l1 = 0.01f;
    t = s_new(&p);
    cr_assert_eq(ps_table_row_floats(t), 9);
    float w[3], want[3];
    const uint64_t k = 42;
    cr_assert_eq(ps_table_pull(t, &k, 1, w, 1, NULL), 0);
    cm_table_spec_init_row(&p, k, want);
    cr_assert_eq(memcmp(w, want, sizeof w), 0);
    const float zero[3] = {0};
    cr_assert_eq(ps_table_push(t, &k, 1, zero), 0);
    cr_assert_eq(memcmp(ps_table_find(t, k), want, sizeof want), 0);
    const float g3[3] = {0.5f, 0.0f, -0.5f};
    cr_assert_eq(ps_table_push(t, &k, 1, g3), 0);
    const float *r = ps_table_find(t, k);
    cr_assert_lt(r[0], want[0]);
    cr_assert_eq(r[1], want[1]);
    cr_assert_gt(r[2], want[2]);
    ps_table_destroy(&t);

    /* Bad optimizer parameters are refused by the table too. */
    p.optim.beta = 0.0f;
    cm_error e = {0};
    cr_assert_null(ps_table_new(&p, &e));
    cr_assert_eq(e.code, CM_EINVAL);
}

Test(table, push_rows_sets_whole_rows)
{
    cm_table_spec p = s_params(2, CM_OPT_ADAGRAD, 13);
    ps_table *t = s_new(&p);
    cr_assert_eq(ps_table_row_floats(t), 4);
    /* a new row is the row sent, not the initialisation plus anything */
    const uint64_t keys[3] = {7, 9, 11};
    const float rows[12] = {1, 2, 3, 4, -1, -2, 0.5f, 0.25f, 8, 7, 6, 5};
    cr_assert_eq(ps_table_push_rows(t, keys, 2, rows), 0);
    cr_assert_eq(ps_table_rows(t), 2);
    cr_assert_eq(memcmp(ps_table_find(t, 7), rows, 4 * sizeof(float)), 0);
    cr_assert_eq(memcmp(ps_table_find(t, 9), rows + 4, 4 * sizeof(float)), 0);
    /* an existing row is replaced; a missing one made beside it */
    const float again[8] = {10, 20, 30, 40, 50, 60, 70, 80};
    const uint64_t k2[2] = {9, 11};
    cr_assert_eq(ps_table_push_rows(t, k2, 2, again), 0);
    cr_assert_eq(ps_table_rows(t), 3);
    cr_assert_eq(memcmp(ps_table_find(t, 7), rows, 4 * sizeof(float)), 0);
    cr_assert_eq(memcmp(ps_table_find(t, 9), again, 4 * sizeof(float)), 0);
    cr_assert_eq(memcmp(ps_table_find(t, 11), again + 4, 4 * sizeof(float)), 0);
    ps_table_destroy(&t);
}

/* A shared table's rows are reachable through its file as another process
 * on the host would open it (/proc/<pid>/fd/<fd>): the header carries the
 * magic and token, row i sits at header + i * stride floats across every
 * chunk, writes through the file are the table's rows, places are stable
 * and placing again makes nothing. */
Test(table, shared_rows_through_the_file)
{
    cm_table_spec p = s_params(5, CM_OPT_ADAGRAD, 21);
    p.shared = 1;
    ps_table *t = s_new(&p);
    enum { N = 3000 }; /* past several chunks: 64, 128, 256, ... rows */
    uint64_t *keys = malloc(N * sizeof *keys), *idx = malloc(N * sizeof *idx);
    uint64_t *again = malloc(N * sizeof *again);
    cr_assert(keys && idx && again);
    for (size_t i = 0; i < N; i++)
        keys[i] = 1000003 * i + 17;
    cr_assert_eq(ps_table_place(t, keys, N, 1, idx), 0);
    cr_assert_eq(ps_table_rows(t), N);
    ps_table_share_info sh;
    cr_assert_eq(ps_table_share(t, &sh), 0);
    cr_expect_geq(sh.stride, (size_t)ps_table_row_floats(t));
    cr_expect_eq(sh.header % 4096, 0);
    cr_expect_neq(sh.token, 0);
    cr_expect_geq(sh.bytes, sh.header + N * sh.stride * sizeof(float), "every row in the file");
    cr_expect_eq(sh.bytes % 4096, 0, "whole pages");

    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)getpid(), sh.fd);
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "open %s", path);
    char *base = mmap(NULL, sh.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    cr_assert_neq(base, MAP_FAILED);
    uint64_t head[2];
    memcpy(head, base, sizeof head);
    cr_expect_eq(head[0], CM_SHARE_MAGIC);
    cr_expect_eq(head[1], sh.token);
    const size_t rf = (size_t)ps_table_row_floats(t);
    char *seen = calloc(N, 1);
    cr_assert_not_null(seen);
    for (size_t i = 0; i < N; i++) {
        cr_assert_lt(idx[i], N);
        cr_expect_eq(seen[idx[i]], 0, "row %llu placed once", (unsigned long long)idx[i]);
        seen[idx[i]] = 1;
        float *row = (float *)(base + sh.header + idx[i] * sh.stride * sizeof(float));
        cr_assert_eq(memcmp(row, ps_table_find(t, keys[i]), rf * sizeof(float)), 0,
                     "key %zu: the file holds the table's row", i);
        row[0] = (float)i; /* written from "outside" */
    }
    float *full = malloc(N * rf * sizeof *full);
    cr_assert_not_null(full);
    cr_assert_eq(ps_table_pull_full(t, keys, N, full), 0);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(full[i * rf], (float)i, "key %zu: the write is the table's", i);
    cr_assert_eq(ps_table_place(t, keys, N, 1, again), 0);
    cr_expect_arr_eq(again, idx, N * sizeof *idx, "places are stable");
    cr_expect_eq(ps_table_rows(t), N, "placing again makes no rows");
    /* without create: the same places for rows that exist, UINT64_MAX
     * (and no row made) for keys that have none */
    for (size_t i = 0; i < N; i += 2)
        keys[i] += 1; /* every other key now has no row */
    cr_assert_eq(ps_table_place(t, keys, N, 0, again), 0);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(again[i], i % 2 ? idx[i] : UINT64_MAX, "key %zu", i);
    cr_expect_eq(ps_table_rows(t), N, "a place without create makes no rows");
    munmap(base, sh.bytes);
    free(full);
    free(seen);
    free(keys);
    free(idx);
    free(again);
    ps_table_destroy(&t);
}

/* Tables keep private rows unless asked, and with eviction even when
 * asked (a slot's row may change key under a reader). */
Test(table, private_rows_cannot_be_placed)
{
    cm_table_spec p = s_params(4, CM_OPT_SGD, 3);
    ps_table *t = s_new(&p);
    ps_table_share_info sh;
    uint64_t key = 7, idx;
    cr_expect_eq(ps_table_share(t, &sh), CM_ENOTSUP);
    cr_expect_eq(ps_table_place(t, &key, 1, 1, &idx), CM_ENOTSUP);
    cr_expect_eq(ps_table_rows(t), 0, "a refused place makes no row");
    ps_table_destroy(&t);
    p.shared = 1;
    p.max_rows = 100;
    t = s_new(&p);
    cr_expect_eq(ps_table_share(t, &sh), CM_ENOTSUP);
    cr_expect_eq(ps_table_place(t, &key, 1, 1, &idx), CM_ENOTSUP);
    ps_table_destroy(&t);
}

/* A key of the slot map's server `want`, from `from` on (table 3). */
static uint64_t s_key_in(const uint32_t *map, uint32_t n, uint32_t want, uint64_t from)
{
    for (uint64_t k = from;; k++)
        if (map[cm_slot_of(k, 3, n)] == want)
            return k;
}

/* Confinement: a key of another server's slot gets no row and reads as no
 * row through every way in (fast path, admission's slow path, whole rows,
 * deltas, set rows, places), each refused with CM_EPERM;
 * keys of the own slots work as before, and rows the table already holds
 * are not asked about. */
Test(table, confinement_refuses_keys_of_other_slots)
{
    const uint32_t map[8] = {0, 1, 1, 0, 1, 0, 0, 1};
    for (int kind = 0; kind < 3; kind++) { /* fast, admission (slow), shared */
        cm_table_spec p = s_params(4, CM_OPT_SGD, 5);
        p.min_count = kind == 1 ? 2 : 0;
        p.shared = kind == 2;
        ps_table *t = s_new(&p);
        const uint64_t mine = s_key_in(map, 8, 0, 1000), theirs = s_key_in(map, 8, 1, 1000);
        float out[2 * 16], g[2 * 16];
        for (int i = 0; i < 2 * 16; i++)
            g[i] = 0.25f;
        size_t missing = 0;
        /* before confinement any key goes (two pushes: admitted) */
        const uint64_t early = s_key_in(map, 8, 1, theirs + 1);
        for (int i = 0; i < 2; i++)
            cr_assert_eq(ps_table_push(t, &early, 1, g), 0);
        cr_assert_not_null(ps_table_find(t, early));
        ps_table_confine(t, map, 8, 3, 0);
        const size_t rows = ps_table_rows(t);
        cr_expect_eq(ps_table_pull(t, &early, 1, out, 1, &missing), 0, "a row it holds");
        cr_expect_eq(ps_table_pull(t, &mine, 1, out, 1, &missing), 0);
        cr_expect_eq(ps_table_push(t, &mine, 1, g), 0);
        const size_t with_mine = ps_table_rows(t);
        cr_expect_eq(with_mine, rows + (kind == 1 ? 0 : 1), "kind %d", kind);
        const uint64_t two[2] = {mine, theirs};
        int rc[7];
        rc[0] = ps_table_pull(t, two, 2, out, 1, &missing);
        rc[1] = ps_table_pull(t, two, 2, out, 0, &missing);
        rc[2] = ps_table_push(t, &theirs, 1, g);
        rc[3] = ps_table_pull_full(t, &theirs, 1, out);
        rc[4] = ps_table_push_delta(t, &theirs, 1, g);
        rc[5] = ps_table_push_rows(t, &theirs, 1, g);
        uint64_t idx[2];
        rc[6] = kind == 2 ? ps_table_place(t, two, 2, 0, idx) : CM_EPERM;
        for (int i = 0; i < 7; i++)
            cr_expect_eq(rc[i], CM_EPERM, "kind %d, way %d: %d", kind, i, rc[i]);
        if (kind == 2)
            cr_expect_eq(ps_table_place(t, two, 2, 1, idx), CM_EPERM);
        cr_expect_null(ps_table_find(t, theirs), "kind %d: no row of another server", kind);
        cr_expect_eq(ps_table_rows(t), with_mine);
        /* off again: the key gets its row */
        ps_table_confine(t, NULL, 0, 3, 0);
        cr_expect_eq(ps_table_pull(t, &theirs, 1, out, 1, &missing), 0);
        ps_table_destroy(&t);
    }
}
