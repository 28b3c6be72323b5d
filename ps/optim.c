#include "ps/optim.h"

#include <math.h>

#include "common/config.h"

int ps_optim_state_per_weight(int kind)
{
    return kind == CM_OPT_ADAGRAD ? 1 : 0;
}

void ps_optim_init_state(const ps_optim *o, float *row, int dim)
{
    if (o->kind == CM_OPT_ADAGRAD)
        for (int j = 0; j < dim; j++)
            row[dim + j] = o->init_accum;
}

void ps_optim_update(const ps_optim *o, float *restrict row, const float *restrict grad,
                     int dim)
{
    const float lr = o->lr;
    if (o->kind == CM_OPT_ADAGRAD) {
        float *restrict acc = row + dim;
        for (int j = 0; j < dim; j++) {
            float g = grad[j];
            acc[j] += g * g;
            row[j] -= lr * g / sqrtf(acc[j] + o->eps);
        }
        return;
    }
    for (int j = 0; j < dim; j++)
        row[j] -= lr * grad[j];
}
