/* synth_ctr: planted logistic FM click data (psrec gen --ctr).
 *
 * Scale: with F fields, the linear part sums F Gaussian weights and the
 * pairwise part F(F-1)/2 dot products of rank-k Gaussian vectors, so their
 * nominal variances are F sw^2 and F(F-1)/2 k sv^4. Zipf popularity puts
 * most lines on a few head features per field, whose drawn weights then
 * decide the spread over lines more than the nominal variance does. So
 * the weights are drawn at unit scale, the two parts' standard deviations
 * measured on a pilot sample of lines (a stream of its own, the same size
 * whatever n_lines is), and w and v rescaled so that each part has the sd
 * its share of `signal` asks for; then the bias is found by bisection so
 * that the pilot's mean p is `ctr`. The written lines are new draws, so
 * the click rate they show is ctr up to sampling error.
 *
 * Determinism: independent streams derived from the seed for the model,
 * the pilot, the features of each line, the labels and the split; each is
 * consumed in line order, so chunking does not change a byte. */
#include "common/synth_ctr.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/metrics.h"
#include "common/rng.h"

#define S_MAX_FIELDS 1024
#define S_MAX_RANK 256
#define S_PILOT_LINES 50000
#define S_NUMERIC_STEPS 1000          /* numeric values are i / 1000, i in [0, 1000) */
#define S_VOCAB_RANGE 1e4             /* largest / smallest field weight */
#define S_OUT_BUF (1u << 22)          /* bytes buffered per output file */

enum {
    S_STREAM_MODEL = 101,
    S_STREAM_PILOT,
    S_STREAM_FEATURES,
    S_STREAM_LABELS,
    S_STREAM_SPLIT
};

static const char *const s_ext[3] = {"libsvm", "ffm", "csv"};

cm_synth_ctr_params cm_synth_ctr_params_default(void)
{
    cm_synth_ctr_params p;
    memset(&p, 0, sizeof p);
    p.n_lines = 100000;
    p.n_fields = 39;
    p.n_numeric = 0;
    p.features = 1000000;
    p.vocab_min = 4;
    p.zipf = 1.1;
    p.rank = 8;
    p.signal = 1.5;
    p.pair_share = 0.5;
    p.ctr = 0.2;
    p.test_fraction = 0.1;
    p.seed = 42;
    p.formats = CM_CTR_LIBSVM | CM_CTR_LIBFFM | CM_CTR_CSV;
    return p;
}

int cm_synth_ctr_formats(const char *list, unsigned *out, cm_error *err)
{
    unsigned bits = 0;
    const char *s = list ? list : "";
    while (*s) {
        size_t n = strcspn(s, ",");
        if (n == 3 && strncmp(s, "all", 3) == 0)
            bits |= CM_CTR_LIBSVM | CM_CTR_LIBFFM | CM_CTR_CSV;
        else if (n == 6 && strncmp(s, "libsvm", 6) == 0)
            bits |= CM_CTR_LIBSVM;
        else if ((n == 3 && strncmp(s, "ffm", 3) == 0) || (n == 6 && strncmp(s, "libffm", 6) == 0))
            bits |= CM_CTR_LIBFFM;
        else if (n == 3 && strncmp(s, "csv", 3) == 0)
            bits |= CM_CTR_CSV;
        else
            return cm_error_set(err, CM_EINVAL,
                                "gen: unknown format '%.*s' (expected libsvm, ffm, csv or all)",
                                (int)n, s);
        s += n;
        if (*s == ',')
            s++;
    }
    if (!bits)
        return cm_error_set(err, CM_EINVAL, "gen: no output format named");
    *out = bits;
    return 0;
}

static void s_stream(cm_rng *r, uint64_t seed, int which)
{
    cm_rng_seed(r, cm_mix64(seed ^ cm_mix64((uint64_t)which)));
}

/* ------------------------------------------------------------------------
 * Popularity: one Vose alias table per categorical field
 * ------------------------------------------------------------------------ */

typedef struct {
    float keep;       /* take this column with this probability... */
    uint32_t other;   /* ...else this one */
} s_cell;

/* Fills cell[n] from weights w[n] (overwritten). stack: n scratch slots. */
static void s_alias_fill(s_cell *cell, double *w, uint32_t *stack, uint64_t n)
{
    double total = 0.0;
    for (uint64_t i = 0; i < n; i++)
        total += w[i];
    uint64_t lo = 0, hi = n; /* under-full ids grow from 0, over-full from n */
    for (uint64_t i = 0; i < n; i++) {
        w[i] *= (double)n / total;
        if (w[i] < 1.0)
            stack[lo++] = (uint32_t)i;
        else
            stack[--hi] = (uint32_t)i;
    }
    while (lo > 0 && hi < n) {
        uint32_t small = stack[--lo], big = stack[hi];
        cell[small].keep = (float)w[small];
        cell[small].other = big;
        w[big] -= 1.0 - w[small];
        if (w[big] < 1.0) {
            hi++;
            stack[lo++] = big;
        }
    }
    /* What remains is full up to rounding. */
    for (uint64_t i = hi; i < n; i++)
        cell[stack[i]] = (s_cell){1.0f, stack[i]};
    for (uint64_t i = 0; i < lo; i++)
        cell[stack[i]] = (s_cell){1.0f, stack[i]};
}

/* ------------------------------------------------------------------------
 * The planted model
 * ------------------------------------------------------------------------ */

typedef struct {
    int F, nnum, k;
    uint64_t n_feat;        /* indices 1..n_feat */
    uint64_t *offset;       /* per field: index of its first feature */
    uint64_t *size;         /* per field: vocabulary (1 for numeric fields) */
    s_cell **alias;         /* per field: alias table (NULL for numeric) */
    float *w;               /* [1 + n_feat] linear weights */
    float *v;               /* [(1 + n_feat) * k] factors */
    double bias;
} s_model;

static void s_model_free(s_model *m)
{
    if (m->alias)
        for (int f = 0; f < m->F; f++)
            free(m->alias[f]);
    free(m->alias);
    free(m->offset);
    free(m->size);
    free(m->w);
    free(m->v);
    memset(m, 0, sizeof *m);
}

/* One line: the feature index and value of each field. */
static void s_draw_line(const s_model *m, cm_rng *r, uint64_t *idx, float *val)
{
    for (int f = 0; f < m->nnum; f++) {
        idx[f] = m->offset[f];
        val[f] = (float)cm_rng_below(r, S_NUMERIC_STEPS) / (float)S_NUMERIC_STEPS;
    }
    for (int f = m->nnum; f < m->F; f++) {
        uint64_t col = cm_rng_below(r, m->size[f]);
        float u = (float)cm_rng_uniform(r);
        const s_cell *c = &m->alias[f][col];
        idx[f] = m->offset[f] + (u < c->keep ? col : c->other);
        val[f] = 1.0f;
    }
}

/* The logit without the bias, as its linear and pairwise parts. acc: k
 * scratch doubles. */
static void s_logit_parts(const s_model *m, const uint64_t *idx, const float *val,
                          double *acc, double *lin, double *pair)
{
    const int k = m->k;
    double l = 0.0, sq = 0.0;
    for (int d = 0; d < k; d++)
        acc[d] = 0.0;
    for (int f = 0; f < m->F; f++) {
        double x = val[f];
        const float *vi = m->v + idx[f] * (size_t)k;
        l += (double)m->w[idx[f]] * x;
        for (int d = 0; d < k; d++) {
            double t = (double)vi[d] * x;
            acc[d] += t;
            sq += t * t;
        }
    }
    double s = 0.0;
    for (int d = 0; d < k; d++)
        s += acc[d] * acc[d];
    *lin = l;
    *pair = 0.5 * (s - sq);
}

static double s_sigmoid(double z)
{
    return z >= 0 ? 1.0 / (1.0 + exp(-z)) : exp(z) / (1.0 + exp(z));
}

static double s_sd(const double *x, size_t n)
{
    double mean = 0.0, ss = 0.0;
    for (size_t i = 0; i < n; i++)
        mean += x[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (x[i] - mean) * (x[i] - mean);
    return sqrt(ss / (double)n);
}

static int s_model_build(s_model *m, const cm_synth_ctr_params *p)
{
    memset(m, 0, sizeof *m);
    m->F = p->n_fields;
    m->nnum = p->n_numeric;
    m->k = p->rank;
    const int F = m->F, C = F - m->nnum, k = m->k;
    m->offset = calloc((size_t)F, sizeof *m->offset);
    m->size = calloc((size_t)F, sizeof *m->size);
    m->alias = calloc((size_t)F, sizeof *m->alias);
    if (!m->offset || !m->size || !m->alias)
        return CM_ENOMEM;

    cm_rng r;
    s_stream(&r, p->seed, S_STREAM_MODEL);

    /* Vocabulary sizes: log-uniform weights, scaled to add up to features
     * with vocab_min each; the rounding remainder goes to the last field. */
    uint64_t spare = C > 0 ? p->features - (uint64_t)C * p->vocab_min : 0, given = 0;
    double wsum = 0.0, fw[S_MAX_FIELDS];
    for (int f = m->nnum; f < F; f++)
        wsum += (fw[f] = exp(cm_rng_uniform(&r) * log(S_VOCAB_RANGE)));
    uint64_t next = 1, vmax = 1;
    for (int f = 0; f < F; f++) {
        if (f < m->nnum) {
            m->size[f] = 1;
        } else {
            uint64_t extra = (uint64_t)floor((double)spare * fw[f] / wsum);
            if (given + extra > spare || f == F - 1)
                extra = spare - given;
            given += extra;
            m->size[f] = p->vocab_min + extra;
        }
        m->offset[f] = next;
        next += m->size[f];
        if (m->size[f] > vmax)
            vmax = m->size[f];
    }
    m->n_feat = next - 1;

    double *w = malloc(vmax * sizeof *w);
    uint32_t *perm = malloc(vmax * sizeof *perm);
    uint32_t *stack = malloc(vmax * sizeof *stack);
    m->w = malloc((m->n_feat + 1) * sizeof *m->w);
    m->v = malloc((m->n_feat + 1) * (size_t)(k > 0 ? k : 1) * sizeof *m->v);
    int rc = CM_ENOMEM;
    if (!w || !perm || !stack || !m->w || !m->v)
        goto out;

    /* Popularity: rank r of a random permutation gets weight r^-zipf. */
    for (int f = m->nnum; f < F; f++) {
        uint64_t n = m->size[f];
        if (!(m->alias[f] = malloc(n * sizeof *m->alias[f])))
            goto out;
        for (uint64_t i = 0; i < n; i++)
            perm[i] = (uint32_t)i;
        cm_rng_shuffle_u32(&r, perm, n);
        for (uint64_t i = 0; i < n; i++)
            w[perm[i]] = pow((double)(i + 1), -p->zipf);
        s_alias_fill(m->alias[f], w, stack, n);
    }

    /* Unit-scale weights, rescaled below. */
    m->w[0] = 0.0f;
    for (uint64_t i = 1; i <= m->n_feat; i++)
        m->w[i] = (float)cm_rng_normal(&r);
    for (uint64_t i = 0; k > 0 && i <= m->n_feat; i++)
        cm_rng_normals_f32(&r, m->v + i * (size_t)k, k, 1.0f);
    rc = 0;
out:
    free(w);
    free(perm);
    free(stack);
    return rc;
}

/* Rescales w and v on the pilot sample and sets the bias (see the banner). */
static int s_model_calibrate(s_model *m, const cm_synth_ctr_params *p)
{
    const size_t n = S_PILOT_LINES;
    const int F = m->F, k = m->k;
    double *lin = malloc(n * sizeof *lin), *pair = malloc(n * sizeof *pair);
    double *acc = malloc((size_t)(k > 0 ? k : 1) * sizeof *acc);
    int rc = CM_ENOMEM;
    if (!lin || !pair || !acc)
        goto out;
    cm_rng r;
    s_stream(&r, p->seed, S_STREAM_PILOT);
    /* The same lines before and after scaling: keep their draws. */
    uint64_t *lines = malloc(n * (size_t)F * sizeof *lines);
    float *vals = malloc(n * (size_t)F * sizeof *vals);
    if (!lines || !vals) {
        free(lines);
        free(vals);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        s_draw_line(m, &r, lines + i * F, vals + i * F);
        s_logit_parts(m, lines + i * F, vals + i * F, acc, &lin[i], &pair[i]);
    }
    double want_lin = p->signal * sqrt(1.0 - p->pair_share);
    double want_pair = p->signal * sqrt(p->pair_share);
    double sl = s_sd(lin, n), sp = k > 0 ? s_sd(pair, n) : 0.0;
    /* A part with no spread (one feature per field, say) cannot be scaled
     * up; it is switched off instead. */
    float a = sl > 0 ? (float)(want_lin / sl) : 0.0f;
    float b = sp > 0 ? (float)sqrt(want_pair / sp) : 0.0f;
    for (uint64_t i = 0; i <= m->n_feat; i++)
        m->w[i] *= a;
    for (uint64_t i = 0; i < (m->n_feat + 1) * (uint64_t)k; i++)
        m->v[i] *= b;
    for (size_t i = 0; i < n; i++) {
        s_logit_parts(m, lines + i * F, vals + i * F, acc, &lin[i], &pair[i]);
        lin[i] += pair[i];
    }
    free(lines);
    free(vals);
    double lo = -40.0, hi = 40.0;
    for (int it = 0; it < 100; it++) {
        double mid = 0.5 * (lo + hi), mean = 0.0;
        for (size_t i = 0; i < n; i++)
            mean += s_sigmoid(mid + lin[i]);
        if (mean / (double)n < p->ctr)
            lo = mid;
        else
            hi = mid;
    }
    m->bias = 0.5 * (lo + hi);
    rc = 0;
out:
    free(lin);
    free(pair);
    free(acc);
    return rc;
}

/* ------------------------------------------------------------------------
 * Output: a buffered file per format and split
 * ------------------------------------------------------------------------ */

typedef struct {
    FILE *f;
    const char *path;
    char *buf;
    size_t n;
    int failed;             /* errno of the first failed write, 0 if none */
} s_out;

static int s_out_open(s_out *o, const char *path, cm_error *err)
{
    memset(o, 0, sizeof *o);
    o->path = path;
    o->buf = malloc(S_OUT_BUF);
    if (!o->buf)
        return cm_error_set(err, CM_ENOMEM, "gen: out of memory");
    if (!(o->f = fopen(path, "wb"))) {
        int e = errno;
        free(o->buf);
        o->buf = NULL;
        return cm_error_set(err, CM_EIO, "gen: %s: %s", path, strerror(e));
    }
    return 0;
}

static void s_out_flush(s_out *o)
{
    if (o->n && !o->failed && fwrite(o->buf, 1, o->n, o->f) != o->n)
        o->failed = errno ? errno : EIO;
    o->n = 0;
}

/* Room for one more line of at most `need` bytes. */
static char *s_out_reserve(s_out *o, size_t need)
{
    if (o->n + need > S_OUT_BUF)
        s_out_flush(o);
    return o->buf + o->n;
}

static int s_out_close(s_out *o, cm_error *err)
{
    if (!o->f)
        return 0;
    s_out_flush(o);
    if (fclose(o->f) != 0 && !o->failed)
        o->failed = errno ? errno : EIO;
    o->f = NULL;
    free(o->buf);
    o->buf = NULL;
    if (o->failed)
        return cm_error_set(err, CM_EIO, "gen: %s: %s", o->path, strerror(o->failed));
    return 0;
}

static void s_out_abandon(s_out *o)
{
    if (o->f) {
        fclose(o->f);
        remove(o->path);
    }
    free(o->buf);
    memset(o, 0, sizeof *o);
}

static char *s_put_u64(char *s, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *s++ = tmp[--n];
    return s;
}

/* A numeric value i / 1000 as "0.iii"; categorical values are "1". */
static char *s_put_val(char *s, float x, int numeric)
{
    if (!numeric) {
        *s++ = '1';
        return s;
    }
    unsigned i = (unsigned)lrintf(x * (float)S_NUMERIC_STEPS);
    *s++ = '0';
    *s++ = '.';
    *s++ = (char)('0' + i / 100);
    *s++ = (char)('0' + i / 10 % 10);
    *s++ = (char)('0' + i % 10);
    return s;
}

/* Bytes one line can take in any format: label, and per field a field
 * number, an index and a value with separators. */
static size_t s_line_max(int F)
{
    return 8 + (size_t)F * (3 * 21 + 8);
}

static void s_write_line(s_out *o, int fmt, const s_model *m, int label, const uint64_t *idx,
                         const float *val)
{
    char *s = s_out_reserve(o, s_line_max(m->F)), *s0 = s;
    *s++ = label ? '1' : '0';
    for (int f = 0; f < m->F; f++) {
        int numeric = f < m->nnum;
        if (fmt == 2) { /* csv: the value, or the global index as the category */
            *s++ = ',';
            s = numeric ? s_put_val(s, val[f], 1) : s_put_u64(s, idx[f]);
            continue;
        }
        *s++ = ' ';
        if (fmt == 1) {
            s = s_put_u64(s, (uint64_t)f);
            *s++ = ':';
        }
        s = s_put_u64(s, idx[f]);
        *s++ = ':';
        s = s_put_val(s, val[f], numeric);
    }
    *s++ = '\n';
    o->n += (size_t)(s - s0);
}

static void s_write_header(s_out *o, const s_model *m)
{
    char *s = s_out_reserve(o, s_line_max(m->F));
    int n = snprintf(s, 8, "label");
    for (int f = 0; f < m->F; f++)
        n += f < m->nnum ? snprintf(s + n, 24, ",I%d", f + 1)
                         : snprintf(s + n, 24, ",C%d", f - m->nnum + 1);
    s[n++] = '\n';
    o->n += (size_t)n;
}

/* ------------------------------------------------------------------------
 * Generation
 * ------------------------------------------------------------------------ */

static int s_validate(const cm_synth_ctr_params *p, cm_error *err)
{
    if (p->n_lines < 1)
        return cm_error_set(err, CM_EINVAL, "gen: lines must be at least 1");
    if (p->n_fields < 1 || p->n_fields > S_MAX_FIELDS)
        return cm_error_set(err, CM_EINVAL, "gen: fields must be within [1, %d], got %d",
                            S_MAX_FIELDS, p->n_fields);
    if (p->n_numeric < 0 || p->n_numeric > p->n_fields)
        return cm_error_set(err, CM_EINVAL, "gen: numeric fields must be within [0, fields=%d], "
                            "got %d", p->n_fields, p->n_numeric);
    uint64_t C = (uint64_t)(p->n_fields - p->n_numeric);
    if (p->vocab_min < 1 || p->vocab_min > UINT32_MAX)
        return cm_error_set(err, CM_EINVAL, "gen: vocab_min must be within [1, %u]", UINT32_MAX);
    if (C > 0 && (p->features < C * p->vocab_min || p->features > (uint64_t)UINT32_MAX))
        return cm_error_set(err, CM_EINVAL, "gen: features must be within [categorical fields x "
                            "vocab_min = %llu, %u], got %llu",
                            (unsigned long long)(C * p->vocab_min), UINT32_MAX,
                            (unsigned long long)p->features);
    if (p->rank < 0 || p->rank > S_MAX_RANK)
        return cm_error_set(err, CM_EINVAL, "gen: rank must be within [0, %d], got %d",
                            S_MAX_RANK, p->rank);
    if (!(isfinite(p->zipf) && p->zipf >= 0))
        return cm_error_set(err, CM_EINVAL, "gen: zipf must be a finite number >= 0, got %g",
                            p->zipf);
    if (!(isfinite(p->signal) && p->signal >= 0 && p->signal <= 20))
        return cm_error_set(err, CM_EINVAL, "gen: signal must be within [0, 20], got %g",
                            p->signal);
    if (!(p->pair_share >= 0 && p->pair_share <= 1))
        return cm_error_set(err, CM_EINVAL, "gen: pair_share must be within [0, 1], got %g",
                            p->pair_share);
    if (!(p->ctr > 0 && p->ctr < 1))
        return cm_error_set(err, CM_EINVAL, "gen: ctr must be within (0, 1), got %g", p->ctr);
    if (!(p->test_fraction >= 0.0 && p->test_fraction <= 1.0))
        return cm_error_set(err, CM_EINVAL, "gen: test_fraction must be within [0, 1], got %g",
                            p->test_fraction);
    if (!(p->formats & (CM_CTR_LIBSVM | CM_CTR_LIBFFM | CM_CTR_CSV)))
        return cm_error_set(err, CM_EINVAL, "gen: no output format chosen");
    return 0;
}

static int s_write_info(const cm_synth_ctr_params *p, const s_model *m,
                        const cm_synth_ctr_report *rep, cm_error *err)
{
    FILE *f = fopen(rep->info_path, "w");
    if (!f)
        return cm_error_set(err, CM_EIO, "gen: %s: %s", rep->info_path, strerror(errno));
    fprintf(f,
            "# psrec gen --ctr: a planted logistic FM; bayes_* are the planted "
            "probabilities' scores\n"
            "seed=%llu\nlines=%llu\nfields=%d\nnumeric=%d\nfeatures=%llu\nvocab_min=%llu\n"
            "zipf=%g\nrank=%d\nsignal=%g\npair_share=%g\nctr=%g\ntest_fraction=%g\n"
            "bias=%.6f\ntrain_lines=%llu\ntest_lines=%llu\ntrain_clicks=%llu\n"
            "test_clicks=%llu\nmean_p=%.6f\nbayes_auc=%.6f\nbayes_logloss=%.6f\n",
            (unsigned long long)p->seed, (unsigned long long)p->n_lines, p->n_fields,
            p->n_numeric, (unsigned long long)m->n_feat, (unsigned long long)p->vocab_min,
            p->zipf, p->rank, p->signal, p->pair_share, p->ctr, p->test_fraction, m->bias,
            (unsigned long long)rep->n_train, (unsigned long long)rep->n_test,
            (unsigned long long)rep->clicks_train, (unsigned long long)rep->clicks_test,
            rep->mean_p, rep->bayes_auc, rep->bayes_logloss);
    fprintf(f, "field_sizes=");
    for (int i = 0; i < m->F; i++)
        fprintf(f, "%s%llu", i ? "," : "", (unsigned long long)m->size[i]);
    fprintf(f, "\n");
    int bad = ferror(f);
    if (fclose(f) != 0 || bad)
        return cm_error_set(err, CM_EIO, "gen: %s: write failed", rep->info_path);
    return 0;
}

/* The output files of every asked-for format, train and test (libffm's
 * with its header line). */
static int s_open_outputs(const cm_synth_ctr_params *p, const s_model *m,
                          const cm_synth_ctr_report *rep, s_out out[3][2], cm_error *err)
{
    for (int f = 0; f < 3; f++) {
        if (!(p->formats & (1u << f)))
            continue;
        int rc;
        if ((rc = s_out_open(&out[f][0], rep->train_path[f], err)) != 0 ||
            (rc = s_out_open(&out[f][1], rep->test_path[f], err)) != 0)
            return rc;
        if (f == 2) {
            s_write_header(&out[f][0], m);
            s_write_header(&out[f][1], m);
        }
    }
    return 0;
}

/* What the true model scores on the lines written, per side (0 train, 1
 * test): AUC histograms, log loss and probability sums. */
typedef struct {
    uint64_t *pos[2], *neg[2];
    double ll[2], sp[2];
} s_tally;

/* Every line: drawn, labelled by the true model, split, written in each
 * format and scored; the counts and the Bayes scores into rep. */
static int s_write_lines(const cm_synth_ctr_params *p, const s_model *m, s_out out[3][2],
                         cm_synth_ctr_report *rep, cm_error *err)
{
    s_tally ty = {{NULL, NULL}, {NULL, NULL}, {0, 0}, {0, 0}};
    uint64_t *idx = malloc((size_t)m->F * sizeof *idx);
    float *val = malloc((size_t)m->F * sizeof *val);
    double *acc = malloc((size_t)(m->k > 0 ? m->k : 1) * sizeof *acc);
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        ty.pos[s] = calloc(CM_AUC_BINS, sizeof *ty.pos[s]);
        ty.neg[s] = calloc(CM_AUC_BINS, sizeof *ty.neg[s]);
        if (!ty.pos[s] || !ty.neg[s])
            rc = CM_ENOMEM;
    }
    if (rc != 0 || !idx || !val || !acc) {
        rc = cm_error_set(err, CM_ENOMEM, "gen: out of memory");
        goto out;
    }
    cm_rng rf, rl, rs;
    s_stream(&rf, p->seed, S_STREAM_FEATURES);
    s_stream(&rl, p->seed, S_STREAM_LABELS);
    s_stream(&rs, p->seed, S_STREAM_SPLIT);
    for (uint64_t t = 0; t < p->n_lines; t++) {
        double lin, pair;
        s_draw_line(m, &rf, idx, val);
        s_logit_parts(m, idx, val, acc, &lin, &pair);
        double prob = s_sigmoid(m->bias + lin + pair);
        int label = cm_rng_uniform(&rl) < prob;
        int test = cm_rng_uniform(&rs) < p->test_fraction;
        if (test) {
            rep->n_test++;
            rep->clicks_test += (uint64_t)label;
        } else {
            rep->n_train++;
            rep->clicks_train += (uint64_t)label;
        }
        cm_auc_add(ty.pos[test], ty.neg[test], (float)prob, label);
        ty.ll[test] += cm_logloss((float)prob, label);
        ty.sp[test] += prob;
        for (int f = 0; f < 3; f++)
            if (out[f][test].f)
                s_write_line(&out[f][test], f, m, label, idx, val);
    }
    /* scored on the test lines, or on the train lines if there are none */
    int on_test = rep->n_test > 0;
    uint64_t n_eval = on_test ? rep->n_test : rep->n_train;
    rep->bayes_auc = cm_auc_from_hist(ty.pos[on_test], ty.neg[on_test]);
    rep->bayes_logloss = ty.ll[on_test] / (double)n_eval;
    rep->mean_p = ty.sp[on_test] / (double)n_eval;
out:
    for (int s = 0; s < 2; s++) {
        free(ty.pos[s]);
        free(ty.neg[s]);
    }
    free(idx);
    free(val);
    free(acc);
    return rc;
}

int cm_synth_ctr_write(const cm_synth_ctr_params *p, const char *prefix,
                       cm_synth_ctr_report *rep, cm_error *err)
{
    cm_error local;
    if (!err)
        err = &local;
    cm_synth_ctr_report dummy;
    if (!rep)
        rep = &dummy;
    memset(rep, 0, sizeof *rep);
    int rc = s_validate(p, err);
    if (rc != 0)
        return rc;
    int l = snprintf(rep->info_path, sizeof rep->info_path, "%s.info", prefix);
    if (l < 0 || (size_t)l + 16 >= sizeof rep->info_path)
        return cm_error_set(err, CM_EINVAL, "gen: output prefix is too long");
    for (int f = 0; f < 3; f++)
        if (p->formats & (1u << f)) {
            snprintf(rep->train_path[f], sizeof rep->train_path[f], "%s.train.%s", prefix,
                     s_ext[f]);
            snprintf(rep->test_path[f], sizeof rep->test_path[f], "%s.test.%s", prefix,
                     s_ext[f]);
        }

    s_model m;
    s_out out[3][2];
    memset(out, 0, sizeof out);
    if ((rc = s_model_build(&m, p)) != 0 || (rc = s_model_calibrate(&m, p)) != 0) {
        rc = cm_error_set(err, rc, "gen: cannot allocate the model for %llu features, rank %d",
                          (unsigned long long)p->features, p->rank);
        goto out;
    }
    if ((rc = s_open_outputs(p, &m, rep, out, err)) != 0 ||
        (rc = s_write_lines(p, &m, out, rep, err)) != 0)
        goto out;
    rep->n_features = m.n_feat;
    rep->bias = m.bias;
    for (int f = 0; f < 3; f++)
        for (int s = 0; s < 2; s++)
            if ((rc = s_out_close(&out[f][s], err)) != 0)
                goto out;
    rc = s_write_info(p, &m, rep, err);
out:
    if (rc != 0) {
        for (int f = 0; f < 3; f++)
            for (int s = 0; s < 2; s++) {
                s_out_abandon(&out[f][s]);
                if (p->formats & (1u << f))
                    remove(s ? rep->test_path[f] : rep->train_path[f]);
            }
    }
    s_model_free(&m);
    return rc;
}
