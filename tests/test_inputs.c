/* Tests for how fm, ffm and deep decide what a .csv file holds
 * (worker/sparse.h: wk_csv_shape_of, wk_sparse_format,
 * wk_sparse_check_input): a ratings-shaped file reads as ratings, a file
 * that could be either stops with the options to choose, and a csv is never
 * read without its labels. */
#define _GNU_SOURCE /* nftw, mkdtemp */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "tmpdir.h"
#include "worker/sparse.h"

static void s_setup(void)
{
    th_tmpdir_make("inputs");
    cm_log_set_level(CM_LOG_ERROR);
}

TestSuite(inputs, .init = s_setup, .fini = th_tmpdir_remove);

static const char *s_write(const char *name, const char *text)
{
    const char *p = th_path(name);
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

static cm_job s_job(const char *model, const char *train)
{
    cm_job job = cm_job_default();
    snprintf(job.model, sizeof job.model, "%s", model);
    snprintf(job.train, sizeof job.train, "%s", train);
    return job;
}

#define ML_HEADER "userId,movieId,rating,timestamp\n"

Test(inputs, csv_shapes)
{
    char header[64];
    cr_expect_eq(wk_csv_shape_of(s_write("a.csv", ML_HEADER "1,1,4.0,964982703\n"), header,
                                 sizeof header),
                 WK_CSV_RATINGS);
    cr_expect_str_eq(header, "userId,movieId,rating,timestamp");
    cr_expect_eq(wk_csv_shape_of(s_write("b.csv", "user_id\titem_id\tscore\n3\t4\t1\n"), NULL, 0),
                 WK_CSV_RATINGS, "tabs, 3 columns, names said differently");
    cr_expect_eq(wk_csv_shape_of(s_write("c.csv", "\xEF\xBB\xBF# c\n\n10,20,3.5\n"), NULL, 0),
                 WK_CSV_RATINGS, "no header: numeric rows of 3 are ratings");
    cr_expect_eq(wk_csv_shape_of(s_write("d.csv", "a,b,c\n1,2,3\n"), NULL, 0),
                 WK_CSV_AMBIGUOUS, "3 columns whose names say nothing");
    cr_expect_eq(wk_csv_shape_of(s_write("e.csv", "Label,I1,C1,C2,C3\n1,5,a,b,c\n"), NULL, 0),
                 WK_CSV_COLUMNS);
    cr_expect_eq(wk_csv_shape_of(s_write("f.csv", ML_HEADER "1,1,good,9\n"), NULL, 0),
                 WK_CSV_COLUMNS, "a rating that is not a number");
    cr_expect_eq(wk_csv_shape_of(th_path("missing.csv"), NULL, 0), WK_CSV_UNKNOWN);
}

Test(inputs, ratings_csv_reads_as_ratings_for_sparse_models)
{
    const char *p = s_write("ratings.csv", ML_HEADER "1,1,4.0,964982703\n1,3,4.5,964981247\n"
                                                     "2,1,2.0,964982224\n");
    const char *models[] = {"fm", "ffm", "deep"};
    for (size_t m = 0; m < 3; m++) {
        cm_job job = s_job(models[m], p);
        cr_expect_eq(wk_sparse_format(&job, p), CM_FMT_RATINGS, "%s", models[m]);
        cm_error e = {0};
        cr_expect_eq(wk_sparse_check_input(&job, &e), 0, "%s: %s", models[m], e.msg);
    }
    /* and loads as regression on the ratings, not as labels of 0 */
    cm_job job = s_job("fm", p);
    cm_error e = {0};
    wk_sparse *s = wk_sparse_new(&job, 0, 1, 1 + job.dim, &e);
    cr_assert_not_null(s, "%s", e.msg);
    cr_expect_eq(wk_sparse_task(s), CM_TASK_REGRESSION);
    cm_hello he = {0};
    float loads[16] = {0};
    wk_sparse_hello(s, &he, loads, 16);
    cr_expect_eq(he.n_train, 3, "rows");
    cr_expect(fabs(he.label_sum - 10.5) < 1e-9, "label sum %g is the ratings' sum",
              he.label_sum);
    cr_expect_eq(he.label_min, 2.0);
    cr_expect_eq(he.label_max, 4.5);
    cr_expect_eq(he.task, CM_TASK_REGRESSION);
    wk_sparse_destroy(&s);
}

Test(inputs, ambiguous_csv_names_the_fix)
{
    const char *p = s_write("abc.csv", "a,b,c\n1,2,3\n4,5,1\n");
    cm_job job = s_job("fm", p);
    cm_error e = {0};
    cr_assert_eq(wk_sparse_check_input(&job, &e), CM_ECONFIG);
    cr_expect(strstr(e.msg, "abc.csv") && strstr(e.msg, "--format ratings") &&
                  strstr(e.msg, "--label_column") && strstr(e.msg, "a,b,c"),
              "%s", e.msg);
    /* either answer settles it */
    job.format = CM_FMT_RATINGS;
    cr_expect_eq(wk_sparse_check_input(&job, &e), 0, "%s", e.msg);
    job = s_job("fm", p);
    snprintf(job.label_column, sizeof job.label_column, "c");
    snprintf(job.categorical_columns, sizeof job.categorical_columns, "a,b");
    cr_expect_eq(wk_sparse_format(&job, p), CM_FMT_CSV);
    cr_expect_eq(wk_sparse_check_input(&job, &e), 0, "%s", e.msg);
    /* so do the ratings column keys */
    job = s_job("fm", p);
    snprintf(job.rating_column, sizeof job.rating_column, "c");
    cr_expect_eq(wk_sparse_format(&job, p), CM_FMT_RATINGS);
}

Test(inputs, csv_without_label_never_loads)
{
    const char *p = s_write("wide.csv", "Label,I1,C1\n1,5,a\n0,3,b\n");
    cm_job job = s_job("fm", p);
    snprintf(job.categorical_columns, sizeof job.categorical_columns, "C1");
    cm_error e = {0};
    cr_assert_eq(wk_sparse_check_input(&job, &e), CM_ECONFIG);
    cr_expect(strstr(e.msg, "wide.csv") && strstr(e.msg, "every label would be 0") &&
                  strstr(e.msg, "--label_column"),
              "%s", e.msg);
    /* the loader refuses too, for a caller that skipped the check */
    cm_examples ex = {0};
    cr_expect_eq(wk_sparse_load_features(&job, p, 0, &ex, &e), CM_ECONFIG);
    cr_expect_null(wk_sparse_new(&job, 0, 1, 1 + job.dim, &e));
    /* an explicit --format csv on a ratings file is refused the same way */
    const char *r = s_write("r.csv", ML_HEADER "1,1,4.0,9\n");
    job = s_job("fm", r);
    job.format = CM_FMT_CSV;
    cr_assert_eq(wk_sparse_check_input(&job, &e), CM_ECONFIG);
    cr_expect(strstr(e.msg, "--format ratings") != NULL, "%s", e.msg);
    /* the test file is checked as well as the training file */
    job = s_job("fm", s_write("tr.libsvm", "1 3:1 4:1\n0 2:1\n"));
    snprintf(job.test, sizeof job.test, "%s", p);
    cr_assert_eq(wk_sparse_check_input(&job, &e), CM_ECONFIG);
    cr_expect(strstr(e.msg, "wide.csv") != NULL, "%s", e.msg);
    /* a ratings training file makes the test file ratings too */
    job = s_job("fm", r);
    snprintf(job.test, sizeof job.test, "%s", s_write("t.csv", "a,b,c\n1,2,3\n"));
    cr_expect_eq(wk_sparse_check_input(&job, &e), 0, "%s", e.msg);
    /* with its label the same file loads */
    job = s_job("fm", p);
    snprintf(job.label_column, sizeof job.label_column, "Label");
    snprintf(job.categorical_columns, sizeof job.categorical_columns, "C1");
    cr_expect_eq(wk_sparse_check_input(&job, &e), 0, "%s", e.msg);
    cr_assert_eq(wk_sparse_load_features(&job, p, 0, &ex, &e), 0, "%s", e.msg);
    cr_expect_eq(ex.n, 2);
    cr_expect_eq(ex.label[0], 1.f);
    cm_examples_free(&ex);
}

Test(inputs, ratings_columns_follow_the_job)
{
    cm_job job = s_job("mf", "r.csv");
    cm_load_opts o = cm_load_opts_default();
    wk_ratings_columns(&job, &o);
    cr_expect_str_eq(o.user_column, "");
    cr_expect_str_eq(o.rating_column, "");
    snprintf(job.label_column, sizeof job.label_column, "y");
    snprintf(job.item_column, sizeof job.item_column, "movie");
    wk_ratings_columns(&job, &o);
    cr_expect_str_eq(o.rating_column, "y", "label_column names the rating");
    cr_expect_str_eq(o.item_column, "movie");
    snprintf(job.rating_column, sizeof job.rating_column, "stars");
    wk_ratings_columns(&job, &o);
    cr_expect_str_eq(o.rating_column, "stars", "rating_column wins");
    /* mf and implicit are not checked here: they always read ratings */
    cm_error e = {0};
    cm_job mf = s_job("mf", s_write("w.csv", "a,b,c,d,e\n1,2,3,4,5\n"));
    cr_expect_eq(wk_sparse_check_input(&mf, &e), 0, "%s", e.msg);
}
