/* metrics: held-out quality measures that can be computed in pieces.
 *
 * AUC needs a global ranking of every score, but each worker sees only its
 * own examples. So each worker counts positives and negatives per bin of
 * the predicted probability; the scheduler adds the histograms up and
 * computes the AUC from them (ties within a bin count one half, so with
 * 2^16 bins the result is within about 1e-4 of the exact AUC). */
#ifndef PSREC_COMMON_METRICS_H
#define PSREC_COMMON_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define CM_AUC_BINS 65536

/* Adds one example: probability p in [0, 1] (clamped), label 0 or 1. */
void cm_auc_add(uint64_t *pos, uint64_t *neg, float p, int label);

/* AUC of the summed histograms (each CM_AUC_BINS counts); 0.5 when one
 * class is absent. */
double cm_auc_from_hist(const uint64_t *pos, const uint64_t *neg);

/* Exact AUC by sorting (ties count one half), for tests and small sets.
 * Returns -1 if it cannot allocate. */
double cm_auc_exact(const float *score, const float *label, size_t n);

/* Log loss of one example with probability p of label 1, clamped away from
 * 0 and 1 by 1e-7 so one confident mistake cannot make it infinite. */
double cm_logloss(float p, int label);

/* ---------------------------------------------------------------------
 * Top-K ranking (implicit feedback; definitions in docs/implicit.md)
 *
 * A ranked list orders items by score, highest first; equal scores go by
 * the smaller key first, so a ranking is a function of the scores alone
 * and ties never depend on the order items were offered in. A NaN score
 * ranks below every number.
 * ------------------------------------------------------------------- */

/* One candidate of a top-K list. */
typedef struct {
    float score;
    uint64_t key;
} cm_scored;

/* 1 when a ranks above b in the order above. */
int cm_scored_before(cm_scored a, cm_scored b);

/* Offers (score, key) to the best-k list kept as a heap in h[0..*n)
 * (capacity k): it is kept when the list has room or when it ranks above
 * the list's worst. */
void cm_topk_offer(cm_scored *h, size_t *n, size_t k, float score, uint64_t key);

/* Sorts the n entries of a top-K heap best first (in place). */
void cm_topk_sort(cm_scored *h, size_t n);

/* The ranking metrics of one user. */
typedef struct {
    double recall;  /* hits in the top k / min(k, |relevant|) */
    double ndcg;    /* DCG of the top k / DCG of an ideal top k; log2 discount */
    double hit;     /* 1 when the top k holds a relevant item, else 0 */
} cm_rank_metrics;

/* Scores the first min(k, n_ranked) entries of ranked[] (best first)
 * against the relevant keys rel[0..n_rel) (sorted ascending, unique).
 * With no relevant key every metric is 0. */
cm_rank_metrics cm_rank_metrics_of(const uint64_t *ranked, size_t n_ranked,
                                   const uint64_t *rel, size_t n_rel, size_t k);

#endif
