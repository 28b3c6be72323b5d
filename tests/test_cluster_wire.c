/* wire_dtype = f16 end to end: a --local cluster on MovieLens 100K (mf,
 * minibatch schedule) and on frappe (fm) trains to the same quality with
 * half-precision gradients and pulled weights as with f32. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cluster/run.h"
#include "common/features.h"
#include "common/log.h"
#include "helpers.h"

static cm_job s_job(const char *data, const char *train, const char *test)
{
    cm_job job = cm_job_default();
    snprintf(job.train, sizeof job.train, "%.900s/%s", data, train);
    snprintf(job.test, sizeof job.test, "%.900s/%s", data, test);
    job.local = 1;
    job.servers = 2;
    job.workers = 1; /* one worker: the two runs differ only by the wire */
    job.progress = 0;
    job.log_level = CM_LOG_WARN;
    job.timeout = 30;
    return job;
}

Test(cluster_wire, mf_minibatch_half_wire_matches_f32, .timeout = 300)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): wire test skipped");
    cm_log_set_level(CM_LOG_WARN);
    double rmse[2];
    for (int f16 = 0; f16 < 2; f16++) {
        cm_job job = s_job(data, "ml-100k/u1.base", "ml-100k/u1.test");
        job.schedule = CM_SCHED_MINIBATCH;
        job.epochs = 10;
        job.wire_dtype = f16;
        sch_result res;
        cm_error err = {0};
        cr_assert_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
        rmse[f16] = res.test_rmse;
    }
    cr_expect_lt(rmse[0], 0.96, "f32 RMSE %.4f", rmse[0]);
    cr_expect_lt(fabs(rmse[1] - rmse[0]) / rmse[0], 0.005, "f16 RMSE %.4f vs f32 %.4f",
                 rmse[1], rmse[0]);
    cr_expect_neq(rmse[1], rmse[0], "the half wire changed nothing: was it used?");
}

Test(cluster_wire, fm_half_wire_matches_f32, .timeout = 300)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): wire test skipped");
    cm_log_set_level(CM_LOG_WARN);
    double auc[2];
    for (int f16 = 0; f16 < 2; f16++) {
        cm_job job =
            s_job(data, "frappe/frappe.validation.libfm", "frappe/frappe.test.libfm");
        snprintf(job.model, sizeof job.model, "fm");
        job.epochs = 8;
        job.wire_dtype = f16;
        cm_job_model_defaults(&job);
        sch_result res;
        cm_error err = {0};
        cr_assert_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
        auc[f16] = res.test_auc;
    }
    cr_expect_gt(auc[0], 0.94, "f32 AUC %.4f", auc[0]);
    cr_expect_lt(fabs(auc[1] - auc[0]), 0.002, "f16 AUC %.4f vs f32 %.4f", auc[1], auc[0]);
}
