/* optim: the update rules. SGD and the two AdaGrads are unchanged since
 * they were written (other code and tests depend on their exact floats);
 * Adam and FTRL-proximal follow docs/optimizers.md. */
#include "common/optim.h"

#include <math.h>

#include "common/config.h"

cm_optim cm_optim_default(int kind, float lr)
{
    cm_optim o = {
        .kind = kind,
        .lr = lr,
        .eps = 1e-8f,
        .init_accum = 0.1f,
        .beta1 = 0.9f,
        .beta2 = 0.999f,
        .l1 = 0.0f,
        .l2 = 0.0f,
        .beta = 1.0f,
    };
    return o;
}

static int s_finite_nonneg(float x)
{
    return x >= 0.0f && isfinite(x);
}

int cm_optim_check(const cm_optim *o, cm_error *err)
{
    if (!o)
        return cm_error_set(err, CM_EINVAL, "optim: no parameters");
    switch (o->kind) {
    case CM_OPT_SGD:
    case CM_OPT_ADAGRAD:
    case CM_OPT_ROWWISE:
    case CM_OPT_ADAM:
    case CM_OPT_FTRL:
        break;
    default:
        return cm_error_set(err, CM_EINVAL, "optim: unknown optimizer %d", o->kind);
    }
    if (!s_finite_nonneg(o->lr))
        return cm_error_set(err, CM_EINVAL, "optim: lr %g must be finite and >= 0",
                            (double)o->lr);
    if (o->kind == CM_OPT_ADAGRAD || o->kind == CM_OPT_ROWWISE) {
        if (!s_finite_nonneg(o->eps) || !s_finite_nonneg(o->init_accum))
            return cm_error_set(err, CM_EINVAL,
                                "optim: adagrad eps %g and init_accum %g must be finite "
                                "and >= 0",
                                (double)o->eps, (double)o->init_accum);
        /* A zero gradient on a zero accumulator would be 0/0 = NaN. */
        if (!(o->eps + o->init_accum > 0.0f))
            return cm_error_set(err, CM_EINVAL,
                                "optim: adagrad needs eps + init_accum > 0 (got %g + %g)",
                                (double)o->eps, (double)o->init_accum);
    }
    if (o->kind == CM_OPT_ADAM) {
        if (!(o->beta1 >= 0.0f && o->beta1 < 1.0f) || !(o->beta2 >= 0.0f && o->beta2 < 1.0f))
            return cm_error_set(err, CM_EINVAL,
                                "optim: adam beta1 %g and beta2 %g must be in [0, 1)",
                                (double)o->beta1, (double)o->beta2);
        /* m = v = 0 (a first gradient of 0) would be 0/0 without it. */
        if (!(o->eps > 0.0f) || !isfinite(o->eps))
            return cm_error_set(err, CM_EINVAL, "optim: adam eps %g must be finite and > 0",
                                (double)o->eps);
    }
    if (o->kind == CM_OPT_FTRL) {
        if (!(o->lr > 0.0f))
            return cm_error_set(err, CM_EINVAL, "optim: ftrl needs lr (alpha) > 0");
        if (!s_finite_nonneg(o->l1) || !s_finite_nonneg(o->l2) || !s_finite_nonneg(o->beta))
            return cm_error_set(err, CM_EINVAL,
                                "optim: ftrl l1 %g, l2 %g and beta %g must be finite and >= 0",
                                (double)o->l1, (double)o->l2, (double)o->beta);
        /* With n = 0 the weight's denominator is beta/alpha + l2. */
        if (!(o->beta + o->l2 > 0.0f))
            return cm_error_set(err, CM_EINVAL, "optim: ftrl needs beta + l2 > 0");
    }
    return 0;
}

int cm_optim_state_floats(int kind, int dim)
{
    switch (kind) {
    case CM_OPT_ADAGRAD:
        return dim;
    case CM_OPT_ROWWISE:
        return 1;
    case CM_OPT_ADAM:
        return 2 * dim + 1;
    case CM_OPT_FTRL:
        return 2 * dim;
    default:
        return 0;
    }
}

float cm_optim_ftrl_weight(const cm_optim *o, float z, float n)
{
    if (fabsf(z) <= o->l1)
        return 0.0f;
    return -(z - copysignf(o->l1, z)) / ((o->beta + sqrtf(n)) / o->lr + o->l2);
}

void cm_optim_init_state(const cm_optim *o, float *row, int dim)
{
    if (o->kind == CM_OPT_ADAM) {
        for (int j = 0; j < 2 * dim + 1; j++)
            row[dim + j] = 0.0f;
        return;
    }
    if (o->kind == CM_OPT_FTRL) {
        /* n = 0 and the z whose weight is w: inverting the weight rule at
         * n = 0 gives z = -w (beta/alpha + l2) - sign(w) l1. Without it a
         * fresh row's random initial weight would be dropped by its first
         * update (z = 0 means w = 0). */
        float *z = row + dim, *n = row + 2 * dim;
        const float d0 = o->beta / o->lr + o->l2;
        for (int j = 0; j < dim; j++) {
            float w = row[j];
            z[j] = w == 0.0f ? 0.0f : -w * d0 - copysignf(o->l1, w);
            n[j] = 0.0f;
        }
        return;
    }
    int n = cm_optim_state_floats(o->kind, dim);
    for (int j = 0; j < n; j++)
        row[dim + j] = o->init_accum;
}

/* Lazy Adam on one row: the row's own step count t sits after v. */
static void s_adam(const cm_optim *o, float *restrict row, const float *restrict grad, int dim)
{
    float *restrict m = row + dim;
    float *restrict v = row + 2 * dim;
    float *tp = row + 3 * (size_t)dim;
    /* Exact up to 2^24 steps of this row; beyond, t stops growing, when
     * both corrections are 1 to float precision for any beta < 1 - 1e-6. */
    float t = *tp + 1.0f;
    *tp = t;
    const float b1 = o->beta1, b2 = o->beta2;
    const float c1 = (float)(1.0 / (1.0 - pow((double)b1, (double)t)));
    const float c2 = (float)(1.0 / (1.0 - pow((double)b2, (double)t)));
    const float lr = o->lr, eps = o->eps;
    for (int j = 0; j < dim; j++) {
        float g = grad[j];
        m[j] = b1 * m[j] + (1.0f - b1) * g;
        v[j] = b2 * v[j] + (1.0f - b2) * g * g;
        row[j] -= lr * (m[j] * c1) / (sqrtf(v[j] * c2) + eps);
    }
}

/* FTRL-proximal per coordinate (McMahan et al. 2013, algorithm 1). */
static void s_ftrl(const cm_optim *o, float *restrict row, const float *restrict grad, int dim)
{
    float *restrict z = row + dim;
    float *restrict n = row + 2 * dim;
    const float alpha = o->lr, l1 = o->l1, l2 = o->l2, beta = o->beta;
    for (int j = 0; j < dim; j++) {
        float g = grad[j];
        if (g == 0.0f)
            continue;   /* nothing seen: weight and state stay as they are */
        float g2 = g * g;
        float s_old = sqrtf(n[j]);
        float n_new = n[j] + g2;
        float s_new = sqrtf(n_new);
        /* (sqrt(n + g^2) - sqrt(n)) / alpha without the cancellation. */
        float den = alpha * (s_new + s_old);
        float sigma = den > 0.0f ? g2 / den : 0.0f;
        float zj = z[j] + g - sigma * row[j];
        z[j] = zj;
        n[j] = n_new;
        if (fabsf(zj) <= l1)
            row[j] = 0.0f;
        else
            row[j] = -(zj - copysignf(l1, zj)) / ((beta + s_new) / alpha + l2);
    }
}

void cm_optim_update(const cm_optim *o, float *restrict row, const float *restrict grad,
                     int dim)
{
    const float lr = o->lr;
    if (o->kind == CM_OPT_ADAGRAD) {
        float *restrict acc = row + dim;
        for (int j = 0; j < dim; j++)
            cm_optim_adagrad1(&row[j], &acc[j], grad[j], lr, o->eps);
        return;
    }
    if (o->kind == CM_OPT_ROWWISE) {
        float sq = 0.f;
        for (int j = 0; j < dim; j++)
            sq += grad[j] * grad[j];
        const float step = cm_optim_rowwise_step(&row[dim], sq, dim, lr, o->eps);
        for (int j = 0; j < dim; j++)
            row[j] -= step * grad[j];
        return;
    }
    if (o->kind == CM_OPT_ADAM) {
        s_adam(o, row, grad, dim);
        return;
    }
    if (o->kind == CM_OPT_FTRL) {
        s_ftrl(o, row, grad, dim);
        return;
    }
    for (int j = 0; j < dim; j++)
        row[j] -= lr * grad[j];
}
