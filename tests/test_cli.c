/* The psrec binary as a user meets it: help, gen, convert, train --local,
 * and the errors bad input gets. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <unistd.h>

#include "helpers.h"

static char s_dir[] = "/tmp/psrec-cli-XXXXXX";
static char s_out[65536];

static void s_setup(void) { cr_assert_not_null(mkdtemp(s_dir)); }

static void s_teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s_dir);
}

/* Runs `psrec ARGS` in the test's directory; its exit status, its output
 * in s_out. */
#define s_psrec(...) th_psrec(s_dir, s_out, sizeof s_out, __VA_ARGS__)

static void s_write(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

TestSuite(cli, .init = s_setup, .fini = s_teardown, .timeout = 300);

Test(cli, help_describes_every_command_and_key)
{
    cr_expect_eq(s_psrec("--help"), 0);
    cr_expect(strstr(s_out, "train") && strstr(s_out, "gen") && strstr(s_out, "convert"), "%s",
              s_out);
    cr_expect_eq(s_psrec("train --help"), 0);
    const char *keys[] = {"train", "test", "model", "dim", "epochs", "servers", "optimizer",
                          "lr", "l2", "batch", "seed", "metrics", "max_bad_lines"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        cr_expect(strstr(s_out, keys[k]) != NULL, "train --help lacks %s", keys[k]);
    cr_expect_eq(s_psrec("gen --help"), 0);
    cr_expect(strstr(s_out, "--noise") != NULL, "%s", s_out);
    cr_expect_eq(s_psrec("convert --help"), 0);
    cr_expect(strstr(s_out, "--test-fraction") != NULL, "%s", s_out);
    cr_expect_neq(s_psrec("frobnicate"), 0);
    cr_expect(strstr(s_out, "unknown command") != NULL, "%s", s_out);
}

Test(cli, bad_keys_and_values_are_named)
{
    cr_expect_neq(s_psrec("train --train x.tsv --lrr 0.1 --local"), 0);
    cr_expect(strstr(s_out, "--lrr") != NULL, "%s", s_out);
    cr_expect_neq(s_psrec("train --train x.tsv --dim banana --local"), 0);
    cr_expect(strstr(s_out, "dim") && strstr(s_out, "banana"), "%s", s_out);
    s_write("job.ini", "# a job\ntrain = r.tsv\nepochs = 2\nlearning_rate = 0.1\n");
    cr_expect_neq(s_psrec("train job.ini --local"), 0);
    cr_expect(strstr(s_out, "job.ini:4") != NULL, "names file and line: %s", s_out);
    cr_expect_neq(s_psrec("train --local"), 0, "no training data");
    cr_expect_neq(s_psrec("train --train r.tsv"), 0, "neither mpirun nor --local");
    cr_expect(strstr(s_out, "mpirun") != NULL, "%s", s_out);
}

Test(cli, gen_convert_and_train_local)
{
    cr_assert_eq(s_psrec("gen --out syn --ratings 30000 --users 300 --items 200 --format "
                         "text --seed 3"),
                 0, "%s", s_out);
    cr_expect(strstr(s_out, "noise floor") != NULL, "%s", s_out);
    cr_assert_eq(s_psrec("convert syn.train.tsv syn.psrd --test-fraction 0.2 --seed 9"), 0,
                 "%s", s_out);
    cr_expect(access("/dev/null", F_OK) == 0);
    cr_assert_eq(s_psrec("train --train syn.train.psrd --test syn.test.psrd --local "
                         "--epochs 3 --metrics m.jsonl --progress off"),
                 0, "%s", s_out);
    cr_expect(strstr(s_out, "epoch   3/3") != NULL, "one line per epoch:\n%s", s_out);
    cr_expect(strstr(s_out, "final test RMSE") != NULL, "%s", s_out);
    char m[600];
    snprintf(m, sizeof m, "%s/m.jsonl", s_dir);
    cr_expect_gt(th_last_metric(m, "test_rmse"), 0);
    /* text accepted directly too, with a job file whose values the flags override */
    s_write("job.ini", "[data]\ntrain = syn.train.tsv\ntest = syn.test.tsv\n[model]\n"
                       "epochs = 50\ndim = 8\n");
    cr_assert_eq(s_psrec("train job.ini --epochs 2 --local --progress off"), 0, "%s", s_out);
    cr_expect(strstr(s_out, "epoch   2/2") != NULL, "--epochs wins over the file:\n%s", s_out);
}

Test(cli, convert_reports_bad_lines_with_file_and_line)
{
    s_write("bad.csv", "userId,movieId,rating,timestamp\n1,10,4.0,99\n2,11\n3,12,x,1\n"
                       "4,13,3.5,7\n");
    cr_expect_eq(s_psrec("convert bad.csv ok.psrd"), 0, "two bad lines are under the "
                                                        "default limit: %s", s_out);
    cr_expect(strstr(s_out, "bad.csv:3") != NULL, "%s", s_out);
    cr_expect(strstr(s_out, "bad.csv:4") != NULL, "%s", s_out);
    cr_expect(strstr(s_out, "2 malformed") != NULL, "%s", s_out);
    cr_expect_neq(s_psrec("convert bad.csv ok.psrd --max-bad-lines 1"), 0);
    cr_expect(strstr(s_out, "bad.csv") != NULL, "%s", s_out);
    cr_expect_neq(s_psrec("convert missing.csv out.psrd"), 0);
    cr_expect(strstr(s_out, "missing.csv") != NULL, "%s", s_out);
}

Test(cli, convert_movielens_formats)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    cr_assert_eq(s_psrec("convert %s/ml-100k/u.data ml.psrd --test-fraction 0.1", data), 0,
                 "%s", s_out);
    cr_expect(strstr(s_out, "ml.train.psrd") && strstr(s_out, "ml.test.psrd"), "%s", s_out);
    cr_assert_eq(s_psrec("convert %s/ml-latest-small/ratings.csv mls.psrd", data), 0, "%s",
                 s_out);
    cr_expect(strstr(s_out, "100836 ratings") != NULL, "%s", s_out);
}

/* Copies a text file with a header line into <dir>/train and <dir>/test,
 * every tenth data line to test (the header to both). fields: when > 0,
 * each data line is rewritten as "u,i,junk,r" from its first three
 * comma- or tab-separated fields, under the header "user,item,junk,y". */
static void s_split_tenth(const char *src, const char *train, const char *test, int rewrite)
{
    char tp[600], ep[600];
    snprintf(tp, sizeof tp, "%s/%s", s_dir, train);
    snprintf(ep, sizeof ep, "%s/%s", s_dir, test);
    FILE *in = fopen(src, "r"), *tr = fopen(tp, "w"), *te = fopen(ep, "w");
    cr_assert(in && tr && te, "%s", src);
    char line[1024];
    long n = 0;
    if (rewrite) {
        fputs("user,item,junk,y\n", tr);
        fputs("user,item,junk,y\n", te);
    }
    while (fgets(line, sizeof line, in)) {
        FILE *to = n == 0 && !rewrite ? NULL : (n % 10 == 0 ? te : tr);
        if (!to) { /* the header */
            fputs(line, tr);
            fputs(line, te);
        } else if (rewrite) {
            char *save = NULL, *u = strtok_r(line, ",\t", &save), *i = strtok_r(NULL, ",\t", &save),
                 *r = strtok_r(NULL, ",\t\r\n", &save);
            cr_assert(u && i && r);
            fprintf(to, "%s,%s,x%ld,%s\n", u, i, n, r);
        } else {
            fputs(line, to);
        }
        n++;
    }
    fclose(in);
    fclose(tr);
    fclose(te);
}

Test(cli, fm_on_a_ratings_csv_trains_a_regression)
{
    const char *data = th_data_dir();
    char src[1100];
    snprintf(src, sizeof src, "%s/ml-latest-small/ratings.csv", data ? data : ".");
    if (!data || access(src, R_OK) != 0)
        cr_skip_test("%s not found (set PSREC_DATA)", src);
    s_split_tenth(src, "tr.csv", "te.csv", 0);
    /* method auto: mcmc, whose sweeps the sanitizer build makes slow */
    cr_assert_eq(s_psrec("train --local --model fm --train tr.csv --test te.csv --metrics "
                         "m.jsonl --progress off%s",
                         TH_SANITIZED ? " --epochs 20" : ""),
                 0, "%s", s_out);
    cr_expect(strstr(s_out, "global mean 3.5") != NULL, "the ratings' mean, not 0:\n%s",
              s_out);
    char m[600];
    snprintf(m, sizeof m, "%s/m.jsonl", s_dir);
    double rmse = th_last_metric(m, "test_rmse");
    cr_log_info("ml-latest-small, every 10th line held out, fm at defaults: RMSE %.4f", rmse);
    cr_expect(rmse > 0 && rmse < 1.1, "test RMSE %.4f:\n%s", rmse, s_out);
    FILE *f = fopen(m, "r");
    cr_assert_not_null(f);
    char line[8192];
    while (fgets(line, sizeof line, f))
        cr_expect(strstr(line, "\"test_auc\": null") != NULL, "a regression has no AUC: %s",
                  line);
    fclose(f);
    /* the same file read with --format csv and no label column stops, naming the fix */
    cr_expect_neq(s_psrec("train --local --model fm --format csv --train tr.csv --progress off"),
                  0);
    cr_expect(strstr(s_out, "tr.csv") && strstr(s_out, "--format ratings"), "%s", s_out);
}

Test(cli, binary_metrics_have_no_rmse)
{
    const char *data = th_data_dir();
    char src[1100];
    snprintf(src, sizeof src, "%s/heart_scale/heart_scale", data ? data : ".");
    if (!data || access(src, R_OK) != 0)
        cr_skip_test("%s not found (set PSREC_DATA)", src);
    cr_assert_eq(s_psrec("train --local --model fm --train %s --test %s --epochs 3 --metrics "
                         "b.jsonl --progress off",
                         src, src),
                 0, "%s", s_out);
    char m[600];
    snprintf(m, sizeof m, "%s/b.jsonl", s_dir);
    FILE *f = fopen(m, "r");
    cr_assert_not_null(f);
    char line[8192];
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        /* the epochs, then the result; the refit's records (marked) after them */
        lines += strstr(line, "\"final\": ") == NULL && strstr(line, "\"refit\": 1") == NULL;
        cr_expect(strstr(line, "\"test_auc\": 0.") != NULL, "%s", line);
        cr_expect(strstr(line, "test_rmse") == NULL, "binary task wrote test_rmse: %s", line);
        cr_expect(strstr(line, "test_mae") == NULL, "%s", line);
    }
    fclose(f);
    cr_expect_eq(lines, 3);
}

Test(cli, mf_reads_csv_columns_by_name)
{
    const char *data = th_data_dir();
    char src[1100];
    snprintf(src, sizeof src, "%s/ml-100k/u.data", data ? data : ".");
    if (!data || access(src, R_OK) != 0)
        cr_skip_test("%s not found (set PSREC_DATA)", src);
    s_split_tenth(src, "w.csv", "wt.csv", 1);
    /* as the issue met it: label_column names the rating column for mf */
    cr_assert_eq(s_psrec("train --local --model mf --format csv --label_column y --train w.csv "
                         "--test wt.csv --epochs 5 --metrics c.jsonl --progress off"),
                 0, "%s", s_out);
    char m[600];
    snprintf(m, sizeof m, "%s/c.jsonl", s_dir);
    double rmse = th_last_metric(m, "test_rmse");
    cr_expect(rmse > 0 && rmse < 1.0, "ml-100k by named columns: RMSE %.4f\n%s", rmse, s_out);
    /* every column named, in another order of keys */
    cr_assert_eq(s_psrec("train --local --model implicit --user_column user --item_column item "
                         "--rating_column y --positive_threshold 4 --train w.csv --test wt.csv "
                         "--epochs 1 --progress off"),
                 0, "%s", s_out);
    /* a column that is not there is named with the file */
    cr_expect_neq(s_psrec("train --local --rating_column stars --train w.csv --progress off"), 0);
    cr_expect(strstr(s_out, "w.csv:1") && strstr(s_out, "rating_column = stars"), "%s", s_out);
    /* and a key for another model is refused before anything is read */
    cr_expect_neq(s_psrec("train --local --model mf --hidden 64 --train w.csv"), 0);
    cr_expect(strstr(s_out, "--hidden") && strstr(s_out, "deep"), "%s", s_out);
    cr_expect_neq(s_psrec("train --local --model fm --negatives 4 --train w.csv"), 0);
    cr_expect(strstr(s_out, "--negatives") && strstr(s_out, "implicit"), "%s", s_out);
}
