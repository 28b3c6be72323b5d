/* reglearn: the L2 strength learned from the validation data
 * (`regularization = learned`, docs/validation.md).
 *
 * After each evaluation a worker moves lambda by the gradient of the
 * validation loss through one lookahead step, as SGDA does (Rendle, WSDM
 * 2012): theta' = theta - lr (g + lambda theta), so d theta'/d lambda =
 * -lr theta and
 *     dL_v/d lambda = -lr  sum_j l'(y^_j) <grad y^_j, theta>.
 * The models' predictions are polynomials of degree <= 2 in the weights
 * (mf: biases and <p, q>; fm: linear terms and pairs), so along the ray
 * t theta a prediction is a quadratic in t and its derivative at t = 1,
 * <grad y^, theta>, is exactly the central difference of the predictions
 * made with the rows scaled by 1 + eps and 1 - eps. That needs nothing of
 * a model but its predict, and no extra pull: the rows are those the
 * evaluation pulled anyway. */
#ifndef PSREC_WORKER_REGLEARN_H
#define PSREC_WORKER_REGLEARN_H

#include <stddef.h>
#include <stdint.h>

/* The scale of the two extra predictions: rows * (1 +- WK_REG_EPS). */
#define WK_REG_EPS 0.0625f

/* What one worker gathers over its validation examples. */
typedef struct {
    double dot;   /* sum_j l'(y^_j) <grad y^_j, theta> */
    double loss;  /* sum_j of the loss (squared error / 2, or log loss) */
    double n;     /* examples */
} wk_reg_sums;

/* dst[k] = src[k] * t for k < n. */
void wk_reg_scale(const float *src, float *dst, size_t n, float t);

/* Adds n examples: pred their (unclipped) predictions with the rows as
 * they are, up / down with the rows scaled by 1 + WK_REG_EPS / 1 -
 * WK_REG_EPS, label the targets. binary: predictions are scores (log
 * loss); else squared error. */
void wk_reg_add(wk_reg_sums *s, int binary, const float *pred, const float *up,
                const float *down, const float *label, size_t n);

/* dL_v/d lambda of the mean validation loss through one step of rate lr. */
double wk_reg_grad(const wk_reg_sums *s, double lr);

/* The next lambda: log lambda moves against the gradient, by at most
 * WK_REG_MAX_STEP, and lambda stays within [WK_REG_MIN, WK_REG_MAX]. The
 * step is the validation loss's elasticity (its relative change for a
 * relative shrink of every weight, dot / (2 loss)) times WK_REG_GAIN, so it
 * does not depend on lr or on the optimizer's scaling of lr. Returns l2
 * unchanged when s holds no examples. */
#define WK_REG_GAIN 2.0
#define WK_REG_MAX_STEP 0.5
#define WK_REG_MIN 1e-6
#define WK_REG_MAX 10.0
double wk_reg_next(double l2, const wk_reg_sums *s);

/* A worker's l2 after an evaluation: wk_reg_next of l2, logged as worker
 * index's after epoch (lr: the job's, for the gradient logged). */
float wk_reg_learn(float l2, const wk_reg_sums *s, double lr, uint32_t index, uint32_t epoch);

#endif
