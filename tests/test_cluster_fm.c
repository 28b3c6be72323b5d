/* Factorization machines end to end: a --local cluster on frappe (libFM
 * format, binary labels) and the Criteo sample (CSV), and a regression on
 * a generated libsvm file. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cluster/run.h"
#include "common/log.h"
#include "common/rng.h"
#include "helpers.h"

static cm_job s_job(void)
{
    cm_log_set_level(CM_LOG_ERROR);
    cm_job job = cm_job_default();
    snprintf(job.model, sizeof job.model, "fm");
    job.local = 1;
    job.servers = 2;
    job.workers = 2;
    job.progress = 0;
    job.log_level = CM_LOG_ERROR;
    job.l2 = 0.01;
    job.timeout = 30;
    return job;
}

TestSuite(cluster_fm, .timeout = 300);

Test(cluster_fm, frappe_binary_auc)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): frappe test skipped");
    cm_job job = s_job();
    snprintf(job.train, sizeof job.train, "%.900s/frappe/frappe.validation.libfm", data);
    snprintf(job.test, sizeof job.test, "%.900s/frappe/frappe.test.libfm", data);
    sch_result res = th_local_ok(&job);
    /* validation is on by default: patience may end the run early */
    cr_expect(res.epochs == job.epochs || (res.early_stopped && res.best_epoch > 0),
              "%d of %d epochs without an early stop", res.epochs, job.epochs);
    /* libFM MCMC k=64 reaches 0.943 and xLearn's defaults 0.929 on this split */
    cr_expect_geq(res.test_auc, 0.945, "frappe test AUC %.4f", res.test_auc);
    cr_expect(res.test_logloss > 0 && res.test_logloss < 0.3, "log loss %.4f",
              res.test_logloss);
}

Test(cluster_fm, criteo_csv_reads_as_it_is)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): Criteo test skipped");
    cm_job job = s_job();
    snprintf(job.train, sizeof job.train, "%.900s/criteo-tiny/train.tiny.csv", data);
    snprintf(job.test, sizeof job.test, "%.900s/criteo-tiny/train.tiny.csv", data);
    snprintf(job.label_column, sizeof job.label_column, "Label");
    snprintf(job.numeric_columns, sizeof job.numeric_columns,
             "I1,I2,I3,I4,I5,I6,I7,I8,I9,I10,I11,I12,I13");
    snprintf(job.categorical_columns, sizeof job.categorical_columns,
             "C1,C2,C3,C4,C5,C6,C7,C8,C9,C10,C11,C12,C13,C14,C15,C16,C17,C18,C19,C20,C21,"
             "C22,C23,C24,C25,C26");
    job.epochs = 5;
    job.workers = 1;
    cr_expect_eq(job.numeric_transform, 1, "log by default");
    sch_result res = th_local_ok(&job);
    cr_expect_eq(res.n_train + res.n_valid, 1999, "trained on or held out for validation");
    /* fitting its own training rows, the integer columns (raw counts up to
     * tens of thousands) through their log: measured 0.863 */
    cr_expect_gt(res.test_auc, 0.8, "train AUC %.4f", res.test_auc);
    /* as read, those counts swamp the model: its first epoch's training log
     * loss was 178475 against 10.6, and its AUC 0.711 at best */
    job.numeric_transform = 0;
    sch_result raw = th_local_ok(&job);
    cr_log_info("criteo-tiny on its own rows: AUC %.4f with log, %.4f as read", res.test_auc,
                raw.test_auc);
    cr_expect_gt(res.test_auc, raw.test_auc, "log %.4f, as read %.4f", res.test_auc,
                 raw.test_auc);
}

Test(cluster_fm, regression_recovers_a_planted_fm)
{
    char dir[] = "/tmp/psrec-fm-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char train[300], test[300];
    snprintf(train, sizeof train, "%s/train.libsvm", dir);
    snprintf(test, sizeof test, "%s/test.libsvm", dir);
    /* y = 1 + w_a + w_b + <v_a, v_b> + noise over pairs of 40 features */
    enum { F = 40, K = 3 };
    double w[F], v[F][K];
    cm_rng r;
    cm_rng_seed(&r, 8);
    for (int i = 0; i < F; i++) {
        w[i] = 0.5 * cm_rng_normal(&r);
        for (int k = 0; k < K; k++)
            v[i][k] = 0.5 * cm_rng_normal(&r);
    }
    FILE *f[2] = {fopen(train, "w"), fopen(test, "w")};
    cr_assert(f[0] && f[1]);
    for (int n = 0; n < 24000; n++) {
        int a = (int)cm_rng_below(&r, F / 2), b = F / 2 + (int)cm_rng_below(&r, F / 2);
        double y = 1 + w[a] + w[b] + 0.1 * cm_rng_normal(&r);
        for (int k = 0; k < K; k++)
            y += v[a][k] * v[b][k];
        fprintf(f[n % 6 == 0], "%.6f %d:1 %d:1\n", y, a, b);
    }
    fclose(f[0]);
    fclose(f[1]);
    cm_job job = s_job();
    snprintf(job.train, sizeof job.train, "%s", train);
    snprintf(job.test, sizeof job.test, "%s", test);
    job.dim = 8;
    job.l2 = 0.001;
    sch_result res = th_local_ok(&job);
    cr_expect_lt(res.test_auc, 0, "a regression has no AUC");
    cr_expect_lt(res.test_rmse, 0.2, "test RMSE %.4f (noise 0.1)", res.test_rmse);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

Test(cluster_fm, bad_feature_lines_name_file_and_line)
{
    char dir[] = "/tmp/psrec-fm-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char train[300];
    snprintf(train, sizeof train, "%s/bad.libsvm", dir);
    FILE *f = fopen(train, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 30; i++)
        fprintf(f, i % 4 == 3 ? "1 3:x 4:1\n" : "1 3:1 4:1\n");
    fclose(f);
    cm_job job = s_job();
    snprintf(job.train, sizeof job.train, "%s", train);
    job.max_bad_lines = 2;
    sch_result res;
    cm_error err = {0};
    int rc = th_local(&job, &res, &err);
    cr_expect_neq(rc, 0);
    cr_expect(strstr(err.msg, "bad.libsvm") != NULL, "%s", err.msg);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

/* MovieLens 100K with u.user and u.item: FM with side features beats
 * biased MF on u1, and predicts users never seen in training better than
 * the global mean. */
Test(cluster_fm, ml100k_side_features_and_cold_start)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): ml-100k test skipped");
    char u1b[1000], u1t[1000], uu[1000], ui[1000], ud[1000];
    snprintf(u1b, sizeof u1b, "%.900s/ml-100k/u1.base", data);
    snprintf(u1t, sizeof u1t, "%.900s/ml-100k/u1.test", data);
    snprintf(uu, sizeof uu, "%.900s/ml-100k/u.user", data);
    snprintf(ui, sizeof ui, "%.900s/ml-100k/u.item", data);
    snprintf(ud, sizeof ud, "%.900s/ml-100k/u.data", data);

    /* u1: MF with its defaults, FM with side features */
    cm_job mf = cm_job_default();
    snprintf(mf.train, sizeof mf.train, "%s", u1b);
    snprintf(mf.test, sizeof mf.test, "%s", u1t);
    mf.local = 1;
    mf.progress = 0;
    mf.log_level = CM_LOG_ERROR;
    sch_result r_mf = th_local_ok(&mf);
    cm_job fm = s_job();
    snprintf(fm.train, sizeof fm.train, "%s", u1b);
    snprintf(fm.test, sizeof fm.test, "%s", u1t);
    snprintf(fm.user_features, sizeof fm.user_features, "%s", uu);
    snprintf(fm.item_features, sizeof fm.item_features, "%s", ui);
    fm.l2 = 0.1;
    sch_result r_fm = th_local_ok(&fm);
    cr_log_info("ml-100k u1: MF RMSE %.4f, FM with side features %.4f", r_mf.test_rmse,
                r_fm.test_rmse);
    cr_expect_lt(r_fm.test_rmse, r_mf.test_rmse, "FM %.4f vs MF %.4f", r_fm.test_rmse,
                 r_mf.test_rmse);

    /* cold start: every rating of users whose id ends in 0 is held out */
    char dir[] = "/tmp/psrec-cold-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char tr[300], te[300];
    snprintf(tr, sizeof tr, "%s/warm.tsv", dir);
    snprintf(te, sizeof te, "%s/cold.tsv", dir);
    FILE *in = fopen(ud, "r"), *a = fopen(tr, "w"), *b = fopen(te, "w");
    cr_assert(in && a && b);
    unsigned u, i, r, t;
    double sum = 0, n = 0;
    while (fscanf(in, "%u %u %u %u", &u, &i, &r, &t) == 4) {
        fprintf(u % 10 == 0 ? b : a, "%u\t%u\t%u\n", u, i, r);
        if (u % 10) {
            sum += r;
            n++;
        }
    }
    fclose(in);
    fclose(a);
    fclose(b);
    /* the global mean's RMSE on the cold users */
    double mean = sum / n, sq = 0, m = 0;
    b = fopen(te, "r");
    while (fscanf(b, "%u %u %u", &u, &i, &r) == 3) {
        sq += (r - mean) * (r - mean);
        m++;
    }
    fclose(b);
    double mean_rmse = sqrt(sq / m);
    cm_job cold = fm;
    snprintf(cold.train, sizeof cold.train, "%s", tr);
    snprintf(cold.test, sizeof cold.test, "%s", te);
    sch_result r_cold = th_local_ok(&cold);
    cm_job cold_mf = mf;
    snprintf(cold_mf.train, sizeof cold_mf.train, "%s", tr);
    snprintf(cold_mf.test, sizeof cold_mf.test, "%s", te);
    sch_result r_cold_mf = th_local_ok(&cold_mf);
    cr_log_info("cold users (%.0f ratings): global mean RMSE %.4f, MF %.4f, FM with side "
                "features %.4f",
                m, mean_rmse, r_cold_mf.test_rmse, r_cold.test_rmse);
    cr_expect_lt(r_cold.test_rmse, mean_rmse, "cold FM %.4f vs global mean %.4f",
                 r_cold.test_rmse, mean_rmse);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

/* A model without an item table exports its tables as npy and psm; item
 * vectors (fvecs) are left out unless asked for, and then refused with the
 * reason. */
Test(cluster_fm, export_without_item_table)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): frappe test skipped");
    char dir[] = "/tmp/psrec-fmx-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    cm_job job = s_job();
    snprintf(job.train, sizeof job.train, "%.900s/frappe/frappe.validation.libfm", data);
    job.epochs = 2;
    snprintf(job.checkpoint_dir, sizeof job.checkpoint_dir, "%s/ck", dir);
    th_local_ok(&job);
    static char cmd[2048], out[16384];
    snprintf(cmd, sizeof cmd, "%s export %s/ck --out %s/ex", PSREC_BINARY, dir, dir);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "formats npy psm") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "test -s %s/ex/feature.npy && test -s %s/ex/model.psm && "
             "test ! -e %s/ex/item.fvecs", dir, dir, dir);
    cr_expect_eq(th_run(cmd, out, sizeof out), 0, "files: %s", out);
    snprintf(cmd, sizeof cmd, "%s export %s/ck --out %s/ex2 --format fvecs", PSREC_BINARY, dir,
             dir);
    cr_expect_neq(th_run(cmd, out, sizeof out), 0, "fvecs asked for: %s", out);
    cr_expect(strstr(out, "no 'item' table") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    th_run(cmd, NULL, 0);
}
