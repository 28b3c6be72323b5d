/* ffm and deep end to end: --local clusters and mpirun (2 servers, 2
 * workers) on frappe (its libFM files rewritten as libffm, field = the
 * feature's position: frappe's 10 one-hot fields come in a fixed order) and
 * on MovieLens 100K u1 (NCF / DeepFM on user and item, FFM with side
 * features), plus the configuration errors a user meets first. */
#include <cblas.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/run.h"
#include "common/log.h"
#include "helpers.h"

static char s_dir[64];

static void s_setup(void)
{
    openblas_set_num_threads(1);
    snprintf(s_dir, sizeof s_dir, "/tmp/psrec-deep-XXXXXX");
    cr_assert_not_null(mkdtemp(s_dir));
}

static void s_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    cr_expect_eq(system(cmd), 0);
}

TestSuite(cluster_deep, .init = s_setup, .fini = s_teardown, .timeout = 300);

static cm_job s_job(const char *model)
{
    cm_log_set_level(CM_LOG_ERROR);
    cm_job job = cm_job_default();
    snprintf(job.model, sizeof job.model, "%s", model);
    cm_job_model_defaults(&job);
    job.local = 1;
    job.servers = 2;
    job.workers = 2;
    job.progress = 0;
    job.log_level = CM_LOG_ERROR;
    job.timeout = 30;
    return job;
}

/* frappe's libFM file `name` as libffm in s_dir: token i is field i. */
static void s_frappe_ffm(const char *data, const char *name, char *out, size_t cap)
{
    char in[1200];
    snprintf(in, sizeof in, "%.900s/frappe/%s.libfm", data, name);
    snprintf(out, cap, "%s/%s.ffm", s_dir, name);
    FILE *f = fopen(in, "r"), *g = fopen(out, "w");
    cr_assert(f && g, "%s", in);
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save);
        if (!tok)
            continue;
        fputs(tok, g);
        for (int i = 0; (tok = strtok_r(NULL, " \t\r\n", &save)) != NULL; i++)
            fprintf(g, " %d:%s", i, tok);
        fputc('\n', g);
    }
    fclose(f);
    fclose(g);
}

static const char *s_data(const char *what)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): %s skipped", what);
    return data;
}

static void s_frappe_job(cm_job *job, const char *data)
{
    s_frappe_ffm(data, "frappe.validation", job->train, sizeof job->train);
    s_frappe_ffm(data, "frappe.test", job->test, sizeof job->test);
}

static void s_ml100k_job(cm_job *job, const char *data, int side)
{
    snprintf(job->train, sizeof job->train, "%.900s/ml-100k/u1.base", data);
    snprintf(job->test, sizeof job->test, "%.900s/ml-100k/u1.test", data);
    if (side) {
        snprintf(job->user_features, sizeof job->user_features, "%.900s/ml-100k/u.user", data);
        snprintf(job->item_features, sizeof job->item_features, "%.900s/ml-100k/u.item", data);
    }
}

/* ------------------------------------------------------------------------
 * frappe
 * ------------------------------------------------------------------------ */

Test(cluster_deep, ffm_frappe_beats_fm)
{
    const char *data = s_data("frappe FFM test");
    cm_job job = s_job("ffm");
    s_frappe_job(&job, data);
    job.epochs = 5;
    sch_result res = th_local_ok(&job);
    cr_expect_eq(res.epochs, 5);
    cr_log_info("frappe ffm, 5 epochs: AUC %.4f log loss %.4f", res.test_auc,
                res.test_logloss);
    /* ffm after 5 epochs: about 0.957 / 0.204. FM at dim 32 after 5 epochs:
     * 0.947 / 0.247, and 0.953 / 0.230 after 20; ignoring the fields (an FM
     * with this row size) stays near that log loss */
    cr_expect_geq(res.test_auc, 0.955, "frappe ffm AUC %.4f", res.test_auc);
    cr_expect(res.test_logloss > 0 && res.test_logloss < 0.222, "log loss %.4f",
              res.test_logloss);
}

Test(cluster_deep, deepfm_frappe)
{
    const char *data = s_data("frappe DeepFM test");
    cm_job job = s_job("deep");
    s_frappe_job(&job, data);
    job.epochs = 10;
    job.dim = 32; /* the default is 64; 32 keeps the test quick */
    sch_result res = th_local_ok(&job);
    cr_log_info("frappe deep (DeepFM), 10 epochs: AUC %.4f log loss %.4f", res.test_auc,
                res.test_logloss);
    cr_expect_geq(res.test_auc, 0.945, "frappe deep AUC %.4f", res.test_auc);
    cr_expect(res.test_logloss > 0 && res.test_logloss < 0.25, "log loss %.4f",
              res.test_logloss);
}

/* The net starts from the servers' init hook, which depends on the job's
 * seed only: one worker (its pushes and pulls are ordered) gets the same
 * model on one server as on three, and another seed gives another one. */
Test(cluster_deep, deep_is_the_same_on_any_number_of_servers)
{
    const char *data = s_data("frappe determinism test");
    cm_job job = s_job("deep");
    s_frappe_job(&job, data);
    job.epochs = 1;
    job.workers = 1;
    job.dim = 8;
    job.servers = 1;
    sch_result one = th_local_ok(&job);
    job.servers = 3;
    sch_result three = th_local_ok(&job);
    job.seed += 1;
    sch_result other = th_local_ok(&job);
    cr_log_info("frappe deep, 1 epoch: log loss %.6f (1 server), %.6f (3), %.6f (seed + 1)",
                one.test_logloss, three.test_logloss, other.test_logloss);
    cr_expect_eq(one.test_logloss, three.test_logloss, "%.9f vs %.9f", one.test_logloss,
                 three.test_logloss);
    cr_expect_eq(one.test_auc, three.test_auc);
    cr_expect_neq(one.test_logloss, other.test_logloss);
    cr_expect_geq(one.test_auc, 0.9, "AUC %.4f after one epoch", one.test_auc);
}

/* The MLP alone (fm_term off) must learn: a net that did not train stays
 * at the label prior's AUC of 0.5. */
/* A pure MLP (NCF-style, no FM part) on frappe, 5 epochs. */
static cm_job s_mlp_job(const char *data)
{
    cm_job job = s_job("deep");
    s_frappe_job(&job, data);
    job.fm_term = 0;
    job.epochs = 5;
    job.dim = 16;
    job.lr = 0.1;
    return job;
}

Test(cluster_deep, mlp_alone_frappe)
{
    const char *data = s_data("frappe MLP test");
    cm_job job = s_mlp_job(data);
    sch_result res = th_local_ok(&job);
    cr_log_info("frappe deep (MLP only), 5 epochs: AUC %.4f log loss %.4f", res.test_auc,
                res.test_logloss);
    /* an AUC of exactly 0.5 means one score for every example (a net that
     * never trained, or non-finite scores, which count as 0): the figures
     * below tell those apart if it ever happens again (seen once on a
     * loaded machine; not reproduced in some 60 runs with busy loops,
     * three jobs at once or random delays in every wait) */
    cr_expect_geq(res.test_auc, 0.90,
                  "frappe MLP AUC %.4f (log loss %.4f, last train loss %.4f, %d epochs, "
                  "%llu test rows)",
                  res.test_auc, res.test_logloss, res.train_rmse * res.train_rmse, res.epochs,
                  (unsigned long long)res.n_test);
}

/* Every batch of every worker steps the whole net: with many workers the
 * steps pile up on nearly the same weights. Before the dense table's rate
 * was divided by the workers, 32 workers drove a frappe MLP to a constant
 * (AUC 0.5000, log loss at the base rate's 0.636) in half the runs, after
 * training losses of 3 to 1600 in the first epoch. */
Test(cluster_deep, mlp_many_workers_frappe)
{
    const char *data = s_data("frappe MLP many-workers test");
    cm_job job = s_mlp_job(data);
    snprintf(job.metrics, sizeof job.metrics, "%s/metrics.jsonl", s_dir);
    job.workers = TH_SANITIZED ? 16 : 32; /* 16 collapsed too, more slowly */
    job.patience = 0; /* every epoch's loss is checked */
    sch_result res = th_local_ok(&job);
    cr_log_info("frappe MLP, %d workers, 5 epochs: AUC %.4f log loss %.4f", job.workers,
                res.test_auc, res.test_logloss);
    FILE *f = fopen(job.metrics, "r");
    cr_assert_not_null(f, "%s", job.metrics);
    char line[4096];
    int epochs = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "\"final\": "))
            continue; /* the chosen epoch's summary, after the epochs */
        const char *at = strstr(line, "\"train_loss\": ");
        cr_assert_not_null(at, "no train_loss in %s", line);
        double loss = atof(at + strlen("\"train_loss\": "));
        epochs++;
        /* a constant at the base rate scores 0.636: far above it, the
         * net's predictions were confidently wrong */
        cr_expect(loss < 1.5, "epoch %d training log loss %.4f", epochs, loss);
    }
    fclose(f);
    cr_expect_eq(epochs, 5);
    cr_expect_geq(res.test_auc, 0.90, "frappe MLP with %d workers: AUC %.4f (log loss %.4f)",
                  job.workers, res.test_auc, res.test_logloss);
}

Test(cluster_deep, deep_frappe_mpirun_two_servers_two_workers)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *data = s_data("frappe mpirun test");
    char train[300], test[300], metrics[300], cmd[4096], out[65536];
    s_frappe_ffm(data, "frappe.validation", train, sizeof train);
    s_frappe_ffm(data, "frappe.test", test, sizeof test);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", s_dir);
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-np 5 %s train --model deep --train %s --test %s --servers 2 "
             "--epochs 5 --dim 32 --metrics %s --progress off",
             PSREC_BINARY, train, test, metrics);
    int rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "mpirun failed (%d):\n%s", rc, out);
    double auc = th_last_metric(metrics, "test_auc");
    cr_log_info("frappe deep under mpirun, 5 epochs: AUC %.4f", auc);
    cr_expect_geq(auc, 0.94, "frappe deep AUC %.4f under mpirun:\n%s", auc, out);
}

/* ------------------------------------------------------------------------
 * MovieLens 100K u1
 * ------------------------------------------------------------------------ */

Test(cluster_deep, deep_ml100k_user_item_fields)
{
    const char *data = s_data("ml-100k deep test");
    cm_job job = s_job("deep");
    s_ml100k_job(&job, data, 0);
    job.dim = 8;
    job.l2 = 0.1;
    job.epochs = 10;
    sch_result res = th_local_ok(&job);
    cr_log_info("ml-100k u1 deep (DeepFM on user, item): RMSE %.4f", res.test_rmse);
    /* the global mean scores 1.154 on u1, biased MF about 0.93 */
    cr_expect(res.test_rmse > 0 && res.test_rmse < 0.95, "ml-100k u1 deep RMSE %.4f",
              res.test_rmse);
}

Test(cluster_deep, ffm_ml100k_side_features)
{
    const char *data = s_data("ml-100k ffm test");
    cm_job job = s_job("ffm");
    s_ml100k_job(&job, data, 1);
    job.dim = 4;
    job.l2 = 0.1;
    job.epochs = 10;
    sch_result res = th_local_ok(&job);
    cr_log_info("ml-100k u1 ffm with side features: RMSE %.4f", res.test_rmse);
    cr_expect(res.test_rmse > 0 && res.test_rmse < 0.95, "ml-100k u1 ffm RMSE %.4f",
              res.test_rmse);
}

/* ------------------------------------------------------------------------
 * Configuration errors
 * ------------------------------------------------------------------------ */

Test(cluster_deep, clear_errors_before_training)
{
    char svm[300];
    snprintf(svm, sizeof svm, "%s/plain.libsvm", s_dir);
    FILE *f = fopen(svm, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 20; i++)
        fprintf(f, "%d 1:1 %d:1\n", i % 2, 2 + i % 5);
    fclose(f);
    sch_result res;
    cm_error err = {0};

    cm_job job = s_job("ffm");
    snprintf(job.train, sizeof job.train, "%s", svm);
    cr_expect_eq(th_local(&job, &res, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "plain.libsvm") && strstr(err.msg, "libffm"), "%s", err.msg);

    char ffm[300];
    snprintf(ffm, sizeof ffm, "%s/a.ffm", s_dir);
    f = fopen(ffm, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 20; i++)
        fprintf(f, "%d 0:%d:1 1:%d:1\n", i % 2, i % 3, 10 + i % 4);
    fprintf(f, "1 0:1:1 5:2:1\n"); /* line 21: a field past the first line's 2 */
    fclose(f);
    job = s_job("deep");
    snprintf(job.train, sizeof job.train, "%s", ffm);
    snprintf(job.hidden, sizeof job.hidden, "64,x");
    cr_expect_eq(th_local(&job, &res, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "hidden") != NULL, "%s", err.msg);

    /* the bad line is named and, with max_bad_lines = 0, stops the job */
    job = s_job("ffm");
    snprintf(job.train, sizeof job.train, "%s", ffm);
    job.max_bad_lines = 0;
    job.epochs = 1;
    cr_expect_neq(th_local(&job, &res, &err), 0);
    cr_expect(strstr(err.msg, "a.ffm:21") != NULL, "%s", err.msg);
    job.max_bad_lines = 1;
    cr_expect_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
    cr_expect_eq(res.n_train, 20);
}
