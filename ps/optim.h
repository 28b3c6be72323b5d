/* optim: per-row optimizer updates.
 *
 * A row is `dim` weights followed by the optimizer's state: none for SGD,
 * one accumulator per weight for AdaGrad, one accumulator for the whole row
 * for row-wise AdaGrad (the mean of the squared gradient entries, as
 * embedding trainers use: one square root per row instead of per weight).
 * update() applies one summed gradient to one row in place. Servers use it
 * for pushed gradients; workers training a block locally use the same
 * rules. */
#ifndef PSREC_PS_OPTIM_H
#define PSREC_PS_OPTIM_H

#include <stddef.h>

typedef struct {
    int kind;          /* cm_optimizer: CM_OPT_SGD, CM_OPT_ADAGRAD, CM_OPT_ROWWISE */
    float lr;          /* learning rate */
    float eps;         /* AdaGrad: added under the square root; default 1e-8 */
    float init_accum;  /* AdaGrad: initial accumulator value; default 0.1 */
} ps_optim;

/* Floats of optimizer state stored after the dim weights of a row. */
int ps_optim_state_floats(int kind, int dim);

/* Initialises the state part of a fresh row (weights untouched). */
void ps_optim_init_state(const ps_optim *o, float *row, int dim);

/* row[0..dim) -= step(grad), using and updating the state after it.
 * SGD: w -= lr*g. AdaGrad: a += g*g; w -= lr*g/sqrt(a + eps).
 * Row-wise AdaGrad: A += mean(g*g); w -= lr*g/sqrt(A + eps). */
void ps_optim_update(const ps_optim *o, float *row, const float *grad, int dim);

#endif
