/* Tests for common/synth (psrec gen): row counts, determinism, the noise
 * floor, popularity skew, text output and parameter checks. */
#define _GNU_SOURCE /* nftw, mkdtemp */
#include <criterion/criterion.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dataset.h"
#include "common/log.h"
#include "common/synth.h"
#include "tmpdir.h"

static void setup(void)
{
    th_tmpdir_make("synth");
    cm_log_set_level(CM_LOG_ERROR);
}

static void teardown(void)
{
    th_tmpdir_remove();
}

TestSuite(synth, .init = setup, .fini = teardown);

static const char *prefix(const char *name)
{
    return th_path(name);
}

static void load_ok(const char *path, cm_ratings *r)
{
    cm_error e;
    cm_load_opts o = cm_load_opts_default();
    cr_assert_eq(cm_ratings_load(path, &o, r, &e), 0, "%s", e.msg);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static unsigned char *slurp(const char *p, size_t *len)
{
    FILE *f = fopen(p, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len + 1);
    cr_assert_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

Test(synth, defaults)
{
    cm_synth_params p = cm_synth_params_default();
    cr_assert_eq(p.n_ratings, 100000);
    cr_assert_eq(p.n_users, 943);
    cr_assert_eq(p.n_items, 1682);
    cr_assert_eq(p.rank, 8);
    cr_assert_float_eq(p.noise, 0.5, 1e-12);
    cr_assert_float_eq(p.zipf, 0.9, 1e-12);
    cr_assert_float_eq(p.mean, 3.5, 1e-12);
    cr_assert_float_eq(p.user_bias_sd, 0.4, 1e-12);
    cr_assert_float_eq(p.item_bias_sd, 0.4, 1e-12);
    cr_assert_leq(p.factor_sd, 0.0, "automatic factor scale");
    cr_assert_float_eq(p.test_fraction, 0.1, 1e-12);
    cr_assert_eq(p.seed, 42);
    cr_assert_eq(p.text, 0);
}

Test(synth, default_run_counts_ids_and_floor)
{
    cm_synth_params p = cm_synth_params_default();
    cm_synth_report rep;
    cm_error e;
    cr_assert_eq(cm_synth_write(&p, prefix("d"), &rep, &e), 0, "%s", e.msg);
    cr_assert_eq(rep.n_train + rep.n_test, p.n_ratings);
    cr_assert(fabs((double)rep.n_test / p.n_ratings - 0.1) < 0.005, "n_test %llu",
              (unsigned long long)rep.n_test);
    cr_assert_str_eq(rep.train_path, prefix("d.train.psrd"));
    cr_assert_str_eq(rep.test_path, prefix("d.test.psrd"));
    /* sd of the estimate is about 0.5 / sqrt(2 * 10000) = 0.0035 */
    cr_assert(fabs(rep.noise_floor - p.noise) < 0.02, "floor %f", rep.noise_floor);

    cm_ratings tr, te;
    load_ok(rep.train_path, &tr);
    load_ok(rep.test_path, &te);
    cr_assert_eq(tr.n, rep.n_train);
    cr_assert_eq(te.n, rep.n_test);
    cr_assert_float_eq(tr.noise_floor, rep.noise_floor, 1e-12, "stored in both headers");
    cr_assert_float_eq(te.noise_floor, rep.noise_floor, 1e-12);
    double sum = 0, sum2 = 0;
    for (size_t i = 0; i < tr.n; i++) {
        cr_assert(tr.user[i] >= 1 && tr.user[i] <= p.n_users);
        cr_assert(tr.item[i] >= 1 && tr.item[i] <= p.n_items);
        cr_assert(isfinite(tr.rating[i]));
        sum += tr.rating[i];
        sum2 += (double)tr.rating[i] * tr.rating[i];
    }
    double mean = sum / tr.n, sd = sqrt(sum2 / tr.n - mean * mean);
    /* mean 3.5 plus sampled biases; variance = biases (0.16 + 0.16) +
     * dot (0.36) + noise (0.25) ~ 0.93; activity weighting moves it a bit */
    cr_assert(fabs(mean - 3.5) < 0.25, "mean %f", mean);
    cr_assert(sd > 0.75 && sd < 1.2, "sd %f", sd);
    cm_ratings_free(&tr);
    cm_ratings_free(&te);
}

Test(synth, same_seed_same_bytes_other_seed_differs)
{
    cm_synth_params p = cm_synth_params_default();
    p.n_ratings = 50000;
    cm_synth_report a, b, c;
    cm_error e;
    cr_assert_eq(cm_synth_write(&p, prefix("a"), &a, &e), 0, "%s", e.msg);
    cr_assert_eq(cm_synth_write(&p, prefix("b"), &b, &e), 0, "%s", e.msg);
    p.seed = 43;
    cr_assert_eq(cm_synth_write(&p, prefix("c"), &c, &e), 0, "%s", e.msg);
    cr_assert_eq(a.n_test, b.n_test);
    cr_assert_eq(a.noise_floor, b.noise_floor);
    const char *pairs[2][2] = {{a.train_path, b.train_path}, {a.test_path, b.test_path}};
    for (int i = 0; i < 2; i++) {
        size_t la, lb;
        unsigned char *x = slurp(pairs[i][0], &la), *y = slurp(pairs[i][1], &lb);
        cr_assert_eq(la, lb);
        cr_assert_eq(memcmp(x, y, la), 0, "file %d differs", i);
        free(x);
        free(y);
    }
    cm_ratings ra, rc;
    load_ok(a.train_path, &ra);
    load_ok(c.train_path, &rc);
    size_t n = ra.n < rc.n ? ra.n : rc.n, same = 0;
    for (size_t i = 0; i < n; i++)
        same += ra.user[i] == rc.user[i] && ra.item[i] == rc.item[i];
    cr_assert_lt(same, n / 10, "seed 43 repeats seed 42 (%zu of %zu rows)", same, n);
    cm_ratings_free(&ra);
    cm_ratings_free(&rc);
}

Test(synth, zipf_items_and_skewed_users)
{
    cm_synth_params p = cm_synth_params_default();
    p.n_ratings = 200000;
    p.test_fraction = 0.0;
    cm_synth_report rep;
    cm_error e;
    cr_assert_eq(cm_synth_write(&p, prefix("z"), &rep, &e), 0, "%s", e.msg);
    cr_assert_eq(rep.n_test, 0);
    cr_assert(fabs(rep.noise_floor - 0.5) < 0.01, "floor from the train rows: %f", rep.noise_floor);
    cm_ratings r, te;
    load_ok(rep.train_path, &r);
    load_ok(rep.test_path, &te);
    cr_assert_eq(te.n, 0);
    cm_ratings_free(&te);
    uint64_t *ic = calloc(p.n_items + 1, sizeof *ic), *uc = calloc(p.n_users + 1, sizeof *uc);
    for (size_t i = 0; i < r.n; i++) {
        ic[r.item[i]]++;
        uc[r.user[i]]++;
    }
    qsort(ic + 1, p.n_items, sizeof *ic, cmp_u64);
    qsort(uc + 1, p.n_users, sizeof *uc, cmp_u64);
    uint64_t top = ic[p.n_items], med = ic[1 + p.n_items / 2];
    /* 1/rank^0.9 over 1682 items: the top item's share is 1/H = 8.63%
     * (H = sum of rank^-0.9 = 11.588), the median item's 1/429 of that */
    cr_assert_gt(top, 50 * (med ? med : 1), "top %llu median %llu", (unsigned long long)top,
                 (unsigned long long)med);
    cr_assert(fabs((double)top / r.n - 0.0863) < 0.004, "top share %f", (double)top / r.n);
    /* lognormal(0, 1) activity: the busiest user has several times the
     * median user's rows */
    uint64_t utop = uc[p.n_users], umed = uc[1 + p.n_users / 2];
    cr_assert_gt(utop, 5 * umed, "user top %llu median %llu", (unsigned long long)utop,
                 (unsigned long long)umed);
    /* the popular items are spread over the id range (random permutation) */
    cm_ratings_free(&r);
    free(ic);
    free(uc);
}

Test(synth, popular_items_are_permuted)
{
    cm_synth_params p = cm_synth_params_default();
    p.n_ratings = 100000;
    cm_synth_report rep;
    cm_error e;
    cr_assert_eq(cm_synth_write(&p, prefix("perm"), &rep, &e), 0, "%s", e.msg);
    cm_ratings r;
    load_ok(rep.train_path, &r);
    uint64_t *ic = calloc(p.n_items + 1, sizeof *ic);
    for (size_t i = 0; i < r.n; i++)
        ic[r.item[i]]++;
    /* with no permutation the ten lowest ids would be the ten most popular */
    uint64_t low10 = 0, total = r.n;
    for (uint64_t i = 1; i <= 10; i++)
        low10 += ic[i];
    cr_assert_lt((double)low10 / total, 0.10, "low ids hold %f", (double)low10 / total);
    cm_ratings_free(&r);
    free(ic);
}

Test(synth, noise_floor_tracks_the_noise)
{
    double noises[] = {0.0, 0.2, 1.0};
    for (int k = 0; k < 3; k++) {
        cm_synth_params p = cm_synth_params_default();
        p.n_ratings = 60000;
        p.test_fraction = 0.5;
        p.noise = noises[k];
        cm_synth_report rep;
        cm_error e;
        char name[32];
        snprintf(name, sizeof name, "n%d", k);
        cr_assert_eq(cm_synth_write(&p, prefix(name), &rep, &e), 0, "%s", e.msg);
        if (noises[k] == 0.0)
            cr_assert_lt(rep.noise_floor, 1e-6, "only float rounding: %g", rep.noise_floor);
        else
            cr_assert(fabs(rep.noise_floor / noises[k] - 1) < 0.02, "noise %g floor %g",
                      noises[k], rep.noise_floor);
    }
}

Test(synth, noiseless_ratings_are_a_function_of_the_pair)
{
    /* Without noise, the same (user, item) pair always has the same rating:
     * the data come from the planted model, nothing per row. */
    cm_synth_params p = cm_synth_params_default();
    p.n_users = 20;
    p.n_items = 30;
    p.noise = 0.0;
    p.n_ratings = 20000;
    cm_synth_report rep;
    cm_error e;
    cr_assert_eq(cm_synth_write(&p, prefix("f"), &rep, &e), 0, "%s", e.msg);
    cm_ratings r;
    load_ok(rep.train_path, &r);
    float seen[21][31];
    for (int u = 0; u < 21; u++)
        for (int i = 0; i < 31; i++)
            seen[u][i] = NAN;
    for (size_t k = 0; k < r.n; k++) {
        float *s = &seen[r.user[k]][r.item[k]];
        if (isnan(*s))
            *s = r.rating[k];
        else
            cr_assert_eq(*s, r.rating[k]);
    }
    cm_ratings_free(&r);
}

Test(synth, automatic_factor_scale_gives_dot_sd_0_6)
{
    /* mean, biases and noise off: a rating is exactly <p_u, q_i> */
    int ranks[] = {1, 8, 32};
    for (int k = 0; k < 3; k++) {
        cm_synth_params p = cm_synth_params_default();
        p.n_users = 2000;
        p.n_items = 2000;
        p.rank = ranks[k];
        p.mean = 0;
        p.user_bias_sd = p.item_bias_sd = 0;
        p.noise = 0;
        p.zipf = 0;
        p.n_ratings = 100000;
        cm_synth_report rep;
        cm_error e;
        char name[32];
        snprintf(name, sizeof name, "dot%d", k);
        cr_assert_eq(cm_synth_write(&p, prefix(name), &rep, &e), 0, "%s", e.msg);
        cm_ratings r;
        load_ok(rep.train_path, &r);
        double s1 = 0, s2 = 0;
        for (size_t i = 0; i < r.n; i++) {
            s1 += r.rating[i];
            s2 += (double)r.rating[i] * r.rating[i];
        }
        double mean = s1 / r.n, sd = sqrt(s2 / r.n - mean * mean);
        cr_assert(fabs(mean) < 0.05, "rank %d mean %f", ranks[k], mean);
        cr_assert(fabs(sd - 0.6) < 0.07, "rank %d dot sd %f", ranks[k], sd);
        cm_ratings_free(&r);
    }
}

Test(synth, text_output_matches_binary)
{
    cm_synth_params p = cm_synth_params_default();
    p.n_ratings = 30000;
    cm_synth_report rb, rt;
    cm_error e;
    cr_assert_eq(cm_synth_write(&p, prefix("bin"), &rb, &e), 0, "%s", e.msg);
    p.text = 1;
    cr_assert_eq(cm_synth_write(&p, prefix("txt"), &rt, &e), 0, "%s", e.msg);
    cr_assert_str_eq(rt.train_path, prefix("txt.train.tsv"));
    cr_assert_str_eq(rt.test_path, prefix("txt.test.tsv"));
    cr_assert_eq(rt.n_train, rb.n_train);
    cr_assert_eq(rt.noise_floor, rb.noise_floor);
    const char *pairs[2][2] = {{rb.train_path, rt.train_path}, {rb.test_path, rt.test_path}};
    for (int k = 0; k < 2; k++) {
        cm_ratings a, b;
        load_ok(pairs[k][0], &a);
        load_ok(pairs[k][1], &b);
        cr_assert_eq(a.n, b.n);
        cr_assert_eq(b.bad_lines, 0);
        cr_assert_arr_eq(a.user, b.user, a.n * 8);
        cr_assert_arr_eq(a.item, b.item, a.n * 8);
        cr_assert_arr_eq(a.rating, b.rating, a.n * 4, "text ratings read back exactly");
        cr_assert_float_eq(b.noise_floor, rb.noise_floor, 1e-12, "floor in the text footer");
        cm_ratings_free(&a);
        cm_ratings_free(&b);
    }
}

Test(synth, bad_params_are_rejected)
{
    cm_synth_report rep;
    cm_error e;
    cm_synth_params p = cm_synth_params_default();
    p.n_users = 0;
    cr_assert_eq(cm_synth_write(&p, prefix("x"), &rep, &e), CM_EINVAL);
    cr_assert_not_null(strstr(e.msg, "n_users"), "%s", e.msg);
    p = cm_synth_params_default();
    p.test_fraction = 1.5;
    cr_assert_eq(cm_synth_write(&p, prefix("x"), &rep, &e), CM_EINVAL);
    cr_assert_not_null(strstr(e.msg, "test_fraction"), "%s", e.msg);
    p = cm_synth_params_default();
    p.noise = -1;
    cr_assert_eq(cm_synth_write(&p, prefix("x"), &rep, &e), CM_EINVAL);
    p = cm_synth_params_default();
    p.zipf = NAN;
    cr_assert_eq(cm_synth_write(&p, prefix("x"), &rep, &e), CM_EINVAL);
    p = cm_synth_params_default();
    p.rank = -2;
    cr_assert_eq(cm_synth_write(&p, prefix("x"), &rep, &e), CM_EINVAL);
    p = cm_synth_params_default();
    p.n_ratings = 0;
    cr_assert_eq(cm_synth_write(&p, prefix("x"), &rep, &e), CM_EINVAL);
    p = cm_synth_params_default();
    cr_assert_eq(cm_synth_write(&p, "/nonexistent-dir/x", &rep, &e), CM_EIO);
    cr_assert_not_null(strstr(e.msg, "/nonexistent-dir/x"), "%s", e.msg);
    /* nothing was written for any of these */
    char cmd[400];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls -A %s)\"", th_dir);
    cr_assert_eq(system(cmd), 0, "files left in %s", th_dir);
}

Test(synth, rank_zero_and_tiny_sets)
{
    cm_synth_params p = cm_synth_params_default();
    p.rank = 0;
    p.n_users = 1;
    p.n_items = 1;
    p.n_ratings = 10;
    p.test_fraction = 1.0;
    cm_synth_report rep;
    cm_error e;
    cr_assert_eq(cm_synth_write(&p, prefix("t"), &rep, &e), 0, "%s", e.msg);
    cr_assert_eq(rep.n_test, 10);
    cr_assert_eq(rep.n_train, 0);
    cm_ratings r;
    load_ok(rep.test_path, &r);
    for (size_t i = 0; i < r.n; i++)
        cr_assert(r.user[i] == 1 && r.item[i] == 1);
    cm_ratings_free(&r);
    cr_assert_eq(cm_synth_write(&p, prefix("t2"), NULL, NULL), 0, "rep and err may be NULL");
}
