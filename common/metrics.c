#include "common/metrics.h"

#include <math.h>
#include <stdlib.h>

#include "common/sorted.h"

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

/* ---------------------------------------------------------------------
 * Top-K ranking
 * ------------------------------------------------------------------- */

int cm_scored_before(cm_scored a, cm_scored b)
{
    /* NaN compares false both ways: rank it below any number */
    int an = a.score != a.score, bn = b.score != b.score;
    if (an != bn)
        return bn;
    if (!an && a.score != b.score)
        return a.score > b.score;
    return a.key < b.key;
}

/* The heap keeps its worst entry at the root (a min-heap in rank order). */
static void s_sift_down(cm_scored *h, size_t n, size_t at)
{
    for (;;) {
        size_t l = 2 * at + 1, r = l + 1, worst = at;
        if (l < n && cm_scored_before(h[worst], h[l]))
            worst = l;
        if (r < n && cm_scored_before(h[worst], h[r]))
            worst = r;
        if (worst == at)
            return;
        cm_scored t = h[at];
        h[at] = h[worst];
        h[worst] = t;
        at = worst;
    }
}

void cm_topk_offer(cm_scored *h, size_t *n, size_t k, float score, uint64_t key)
{
    cm_scored c = {score, key};
    if (k == 0)
        return;
    if (*n < k) {
        size_t at = (*n)++;
        h[at] = c;
        while (at > 0) {
            size_t up = (at - 1) / 2;
            if (!cm_scored_before(h[up], h[at]))
                break;
            cm_scored t = h[up];
            h[up] = h[at];
            h[at] = t;
            at = up;
        }
        return;
    }
    if (!cm_scored_before(c, h[0]))
        return;
    h[0] = c;
    s_sift_down(h, *n, 0);
}

void cm_topk_sort(cm_scored *h, size_t n)
{
    /* heapsort: move the worst to the end, repeatedly */
    for (size_t end = n; end > 1; end--) {
        cm_scored t = h[0];
        h[0] = h[end - 1];
        h[end - 1] = t;
        s_sift_down(h, end - 1, 0);
    }
}

static int s_has_key(const uint64_t *sorted, size_t n, uint64_t key)
{
    size_t lo = cm_lower_bound_u64(sorted, n, key);
    return lo < n && sorted[lo] == key;
}

cm_rank_metrics cm_rank_metrics_of(const uint64_t *ranked, size_t n_ranked,
                                   const uint64_t *rel, size_t n_rel, size_t k)
{
    cm_rank_metrics m = {0, 0, 0};
    if (n_rel == 0 || k == 0)
        return m;
    size_t top = n_ranked < k ? n_ranked : k;
    size_t ideal = n_rel < k ? n_rel : k;
    double dcg = 0, idcg = 0;
    size_t hits = 0;
    for (size_t r = 0; r < top; r++)
        if (s_has_key(rel, n_rel, ranked[r])) {
            hits++;
            dcg += 1.0 / log2((double)r + 2.0);
        }
    for (size_t r = 0; r < ideal; r++)
        idcg += 1.0 / log2((double)r + 2.0);
    m.recall = (double)hits / (double)ideal;
    m.ndcg = dcg / idcg;
    m.hit = hits > 0;
    return m;
}
