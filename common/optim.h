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
 * rules: this module is the only place they are written. Kernels that fuse
 * the gradient with the step (worker/models/mf.c) take the per-weight and
 * AVX-512 forms below instead of writing the rule again. docs/optimizers.md
 * has the exact rules. */
#ifndef PSREC_COMMON_OPTIM_H
#define PSREC_COMMON_OPTIM_H

#include <math.h>
#include <stddef.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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
} cm_optim;

/* The defaults above for `kind` with learning rate lr. */
cm_optim cm_optim_default(int kind, float lr);

/* 0 if o describes a usable optimizer, else CM_EINVAL with the reason in
 * err (may be NULL): unknown kind, lr not finite or < 0 (FTRL: <= 0),
 * AdaGrad eps + init_accum == 0, Adam eps <= 0 or a beta outside [0, 1),
 * FTRL l1/l2/beta < 0 or beta + l2 == 0. */
int cm_optim_check(const cm_optim *o, cm_error *err);

/* Floats of optimizer state stored after the dim weights of a row:
 * SGD 0, AdaGrad dim, row-wise 1, Adam 2*dim + 1, FTRL 2*dim. */
int cm_optim_state_floats(int kind, int dim);

/* Initialises the state part of a fresh row whose weights row[0..dim) are
 * already set (weights untouched). AdaGrad: accumulators = init_accum.
 * Adam: m = v = t = 0. FTRL: n = 0 and z chosen so that the weight the
 * state gives is the row's initial weight (see docs/optimizers.md). */
void cm_optim_init_state(const cm_optim *o, float *row, int dim);

/* row[0..dim) -= step(grad), using and updating the state after it.
 * SGD: w -= lr*g. AdaGrad: a += g*g; w -= lr*g/sqrt(a + eps).
 * Row-wise AdaGrad: A += mean(g*g); w -= lr*g/sqrt(A + eps).
 * Adam: t += 1; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *       w -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
 * FTRL, per coordinate with g != 0: sigma = (sqrt(n + g^2) - sqrt(n)) / lr;
 *       z += g - sigma*w; n += g^2;
 *       w = |z| <= l1 ? 0 : -(z - sign(z) l1) / ((beta + sqrt(n)) / lr + l2).
 * `o` must pass cm_optim_check. */
void cm_optim_update(const cm_optim *o, float *row, const float *grad, int dim);

/* The FTRL weight that state (z, n) gives (exposed for tests and tools). */
float cm_optim_ftrl_weight(const cm_optim *o, float z, float n);

/* ---------------------------------------------------------------------------
 * The rules one weight (or one row's accumulator) at a time, for kernels
 * that compute a gradient and step at once. cm_optim_update is made of
 * these, so a kernel that uses them gets the server's floats bit for bit.
 * ------------------------------------------------------------------------- */

/* AdaGrad on one weight w with accumulator a: a += g*g;
 * w -= lr*g/sqrt(a + eps). */
static inline void cm_optim_adagrad1(float *w, float *a, float g, float lr, float eps)
{
    *a += g * g;
    *w -= lr * g / sqrtf(*a + eps);
}

/* Row-wise AdaGrad: adds sumsq/dim (sumsq: the row gradient's squared
 * norm) to the row's accumulator *a and returns the step lr/sqrt(A + eps)
 * every weight of the row then takes: w -= step*g. */
static inline float cm_optim_rowwise_step(float *a, float sumsq, int dim, float lr, float eps)
{
    *a += sumsq / (float)dim;
    return lr / sqrtf(*a + eps);
}

#if defined(__AVX512F__)
/* 1/sqrt(x) as vrsqrt14 and one Newton step: within a few float ulps of
 * the division the scalar rule does (tests/test_mf.c checks 1e-5
 * relative) at a fraction of its cost. vrsqrt14 is defined bit for bit,
 * so runs stay reproducible across processors. */
static inline __m512 cm_optim_rsqrt16(__m512 x)
{
    const __m512 y = _mm512_rsqrt14_ps(x);
    const __m512 hx = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
    const __m512 t = _mm512_fnmadd_ps(_mm512_mul_ps(hx, y), y, _mm512_set1_ps(1.5f));
    return _mm512_mul_ps(y, t);
}

/* AdaGrad on 16 weights w with accumulators *a (updated): returns the new
 * weights, w - lr*g*rsqrt(a + eps) with the approximate rsqrt above. */
static inline __m512 cm_optim_adagrad16(__m512 w, __m512 g, __m512 *a, __m512 lr,
                                        __m512 eps)
{
    *a = _mm512_fmadd_ps(g, g, *a);
    const __m512 s = _mm512_mul_ps(_mm512_mul_ps(lr, g), cm_optim_rsqrt16(_mm512_add_ps(*a, eps)));
    return _mm512_sub_ps(w, s);
}

/* SGD (and row-wise AdaGrad, with its row step in lr) on 16 weights:
 * w - lr*g, fused. */
static inline __m512 cm_optim_sgd16(__m512 w, __m512 g, __m512 lr)
{
    return _mm512_fnmadd_ps(lr, g, w);
}
#endif

#endif
