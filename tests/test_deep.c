/* deep (MLP over field embeddings): the layout, the outputs against a plain
 * double-precision reference written from deep.h's definition, every
 * gradient against central finite differences of that reference, and a
 * small XOR task that only the hidden layers (or the FM term) can fit. */
#include <cblas.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/features.h"
#include "common/metrics.h"
#include "common/rng.h"
#include "worker/models/deep.h"

static void s_one_thread(void)
{
    openblas_set_num_threads(1);
}

TestSuite(deep, .init = s_one_thread);

enum { F = 3, K = 4, N = 5, FK = F * K };

static wk_mlp_params s_small(int fm_term)
{
    return (wk_mlp_params){.n_fields = F, .k = K, .n_hidden = 2, .hidden = {8, 4},
                           .fm_term = fm_term};
}

/* ---------------------------------------------------------------------------
 * Reference: the definition in deep.h, in double, with plain loops.
 * ------------------------------------------------------------------------- */

/* Output of one example; *kink receives the smallest |pre-activation| of
 * the hidden units (how close the example sits to a ReLU corner). */
static double s_ref_score(const wk_mlp_params *p, const double *w, const double *e,
                          const double *lin, double *kink)
{
    double a[2][64];
    const double *x = e;
    int cur = 0;
    double y = 0;
    for (int l = 0; l <= p->n_hidden; l++) {
        wk_mlp_layer_info li = wk_mlp_layer(p, l);
        for (int o = 0; o < li.out; o++) {
            double z = w[li.b_off + o];
            for (int i = 0; i < li.in; i++)
                z += w[li.w_off + (size_t)o * li.in + i] * x[i];
            if (l == p->n_hidden) {
                y = z;
            } else {
                if (fabs(z) < *kink)
                    *kink = fabs(z);
                a[cur][o] = z > 0 ? z : 0;
            }
        }
        x = a[cur];
        cur ^= 1;
    }
    if (p->fm_term) {
        for (int f = 0; f < p->n_fields; f++) {
            y += lin[f];
            for (int g = f + 1; g < p->n_fields; g++)
                for (int c = 0; c < p->k; c++)
                    y += e[f * p->k + c] * e[g * p->k + c];
        }
    }
    return y;
}

static double s_ref_loss(const wk_mlp_params *p, int task, const double *w, const double *emb,
                         const double *lin, const float *label, int n, double *kink)
{
    double l = 0;
    for (int j = 0; j < n; j++) {
        double y = s_ref_score(p, w, emb + (size_t)j * p->n_fields * p->k,
                               lin + (size_t)j * p->n_fields, kink);
        double t = label[j];
        l += task == CM_TASK_BINARY ? (t > 0.5 ? log1p(exp(-y)) : log1p(exp(y)))
                                    : 0.5 * (y - t) * (y - t);
    }
    return l;
}

/* ---------------------------------------------------------------------------
 * Fixtures
 * ------------------------------------------------------------------------- */

static float *s_falloc(size_t n)
{
    float *v = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    cr_assert_not_null(v);
    memset(v, 0, n * sizeof(float));
    return v;
}

static void s_random(float *v, size_t n, uint64_t seed, double std)
{
    cm_rng r;
    cm_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)(std * cm_rng_normal(&r));
}

static void s_to_double(const float *v, double *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = v[i];
}

/* Checks d(loss)/d(every weight, every embedding, every lin) against
 * central differences of the reference, and the loss and scores too. */
static void s_check_net(const wk_mlp_params p, int task, const float *label)
{
    const int fm_term = p.fm_term;
    const size_t nw = wk_mlp_n_weights(&p);
    float *w = s_falloc(nw), *gw = s_falloc(nw), *emb = s_falloc(N * FK),
          *gemb = s_falloc(N * FK), lin[N * F], glin[N * F], score[N];
    wk_mlp_init_weights(&p, 42, w);
    /* biases away from zero too, so every bias gradient is exercised */
    for (int l = 0; l <= p.n_hidden; l++) {
        wk_mlp_layer_info li = wk_mlp_layer(&p, l);
        s_random(w + li.b_off, (size_t)li.out, 100 + l, 0.3);
    }
    s_random(emb, N * FK, 7, 0.5);
    s_random(lin, N * F, 8, 0.3);
    memset(glin, 0, sizeof glin);

    cm_error err = {0};
    wk_mlp *m = wk_mlp_new(&p, N, &err);
    cr_assert_not_null(m, "%s", err.msg);
    double loss = wk_mlp_forward_backward(m, w, emb, lin, label, N, task, gw, gemb, glin, score);

    double *dw = malloc(nw * sizeof *dw), demb[N * FK], dlin[N * F];
    cr_assert_not_null(dw);
    s_to_double(w, dw, nw);
    s_to_double(emb, demb, N * FK);
    s_to_double(lin, dlin, N * F);
    double kink = INFINITY;
    double want = s_ref_loss(&p, task, dw, demb, dlin, label, N, &kink);
    cr_expect(fabs(loss - want) <= 1e-5 * fabs(want) + 1e-6, "loss %g vs reference %g", loss,
              want);
    /* ReLU corners make central differences meaningless within h of 0 */
    const double h = 1e-5;
    cr_assert(kink > 10 * h, "fixture sits on a ReLU corner (min |z| = %g)", kink);
    for (int j = 0; j < N; j++) {
        double k2 = INFINITY;
        double y = s_ref_score(&p, dw, demb + j * FK, dlin + j * F, &k2);
        cr_expect(fabs(score[j] - y) <= 1e-5 * (1 + fabs(y)), "score %d: %g vs %g", j,
                  score[j], y);
    }

    /* every weight (padding included: its gradient must stay 0) */
    int checked = 0;
    for (size_t i = 0; i < nw; i++) {
        const double keep = dw[i];
        double kp = INFINITY, km = INFINITY;
        dw[i] = keep + h;
        double lp = s_ref_loss(&p, task, dw, demb, dlin, label, N, &kp);
        dw[i] = keep - h;
        double lm = s_ref_loss(&p, task, dw, demb, dlin, label, N, &km);
        dw[i] = keep;
        double fd = (lp - lm) / (2 * h);
        cr_expect(fabs(fd - gw[i]) <= 1e-4 + 1e-3 * fabs(fd),
                  "task %d fm %d weight %zu: analytic %.7g vs numeric %.7g", task, fm_term, i,
                  gw[i], fd);
        checked++;
    }
    cr_expect_eq(checked, (int)nw);

    /* every embedding input */
    for (int i = 0; i < N * FK; i++) {
        const double keep = demb[i];
        double kp = INFINITY;
        demb[i] = keep + h;
        double lp = s_ref_loss(&p, task, dw, demb, dlin, label, N, &kp);
        demb[i] = keep - h;
        double lm = s_ref_loss(&p, task, dw, demb, dlin, label, N, &kp);
        demb[i] = keep;
        double fd = (lp - lm) / (2 * h);
        cr_expect(fabs(fd - gemb[i]) <= 1e-4 + 1e-3 * fabs(fd),
                  "task %d fm %d emb %d: analytic %.7g vs numeric %.7g", task, fm_term, i,
                  gemb[i], fd);
    }

    /* first-order weights (FM term only; untouched otherwise) */
    for (int i = 0; i < N * F; i++) {
        if (!fm_term) {
            cr_expect_eq(glin[i], 0.f);
            continue;
        }
        const double keep = dlin[i];
        double kp = INFINITY;
        dlin[i] = keep + h;
        double lp = s_ref_loss(&p, task, dw, demb, dlin, label, N, &kp);
        dlin[i] = keep - h;
        double lm = s_ref_loss(&p, task, dw, demb, dlin, label, N, &kp);
        dlin[i] = keep;
        double fd = (lp - lm) / (2 * h);
        cr_expect(fabs(fd - glin[i]) <= 1e-4 + 1e-3 * fabs(fd),
                  "task %d lin %d: analytic %.7g vs numeric %.7g", task, i, glin[i], fd);
    }

    free(dw);
    free(w);
    free(gw);
    free(emb);
    free(gemb);
    wk_mlp_destroy(&m);
    cr_expect_null(m);
}

static void s_check_gradients(int task, int fm_term, const float *label)
{
    s_check_net(s_small(fm_term), task, label);
}

static const float s_reg_label[N] = {1.5f, -0.5f, 2.0f, 0.25f, -1.0f};
static const float s_bin_label[N] = {1.f, 0.f, 1.f, 1.f, 0.f};

Test(deep, regression_gradients_match_finite_differences)
{
    s_check_gradients(CM_TASK_REGRESSION, 0, s_reg_label);
}

Test(deep, logistic_gradients_match_finite_differences)
{
    s_check_gradients(CM_TASK_BINARY, 0, s_bin_label);
}

Test(deep, deepfm_regression_gradients_match_finite_differences)
{
    s_check_gradients(CM_TASK_REGRESSION, 1, s_reg_label);
}

Test(deep, deepfm_logistic_gradients_match_finite_differences)
{
    s_check_gradients(CM_TASK_BINARY, 1, s_bin_label);
}

Test(deep, gradients_without_hidden_layers_and_with_three)
{
    const wk_mlp_params flat = {.n_fields = F, .k = K, .n_hidden = 0, .fm_term = 1};
    s_check_net(flat, CM_TASK_BINARY, s_bin_label);
    const wk_mlp_params deep3 = {.n_fields = F, .k = K, .n_hidden = 3, .hidden = {6, 5, 3}};
    s_check_net(deep3, CM_TASK_REGRESSION, s_reg_label);
}

/* ---------------------------------------------------------------------------
 * Layout, init, API contract
 * ------------------------------------------------------------------------- */

Test(deep, weight_layout_is_aligned_blocks_in_layer_order)
{
    const wk_mlp_params p = s_small(0);
    cr_assert_eq(wk_mlp_n_layers(&p), 3);
    /* W0 8x12 = 96, b0 8 -> 16, W1 4x8 = 32, b1 4 -> 16, W2 1x4 -> 16, b2 1 -> 16 */
    const wk_mlp_layer_info want[3] = {{0, 96, 12, 8}, {112, 144, 8, 4}, {160, 176, 4, 1}};
    for (int l = 0; l < 3; l++) {
        wk_mlp_layer_info li = wk_mlp_layer(&p, l);
        cr_expect_eq(li.w_off, want[l].w_off, "layer %d w_off %zu", l, li.w_off);
        cr_expect_eq(li.b_off, want[l].b_off, "layer %d b_off %zu", l, li.b_off);
        cr_expect_eq(li.in, want[l].in);
        cr_expect_eq(li.out, want[l].out);
        cr_expect_eq(li.w_off % WK_MLP_ALIGN, 0);
        cr_expect_eq(li.b_off % WK_MLP_ALIGN, 0);
    }
    cr_expect_eq(wk_mlp_n_weights(&p), 192);
    /* the FM term adds no dense weights: its parameters are the rows */
    const wk_mlp_params pfm = s_small(1);
    cr_expect_eq(wk_mlp_n_weights(&pfm), 192);
    cr_expect_eq(wk_mlp_n_rows(&p, 64), 3);
    cr_expect_eq(wk_mlp_n_rows(&p, 50), 4);
    cr_expect_eq(wk_mlp_n_rows(&p, 192), 1);

    /* no hidden layer: a linear model on the concatenation */
    const wk_mlp_params lin = {.n_fields = 2, .k = 5, .n_hidden = 0};
    wk_mlp_layer_info li = wk_mlp_layer(&lin, 0);
    cr_expect_eq(li.w_off, 0);
    cr_expect_eq(li.b_off, 16);
    cr_expect_eq(li.in, 10);
    cr_expect_eq(li.out, 1);
    cr_expect_eq(wk_mlp_n_weights(&lin), 32);

    /* the sizes are exactly what the layout covers: each block fits before the next */
    const wk_mlp_params big = {.n_fields = 26, .k = 16, .n_hidden = 3, .hidden = {400, 400, 400}};
    size_t end = 0;
    for (int l = 0; l < wk_mlp_n_layers(&big); l++) {
        wk_mlp_layer_info b = wk_mlp_layer(&big, l);
        cr_expect_geq(b.w_off, end);
        cr_expect_geq(b.b_off, b.w_off + (size_t)b.in * b.out);
        cr_expect_lt(b.w_off - end, WK_MLP_ALIGN);
        end = b.b_off + (size_t)b.out;
    }
    cr_expect_eq(wk_mlp_n_weights(&big), (end + WK_MLP_ALIGN - 1) / WK_MLP_ALIGN * WK_MLP_ALIGN);
    cr_expect_eq(wk_mlp_n_weights(&big),
                 416 * 400 + 400 + 400 * 400 + 400 + 400 * 400 + 400 + 400 + 16);
}

Test(deep, init_is_deterministic_and_scaled)
{
    const wk_mlp_params p = {.n_fields = 8, .k = 16, .n_hidden = 2, .hidden = {256, 64}};
    const size_t nw = wk_mlp_n_weights(&p);
    float *a = s_falloc(nw), *b = s_falloc(nw), *c = s_falloc(nw);
    memset(a, 0x7f, nw * sizeof *a); /* init must overwrite the padding too */
    wk_mlp_init_weights(&p, 9, a);
    wk_mlp_init_weights(&p, 9, b);
    wk_mlp_init_weights(&p, 10, c);
    cr_expect_eq(memcmp(a, b, nw * sizeof *a), 0, "same seed, same weights");
    cr_expect_neq(memcmp(a, c, nw * sizeof *a), 0, "another seed, other weights");
    size_t end = 0;
    for (int l = 0; l < wk_mlp_n_layers(&p); l++) {
        wk_mlp_layer_info li = wk_mlp_layer(&p, l);
        for (size_t i = end; i < li.w_off; i++)
            cr_expect_eq(a[i], 0.f, "padding %zu", i);
        double ss = 0;
        const size_t nwl = (size_t)li.in * li.out;
        for (size_t i = 0; i < nwl; i++)
            ss += (double)a[li.w_off + i] * a[li.w_off + i];
        const double var = l < p.n_hidden ? 2.0 / li.in : 2.0 / (li.in + li.out);
        if (nwl >= 1000)
            cr_expect(fabs(ss / nwl / var - 1) < 0.1, "layer %d variance %g vs %g", l,
                      ss / nwl, var);
        for (size_t i = li.w_off + nwl; i < li.b_off + (size_t)li.out; i++)
            cr_expect_eq(a[i], 0.f, "bias or padding %zu", i);
        end = li.b_off + (size_t)li.out;
    }
    for (size_t i = end; i < nw; i++)
        cr_expect_eq(a[i], 0.f, "tail %zu", i);
    free(a);
    free(b);
    free(c);
}

Test(deep, new_rejects_bad_params)
{
    cm_error err = {0};
    wk_mlp_params p = s_small(0);
    p.n_hidden = WK_MLP_MAX_HIDDEN + 1;
    cr_expect_null(wk_mlp_new(&p, 8, &err));
    cr_expect_eq(err.code, CM_EINVAL);
    cr_expect(strstr(err.msg, "n_hidden") != NULL, "%s", err.msg);
    p = s_small(0);
    p.hidden[1] = 0;
    cr_expect_null(wk_mlp_new(&p, 8, &err));
    cr_expect(strstr(err.msg, "hidden[1]") != NULL, "%s", err.msg);
    p = s_small(0);
    p.k = 0;
    cr_expect_eq(wk_mlp_check(&p, NULL), CM_EINVAL);
    p = s_small(0);
    cr_expect_null(wk_mlp_new(&p, 0, &err));
    cr_expect_eq(err.code, CM_EINVAL);
    cr_expect_eq(wk_mlp_check(&p, NULL), 0);
    wk_mlp_params d = wk_mlp_params_default();
    cr_expect_eq(wk_mlp_check(&d, NULL), 0);
    wk_mlp_destroy(NULL);
    wk_mlp *none = NULL;
    wk_mlp_destroy(&none);
}

Test(deep, predict_matches_training_scores_and_gradients_accumulate)
{
    const wk_mlp_params p = s_small(1);
    const size_t nw = wk_mlp_n_weights(&p);
    float *w = s_falloc(nw), *gw = s_falloc(nw), *gw2 = s_falloc(nw), *emb = s_falloc(N * FK),
          *gemb = s_falloc(N * FK), lin[N * F], glin[N * F], score[N], pred[N];
    wk_mlp_init_weights(&p, 3, w);
    s_random(emb, N * FK, 4, 0.5);
    s_random(lin, N * F, 5, 0.3);
    wk_mlp *m = wk_mlp_new(&p, 16, NULL);
    cr_assert_not_null(m);
    cr_expect_eq(wk_mlp_get_params(m)->fm_term, 1);
    memset(gemb, 0x55, N * FK * sizeof *gemb); /* overwritten, not accumulated */
    double l1 = wk_mlp_forward_backward(m, w, emb, lin, s_bin_label, N, CM_TASK_BINARY, gw, gemb,
                                        glin, score);
    wk_mlp_predict(m, w, emb, lin, N, pred);
    for (int j = 0; j < N; j++)
        cr_expect_eq(pred[j], score[j], "example %d", j);
    float gemb1[N * FK];
    memcpy(gemb1, gemb, sizeof gemb1);
    memcpy(gw2, gw, nw * sizeof *gw);
    double l2 = wk_mlp_forward_backward(m, w, emb, lin, s_bin_label, N, CM_TASK_BINARY, gw, gemb,
                                        glin, NULL);
    cr_expect_eq(l1, l2);
    for (size_t i = 0; i < nw; i++)
        cr_expect(fabsf(gw[i] - 2 * gw2[i]) <= 1e-6f * (1 + fabsf(gw[i])), "weight %zu", i);
    cr_expect_eq(memcmp(gemb, gemb1, sizeof gemb1), 0);
    /* an empty batch is a no-op */
    cr_expect_eq(wk_mlp_forward_backward(m, w, emb, lin, s_bin_label, 0, CM_TASK_BINARY, gw, gemb,
                                         glin, NULL),
                 0.0);
    /* a smaller batch reuses the scratch and gives the same per-example scores */
    float part[2];
    wk_mlp_predict(m, w, emb + 3 * FK, lin + 3 * F, 2, part);
    cr_expect(fabsf(part[0] - score[3]) <= 1e-6f * (1 + fabsf(score[3])));
    cr_expect(fabsf(part[1] - score[4]) <= 1e-6f * (1 + fabsf(score[4])));
    wk_mlp_destroy(&m);
    free(w);
    free(gw);
    free(gw2);
    free(emb);
    free(gemb);
}

Test(deep, binary_loss_is_stable_for_large_scores)
{
    /* no hidden layer, one field of size 1: y = w * e + b */
    const wk_mlp_params p = {.n_fields = 1, .k = 1, .n_hidden = 0};
    float *w = s_falloc(wk_mlp_n_weights(&p)), *gw = s_falloc(wk_mlp_n_weights(&p));
    wk_mlp_layer_info li = wk_mlp_layer(&p, 0);
    w[li.w_off] = 1.f;
    const float emb[2] = {200.f, -200.f}, label[2] = {0.f, 1.f};
    float gemb[2], score[2];
    wk_mlp *m = wk_mlp_new(&p, 2, NULL);
    cr_assert_not_null(m);
    double loss = wk_mlp_forward_backward(m, w, emb, NULL, label, 2, CM_TASK_BINARY, gw, gemb,
                                          NULL, score);
    cr_expect(isfinite(loss));
    cr_expect_float_eq(loss, 400.0, 1e-3);
    cr_expect_float_eq(gemb[0], 1.f, 1e-6);
    cr_expect_float_eq(gemb[1], -1.f, 1e-6);
    wk_mlp_destroy(&m);
    free(w);
    free(gw);
}

/* ---------------------------------------------------------------------------
 * Learning: NCF-style XOR. Users and items 0..7; the label is 1 when their
 * parities differ. No model additive in (user, item) can rank that above
 * chance; the hidden layers can, and so can the FM interaction.
 * ------------------------------------------------------------------------- */

enum { XU = 8, XI = 8, XN = XU * XI, XK = 4 };

/* Trains embeddings and weights with plain SGD on the full batch; returns
 * the training AUC and writes the accuracy. */
static double s_fit_xor(const wk_mlp_params *p, int steps, float lr, double *acc)
{
    const size_t nw = wk_mlp_n_weights(p);
    float *w = s_falloc(nw), *gw = s_falloc(nw), *emb = s_falloc(XN * 2 * XK),
          *gemb = s_falloc(XN * 2 * XK), *table = s_falloc((XU + XI) * XK);
    float label[XN], score[XN], lin[XN * 2] = {0}, glin[XN * 2];
    wk_mlp_init_weights(p, 1, w);
    s_random(table, (XU + XI) * XK, 2, 0.5);
    for (int u = 0; u < XU; u++)
        for (int i = 0; i < XI; i++)
            label[u * XI + i] = (float)((u ^ i) & 1);
    wk_mlp *m = wk_mlp_new(p, XN, NULL);
    cr_assert_not_null(m);
    for (int step = 0; step < steps; step++) {
        /* gather: example (u, i) -> [e_u, e_i] */
        for (int u = 0; u < XU; u++)
            for (int i = 0; i < XI; i++) {
                memcpy(emb + (u * XI + i) * 2 * XK, table + u * XK, XK * sizeof(float));
                memcpy(emb + (u * XI + i) * 2 * XK + XK, table + (XU + i) * XK,
                       XK * sizeof(float));
            }
        memset(gw, 0, nw * sizeof *gw);
        wk_mlp_forward_backward(m, w, emb, lin, label, XN, CM_TASK_BINARY, gw, gemb, glin, NULL);
        for (size_t j = 0; j < nw; j++)
            w[j] -= lr / XN * gw[j];
        /* scatter: sum the embedding gradients per row, as the worker does per key */
        for (int u = 0; u < XU; u++)
            for (int i = 0; i < XI; i++)
                for (int c = 0; c < XK; c++) {
                    table[u * XK + c] -= lr / XI * gemb[(u * XI + i) * 2 * XK + c];
                    table[(XU + i) * XK + c] -= lr / XU * gemb[(u * XI + i) * 2 * XK + XK + c];
                }
    }
    wk_mlp_predict(m, w, emb, lin, XN, score);
    int right = 0;
    for (int j = 0; j < XN; j++)
        right += (score[j] > 0) == (label[j] > 0.5f);
    *acc = (double)right / XN;
    double auc = cm_auc_exact(score, label, XN);
    wk_mlp_destroy(&m);
    free(w);
    free(gw);
    free(emb);
    free(gemb);
    free(table);
    return auc;
}

Test(deep, sgd_fits_xor_with_hidden_layers)
{
    const wk_mlp_params p = {.n_fields = 2, .k = XK, .n_hidden = 2, .hidden = {16, 8}};
    double acc, auc = s_fit_xor(&p, 400, 0.5f, &acc);
    cr_log_info("AUC %.3f accuracy %.3f", auc, acc);
    cr_expect_gt(auc, 0.95, "AUC %g", auc);
    cr_expect_gt(acc, 0.9, "accuracy %g", acc);
}

Test(deep, sgd_fits_xor_with_the_fm_term_alone)
{
    const wk_mlp_params p = {.n_fields = 2, .k = XK, .n_hidden = 0, .fm_term = 1};
    double acc, auc = s_fit_xor(&p, 400, 0.5f, &acc);
    cr_log_info("AUC %.3f accuracy %.3f", auc, acc);
    cr_expect_gt(auc, 0.95, "AUC %g", auc);
    cr_expect_gt(acc, 0.9, "accuracy %g", acc);
}

Test(deep, a_linear_model_cannot_fit_xor)
{
    const wk_mlp_params p = {.n_fields = 2, .k = XK, .n_hidden = 0};
    double acc, auc = s_fit_xor(&p, 400, 0.5f, &acc);
    cr_log_info("AUC %.3f accuracy %.3f", auc, acc);
    cr_expect_lt(auc, 0.7, "AUC %g", auc);
}

/* ---------------------------------------------------------------------------
 * Dense-table rows: wk_mlp_init_row, wk_mlp_row_floats
 * ------------------------------------------------------------------------- */

Test(deep, init_row_is_the_slice_of_the_whole_init)
{
    const wk_mlp_params nets[] = {
        s_small(0),
        {.n_fields = 3, .k = 5, .n_hidden = 1, .hidden = {7}},        /* odd weight counts */
        {.n_fields = 1, .k = 1, .n_hidden = 0},
        {.n_fields = 10, .k = 8, .n_hidden = 3, .hidden = {33, 17, 5}},
    };
    const int row_floats[] = {16, 48, 64, 80};
    for (size_t q = 0; q < sizeof nets / sizeof nets[0]; q++) {
        const size_t nw = wk_mlp_n_weights(&nets[q]);
        float *w = s_falloc(nw);
        wk_mlp_init_weights(&nets[q], 99 + q, w);
        for (size_t z = 0; z < sizeof row_floats / sizeof row_floats[0]; z++) {
            const int R = row_floats[z];
            const size_t rows = wk_mlp_n_rows(&nets[q], R);
            float *row = s_falloc((size_t)R);
            for (size_t r = 0; r <= rows; r++) { /* one past the end: all zeros */
                wk_mlp_init_row(&nets[q], 99 + q, R, r, row);
                for (int i = 0; i < R; i++) {
                    const size_t at = r * (size_t)R + (size_t)i;
                    const float want = at < nw ? w[at] : 0.f;
                    cr_assert_eq(row[i], want, "net %zu R %d row %zu float %d: %g vs %g", q,
                                 R, r, i, row[i], want);
                }
            }
            free(row);
        }
        free(w);
    }
}

Test(deep, row_floats_keep_nets_to_few_rows)
{
    const wk_mlp_params small = s_small(0);
    cr_expect_eq(wk_mlp_row_floats(&small), 64);
    const wk_mlp_params big = {.n_fields = 39, .k = 16, .n_hidden = 3, .hidden = {400, 400, 400}};
    const int R = wk_mlp_row_floats(&big);
    cr_expect_eq(R % WK_MLP_ALIGN, 0);
    cr_expect_gt(R, 64);
    cr_expect_leq(wk_mlp_n_rows(&big, R), 256, "%zu rows of %d", wk_mlp_n_rows(&big, R), R);
}

/* ---------------------------------------------------------------------------
 * The model ops (wk_model_deep): job keys, tables, features -> loss
 * ------------------------------------------------------------------------- */

#include "ps/table.h"
#include "worker/models/model.h"

static cm_job s_deep_job(int fm_term)
{
    cm_job job = cm_job_default();
    snprintf(job.model, sizeof job.model, "deep");
    job.fields = F;
    job.dim = K;
    snprintf(job.hidden, sizeof job.hidden, "8,4");
    job.fm_term = fm_term;
    return job;
}

Test(deep, params_from_the_job)
{
    cm_job job = s_deep_job(1);
    wk_mlp_params p;
    cm_error e = {0};
    cr_assert_eq(wk_deep_params(&job, &p, &e), 0, "%s", e.msg);
    cr_expect(p.n_fields == F && p.k == K && p.n_hidden == 2 && p.hidden[0] == 8 &&
              p.hidden[1] == 4 && p.fm_term == 1);
    snprintf(job.hidden, sizeof job.hidden, " 16 , 8,4 ");
    cr_assert_eq(wk_deep_params(&job, &p, &e), 0, "%s", e.msg);
    cr_expect_eq(p.n_hidden, 3);
    cr_expect_eq(p.hidden[2], 4);
    job.hidden[0] = '\0';
    cr_assert_eq(wk_deep_params(&job, &p, &e), 0, "%s", e.msg);
    cr_expect_eq(p.n_hidden, 0);
    const char *bad[] = {"64,x", "1,2,3,4,5", "64,", "0", "-3", "8;4"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(job.hidden, sizeof job.hidden, "%s", bad[i]);
        cr_expect_eq(wk_deep_params(&job, &p, &e), CM_ECONFIG, "'%s' accepted", bad[i]);
        cr_expect(strstr(e.msg, "hidden") != NULL, "%s", e.msg);
    }
    job = s_deep_job(0);
    job.fields = 0;
    cr_expect_eq(wk_deep_params(&job, &p, &e), CM_ECONFIG);
    cr_expect(strstr(e.msg, "fields") != NULL, "%s", e.msg);
    cr_expect_null(wk_model_deep.scratch_new(&job, 8, &e), "no net without fields");
}

Test(deep, tables_and_the_declarative_dense_init)
{
    cm_job job = s_deep_job(1);
    job.min_count = 5;
    job.ttl = 2;
    cr_assert_eq(wk_model_find("deep"), &wk_model_deep);
    cr_assert_eq(wk_model_deep.n_tables, 2);
    cr_expect_str_eq(wk_model_deep.table_names[1], "dense");
    cm_table_spec t0, t1;
    wk_model_deep.table_params(&job, 0, &t0);
    wk_model_deep.table_params(&job, 1, &t1);
    cr_expect_eq(t0.dim, K + 1);
    cr_expect_eq(t0.zero_prefix, 1);
    cr_expect_eq(t0.min_count, 5u, "the feature table takes the job's admission");
    cr_expect_eq(t1.dim, 64);
    cr_expect(t1.min_count == 0 && t1.ttl == 0 && t1.max_rows == 0,
              "no admission or eviction for the net");
    cr_assert_gt(t1.dense.n, 0, "the net's init travels in the spec, as data");
    wk_mlp_params p;
    cr_assert_eq(wk_deep_params(&job, &p, NULL), 0);
    const size_t rows = wk_model_deep.dense_rows(&job);
    cr_expect_eq(rows, wk_mlp_n_rows(&p, 64));
    /* a server's table hands out the net's initial weights, row by row */
    float *w = s_falloc(rows * 64);
    wk_mlp_init_weights(&p, wk_deep_seed(&job), w);
    cm_error e = {0};
    ps_table *t = ps_table_new(&t1, &e);
    cr_assert_not_null(t, "%s", e.msg);
    uint64_t keys[64];
    for (size_t r = 0; r < rows; r++)
        keys[r] = rows - 1 - r; /* arrival order does not matter */
    float *got = s_falloc(rows * 64);
    cr_assert_eq(ps_table_pull(t, keys, rows, got, 1, NULL), 0);
    for (size_t r = 0; r < rows; r++)
        for (int i = 0; i < 64; i++)
            cr_assert_eq(got[r * 64 + i], w[keys[r] * 64 + i], "row %zu float %d",
                         (size_t)keys[r], i);
    ps_table_destroy(&t);
    /* another seed, another net */
    job.seed ^= 1;
    float other[64];
    cm_table_spec t2;
    wk_model_deep.table_params(&job, 1, &t2);
    cm_table_spec_init_row(&t2, 0, other);
    cr_expect(memcmp(other, w, sizeof other) != 0);
    free(w);
    free(got);
}

enum { DR = 7, DN = 4, DDIM = K + 1 }; /* 7 feature rows (6: the bias), 4 examples */

/* Example j has features at[j]..at[j+1]-1: example 0 has two in field 1
 * (pooled), example 2 none in field 2, example 3 a feature twice. */
static const uint64_t s_dat[DN + 1] = {0, 4, 7, 9, 13};
static const uint32_t s_didx[13] = {0, 1, 2, 3, 4, 5, 1, 0, 3, 2, 2, 4, 5};
static const uint32_t s_dfld[13] = {0, 1, 1, 2, 0, 1, 2, 0, 1, 0, 0, 1, 2};
static const float s_dval[13] = {1, 0.5f, -1, 1, 2, 1, 0.3f, -0.4f, 1, 1, 0.5f, 1.5f, 1};

/* The documented loss of the whole model in double: pooled fields into
 * the reference net, + offset, + l2/2 |row|^2 per occurrence, + l2/2 |w|^2
 * of the net per example. */
static double s_model_loss(const wk_mlp_params *p, int task, const double *rows,
                           const double *w, const float *label, double offset, double l2,
                           double *kink, double *score)
{
    double l = 0, ww = 0;
    for (size_t i = 0; i < wk_mlp_n_weights(p); i++)
        ww += w[i] * w[i];
    for (int j = 0; j < DN; j++) {
        l += 0.5 * l2 * ww;
        double e[FK] = {0}, lin[F] = {0};
        for (uint64_t a = s_dat[j]; a < s_dat[j + 1]; a++) {
            const double *r = rows + s_didx[a] * DDIM;
            lin[s_dfld[a]] += s_dval[a] * r[0];
            for (int c = 0; c < K; c++)
                e[s_dfld[a] * K + c] += s_dval[a] * r[1 + c];
            for (int c = 0; c < DDIM; c++)
                l += 0.5 * l2 * r[c] * r[c];
        }
        const double y = offset + s_ref_score(p, w, e, lin, kink), t = label[j];
        if (score)
            score[j] = y;
        l += task == CM_TASK_BINARY ? (t > 0.5 ? log1p(exp(-y)) : log1p(exp(y)))
                                    : 0.5 * (y - t) * (y - t);
    }
    return l;
}

static void s_check_model(int task, int fm_term, const float *label)
{
    cm_job job = s_deep_job(fm_term);
    wk_mlp_params p;
    cr_assert_eq(wk_deep_params(&job, &p, NULL), 0);
    const size_t nd = wk_model_deep.dense_rows(&job) * 64, nw = wk_mlp_n_weights(&p);
    float *dense = s_falloc(nd), *dgrad = s_falloc(nd), rows[DR * DDIM],
          grads[DR * DDIM] = {0}, pred[DN];
    wk_mlp_init_weights(&p, 5, dense);
    for (int l = 0; l <= p.n_hidden; l++) {
        wk_mlp_layer_info li = wk_mlp_layer(&p, l);
        s_random(dense + li.b_off, (size_t)li.out, 200 + l, 0.3);
    }
    s_random(rows, DR * DDIM, 31, 0.5);
    cm_error e = {0};
    void *scratch = wk_model_deep.scratch_new(&job, 3, &e); /* < DN: the batch is split */
    cr_assert_not_null(scratch, "%s", e.msg);
    const wk_sparse_batch b = {DN, s_dat, s_didx, s_dval, label, 6};
    const wk_sparse_extra x = {.field = s_dfld, .n_fields = F, .scratch = scratch,
                               .dense = dense, .dense_grads = dgrad};
    const wk_model_ctx ctx = {.l2 = 0.02f, .offset = task == CM_TASK_BINARY ? 0.f : 0.3f};
    double loss = wk_model_deep.train_ext(&ctx, task, &b, &x, DDIM, rows, grads);
    wk_model_deep.predict_ext(&ctx, &b, &x, DDIM, rows, pred);

    double *dw = malloc(nd * sizeof *dw), drows[DR * DDIM], ref[DN];
    cr_assert_not_null(dw);
    s_to_double(dense, dw, nd);
    s_to_double(rows, drows, DR * DDIM);
    double kink = INFINITY;
    double want = s_model_loss(&p, task, drows, dw, label, ctx.offset, 0, &kink, ref);
    cr_expect(fabs(loss - want) <= 1e-5 * fabs(want) + 1e-6, "loss %g vs %g", loss, want);
    for (int j = 0; j < DN; j++)
        cr_expect(fabs(pred[j] - ref[j]) <= 1e-5 * (1 + fabs(ref[j])), "score %d: %g vs %g",
                  j, pred[j], ref[j]);
    const double h = 1e-5;
    cr_assert(kink > 10 * h, "fixture sits on a ReLU corner (min |z| = %g)", kink);
    int moved = 0;
    for (int i = 0; i < DR * DDIM; i++) {
        const double keep = drows[i];
        double k2 = INFINITY;
        drows[i] = keep + h;
        double lp = s_model_loss(&p, task, drows, dw, label, ctx.offset, ctx.l2, &k2, NULL);
        drows[i] = keep - h;
        double lm = s_model_loss(&p, task, drows, dw, label, ctx.offset, ctx.l2, &k2, NULL);
        drows[i] = keep;
        const double fd = (lp - lm) / (2 * h);
        cr_expect(fabs(fd - grads[i]) <= 1e-4 + 1e-3 * fabs(fd),
                  "task %d fm %d feature row %d weight %d: analytic %.7g vs numeric %.7g",
                  task, fm_term, i / DDIM, i % DDIM, grads[i], fd);
        moved += fabs(fd) > 1e-3;
    }
    cr_expect_gt(moved, DR * DDIM / 2);
    for (size_t i = 0; i < nd; i++) {
        const double keep = dw[i];
        double k2 = INFINITY;
        dw[i] = keep + h;
        double lp = s_model_loss(&p, task, drows, dw, label, ctx.offset, ctx.l2, &k2, NULL);
        dw[i] = keep - h;
        double lm = s_model_loss(&p, task, drows, dw, label, ctx.offset, ctx.l2, &k2, NULL);
        dw[i] = keep;
        /* the net's gradient is of the batch's mean loss (the rows' of the sum) */
        const double fd = i < nw ? (lp - lm) / (2 * h) / DN : 0;
        cr_expect(fabs(fd - dgrad[i]) <= 1e-4 + 1e-3 * fabs(fd),
                  "task %d fm %d dense %zu: analytic %.7g vs numeric %.7g", task, fm_term, i,
                  dgrad[i], fd);
    }
    free(dw);
    free(dense);
    free(dgrad);
    wk_model_deep.scratch_destroy(&scratch);
    cr_expect_null(scratch);
}

Test(deep, model_regression_gradients_match_finite_differences)
{
    const float label[DN] = {4.f, 2.5f, 3.f, 1.f};
    s_check_model(CM_TASK_REGRESSION, 0, label);
    s_check_model(CM_TASK_REGRESSION, 1, label);
}

Test(deep, model_logistic_gradients_match_finite_differences)
{
    const float label[DN] = {1.f, 0.f, 0.f, 1.f};
    s_check_model(CM_TASK_BINARY, 0, label);
    s_check_model(CM_TASK_BINARY, 1, label);
}
