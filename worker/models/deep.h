/* deep: an MLP over concatenated field embeddings, on a whole minibatch.
 *
 * The math half of the "deep" model (NCF / DeepFM style). Per example the
 * input is the concatenation of F field embeddings of size k (F*k floats,
 * pulled as sparse rows by the worker); hidden layers are fully connected
 * with ReLU; the output is one number: a logit (binary) or a regression
 * value. With fm_term set (DeepFM) the output also gets the FM second-order
 * interaction over the same field embeddings and a first-order weight per
 * field:
 *
 *   y = MLP(e) + fm * ( sum_f lin_f + 1/2 sum_c [ (sum_f e_fc)^2 - sum_f e_fc^2 ] )
 *
 * Layer products run as cblas_sgemm over the batch (forward X.W^T + b;
 * backward dX = dY.W, dW += dY^T.X). All dense weights and biases live in
 * one flat float array with a fixed layout (below, and docs/deep.md); that
 * array is what the server stores as a dense table, split into rows of R
 * floats keyed 0..n_rows-1, and it is pulled and pushed like any rows.
 *
 * Weight layout, for layers l = 0..L-1 (L = n_hidden + 1; the last is the
 * output layer, out_{L-1} = 1; in_0 = F*k, in_l = out_{l-1}):
 *   W_l  out_l x in_l, row-major (W_l[o*in_l + i] maps input i to unit o)
 *   b_l  out_l
 * Each block starts at a multiple of WK_MLP_ALIGN floats (zero padding
 * between blocks), so with a 64-byte aligned array every block is 64-byte
 * aligned. wk_mlp_layer() gives the offsets. Padding floats are initialised
 * to 0 and always get a zero gradient.
 *
 * Field values: the module sees embeddings, not features. A caller with
 * valued features passes e_f = x_f v_f and lin_f = x_f w_f and applies the
 * chain rule to the gradients it gets back; a field holding several
 * features passes their (weighted) sum.
 *
 * Threads: a wk_mlp is scratch space for one thread. The module never
 * calls openblas_set_num_threads(); the process decides. */
#ifndef PSREC_WORKER_MODELS_DEEP_H
#define PSREC_WORKER_MODELS_DEEP_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"
#include "common/table_spec.h"

#define WK_MLP_MAX_HIDDEN 4
_Static_assert(WK_MLP_MAX_HIDDEN + 1 <= CM_DENSE_MAX_SEGS, "a dense init segment per layer");
/* Every weight block starts at a multiple of this many floats (64 bytes). */
#define WK_MLP_ALIGN 16

typedef struct {
    int n_fields;                      /* F >= 1 */
    int k;                             /* embedding size per field, >= 1 */
    int n_hidden;                      /* hidden layers, 0..WK_MLP_MAX_HIDDEN */
    int hidden[WK_MLP_MAX_HIDDEN];     /* their widths, each >= 1 */
    int fm_term;                       /* 1: add the DeepFM FM part to the output */
} wk_mlp_params;

/* Where one layer's weights sit in the flat array (in floats). */
typedef struct {
    size_t w_off;    /* W_l: out x in, row-major */
    size_t b_off;    /* b_l: out */
    int in, out;
} wk_mlp_layer_info;

typedef struct wk_mlp wk_mlp;

/* F = 2, k = 8, hidden {64, 32}, no FM term. */
wk_mlp_params wk_mlp_params_default(void);

/* 0 if p describes a usable net, else CM_EINVAL with the reason in err
 * (may be NULL). */
int wk_mlp_check(const wk_mlp_params *p, cm_error *err);

/* Layers of the net: n_hidden + 1 (the output layer last). */
int wk_mlp_n_layers(const wk_mlp_params *p);

/* Offsets and shape of layer l (0 <= l < wk_mlp_n_layers). */
wk_mlp_layer_info wk_mlp_layer(const wk_mlp_params *p, int l);

/* Length of the flat weight array, padding included: a multiple of
 * WK_MLP_ALIGN. p must pass wk_mlp_check. */
size_t wk_mlp_n_weights(const wk_mlp_params *p);

/* Rows of `row_floats` floats a dense table needs to hold the weights:
 * ceil(n_weights / row_floats). Row r holds weights
 * [r*row_floats, (r+1)*row_floats); the tail of the last row is unused
 * (kept 0, gradient 0). */
size_t wk_mlp_n_rows(const wk_mlp_params *p, int row_floats);

/* The declarative form of the initialisation below, for a dense table's
 * spec (common/table_spec.h): one segment per weight matrix. */
void wk_mlp_init_spec(const wk_mlp_params *p, cm_dense_init *out);

/* Deterministic initialisation of the flat array w (n_weights floats):
 * hidden layers He normal (std sqrt(2/in)), the output layer Glorot normal
 * (std sqrt(2/(in+out))), biases and padding 0. Draws in layout order from
 * one cm_rng seeded with `seed`: same seed, same weights everywhere. */
void wk_mlp_init_weights(const wk_mlp_params *p, uint64_t seed, float *w);

/* The same values as wk_mlp_init_weights(p, seed, w) restricted to row r
 * of a dense table with row_floats floats per row, i.e. w[r*row_floats ..
 * (r+1)*row_floats) (0 past the end of the array), without making the
 * whole array: what a server needs to create one row. Costs a skip of the
 * random stream up to the row (cheap next to the draws). */
void wk_mlp_init_row(const wk_mlp_params *p, uint64_t seed, int row_floats, size_t r,
                     float *out);

/* Floats per row of the dense table that holds p's weights: 64 (256
 * bytes), or more for nets of over 256 * 64 weights so that they take at
 * most 256 rows (a multiple of WK_MLP_ALIGN). */
int wk_mlp_row_floats(const wk_mlp_params *p);

/* Scratch (activations, back-propagated errors) for batches of up to
 * max_batch examples, 64-byte aligned. NULL on bad params (CM_EINVAL) or
 * allocation failure (CM_ENOMEM), with the reason in err (may be NULL). */
wk_mlp *wk_mlp_new(const wk_mlp_params *p, int max_batch, cm_error *err);

/* Frees *m and sets it to NULL; no-op on NULL. */
void wk_mlp_destroy(wk_mlp **m);

/* The params m was made with. */
const wk_mlp_params *wk_mlp_get_params(const wk_mlp *m);

/* Forward and backward on a batch of n <= max_batch examples.
 *   w       the flat weights (n_weights floats)
 *   emb     n x F*k field embeddings, row-major
 *   lin     n x F first-order weights (fm_term only; ignored and may be
 *           NULL otherwise)
 *   label   n targets; binary: 0 or 1
 *   task    cm_task: CM_TASK_REGRESSION or CM_TASK_BINARY
 *   grad_w     += d(loss)/d(w) (n_weights floats, accumulated; padding
 *              untouched)
 *   grad_emb   = d(loss)/d(emb), n x F*k (overwritten)
 *   grad_lin   = d(loss)/d(lin), n x F (overwritten; fm_term only, may be
 *              NULL otherwise)
 *   score      each example's raw output y (binary: before the sigmoid);
 *              may be NULL
 * Returns the summed loss: regression 1/2 (y - t)^2, binary
 * log(1 + e^-y) for t = 1, log(1 + e^y) for t = 0. Gradients are of that
 * sum (no 1/n, no regularisation: the optimizer's business). */
double wk_mlp_forward_backward(wk_mlp *m, const float *w, const float *emb, const float *lin,
                               const float *label, int n, int task, float *grad_w,
                               float *grad_emb, float *grad_lin, float *score);

/* Forward only: each example's raw output y into score[0..n). */
void wk_mlp_predict(wk_mlp *m, const float *w, const float *emb, const float *lin, int n,
                    float *score);

/* ------------------------------------------------------------------------
 * The model (worker/models/deep_model.c: wk_model_deep)
 * ------------------------------------------------------------------------ */

/* The net of a job: F = job->fields (resolved, >= 1), k = job->dim,
 * hidden from job->hidden ("64,32"; empty: none), fm_term. 0, or
 * CM_ECONFIG naming the key that is wrong. */
int wk_deep_params(const cm_job *job, wk_mlp_params *p, cm_error *err);

/* The seed the dense table's initial weights come from (the job's seed
 * mixed with the table's name). */
uint64_t wk_deep_seed(const cm_job *job);

/* Bytes a net of p holds for batches of max_batch (wk_mlp_new: the object
 * and its activation block). For memory plans. */
size_t wk_mlp_bytes(const wk_mlp_params *p, int max_batch);

/* Bytes the deep model's per-worker scratch (scratch_new) holds for a net
 * of p and batches of max_batch: the net's, the pooled embeddings, first-
 * order terms, their gradients and the targets. For memory plans. */
size_t wk_deep_scratch_bytes(const wk_mlp_params *p, int max_batch);

#endif
