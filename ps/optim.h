/* optim: per-row optimizer updates applied by the servers.
 *
 * A row is `dim` weights followed by the optimizer's state (AdaGrad: one
 * accumulator per weight). update() applies one summed gradient to one row
 * in place. */
#ifndef PSREC_PS_OPTIM_H
#define PSREC_PS_OPTIM_H

#include <stddef.h>

typedef struct {
    int kind;          /* cm_optimizer: CM_OPT_SGD or CM_OPT_ADAGRAD */
    float lr;          /* learning rate */
    float eps;         /* AdaGrad: added under the square root; default 1e-8 */
    float init_accum;  /* AdaGrad: initial accumulator value; default 0.1 */
} ps_optim;

/* Floats of state per weight (0 SGD, 1 AdaGrad). */
int ps_optim_state_per_weight(int kind);

/* Initialises the state part of a fresh row (weights untouched). */
void ps_optim_init_state(const ps_optim *o, float *row, int dim);

/* row[0..dim) -= step(grad), using and updating the state after it.
 * SGD: w -= lr*g. AdaGrad: a += g*g; w -= lr*g/sqrt(a + eps). */
void ps_optim_update(const ps_optim *o, float *row, const float *grad, int dim);

#endif
