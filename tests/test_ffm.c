/* Field-aware FM: the score against the pairwise definition in ffm.c,
 * gradients of the full loss (data term + per-occurrence L2) against
 * central finite differences for both tasks, the table layout, and the
 * field count a launcher resolves from the data (wk_sparse_fields). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/features.h"
#include "common/rng.h"
#include "worker/models/model.h"
#include "worker/sparse.h"

enum { NF = 3, K = 2, DIM = 1 + NF * K, ROWS = 6, NEX = 3 }; /* row 5 is the bias */

static const uint64_t s_at[NEX + 1] = {0, 3, 5, 9};
static const uint32_t s_idx[9] = {0, 2, 4, 1, 2, 0, 1, 3, 4};
static const uint32_t s_fld[9] = {0, 1, 2, 2, 1, 0, 0, 1, 2}; /* 6: a field twice */
static const float s_val[9] = {1.0f, 0.5f, -1.5f, 2.0f, 1.0f, 0.3f, -0.7f, 1.0f, 0.25f};

static wk_sparse_batch s_batch(const float *label)
{
    return (wk_sparse_batch){NEX, s_at, s_idx, s_val, label, 5};
}

static wk_sparse_extra s_extra(void)
{
    return (wk_sparse_extra){.field = s_fld, .n_fields = NF};
}

static void s_random_rows(float *rows)
{
    cm_rng r;
    cm_rng_seed(&r, 23);
    for (int i = 0; i < ROWS * DIM; i++)
        rows[i] = (float)(0.5 * cm_rng_normal(&r));
}

/* The definition, in double. */
static double s_ref_score(const float *rows, size_t j, double offset)
{
    double y = offset + rows[5 * DIM];
    for (uint64_t a = s_at[j]; a < s_at[j + 1]; a++) {
        const float *ra = rows + s_idx[a] * DIM;
        y += ra[0] * (double)s_val[a];
        for (uint64_t c = a + 1; c < s_at[j + 1]; c++) {
            const float *rc = rows + s_idx[c] * DIM;
            double dot = 0;
            for (int q = 0; q < K; q++)
                dot += (double)ra[1 + s_fld[c] * K + q] * rc[1 + s_fld[a] * K + q];
            y += dot * s_val[a] * s_val[c];
        }
    }
    return y;
}

/* The loss ffm.c documents: data term + l2/2 |row|^2 per occurrence. */
static double s_ref_loss(int task, const float *label, const float *rows, double l2)
{
    double l = 0;
    for (size_t j = 0; j < NEX; j++) {
        double y = s_ref_score(rows, j, 0), t = label[j];
        l += task == CM_TASK_BINARY ? (t > 0.5 ? log1p(exp(-y)) : log1p(exp(y)))
                                    : 0.5 * (y - t) * (y - t);
        for (uint64_t a = s_at[j]; a < s_at[j + 1]; a++)
            for (int q = 0; q < DIM; q++) {
                double w = rows[s_idx[a] * DIM + q];
                l += 0.5 * l2 * w * w;
            }
    }
    return l;
}

Test(ffm, score_matches_pairwise_definition)
{
    float rows[ROWS * DIM], score[NEX];
    s_random_rows(rows);
    const float label[NEX] = {0};
    wk_sparse_batch b = s_batch(label);
    wk_sparse_extra x = s_extra();
    wk_model_ctx ctx = {.offset = 0.25f};
    wk_model_ffm.predict_ext(&ctx, &b, &x, DIM, rows, score);
    for (size_t j = 0; j < NEX; j++) {
        double want = s_ref_score(rows, j, 0.25);
        cr_expect_float_eq(score[j], want, 1e-5, "example %zu: %g vs %g", j, score[j], want);
    }
    /* the fields matter: all in field 0 gives another score */
    static const uint32_t zero[9] = {0};
    wk_sparse_extra x0 = {.field = zero, .n_fields = NF};
    float other[NEX];
    wk_model_ffm.predict_ext(&ctx, &b, &x0, DIM, rows, other);
    cr_expect(fabsf(other[0] - score[0]) > 1e-4, "%g vs %g", other[0], score[0]);
}

static void s_check_gradients(int task, const float *label)
{
    float rows[ROWS * DIM], grads[ROWS * DIM] = {0};
    s_random_rows(rows);
    wk_sparse_batch b = s_batch(label);
    wk_sparse_extra x = s_extra();
    wk_model_ctx ctx = {.l2 = 0.03f};
    double loss = wk_model_ffm.train_ext(&ctx, task, &b, &x, DIM, rows, grads);
    double want = s_ref_loss(task, label, rows, 0);
    cr_expect_float_eq(loss, want, 1e-4 * fabs(want) + 1e-6, "returned loss %g vs %g", loss,
                       want);
    int checked = 0;
    for (int i = 0; i < ROWS * DIM; i++) {
        const float h = 1e-2f, keep = rows[i];
        rows[i] = keep + h;
        double lp = s_ref_loss(task, label, rows, ctx.l2);
        rows[i] = keep - h;
        double lm = s_ref_loss(task, label, rows, ctx.l2);
        rows[i] = keep;
        double fd = (lp - lm) / (2 * h);
        /* the bias row is not regularised: only its weight 0 has a gradient */
        if (i / DIM == 5 && i % DIM != 0)
            fd = 0;
        cr_expect(fabs(fd - grads[i]) <= 3e-3 + 3e-3 * fabs(fd),
                  "task %d weight %d: analytic %g vs numeric %g", task, i, grads[i], fd);
        checked += fabs(fd) > 1e-3;
    }
    cr_expect_gt(checked, ROWS * DIM / 2, "most weights have a gradient (%d)", checked);
}

Test(ffm, regression_gradients_match_finite_differences)
{
    const float label[NEX] = {1.5f, -0.5f, 2.0f};
    s_check_gradients(CM_TASK_REGRESSION, label);
}

Test(ffm, logistic_gradients_match_finite_differences)
{
    const float label[NEX] = {1.0f, 0.0f, 1.0f};
    s_check_gradients(CM_TASK_BINARY, label);
}

Test(ffm, without_fields_it_is_an_fm)
{
    /* one field: v_{i,0} is the FM's v_i, and the scores agree */
    float rows[ROWS * (1 + K)], score[NEX], fm[NEX];
    cm_rng r;
    cm_rng_seed(&r, 5);
    for (int i = 0; i < ROWS * (1 + K); i++)
        rows[i] = (float)(0.5 * cm_rng_normal(&r));
    const float label[NEX] = {0};
    wk_sparse_batch b = s_batch(label);
    wk_sparse_extra none = {0};
    wk_model_ffm.predict_ext(NULL, &b, &none, 1 + K, rows, score);
    wk_model_fm.predict_sparse(NULL, &b, 1 + K, rows, fm);
    for (size_t j = 0; j < NEX; j++)
        cr_expect_float_eq(score[j], fm[j], 1e-5, "example %zu", j);
}

Test(ffm, table_is_one_weight_then_a_vector_per_field)
{
    cm_job job = cm_job_default();
    snprintf(job.model, sizeof job.model, "ffm");
    job.dim = 4;
    job.fields = 10;
    cm_table_spec tp;
    cr_assert_eq(wk_model_ffm.n_tables, 1);
    cr_assert_eq(wk_model_find("ffm"), &wk_model_ffm);
    wk_model_ffm.table_params(&job, 0, &tp);
    cr_expect_eq(tp.dim, 41);
    cr_expect_eq(tp.zero_prefix, 1);
    cr_expect_eq(tp.dense.n, 0, "sparse rows: no dense init");
}

/* ---------------------------------------------------------------------------
 * wk_sparse_fields
 * ------------------------------------------------------------------------- */

static char s_dir[64];

static const char *s_write(const char *name, const char *text)
{
    static char path[4][128];
    static int next;
    char *p = path[next++ % 4];
    if (!s_dir[0]) {
        snprintf(s_dir, sizeof s_dir, "/tmp/psrec-ffm-XXXXXX");
        cr_assert_not_null(mkdtemp(s_dir));
    }
    snprintf(p, 128, "%s/%s", s_dir, name);
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

static void s_cleanup(void)
{
    if (s_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
        cr_expect_eq(system(cmd), 0);
    }
}

static cm_job s_job(const char *model, const char *train)
{
    cm_job job = cm_job_default();
    snprintf(job.model, sizeof job.model, "%s", model);
    snprintf(job.train, sizeof job.train, "%s", train);
    return job;
}

Test(ffm, fields_come_from_the_data, .fini = s_cleanup)
{
    cm_error e = {0};
    /* libffm: the first line that reads as libffm, as the loader takes it
     * (a bad label, a malformed pair and a bare label come first) */
    cm_job job = s_job("ffm", s_write("a.ffm", "# c\n\nx 0:1:1 9:1:1\n1 0:1:1 x\n1\n"
                                               "0 0:5:1 3:7:0.5 # 8:1:1\n1 6:1:1\n"));
    cr_expect_eq(wk_sparse_fields(&job, &e), 4, "%s", e.msg);
    job.fields = 9;
    cr_expect_eq(wk_sparse_fields(&job, &e), 9, "a set count wins");
    /* ratings: user, item (+ user side, item side) */
    job = s_job("deep", s_write("r.tsv", "1\t2\t3\n2\t3\t4\n"));
    cr_expect_eq(wk_sparse_fields(&job, &e), 2, "%s", e.msg);
    snprintf(job.item_features, sizeof job.item_features, "u.item");
    cr_expect_eq(wk_sparse_fields(&job, &e), 4, "%s", e.msg);
    /* csv: one field per named column */
    job = s_job("ffm", s_write("c.csv", "y,a,b,c\n1,2,x,y\n"));
    snprintf(job.numeric_columns, sizeof job.numeric_columns, "a");
    snprintf(job.categorical_columns, sizeof job.categorical_columns, "b, c");
    cr_expect_eq(wk_sparse_fields(&job, &e), 3, "%s", e.msg);
    /* fm needs none: nothing is read */
    job = s_job("fm", "/nonexistent");
    cr_expect_eq(wk_sparse_fields(&job, &e), 0);
}

Test(ffm, fields_errors_name_the_file, .fini = s_cleanup)
{
    cm_error e = {0};
    const char *svm = s_write("a.svm", "1 3:1 4:1\n");
    cm_job job = s_job("ffm", svm);
    cr_expect_eq(wk_sparse_fields(&job, &e), CM_ECONFIG);
    cr_expect(strstr(e.msg, "a.svm") && strstr(e.msg, "libsvm"), "%s", e.msg);
    job = s_job("ffm", s_write("bad.ffm", "1 a:b:c\n1 1:2\n"));
    cr_expect_eq(wk_sparse_fields(&job, &e), CM_EPARSE);
    cr_expect(strstr(e.msg, "bad.ffm") && strstr(e.msg, "set fields"), "%s", e.msg);
    job = s_job("ffm", s_write("big.ffm", "1 5000:1:1\n"));
    cr_expect_eq(wk_sparse_fields(&job, &e), CM_ECONFIG);
    cr_expect(strstr(e.msg, "big.ffm:1") != NULL, "%s", e.msg);
    job = s_job("deep", s_write("n.csv", "y,a\n1,2\n"));
    cr_expect_eq(wk_sparse_fields(&job, &e), CM_ECONFIG);
    job = s_job("ffm", "/nonexistent/x.ffm");
    cr_expect_eq(wk_sparse_fields(&job, &e), CM_EIO);
}

/* A worker's shard keeps the fields: a libffm line with a field past the
 * resolved count is a bad line, and libsvm input is refused. */
Test(ffm, sparse_new_checks_fields, .fini = s_cleanup)
{
    cm_error e = {0};
    cm_job job = s_job("ffm", s_write("t.ffm", "1 0:1:1 1:2:1\n0 0:1:1 2:3:1\n1 1:4:1\n"));
    job.fields = 2;
    job.max_bad_lines = 0;
    wk_sparse *s = wk_sparse_new(&job, 0, 1, 1 + 2 * job.dim, &e);
    cr_expect_null(s, "a field past the count is a bad line, max_bad_lines = 0 stops");
    cr_expect(strstr(e.msg, "t.ffm:2") != NULL, "%s", e.msg);
    job.max_bad_lines = 1;
    s = wk_sparse_new(&job, 0, 1, 1 + 2 * job.dim, &e);
    cr_assert_not_null(s, "%s", e.msg);
    cr_expect_eq(wk_sparse_task(s), CM_TASK_BINARY);
    cm_hello he = {0};
    float load[4] = {0};
    wk_sparse_hello(s, &he, load, 4);
    cr_expect_eq(he.n_train, 2, "two examples kept");
    cr_expect_eq(he.bad_train, 1, "one bad line counted");
    cr_expect_eq(he.task, CM_TASK_BINARY);
    wk_sparse_destroy(&s);
    cr_expect_null(s);

    job = s_job("ffm", s_write("t.svm", "1 1:1\n"));
    job.fields = 2;
    cr_expect_null(wk_sparse_new(&job, 0, 1, 1 + 2 * job.dim, &e));
    cr_expect_eq(e.code, CM_ECONFIG, "%s", e.msg);
    job = s_job("ffm", s_write("r.tsv", "1\t2\t3\n"));
    cr_expect_null(wk_sparse_new(&job, 0, 1, 1 + 2 * job.dim, &e), "fields = 0 not resolved");
    snprintf(job.user_features, sizeof job.user_features, "u.user");
    job.fields = 2;
    cr_expect_null(wk_sparse_new(&job, 0, 1, 1 + 2 * job.dim, &e), "side fields need 4");
    cr_expect(strstr(e.msg, "fields = 2") != NULL, "%s", e.msg);
}

Test(ffm, format_by_content, .fini = s_cleanup)
{
    cm_job job = cm_job_default();
    cr_expect_eq(wk_sparse_format(&job, s_write("a.txt", "# c\n1 0:3:1 1:4:1\n")),
                 CM_FMT_LIBFFM);
    cr_expect_eq(wk_sparse_format(&job, s_write("b.txt", "1 3:1 4:1\n")), CM_FMT_LIBSVM);
    cr_expect_eq(wk_sparse_format(&job, s_write("c.txt", "1 3:1 4:1:2\n")), CM_FMT_LIBSVM,
                 "only the first feature decides");
    cr_expect_eq(wk_sparse_format(&job, s_write("d.txt", "1::2::5\n")), CM_FMT_RATINGS);
    cm_error e = {0};
    cm_job ffm = s_job("ffm", s_write("e.txt", "1 0:3:1 2:4:1\n"));
    cr_expect_eq(wk_sparse_fields(&ffm, &e), 3, "%s", e.msg);
    job.format = CM_FMT_LIBSVM;
    cr_expect_eq(wk_sparse_format(&job, s_write("f.txt", "1 0:3:1\n")), CM_FMT_LIBSVM,
                 "a format set in the job wins");
}
