/* synth: planted biased matrix factorisation data (psrec gen).
 *
 * Model: r = mean + bu[u] + bi[i] + <P[u], Q[i]> + e, e ~ N(0, noise^2),
 * bu ~ N(0, user_bias_sd^2), bi ~ N(0, item_bias_sd^2), P and Q entries
 * ~ N(0, factor_sd^2). With factor_sd = s the dot product has variance
 * rank * s^4; the automatic choice s = sqrt(0.6 / sqrt(rank)) makes its
 * standard deviation 0.6, on the scale of the biases and below the default
 * noise, like real explicit-feedback data.
 *
 * Sampling: users by lognormal activity weights exp(N(0, 1)), items by
 * Zipf weights 1 / rank^zipf assigned over a random permutation of the item
 * ids; both through Vose alias tables, O(1) per draw. User ids are
 * 1..n_users and item ids 1..n_items.
 *
 * Determinism: independent streams derived from the seed for the model
 * (biases, factors, weights, permutation), user draws, item draws, noise
 * and the train/test split. The split stream is run once to count rows for
 * the binary writers (which need the count up front), then reseeded and
 * run again beside the others while rows are written. */
#include "common/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dataset.h"
#include "common/hash.h"
#include "common/rng.h"

#define S_CHUNK (1u << 18)          /* rows generated between writes */
#define S_USER_ACTIVITY_SIGMA 1.0   /* lognormal sigma of user activity */
#define S_DOT_SD 0.6                /* target sd of <p_u, q_i> for auto factor_sd */
#define S_MAX_RANK 1024
#define S_PREFETCH 16               /* rows ahead to prefetch table rows */

enum { S_STREAM_MODEL = 1, S_STREAM_USER, S_STREAM_ITEM, S_STREAM_NOISE, S_STREAM_SPLIT };

cm_synth_params cm_synth_params_default(void)
{
    cm_synth_params p;
    memset(&p, 0, sizeof p);
    p.n_ratings = 100000;
    p.n_users = 943;
    p.n_items = 1682;
    p.rank = 8;
    p.noise = 0.5;
    p.zipf = 0.9;
    p.mean = 3.5;
    p.user_bias_sd = 0.4;
    p.item_bias_sd = 0.4;
    p.factor_sd = 0.0; /* automatic, see the banner */
    p.test_fraction = 0.1;
    p.seed = 42;
    p.text = 0;
    return p;
}

static void s_stream(cm_rng *r, uint64_t seed, int which)
{
    cm_rng_seed(r, cm_mix64(seed ^ cm_mix64((uint64_t)which)));
}

/* ------------------------------------------------------------------------
 * Alias tables (Vose)
 * ------------------------------------------------------------------------ */

typedef struct {
    float prob;       /* keep column i with this probability... */
    uint32_t alias;   /* ...else take this one */
} s_alias_cell;       /* together: one cache miss per draw */

typedef struct {
    uint64_t n;
    s_alias_cell *cell;
} s_alias;

static void s_alias_free(s_alias *a)
{
    free(a->cell);
    memset(a, 0, sizeof *a);
}

/* Builds the table from weights w[n] (consumed: scaled in place). */
static int s_alias_build(s_alias *a, double *w, uint64_t n)
{
    memset(a, 0, sizeof *a);
    a->cell = malloc(n * sizeof *a->cell);
    uint32_t *stack = malloc(n * sizeof *stack);
    if (!a->cell || !stack) {
        free(stack);
        s_alias_free(a);
        return CM_ENOMEM;
    }
    a->n = n;
    double sum = 0.0;
    for (uint64_t i = 0; i < n; i++)
        sum += w[i];
    /* Small entries stack up from the front, large ones from the back. */
    uint64_t ns = 0, nl = n;
    for (uint64_t i = 0; i < n; i++) {
        w[i] = w[i] * (double)n / sum;
        if (w[i] < 1.0)
            stack[ns++] = (uint32_t)i;
        else
            stack[--nl] = (uint32_t)i;
    }
    while (ns > 0 && nl < n) {
        uint32_t s = stack[--ns], l = stack[nl];
        a->cell[s] = (s_alias_cell){(float)w[s], l};
        w[l] = (w[l] + w[s]) - 1.0;
        if (w[l] < 1.0) {
            nl++;
            stack[ns++] = l;
        }
    }
    /* Whatever is left is 1 up to rounding. */
    while (nl < n) {
        uint32_t l = stack[nl++];
        a->cell[l] = (s_alias_cell){1.0f, l};
    }
    while (ns > 0) {
        uint32_t s = stack[--ns];
        a->cell[s] = (s_alias_cell){1.0f, s};
    }
    free(stack);
    return 0;
}

/* A draw is a column and a uniform; resolving it touches the table, so the
 * generator draws a chunk first and resolves it with prefetching. */
static inline void s_alias_draw(const s_alias *a, cm_rng *r, uint32_t *col, float *u)
{
    *col = (uint32_t)cm_rng_below(r, a->n);
    *u = (float)cm_rng_uniform(r);
}

static inline uint32_t s_alias_resolve(const s_alias *a, uint32_t col, float u)
{
    const s_alias_cell *c = &a->cell[col];
    return u < c->prob ? col : c->alias;
}

/* ------------------------------------------------------------------------
 * The planted model
 * ------------------------------------------------------------------------ */

typedef struct {
    int rank;
    size_t stride;        /* rank + 1 */
    float *P, *Q;         /* per user / item: [bias, factor_0 .. factor_rank-1],
                             so a row's bias and factors share cache lines */
    s_alias users, items; /* row sampling */
} s_model;

static void s_model_free(s_model *m)
{
    free(m->P);
    free(m->Q);
    s_alias_free(&m->users);
    s_alias_free(&m->items);
}

static int s_model_build(s_model *m, const cm_synth_params *p, double factor_sd)
{
    memset(m, 0, sizeof *m);
    uint64_t nu = p->n_users, ni = p->n_items, k = (uint64_t)p->rank;
    m->rank = p->rank;
    m->stride = (size_t)k + 1;
    m->P = malloc(nu * m->stride * sizeof *m->P);
    m->Q = malloc(ni * m->stride * sizeof *m->Q);
    uint64_t nmax = nu > ni ? nu : ni;
    double *w = malloc(nmax * sizeof *w);
    uint32_t *perm = malloc(ni * sizeof *perm);
    int rc = CM_ENOMEM;
    if (!m->P || !m->Q || !w || !perm)
        goto out;

    /* Draw order (all user biases, all user factors, item biases, item
     * factors) is part of what a seed means: keep it. */
    cm_rng r;
    s_stream(&r, p->seed, S_STREAM_MODEL);
    for (uint64_t u = 0; u < nu; u++)
        m->P[u * m->stride] = (float)(p->user_bias_sd * cm_rng_normal(&r));
    for (uint64_t u = 0; u < nu; u++)
        for (uint64_t f = 0; f < k; f++)
            m->P[u * m->stride + 1 + f] = (float)(factor_sd * cm_rng_normal(&r));
    for (uint64_t i = 0; i < ni; i++)
        m->Q[i * m->stride] = (float)(p->item_bias_sd * cm_rng_normal(&r));
    for (uint64_t i = 0; i < ni; i++)
        for (uint64_t f = 0; f < k; f++)
            m->Q[i * m->stride + 1 + f] = (float)(factor_sd * cm_rng_normal(&r));

    for (uint64_t u = 0; u < nu; u++)
        w[u] = exp(S_USER_ACTIVITY_SIGMA * cm_rng_normal(&r));
    if ((rc = s_alias_build(&m->users, w, nu)) != 0)
        goto out;

    for (uint64_t i = 0; i < ni; i++)
        perm[i] = (uint32_t)i;
    cm_rng_shuffle_u32(&r, perm, ni);
    for (uint64_t rk = 0; rk < ni; rk++)
        w[perm[rk]] = pow((double)(rk + 1), -p->zipf);
    rc = s_alias_build(&m->items, w, ni);
out:
    free(w);
    free(perm);
    if (rc != 0)
        s_model_free(m);
    return rc;
}

/* ------------------------------------------------------------------------
 * Output: two binary or two text writers
 * ------------------------------------------------------------------------ */

typedef struct {
    cm_binwriter *bin;
    cm_textwriter *txt;
} s_sink;

static int s_sink_open(s_sink *s, const char *path, size_t n, int text, cm_error *err)
{
    memset(s, 0, sizeof *s);
    if (text)
        s->txt = cm_textwriter_open(path, err);
    else
        s->bin = cm_binwriter_open(path, n, err);
    return (s->txt || s->bin) ? 0 : (err ? err->code : CM_EIO);
}

static int s_sink_append(s_sink *s, const uint64_t *u, const uint64_t *i, const float *r,
                         size_t n, cm_error *err)
{
    if (n == 0)
        return 0;
    return s->txt ? cm_textwriter_append(s->txt, u, i, r, n, err)
                  : cm_binwriter_append(s->bin, u, i, r, n, err);
}

static int s_sink_close(s_sink *s, double noise_floor, const char *source, cm_error *err)
{
    int rc = s->txt ? cm_textwriter_close(s->txt, noise_floor, err)
                    : cm_binwriter_close(s->bin, noise_floor, source, err);
    s->txt = NULL;
    s->bin = NULL;
    return rc;
}

static void s_sink_destroy(s_sink *s)
{
    cm_textwriter_destroy(&s->txt);
    cm_binwriter_destroy(&s->bin);
}

typedef struct {
    uint64_t *user, *item;
    float *rating;
    size_t n;
} s_buf;

/* One chunk's draws before they become rows. */
typedef struct {
    uint32_t *u, *i;      /* alias columns, then resolved indices */
    float *uu, *iu;       /* alias uniforms */
    float *e;             /* noise */
    uint8_t *test;        /* split decisions */
} s_draws;

static int s_draws_alloc(s_draws *d)
{
    d->u = malloc(S_CHUNK * sizeof *d->u);
    d->i = malloc(S_CHUNK * sizeof *d->i);
    d->uu = malloc(S_CHUNK * sizeof *d->uu);
    d->iu = malloc(S_CHUNK * sizeof *d->iu);
    d->e = malloc(S_CHUNK * sizeof *d->e);
    d->test = malloc(S_CHUNK * sizeof *d->test);
    return d->u && d->i && d->uu && d->iu && d->e && d->test ? 0 : CM_ENOMEM;
}

static void s_draws_free(s_draws *d)
{
    free(d->u);
    free(d->i);
    free(d->uu);
    free(d->iu);
    free(d->e);
    free(d->test);
}

static int s_buf_alloc(s_buf *b)
{
    b->user = malloc(S_CHUNK * sizeof *b->user);
    b->item = malloc(S_CHUNK * sizeof *b->item);
    b->rating = malloc(S_CHUNK * sizeof *b->rating);
    b->n = 0;
    return b->user && b->item && b->rating ? 0 : CM_ENOMEM;
}

static void s_buf_free(s_buf *b)
{
    free(b->user);
    free(b->item);
    free(b->rating);
}

/* ------------------------------------------------------------------------
 * Generation
 * ------------------------------------------------------------------------ */

static int s_validate(const cm_synth_params *p, cm_error *err)
{
    if (p->n_ratings < 1)
        return cm_error_set(err, CM_EINVAL, "gen: n_ratings must be at least 1");
    if (p->n_users < 1 || p->n_users > UINT32_MAX)
        return cm_error_set(err, CM_EINVAL, "gen: n_users must be within [1, %u], got %llu",
                            UINT32_MAX, (unsigned long long)p->n_users);
    if (p->n_items < 1 || p->n_items > UINT32_MAX)
        return cm_error_set(err, CM_EINVAL, "gen: n_items must be within [1, %u], got %llu",
                            UINT32_MAX, (unsigned long long)p->n_items);
    if (p->rank < 0 || p->rank > S_MAX_RANK)
        return cm_error_set(err, CM_EINVAL, "gen: rank must be within [0, %d], got %d",
                            S_MAX_RANK, p->rank);
    struct {
        const char *name;
        double v;
    } nonneg[] = {{"noise", p->noise},
                  {"zipf", p->zipf},
                  {"user_bias_sd", p->user_bias_sd},
                  {"item_bias_sd", p->item_bias_sd}};
    for (size_t i = 0; i < sizeof nonneg / sizeof nonneg[0]; i++)
        if (!(isfinite(nonneg[i].v) && nonneg[i].v >= 0))
            return cm_error_set(err, CM_EINVAL, "gen: %s must be a finite number >= 0, got %g",
                                nonneg[i].name, nonneg[i].v);
    if (!isfinite(p->factor_sd) || !isfinite(p->mean))
        return cm_error_set(err, CM_EINVAL, "gen: factor_sd and mean must be finite");
    if (!(p->test_fraction >= 0.0 && p->test_fraction <= 1.0))
        return cm_error_set(err, CM_EINVAL, "gen: test_fraction must be within [0, 1], got %g",
                            p->test_fraction);
    return 0;
}

/* The random streams of pass 2: the split, the user and item draws, the
 * noise. */
typedef struct {
    cm_rng split, user, item, noise;
} s_streams;

/* (a) every random draw of a chunk: no table is touched */
static void s_chunk_draw(const s_model *m, const cm_synth_params *p, s_streams *r, s_draws *d,
                         size_t chunk)
{
    for (size_t t = 0; t < chunk; t++) {
        s_alias_draw(&m->users, &r->user, &d->u[t], &d->uu[t]);
        s_alias_draw(&m->items, &r->item, &d->i[t], &d->iu[t]);
        d->e[t] = (float)(p->noise * cm_rng_normal(&r->noise));
        d->test[t] = cm_rng_uniform(&r->split) < p->test_fraction;
    }
}

/* (b) the draws through the alias tables, prefetched a few rows ahead */
static void s_chunk_resolve(const s_model *m, s_draws *d, size_t chunk)
{
    for (size_t t = 0; t < chunk; t++) {
        if (t + S_PREFETCH < chunk) {
            __builtin_prefetch(&m->users.cell[d->u[t + S_PREFETCH]]);
            __builtin_prefetch(&m->items.cell[d->i[t + S_PREFETCH]]);
        }
        d->u[t] = s_alias_resolve(&m->users, d->u[t], d->uu[t]);
        d->i[t] = s_alias_resolve(&m->items, d->i[t], d->iu[t]);
    }
}

/* (c) ratings from the planted rows, prefetched likewise, appended to the
 * train or test buffer; the squared noise as stored summed per side */
static void s_chunk_rate(const s_model *m, double mean, const s_draws *d, size_t chunk,
                         s_buf *btr, s_buf *bte, double *se_train, double *se_test)
{
    const int k = m->rank;
    const size_t st = m->stride;
    for (size_t t = 0; t < chunk; t++) {
        if (t + S_PREFETCH < chunk) {
            __builtin_prefetch(m->P + (size_t)d->u[t + S_PREFETCH] * st);
            __builtin_prefetch(m->Q + (size_t)d->i[t + S_PREFETCH] * st);
        }
        uint32_t u = d->u[t], i = d->i[t];
        const float *pu = m->P + (size_t)u * st, *qi = m->Q + (size_t)i * st;
        float dot = 0.0f;
        for (int f = 1; f <= k; f++)
            dot += pu[f] * qi[f];
        double truth = mean + (double)pu[0] + (double)qi[0] + (double)dot;
        float r = (float)(truth + (double)d->e[t]);
        double diff = (double)r - truth; /* the noise as stored */
        s_buf *b;
        if (d->test[t]) {
            *se_test += diff * diff;
            b = bte;
        } else {
            *se_train += diff * diff;
            b = btr;
        }
        b->user[b->n] = (uint64_t)u + 1;
        b->item[b->n] = (uint64_t)i + 1;
        b->rating[b->n] = r;
        b->n++;
    }
}

int cm_synth_write(const cm_synth_params *p, const char *prefix, cm_synth_report *rep,
                   cm_error *err)
{
    cm_error local;
    if (!err)
        err = &local;
    cm_synth_report dummy;
    if (!rep)
        rep = &dummy;
    memset(rep, 0, sizeof *rep);
    int rc = s_validate(p, err);
    if (rc != 0)
        return rc;
    const char *ext = p->text ? "tsv" : "psrd";
    int l1 = snprintf(rep->train_path, sizeof rep->train_path, "%s.train.%s", prefix, ext);
    int l2 = snprintf(rep->test_path, sizeof rep->test_path, "%s.test.%s", prefix, ext);
    if (l1 < 0 || l2 < 0 || (size_t)l1 >= sizeof rep->train_path ||
        (size_t)l2 >= sizeof rep->test_path)
        return cm_error_set(err, CM_EINVAL, "gen: output prefix is too long");

    double factor_sd = p->factor_sd;
    if (factor_sd <= 0)
        factor_sd = p->rank > 0 ? sqrt(S_DOT_SD / sqrt((double)p->rank)) : 0.0;

    s_model m;
    s_sink train = {0}, test = {0};
    s_buf btr = {0}, bte = {0};
    s_draws d = {0};
    if ((rc = s_model_build(&m, p, factor_sd)) != 0) {
        return cm_error_set(err, rc, "gen: cannot allocate the model for %llu users, %llu items, rank %d",
                            (unsigned long long)p->n_users, (unsigned long long)p->n_items,
                            p->rank);
    }
    if (s_buf_alloc(&btr) != 0 || s_buf_alloc(&bte) != 0 || s_draws_alloc(&d) != 0) {
        rc = cm_error_set(err, CM_ENOMEM, "gen: out of memory");
        goto out;
    }

    /* Pass 1: the split decisions alone, for the row counts. */
    cm_rng rs;
    s_stream(&rs, p->seed, S_STREAM_SPLIT);
    uint64_t n_test = 0;
    for (uint64_t t = 0; t < p->n_ratings; t++)
        n_test += cm_rng_uniform(&rs) < p->test_fraction;
    uint64_t n_train = p->n_ratings - n_test;

    if ((rc = s_sink_open(&train, rep->train_path, n_train, p->text, err)) != 0 ||
        (rc = s_sink_open(&test, rep->test_path, n_test, p->text, err)) != 0)
        goto out;

    /* Pass 2: everything, the split stream replayed from the start. */
    s_streams r;
    s_stream(&r.split, p->seed, S_STREAM_SPLIT);
    s_stream(&r.user, p->seed, S_STREAM_USER);
    s_stream(&r.item, p->seed, S_STREAM_ITEM);
    s_stream(&r.noise, p->seed, S_STREAM_NOISE);
    double se_test = 0.0, se_train = 0.0;
    for (uint64_t done = 0; done < p->n_ratings;) {
        size_t chunk = p->n_ratings - done < S_CHUNK ? (size_t)(p->n_ratings - done) : S_CHUNK;
        s_chunk_draw(&m, p, &r, &d, chunk);
        s_chunk_resolve(&m, &d, chunk);
        btr.n = bte.n = 0;
        s_chunk_rate(&m, p->mean, &d, chunk, &btr, &bte, &se_train, &se_test);
        if ((rc = s_sink_append(&train, btr.user, btr.item, btr.rating, btr.n, err)) != 0 ||
            (rc = s_sink_append(&test, bte.user, bte.item, bte.rating, bte.n, err)) != 0)
            goto out;
        done += chunk;
    }

    /* With no test rows the floor is measured on the training rows. */
    double floor = n_test ? sqrt(se_test / (double)n_test) : sqrt(se_train / (double)n_train);
    char source[256];
    snprintf(source, sizeof source,
             "psrec gen seed=%llu ratings=%llu users=%llu items=%llu rank=%d noise=%g zipf=%g "
             "factor_sd=%.6g",
             (unsigned long long)p->seed, (unsigned long long)p->n_ratings,
             (unsigned long long)p->n_users, (unsigned long long)p->n_items, p->rank, p->noise,
             p->zipf, factor_sd);
    if ((rc = s_sink_close(&train, floor, source, err)) != 0)
        goto out;
    if ((rc = s_sink_close(&test, floor, source, err)) != 0) {
        remove(rep->train_path);
        goto out;
    }
    rep->n_train = n_train;
    rep->n_test = n_test;
    rep->noise_floor = floor;
out:
    s_sink_destroy(&train);
    s_sink_destroy(&test);
    s_buf_free(&btr);
    s_buf_free(&bte);
    s_draws_free(&d);
    s_model_free(&m);
    return rc;
}
