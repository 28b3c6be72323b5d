/* A whole cluster in this process (--local): scheduler, servers and
 * workers as threads over inproc://, on generated data with a known noise
 * floor. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/run.h"
#include "helpers.h"
#include "common/log.h"
#include "common/synth.h"

static char s_dir[] = "/tmp/psrec-local-XXXXXX";
static cm_synth_report s_rep;

static void s_setup(void)
{
    cm_log_set_level(CM_LOG_WARN);
    cr_assert_not_null(mkdtemp(s_dir));
    cm_synth_params p = cm_synth_params_default();
    p.n_ratings = 150000;
    p.n_users = 1500;
    p.n_items = 800;
    p.rank = 4;
    p.noise = 0.5;
    p.seed = 11;
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s/syn", s_dir);
    cm_error err = {0};
    cr_assert_eq(cm_synth_write(&p, prefix, &s_rep, &err), 0, "%s", err.msg);
}

static void s_teardown(void)
{
    unlink(s_rep.train_path);
    unlink(s_rep.test_path);
    char m[300];
    snprintf(m, sizeof m, "%s/metrics.jsonl", s_dir);
    unlink(m);
    rmdir(s_dir);
}

static cm_job s_job(int servers, int workers)
{
    cm_job job = cm_job_default();
    snprintf(job.train, sizeof job.train, "%.1000s", s_rep.train_path);
    snprintf(job.test, sizeof job.test, "%.1000s", s_rep.test_path);
    job.local = 1;
    job.servers = servers;
    job.workers = workers;
    job.progress = 0;
    job.log_level = CM_LOG_WARN;
    job.timeout = 20; /* a lost message fails the test in seconds, not minutes */
    /* the defaults are tuned on MovieLens 100K, which is sparse and noisy;
     * this generated set (100 ratings a user, rank 4) needs less shrinkage */
    job.l2 = 0.05;
    return job;
}

TestSuite(cluster_local, .init = s_setup, .fini = s_teardown, .timeout = 300);

Test(cluster_local, reaches_the_noise_floor)
{
    cm_job job = s_job(2, 2);
    job.schedule = CM_SCHED_MINIBATCH;
    snprintf(job.metrics, sizeof job.metrics, "%s/metrics.jsonl", s_dir);
    sch_result res;
    cm_error err = {0};
    int rc = th_local(&job, &res, &err);
    cr_assert_eq(rc, 0, "%s", err.msg);
    /* validation is on by default: patience may end the run early */
    cr_expect(res.epochs == job.epochs || (res.early_stopped && res.best_epoch > 0),
              "%d of %d epochs without an early stop", res.epochs, job.epochs);
    cr_expect_float_eq(res.noise_floor, s_rep.noise_floor, 1e-9,
                       "the test file carries the noise floor");
    cr_expect_leq(res.test_rmse, 1.10 * s_rep.noise_floor,
                  "test RMSE %.4f within 10%% of the noise floor %.4f", res.test_rmse,
                  s_rep.noise_floor);
    cr_expect_gt(res.server_rows, 0);

    /* one JSON line per epoch with the promised fields */
    FILE *f = fopen(job.metrics, "r");
    cr_assert_not_null(f);
    char line[1024];
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "\"final\": 1")) {
            /* the run's result, after the epochs */
            cr_expect_eq(lines, res.epochs, "the final record comes last");
            continue;
        }
        lines++;
        const char *keys[] = {"\"epoch\"", "\"train_loss\"", "\"test_rmse\"", "\"test_mae\"",
                              "\"examples_per_s\"", "\"seconds\"", "\"rows_user\"",
                              "\"bytes_user\"", "\"rows_item\"", "\"bytes_item\""};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
            cr_expect(strstr(line, keys[k]) != NULL, "line %d lacks %s: %s", lines, keys[k],
                      line);
    }
    fclose(f);
    cr_expect_eq(lines, res.epochs, "%d epoch lines, %d epochs", lines, res.epochs);
    /* per-table memory adds up to the servers' total */
    double rows = th_last_metric(job.metrics, "server_rows"),
           bytes = th_last_metric(job.metrics, "server_bytes");
    cr_expect_eq(th_last_metric(job.metrics, "rows_user") +
                     th_last_metric(job.metrics, "rows_item"), rows);
    cr_expect_eq(th_last_metric(job.metrics, "bytes_user") +
                     th_last_metric(job.metrics, "bytes_item"), bytes);
    cr_expect_gt(th_last_metric(job.metrics, "rows_user"), 0);
}

Test(cluster_local, single_worker_is_bit_for_bit_repeatable)
{
    double rmse[2], train[2];
    for (int run = 0; run < 2; run++) {
        cm_job job = s_job(2, 1);
        job.schedule = CM_SCHED_MINIBATCH;
        job.epochs = 3;
        sch_result res;
        cm_error err = {0};
        int rc = th_local(&job, &res, &err);
        cr_assert_eq(rc, 0, "%s", err.msg);
        rmse[run] = res.test_rmse;
        train[run] = res.train_rmse;
    }
    cr_expect(memcmp(&rmse[0], &rmse[1], sizeof(double)) == 0, "test RMSE %.17g vs %.17g",
              rmse[0], rmse[1]);
    cr_expect(memcmp(&train[0], &train[1], sizeof(double)) == 0, "train RMSE %.17g vs %.17g",
              train[0], train[1]);
}

Test(cluster_local, a_missing_file_is_reported_not_hung)
{
    cm_job job = s_job(1, 2);
    snprintf(job.test, sizeof job.test, "%s/does-not-exist.tsv", s_dir);
    sch_result res;
    cm_error err = {0};
    int rc = th_local(&job, &res, &err);
    cr_expect_neq(rc, 0);
    cr_expect(strstr(err.msg, "does-not-exist.tsv") != NULL, "message names the file: %s",
              err.msg);
}

Test(cluster_local, a_bad_training_file_stops_the_job_with_file_and_line)
{
    char path[300];
    snprintf(path, sizeof path, "%s/bad.tsv", s_dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 50; i++)
        fprintf(f, i % 3 ? "%d\t%d\t4\n" : "%d\t%d\tfour\n", i + 1, i % 7 + 1);
    fclose(f);
    cm_job job = s_job(1, 2);
    snprintf(job.train, sizeof job.train, "%s", path);
    job.test[0] = '\0';
    job.max_bad_lines = 3;
    sch_result res;
    cm_error err = {0};
    int rc = th_local(&job, &res, &err);
    unlink(path);
    cr_expect_neq(rc, 0);
    cr_expect(strstr(err.msg, "bad.tsv") != NULL, "message names the file: %s", err.msg);
}

/* One block per worker (a barrier a round), then two (the next block's
 * rows come in while one trains, rounds ordered by clocks; worker/blocks.h):
 * the same quality either way. */
Test(cluster_local, blocks_schedule_reaches_the_noise_floor)
{
    const int workers[2] = {2, 3};
    for (int k = 1; k <= 2; k++) {
        cm_job job = s_job(2, workers[k - 1]);
        job.schedule = CM_SCHED_BLOCKS;
        job.blocks_per_worker = k;
        job.optimizer = CM_OPT_ROWWISE;
        job.lr = 0.1;
        sch_result res;
        cm_error err = {0};
        int rc = th_local(&job, &res, &err);
        cr_assert_eq(rc, 0, "%s", err.msg);
        /* validation is on by default: patience may end the run early */
        cr_expect(res.epochs == job.epochs || (res.early_stopped && res.best_epoch > 0),
                  "%d of %d epochs without an early stop", res.epochs, job.epochs);
        cr_expect_leq(res.test_rmse, 1.10 * s_rep.noise_floor,
                      "blocks, %d per worker: test RMSE %.4f within 10%% of the noise floor "
                      "%.4f", k, res.test_rmse, s_rep.noise_floor);
    }
}

Test(cluster_local, blocks_single_worker_is_repeatable)
{
    double rmse[6];
    for (int run = 0; run < 6; run++) {
        cm_job job = s_job(2, 1);
        job.schedule = CM_SCHED_BLOCKS;
        job.blocks_per_worker = 1 + run / 2;
        job.epochs = 3;
        sch_result res;
        cm_error err = {0};
        int rc = th_local(&job, &res, &err);
        cr_assert_eq(rc, 0, "%s", err.msg);
        rmse[run] = res.test_rmse;
    }
    cr_expect(rmse[0] == rmse[1], "%.17g vs %.17g", rmse[0], rmse[1]);
    cr_expect(rmse[2] == rmse[3], "2 blocks per worker: %.17g vs %.17g", rmse[2], rmse[3]);
    cr_expect(rmse[4] == rmse[5], "3 blocks per worker: %.17g vs %.17g", rmse[4], rmse[5]);
}

Test(cluster_local, load_aware_slot_plan_is_at_least_as_even)
{
    cm_job job = s_job(3, 2);
    job.epochs = 1;
    sch_result res;
    cm_error err = {0};
    int rc = th_local(&job, &res, &err);
    cr_assert_eq(rc, 0, "%s", err.msg);
    cr_expect_gt(res.load_imbalance_before, 1.0, "round-robin is uneven on Zipf items");
    cr_expect_leq(res.load_imbalance, res.load_imbalance_before, "%.4f vs %.4f",
                  res.load_imbalance, res.load_imbalance_before);
    cr_expect_lt(res.load_imbalance, 1.01, "max/mean load %.4f", res.load_imbalance);
}

Test(cluster_local, consistency_bounds_hold_and_reach_the_bsp_metric)
{
    const int modes[3] = {CM_CONS_BSP, CM_CONS_SSP, CM_CONS_ASP};
    double rmse[3], lead[3];
    for (int k = 0; k < 3; k++) {
        cm_job job = s_job(1, 3);
        job.schedule = CM_SCHED_MINIBATCH;
        job.consistency = modes[k];
        job.staleness = 2;
        job.epochs = 8;
        sch_result res;
        cm_error err = {0};
        int rc = th_local(&job, &res, &err);
        cr_assert_eq(rc, 0, "%s", err.msg);
        rmse[k] = res.test_rmse;
        lead[k] = res.max_lead;
    }
    cr_expect_eq(lead[0], 0, "bsp: no worker ever ahead (%g)", lead[0]);
    cr_expect(lead[1] >= 0 && lead[1] <= 2, "ssp: lead %g within staleness 2", lead[1]);
    cr_expect_lt(lead[2], 0, "asp does not track clocks");
    for (int k = 1; k < 3; k++)
        cr_expect_leq(fabs(rmse[k] - rmse[0]), 0.01 * rmse[0], "mode %d RMSE %.5f vs bsp %.5f",
                      modes[k], rmse[k], rmse[0]);
}
