/* Metrics lines are valid JSON objects; progress can be switched off. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scheduler/report.h"

Test(report, metrics_lines)
{
    char dir[] = "/tmp/psrec-report-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/m.jsonl", dir);
    cm_error err = {0};
    sch_metrics *m = sch_metrics_open(path, 0, NULL, &err);
    cr_assert_not_null(m, "%s", err.msg);
    sch_field a[] = {{"epoch", 1, 0}, {"test_rmse", 0.9123456, 1}, {"test_mae", -1, 1},
                     {"bad", NAN, 0}};
    cr_assert_eq(sch_metrics_write(m, a, 4, &err), 0, "%s", err.msg);
    sch_field b[] = {{"epoch", 2, 0}, {"examples_per_s", 1.5e6, 0}};
    cr_assert_eq(sch_metrics_write(m, b, 2, &err), 0);
    sch_metrics_close(&m);
    cr_expect_null(m);

    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    char line[512];
    cr_assert_not_null(fgets(line, sizeof line, f));
    cr_expect_str_eq(line, "{\"epoch\": 1, \"test_rmse\": 0.9123456, \"test_mae\": null, "
                           "\"bad\": null}\n");
    cr_assert_not_null(fgets(line, sizeof line, f));
    cr_expect_str_eq(line, "{\"epoch\": 2, \"examples_per_s\": 1500000}\n");
    cr_expect_null(fgets(line, sizeof line, f));
    fclose(f);
    unlink(path);
    rmdir(dir);
}

Test(report, metrics_unwritable_path_is_an_error)
{
    cm_error err = {0};
    sch_metrics *m = sch_metrics_open("/nonexistent-dir/m.jsonl", 0, NULL, &err);
    cr_expect_null(m);
    cr_expect_eq(err.code, CM_EIO);
    cr_expect(strstr(err.msg, "/nonexistent-dir/m.jsonl") != NULL, "%s", err.msg);
}

Test(report, progress_off_draws_nothing)
{
    sch_progress *p = sch_progress_new(0);
    cr_assert_not_null(p);
    sch_progress_update(p, 1, 2, 10, 100, 1.0, 0.5);
    sch_progress_clear(p);
    sch_progress_destroy(&p);
    cr_expect_null(p);
}

Test(report, ranking_text)
{
    sch_ranking r = {20, 0.42051, 0.4011, 0.943, 0.2414, 0.234, 0.8575};
    char buf[256];
    int len = sch_ranking_text(buf, sizeof buf, &r);
    cr_expect_str_eq(buf, "recall@20 0.4205  ndcg@20 0.4011  hr@20 0.9430  "
                          "(popularity 0.2414 / 0.2340 / 0.8575)");
    cr_expect_eq(len, (int)strlen(buf));
    /* without a baseline the parenthesis is left out */
    r.pop_recall = -1;
    sch_ranking_text(buf, sizeof buf, &r);
    cr_expect_str_eq(buf, "recall@20 0.4205  ndcg@20 0.4011  hr@20 0.9430");
    /* a short buffer is cut and terminated; the full length is returned */
    r.pop_recall = 0.2414;
    char full[256], small[16];
    int want = sch_ranking_text(full, sizeof full, &r);
    len = sch_ranking_text(small, sizeof small, &r);
    cr_expect_eq(len, want);
    cr_expect_eq(strlen(small), sizeof small - 1);
    cr_expect_eq(strncmp(small, full, sizeof small - 1), 0);
    /* measuring only, as snprintf(NULL, 0) */
    cr_expect_eq(sch_ranking_text(NULL, 0, &r), want);
}

Test(report, progress_label_names_the_running_figure)
{
    char path[] = "/tmp/psrec-report-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    sch_progress *p = sch_progress_new(1);
    sch_progress_set_label(p, "loss");
    sch_progress_update(p, 1, 3, 50, 100, 0.6931, 1.0);
    sch_progress_set_label(NULL, "x"); /* no-op */
    sch_progress_destroy(&p);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    char buf[512] = {0};
    FILE *f = fdopen(fd, "r");
    cr_assert_not_null(f);
    rewind(f);
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    unlink(path);
    buf[got] = '\0';
    cr_expect(strstr(buf, "loss 0.6931") != NULL, "bar: %s", buf);
    cr_expect(strstr(buf, "rmse") == NULL, "bar: %s", buf);
}
