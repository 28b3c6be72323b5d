#include "common/metrics.h"

#include <math.h>
#include <stdlib.h>

void cm_auc_add(uint64_t *pos, uint64_t *neg, float p, int label)
{
    if (!(p >= 0.f))
        p = 0.f;   /* NaN too */
    if (p > 1.f)
        p = 1.f;
    size_t b = (size_t)(p * (float)(CM_AUC_BINS - 1) + 0.5f);
    if (label)
        pos[b]++;
    else
        neg[b]++;
}

double cm_auc_from_hist(const uint64_t *pos, const uint64_t *neg)
{
    /* walk bins from the lowest score: each positive beats every negative
     * below its bin and ties with half of those in it */
    double below = 0, wins = 0, n_pos = 0, n_neg = 0;
    for (size_t b = 0; b < CM_AUC_BINS; b++) {
        wins += (double)pos[b] * (below + 0.5 * (double)neg[b]);
        below += (double)neg[b];
        n_pos += (double)pos[b];
    }
    n_neg = below;
    if (n_pos == 0 || n_neg == 0)
        return 0.5;
    return wins / (n_pos * n_neg);
}

typedef struct {
    float s;
    float y;
} s_pair;

static int s_by_score(const void *a, const void *b)
{
    float x = ((const s_pair *)a)->s, y = ((const s_pair *)b)->s;
    return (x > y) - (x < y);
}

double cm_auc_exact(const float *score, const float *label, size_t n)
{
    s_pair *p = malloc((n + 1) * sizeof *p);
    if (!p)
        return -1;
    for (size_t i = 0; i < n; i++)
        p[i] = (s_pair){score[i], label[i]};
    qsort(p, n, sizeof *p, s_by_score);
    double below = 0, wins = 0, n_pos = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        double tp = 0, tn = 0;
        while (j < n && p[j].s == p[i].s) {
            if (p[j].y > 0.5f)
                tp++;
            else
                tn++;
            j++;
        }
        wins += tp * (below + 0.5 * tn);
        below += tn;
        n_pos += tp;
        i = j;
    }
    free(p);
    if (n_pos == 0 || below == 0)
        return 0.5;
    return wins / (n_pos * below);
}

double cm_logloss(float p, int label)
{
    double q = p < 1e-7f ? 1e-7 : (p > 1 - 1e-7f ? 1 - 1e-7 : (double)p);
    return label ? -log(q) : -log(1 - q);
}
