/* mcmc: the run of a Bayesian FM (worker/mcmc.h) as a training job.
 *
 * The data come through the sparse loader every fm job uses (any format,
 * side features, the task settled the same way), read whole by one
 * process. Feature keys become dense ids in order of first appearance;
 * a feature's group (its prior) is its field where the data have fields
 * (ratings: user, item, user side, item side; libffm and csv columns),
 * else one group for all. Test features never seen in training are
 * absent from the model, as a never-trained row is for sgd.
 *
 * After every sweep the test predictions of the draw join a running
 * average (regression: clipped to the training labels' range first;
 * binary: the probability Phi(y)), and the metrics reported are the
 * average's: what the model is after that many sweeps. The first tenth
 * of the sweeps (burn-in) are not averaged, since the chain starts far
 * from where it settles: their lines report the single draw. Measured on
 * ml-100k u1 with side features, 150 sweeps: 0.9025 averaging every
 * sweep, 0.9017 leaving out 10, 0.9016 leaving out 30. */
#include "cluster/mcmc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dataset.h"
#include "common/features.h"
#include "common/hashmap.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/stop.h"
#include "scheduler/report.h"
#include "worker/mcmc.h"
#include "worker/sparse.h"

/* Dense ids of a set's keys: those of the map, new ones added when grow
 * (with their group), else WK_MCMC_UNSEEN. */
typedef struct {
    cm_hashmap *ids;
    uint32_t *group;
    size_t n, cap;
} s_dict;

static int s_ids(s_dict *d, const wk_sparse_view *v, int grow, uint32_t *idx, cm_error *err)
{
    const size_t nnz = v->n ? v->at[v->n] : 0;
    for (size_t a = 0; a < nnz; a++) {
        uint32_t id;
        if (!grow) {
            idx[a] = cm_hashmap_get(d->ids, v->key[a], &id) ? id : WK_MCMC_UNSEEN;
            continue;
        }
        int fresh = 0;
        if (cm_hashmap_upsert(d->ids, v->key[a], (uint32_t)d->n, &id, &fresh) != 0)
            return cm_error_set(err, CM_ENOMEM, "mcmc: out of memory for the feature ids");
        if (fresh) {
            if (d->n == d->cap) {
                size_t cap = d->cap ? 2 * d->cap : 1024;
                uint32_t *g = realloc(d->group, cap * sizeof *g);
                if (!g)
                    return cm_error_set(err, CM_ENOMEM, "mcmc: out of memory");
                d->group = g;
                d->cap = cap;
            }
            d->group[d->n++] = v->field ? v->field[a] : 0;
            if (d->n >= WK_MCMC_UNSEEN)
                return cm_error_set(err, CM_ERANGE, "mcmc: more than 2^32 - 1 features");
        }
        idx[a] = id;
    }
    return 0;
}

/* The data as the sampler reads it: the view's arrays with dense ids. */
static wk_mcmc_rows s_rows(const wk_sparse_view *v, const uint32_t *idx)
{
    return (wk_mcmc_rows){v->n, v->at, idx, v->val, v->label};
}

/* The data as loaded for the sampler: the job as the loader read it (the
 * loader keeps a pointer to it), and the training and test sets. */
struct cl_mcmc_data {
    cm_job job;
    wk_sparse *sparse;
    uint32_t n_groups;
};

void cl_mcmc_data_free(cl_mcmc_data **pd)
{
    if (!pd || !*pd)
        return;
    wk_sparse_destroy(&(*pd)->sparse);
    free(*pd);
    *pd = NULL;
}

/* Loads the job's data with their fields where the data have them (the
 * priors' groups), else as one group (libsvm has no fields). */
static cl_mcmc_data *s_load(const cm_job *job, cm_error *err)
{
    cl_mcmc_data *d = malloc(sizeof *d);
    if (!d) {
        cm_error_set(err, CM_ENOMEM, "out of memory");
        return NULL;
    }
    d->job = *job;
    /* the sampler chooses nothing (no epoch, no hyper-parameter), so it
     * trains on every training row */
    d->job.validation[0] = '\0';
    d->job.validation_fraction = 0;
    cm_error ferr = {0};
    const int f = wk_sparse_data_fields(&d->job, &ferr);
    d->n_groups = f > 0 ? (uint32_t)f : 1;
    if (f > 0)
        d->job.fields = f;
    d->sparse = wk_sparse_new_fields(&d->job, 0, 1, job->dim, f > 0, err);
    if (!d->sparse)
        cl_mcmc_data_free(&d);
    return d;
}

typedef struct {
    const cm_job *job;
    FILE *out;
    sch_metrics *metrics;
    wk_sparse_view train, test;
    uint32_t *train_idx, *test_idx;
    s_dict dict;
    cl_mcmc_data *loaded;
    wk_mcmc *m;
    double *draw, *avg;          /* test predictions: this sweep's, the average */
    float *prob;                 /* binary: the average as floats for the AUC */
    double lo, hi;               /* regression: the training labels' range */
    int binary;
    int burn_in;                 /* sweeps left out of the average */
} s_run;

static void s_free(s_run *r)
{
    wk_mcmc_destroy(&r->m);
    sch_metrics_close(&r->metrics);
    cl_mcmc_data_free(&r->loaded);
    cm_hashmap_destroy(&r->dict.ids);
    free(r->dict.group);
    free(r->train_idx);
    free(r->test_idx);
    free(r->draw);
    free(r->avg);
    free(r->prob);
}

static int s_setup(s_run *r, cm_error *err)
{
    const cm_job *job = r->job;
    if (!r->loaded && !(r->loaded = s_load(job, err)))
        return err && err->code ? err->code : CM_ENOMEM;
    const uint32_t n_groups = r->loaded->n_groups;
    const wk_sparse *data = r->loaded->sparse;
    r->binary = wk_sparse_task(data) == CM_TASK_BINARY;
    r->train = wk_sparse_examples(data, 0);
    r->test = wk_sparse_examples(data, 1);
    if (r->train.n == 0)
        return cm_error_set(err, CM_ECONFIG, "%s: no training examples", job->train);
    const size_t ntr = r->train.at[r->train.n], nte = r->test.n ? r->test.at[r->test.n] : 0;
    r->dict.ids = cm_hashmap_new(1024);
    r->train_idx = malloc((ntr + 1) * sizeof *r->train_idx);
    r->test_idx = malloc((nte + 1) * sizeof *r->test_idx);
    r->draw = malloc((r->test.n + 1) * sizeof *r->draw);
    r->avg = calloc(r->test.n + 1, sizeof *r->avg);
    r->prob = malloc((r->test.n + 1) * sizeof *r->prob);
    if (!r->dict.ids || !r->train_idx || !r->test_idx || !r->draw || !r->avg || !r->prob)
        return cm_error_set(err, CM_ENOMEM, "mcmc: out of memory for %zu examples",
                            r->train.n);
    int rc = s_ids(&r->dict, &r->train, 1, r->train_idx, err);
    if (rc == 0)
        rc = s_ids(&r->dict, &r->test, 0, r->test_idx, err);
    if (rc != 0)
        return rc;
    for (size_t j = 0; j < r->dict.n; j++)
        if (r->dict.group[j] >= n_groups)
            r->dict.group[j] = n_groups - 1; /* a field beyond the count: the last group */
    r->lo = INFINITY;
    r->hi = -INFINITY;
    double sum = 0;
    for (size_t i = 0; i < r->train.n; i++) {
        r->lo = fmin(r->lo, r->train.label[i]);
        r->hi = fmax(r->hi, r->train.label[i]);
        sum += r->train.label[i];
    }
    wk_mcmc_params p = {.dim = job->dim, .binary = r->binary, .seed = job->seed,
                        .init_std = job->init_std, .n_groups = n_groups,
                        .group = r->dict.group};
    wk_mcmc_rows rows = s_rows(&r->train, r->train_idx);
    if (!(r->m = wk_mcmc_new(&p, &rows, r->dict.n, err)))
        return err && err->code ? err->code : CM_ENOMEM;
    if (job->metrics[0] && !(r->metrics = sch_metrics_open(job->metrics, 0, NULL, err)))
        return err && err->code ? err->code : CM_EIO;
    cm_log(CM_LOG_INFO,
           "mcmc: %zu training examples, %zu features in %u group%s, dim %d, %s, global "
           "mean %.4f",
           r->train.n, r->dict.n, (unsigned)n_groups, n_groups == 1 ? "" : "s", job->dim,
           r->binary ? "binary (probit)" : "regression", sum / (double)r->train.n);
    return 0;
}

/* The test metrics of the average after `sweeps` sweeps. */
static int s_evaluate(s_run *r, int sweeps, sch_result *res, cm_error *err)
{
    wk_mcmc_rows rows = s_rows(&r->test, r->test_idx);
    int rc = wk_mcmc_predict(r->m, &rows, r->draw);
    if (rc != 0)
        return cm_error_set(err, rc, "mcmc: out of memory predicting");
    double sq = 0, ab = 0, ll = 0;
    for (size_t i = 0; i < r->test.n; i++) {
        double y = r->draw[i];
        y = r->binary ? wk_mcmc_probit(y) : fmin(fmax(y, r->lo), r->hi);
        r->avg[i] += (y - r->avg[i]) / (sweeps > r->burn_in ? sweeps - r->burn_in : 1);
        const double t = r->test.label[i], d = r->avg[i] - t;
        sq += d * d;
        ab += fabs(d);
        if (r->binary) {
            r->prob[i] = (float)r->avg[i];
            ll += cm_logloss(r->prob[i], t > 0.5);
        }
    }
    const double n = (double)r->test.n;
    res->test_rmse = sqrt(sq / n);
    res->test_mae = ab / n;
    if (r->binary) {
        res->test_auc = cm_auc_exact(r->prob, r->test.label, r->test.n);
        res->test_logloss = ll / n;
    }
    return 0;
}

static void s_line(s_run *r, int e, double loss, double secs, const sch_result *res)
{
    const cm_job *job = r->job;
    fprintf(r->out, "epoch %3d/%d  %s %.4f", e, job->epochs,
            r->binary ? "train_logloss" : "train_rmse", loss);
    if (r->test.n && r->binary)
        fprintf(r->out, "  test_auc %.4f  test_logloss %.4f", res->test_auc, res->test_logloss);
    else if (r->test.n)
        fprintf(r->out, "  test_rmse %.4f  test_mae %.4f", res->test_rmse, res->test_mae);
    fprintf(r->out, "  %.3gM ex/s  %.2f s\n", secs > 0 ? r->train.n / secs / 1e6 : 0, secs);
    fflush(r->out);
}

static int s_record(s_run *r, int e, double loss, double secs, double elapsed,
                    const sch_result *res, cm_error *err)
{
    if (!r->metrics)
        return 0;
    const int t = r->test.n > 0;
    /* a binary task writes no RMSE or MAE (the last two fields), as the
     * scheduler's lines */
    sch_field f[] = {
        {"epoch", e, 0},
        {"train_loss", r->binary ? loss : loss * loss, 0},
        {"examples_per_s", secs > 0 ? r->train.n / secs : 0, 0},
        {"seconds", secs, 0},
        {"elapsed", elapsed, 0},
        {"test_auc", t && r->binary ? res->test_auc : -1, 1},
        {"test_logloss", t && r->binary ? res->test_logloss : -1, 1},
        {"noise_precision", r->binary ? -1 : wk_mcmc_alpha(r->m), 1},
        {"train_rmse", r->binary ? -1 : loss, 1},
        {"test_rmse", t ? res->test_rmse : -1, 1},
        {"test_mae", t ? res->test_mae : -1, 1},
    };
    const size_t n = sizeof f / sizeof f[0] - (r->binary ? 3 : 0);
    return sch_metrics_write(r->metrics, f, n, err);
}

/* mf's keys for CSV columns by name, which the sparse loader (fm's) does
 * not read. */
static const char *const s_column_keys[] = {"label_column",  "user_column",
                                            "item_column",   "rating_column",
                                            "timestamp_column", NULL};

/* Lines in path, counting no further than limit + 1; -1 if unreadable. */
static long s_count_lines(const char *path, long limit)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    static char buf[1 << 16];
    long lines = 0;
    size_t got;
    int last = '\n';
    while (lines <= limit && (got = fread(buf, 1, sizeof buf, f)) > 0) {
        for (const char *p = buf; (p = memchr(p, '\n', (size_t)(buf + got - p))); p++)
            lines++;
        last = buf[got - 1];
    }
    fclose(f);
    return lines + (last != '\n');
}

/* The reason for sgd, or NULL where the job suits mcmc. */
static const char *s_needs_sgd(const cm_job *job, long *lines, char *buf, size_t n,
                               cl_mcmc_data **loaded)
{
    const cm_model *model = cm_job_model(job);
    if (!model->quadratic)
        return "mcmc is for mf and fm";
    if (job->task == CM_TASK_BINARY)
        return "binary task: sgd's AUC is the better on click data";
    const char *sgd_key = cm_job_sgd_key_set(job);
    if (sgd_key) {
        snprintf(buf, n, "%s is set, which only sgd reads", sgd_key);
        return buf;
    }
    if (model->family == CM_FAMILY_RATINGS)
        for (const char *const *k = s_column_keys; *k; k++)
            if (cm_job_is_explicit(job, *k)) {
                snprintf(buf, n, "%s is set: mf's named CSV columns are read by sgd's loader",
                         *k);
                return buf;
            }
    if (cm_dataset_is_binary(job->train) == 1)
        return "binary .psrd training data, made for large sets";
    *lines = s_count_lines(job->train, CL_AUTO_MCMC_MAX_LINES);
    if (*lines < 0)
        return "the training file could not be read";
    if (*lines > CL_AUTO_MCMC_MAX_LINES) {
        snprintf(buf, n, "more than %d training lines", CL_AUTO_MCMC_MAX_LINES);
        return buf;
    }
    if (model->family == CM_FAMILY_SPARSE && job->task == CM_JOB_TASK_AUTO) {
        cm_error err = {0};
        cl_mcmc_data *data = s_load(job, &err);
        if (!data)
            return "the training data did not load as fm examples";
        if (wk_sparse_task(data->sparse) == CM_TASK_BINARY) {
            cl_mcmc_data_free(&data);
            return "binary labels (every one -1, 0 or 1): sgd's AUC is the better on click "
                   "data";
        }
        /* the sampler starts from these rather than reading them again */
        *loaded = data;
    }
    return NULL;
}

void cl_method_settle(cm_job *job, int local, char *why, size_t n, cl_mcmc_data **data)
{
    if (data)
        *data = NULL;
    if (job->method != CM_METHOD_AUTO)
        return;
    char buf[160];
    long lines = -1;
    cl_mcmc_data *loaded = NULL;
    const char *sgd = local ? s_needs_sgd(job, &lines, buf, sizeof buf, &loaded)
                            : "a cluster job (mcmc samples in one process: --local)";
    if (data && !sgd)
        *data = loaded;
    else
        cl_mcmc_data_free(&loaded);
    job->method = sgd ? CM_METHOD_SGD : CM_METHOD_MCMC;
    if (sgd)
        snprintf(why, n, "%s", sgd);
    else
        snprintf(why, n, "regression on %ld training lines in one process, no sgd key set",
                 lines);
}

/* What method mcmc refuses. */
static int s_check(const cm_job *job, cm_error *err)
{
    if (!cm_job_model(job)->quadratic)
        return cm_error_set(err, CM_ECONFIG, "method mcmc is for models fm and mf (got %s)",
                            job->model);
    if (cm_job_model(job)->family == CM_FAMILY_RATINGS)
        for (const char *const *k = s_column_keys; *k; k++)
            if (cm_job_is_explicit(job, *k))
                return cm_error_set(err, CM_ECONFIG,
                                    "method mcmc reads mf's ratings as user item rating "
                                    "lines; %s (CSV columns by name) is read by method sgd "
                                    "only, or use model fm with the columns as features",
                                    *k);
    if (job->checkpoint_dir[0] || job->resume[0])
        return cm_error_set(err, CM_ECONFIG,
                            "method mcmc keeps no checkpoints (its model is the average of "
                            "its sweeps' predictions, not one set of rows): leave "
                            "checkpoint_dir and resume empty, or use method sgd");
    return 0;
}

int cl_run_mcmc(const cm_job *job, FILE *out, sch_result *res, cm_error *err)
{
    return cl_run_mcmc_loaded(job, NULL, out, res, err);
}

int cl_run_mcmc_loaded(const cm_job *job, cl_mcmc_data *data, FILE *out, sch_result *res,
                       cm_error *err)
{
    s_run r = {.job = job, .out = out, .burn_in = job->epochs / 10, .loaded = data};
    sch_result_init(res);
    int rc = s_check(job, err);
    if (rc != 0) {
        s_free(&r);
        return rc;
    }
    const double t_start = cm_now();
    rc = s_setup(&r, err);
    double train_secs = 0;
    for (int e = 1; rc == 0 && e <= job->epochs; e++) {
        const double t0 = cm_now();
        if ((rc = wk_mcmc_sweep(r.m, err)) != 0)
            break;
        const double secs = cm_now() - t0, loss = wk_mcmc_train_loss(r.m);
        train_secs += secs;
        if (r.test.n && (rc = s_evaluate(&r, e, res, err)) != 0)
            break;
        s_line(&r, e, loss, secs, res);
        if ((rc = s_record(&r, e, loss, secs, cm_now() - t_start, res, err)) != 0)
            break;
        res->epochs = e;
        res->train_rmse = r.binary ? sqrt(loss) : loss;
        if (cm_stop_requested()) {
            cm_log(CM_LOG_WARN, "mcmc: stopped after sweep %d of %d, as asked", e,
                   job->epochs);
            break;
        }
    }
    if (rc == 0) {
        res->n_train = r.train.n;
        res->n_test = r.test.n;
        res->seconds = train_secs;
        res->examples_per_s = train_secs > 0 ? (double)r.train.n * res->epochs / train_secs : 0;
        if (!r.test.n) {
            res->test_rmse = res->test_mae = -1;
        } else if (r.binary) {
            res->test_rmse = res->test_mae = -1;
            fprintf(out, "final test AUC %.4f  log loss %.4f after %d epochs, %.2f s training\n",
                    res->test_auc, res->test_logloss, res->epochs, res->seconds);
        } else {
            fprintf(out, "final test RMSE %.4f  MAE %.4f after %d epochs, %.2f s training\n",
                    res->test_rmse, res->test_mae, res->epochs, res->seconds);
        }
        fflush(out);
    }
    s_free(&r);
    return rc;
}
