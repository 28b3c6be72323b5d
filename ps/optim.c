#include "ps/optim.h"

#include <math.h>

#include "common/config.h"

int ps_optim_state_floats(int kind, int dim)
{
    switch (kind) {
    case CM_OPT_ADAGRAD:
        return dim;
    case CM_OPT_ROWWISE:
        return 1;
    default:
        return 0;
    }
}

void ps_optim_init_state(const ps_optim *o, float *row, int dim)
{
    int n = ps_optim_state_floats(o->kind, dim);
    for (int j = 0; j < n; j++)
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
    if (o->kind == CM_OPT_ROWWISE) {
        float sq = 0.f;
        for (int j = 0; j < dim; j++)
            sq += grad[j] * grad[j];
        row[dim] += sq / (float)dim;
        const float step = lr / sqrtf(row[dim] + o->eps);
        for (int j = 0; j < dim; j++)
            row[j] -= step * grad[j];
        return;
    }
    for (int j = 0; j < dim; j++)
        row[j] -= lr * grad[j];
}
