/* sparse: a worker's data and epochs for sparse-feature models (fm, ffm,
 * deep).
 *
 * Examples are libsvm/libFM, libffm or CSV rows of (key, value) features
 * (common/features.h). Worker w keeps the rows whose index is w modulo the
 * worker count. Training is the minibatch schedule: the training rows are
 * shuffled once into fixed batches, whose keys plus the global bias key are
 * deduplicated once (each epoch shuffles the order of the batches, not
 * their members); each batch pulls its rows, lets the model add its
 * gradients, and pushes them; a model with a
 * dense table (deep) also pulls and pushes all of that table's rows with
 * every batch. ffm and deep see each occurrence's field: libffm's, the csv
 * column's, or for ratings 0 user, 1 item, 2 user side features, 3 item
 * side features. Evaluation
 * returns error sums and, for binary tasks, the AUC histograms. */
#ifndef PSREC_WORKER_SPARSE_H
#define PSREC_WORKER_SPARSE_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/ctl.h"
#include "common/dataset.h"
#include "common/err.h"
#include "common/features.h"
#include "worker/kv.h"
#include "worker/models/model.h"
#include "worker/reglearn.h"

typedef struct wk_sparse wk_sparse;

/* The input format (cm_format) of path for a sparse model: the job's;
 * else by extension (.ffm, .libffm, .csv); else ratings for a .psrd file or
 * a text file whose first data line has no ':'; else libffm when that
 * line's first feature has two colons (field:idx:val); else libsvm/libFM.
 * A .csv file reads as csv when the job names a label, numeric or
 * categorical column; as ratings when it names a ratings column or its
 * shape is WK_CSV_RATINGS; else as csv, which wk_sparse_check_input
 * refuses without a label column. */
int wk_sparse_format(const cm_job *job, const char *path);

/* What a csv file looks like from its first two data lines. */
typedef enum {
    WK_CSV_UNKNOWN = 0,   /* unreadable or empty */
    WK_CSV_RATINGS = 1,   /* 3 or 4 columns, rows user,item,rating[,ts] with a
                             numeric rating, and either no header or one
                             whose names say so (user.., item/movie/product..,
                             rating/score/stars..: any case, within the name) */
    WK_CSV_AMBIGUOUS = 2, /* ratings-shaped rows under a header that does not
                             say user, item, rating */
    WK_CSV_COLUMNS = 3    /* anything else: named feature columns */
} wk_csv_shape;

/* The shape of the csv file at path; header (may be NULL) receives its
 * first data line, cut to header_size. */
wk_csv_shape wk_csv_shape_of(const char *path, char *header, size_t header_size);

/* For fm, ffm and deep: 0 when the train and test files read as meant;
 * CM_ECONFIG naming the file and the options to use when one would read as
 * csv without a label column (every label 0). Other models: 0. */
int wk_sparse_check_input(const cm_job *job, cm_error *err);

/* Sets o's column names from the job (user_column, item_column,
 * rating_column, or label_column for the rating, timestamp_column); the
 * strings stay the job's. */
void wk_ratings_columns(const cm_job *job, cm_load_opts *o);

/* The field count of the job's data for a model that needs fields (ffm,
 * deep): job->fields when set, else 2 for ratings (4 with side features),
 * the csv columns named, or the largest field + 1 of the first libffm
 * line of the training file. Other models: job->fields as it is. A
 * negative CM_E* code with a message when it cannot be known (libsvm has
 * no fields: CM_ECONFIG). The launcher calls it once before the tables are
 * made, the same on every rank. */
int wk_sparse_fields(const cm_job *job, cm_error *err);

/* The same count whatever the model: for a loader asked to keep the
 * fields of a model that does not need them (wk_sparse_new_fields). */
int wk_sparse_data_fields(const cm_job *job, cm_error *err);

/* Loads a libsvm/libFM, libffm or csv file (by wk_sparse_format) with the
 * labels as written; logs the first log_lines bad lines. libffm lines with
 * a field >= job->fields (when set) are bad lines. */
int wk_sparse_load_features(const cm_job *job, const char *path, int log_lines,
                            cm_examples *out, cm_error *err);

/* Loads the job's train (and test) files, keeps this worker's rows, and
 * settles the task (job->task, or from the training labels when auto).
 * ffm and deep need job->fields resolved (wk_sparse_fields); data with
 * more fields, or none, is CM_ECONFIG. job must outlive the result. */
wk_sparse *wk_sparse_new(const cm_job *job, uint32_t index, uint32_t n_workers, int dim,
                         cm_error *err);
/* The same with the fields kept (keep_fields, job->fields resolved) or
 * not, whatever the model: mcmc groups fm's priors by field. */
wk_sparse *wk_sparse_new_fields(const cm_job *job, uint32_t index, uint32_t n_workers, int dim,
                                int keep_fields, cm_error *err);
void wk_sparse_destroy(wk_sparse **ps);

/* cm_task of the run. */
int wk_sparse_task(const wk_sparse *s);

/* The examples s loaded (test: the test set; n = 0 when there is none),
 * read-only and valid while s lives: CSR over feature keys, labels as
 * trained on (binary: 0 or 1); field is NULL unless the job's model has
 * fields. For trainers that do not go through the servers (mcmc). */
typedef struct {
    size_t n;
    const float *label;
    const uint64_t *at;      /* n + 1 offsets */
    const uint64_t *key;
    const float *val;
    const uint32_t *field;
} wk_sparse_view;

wk_sparse_view wk_sparse_examples(const wk_sparse *s, int test);

/* HELLO's statistics of the loaded examples (n_train, label sum, min and
 * max, n_test, n_valid, bad lines, task; no noise floor); loads (n_slots
 * floats) gets one request per feature occurrence in the slot of its key.
 * he's slot_load fields are left as they are. */
void wk_sparse_hello(const wk_sparse *s, cm_hello *he, float *loads, uint32_t n_slots);

/* Called now and then with examples done and the loss so far. */
typedef int (*wk_sparse_progress_fn)(void *arg, size_t done, double loss);

/* One epoch of minibatches (their order shuffled with seed). Adds the
 * summed loss and the example count. */
int wk_sparse_train(wk_sparse *s, wk_kv *kv, const wk_model_ops *m, const wk_model_ctx *ctx,
                    uint64_t seed, wk_sparse_progress_fn progress, void *arg, double *loss,
                    size_t *n, cm_error *err);

/* An evaluation's sums over one set of examples (binary tasks: the
 * errors of the predicted probabilities). */
typedef struct {
    double sq, abs;      /* squared and absolute error sums */
    double logloss;      /* log loss sum; 0 for regression */
    uint64_t n;          /* examples */
} wk_sparse_sums;

/* Evaluates the held-out rows into *out; for binary tasks pos/neg
 * (CM_AUC_BINS each, zeroed by the caller) get the AUC histograms of the
 * predicted probabilities. */
int wk_sparse_eval(wk_sparse *s, wk_kv *kv, const wk_model_ops *m, const wk_model_ctx *ctx,
                   wk_sparse_sums *out, uint64_t *pos, uint64_t *neg, cm_error *err);

/* The same over the validation rows (the job's validation file, or the
 * training rows carved for it: docs/validation.md); no AUC histograms.
 * reg (NULL: not wanted) gets the sums that learn l2 (reglearn.h). */
int wk_sparse_eval_valid(wk_sparse *s, wk_kv *kv, const wk_model_ops *m,
                         const wk_model_ctx *ctx, wk_sparse_sums *out, wk_reg_sums *reg,
                         cm_error *err);

#endif
