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
    sch_metrics *m = sch_metrics_open(path, 0, &err);
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
    sch_metrics *m = sch_metrics_open("/nonexistent-dir/m.jsonl", 0, &err);
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
