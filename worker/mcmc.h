/* mcmc: a Bayesian factorization machine, trained by Gibbs sampling.
 *
 * The model is fm.c's: y(x) = w0 + sum_j w_j x_j + sum_{j<l} <v_j, v_l> x_j x_l.
 * Instead of descending a loss with a learning rate and an L2 weight, every
 * parameter gets a normal prior whose mean and precision are themselves
 * drawn, per group of features (a field: the user ids, the item ids, a side
 * column) and per factor, from normal-gamma hyper-priors; the noise
 * precision alpha gets a gamma prior. One sweep draws, in turn, alpha, the
 * hyper-parameters, w0, every w_j and every v_jf from its distribution
 * given all the others (Rendle, "Factorization Machines with libFM", ACM
 * TIST 2012, section 5). Nothing is tuned: the data set the regularization.
 *
 * A parameter theta enters the model linearly, y = g + theta h, so given
 * the rest it is normal with
 *   variance  s2 = 1 / (alpha sum_i h_i^2 + lambda)
 *   mean      s2 (alpha sum_i h_i (theta h_i - e_i) + mu lambda)
 * where e_i = y(x_i) - target_i is the cached residual, h_i = x_ij for w_j
 * and h_i = x_ij (q_if - v_jf x_ij) for v_jf, q_if = sum_l v_lf x_il being
 * cached per example and factor. Each draw updates e (and q) in place, so
 * a sweep costs about three passes of SGD over the non-zeros, times dim.
 *
 * Binary targets use the probit link P(y = 1) = Phi(y(x)): each sweep
 * first draws a latent target per example, normal around y(x) with
 * variance 1 and truncated to the side its label says, and alpha stays 1.
 *
 * Predictions are averaged over the sweeps by the caller (wk_mcmc_predict
 * gives the current draw's), which is what makes MCMC good: the average of
 * many plausible models. One thread; memory O(nnz + n dim). */
#ifndef PSREC_WORKER_MCMC_H
#define PSREC_WORKER_MCMC_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Examples in CSR form over dense feature ids: example i has the features
 * idx[at[i] .. at[i+1]) with values val[..]. An id of WK_MCMC_UNSEEN (a
 * feature the model never saw) counts as absent. */
typedef struct {
    size_t n;
    const uint64_t *at;      /* n + 1 offsets */
    const uint32_t *idx;
    const float *val;
    const float *label;      /* regression: the target; binary: 0 or 1 */
} wk_mcmc_rows;

#define WK_MCMC_UNSEEN UINT32_MAX

typedef struct {
    int dim;                 /* factors per feature, >= 1 */
    int binary;              /* 1: probit classification */
    uint64_t seed;
    double init_std;         /* the factors' first draw is N(0, init_std^2) */
    uint32_t n_groups;       /* feature groups (>= 1) */
    const uint32_t *group;   /* per feature its group (< n_groups); NULL: one */
} wk_mcmc_params;

typedef struct wk_mcmc wk_mcmc;

/* A sampler over train (copied: the caller may free it) with n_features
 * features (every id in train below it). NULL with err on bad input. */
wk_mcmc *wk_mcmc_new(const wk_mcmc_params *p, const wk_mcmc_rows *train, size_t n_features,
                     cm_error *err);
void wk_mcmc_destroy(wk_mcmc **pm);

/* One Gibbs sweep over every parameter. CM_ERANGE (with err naming the
 * parameter) when a draw is not finite; the sampler is then unusable. */
int wk_mcmc_sweep(wk_mcmc *m, cm_error *err);

/* The current draw's raw score y(x) of each example of rows (binary:
 * before the probit link). Ids must be below the sampler's n_features or
 * WK_MCMC_UNSEEN. 0, or CM_ENOMEM. */
int wk_mcmc_predict(const wk_mcmc *m, const wk_mcmc_rows *rows, double *out);

/* The current draw's training error: RMSE against the targets
 * (regression), or the mean log loss of Phi(y(x)) (binary). */
double wk_mcmc_train_loss(const wk_mcmc *m);

/* The current draw of the noise precision alpha and of w0. */
double wk_mcmc_alpha(const wk_mcmc *m);
double wk_mcmc_w0(const wk_mcmc *m);

/* Phi(x), the standard normal distribution function. */
double wk_mcmc_probit(double x);

#endif
