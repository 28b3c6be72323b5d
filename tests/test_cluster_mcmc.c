/* Integration tests for method mcmc (cluster/mcmc.c): the Bayesian FM on
 * real data through the job path (cl_run_local and the psrec binary):
 * ml-100k with side features, plain ratings as mf, frappe as a binary
 * task, the metrics file, and the refusals. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/mcmc.h"
#include "cluster/run.h"
#include "common/log.h"
#include "helpers.h"
#include "tmpdir.h"

static void s_init(void)
{
    th_tmpdir_make("mcmc");
}

TestSuite(cluster_mcmc, .init = s_init, .fini = th_tmpdir_remove, .timeout = 300);

static const char *s_data(void)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): mcmc test skipped");
    return data;
}

static cm_job s_job(const char *model, const char *data, int side)
{
    cm_log_set_level(CM_LOG_ERROR);
    cm_job job = cm_job_default();
    snprintf(job.model, sizeof job.model, "%s", model);
    job.method = CM_METHOD_MCMC;
    cm_job_model_defaults(&job);
    job.local = 1;
    job.progress = 0;
    job.log_level = CM_LOG_ERROR;
    snprintf(job.train, sizeof job.train, "%.900s/ml-100k/u1.base", data);
    snprintf(job.test, sizeof job.test, "%.900s/ml-100k/u1.test", data);
    if (side) {
        snprintf(job.user_features, sizeof job.user_features, "%.900s/ml-100k/u.user", data);
        snprintf(job.item_features, sizeof job.item_features, "%.900s/ml-100k/u.item", data);
    }
    return job;
}

/* The defaults of method mcmc need no lr or l2: on u1 with u.user/u.item
 * they end near 0.902 (sgd fm at its defaults ends above 1.0, and 0.913 at
 * its best l2); every sweep is a metrics line, the last is the result. */
Test(cluster_mcmc, fm_side_features_ml100k_u1)
{
    const char *data = s_data();
    cm_job job = s_job("fm", data, 1);
    cr_expect_eq(job.epochs, 100);
    cr_expect_eq(job.dim, 8);
    /* the sanitizer build's sweeps are several times slower: 25 sweeps
     * (measured 0.9240) instead of 60 */
    const int sweeps = TH_SANITIZED ? 25 : 60;
    const double bound = TH_SANITIZED ? 0.935 : 0.915;
    job.epochs = sweeps;
    snprintf(job.metrics, sizeof job.metrics, "%s/fm.jsonl", th_dir);
    sch_result res = th_local_ok(&job);
    cr_log_info("mcmc fm with side features, %d sweeps: RMSE %.4f", sweeps, res.test_rmse);
    cr_expect_eq(res.epochs, sweeps);
    cr_expect_eq(res.n_test, 20000);
    /* the global mean scores 1.154 on u1 */
    cr_expect(res.test_rmse > 0.85 && res.test_rmse < bound, "RMSE %.4f", res.test_rmse);
    FILE *f = fopen(job.metrics, "r");
    cr_assert_not_null(f);
    char line[4096];
    int lines = 0;
    double first = -1;
    while (fgets(line, sizeof line, f)) {
        lines++;
        const char *p = strstr(line, "\"test_rmse\": ");
        cr_assert_not_null(p, "%s", line);
        if (first < 0)
            first = atof(p + 13);
    }
    fclose(f);
    cr_expect_eq(lines, sweeps);
    cr_expect(fabs(th_last_metric(job.metrics, "test_rmse") - res.test_rmse) < 1e-6,
              "last line %.9g, result %.9g", th_last_metric(job.metrics, "test_rmse"),
              res.test_rmse);
    cr_expect_lt(res.test_rmse, first, "the average improves on the first draw (%.4f)",
                 first);
}

/* mf with method mcmc is the FM over (user, item): Bayesian biased MF. */
Test(cluster_mcmc, mf_ml100k_u1)
{
    const char *data = s_data();
    cm_job job = s_job("mf", data, 0);
    if (TH_SANITIZED)
        job.epochs = 40; /* measured 0.9375; the chain needs its 100 for the rest */
    sch_result res = th_local_ok(&job);
    cr_log_info("mcmc mf, %d sweeps: RMSE %.4f", res.epochs, res.test_rmse);
    /* seeds 1-4: 0.909-0.912; sgd mf at its defaults 0.9235, LIBMF tuned on
     * this very test split 0.918 */
    cr_expect(res.test_rmse > 0.85 && res.test_rmse < (TH_SANITIZED ? 0.95 : 0.918),
              "RMSE %.4f", res.test_rmse);
}

/* A binary task (frappe, ±1 labels) samples the probit model. */
Test(cluster_mcmc, fm_binary_frappe)
{
    const char *data = s_data();
    cm_job job = s_job("fm", data, 0);
    snprintf(job.train, sizeof job.train, "%.900s/frappe/frappe.validation.libfm", data);
    snprintf(job.test, sizeof job.test, "%.900s/frappe/frappe.test.libfm", data);
    job.epochs = TH_SANITIZED ? 10 : 20; /* 10: AUC 0.925, log loss 0.343 */
    sch_result res = th_local_ok(&job);
    cr_log_info("mcmc fm on frappe, %d sweeps: AUC %.4f log loss %.4f", job.epochs,
                res.test_auc, res.test_logloss);
    cr_expect_gt(res.test_auc, 0.90, "AUC %.4f", res.test_auc);
    cr_expect(res.test_logloss > 0 && res.test_logloss < 0.4, "log loss %.4f",
              res.test_logloss);
    cr_expect_lt(res.test_rmse, 0, "no RMSE for a binary task");
}

/* What mcmc cannot do is said before anything trains. */
Test(cluster_mcmc, refusals)
{
    const char *data = s_data();
    char cmd[4096], out[8192];
    snprintf(cmd, sizeof cmd,
             "OMPI_COMM_WORLD_SIZE=4 %s train --model fm --method mcmc --train "
             "%s/ml-100k/u1.base",
             PSREC_BINARY, data);
    cr_expect_eq(th_run(cmd, out, sizeof out), 2, "%s", out);
    cr_expect(strstr(out, "one process") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd,
             "%s train --model ffm --method mcmc --local --train %s/ml-100k/u1.base",
             PSREC_BINARY, data);
    cr_expect_eq(th_run(cmd, out, sizeof out), 2, "%s", out);
    cr_expect(strstr(out, "models fm and mf") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd,
             "%s train --model fm --method mcmc --local --train %s/ml-100k/u1.base "
             "--checkpoint_dir %s/ck",
             PSREC_BINARY, data, th_dir);
    cr_expect_eq(th_run(cmd, out, sizeof out), 1, "%s", out);
    cr_expect(strstr(out, "keeps no checkpoints") != NULL, "%s", out);
}

/* mf's CSV columns by name are sgd's loader's: mcmc says so. */
Test(cluster_mcmc, mf_named_columns_are_refused)
{
    const char *data = s_data();
    char cmd[4096], out[8192];
    snprintf(cmd, sizeof cmd,
             "%s train --model mf --method mcmc --local --format csv --label_column r "
             "--train %s/ml-100k/u1.base",
             PSREC_BINARY, data);
    cr_expect_eq(th_run(cmd, out, sizeof out), 1, "%s", out);
    cr_expect(strstr(out, "label_column") != NULL && strstr(out, "method sgd") != NULL, "%s",
              out);
}

/* A job as the train command has it: model, train file and the keys set
 * through cm_job_set (so that they count as the user's), then settled. */
static cm_job s_auto(const char *model, const char *train, const char *key, const char *value,
                     int local, char *why, size_t n)
{
    cm_job job = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_set(&job, "model", model, "test", &err), 0, "%s", err.msg);
    cr_assert_eq(cm_job_set(&job, "train", train, "test", &err), 0, "%s", err.msg);
    if (key)
        cr_assert_eq(cm_job_set(&job, key, value, "test", &err), 0, "%s", err.msg);
    cm_job_model_defaults(&job);
    cr_assert_eq(job.method, CM_METHOD_AUTO);
    cl_method_settle(&job, local, why, n, NULL);
    return job;
}

/* method = auto: mcmc for a small regression job in one process that sets
 * no sgd key, sgd for everything else, each with its reason. */
Test(cluster_mcmc, auto_settles_by_model_task_size_and_keys)
{
    const char *data = s_data();
    char u1[1024], frappe[1024], why[256];
    snprintf(u1, sizeof u1, "%.900s/ml-100k/u1.base", data);
    snprintf(frappe, sizeof frappe, "%.900s/frappe/frappe.validation.libfm", data);
    cm_job j = s_auto("mf", u1, NULL, NULL, 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_MCMC, "%s", why);
    cr_expect(strstr(why, "80000 training lines") != NULL, "%s", why);
    j = s_auto("fm", u1, NULL, NULL, 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_MCMC, "%s", why);
    j = s_auto("mf", u1, NULL, NULL, 0, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_SGD, "under mpirun: %s", why);
    cr_expect(strstr(why, "cluster") != NULL, "%s", why);
    j = s_auto("mf", u1, "lr", "0.05", 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_SGD);
    cr_expect(strstr(why, "lr is set") != NULL, "%s", why);
    j = s_auto("fm", u1, "checkpoint_dir", th_dir, 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_SGD);
    cr_expect(strstr(why, "checkpoint_dir") != NULL, "%s", why);
    j = s_auto("fm", u1, "task", "binary", 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_SGD);
    cr_expect(strstr(why, "binary") != NULL, "%s", why);
    j = s_auto("mf", u1, "rating_column", "2", 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_SGD);
    cr_expect(strstr(why, "rating_column") != NULL, "%s", why);
    j = s_auto("ffm", u1, NULL, NULL, 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_SGD);
    j = s_auto("fm", frappe, NULL, NULL, 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_SGD, "frappe's labels are binary: %s", why);
    cr_expect(strstr(why, "binary labels") != NULL, "%s", why);
    /* one line past the bound: sgd; the bound itself: mcmc */
    char big[600];
    snprintf(big, sizeof big, "%s/big.txt", th_dir);
    FILE *f = fopen(big, "w");
    cr_assert_not_null(f);
    for (long i = 0; i < CL_AUTO_MCMC_MAX_LINES; i++)
        fprintf(f, "%ld %ld 3\n", i % 1000, i % 777);
    cr_assert_eq(fclose(f), 0);
    j = s_auto("mf", big, NULL, NULL, 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_MCMC, "%s", why);
    f = fopen(big, "a");
    cr_assert_not_null(f);
    fprintf(f, "1 1 3"); /* no newline: still a line */
    cr_assert_eq(fclose(f), 0);
    j = s_auto("mf", big, NULL, NULL, 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_SGD);
    cr_expect(strstr(why, "more than 1000000") != NULL, "%s", why);
    /* an unreadable file: sgd, whose start names it */
    j = s_auto("mf", "/nonexistent/ratings", NULL, NULL, 1, why, sizeof why);
    cr_expect_eq(j.method, CM_METHOD_SGD);
}

/* Every key that only sgd reads, set by the user even at its default
 * value, makes auto pick sgd and name the key. The list is the one
 * cluster/mcmc.c kept by hand before the key table flagged them. */
Test(cluster_mcmc, auto_picks_sgd_for_each_key_only_sgd_reads)
{
    static const char *const sgd_keys[] = {
        "validation", "validation_fraction", "patience", "optimizer", "lr", "l2",
        "regularization", "min_count", "ttl", "max_rows", "adam_beta1", "adam_beta2",
        "ftrl_l1", "ftrl_beta", "batch", "schedule", "consistency", "staleness",
        "blocks_per_worker", "wire_dtype", "servers", "workers", "slots", "shared_rows",
        "checkpoint_dir", "checkpoint_every", "checkpoint_secs", "checkpoint_keep", "resume",
        "restarts", "adagrad_init", "refit"};
    const char *data = s_data();
    char u1[1024], why[256];
    snprintf(u1, sizeof u1, "%.900s/ml-100k/u1.base", data);
    /* each key's default, as the job prints it */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    const cm_job def = cm_job_default();
    cm_job_print(f, &def);
    cr_assert_eq(fclose(f), 0);
    cm_job j = s_auto("mf", u1, NULL, NULL, 1, why, sizeof why);
    cr_assert_eq(j.method, CM_METHOD_MCMC, "none set: %s", why);
    cr_expect_null(cm_job_sgd_key_set(&j));
    for (size_t i = 0; i < sizeof sgd_keys / sizeof sgd_keys[0]; i++) {
        char head[64], value[CM_PATH_MAX] = "";
        snprintf(head, sizeof head, "\n%s = ", sgd_keys[i]);
        const char *at = strstr(text, head);
        cr_assert_not_null(at, "%s", sgd_keys[i]);
        sscanf(at + strlen(head), "%1023[^\n]", value);
        j = s_auto("mf", u1, sgd_keys[i], value, 1, why, sizeof why);
        cr_expect_eq(j.method, CM_METHOD_SGD, "%s = %s: %s", sgd_keys[i], value, why);
        cr_expect_str_eq(cm_job_sgd_key_set(&j), sgd_keys[i]);
        char want[96];
        snprintf(want, sizeof want, "%s is set, which only sgd reads", sgd_keys[i]);
        cr_expect(strstr(why, want) != NULL, "%s", why);
    }
    free(text);
    /* keys both methods read ask for nothing */
    j = s_auto("mf", u1, "dim", "8", 1, why, sizeof why);
    cr_expect_null(cm_job_sgd_key_set(&j));
    cr_expect_eq(j.method, CM_METHOD_MCMC, "%s", why);
}

/* The train command says what auto chose and why, and trains with it. */
/* method auto reads fm's data to see its task; where it picks mcmc it
 * hands them on, and the chain run from them is the chain run from a
 * fresh load (same seed, same draws, same figures); where it picks sgd,
 * or is asked for nothing, it hands nothing on. */
Test(cluster_mcmc, auto_hands_on_the_data_it_read)
{
    const char *data = s_data();
    char u1[1024], frappe[1024], why[256];
    snprintf(u1, sizeof u1, "%.900s/ml-100k/u1.base", data);
    snprintf(frappe, sizeof frappe, "%.900s/frappe/frappe.validation.libfm", data);
    cm_job job = s_job("fm", data, 1);
    job.method = CM_METHOD_AUTO;
    job.epochs = TH_SANITIZED ? 3 : 10;
    cl_mcmc_data *loaded = NULL;
    cl_method_settle(&job, 1, why, sizeof why, &loaded);
    cr_assert_eq(job.method, CM_METHOD_MCMC, "%s", why);
    cr_assert_not_null(loaded, "fm with task auto was read to settle it");
    sch_result handed, fresh;
    cm_error err = {0};
    FILE *out = fopen("/dev/null", "w");
    cr_assert_not_null(out);
    cr_assert_eq(cl_run_mcmc_loaded(&job, loaded, out, &handed, &err), 0, "%s", err.msg);
    cr_assert_eq(cl_run_mcmc(&job, out, &fresh, &err), 0, "%s", err.msg);
    fclose(out);
    cr_expect_eq(handed.n_train, 80000);
    cr_expect_eq(handed.n_test, fresh.n_test);
    cr_expect_eq(handed.test_rmse, fresh.test_rmse, "%.6f against %.6f", handed.test_rmse,
                 fresh.test_rmse);
    cr_expect_eq(handed.test_mae, fresh.test_mae);

    cm_job binary = s_auto("fm", frappe, NULL, NULL, 1, why, sizeof why);
    binary.method = CM_METHOD_AUTO;
    loaded = (cl_mcmc_data *)&binary; /* must be reset */
    cl_method_settle(&binary, 1, why, sizeof why, &loaded);
    cr_expect_eq(binary.method, CM_METHOD_SGD);
    cr_expect_null(loaded, "sgd gets nothing handed on");
    cm_job mf = s_auto("mf", u1, NULL, NULL, 1, why, sizeof why);
    mf.method = CM_METHOD_AUTO;
    cl_method_settle(&mf, 1, why, sizeof why, &loaded);
    cr_expect_eq(mf.method, CM_METHOD_MCMC, "%s", why);
    cr_expect_null(loaded, "mf's task needs no read");
}

Test(cluster_mcmc, train_command_prints_the_choice)
{
    const char *data = s_data();
    char cmd[4096], out[16384];
    snprintf(cmd, sizeof cmd,
             "%s train --model mf --local --progress off --epochs 3 --train "
             "%s/ml-100k/u1.base --test %s/ml-100k/u1.test",
             PSREC_BINARY, data, data);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "method mcmc (auto: regression on 80000 training lines") != NULL,
              "%s", out);
    cr_expect(strstr(out, "after 3 epochs") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd,
             "%s train --model mf --local --progress off --epochs 3 --lr 0.02 --train "
             "%s/ml-100k/u1.base --test %s/ml-100k/u1.test",
             PSREC_BINARY, data, data);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "method sgd (auto: lr is set") != NULL, "%s", out);
}
