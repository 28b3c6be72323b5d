/* test_carve: the validation carve (common/dataset.h cm_carve_*,
 * cm_ratings_carve). The same examples are held out whatever the number of
 * workers and however the rows are spread over them; held-out rows are
 * never among the kept ones; the share held out is the fraction asked
 * for, within a binomial tolerance; the seed changes which ones. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dataset.h"
#include "helpers.h"

/* n distinct (user, item) pairs with ratings that name their row. */
static void s_make(cm_ratings *r, size_t n)
{
    uint64_t *u = malloc(n * sizeof *u), *i = malloc(n * sizeof *i);
    float *y = malloc(n * sizeof *y);
    cr_assert(u && i && y);
    for (size_t k = 0; k < n; k++) {
        u[k] = k / 97;
        i[k] = (k * 7919) % 100003;
        y[k] = (float)k;
    }
    cm_error err = {0};
    cr_assert_eq(cm_ratings_adopt(u, i, y, n, r, &err), 0, "%s", err.msg);
}

/* Marks in `seen` (n bytes) the rows of r by the row number its rating holds;
 * fails on a row seen twice. */
static void s_mark(const cm_ratings *r, unsigned char *seen, size_t n, unsigned char tag)
{
    for (size_t k = 0; k < r->n; k++) {
        size_t row = (size_t)r->rating[k];
        cr_assert_lt(row, n);
        cr_assert_eq(seen[row], 0, "row %zu is in two outputs", row);
        seen[row] = tag;
    }
}

Test(carve, kept_and_held_out_are_disjoint_and_complete)
{
    const size_t n = 50000;
    cm_ratings all, tr, va;
    s_make(&all, n);
    cm_error err = {0};
    cr_assert_eq(cm_ratings_carve(&all, 0.05, 1, &tr, &va, &err), 0, "%s", err.msg);
    cr_expect_eq(tr.n + va.n, n);
    unsigned char *seen = calloc(n, 1);
    s_mark(&tr, seen, n, 1);
    s_mark(&va, seen, n, 2);
    for (size_t k = 0; k < n; k++) {
        cr_assert_neq(seen[k], 0, "row %zu lost", k);
        /* each row's fate is the pair's hash, as cm_carve_pair says */
        cr_assert_eq(seen[k] == 2, cm_carve_pair(all.user[k], all.item[k], 1, 0.05));
    }
    free(seen);
    cm_ratings_free(&tr);
    cm_ratings_free(&va);
    cm_ratings_free(&all);
}

Test(carve, deterministic)
{
    cm_ratings all, a1, v1, a2, v2;
    s_make(&all, 20000);
    cm_error err = {0};
    cr_assert_eq(cm_ratings_carve(&all, 0.1, 42, &a1, &v1, &err), 0);
    cr_assert_eq(cm_ratings_carve(&all, 0.1, 42, &a2, &v2, &err), 0);
    cr_assert_eq(v1.n, v2.n);
    cr_expect_eq(memcmp(v1.rating, v2.rating, v1.n * sizeof(float)), 0);
    cr_expect_eq(memcmp(a1.rating, a2.rating, a1.n * sizeof(float)), 0);
    /* another seed holds out other rows */
    cm_ratings a3, v3;
    cr_assert_eq(cm_ratings_carve(&all, 0.1, 43, &a3, &v3, &err), 0);
    cr_expect(v3.n != v1.n || memcmp(v1.rating, v3.rating, v1.n * sizeof(float)) != 0,
              "seed 43 held out the same rows as seed 42");
    cm_ratings *all_[] = {&a1, &v1, &a2, &v2, &a3, &v3, &all};
    for (size_t k = 0; k < sizeof all_ / sizeof all_[0]; k++)
        cm_ratings_free(all_[k]);
}

/* Rows dealt to k workers (by a stride and by user, as the two loaders
 * do), each shard carved on its own: the held-out rows over all workers are
 * the whole file's, for every k. */
Test(carve, independent_of_worker_count)
{
    const size_t n = 30000;
    cm_ratings all, tr, va;
    s_make(&all, n);
    cm_error err = {0};
    cr_assert_eq(cm_ratings_carve(&all, 0.05, 7, &tr, &va, &err), 0);
    unsigned char *want = calloc(n, 1), *got = calloc(n, 1);
    s_mark(&va, want, n, 1);
    const size_t ks[] = {1, 2, 3, 4, 7};
    for (int by_user = 0; by_user < 2; by_user++)
        for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++) {
            memset(got, 0, n);
            for (size_t w = 0; w < ks[t]; w++) {
                size_t m = 0;
                uint64_t *u = malloc(n * sizeof *u), *i = malloc(n * sizeof *i);
                float *y = malloc(n * sizeof *y);
                for (size_t r = 0; r < n; r++) {
                    size_t owner = by_user ? (size_t)(all.user[r] * 2654435761u) % ks[t]
                                           : r % ks[t];
                    if (owner != w)
                        continue;
                    u[m] = all.user[r];
                    i[m] = all.item[r];
                    y[m++] = all.rating[r];
                }
                cm_ratings shard, st, sv;
                cr_assert_eq(cm_ratings_adopt(u, i, y, m, &shard, &err), 0);
                cr_assert_eq(cm_ratings_carve(&shard, 0.05, 7, &st, &sv, &err), 0);
                s_mark(&sv, got, n, 1);
                cm_ratings_free(&shard);
                cm_ratings_free(&st);
                cm_ratings_free(&sv);
            }
            cr_expect_eq(memcmp(want, got, n), 0, "%zu workers (%s) held out other rows",
                         ks[t], by_user ? "by user" : "by stride");
        }
    free(want);
    free(got);
    cm_ratings_free(&tr);
    cm_ratings_free(&va);
    cm_ratings_free(&all);
}

/* The held-out share is the fraction within 5 binomial standard
 * deviations, for pairs and for positions. */
Test(carve, fraction)
{
    const size_t n = 200000;
    const double fr[] = {0.01, 0.05, 0.2, 0.5};
    for (size_t f = 0; f < sizeof fr / sizeof fr[0]; f++) {
        size_t pairs = 0, pos = 0;
        for (size_t k = 0; k < n; k++) {
            pairs += (size_t)cm_carve_pair(k % 1000, k / 1000, 3, fr[f]);
            pos += (size_t)cm_carve_position(k, 3, fr[f]);
        }
        double tol = 5 * sqrt(fr[f] * (1 - fr[f]) / (double)n);
        cr_expect_leq(fabs((double)pairs / n - fr[f]), tol, "pairs: %zu of %zu at %g", pairs, n,
                      fr[f]);
        cr_expect_leq(fabs((double)pos / n - fr[f]), tol, "positions: %zu of %zu at %g", pos,
                      n, fr[f]);
    }
}

Test(carve, off_and_bad_fraction)
{
    cm_ratings all, tr, va;
    s_make(&all, 1000);
    cm_error err = {0};
    cr_assert_eq(cm_ratings_carve(&all, 0, 1, &tr, &va, &err), 0);
    cr_expect_eq(va.n, 0, "fraction 0 holds nothing out");
    cr_expect_eq(tr.n, all.n);
    cm_ratings_free(&tr);
    cm_ratings_free(&va);
    cr_expect_eq(cm_carve_pair(1, 2, 1, 0), 0);
    cr_expect_eq(cm_carve_position(5, 1, 0), 0);
    cr_expect_eq(cm_ratings_carve(&all, 1.5, 1, &tr, &va, &err), CM_EINVAL);
    cr_expect(strstr(err.msg, "validation_fraction") != NULL, "%s", err.msg);
    cr_expect_eq(cm_ratings_carve(&all, NAN, 1, &tr, &va, &err), CM_EINVAL);
    cm_ratings_free(&all);
}

/* Real data: ml-100k's u1.base, 5% carved. */
Test(carve, ml100k)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("no data directory");
    char path[4096];
    snprintf(path, sizeof path, "%.2048s/ml-100k/u1.base", data);
    cm_ratings all, tr, va;
    cm_error err = {0};
    cr_assert_eq(cm_ratings_load(path, NULL, &all, &err), 0, "%s", err.msg);
    cr_assert_eq(cm_ratings_carve(&all, 0.05, 1, &tr, &va, &err), 0);
    double share = (double)va.n / (double)all.n;
    cr_expect_leq(fabs(share - 0.05), 5 * sqrt(0.05 * 0.95 / (double)all.n), "%zu of %zu", va.n,
                  all.n);
    cr_expect_eq(tr.n + va.n, all.n);
    cm_ratings_free(&tr);
    cm_ratings_free(&va);
    cm_ratings_free(&all);
}
