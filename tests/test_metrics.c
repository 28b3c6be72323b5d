/* AUC from merged histograms against the exact AUC; log loss. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "common/metrics.h"
#include "common/rng.h"

Test(metrics, exact_auc_by_hand)
{
    /* positives at 0.9 and 0.4, negatives at 0.4 and 0.1: pairs (0.9 > 0.4),
     * (0.9 > 0.1), (0.4 = 0.4: one half), (0.4 > 0.1) -> 3.5 / 4 */
    const float s[4] = {0.9f, 0.4f, 0.4f, 0.1f}, y[4] = {1, 1, 0, 0};
    cr_expect_float_eq(cm_auc_exact(s, y, 4), 0.875, 1e-12);
    const float perfect[2] = {0.2f, 0.8f}, py[2] = {0, 1};
    cr_expect_float_eq(cm_auc_exact(perfect, py, 2), 1.0, 1e-12);
    cr_expect_float_eq(cm_auc_exact(perfect, (const float[]){1, 1}, 2), 0.5, 1e-12,
                       "one class only");
}

Test(metrics, histograms_merge_to_the_exact_auc)
{
    enum { N = 20000 };
    static float s[N], y[N];
    static uint64_t pos[2][CM_AUC_BINS], neg[2][CM_AUC_BINS];
    cm_rng r;
    cm_rng_seed(&r, 5);
    for (int i = 0; i < N; i++) {
        y[i] = cm_rng_uniform(&r) < 0.3 ? 1.f : 0.f;
        double z = cm_rng_normal(&r) + (y[i] > 0 ? 1.0 : 0.0);
        s[i] = (float)(1.0 / (1.0 + exp(-z)));
        /* two "workers", each with its own histogram */
        cm_auc_add(pos[i % 2], neg[i % 2], s[i], y[i] > 0);
    }
    for (int b = 0; b < CM_AUC_BINS; b++) {
        pos[0][b] += pos[1][b];
        neg[0][b] += neg[1][b];
    }
    double exact = cm_auc_exact(s, y, N), approx = cm_auc_from_hist(pos[0], neg[0]);
    cr_expect(exact > 0.7 && exact < 0.85, "exact AUC %f", exact);
    cr_expect(fabs(exact - approx) < 2e-4, "histogram AUC %.6f vs exact %.6f", approx, exact);
}

Test(metrics, logloss_is_clamped)
{
    cr_expect_float_eq(cm_logloss(0.5f, 1), log(2.0), 1e-9);
    cr_expect_float_eq(cm_logloss(0.25f, 0), -log(0.75), 1e-7);
    cr_expect(isfinite(cm_logloss(0.0f, 1)) && cm_logloss(0.0f, 1) > 15);
    cr_expect(isfinite(cm_logloss(1.0f, 0)));
}
