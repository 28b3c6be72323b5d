/* reglearn: see reglearn.h. */
#include "worker/reglearn.h"

#include <math.h>

#include "common/log.h"

void wk_reg_scale(const float *src, float *dst, size_t n, float t)
{
    for (size_t k = 0; k < n; k++)
        dst[k] = src[k] * t;
}

void wk_reg_add(wk_reg_sums *s, int binary, const float *pred, const float *up,
                const float *down, const float *label, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        /* the quadratic's slope at t = 1 from its values at 1 +- eps */
        const double along = ((double)up[j] - (double)down[j]) / (2.0 * (double)WK_REG_EPS);
        double d, l;
        if (binary) {
            const double p = 1.0 / (1.0 + exp(-(double)pred[j]));
            d = p - label[j];
            /* log(1 + e^-|y|) + max(y, 0) - y t, stable for large scores */
            const double y = pred[j];
            l = log1p(exp(-fabs(y))) + (y > 0 ? y : 0) - y * label[j];
        } else {
            d = (double)pred[j] - label[j];
            l = 0.5 * d * d;
        }
        s->dot += d * along;
        s->loss += l;
        s->n += 1;
    }
}

double wk_reg_grad(const wk_reg_sums *s, double lr)
{
    return s->n > 0 ? -lr * s->dot / s->n : 0.0;
}

double wk_reg_next(double l2, const wk_reg_sums *s)
{
    if (!(s->n > 0) || !(s->loss > 0) || !isfinite(s->dot))
        return l2;
    double step = WK_REG_GAIN * s->dot / s->loss;
    if (step > WK_REG_MAX_STEP)
        step = WK_REG_MAX_STEP;
    if (step < -WK_REG_MAX_STEP)
        step = -WK_REG_MAX_STEP;
    double next = exp(log(l2 > WK_REG_MIN ? l2 : WK_REG_MIN) + step);
    return next < WK_REG_MIN ? WK_REG_MIN : (next > WK_REG_MAX ? WK_REG_MAX : next);
}

float wk_reg_learn(float l2, const wk_reg_sums *s, double lr, uint32_t index, uint32_t epoch)
{
    const double before = l2;
    const float after = (float)wk_reg_next(before, s);
    cm_log(CM_LOG_INFO, "worker %u: epoch %u: learned l2 %.4g -> %.4g (dL_valid/dl2 %.3g)",
           index, epoch, before, (double)after, wk_reg_grad(s, lr));
    return after;
}
