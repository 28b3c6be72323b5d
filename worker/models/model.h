/* model: what a model is to the worker.
 *
 * A model names the tables it needs (their dims and initialisation) and
 * does the math on one minibatch given the rows pulled for it: loss,
 * predictions and per-row gradients, summed per key. The worker owns
 * batching, deduplication and push/pull; the model never talks to the
 * network. One ops table per model in worker/models/. */
#ifndef PSREC_WORKER_MODEL_H
#define PSREC_WORKER_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"
#include "common/table_spec.h"

#define WK_MAX_TABLES 8

/* One minibatch of rating examples after deduplication: example j uses
 * row uidx[j] of the pulled user rows and row iidx[j] of the item rows. */
typedef struct {
    size_t n;
    const uint32_t *uidx;
    const uint32_t *iidx;
    const float *label;
} wk_batch;

/* A minibatch of sparse examples after deduplication (FM-style models):
 * example j has the features at[j] .. at[j+1]-1; feature k reads row
 * idx[k] of the pulled rows with value val[k]. at[0] need not be 0: a
 * batch may index arrays that hold more than its own features. */
typedef struct {
    size_t n;
    const uint64_t *at;      /* n + 1 offsets */
    const uint32_t *idx;     /* row of each feature occurrence */
    const float *val;        /* value of each feature occurrence */
    const float *label;      /* regression: the target; binary: 0 or 1 */
    uint32_t bias_row;       /* row of the global bias key */
} wk_sparse_batch;

/* What ffm and deep see of a batch besides wk_sparse_batch (kept apart so
 * the plain FM batch stays as it is): the fields, and deep's dense table
 * and scratch. */
typedef struct {
    const uint32_t *field;   /* field of each occurrence (< n_fields); NULL when the
                                data has none: all read as field 0 */
    uint32_t n_fields;       /* fields per example */
    void *scratch;           /* the model's per-worker scratch (scratch_new) */
    const float *dense;      /* the dense table's rows 0..n-1 back to back */
    float *dense_grads;      /* their gradients, zeroed by the caller */
} wk_sparse_extra;

/* One rating of a block, as local row indexes (blocks schedule). */
typedef struct {
    uint32_t u;      /* row of the worker's user rows */
    uint32_t i;      /* row of the block's item rows */
    float r;         /* the rating */
} wk_rating;

/* Rows a worker holds while it trains a block: n rows of `stride` floats,
 * each the weights then the optimizer state (row_floats floats used). */
typedef struct {
    float *rows;
    size_t stride;
} wk_rows;

/* Constants of a run the model needs besides the rows. */
typedef struct {
    float mean;      /* global mean of the training labels */
    float l2;        /* L2 regularisation per occurrence */
    float clip_lo;   /* predictions are clipped to [clip_lo, clip_hi] at eval */
    float clip_hi;
    float offset;    /* sparse models: added to every score (regression: the mean) */
} wk_model_ctx;

typedef struct wk_model_ops {
    const char *name;
    size_t n_tables;
    const char *const *table_names;  /* n_tables names ("user", "item") */
    /* Table t's parameters for this job (dim, init, optimizer). */
    void (*table_params)(const cm_job *job, size_t t, cm_table_spec *out);
    /* Adds the gradients of the batch loss to grads[t] (dense, one row per
     * pulled key, zeroed by the caller) and returns the sum over examples
     * of the squared error (the data term, before regularisation). */
    double (*train)(const wk_model_ctx *ctx, const wk_batch *b, int dim,
                    const float *const *rows, float *const *grads);
    /* Writes the prediction of each example to pred[j] (unclipped). */
    void (*predict)(const wk_model_ctx *ctx, const wk_batch *b, int dim,
                    const float *const *rows, float *pred);
    /* Blocks schedule: plain per-rating SGD over r[0..n) in order, updating
     * the held user and item rows in place with the optimizer `o` (whose
     * state follows the dim weights of each row). Returns the sum of the
     * squared errors seen before each update. */
    double (*train_local)(const wk_model_ctx *ctx, const cm_optim *o, const wk_rating *r,
                          size_t n, int dim, wk_rows users, wk_rows items);
    /* Sparse-feature models (NULL for the others): adds the gradients of
     * the batch loss to grads (one row per pulled key, zeroed by the
     * caller) and returns the summed loss (squared error / 2 for
     * regression, log loss for binary). */
    double (*train_sparse)(const wk_model_ctx *ctx, int task, const wk_sparse_batch *b,
                           int dim, const float *rows, float *grads);
    /* Writes each example's raw score (binary: before the sigmoid). */
    void (*predict_sparse)(const wk_model_ctx *ctx, const wk_sparse_batch *b, int dim,
                           const float *rows, float *score);
    /* Models that read fields (ffm, deep; NULL for the others): what
     * train_sparse and predict_sparse do, with the batch's extra part.
     * When set they are called instead of those two. */
    double (*train_ext)(const wk_model_ctx *ctx, int task, const wk_sparse_batch *b,
                        const wk_sparse_extra *x, int dim, const float *rows, float *grads);
    void (*predict_ext)(const wk_model_ctx *ctx, const wk_sparse_batch *b,
                        const wk_sparse_extra *x, int dim, const float *rows, float *score);
    /* Models with a second, dense table (deep; NULL for the others). Every
     * batch reads all dense_rows(job) rows of table 1 (keys 0..n-1, into
     * x->dense) besides its feature rows and pushes their gradients
     * (x->dense_grads). */
    size_t (*dense_rows)(const cm_job *job);
    /* Per-worker scratch (x->scratch) for batches of up to max_batch
     * examples; NULL with err set on failure. scratch_destroy frees and
     * NULLs it. */
    void *(*scratch_new)(const cm_job *job, int max_batch, cm_error *err);
    void (*scratch_destroy)(void **scratch);
} wk_model_ops;

/* The table settings every model takes from the job: optimizer (with its
 * hyper-parameters), admission and eviction. Models set dim, zero_prefix,
 * init and seed. */
void wk_model_table_common(const cm_job *job, cm_table_spec *out);

/* Dot product of a[0..n) and b[0..n) (vectorised). */
static inline float wk_dot(const float *restrict a, const float *restrict b, int n)
{
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < n; j++)
        s += a[j] * b[j];
    return s;
}

/* The loss of raw output y for target t under task (cm_task): regression
 * 1/2 (y - t)^2; binary (t in {0, 1}) log(1 + e^-y) for t = 1 and
 * log(1 + e^y) for t = 0, computed without overflow. *g receives dL/dy
 * (y - t, or sigmoid(y) - t). */
double wk_model_loss(int task, float y, float t, float *g);

/* Table t (0 user, 1 item) of a model with [bias, dim factors] rows, as
 * mf and implicit have: bias initialised to 0, factors from init_std, a
 * seed per table, and the common settings. */
void wk_model_table_user_item(const cm_job *job, size_t t, cm_table_spec *out);

/* The model of that name ("mf"), or NULL. */
const wk_model_ops *wk_model_find(const char *name);

/* Biased matrix factorisation (worker/models/mf.c). */
extern const wk_model_ops wk_model_mf;

/* Factorization machine over sparse features (worker/models/fm.c). */
extern const wk_model_ops wk_model_fm;

/* Field-aware factorization machine (worker/models/ffm.c). */
extern const wk_model_ops wk_model_ffm;

/* MLP on field embeddings, NCF / DeepFM (worker/models/deep_model.c). */
extern const wk_model_ops wk_model_deep;

/* MF from positives only, sampled negatives (worker/models/implicit.c). */
extern const wk_model_ops wk_model_implicit;

/* The key of an FM's global bias row in its table. */
#define WK_FM_BIAS_KEY 0xFFFFFFFFFFFFFFFFULL

#endif
