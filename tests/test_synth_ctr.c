/* Tests for common/synth_ctr (psrec gen --ctr): determinism, the three
 * formats read back by psrec's own loaders and agreeing line by line, the
 * click rate, the Bayes AUC as a ceiling a model fitted on the data does
 * not pass, popularity skew, parameter checks and the command line. */
#define _GNU_SOURCE /* nftw, mkdtemp */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/features.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/synth_ctr.h"
#include "tmpdir.h"

static void setup(void)
{
    th_tmpdir_make("synth_ctr");
    cm_log_set_level(CM_LOG_ERROR);
}

static void teardown(void)
{
    th_tmpdir_remove();
}

TestSuite(synth_ctr, .init = setup, .fini = teardown);

/* Small enough for a test, with numeric fields and a skewed vocabulary. */
static cm_synth_ctr_params small(void)
{
    cm_synth_ctr_params p = cm_synth_ctr_params_default();
    p.n_lines = 20000;
    p.n_fields = 8;
    p.n_numeric = 2;
    p.features = 3000;
    p.rank = 4;
    p.seed = 7;
    return p;
}

static void write_ok(const cm_synth_ctr_params *p, const char *name, cm_synth_ctr_report *rep)
{
    cm_error e = {0};
    cr_assert_eq(cm_synth_ctr_write(p, th_path(name), rep, &e), 0, "%s", e.msg);
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    cr_assert_not_null(b);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static int same_file(const char *a, const char *b)
{
    size_t na, nb;
    unsigned char *x = slurp(a, &na), *y = slurp(b, &nb);
    int same = na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

static cm_feat_opts binary_opts(void)
{
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    o.max_bad_lines = 0;
    return o;
}

/* The CSV spec of a file with nnum numeric and ncat categorical columns. */
typedef struct {
    char names[64][16];
    const char *num[64], *cat[64];
    cm_csv_spec spec;
} csv_cols;

static void csv_spec(csv_cols *c, int nnum, int ncat)
{
    for (int j = 0; j < nnum; j++) {
        snprintf(c->names[j], sizeof c->names[j], "I%d", j + 1);
        c->num[j] = c->names[j];
    }
    for (int j = 0; j < ncat; j++) {
        snprintf(c->names[nnum + j], sizeof c->names[0], "C%d", j + 1);
        c->cat[j] = c->names[nnum + j];
    }
    c->spec = (cm_csv_spec){.label_column = "label", .numeric = c->num, .n_numeric = (size_t)nnum,
                            .categorical = c->cat, .n_categorical = (size_t)ncat};
}

Test(synth_ctr, same_seed_same_bytes_other_seed_other_bytes)
{
    cm_synth_ctr_params p = small();
    cm_synth_ctr_report a, b, c;
    write_ok(&p, "a", &a);
    write_ok(&p, "b", &b);
    p.seed = 8;
    write_ok(&p, "c", &c);
    for (int f = 0; f < 3; f++) {
        cr_assert(same_file(a.train_path[f], b.train_path[f]), "%s", a.train_path[f]);
        cr_assert(same_file(a.test_path[f], b.test_path[f]), "%s", a.test_path[f]);
        cr_assert_not(same_file(a.train_path[f], c.train_path[f]), "%s", c.train_path[f]);
    }
    cr_assert_eq(a.bayes_auc, b.bayes_auc);
    cr_assert_eq(a.clicks_test, b.clicks_test);
}

Test(synth_ctr, every_format_reads_back_and_agrees_line_by_line)
{
    cm_synth_ctr_params p = small();
    cm_synth_ctr_report rep;
    write_ok(&p, "agree", &rep);
    cr_assert_eq(rep.n_train + rep.n_test, p.n_lines);
    cr_assert_gt(rep.n_test, 0);
    cm_feat_opts o = binary_opts();
    csv_cols cols;
    csv_spec(&cols, p.n_numeric, p.n_fields - p.n_numeric);
    cm_error e;
    for (int split = 0; split < 2; split++) {
        const char *svm = split ? rep.test_path[0] : rep.train_path[0];
        const char *ffm = split ? rep.test_path[1] : rep.train_path[1];
        const char *csv = split ? rep.test_path[2] : rep.train_path[2];
        uint64_t lines = split ? rep.n_test : rep.n_train;
        uint64_t clicks = split ? rep.clicks_test : rep.clicks_train;
        cm_examples a, b, c;
        cr_assert_eq(cm_examples_load_libsvm(svm, &o, &a, &e), 0, "%s", e.msg);
        cr_assert_eq(cm_examples_load_libffm(ffm, &o, &b, &e), 0, "%s", e.msg);
        cr_assert_eq(cm_examples_load_csv(csv, &cols.spec, &o, &c, &e), 0, "%s", e.msg);
        cr_assert_eq(a.n, lines);
        cr_assert_eq(b.n, lines);
        cr_assert_eq(c.n, lines);
        cr_assert_eq(a.bad_lines + b.bad_lines + c.bad_lines, 0);
        cr_assert_eq(b.n_fields, (uint32_t)p.n_fields);
        cr_assert_eq(c.n_fields, (uint32_t)p.n_fields);
        uint64_t ones = 0;
        for (size_t i = 0; i < a.n; i++) {
            ones += a.label[i] > 0.5f;
            cr_assert(a.label[i] == b.label[i] && a.label[i] == c.label[i], "line %zu", i);
            cr_assert_eq(a.row_at[i + 1] - a.row_at[i], (uint64_t)p.n_fields);
            cr_assert_eq(b.row_at[i + 1] - b.row_at[i], (uint64_t)p.n_fields);
            cr_assert_eq(c.row_at[i + 1] - c.row_at[i], (uint64_t)p.n_fields);
            for (int f = 0; f < p.n_fields; f++) {
                uint64_t j = a.row_at[i] + (uint64_t)f;
                cr_assert_eq(a.key[j], b.key[j]);
                cr_assert_eq(b.field[j], (uint32_t)f);
                cr_assert_eq(c.field[j], (uint32_t)f);
                cr_assert(a.key[j] >= 1 && a.key[j] <= rep.n_features);
                cr_assert_eq(a.val[j], b.val[j]);
                cr_assert_eq(a.val[j], c.val[j]);
                uint64_t want;
                if (f < p.n_numeric) {
                    want = cm_feat_key_numeric(cols.num[f]);
                    cr_assert(a.val[j] >= 0.0f && a.val[j] < 1.0f);
                } else {
                    char s[24];
                    int n = snprintf(s, sizeof s, "%llu", (unsigned long long)a.key[j]);
                    want = cm_feat_key_categorical(cols.cat[f - p.n_numeric], s, (size_t)n);
                    cr_assert_eq(a.val[j], 1.0f);
                }
                cr_assert_eq(c.key[j], want, "line %zu field %d", i, f);
            }
        }
        cr_assert_eq(ones, clicks);
        cm_examples_free(&a);
        cm_examples_free(&b);
        cm_examples_free(&c);
    }
}

static double click_rate(const cm_synth_ctr_report *r)
{
    return (double)(r->clicks_train + r->clicks_test) / (double)(r->n_train + r->n_test);
}

Test(synth_ctr, click_rate_follows_the_target)
{
    cm_synth_ctr_params p = small();
    cm_synth_ctr_report rep;
    double targets[] = {0.2, 0.04, 0.5};
    for (int t = 0; t < 3; t++) {
        p.ctr = targets[t];
        write_ok(&p, "rate", &rep);
        /* sampling sd is below 0.004 at 20000 lines; the bias is fitted on
         * a pilot sample of its own */
        cr_assert(fabs(click_rate(&rep) - p.ctr) < 0.02, "target %g, got %g", p.ctr,
                  click_rate(&rep));
        cr_assert(fabs(rep.mean_p - p.ctr) < 0.02, "mean p %g", rep.mean_p);
    }
}

/* A score fitted on the training lines: the sum over a line's features of
 * each feature's smoothed log odds of a click (naive Bayes). */
static double fitted_auc(const cm_synth_ctr_report *rep)
{
    cm_feat_opts o = binary_opts();
    cm_examples tr, te;
    cm_error e;
    cr_assert_eq(cm_examples_load_libsvm(rep->train_path[0], &o, &tr, &e), 0, "%s", e.msg);
    cr_assert_eq(cm_examples_load_libsvm(rep->test_path[0], &o, &te, &e), 0, "%s", e.msg);
    size_t nf = rep->n_features + 1;
    double *clk = calloc(nf, sizeof *clk), *seen = calloc(nf, sizeof *seen);
    cr_assert(clk && seen);
    double base = (double)rep->clicks_train / (double)rep->n_train;
    for (size_t i = 0; i < tr.n; i++)
        for (uint64_t j = tr.row_at[i]; j < tr.row_at[i + 1]; j++)
            if (tr.val[j] == 1.0f) { /* categorical */
                clk[tr.key[j]] += tr.label[i];
                seen[tr.key[j]] += 1;
            }
    float *score = malloc(te.n * sizeof *score);
    cr_assert_not_null(score);
    for (size_t i = 0; i < te.n; i++) {
        double s = 0;
        for (uint64_t j = te.row_at[i]; j < te.row_at[i + 1]; j++) {
            if (te.val[j] != 1.0f)
                continue;
            double q = (clk[te.key[j]] + 10 * base) / (seen[te.key[j]] + 10);
            s += log(q / (1 - q)) - log(base / (1 - base));
        }
        score[i] = (float)s;
    }
    double auc = cm_auc_exact(score, te.label, te.n);
    free(score);
    free(clk);
    free(seen);
    cm_examples_free(&tr);
    cm_examples_free(&te);
    return auc;
}

Test(synth_ctr, bayes_auc_is_a_ceiling_that_a_fitted_score_approaches)
{
    cm_synth_ctr_params p = small();
    p.n_lines = 60000;
    p.n_numeric = 0;
    p.features = 400; /* well seen features: a simple fit gets near the ceiling */
    cm_synth_ctr_report rep;
    write_ok(&p, "ceiling", &rep);
    double fit = fitted_auc(&rep);
    cr_assert(rep.bayes_auc > 0.65 && rep.bayes_auc < 0.97, "bayes auc %g", rep.bayes_auc);
    cr_assert(fit > 0.6, "the labels carry no learnable signal: fitted auc %g", fit);
    /* 6000 test lines: the AUC's sampling sd is about 0.007 */
    cr_assert(fit < rep.bayes_auc + 0.02, "fitted %g beats the ceiling %g", fit, rep.bayes_auc);
    cr_assert(rep.bayes_logloss > 0 && rep.bayes_logloss < 0.5, "%g", rep.bayes_logloss);

    /* More signal, a higher ceiling; none, a ceiling of one half. */
    cm_synth_ctr_report strong, none;
    p.signal = 3.0;
    write_ok(&p, "strong", &strong);
    p.signal = 0.0;
    write_ok(&p, "none", &none);
    cr_assert_gt(strong.bayes_auc, rep.bayes_auc + 0.03);
    cr_assert(fabs(none.bayes_auc - 0.5) < 0.03, "no signal, bayes auc %g", none.bayes_auc);
    cr_assert(fabs(fitted_auc(&none) - 0.5) < 0.04);
}

Test(synth_ctr, popularity_is_skewed_within_a_field)
{
    cm_synth_ctr_params p = small();
    p.n_numeric = 0;
    p.n_fields = 2;
    p.features = 4000;
    p.vocab_min = 2000; /* two fields of 2000 */
    p.formats = CM_CTR_LIBFFM;
    cm_synth_ctr_report rep;
    for (int z = 0; z < 2; z++) {
        p.zipf = z ? 1.1 : 0.0;
        write_ok(&p, "zipf", &rep);
        cr_assert_eq(rep.n_features, 4000);
        cm_feat_opts o = binary_opts();
        cm_examples ex;
        cm_error e;
        cr_assert_eq(cm_examples_load_libffm(rep.train_path[1], &o, &ex, &e), 0, "%s", e.msg);
        uint32_t *count = calloc(4001, sizeof *count);
        cr_assert_not_null(count);
        uint32_t top = 0;
        for (size_t j = 0; j < ex.nnz; j++) {
            cr_assert_eq(ex.key[j] <= 2000, ex.field[j] == 0, "field 0 holds ids 1..2000");
            if (++count[ex.key[j]] > top)
                top = count[ex.key[j]];
        }
        double share = (double)top / (double)ex.n, uniform = 1.0 / 2000;
        if (z)
            cr_assert_gt(share, 50 * uniform, "zipf 1.1: top share %g", share);
        else
            cr_assert_lt(share, 3 * uniform, "zipf 0: top share %g", share);
        free(count);
        cm_examples_free(&ex);
    }
    cr_assert_str_eq(rep.train_path[0], "");
    cr_assert_eq(access(th_path("zipf.train.libsvm"), F_OK), -1);
}

Test(synth_ctr, bad_parameters_are_refused_with_a_reason)
{
    cm_error e;
    cm_synth_ctr_params p = small();
    p.n_fields = 0;
    cr_assert_eq(cm_synth_ctr_write(&p, th_path("bad"), NULL, &e), CM_EINVAL);
    cr_assert(strstr(e.msg, "fields"), "%s", e.msg);
    p = small();
    p.features = 10; /* 6 categorical fields x vocab_min 4 */
    cr_assert_eq(cm_synth_ctr_write(&p, th_path("bad"), NULL, &e), CM_EINVAL);
    cr_assert(strstr(e.msg, "features"), "%s", e.msg);
    p = small();
    p.ctr = 1.0;
    cr_assert_eq(cm_synth_ctr_write(&p, th_path("bad"), NULL, &e), CM_EINVAL);
    cr_assert(strstr(e.msg, "ctr"), "%s", e.msg);
    p = small();
    p.n_numeric = 9;
    cr_assert_eq(cm_synth_ctr_write(&p, th_path("bad"), NULL, &e), CM_EINVAL);
    p = small();
    cr_assert_eq(cm_synth_ctr_write(&p, "/nonexistent-dir/x", NULL, &e), CM_EIO);
    cr_assert(strstr(e.msg, "/nonexistent-dir/x"), "%s", e.msg);
    unsigned f = 0;
    cr_assert_eq(cm_synth_ctr_formats("libsvm,csv", &f, &e), 0);
    cr_assert_eq(f, CM_CTR_LIBSVM | CM_CTR_CSV);
    cr_assert_eq(cm_synth_ctr_formats("libffm", &f, &e), 0);
    cr_assert_eq(f, CM_CTR_LIBFFM);
    cr_assert_eq(cm_synth_ctr_formats("svm", &f, &e), CM_EINVAL);
    cr_assert(strstr(e.msg, "'svm'"), "%s", e.msg);
}

/* The command: files, the summary line, and a bad option's exit status. */
Test(synth_ctr, psrec_gen_ctr_writes_and_reports)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s gen --ctr --out %s --lines 3000 --fields 5 --features 500 --formats ffm,csv "
             "> %s 2>&1",
             PSREC_BINARY, th_path("cli"), th_path("cli.out"));
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    size_t n;
    char *out = (char *)slurp(th_path("cli.out"), &n);
    out[n] = '\0';
    cr_assert(strstr(out, "bayes_auc 0."), "%s", out);
    cr_assert(strstr(out, "cli.train.ffm"), "%s", out);
    free(out);
    cr_assert_eq(access(th_path("cli.test.csv"), F_OK), 0);
    cr_assert_eq(access(th_path("cli.info"), F_OK), 0);
    cr_assert_eq(access(th_path("cli.train.libsvm"), F_OK), -1);
    snprintf(cmd, sizeof cmd, "%s gen --ctr --out %s --formats svm > /dev/null 2>&1",
             PSREC_BINARY, th_path("cli2"));
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status %d", st);
}
