/* Validation inside training, end to end on MovieLens 100K (and frappe):
 * the carved validation rows are the same for any worker count; every
 * evaluation writes the validation metric; a config that overfits stops
 * early with exit 0; the final figures are the chosen epoch's as the
 * metrics file recorded them; BEST names that epoch's checkpoint and an
 * export of the checkpoint root scores like it; resume goes on from the
 * choice. --local and mpirun -np 4. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cluster/run.h"
#include "common/ckpt.h"
#include "common/dataset.h"
#include "common/log.h"
#include "helpers.h"
#include "serve/export.h"

TestSuite(cluster_valid, .timeout = 600);

#define S_MAX_EPOCHS 64

/* One metrics file read back: per epoch its test and validation RMSE
 * (NAN where null or absent), and the final record's fields. */
typedef struct {
    int n;                               /* epoch lines */
    double test[S_MAX_EPOCHS + 1];       /* by epoch number */
    double valid[S_MAX_EPOCHS + 1];
    int final_seen;
    double final_chosen, final_test, final_valid, final_early;
} s_metrics;

static double s_field(const char *line, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(line, pat);
    if (!p || strncmp(p + strlen(pat), "null", 4) == 0)
        return NAN;
    return strtod(p + strlen(pat), NULL);
}

static s_metrics s_read_metrics(const char *path)
{
    s_metrics m;
    memset(&m, 0, sizeof m);
    for (int e = 0; e <= S_MAX_EPOCHS; e++)
        m.test[e] = m.valid[e] = NAN;
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        if (!isnan(s_field(line, "final"))) {
            m.final_seen = 1;
            m.final_chosen = s_field(line, "chosen_epoch");
            m.final_test = s_field(line, "test_rmse");
            m.final_valid = s_field(line, "valid_rmse");
            m.final_early = s_field(line, "early_stop");
            continue;
        }
        int e = (int)s_field(line, "epoch");
        cr_assert(e >= 1 && e <= S_MAX_EPOCHS, "%s", line);
        cr_expect_not(m.final_seen, "an epoch line after the final record");
        m.test[e] = s_field(line, "test_rmse");
        m.valid[e] = s_field(line, "valid_rmse");
        m.n++;
    }
    fclose(f);
    return m;
}

static cm_job s_job(const char *data, const char *model)
{
    cm_log_set_level(CM_LOG_ERROR);
    cm_job job = cm_job_default();
    snprintf(job.model, sizeof job.model, "%s", model);
    snprintf(job.train, sizeof job.train, "%.900s/ml-100k/u1.base", data);
    snprintf(job.test, sizeof job.test, "%.900s/ml-100k/u1.test", data);
    job.local = 1;
    job.servers = 1;
    job.workers = 2;
    job.progress = 0;
    job.log_level = CM_LOG_ERROR;
    job.timeout = 30;
    cm_job_model_defaults(&job);
    return job;
}

/* u1.test scored with an exported mf model: mean + b_u + b_i + <p_u, q_i>,
 * clipped; an id without a row contributes zeros (as in evaluation). */
static const float *s_row(const sv_table *t, uint64_t id)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t->ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->n && t->ids[lo] == id ? t->rows + lo * (size_t)t->dim : NULL;
}

static double s_export_rmse(const char *root, const char *test)
{
    sv_export_model m;
    cm_error err = {0};
    cr_assert_eq(sv_export_load(root, &m, &err), 0, "%s", err.msg);
    cr_assert_str_eq(m.model, "mf");
    cr_assert_eq(m.n_tables, 2);
    cm_ratings t;
    cr_assert_eq(cm_ratings_load(test, NULL, &t, &err), 0, "%s", err.msg);
    double sq = 0;
    const int dim = m.tables[0].dim;
    for (size_t j = 0; j < t.n; j++) {
        const float *p = s_row(&m.tables[0], t.user[j]), *q = s_row(&m.tables[1], t.item[j]);
        double y = m.global_mean + (p ? p[0] : 0) + (q ? q[0] : 0);
        for (int k = 1; p && q && k < dim; k++)
            y += (double)p[k] * q[k];
        y = y < m.clip_lo ? m.clip_lo : y > m.clip_hi ? m.clip_hi : y;
        sq += (y - t.rating[j]) * (y - t.rating[j]);
    }
    double rmse = sqrt(sq / (double)t.n);
    cm_ratings_free(&t);
    sv_export_model_free(&m);
    return rmse;
}

static uint32_t s_ckpt_epoch(const char *root, const char *spec)
{
    char dir[4096];
    cm_error err = {0};
    cr_assert_eq(cm_ckpt_resolve(root, spec, dir, sizeof dir, &err), 0, "%s", err.msg);
    cm_manifest m;
    cr_assert_eq(cm_manifest_read(dir, &m, &err), 0, "%s", err.msg);
    uint32_t e = m.epoch;
    cm_manifest_free(&m);
    return e;
}

/* Little regularization and many epochs: the validation RMSE turns up
 * after a few epochs and patience ends the run. The chosen epoch is the
 * one with the lowest validation RMSE in the metrics file; the final
 * figures are its test figures; BEST names its checkpoint and LATEST the
 * last; an export of the root scores u1.test as the chosen epoch did. */
Test(cluster_valid, local_mf_overfits_stops_early_and_keeps_the_chosen_epoch)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    char dir[] = "/tmp/psrec-valid-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    cm_job job = s_job(data, "mf");
    job.l2 = 0.002;
    job.epochs = 40;
    snprintf(job.metrics, sizeof job.metrics, "%s/m.jsonl", dir);
    snprintf(job.checkpoint_dir, sizeof job.checkpoint_dir, "%s/ck", dir);
    /* pruning keeps the newest and the chosen epoch's */
    job.checkpoint_keep = 1;
    sch_result res;
    cm_error err = {0};
    cr_assert_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
    cr_expect_eq(res.early_stopped, 1, "ran all %d epochs", res.epochs);
    cr_expect_lt(res.epochs, job.epochs);
    cr_expect_eq(res.epochs - res.best_epoch, job.patience,
                 "stopped at %d, chosen %d: patience %d evaluations", res.epochs,
                 res.best_epoch, job.patience);
    cr_expect_gt(res.n_valid, 0);

    s_metrics m = s_read_metrics(job.metrics);
    cr_assert_eq(m.n, res.epochs);
    int argmin = 0;
    for (int e = 1; e <= m.n; e++) {
        cr_expect(isfinite(m.valid[e]) && m.valid[e] > 0, "epoch %d has no valid_rmse", e);
        if (argmin == 0 || m.valid[e] < m.valid[argmin])
            argmin = e;
    }
    cr_expect_eq(res.best_epoch, argmin, "chosen %d, lowest validation RMSE at %d",
                 res.best_epoch, argmin);
    cr_expect_float_eq(res.test_rmse, m.test[argmin], 1e-7, "final test RMSE %.6f vs the "
                       "chosen epoch's %.6f", res.test_rmse, m.test[argmin]);
    cr_expect_float_eq(res.valid_metric, m.valid[argmin], 1e-7);
    cr_assert(m.final_seen, "no final record");
    cr_expect_eq((int)m.final_chosen, argmin);
    cr_expect_float_eq(m.final_test, m.test[argmin], 1e-7);
    cr_expect_float_eq(m.final_valid, m.valid[argmin], 1e-7);
    cr_expect_eq((int)m.final_early, 1);
    /* overfitting is what stopped it: the last epoch is worse on test too,
     * so the checks below can tell the two models apart */
    cr_expect_gt(m.test[res.epochs], m.test[argmin] + 0.005, "last %.4f vs chosen %.4f",
                 m.test[res.epochs], m.test[argmin]);

    cr_expect_eq(s_ckpt_epoch(job.checkpoint_dir, "best"), (uint32_t)argmin);
    cr_expect_eq(s_ckpt_epoch(job.checkpoint_dir, "auto"), (uint32_t)res.epochs,
                 "resume goes on from the last epoch");
    char test[1024];
    snprintf(test, sizeof test, "%.900s/ml-100k/u1.test", data);
    double exported = s_export_rmse(job.checkpoint_dir, test);
    cr_expect_float_eq(exported, m.test[argmin], 1e-4,
                       "the export scores u1.test at %.5f, the chosen epoch %d at %.5f", exported,
                       argmin, m.test[argmin]);

    char cmd[200];
    snprintf(cmd, sizeof cmd, "ls -d %s/ck/ckpt-* | wc -l", dir);
    char out[64];
    cr_expect_eq(th_run(cmd, out, sizeof out), 0);
    cr_expect_eq(atoi(out), 2, "checkpoint_keep = 1: the newest and BEST's, found %s", out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    th_run(cmd, NULL, 0);
}

/* The carved rows are the same whatever the worker count (mf: each
 * worker carves its shard; fm on ratings: each keeps its stride of the
 * whole file), for mf and fm alike, and are not trained on. */
Test(cluster_valid, carve_is_the_same_for_any_worker_count)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    const char *models[] = {"mf", "fm"};
    uint64_t first = 0;
    for (int k = 0; k < 2; k++)
        for (uint32_t w = 1; w <= 3; w += 2) {
            cm_job job = s_job(data, models[k]);
            job.workers = w;
            job.epochs = 1;
            sch_result res;
            cm_error err = {0};
            cr_assert_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
            if (!first)
                first = res.n_valid;
            cr_expect_eq(res.n_valid, first, "%s with %u workers: %llu validation rows, not %llu",
                         models[k], w, (unsigned long long)res.n_valid,
                         (unsigned long long)first);
            cr_expect_eq(res.n_train + res.n_valid, 80000, "u1.base has 80000 ratings");
            cr_expect_eq(res.best_epoch, 1);
        }
    cr_expect(first > 3000 && first < 5000, "%llu of 80000 is not about 5%%",
              (unsigned long long)first);
}

/* A validation file is used as it is (nothing carved); fraction 0 turns
 * validation off: no chosen epoch, the last epoch reported. */
Test(cluster_valid, validation_file_and_off)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    cm_job job = s_job(data, "mf");
    job.epochs = 2;
    snprintf(job.validation, sizeof job.validation, "%.900s/ml-100k/ua.test", data);
    sch_result res;
    cm_error err = {0};
    cr_assert_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
    cr_expect_eq(res.n_valid, 9430, "ua.test's rows");
    cr_expect_eq(res.n_train, 80000, "nothing carved beside a validation file");
    cr_expect_gt(res.best_epoch, 0);

    cm_job off = s_job(data, "mf");
    off.epochs = 2;
    off.validation_fraction = 0;
    cr_assert_eq(th_local(&off, &res, &err), 0, "%s", err.msg);
    cr_expect_eq(res.n_valid, 0);
    cr_expect_eq(res.n_train, 80000);
    cr_expect_eq(res.best_epoch, 0);
    cr_expect_eq(res.epochs, 2);
}

/* Every model evaluates on validation: fm, ffm, deep on ratings, mf on
 * both schedules; binary fm on frappe chooses on log loss. */
Test(cluster_valid, every_model_chooses_on_validation)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    const char *models[] = {"mf", "mf", "fm", "ffm", "deep"};
    for (int k = 0; k < 5; k++) {
        cm_job job = s_job(data, models[k]);
        job.epochs = 2;
        job.schedule = k == 0 ? CM_SCHED_BLOCKS : CM_SCHED_MINIBATCH;
        sch_result res;
        cm_error err = {0};
        cr_assert_eq(th_local(&job, &res, &err), 0, "%s: %s", models[k], err.msg);
        cr_expect_gt(res.best_epoch, 0, "%s", models[k]);
        cr_expect(res.valid_metric > 0.5 && res.valid_metric < 1.5, "%s: validation RMSE %g",
                  models[k], res.valid_metric);
    }
    cm_job job = s_job(data, "fm");
    snprintf(job.train, sizeof job.train, "%.900s/frappe/frappe.validation.libfm", data);
    snprintf(job.test, sizeof job.test, "%.900s/frappe/frappe.test.libfm", data);
    job.task = CM_JOB_TASK_AUTO;
    cm_job_model_defaults(&job);
    job.epochs = 1;
    sch_result res;
    cm_error err = {0};
    cr_assert_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
    cr_expect_gt(res.n_valid, 0);
    cr_expect_eq(res.best_epoch, 1);
    cr_expect(res.valid_metric > 0 && res.valid_metric < 0.69, "validation log loss %g",
              res.valid_metric);
    cr_expect_gt(res.test_auc, 0.5);
}

/* The lines of a file that contain s. */
static int s_count_lines_with(const char *path, const char *s)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, s) != NULL;
    fclose(f);
    return n;
}

/* refit (the default where the validation set is carved): after the
 * validation run has chosen its epoch, the job trains again on every
 * training row (the carve too) for that many epochs. Its final line says
 * so and is the only "final" line; the validation run's is renamed; the
 * metrics file holds both runs, the refit's marked. refit = 0, a
 * validation file or a checkpoint_dir keeps the validation run's model. */
Test(cluster_valid, refit_trains_again_on_every_row_for_the_chosen_epochs)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    char dir[] = "/tmp/psrec-refit-XXXXXX", out[64], metrics[64];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(out, sizeof out, "%s/out.txt", dir);
    snprintf(metrics, sizeof metrics, "%s/m.jsonl", dir);
    cm_job job = s_job(data, "mf");
    job.epochs = TH_SANITIZED ? 3 : 6;
    snprintf(job.metrics, sizeof job.metrics, "%s", metrics);
    cr_expect(job.refit, "on by default");
    cr_expect(cl_refits(&job));
    FILE *f = fopen(out, "w");
    cr_assert_not_null(f);
    sch_result res;
    cm_error err = {0};
    cr_assert_eq(cl_run_local_refit(&job, f, &res, &err), 0, "%s", err.msg);
    fclose(f);
    cr_assert_gt(res.best_epoch, 0);
    cr_expect_eq(res.epochs, res.best_epoch, "the refit runs the chosen count");
    cr_expect_eq(res.n_train, 80000, "the refit trains on every row of u1.base");
    cr_expect_gt(res.n_valid, 0, "the validation run's carve is reported");
    cr_expect(res.test_rmse > 0.5 && res.test_rmse < 1.5, "test RMSE %g", res.test_rmse);
    cr_expect_eq(s_count_lines_with(out, "validation run: test RMSE"), 1);
    cr_expect_eq(s_count_lines_with(out, "refit: training again"), 1);
    cr_expect_eq(s_count_lines_with(out, "final "), 1, "one final line, the refit's");
    cr_expect_eq(s_count_lines_with(out, "(refit: all 80000 training examples"), 1);
    cr_expect_eq(s_count_lines_with(metrics, "\"refit\": 1, \"epoch\""), res.best_epoch);
    cr_expect_eq(s_count_lines_with(metrics, "\"refit\": 1, \"final\""), 1);
    cr_expect_eq(s_count_lines_with(metrics, "\"final\""), 2, "the validation run's too");

    /* off: the validation run's model, as cl_run_local */
    job.refit = 0;
    cr_expect_not(cl_refits(&job));
    f = fopen(out, "w");
    cr_assert_not_null(f);
    cr_assert_eq(cl_run_local_refit(&job, f, &res, &err), 0, "%s", err.msg);
    fclose(f);
    cr_expect_lt(res.n_train, 80000, "the carve is not trained on");
    cr_expect_eq(s_count_lines_with(out, "refit"), 0);
    cr_expect_eq(s_count_lines_with(out, "final test RMSE"), 1);
    cm_job other = s_job(data, "mf");
    snprintf(other.validation, sizeof other.validation, "%.900s/ml-100k/ua.test", data);
    cr_expect_not(cl_refits(&other), "a validation file is not training data");
    other = s_job(data, "mf");
    snprintf(other.checkpoint_dir, sizeof other.checkpoint_dir, "%s/ck", dir);
    cr_expect_not(cl_refits(&other), "checkpoints keep the validation run's epochs");
    other = s_job(data, "mf");
    other.regularization = 1;
    cr_expect_not(cl_refits(&other), "learned l2 needs the validation rows");
    other = s_job(data, "mf");
    other.test[0] = '\0';
    cr_expect_not(cl_refits(&other), "nothing would measure the refit");
    remove(out);
    remove(metrics);
    rmdir(dir);
}

static int s_have_mpirun(void)
{
    return th_run("command -v mpirun", NULL, 0) == 0;
}

/* The same under mpirun -np 4 (1 server, 3 workers): exit 0 on an early
 * stop with the line that says why; the final line's epoch and test RMSE
 * are the metrics file's; BEST names it; resume from there goes on with
 * the choice it had. */
Test(cluster_valid, mpirun_early_stop_and_resume)
{
    if (!s_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    char dir[] = "/tmp/psrec-valid-mpi-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    static char cmd[6000], out[1 << 17];
    char args[4096], metrics[512];
    snprintf(metrics, sizeof metrics, "%s/m.jsonl", dir);
    snprintf(args, sizeof args,
             "--train %.900s/ml-100k/u1.base --test %.900s/ml-100k/u1.test --servers 1 "
             "--l2 0.002 --epochs 40 --progress off --metrics %s --checkpoint_dir %s/ck",
             data, data, metrics, dir);
    snprintf(cmd, sizeof cmd, TH_MPIRUN "-np 4 %s train %s", PSREC_BINARY, args);
    int rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, "early stop after epoch") != NULL, "%s", out);
    const char *fl = strstr(out, "final test RMSE ");
    cr_assert_not_null(fl, "%s", out);
    double shown = 0;
    int chosen = 0, ran = 0;
    cr_assert_eq(sscanf(fl, "final test RMSE %lf MAE %*f (epoch %d of %d", &shown, &chosen, &ran),
                 3, "%s", fl);
    s_metrics m = s_read_metrics(metrics);
    cr_expect_eq(m.n, ran);
    cr_expect_eq((int)m.final_chosen, chosen);
    cr_expect_lt(fabs(shown - m.test[chosen]), 0.00006, "final line %.4f, epoch %d's %.6f",
                 shown, chosen, m.test[chosen]);
    for (int e = 1; e <= m.n; e++)
        cr_expect_geq(m.valid[e], m.valid[chosen], "epoch %d beats the chosen %d", e, chosen);
    char root[600];
    snprintf(root, sizeof root, "%s/ck", dir);
    cr_expect_eq(s_ckpt_epoch(root, "best"), (uint32_t)chosen);

    /* resume: the choice and its count go on; patience is spent, so the
     * next evaluation without improvement ends it again, exit 0 */
    snprintf(cmd, sizeof cmd, TH_MPIRUN "-np 4 %s train %s --resume auto", PSREC_BINARY, args);
    rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "%s", out);
    char want[128];
    snprintf(want, sizeof want, "resumed: epoch %d chosen so far", chosen);
    cr_expect(strstr(out, want) != NULL, "%s", out);
    cr_expect(strstr(out, "final test RMSE") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    th_run(cmd, NULL, 0);
}

/* implicit: validation is off (docs/validation.md): nothing is carved,
 * no epoch is chosen, and the held-out count is the test positives. */
Test(cluster_valid, implicit_does_not_validate)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    cm_job job = s_job(data, "implicit");
    job.epochs = 1;
    job.positive_threshold = 4;
    sch_result res;
    cm_error err = {0};
    cr_assert_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
    cm_ratings t;
    cr_assert_eq(cm_ratings_load(job.test, NULL, &t, &err), 0, "%s", err.msg);
    uint64_t pos = 0, all = 0;
    for (size_t j = 0; j < t.n; j++)
        pos += t.rating[j] >= 4;
    cm_ratings_free(&t);
    cr_assert_eq(cm_ratings_load(job.train, NULL, &t, &err), 0, "%s", err.msg);
    for (size_t j = 0; j < t.n; j++)
        all += t.rating[j] >= 4;
    cm_ratings_free(&t);
    cr_expect_eq(res.n_valid, 0);
    cr_expect_eq(res.best_epoch, 0);
    cr_expect_eq(res.n_test, pos, "%llu test positives, not %llu",
                 (unsigned long long)pos, (unsigned long long)res.n_test);
    cr_expect_eq(res.n_train, all, "every training positive is trained on");
    cr_expect_gt(res.recall, 0);
}

/* Under mpirun -np 4 (3 workers) fm and mf on the minibatch schedule hold
 * out the same rows as a --local run with 2 workers, and choose an epoch. */
Test(cluster_valid, mpirun_carve_matches_local)
{
    if (!s_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    cm_job job = s_job(data, "mf");
    job.epochs = 1;
    sch_result res;
    cm_error err = {0};
    cr_assert_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
    char want[128];
    snprintf(want, sizeof want, "validation: %llu examples", (unsigned long long)res.n_valid);
    const char *extra[] = {"--model fm", "--model mf --schedule minibatch"};
    static char cmd[4096], out[1 << 17];
    for (int k = 0; k < 2; k++) {
        snprintf(cmd, sizeof cmd,
                 TH_MPIRUN "-np 4 %s train --train %.900s/ml-100k/u1.base --test "
                 "%.900s/ml-100k/u1.test --servers 1 --epochs 2 --progress off %s",
                 PSREC_BINARY, data, data, extra[k]);
        cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
        cr_expect(strstr(out, want) != NULL, "%s: wanted '%s':\n%s", extra[k], want, out);
        cr_expect(strstr(out, "chosen on validation RMSE") != NULL, "%s:\n%s", extra[k], out);
    }
}
