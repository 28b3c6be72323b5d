/* Tests for common/features: libsvm/libFM, libffm and CSV examples, every
 * kind of bad line, and side features; then the real files in
 * ../shared/data (frappe, heart_scale, Criteo sample, libffm sample,
 * ml-100k u.user / u.item). */
#define _GNU_SOURCE /* nftw, mkdtemp */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/features.h"
#include "common/hash.h"
#include "common/log.h"
#include "tests/helpers.h"
#include "tmpdir.h"

/* ------------------------------------------------------------------------
 * Helpers: a temp dir per test, files in it
 * ------------------------------------------------------------------------ */

static void setup(void)
{
    th_tmpdir_make("features");
}

static void teardown(void)
{
    th_tmpdir_remove();
}

static void setup_quiet(void)
{
    setup();
    cm_log_set_level(CM_LOG_ERROR);
}

static void setup_capture(void)
{
    setup();
    cm_log_set_level(CM_LOG_INFO);
    cr_redirect_stderr();
}

TestSuite(features, .init = setup_quiet, .fini = teardown);

static const char *tpath(const char *name)
{
    return th_path(name);
}

static const char *write_str(const char *name, const char *s)
{
    const char *p = tpath(name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    size_t len = strlen(s);
    cr_assert_eq(fwrite(s, 1, len, f), len);
    fclose(f);
    return p;
}

/* Everything logged so far (after a .init = setup_capture). */
static const char *captured(void)
{
    static char all[16384];
    fflush(stderr);
    FILE *f = cr_get_redirected_stderr();
    size_t len = fread(all, 1, sizeof all - 1, f);
    all[len] = '\0';
    return all;
}

/* Asserts that `log` holds "path:line: what". */
static void expect_logged(const char *log, const char *path, int line, const char *what)
{
    char want[1024];
    snprintf(want, sizeof want, "%s:%d: %s", path, line, what);
    cr_assert_not_null(strstr(log, want), "want '%s' in log:\n%s", want, log);
}

/* Loads a one-bad-line file with max_bad_lines = 0 and checks the error
 * names "path:line: what". */
static void expect_first_bad(int (*load)(const char *, const cm_feat_opts *, cm_examples *,
                                         cm_error *),
                             const char *path, const cm_feat_opts *o, int line, const char *what)
{
    cm_feat_opts opts = *o;
    opts.max_bad_lines = 0;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(load(path, &opts, &ex, &e), CM_ETOOMANY, "%s", path);
    cr_assert_eq(ex.n, 0);
    char want[1024];
    snprintf(want, sizeof want, "first: %s:%d: %s", path, line, what);
    cr_assert_not_null(strstr(e.msg, want), "want '%s' in '%s'", want, e.msg);
}

/* The data folder's file `rel`, or NULL (the test skips). */
static const char *data_path(const char *rel)
{
    static char buf[4][1200];
    static int k;
    const char *dir = th_data_dir();
    if (!dir)
        return NULL;
    char *p = buf[k++ % 4];
    snprintf(p, 1200, "%s/%s", dir, rel);
    return access(p, R_OK) == 0 ? p : NULL;
}

#define NEED_DATA(var, rel)                                                                  \
    const char *var = data_path(rel);                                                        \
    if (!var)                                                                                \
        cr_skip_test("%s: data not found (../shared/data beside the checkout, or $PSREC_DATA)", \
                     rel)

static size_t row_len(const cm_examples *ex, size_t i)
{
    return (size_t)(ex->row_at[i + 1] - ex->row_at[i]);
}

static void check_csr(const cm_examples *ex)
{
    cr_assert_eq(ex->row_at[0], 0);
    cr_assert_eq(ex->row_at[ex->n], ex->nnz);
    for (size_t i = 0; i < ex->n; i++)
        cr_assert_leq(ex->row_at[i], ex->row_at[i + 1]);
}

/* ------------------------------------------------------------------------
 * libsvm / libFM
 * ------------------------------------------------------------------------ */

Test(features, libsvm_basic_crlf_blank_comments)
{
    const char *p = write_str("a.svm", "# a comment\r\n"
                                       "+1 1:0.5 3:2\r\n"
                                       "\r\n"
                                       "  -1 2:1e-1\t7:-3  # trailing comment\r\n"
                                       "0.25\r\n"
                                       "2 18446744073709551615:1");
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libsvm(p, NULL, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 4);
    cr_assert_eq(ex.nnz, 5);
    cr_assert_eq(ex.bad_lines, 0);
    cr_assert_null(ex.field);
    cr_assert_eq(ex.n_fields, 0);
    check_csr(&ex);
    cr_assert_float_eq(ex.label[0], 1.0f, 0);
    cr_assert_float_eq(ex.label[1], -1.0f, 0);
    cr_assert_float_eq(ex.label[2], 0.25f, 0);
    cr_assert_float_eq(ex.label[3], 2.0f, 0);
    cr_assert_eq(row_len(&ex, 0), 2);
    cr_assert_eq(ex.key[0], 1);
    cr_assert_float_eq(ex.val[0], 0.5f, 0);
    cr_assert_eq(ex.key[1], 3);
    cr_assert_eq(ex.key[2], 2);
    cr_assert_float_eq(ex.val[2], 0.1f, 1e-7);
    cr_assert_eq(ex.key[3], 7);
    cr_assert_float_eq(ex.val[3], -3.0f, 0);
    cr_assert_eq(row_len(&ex, 2), 0, "a label alone is an example with no features");
    cr_assert_eq(ex.key[4], UINT64_MAX);
    cm_examples_free(&ex);
    cr_assert_null(ex.key);
    cm_examples_free(&ex); /* twice is fine */
}

Test(features, binary_labels_become_0_1)
{
    const char *p = write_str("b.svm", "+1 1:1\n-1 1:1\n1 1:1\n0 1:1\n1.0 1:1\n-1.0 2:1\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), 0, "%s", e.msg);
    float want[] = {1, 0, 1, 0, 1, 0};
    cr_assert_eq(ex.n, 6);
    for (size_t i = 0; i < 6; i++)
        cr_assert_eq(ex.label[i], want[i], "row %zu", i);
    cm_examples_free(&ex);
}

Test(features, binary_label_2_is_a_bad_line)
{
    const char *p = write_str("b2.svm", "1 1:1\n0 2:1\n2 3:1\n-1 4:1\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 3);
    cr_assert_eq(ex.bad_lines, 1);
    cr_assert_eq(ex.nnz, 3, "the bad line left no features behind");
    cr_assert_eq(ex.key[2], 4);
    cm_examples_free(&ex);
    expect_first_bad(cm_examples_load_libsvm, p, &o, 3,
                     "label '2' is not a binary label (expected -1/+1 or 0/1)");
    /* the same file is fine for regression */
    o.task = CM_TASK_REGRESSION;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 4);
    cr_assert_eq(ex.label[2], 2.0f);
    cm_examples_free(&ex);
}

Test(features, each_malformed_pair_is_reported_with_file_and_line, .init = setup_capture)
{
    const char *p = write_str("bad.svm", "1 1:1\n"          /* 1 ok */
                                         "1 12:\n"          /* 2 */
                                         "1 :3\n"           /* 3 */
                                         "1 a:b\n"          /* 4 */
                                         "1 1:2:3\n"        /* 5 */
                                         "1 4:nan\n"        /* 6 */
                                         "1 4:inf\n"        /* 7 */
                                         "1 qid:3 1:1\n"    /* 8 */
                                         "1 5\n"            /* 9 */
                                         "x 1:1\n"          /* 10 */
                                         "nan 1:1\n"        /* 11 */
                                         "1 7:1e99\n"       /* 12 */
                                         "1 99999999999999999999:1\n" /* 13 */
                                         "1 -3:1\n"         /* 14 */
                                         "1 3:0x10\n"       /* 15 */
                                         "-1 2:1\n");       /* 16 ok */
    cm_feat_opts o = cm_feat_opts_default();
    o.max_bad_lines = -1;
    o.log_bad_lines = 100;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 2);
    cr_assert_eq(ex.bad_lines, 14);
    cr_assert_eq(ex.nnz, 2);
    cm_examples_free(&ex);
    const char *log = captured();
    expect_logged(log, p, 2, "missing value in '12:'");
    expect_logged(log, p, 3, "missing index in ':3'");
    expect_logged(log, p, 4, "index 'a' in 'a:b' is not a non-negative integer");
    expect_logged(log, p, 5, "malformed feature '1:2:3' (expected idx:val; field:idx:val is libffm");
    expect_logged(log, p, 6, "value 'nan' in '4:nan' is not a finite number");
    expect_logged(log, p, 7, "value 'inf' in '4:inf' is not a finite number");
    expect_logged(log, p, 8, "'qid:3': ranking query ids (qid:) are not supported");
    expect_logged(log, p, 9, "malformed feature '5' (expected idx:val)");
    expect_logged(log, p, 10, "expected a numeric label, got 'x'");
    expect_logged(log, p, 11, "label 'nan' is not a finite number");
    expect_logged(log, p, 12, "value '1e99' in '7:1e99' is not a finite number");
    expect_logged(log, p, 13, "index '99999999999999999999' does not fit in 64 bits");
    expect_logged(log, p, 14, "index '-3' in '-3:1' is not a non-negative integer");
    expect_logged(log, p, 15, "value '0x10' in '3:0x10' is not a number");
    char sum[700];
    snprintf(sum, sizeof sum, "%s: skipped 14 bad lines of 16", p);
    cr_assert_not_null(strstr(log, sum), "%s", log);
}

Test(features, max_bad_lines_stops_the_load)
{
    const char *p = write_str("many.svm", "1 1:1\n1 x\n1 y\n1 2:1\n1 z\n1 3:1\n");
    cm_feat_opts o = cm_feat_opts_default();
    cm_examples ex;
    cm_error e;
    o.max_bad_lines = 2;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), CM_ETOOMANY);
    cr_assert_eq(ex.n, 0);
    cr_assert_null(ex.key);
    char want[700];
    snprintf(want, sizeof want, "%s: too many bad lines (more than max_bad_lines=2, stopped at "
             "line 5); first: %s:2: malformed feature 'x'", p, p);
    cr_assert_not_null(strstr(e.msg, want), "%s", e.msg);
    o.max_bad_lines = 3;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 3);
    cr_assert_eq(ex.bad_lines, 3);
    cm_examples_free(&ex);
    o.max_bad_lines = -1;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.bad_lines, 3);
    cm_examples_free(&ex);
}

Test(features, max_index_bounds_a_fixed_table)
{
    const char *p = write_str("idx.svm", "1 5:1 99999:1\n0 123456:1\n1 100000:2\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.max_index = 100000;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 1);
    cr_assert_eq(ex.bad_lines, 2);
    cm_examples_free(&ex);
    expect_first_bad(cm_examples_load_libsvm, p, &o, 2,
                     "feature index 123456 out of range (table has 100000 rows)");
    o.max_index = 0;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 3);
    cm_examples_free(&ex);
}

Test(features, empty_missing_and_binary_files_fail)
{
    cm_examples ex;
    cm_error e;
    const char *p = write_str("empty.svm", "");
    cr_assert_eq(cm_examples_load_libsvm(p, NULL, &ex, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "no data rows"), "%s", e.msg);
    p = write_str("comments.svm", "# only\n\n  \r\n");
    cr_assert_eq(cm_examples_load_libsvm(p, NULL, &ex, &e), CM_EPARSE);
    p = write_str("allbad.svm", "1 x\n");
    cr_assert_eq(cm_examples_load_libsvm(p, NULL, &ex, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "1 bad line; first:"), "%s", e.msg);
    cr_assert_eq(cm_examples_load_libsvm(tpath("nope.svm"), NULL, &ex, &e), CM_EIO);
    cr_assert_not_null(strstr(e.msg, "nope.svm"), "%s", e.msg);
    cr_assert_eq(cm_examples_load_libsvm(th_dir, NULL, &ex, &e), CM_EIO);
    const char bin[] = "PSRECDS1\0\0\0\0";
    FILE *f = fopen(tpath("bin.svm"), "wb");
    fwrite(bin, 1, sizeof bin, f);
    fclose(f);
    cr_assert_eq(cm_examples_load_libsvm(tpath("bin.svm"), NULL, &ex, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "binary data"), "%s", e.msg);
    cm_feat_opts o = cm_feat_opts_default();
    o.task = 7;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), CM_EINVAL);
}

/* ------------------------------------------------------------------------
 * libffm
 * ------------------------------------------------------------------------ */

Test(features, libffm_basic)
{
    const char *p = write_str("a.ffm", "1 0:10:0.5 1:20:1 2:30:1\r\n"
                                       "0 0:10:1 2:31:0.25\r\n"  /* fewer fields: fine */
                                       "1 1:10:2\r\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libffm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 3);
    cr_assert_eq(ex.nnz, 6);
    cr_assert_eq(ex.n_fields, 3);
    cr_assert_not_null(ex.field);
    check_csr(&ex);
    uint64_t keys[] = {10, 20, 30, 10, 31, 10};
    uint32_t fields[] = {0, 1, 2, 0, 2, 1};
    float vals[] = {0.5f, 1, 1, 1, 0.25f, 2};
    for (size_t i = 0; i < 6; i++) {
        cr_assert_eq(ex.key[i], keys[i], "%zu", i);
        cr_assert_eq(ex.field[i], fields[i], "%zu", i);
        cr_assert_eq(ex.val[i], vals[i], "%zu", i);
    }
    cr_assert_eq(ex.label[1], 0.0f);
    cm_examples_free(&ex);
}

Test(features, libffm_field_count_change_is_a_bad_line, .init = setup_capture)
{
    const char *p = write_str("chg.ffm", "1 0:1:1 1:2:1\n"
                                         "0 0:1:1 1:2:1 2:3:1\n"   /* 2: a new field */
                                         "1 0:5:1\n"
                                         "1 1:2\n"                 /* 4: libsvm pair */
                                         "1 :1:1\n"                /* 5 */
                                         "1 x:1:1\n"               /* 6 */
                                         "1 0:1:1:1\n"             /* 7 */
                                         "1 1:9:1\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.log_bad_lines = 100;
    o.max_bad_lines = -1;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libffm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 3);
    cr_assert_eq(ex.bad_lines, 5);
    cr_assert_eq(ex.n_fields, 2);
    cm_examples_free(&ex);
    const char *log = captured();
    expect_logged(log, p, 2, "field 2 in '2:3:1' but line 1 set 2 fields (0..1); the field "
                             "count must not change between lines");
    expect_logged(log, p, 4, "malformed feature '1:2' (expected field:idx:val, got no field)");
    expect_logged(log, p, 5, "missing field in ':1:1'");
    expect_logged(log, p, 6, "field 'x' in 'x:1:1' is not a non-negative integer");
    expect_logged(log, p, 7, "malformed feature '0:1:1:1' (expected field:idx:val)");

    /* a fixed count from the options (e.g. the training set's) */
    o.n_fields = 3;
    cr_assert_eq(cm_examples_load_libffm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 4);
    cr_assert_eq(ex.n_fields, 3);
    cm_examples_free(&ex);
    o.n_fields = 1;
    expect_first_bad(cm_examples_load_libffm, p, &o, 1,
                     "field 1 in '1:2:1' out of range (n_fields = 1)");
}

/* ffm's case: the field count is fixed (the launcher read it from the
 * training file) and every line past it is a bad line, named, counted, and
 * subject to max_bad_lines; binary labels outside the domain likewise. */
Test(features, libffm_fixed_field_count_counts_and_stops, .init = setup_capture)
{
    const char *p = write_str("fix.ffm", "1 0:1:1 1:2:1\n"
                                         "0 0:1:1 3:3:1\n"       /* 2: field 3 >= 2 */
                                         "1 1:5:1\n"
                                         "2 0:1:1\n"             /* 4: label 2 */
                                         "1 2:9:1 0:1:1\n"       /* 5: field 2 >= 2 */
                                         "0 1:4:1 0:3:2\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.n_fields = 2;
    o.task = CM_TASK_BINARY;
    o.log_bad_lines = 100;
    o.max_bad_lines = 3;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libffm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_expect_eq(ex.n, 3);
    cr_expect_eq(ex.bad_lines, 3);
    cr_expect_eq(ex.n_fields, 2);
    for (size_t a = 0; a < ex.nnz; a++)
        cr_expect_lt(ex.field[a], 2u);
    cm_examples_free(&ex);
    const char *log = captured();
    expect_logged(log, p, 2, "field 3 in '3:3:1' out of range (n_fields = 2)");
    expect_logged(log, p, 4, "label '2' is not a binary label");
    expect_logged(log, p, 5, "field 2 in '2:9:1' out of range (n_fields = 2)");
    o.max_bad_lines = 2;
    cr_assert_eq(cm_examples_load_libffm(p, &o, &ex, &e), CM_ETOOMANY);
    char want[700];
    snprintf(want, sizeof want, "stopped at line 5); first: %s:2: field 3", p);
    cr_expect_not_null(strstr(e.msg, want), "%s", e.msg);
}

Test(features, libffm_max_index)
{
    const char *p = write_str("mi.ffm", "1 0:7:1\n1 0:8:1\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.max_index = 8;
    expect_first_bad(cm_examples_load_libffm, p, &o, 2,
                     "feature index 8 out of range (table has 8 rows)");
}

/* ------------------------------------------------------------------------
 * CSV
 * ------------------------------------------------------------------------ */

static const char *const s_num2[] = {"age", "score"};
static const char *const s_cat2[] = {"city", "device"};

static cm_csv_spec spec2(void)
{
    cm_csv_spec s = {.label_column = "y",
                     .numeric = s_num2,
                     .n_numeric = 2,
                     .categorical = s_cat2,
                     .n_categorical = 2};
    return s;
}

static int load_csv2(const char *p, const cm_feat_opts *o, cm_examples *ex, cm_error *e)
{
    cm_csv_spec s = spec2();
    return cm_examples_load_csv(p, &s, o, ex, e);
}

Test(features, csv_named_columns)
{
    const char *p = write_str("a.csv", "id,city,y,age,device,score,unused\r\n"
                                       "1,paris,1,31,ios,0.5,zz\r\n"
                                       "2,,0,,android,,\r\n"
                                       "3,\"New York, NY\",1,40,\"a \"\"b\"\"\",-2,x\r\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(load_csv2(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 3);
    cr_assert_eq(ex.n_fields, 4);
    check_csr(&ex);
    cr_assert_eq(row_len(&ex, 0), 4);
    cr_assert_eq(row_len(&ex, 1), 1, "empty fields are absent");
    cr_assert_eq(row_len(&ex, 2), 4);
    /* row 0 in file column order: city, age, device, score */
    cr_assert_eq(ex.key[0], cm_feat_key_categorical("city", "paris", 5));
    cr_assert_eq(ex.field[0], 2);
    cr_assert_eq(ex.val[0], 1.0f);
    cr_assert_eq(ex.key[1], cm_feat_key_numeric("age"));
    cr_assert_eq(ex.field[1], 0);
    cr_assert_eq(ex.val[1], 31.0f);
    cr_assert_eq(ex.key[2], cm_feat_key_categorical("device", "ios", 3));
    cr_assert_eq(ex.field[2], 3);
    cr_assert_eq(ex.key[3], cm_feat_key_numeric("score"));
    cr_assert_eq(ex.field[3], 1);
    cr_assert_eq(ex.val[3], 0.5f);
    cr_assert_eq(ex.key[4], cm_feat_key_categorical("device", "android", 7));
    /* quoted: separator inside, doubled quotes */
    size_t r2 = ex.row_at[2];
    cr_assert_eq(ex.key[r2], cm_feat_key_categorical("city", "New York, NY", 12));
    cr_assert_eq(ex.key[r2 + 2], cm_feat_key_categorical("device", "a \"b\"", 5));
    cr_assert_eq(ex.val[r2 + 3], -2.0f);
    cr_assert_neq(cm_feat_key_categorical("city", "x", 1),
                  cm_feat_key_categorical("device", "x", 1), "columns keep strings apart");
    cr_assert_eq(ex.label[0], 1.0f);
    cr_assert_eq(ex.label[1], 0.0f);
    cm_examples_free(&ex);
}

/* numeric_log: raw counts become sign(x) ln(1 + |x|); categoricals keep 1. */
Test(features, csv_numeric_log)
{
    const char *p = write_str("l.csv", "y,age,score,city,device\n"
                                       "1,0,-3,paris,ios\n"
                                       "0,1000,2.5,rome,ios\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    cm_csv_spec s = spec2();
    s.numeric_log = 1;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_csv(p, &s, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 2);
    cr_assert_eq(ex.nnz, 8);
    const float want[2][2] = {{0.0f, -logf(4.0f)}, {logf(1001.0f), logf(3.5f)}};
    for (size_t i = 0; i < 2; i++)
        for (size_t j = ex.row_at[i]; j < ex.row_at[i + 1]; j++) {
            if (ex.field[j] >= 2) {
                cr_expect_eq(ex.val[j], 1.0f, "categorical value");
                continue;
            }
            cr_expect_float_eq(ex.val[j], want[i][ex.field[j]], 1e-5f,
                               "row %zu field %u: %g", i, ex.field[j], ex.val[j]);
        }
    cm_examples_free(&ex);
}

Test(features, csv_tabs_and_max_index_folding)
{
    const char *p = write_str("a.tsv", "y\tage\tscore\tcity\tdevice\n"
                                       "-1\t1\t2\tparis\tios\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    o.max_index = 1000;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(load_csv2(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 1);
    cr_assert_eq(ex.nnz, 4);
    cr_assert_eq(ex.label[0], 0.0f);
    cr_assert_eq(ex.key[0], cm_feat_key_numeric("age") % 1000);
    cr_assert_eq(ex.key[2], cm_feat_key_categorical("city", "paris", 5) % 1000);
    for (size_t i = 0; i < ex.nnz; i++)
        cr_assert_lt(ex.key[i], 1000);
    cm_examples_free(&ex);
}

Test(features, csv_bad_lines, .init = setup_capture)
{
    const char *p = write_str("bad.csv", "y,age,score,city,device\n"
                                         "1,1,2,a,b\n"       /* 1 ok (line 2) */
                                         "1,1,2,a\n"         /* 3: too few */
                                         "1,x,2,a,b\n"       /* 4: bad number */
                                         "2,1,2,a,b\n"       /* 5: label */
                                         ",1,2,a,b\n"        /* 6: empty label */
                                         "1,1,nan,a,b\n"     /* 7 */
                                         "1,1,2,\"a,b\n"     /* 8: quote */
                                         "0,1,2,a,b\n");
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    o.log_bad_lines = 100;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(load_csv2(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 2);
    cr_assert_eq(ex.bad_lines, 6);
    cr_assert_eq(ex.nnz, 8);
    cm_examples_free(&ex);
    const char *log = captured();
    expect_logged(log, p, 3, "expected 5 fields (as in the header), got 4");
    expect_logged(log, p, 4, "column age: expected a number, got 'x'");
    expect_logged(log, p, 5, "label '2' is not a binary label (expected -1/+1 or 0/1)");
    expect_logged(log, p, 6, "empty label (column y)");
    expect_logged(log, p, 7, "column score: expected a finite number, got 'nan'");
    expect_logged(log, p, 8, "unterminated quote");
}

Test(features, csv_missing_columns_and_header)
{
    cm_examples ex;
    cm_error e;
    const char *p = write_str("nocol.csv", "y,age,score,city\n1,1,2,a\n");
    cr_assert_eq(load_csv2(p, NULL, &ex, &e), CM_EPARSE);
    char want[600];
    snprintf(want, sizeof want, "%s:1: no categorical column 'device' in the header", p);
    cr_assert_not_null(strstr(e.msg, want), "%s", e.msg);
    p = write_str("nolabel.csv", "\n\nlabel,age,score,city,device\n1,1,2,a,b\n");
    cr_assert_eq(load_csv2(p, NULL, &ex, &e), CM_EPARSE);
    snprintf(want, sizeof want, "%s:3: no label column 'y' in the header", p);
    cr_assert_not_null(strstr(e.msg, want), "%s", e.msg);
    /* no label column asked for: labels are 0 */
    cm_csv_spec s = spec2();
    s.label_column = NULL;
    cr_assert_eq(cm_examples_load_csv(p, &s, NULL, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 1);
    cr_assert_eq(ex.label[0], 0.0f);
    cm_examples_free(&ex);
    p = write_str("empty.csv", "");
    cr_assert_eq(load_csv2(p, NULL, &ex, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "no header line"), "%s", e.msg);
    p = write_str("hdronly.csv", "y,age,score,city,device\r\n");
    cr_assert_eq(load_csv2(p, NULL, &ex, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "no data rows"), "%s", e.msg);
    s.sep = ';';
    cr_assert_eq(cm_examples_load_csv(p, &s, NULL, &ex, &e), CM_EINVAL);
    static const char *const twice[] = {"age", "age"};
    s = spec2();
    s.numeric = twice;
    cr_assert_eq(cm_examples_load_csv(p, &s, NULL, &ex, &e), CM_EINVAL);
    cr_assert_not_null(strstr(e.msg, "column 'age' is named twice"), "%s", e.msg);
    s = spec2();
    s.label_column = "city";
    cr_assert_eq(cm_examples_load_csv(p, &s, NULL, &ex, &e), CM_EINVAL);
    cr_assert_not_null(strstr(e.msg, "both the label and a feature"), "%s", e.msg);
}

/* ------------------------------------------------------------------------
 * Side features
 * ------------------------------------------------------------------------ */

static cm_side_spec small_spec(void)
{
    cm_side_spec s;
    memset(&s, 0, sizeof s);
    s.name = "test.user";
    s.sep = '|';
    s.n_cols = 3;
    s.cols[0] = (cm_side_col){.first = 1, .last = 1, .kind = CM_SIDE_BUCKET, .width = 10};
    s.cols[1] = (cm_side_col){.first = 2, .last = 2, .kind = CM_SIDE_CAT};
    s.cols[2] = (cm_side_col){.first = 3, .last = 5, .kind = CM_SIDE_FLAGS};
    return s;
}

Test(features, side_small_file)
{
    const char *p = write_str("side.txt", "7|24|M|0|1|1\r\n"
                                          "alice|-5||0|0|0|extra\r\n"
                                          "9|x|F|0|0|0\n"      /* bad number */
                                          "10|30|F|0|2|0\n"    /* bad flag */
                                          "7|1|M|0|0|0\n"      /* duplicate */
                                          "11|3\n");           /* too few */
    cm_side_spec s = small_spec();
    cm_feat_opts o = cm_feat_opts_default();
    cm_side *side;
    cm_error e;
    cr_assert_eq(cm_side_load(p, &s, &o, &side, &e), 0, "%s", e.msg);
    cr_assert_eq(cm_side_size(side), 2);
    cr_assert_eq(cm_side_bad_lines(side), 4);
    cr_assert_eq(cm_side_max_keys(side), 4);
    const uint64_t *k;
    size_t n;
    cr_assert_eq(cm_side_features(side, 7, &k, &n), 1);
    cr_assert_eq(n, 4);
    cr_assert_eq(k[0], cm_side_key_bucket(&s, 1, 2));
    cr_assert_eq(k[1], cm_side_key_cat(&s, 2, "M", 1));
    cr_assert_eq(k[2], cm_side_key_flag(&s, 4));
    cr_assert_eq(k[3], cm_side_key_flag(&s, 5));
    /* string ids hash like dataset.c ids; floor() buckets negatives down */
    cr_assert_eq(cm_side_features(side, cm_hash_bytes("alice", 5, 0), &k, &n), 1);
    cr_assert_eq(n, 1);
    cr_assert_eq(k[0], cm_side_key_bucket(&s, 1, -1));
    cr_assert_eq(cm_side_features(side, 9, &k, &n), 0);
    cr_assert_null(k);
    cr_assert_eq(n, 0);
    cr_assert_eq(cm_side_features(side, 12345, &k, &n), 0);
    cm_side_destroy(&side);
    cr_assert_null(side);
    cm_side_destroy(&side);

    /* the namespace keeps user and item keys apart */
    cm_side_spec s2 = s;
    s2.name = "test.item";
    cr_assert_neq(cm_side_key_flag(&s, 4), cm_side_key_flag(&s2, 4));

    o.max_bad_lines = 1;
    cr_assert_eq(cm_side_load(p, &s, &o, &side, &e), CM_ETOOMANY);
    cr_assert_null(side);
    char want[700];
    snprintf(want, sizeof want, "first: %s:3: column 1: expected a number, got 'x'", p);
    cr_assert_not_null(strstr(e.msg, want), "%s", e.msg);
    o.max_bad_lines = 10;
    o.log_bad_lines = 0;
    s.n_columns = 6;
    cr_assert_eq(cm_side_load(p, &s, &o, &side, &e), 0, "%s", e.msg);
    cr_assert_eq(cm_side_size(side), 1, "'alice' has 7 columns");
    cm_side_destroy(&side);
}

Test(features, side_bad_specs)
{
    const char *p = write_str("s.txt", "1|2\n");
    cm_side *side;
    cm_error e;
    cm_side_spec s = small_spec();
    s.cols[0].width = 0;
    cr_assert_eq(cm_side_load(p, &s, NULL, &side, &e), CM_EINVAL);
    s = small_spec();
    s.cols[1].first = 0;
    cr_assert_eq(cm_side_load(p, &s, NULL, &side, &e), CM_EINVAL);
    s = small_spec();
    s.cols[2].kind = 99;
    cr_assert_eq(cm_side_load(p, &s, NULL, &side, &e), CM_EINVAL);
    s = small_spec();
    s.n_columns = 3;
    cr_assert_eq(cm_side_load(p, &s, NULL, &side, &e), CM_EINVAL);
    s = small_spec();
    s.sep = 0;
    cr_assert_eq(cm_side_load(p, &s, NULL, &side, &e), CM_EINVAL);
    s = small_spec();
    cr_assert_eq(cm_side_load(tpath("none"), &s, NULL, &side, &e), CM_EIO);
    cr_assert_null(side);
}

/* ------------------------------------------------------------------------
 * The real files
 * ------------------------------------------------------------------------ */

static void check_frappe(const char *p, size_t rows, size_t positives)
{
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    o.max_bad_lines = 0;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, rows);
    cr_assert_eq(ex.nnz, rows * 10);
    cr_assert_eq(ex.bad_lines, 0);
    size_t pos = 0;
    for (size_t i = 0; i < ex.n; i++) {
        cr_assert_eq(row_len(&ex, i), 10, "row %zu", i);
        pos += ex.label[i] == 1.0f;
        cr_assert(ex.label[i] == 0.0f || ex.label[i] == 1.0f);
    }
    for (size_t j = 0; j < ex.nnz; j++) {
        cr_assert_eq(ex.val[j], 1.0f);
        cr_assert_lt(ex.key[j], 5382); /* frappe has 5382 features */
    }
    cr_assert_eq(pos, positives);
    cm_examples_free(&ex);
}

Test(features, real_frappe)
{
    NEED_DATA(v, "frappe/frappe.validation.libfm");
    NEED_DATA(t, "frappe/frappe.test.libfm");
    check_frappe(v, 57722, 19063);
    check_frappe(t, 28860, 9536);
    /* first line of validation: "1 266:1 1244:1 5042:1 ..." */
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libsvm(v, NULL, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.label[0], 1.0f);
    cr_assert_eq(ex.label[1], -1.0f, "regression keeps the labels as written");
    uint64_t k0[] = {266, 1244, 5042, 5049, 5054, 5055, 5058, 5062, 5074, 5149};
    for (int j = 0; j < 10; j++)
        cr_assert_eq(ex.key[j], k0[j]);
    cm_examples_free(&ex);
}

Test(features, real_heart_scale)
{
    NEED_DATA(p, "heart_scale/heart_scale");
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    o.max_index = 14;
    o.max_bad_lines = 0;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_libsvm(p, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 270);
    cr_assert_eq(ex.nnz, 3378);
    size_t pos = 0, maxlen = 0;
    for (size_t i = 0; i < ex.n; i++) {
        pos += ex.label[i] == 1.0f;
        maxlen = row_len(&ex, i) > maxlen ? row_len(&ex, i) : maxlen;
    }
    cr_assert_eq(pos, 120);
    cr_assert_eq(maxlen, 13);
    uint64_t mx = 0;
    for (size_t j = 0; j < ex.nnz; j++)
        mx = ex.key[j] > mx ? ex.key[j] : mx;
    cr_assert_eq(mx, 13);
    /* "+1 1:0.708333 2:1 3:1 4:-0.320755 ..." */
    cr_assert_float_eq(ex.val[0], 0.708333f, 1e-7);
    cr_assert_float_eq(ex.val[3], -0.320755f, 1e-7);
    cm_examples_free(&ex);
}

static const char *const s_criteo_num[] = {"I1", "I2", "I3", "I4",  "I5",  "I6", "I7",
                                           "I8", "I9", "I10", "I11", "I12", "I13"};
static const char *const s_criteo_cat[] = {
    "C1",  "C2",  "C3",  "C4",  "C5",  "C6",  "C7",  "C8",  "C9",  "C10", "C11", "C12", "C13",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21", "C22", "C23", "C24", "C25", "C26"};

static cm_csv_spec criteo_spec(void)
{
    cm_csv_spec s = {.label_column = "Label",
                     .numeric = s_criteo_num,
                     .n_numeric = 13,
                     .categorical = s_criteo_cat,
                     .n_categorical = 26};
    return s;
}

Test(features, real_criteo_csv)
{
    NEED_DATA(tr, "criteo-tiny/train.tiny.csv");
    NEED_DATA(te, "criteo-tiny/test.tiny.csv");
    cm_csv_spec s = criteo_spec();
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    o.max_bad_lines = 0;
    cm_examples ex;
    cm_error e;
    cr_assert_eq(cm_examples_load_csv(tr, &s, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 1999);
    cr_assert_eq(ex.n_fields, 39);
    cr_assert_eq(ex.nnz, 66335, "every non-empty I and C field, nothing else");
    check_csr(&ex);
    size_t pos = 0, numeric = 0;
    for (size_t i = 0; i < ex.n; i++)
        pos += ex.label[i] == 1.0f;
    for (size_t j = 0; j < ex.nnz; j++)
        numeric += ex.field[j] < 13;
    cr_assert_eq(pos, 418);
    cr_assert_eq(numeric, 20499);
    /* row 0: 10000000,0,1,1,5,0,1382,4,15,2,181,1,2,,2,68fd1e64,...,07b5194c,,3a171ecb,
     * c5c50484,e8b83407,9727dd16 (I12 and C22 empty; CRLF) */
    cr_assert_eq(ex.label[0], 0.0f);
    cr_assert_eq(row_len(&ex, 0), 37);
    float inum[] = {1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, 2};
    const char *in[] = {"I1", "I2", "I3", "I4", "I5", "I6", "I7", "I8", "I9", "I10", "I11", "I13"};
    for (int j = 0; j < 12; j++) {
        cr_assert_eq(ex.key[j], cm_feat_key_numeric(in[j]), "%s", in[j]);
        cr_assert_eq(ex.val[j], inum[j], "%s", in[j]);
    }
    cr_assert_eq(ex.field[11], 12, "I13 is field 12 (I12 absent)");
    cr_assert_eq(ex.key[12], cm_feat_key_categorical("C1", "68fd1e64", 8));
    cr_assert_eq(ex.field[12], 13);
    cr_assert_eq(ex.key[32], cm_feat_key_categorical("C21", "07b5194c", 8));
    cr_assert_eq(ex.key[33], cm_feat_key_categorical("C23", "3a171ecb", 8));
    cr_assert_eq(ex.field[33], 13 + 22);
    cr_assert_eq(ex.key[36], cm_feat_key_categorical("C26", "9727dd16", 8),
                 "no '\\r' in the last field");
    cm_examples_free(&ex);

    cr_assert_eq(cm_examples_load_csv(te, &s, &o, &ex, &e), 0, "%s", e.msg);
    cr_assert_eq(ex.n, 1999);
    cr_assert_eq(ex.nnz, 66571);
    for (size_t i = 0; i < ex.n; i++)
        cr_assert_eq(ex.label[i], 0.0f);
    cm_examples_free(&ex);
}

Test(features, real_libffm_bigdata)
{
    NEED_DATA(tr, "criteo-tiny/libffm-bigdata/bigdata.tr.txt");
    NEED_DATA(te, "criteo-tiny/libffm-bigdata/bigdata.te.txt");
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    o.max_bad_lines = 0;
    cm_examples a, b;
    cm_error e;
    cr_assert_eq(cm_examples_load_libffm(tr, &o, &a, &e), 0, "%s", e.msg);
    cr_assert_eq(a.n, 200);
    cr_assert_eq(a.nnz, 3508);
    cr_assert_eq(a.n_fields, 18);
    /* "1 0:0:0.3651 2:1163:0.3651 ..." */
    cr_assert_eq(a.label[0], 1.0f);
    cr_assert_eq(a.field[0], 0);
    cr_assert_eq(a.key[0], 0);
    cr_assert_float_eq(a.val[0], 0.3651f, 1e-7);
    cr_assert_eq(a.field[1], 2);
    cr_assert_eq(a.key[1], 1163);
    size_t pos = 0;
    for (size_t i = 0; i < a.n; i++)
        pos += a.label[i] == 1.0f;
    cr_assert_eq(pos, 48);
    /* the test set is read with the training set's field count; its lines
     * that lack fields 16 and 17 are fine */
    o.n_fields = a.n_fields;
    cr_assert_eq(cm_examples_load_libffm(te, &o, &b, &e), 0, "%s", e.msg);
    cr_assert_eq(b.n, 200);
    cr_assert_eq(b.nnz, 3500);
    cr_assert_eq(b.n_fields, 18);
    for (size_t j = 0; j < b.nnz; j++)
        cr_assert_lt(b.field[j], 18);
    cm_examples_free(&a);
    cm_examples_free(&b);
}

Test(features, real_ml100k_side_features)
{
    NEED_DATA(up, "ml-100k/u.user");
    NEED_DATA(ip, "ml-100k/u.item");
    cm_feat_opts o = cm_feat_opts_default();
    o.max_bad_lines = 0;
    cm_side_spec us = cm_side_spec_ml100k_user(), is = cm_side_spec_ml100k_item();
    cm_side *users, *items;
    cm_error e;
    cr_assert_eq(cm_side_load(up, &us, &o, &users, &e), 0, "%s", e.msg);
    cr_assert_eq(cm_side_load(ip, &is, &o, &items, &e), 0, "%s", e.msg);
    cr_assert_eq(cm_side_size(users), 943);
    cr_assert_eq(cm_side_size(items), 1682);
    cr_assert_eq(cm_side_max_keys(users), 3);
    cr_assert_eq(cm_side_max_keys(items), 6);

    /* 1|24|M|technician|85711 */
    const uint64_t *k;
    size_t n;
    cr_assert_eq(cm_side_features(users, 1, &k, &n), 1);
    cr_assert_eq(n, 3);
    cr_assert_eq(k[0], cm_side_key_bucket(&us, 1, 2));
    cr_assert_eq(k[1], cm_side_key_cat(&us, 2, "M", 1));
    cr_assert_eq(k[2], cm_side_key_cat(&us, 3, "technician", 10));
    /* 2|53|F|other|94043 */
    cr_assert_eq(cm_side_features(users, 2, &k, &n), 1);
    cr_assert_eq(k[0], cm_side_key_bucket(&us, 1, 5));
    cr_assert_eq(k[1], cm_side_key_cat(&us, 2, "F", 1));
    cr_assert_eq(cm_side_features(users, 944, &k, &n), 0);
    cr_assert_eq(n, 0);
    /* 27 technicians share the occupation key */
    size_t tech = 0;
    uint64_t tk = cm_side_key_cat(&us, 3, "technician", 10);
    for (uint64_t u = 1; u <= 943; u++) {
        cr_assert_eq(cm_side_features(users, u, &k, &n), 1);
        cr_assert_eq(n, 3);
        tech += k[2] == tk;
    }
    cr_assert_eq(tech, 27);

    /* 1|Toy Story (1995)|...|0|0|0|1|1|1|0...: Animation, Children's, Comedy */
    cr_assert_eq(cm_side_features(items, 1, &k, &n), 1);
    cr_assert_eq(n, 3);
    cr_assert_eq(k[0], cm_side_key_flag(&is, 5 + 3));
    cr_assert_eq(k[1], cm_side_key_flag(&is, 5 + 4));
    cr_assert_eq(k[2], cm_side_key_flag(&is, 5 + 5));
    /* 267|unknown||||1|0...: genre "unknown" only, empty date and url */
    cr_assert_eq(cm_side_features(items, 267, &k, &n), 1);
    cr_assert_eq(n, 1);
    cr_assert_eq(k[0], cm_side_key_flag(&is, 5));
    size_t flags = 0;
    for (uint64_t i = 1; i <= 1682; i++) {
        cr_assert_eq(cm_side_features(items, i, &k, &n), 1);
        flags += n;
    }
    cr_assert_eq(flags, 833 * 1 + 569 * 2 + 215 * 3 + 51 * 4 + 11 * 5 + 3 * 6);
    cm_side_destroy(&users);
    cm_side_destroy(&items);
}
