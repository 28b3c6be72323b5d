/* optim: per-row optimizer updates.
 *
 * A row is `dim` weights followed by the optimizer's state:
 *   SGD              none
 *   AdaGrad          a[dim]: one accumulator per weight
 *   row-wise AdaGrad A: one accumulator for the whole row (the mean of the
 *                    squared gradient entries, as embedding trainers use:
 *                    one square root per row instead of per weight)
 *   Adam             m[dim], v[dim], t: moments and the row's own step count
 *                    (lazy, sparse-row: a row moves only when it has a
 *                    gradient, and its bias correction uses its own t)
 *   FTRL-proximal    z[dim], n[dim]; the weights are a function of them
 * update() applies one summed gradient to one row in place. Servers use it
 * for pushed gradients; workers training a block locally use the same
 * rules. docs/optimizers.md has the exact rules. */
#ifndef PSREC_PS_OPTIM_H
#define PSREC_PS_OPTIM_H

#include <stddef.h>

#include "common/err.h"

typedef struct {
    int kind;          /* cm_optimizer: CM_OPT_SGD, _ADAGRAD, _ROWWISE, _ADAM, _FTRL */
    float lr;          /* learning rate; FTRL's alpha */
    float eps;         /* AdaGrad: added under the square root; Adam: added to
                        * sqrt(v_hat). Default 1e-8 */
    float init_accum;  /* AdaGrad: initial accumulator value; default 0.1 */
    float beta1;       /* Adam: first-moment decay, [0, 1); default 0.9 */
    float beta2;       /* Adam: second-moment decay, [0, 1); default 0.999 */
    float l1;          /* FTRL: L1 strength, >= 0; default 0 */
    float l2;          /* FTRL: L2 strength, >= 0; default 0 */
    float beta;        /* FTRL: rate smoothing, alpha / (beta + sqrt(n)); default 1 */
} ps_optim;

/* The defaults above for `kind` with learning rate lr. */
ps_optim ps_optim_default(int kind, float lr);

/* 0 if o describes a usable optimizer, else CM_EINVAL with the reason in
 * err (may be NULL): unknown kind, lr not finite or < 0 (FTRL: <= 0),
 * AdaGrad eps + init_accum == 0, Adam eps <= 0 or a beta outside [0, 1),
 * FTRL l1/l2/beta < 0 or beta + l2 == 0. */
int ps_optim_check(const ps_optim *o, cm_error *err);

/* Floats of optimizer state stored after the dim weights of a row:
 * SGD 0, AdaGrad dim, row-wise 1, Adam 2*dim + 1, FTRL 2*dim. */
int ps_optim_state_floats(int kind, int dim);

/* Initialises the state part of a fresh row whose weights row[0..dim) are
 * already set (weights untouched). AdaGrad: accumulators = init_accum.
 * Adam: m = v = t = 0. FTRL: n = 0 and z chosen so that the weight the
 * state gives is the row's initial weight (see docs/optimizers.md). */
void ps_optim_init_state(const ps_optim *o, float *row, int dim);

/* row[0..dim) -= step(grad), using and updating the state after it.
 * SGD: w -= lr*g. AdaGrad: a += g*g; w -= lr*g/sqrt(a + eps).
 * Row-wise AdaGrad: A += mean(g*g); w -= lr*g/sqrt(A + eps).
 * Adam: t += 1; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *       w -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
 * FTRL, per coordinate with g != 0: sigma = (sqrt(n + g^2) - sqrt(n)) / lr;
 *       z += g - sigma*w; n += g^2;
 *       w = |z| <= l1 ? 0 : -(z - sign(z) l1) / ((beta + sqrt(n)) / lr + l2).
 * `o` must pass ps_optim_check. */
void ps_optim_update(const ps_optim *o, float *row, const float *grad, int dim);

/* The FTRL weight that state (z, n) gives (exposed for tests and tools). */
float ps_optim_ftrl_weight(const ps_optim *o, float z, float n);

#endif
