#include "worker/implicit_train.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/features.h"
#include "common/hash.h"
#include "common/metrics.h"
#include "common/msg.h"
#include "common/sorted.h"
#include "worker/models/model.h"

/* ---------------------------------------------------------------------
 * Positives
 * ------------------------------------------------------------------- */

int wk_implicit_positives(const cm_ratings *in, double threshold, cm_ratings *out,
                          cm_error *err)
{
    size_t n = 0;
    uint64_t *u = malloc((in->n + 1) * sizeof *u);
    uint64_t *i = malloc((in->n + 1) * sizeof *i);
    float *r = malloc((in->n + 1) * sizeof *r);
    int rc;
    if (!u || !i || !r) {
        rc = cm_error_set(err, CM_ENOMEM, "implicit: out of memory for %zu rows", in->n);
        goto out;
    }
    for (size_t j = 0; j < in->n; j++) {
        if (threshold != 0 && !(in->rating[j] >= threshold))
            continue;
        u[n] = in->user[j];
        i[n] = in->item[j];
        r[n] = in->rating[j];
        n++;
    }
    rc = cm_ratings_from_arrays(u, i, r, n, out, err);
    if (rc == 0) {
        out->noise_floor = -1;
        out->bad_lines = in->bad_lines;
    }
out:
    free(u);
    free(i);
    free(r);
    return rc;
}

/* ---------------------------------------------------------------------
 * Loss math
 * ------------------------------------------------------------------- */

float wk_implicit_score(const float *p, const float *q, int dim)
{
    return q[0] + wk_dot(p + 1, q + 1, dim - 1);
}

double wk_bpr_grad(const float *p, const float *qi, const float *qj, int dim, float l2,
                   float *gp, float *gi, float *gj)
{
    /* -log sigmoid(x) is the binary loss of margin x with target 1; its
     * derivative sigmoid(x) - 1 = -sigmoid(-x) */
    const float x = wk_implicit_score(p, qi, dim) - wk_implicit_score(p, qj, dim);
    float g;
    const double loss = wk_model_loss(CM_TASK_BINARY, x, 1.f, &g);
    gi[0] += g + l2 * qi[0];
    gj[0] += -g + l2 * qj[0];
    for (int k = 1; k < dim; k++) {
        gp[k] += g * (qi[k] - qj[k]) + l2 * p[k];
        gi[k] += g * p[k] + l2 * qi[k];
        gj[k] += -g * p[k] + l2 * qj[k];
    }
    return loss;
}

double wk_logistic_grad(const float *p, const float *q, int dim, float y, float l2,
                        float *gp, float *gq)
{
    float g;
    const double loss = wk_model_loss(CM_TASK_BINARY, wk_implicit_score(p, q, dim), y, &g);
    gq[0] += g + l2 * q[0];
    for (int k = 1; k < dim; k++) {
        gp[k] += g * q[k] + l2 * p[k];
        gq[k] += g * p[k] + l2 * q[k];
    }
    return loss;
}

/* ---------------------------------------------------------------------
 * Negative sampling
 * ------------------------------------------------------------------- */

struct wk_sampler {
    int kind;           /* cm_sampler */
    size_t n;           /* items */
    float *prob;        /* popularity: alias table, chance to keep column i */
    uint32_t *alias;    /* popularity: the other item of column i */
};

wk_sampler *wk_sampler_new(int kind, const float *counts, size_t n, cm_error *err)
{
    if (n == 0 || n >= UINT32_MAX) {
        cm_error_set(err, CM_EINVAL, "sampler: %zu items (need 1 .. 2^32-2)", n);
        return NULL;
    }
    if (kind != CM_SAMPLER_UNIFORM && kind != CM_SAMPLER_POPULARITY) {
        cm_error_set(err, CM_EINVAL, "sampler: unknown kind %d", kind);
        return NULL;
    }
    if (kind == CM_SAMPLER_POPULARITY && !counts) {
        cm_error_set(err, CM_EINVAL, "sampler: popularity needs item counts");
        return NULL;
    }
    wk_sampler *s = calloc(1, sizeof *s);
    if (!s) {
        cm_error_set(err, CM_ENOMEM, "sampler: out of memory");
        return NULL;
    }
    s->kind = kind;
    s->n = n;
    if (kind == CM_SAMPLER_UNIFORM)
        return s;
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(counts[i] >= 0) || !isfinite(counts[i])) {
            cm_error_set(err, CM_EINVAL, "sampler: item %zu has count %g", i, counts[i]);
            goto fail;
        }
        total += counts[i];
    }
    if (total <= 0) {
        cm_error_set(err, CM_EINVAL, "sampler: every item count is 0");
        goto fail;
    }
    /* Vose's alias method: each column holds one item with chance prob[i]
     * and the overflow of another; small and large are work lists */
    s->prob = malloc(n * sizeof *s->prob);
    s->alias = malloc(n * sizeof *s->alias);
    double *w = malloc(n * sizeof *w);
    uint32_t *small = malloc(n * sizeof *small), *large = malloc(n * sizeof *large);
    if (!s->prob || !s->alias || !w || !small || !large) {
        free(w);
        free(small);
        free(large);
        cm_error_set(err, CM_ENOMEM, "sampler: out of memory for %zu items", n);
        goto fail;
    }
    size_t ns = 0, nl = 0;
    for (size_t i = 0; i < n; i++) {
        w[i] = counts[i] * (double)n / total;
        if (w[i] < 1.0)
            small[ns++] = (uint32_t)i;
        else
            large[nl++] = (uint32_t)i;
    }
    while (ns > 0 && nl > 0) {
        uint32_t a = small[--ns], b = large[--nl];
        s->prob[a] = (float)w[a];
        s->alias[a] = b;
        w[b] -= 1.0 - w[a];
        if (w[b] < 1.0)
            small[ns++] = b;
        else
            large[nl++] = b;
    }
    /* what is left is 1 up to rounding */
    while (nl > 0) {
        uint32_t b = large[--nl];
        s->prob[b] = 1.f;
        s->alias[b] = b;
    }
    while (ns > 0) {
        uint32_t a = small[--ns];
        s->prob[a] = 1.f;
        s->alias[a] = a;
    }
    free(w);
    free(small);
    free(large);
    return s;
fail:
    wk_sampler_destroy(&s);
    return NULL;
}

void wk_sampler_destroy(wk_sampler **ps)
{
    if (!ps || !*ps)
        return;
    free((*ps)->prob);
    free((*ps)->alias);
    free(*ps);
    *ps = NULL;
}

uint32_t wk_sampler_draw(const wk_sampler *s, cm_rng *rng)
{
    uint32_t i = (uint32_t)cm_rng_below(rng, s->n);
    if (s->kind == CM_SAMPLER_UNIFORM)
        return i;
    return cm_rng_uniform(rng) < s->prob[i] ? i : s->alias[i];
}

static int s_has_u32(const uint32_t *sorted, size_t n, uint32_t x)
{
    size_t lo = cm_lower_bound_u32(sorted, n, x);
    return lo < n && sorted[lo] == x;
}

uint32_t wk_sampler_draw_excluding(const wk_sampler *s, cm_rng *rng, const uint32_t *excl,
                                   size_t n_excl, int tries)
{
    for (int t = 0; t < tries; t++) {
        uint32_t i = wk_sampler_draw(s, rng);
        if (!s_has_u32(excl, n_excl, i))
            return i;
    }
    return WK_NO_NEGATIVE;
}

/* ---------------------------------------------------------------------
 * State
 * ------------------------------------------------------------------- */

#define S_EVAL_ITEMS 8192  /* item rows pulled and scored at a time */
#define S_EVAL_USERS 512   /* users per score matrix */
#define S_TRIES 64         /* draws before a user is deemed to have no negative */

struct wk_implicit {
    int dim;                /* row width of both tables (factors + 1) */
    int loss;               /* cm_implicit_loss */
    int negatives;
    size_t top_k;
    float l2;
    size_t batch;
    uint64_t seed;
    /* the universe, sorted by key: an item's index orders like its key */
    size_t n_items;
    uint64_t *items;
    float *counts;          /* training positives per item, all workers */
    uint32_t *pop_order;    /* item indexes, most popular first (ties: smaller key) */
    wk_sampler *sampler;
    /* this worker's users, sorted, and each one's training items (CSR of
     * sorted unique item indexes) */
    size_t n_users;
    uint64_t *users;
    size_t *uoff;           /* n_users + 1 */
    uint32_t *uitems;
    /* positives, duplicates kept (a repeated click counts twice) */
    size_t n_pos;
    uint32_t *pos_u, *pos_i;
    uint32_t *order;        /* this epoch's shuffled positives */
    /* test users (index into users) with their held-out items (CSR of
     * sorted item indexes as u64, what cm_rank_metrics_of reads) */
    size_t n_tusers;
    uint32_t *tuser;
    size_t *toff;
    uint64_t *titems;
    double cold_users, cold_items, repeats;
    /* minibatch buffers */
    uint64_t *ukeys, *uuniq, *ikeys, *iuniq, *scratch;
    uint32_t *uidx, *iidx, *neg;
    float *urows, *irows, *ugrad, *igrad;
};

typedef struct {
    uint64_t user;
    uint64_t item;
} s_pair;

static int s_by_user_item(const void *a, const void *b)
{
    const s_pair *x = a, *y = b;
    if (x->user != y->user)
        return (x->user > y->user) - (x->user < y->user);
    return (x->item > y->item) - (x->item < y->item);
}

/* Index of key in sorted keys[0..n), or -1. */
static long s_find(const uint64_t *keys, size_t n, uint64_t key)
{
    size_t lo = cm_lower_bound_u64(keys, n, key);
    return lo < n && keys[lo] == key ? (long)lo : -1;
}

/* Sorted (user, item) pairs of r; NULL when out of memory. */
static s_pair *s_sorted_pairs(const cm_ratings *r)
{
    s_pair *p = malloc((r->n + 1) * sizeof *p);
    if (!p)
        return NULL;
    for (size_t j = 0; j < r->n; j++)
        p[j] = (s_pair){r->user[j], r->item[j]};
    qsort(p, r->n, sizeof *p, s_by_user_item);
    return p;
}

/* (count, index) for ranking items by popularity: qsort has no context
 * argument, so each entry carries its count. */
typedef struct {
    float c;
    uint32_t i;
} s_ci;

static int s_by_popularity(const void *a, const void *b)
{
    const s_ci *x = a, *y = b;
    if (x->c != y->c)
        return x->c > y->c ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* order[] gets item indexes by training positives, most first, equal
 * counts by the smaller key first. */
static int s_pop_order(uint32_t *order, const float *counts, size_t n)
{
    s_ci *tmp = malloc((n + 1) * sizeof *tmp);
    if (!tmp)
        return CM_ENOMEM;
    for (size_t i = 0; i < n; i++)
        tmp[i] = (s_ci){counts[i], (uint32_t)i};
    qsort(tmp, n, sizeof *tmp, s_by_popularity);
    for (size_t i = 0; i < n; i++)
        order[i] = tmp[i].i;
    free(tmp);
    return 0;
}

void wk_implicit_destroy(wk_implicit **pim)
{
    if (!pim || !*pim)
        return;
    wk_implicit *im = *pim;
    free(im->items);
    free(im->counts);
    free(im->pop_order);
    wk_sampler_destroy(&im->sampler);
    free(im->users);
    free(im->uoff);
    free(im->uitems);
    free(im->pos_u);
    free(im->pos_i);
    free(im->order);
    free(im->tuser);
    free(im->toff);
    free(im->titems);
    free(im->ukeys);
    free(im->uuniq);
    free(im->ikeys);
    free(im->iuniq);
    free(im->scratch);
    free(im->uidx);
    free(im->iidx);
    free(im->neg);
    free(im->urows);
    free(im->irows);
    free(im->ugrad);
    free(im->igrad);
    free(im);
    *pim = NULL;
}

static void *s_falloc(size_t n)
{
    return aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
}

/* Users, their training items and the positives, from sorted pairs. */
static int s_index_train(wk_implicit *im, const s_pair *p, size_t n, cm_error *err)
{
    size_t nu = 0;
    for (size_t j = 0; j < n; j++)
        if (j == 0 || p[j].user != p[j - 1].user)
            nu++;
    im->users = malloc((nu + 1) * sizeof *im->users);
    im->uoff = malloc((nu + 1) * sizeof *im->uoff);
    im->uitems = malloc((n + 1) * sizeof *im->uitems);
    im->pos_u = malloc((n + 1) * sizeof *im->pos_u);
    im->pos_i = malloc((n + 1) * sizeof *im->pos_i);
    im->order = malloc((n + 1) * sizeof *im->order);
    if (!im->users || !im->uoff || !im->uitems || !im->pos_u || !im->pos_i || !im->order)
        return cm_error_set(err, CM_ENOMEM, "implicit: out of memory for %zu positives", n);
    size_t u = 0, at = 0;
    for (size_t j = 0; j < n; j++) {
        if (j == 0 || p[j].user != p[j - 1].user) {
            im->users[u] = p[j].user;
            im->uoff[u++] = at;
        }
        long i = s_find(im->items, im->n_items, p[j].item);
        if (i < 0)
            return cm_error_set(err, CM_EPROTO,
                                "implicit: training item %llu is missing from the scheduler's "
                                "item list", (unsigned long long)p[j].item);
        im->pos_u[j] = (uint32_t)(u - 1);
        im->pos_i[j] = (uint32_t)i;
        if (at == im->uoff[u - 1] || im->uitems[at - 1] != (uint32_t)i)
            im->uitems[at++] = (uint32_t)i;
    }
    im->uoff[u] = at;
    im->n_users = nu;
    im->n_pos = n;
    return 0;
}

/* Test users and their held-out items; counts what cannot be scored. */
static int s_index_test(wk_implicit *im, const s_pair *p, size_t n, cm_error *err)
{
    im->tuser = malloc((n + 1) * sizeof *im->tuser);
    im->toff = malloc((n + 2) * sizeof *im->toff);
    im->titems = malloc((n + 1) * sizeof *im->titems);
    if (!im->tuser || !im->toff || !im->titems)
        return cm_error_set(err, CM_ENOMEM, "implicit: out of memory for %zu test rows", n);
    size_t nt = 0, at = 0;
    for (size_t j = 0; j < n;) {
        size_t end = j;
        while (end < n && p[end].user == p[j].user)
            end++;
        long u = s_find(im->users, im->n_users, p[j].user);
        if (u < 0) {
            im->cold_users++;
            j = end;
            continue;
        }
        const uint32_t *tr = im->uitems + im->uoff[u];
        size_t n_tr = im->uoff[u + 1] - im->uoff[u], start = at;
        for (; j < end; j++) {
            if (j > 0 && p[j].user == p[j - 1].user && p[j].item == p[j - 1].item)
                continue; /* the same positive twice */
            long i = s_find(im->items, im->n_items, p[j].item);
            if (i < 0)
                im->cold_items++;
            else if (s_has_u32(tr, n_tr, (uint32_t)i))
                im->repeats++;
            else
                im->titems[at++] = (uint64_t)i;
        }
        if (at > start) {
            im->tuser[nt] = (uint32_t)u;
            im->toff[nt++] = start;
        }
    }
    im->toff[nt] = at;
    im->n_tusers = nt;
    return 0;
}

wk_implicit *wk_implicit_new(const cm_job *job, const cm_ratings *train,
                             const cm_ratings *test, const uint64_t *items,
                             const float *counts, size_t n_items, const int *dims,
                             cm_error *err)
{
    if (dims[0] != dims[1] || dims[0] < 2) {
        cm_error_set(err, CM_EINVAL, "implicit: user and item rows must both be dim + 1 wide");
        return NULL;
    }
    for (size_t i = 1; i < n_items; i++)
        if (items[i] <= items[i - 1]) {
            cm_error_set(err, CM_EPROTO, "implicit: the item list is not sorted at %zu", i);
            return NULL;
        }
    wk_implicit *im = calloc(1, sizeof *im);
    s_pair *tp = NULL, *ep = NULL;
    int rc = 0;
    if (!im) {
        cm_error_set(err, CM_ENOMEM, "implicit: out of memory");
        return NULL;
    }
    im->dim = dims[0];
    im->loss = job->loss;
    im->negatives = job->negatives;
    im->top_k = (size_t)job->top_k;
    im->l2 = (float)job->l2;
    im->batch = (size_t)job->batch;
    im->seed = job->seed;
    im->n_items = n_items;
    im->items = malloc((n_items + 1) * sizeof *im->items);
    im->counts = malloc((n_items + 1) * sizeof *im->counts);
    im->pop_order = malloc((n_items + 1) * sizeof *im->pop_order);
    if (!im->items || !im->counts || !im->pop_order) {
        rc = cm_error_set(err, CM_ENOMEM, "implicit: out of memory for %zu items", n_items);
        goto out;
    }
    if (n_items) {
        memcpy(im->items, items, n_items * sizeof *items);
        memcpy(im->counts, counts, n_items * sizeof *counts);
    }
    if (s_pop_order(im->pop_order, im->counts, n_items) != 0) {
        rc = cm_error_set(err, CM_ENOMEM, "implicit: out of memory for %zu items", n_items);
        goto out;
    }
    if (!(im->sampler = wk_sampler_new(job->sampler, im->counts, n_items, err))) {
        rc = err ? err->code : CM_EINVAL;
        goto out;
    }
    if (!(tp = s_sorted_pairs(train)) || (test && !(ep = s_sorted_pairs(test)))) {
        rc = cm_error_set(err, CM_ENOMEM, "implicit: out of memory for the positives");
        goto out;
    }
    if ((rc = s_index_train(im, tp, train->n, err)) != 0)
        goto out;
    if ((rc = s_index_test(im, ep, test ? test->n : 0, err)) != 0)
        goto out;
    /* minibatch buffers: b positives, b (1 + negatives) item occurrences */
    size_t b = im->batch, bi = b * (1 + (size_t)im->negatives);
    size_t d = (size_t)im->dim;
    im->ukeys = malloc(b * sizeof *im->ukeys);
    im->uuniq = malloc(b * sizeof *im->uuniq);
    im->uidx = malloc(b * sizeof *im->uidx);
    im->ikeys = malloc(bi * sizeof *im->ikeys);
    im->iuniq = malloc(bi * sizeof *im->iuniq);
    im->iidx = malloc(bi * sizeof *im->iidx);
    im->neg = malloc(bi * sizeof *im->neg);
    im->scratch = malloc(2 * bi * sizeof *im->scratch);
    im->urows = s_falloc(b * d);
    im->ugrad = s_falloc(b * d);
    im->irows = s_falloc(bi * d);
    im->igrad = s_falloc(bi * d);
    if (!im->ukeys || !im->uuniq || !im->uidx || !im->ikeys || !im->iuniq || !im->iidx ||
        !im->neg || !im->scratch || !im->urows || !im->ugrad || !im->irows || !im->igrad)
        rc = cm_error_set(err, CM_ENOMEM, "implicit: out of memory for batch buffers");
out:
    free(tp);
    free(ep);
    if (rc != 0)
        wk_implicit_destroy(&im);
    return im;
}

/* ---------------------------------------------------------------------
 * Training
 * ------------------------------------------------------------------- */

int wk_implicit_train(wk_implicit *im, wk_kv *kv, uint32_t epoch, uint32_t who,
                      const wk_implicit_hooks *hooks, double *loss, size_t *n,
                      cm_error *err)
{
    const size_t d = (size_t)im->dim, per = 1 + (size_t)im->negatives;
    cm_rng rng;
    cm_rng_seed(&rng, cm_mix64(im->seed ^ cm_mix64(((uint64_t)who << 32) | epoch) ^
                               0x696d706cULL));
    for (size_t j = 0; j < im->n_pos; j++)
        im->order[j] = (uint32_t)j;
    cm_rng_shuffle_u32(&rng, im->order, im->n_pos);
    double sum = 0;
    uint64_t clock = 0;
    int rc = 0;
    for (size_t first = 0; first < im->n_pos; first += im->batch, clock++) {
        size_t m = im->n_pos - first < im->batch ? im->n_pos - first : im->batch;
        if (hooks && hooks->before && (rc = hooks->before(hooks->arg, clock, err)) != 0)
            return rc;
        for (size_t j = 0; j < m; j++) {
            uint32_t p = im->order[first + j], u = im->pos_u[p], i = im->pos_i[p];
            const uint32_t *tr = im->uitems + im->uoff[u];
            size_t n_tr = im->uoff[u + 1] - im->uoff[u];
            im->ukeys[j] = im->users[u];
            im->ikeys[j * per] = im->items[i];
            for (size_t k = 1; k < per; k++) {
                uint32_t x = wk_sampler_draw_excluding(im->sampler, &rng, tr, n_tr, S_TRIES);
                im->neg[j * per + k] = x;
                /* no negative: reuse the positive's key, skipped below */
                im->ikeys[j * per + k] = im->items[x == WK_NO_NEGATIVE ? i : x];
            }
        }
        size_t nu = 0, ni = 0;
        cm_dedupe_u64(im->ukeys, m, im->uuniq, im->uidx, &nu, im->scratch);
        cm_dedupe_u64(im->ikeys, m * per, im->iuniq, im->iidx, &ni, im->scratch);
        wk_pull reqs[2] = {{0, im->uuniq, nu, im->urows, 0, 0}, {1, im->iuniq, ni, im->irows, 0, 0}};
        if ((rc = wk_kv_pull(kv, reqs, 2, err)) != 0)
            return rc;
        memset(im->ugrad, 0, nu * d * sizeof(float));
        memset(im->igrad, 0, ni * d * sizeof(float));
        for (size_t j = 0; j < m; j++) {
            const float *p = im->urows + im->uidx[j] * d;
            float *gp = im->ugrad + im->uidx[j] * d;
            const size_t ip = im->iidx[j * per];
            const float *qi = im->irows + ip * d;
            float *gi = im->igrad + ip * d;
            if (im->loss == CM_LOSS_LOGISTIC)
                sum += wk_logistic_grad(p, qi, im->dim, 1.f, im->l2, gp, gi);
            for (size_t k = 1; k < per; k++) {
                if (im->neg[j * per + k] == WK_NO_NEGATIVE)
                    continue;
                const size_t jn = im->iidx[j * per + k];
                if (im->loss == CM_LOSS_LOGISTIC)
                    sum += wk_logistic_grad(p, im->irows + jn * d, im->dim, 0.f, im->l2, gp,
                                            im->igrad + jn * d);
                else
                    sum += wk_bpr_grad(p, qi, im->irows + jn * d, im->dim, im->l2, gp, gi,
                                       im->igrad + jn * d);
            }
        }
        if ((rc = wk_kv_push(kv, 0, im->uuniq, nu, im->ugrad, err)) != 0 ||
            (rc = wk_kv_push(kv, 1, im->iuniq, ni, im->igrad, err)) != 0)
            return rc;
        if (hooks && hooks->after &&
            (rc = hooks->after(hooks->arg, clock, first + m, sum, err)) != 0)
            return rc;
    }
    if ((rc = wk_kv_flush(kv, err)) != 0)
        return rc;
    *loss = sum;
    *n = im->n_pos;
    return 0;
}

/* ---------------------------------------------------------------------
 * Evaluation
 * ------------------------------------------------------------------- */

void wk_implicit_eval_popularity(const wk_implicit *im, cm_ranking_done *st)
{
    const size_t k = im->top_k;
    uint64_t *top = malloc((k + 1) * sizeof *top);
    st->pop_recall = st->pop_ndcg = st->pop_hit = 0;
    st->cold_users = im->cold_users;
    st->cold_items = im->cold_items;
    st->repeats = im->repeats;
    st->positives = im->toff[im->n_tusers];
    st->users = im->n_tusers;
    if (!top) {
        st->pop_recall = NAN; /* reported as null rather than as a wrong 0 */
        return;
    }
    for (size_t t = 0; t < im->n_tusers; t++) {
        uint32_t u = im->tuser[t];
        const uint32_t *tr = im->uitems + im->uoff[u];
        size_t n_tr = im->uoff[u + 1] - im->uoff[u], n = 0;
        for (size_t r = 0; r < im->n_items && n < k; r++)
            if (!s_has_u32(tr, n_tr, im->pop_order[r]))
                top[n++] = im->pop_order[r];
        cm_rank_metrics m = cm_rank_metrics_of(top, n, im->titems + im->toff[t],
                                               im->toff[t + 1] - im->toff[t], k);
        st->pop_recall += m.recall;
        st->pop_ndcg += m.ndcg;
        st->pop_hit += m.hit;
    }
    free(top);
}

int wk_implicit_eval(wk_implicit *im, wk_kv *kv, cm_ranking_done *st, cm_error *err)
{
    const size_t d = (size_t)im->dim, k = im->top_k, nt = im->n_tusers;
    *st = (cm_ranking_done){0};
    wk_implicit_eval_popularity(im, st);
    st->users = nt;
    if (nt == 0 || im->n_items == 0)
        return 0;
    int rc = 0;
    const size_t ic = im->n_items < S_EVAL_ITEMS ? im->n_items : S_EVAL_ITEMS;
    const size_t uc = nt < S_EVAL_USERS ? nt : S_EVAL_USERS;
    uint64_t *ukeys = malloc(nt * sizeof *ukeys);
    float *U = s_falloc(nt * d);          /* rows [1, p_u]: U Q^T = b_i + <p_u, q_i> */
    float *Q = s_falloc(ic * d);
    float *S = s_falloc(uc * ic);
    cm_scored *heap = malloc(nt * k * sizeof *heap);
    size_t *hn = calloc(nt, sizeof *hn);
    size_t *cur = calloc(nt, sizeof *cur); /* each user's next training item */
    uint64_t *ranked = malloc((k + 1) * sizeof *ranked);
    if (!ukeys || !U || !Q || !S || !heap || !hn || !cur || !ranked) {
        rc = cm_error_set(err, CM_ENOMEM, "implicit: out of memory to rank %zu items for %zu "
                          "users", im->n_items, nt);
        goto out;
    }
    for (size_t t = 0; t < nt; t++)
        ukeys[t] = im->users[im->tuser[t]]; /* ascending: tuser and users both are */
    wk_pull ureq = {0, ukeys, nt, U, CM_PULL_NO_CREATE, 0};
    if ((rc = wk_kv_pull(kv, &ureq, 1, err)) != 0)
        goto out;
    for (size_t t = 0; t < nt; t++)
        U[t * d] = 1.f;
    for (size_t c0 = 0; c0 < im->n_items; c0 += ic) {
        size_t c = im->n_items - c0 < ic ? im->n_items - c0 : ic;
        wk_pull ireq = {1, im->items + c0, c, Q, CM_PULL_NO_CREATE, 0};
        if ((rc = wk_kv_pull(kv, &ireq, 1, err)) != 0)
            goto out;
        for (size_t t0 = 0; t0 < nt; t0 += uc) {
            size_t ub = nt - t0 < uc ? nt - t0 : uc;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ub, (int)c, (int)d, 1.f,
                        U + t0 * d, (int)d, Q, (int)d, 0.f, S, (int)c);
            for (size_t t = t0; t < t0 + ub; t++) {
                uint32_t u = im->tuser[t];
                const uint32_t *tr = im->uitems + im->uoff[u];
                size_t n_tr = im->uoff[u + 1] - im->uoff[u];
                const float *row = S + (t - t0) * c;
                for (size_t x = 0; x < c; x++) {
                    uint32_t item = (uint32_t)(c0 + x);
                    if (cur[t] < n_tr && tr[cur[t]] == item) {
                        cur[t]++; /* a training item: never recommended */
                        continue;
                    }
                    cm_topk_offer(heap + t * k, &hn[t], k, row[x], item);
                }
            }
        }
    }
    for (size_t t = 0; t < nt; t++) {
        cm_scored *h = heap + t * k;
        cm_topk_sort(h, hn[t]);
        for (size_t r = 0; r < hn[t]; r++)
            ranked[r] = h[r].key;
        cm_rank_metrics m = cm_rank_metrics_of(ranked, hn[t], im->titems + im->toff[t],
                                               im->toff[t + 1] - im->toff[t], k);
        st->recall += m.recall;
        st->ndcg += m.ndcg;
        st->hit += m.hit;
    }
out:
    free(ukeys);
    free(U);
    free(Q);
    free(S);
    free(heap);
    free(hn);
    free(cur);
    free(ranked);
    return rc;
}
