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

#endif
