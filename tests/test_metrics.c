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

/* ---------------------------------------------------------------------
 * Top-K ranking
 * ------------------------------------------------------------------- */

Test(metrics, scored_order_breaks_ties_by_key_and_puts_nan_last)
{
    cr_expect(cm_scored_before((cm_scored){2.f, 9}, (cm_scored){1.f, 1}));
    cr_expect(!cm_scored_before((cm_scored){1.f, 1}, (cm_scored){2.f, 9}));
    cr_expect(cm_scored_before((cm_scored){1.f, 3}, (cm_scored){1.f, 4}), "tie: smaller key");
    cr_expect(!cm_scored_before((cm_scored){1.f, 4}, (cm_scored){1.f, 3}));
    cr_expect(!cm_scored_before((cm_scored){1.f, 4}, (cm_scored){1.f, 4}), "strict order");
    cr_expect(cm_scored_before((cm_scored){-1e30f, 7}, (cm_scored){NAN, 1}));
    cr_expect(!cm_scored_before((cm_scored){NAN, 1}, (cm_scored){-1e30f, 7}));
}

Test(metrics, topk_keeps_the_best_k_in_rank_order)
{
    /* scores with a three-way tie at 0.5 across the cut at k = 4 */
    const float score[] = {0.1f, 0.5f, 0.9f, 0.5f, NAN, 0.7f, 0.5f, 0.2f};
    const uint64_t key[] = {1, 6, 2, 4, 3, 8, 5, 7};
    cm_scored h[4];
    size_t n = 0;
    for (int i = 0; i < 8; i++)
        cm_topk_offer(h, &n, 4, score[i], key[i]);
    cr_assert_eq(n, 4);
    cm_topk_sort(h, n);
    /* 0.9 (2), 0.7 (8), then the 0.5s by key: 4, 5 (6 is cut) */
    const uint64_t want[] = {2, 8, 4, 5};
    for (int r = 0; r < 4; r++)
        cr_expect_eq(h[r].key, want[r], "rank %d: key %llu, want %llu", r,
                     (unsigned long long)h[r].key, (unsigned long long)want[r]);
    /* the same offers in reverse order give the same list */
    n = 0;
    for (int i = 7; i >= 0; i--)
        cm_topk_offer(h, &n, 4, score[i], key[i]);
    cm_topk_sort(h, n);
    for (int r = 0; r < 4; r++)
        cr_expect_eq(h[r].key, want[r]);
    /* fewer candidates than k: all kept, sorted */
    n = 0;
    cm_topk_offer(h, &n, 4, 0.3f, 10);
    cm_topk_offer(h, &n, 4, 0.6f, 11);
    cm_topk_sort(h, n);
    cr_expect_eq(n, 2);
    cr_expect_eq(h[0].key, 11);
    cr_expect_eq(h[1].key, 10);
    /* k = 0 keeps nothing */
    n = 0;
    cm_topk_offer(h, &n, 0, 1.f, 1);
    cr_expect_eq(n, 0);
}

Test(metrics, topk_matches_a_full_sort_on_random_scores)
{
    enum { N = 2000, K = 25 };
    cm_rng rng;
    cm_rng_seed(&rng, 42);
    cm_scored all[N], h[K];
    size_t n = 0;
    for (int i = 0; i < N; i++) {
        /* few distinct values: many ties */
        float s = (float)cm_rng_below(&rng, 50);
        all[i] = (cm_scored){s, (uint64_t)cm_rng_below(&rng, 1u << 30) * N + (uint64_t)i};
        cm_topk_offer(h, &n, K, all[i].score, all[i].key);
    }
    cm_topk_sort(h, n);
    /* selection by hand: repeatedly the best not yet taken */
    int taken[N] = {0};
    for (int r = 0; r < K; r++) {
        int best = -1;
        for (int i = 0; i < N; i++)
            if (!taken[i] && (best < 0 || cm_scored_before(all[i], all[best])))
                best = i;
        taken[best] = 1;
        cr_assert_eq(h[r].key, all[best].key, "rank %d", r);
    }
}

static int s_close(double a, double b)
{
    return fabs(a - b) < 1e-9;
}

Test(metrics, rank_metrics_by_hand)
{
    /* ranked 7 3 9 1 5, relevant {1, 3, 4}, k = 4: hits at ranks 2 and 4
     * recall = 2 / min(4, 3) = 2/3
     * dcg = 1/log2(3) + 1/log2(5); idcg = 1 + 1/log2(3) + 1/log2(4) */
    const uint64_t ranked[] = {7, 3, 9, 1, 5};
    const uint64_t rel[] = {1, 3, 4};
    cm_rank_metrics m = cm_rank_metrics_of(ranked, 5, rel, 3, 4);
    double dcg = 1 / log2(3.0) + 1 / log2(5.0), idcg = 1 + 1 / log2(3.0) + 0.5;
    cr_expect(s_close(m.recall, 2.0 / 3.0), "recall %g", m.recall);
    cr_expect(s_close(m.ndcg, dcg / idcg), "ndcg %g, want %g", m.ndcg, dcg / idcg);
    cr_expect_eq(m.hit, 1.0);
    /* k = 1: rank 1 is 7, no hit */
    m = cm_rank_metrics_of(ranked, 5, rel, 3, 1);
    cr_expect_eq(m.recall, 0);
    cr_expect_eq(m.ndcg, 0);
    cr_expect_eq(m.hit, 0);
    /* k = 2: one hit of min(2, 3) = 2; ideal DCG over 2 ranks */
    m = cm_rank_metrics_of(ranked, 5, rel, 3, 2);
    cr_expect(s_close(m.recall, 0.5));
    cr_expect(s_close(m.ndcg, (1 / log2(3.0)) / (1 + 1 / log2(3.0))), "ndcg %g", m.ndcg);
}

Test(metrics, rank_metrics_with_fewer_relevant_than_k)
{
    /* one relevant item, found at rank 3 of a top 20: recall 1, ndcg 1/log2(4) */
    const uint64_t ranked[] = {5, 6, 2, 8};
    const uint64_t rel[] = {2};
    cm_rank_metrics m = cm_rank_metrics_of(ranked, 4, rel, 1, 20);
    cr_expect(s_close(m.recall, 1.0));
    cr_expect(s_close(m.ndcg, 0.5), "ndcg %g", m.ndcg);
    cr_expect_eq(m.hit, 1);
    /* every relevant item at the top: perfect scores */
    const uint64_t best[] = {2, 4, 9};
    const uint64_t rel2[] = {2, 4};
    m = cm_rank_metrics_of(best, 3, rel2, 2, 20);
    cr_expect(s_close(m.recall, 1.0));
    cr_expect(s_close(m.ndcg, 1.0));
    /* no relevant items or k = 0: zeros */
    m = cm_rank_metrics_of(best, 3, rel2, 0, 20);
    cr_expect_eq(m.recall + m.ndcg + m.hit, 0);
    m = cm_rank_metrics_of(best, 3, rel2, 2, 0);
    cr_expect_eq(m.recall + m.ndcg + m.hit, 0);
    /* an empty ranking (every item excluded) hits nothing */
    m = cm_rank_metrics_of(NULL, 0, rel2, 2, 20);
    cr_expect_eq(m.recall + m.ndcg + m.hit, 0);
}

Test(metrics, rank_metrics_after_ties_are_broken)
{
    /* items 1..4 scored 0.8, 0.5, 0.5, 0.5 with relevant {4}: the tie
     * ranks 2, 3, 4, so item 4 is fourth; with k = 3 it is a miss */
    cm_scored h[3];
    size_t n = 0;
    const float s[] = {0.8f, 0.5f, 0.5f, 0.5f};
    /* keys offered: 1 (0.8), 2, 3, 4 (0.5 each) */
    for (int i = 0; i < 4; i++)
        cm_topk_offer(h, &n, 3, s[i], (uint64_t)i + 1);
    cm_topk_sort(h, n);
    uint64_t ranked[3];
    for (int r = 0; r < 3; r++)
        ranked[r] = h[r].key;
    const uint64_t rel[] = {4};
    cm_rank_metrics m = cm_rank_metrics_of(ranked, 3, rel, 1, 3);
    cr_expect_eq(m.hit, 0, "the tie went to the smaller keys");
    const uint64_t rel2[] = {3};
    m = cm_rank_metrics_of(ranked, 3, rel2, 1, 3);
    cr_expect(s_close(m.ndcg, 0.5), "item 3 third: 1/log2(4), got %g", m.ndcg);
}
