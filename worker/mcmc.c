/* mcmc: Gibbs sampling of a Bayesian FM (see mcmc.h for the model).
 *
 * Layout. The training rows are kept twice: by example (CSR, for q and the
 * predictions) and by feature (CSC: for feature j the examples it occurs
 * in and its values there), since every draw of w_j or v_jf sums over the
 * examples of j. e (residual per example) and q (n x dim) are the caches
 * the draws keep up to date.
 *
 * Hyper-priors, as libFM's defaults: alpha ~ Gamma(1/2, 1/2) before the
 * data (alpha_0 = beta_0 = 1), and for every group and factor a
 * normal-gamma on (mu, lambda) with mu_0 = 0, gamma_0 = 1, alpha_l =
 * beta_l = 1. w0 has a flat prior. Gamma(a, b) below is shape a, rate b. */
#include "worker/mcmc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"

#define S_A0 1.0      /* alpha_0, beta_0: the noise precision's prior */
#define S_GAMMA0 1.0  /* gamma_0: how strongly mu is pulled to mu_0 = 0 */
#define S_AL 1.0      /* alpha_lambda, beta_lambda */

struct wk_mcmc {
    int dim, binary;
    size_t n, n_feat;
    uint32_t n_groups;
    uint32_t *group;          /* n_feat */
    uint32_t *group_size;     /* n_groups */
    /* by example */
    uint64_t *at;
    uint32_t *idx;
    float *val;
    float *label;
    /* by feature */
    uint64_t *col_at;         /* n_feat + 1 */
    uint32_t *col_row;
    float *col_val;
    /* the draw */
    double w0, alpha;
    double *w;                /* n_feat */
    double *v;                /* n_feat x dim */
    double *mu_w, *lambda_w;  /* n_groups */
    double *mu_v, *lambda_v;  /* n_groups x dim */
    /* caches */
    double *target;           /* n: the label, or the latent probit target */
    double *e;                /* n: y(x_i) - target_i */
    double *q;                /* n x dim */
    double *sum, *sum2;       /* n_groups (x dim) scratch for the hyper draws */
    cm_rng rng;
};

double wk_mcmc_probit(double x)
{
    return 0.5 * erfc(-x / sqrt(2.0));
}

void wk_mcmc_destroy(wk_mcmc **pm)
{
    if (!pm || !*pm)
        return;
    wk_mcmc *m = *pm;
    free(m->group);
    free(m->group_size);
    free(m->at);
    free(m->idx);
    free(m->val);
    free(m->label);
    free(m->col_at);
    free(m->col_row);
    free(m->col_val);
    free(m->w);
    free(m->v);
    free(m->mu_w);
    free(m->lambda_w);
    free(m->mu_v);
    free(m->lambda_v);
    free(m->target);
    free(m->e);
    free(m->q);
    free(m->sum);
    free(m->sum2);
    free(m);
    *pm = NULL;
}

/* The examples by feature (a counting sort of the non-zeros). */
static int s_columns(wk_mcmc *m)
{
    const size_t nnz = m->at[m->n];
    m->col_at = calloc(m->n_feat + 1, sizeof *m->col_at);
    m->col_row = malloc((nnz + 1) * sizeof *m->col_row);
    m->col_val = malloc((nnz + 1) * sizeof *m->col_val);
    if (!m->col_at || !m->col_row || !m->col_val)
        return CM_ENOMEM;
    for (size_t a = 0; a < nnz; a++)
        if (m->idx[a] != WK_MCMC_UNSEEN)
            m->col_at[m->idx[a] + 1]++;
    for (size_t j = 0; j < m->n_feat; j++)
        m->col_at[j + 1] += m->col_at[j];
    uint64_t *fill = malloc((m->n_feat + 1) * sizeof *fill);
    if (!fill)
        return CM_ENOMEM;
    memcpy(fill, m->col_at, (m->n_feat + 1) * sizeof *fill);
    for (size_t i = 0; i < m->n; i++)
        for (uint64_t a = m->at[i]; a < m->at[i + 1]; a++) {
            const uint32_t j = m->idx[a];
            if (j == WK_MCMC_UNSEEN)
                continue;
            m->col_row[fill[j]] = (uint32_t)i;
            m->col_val[fill[j]++] = m->val[a];
        }
    free(fill);
    return 0;
}

/* y(x_i) of the current draw from its parts (q_i must be current). */
static double s_score(const wk_mcmc *m, const uint64_t *at, const uint32_t *idx,
                      const float *val, size_t i, const double *q)
{
    double y = m->w0, sq = 0, q2 = 0;
    const int k = m->dim;
    for (uint64_t a = at[i]; a < at[i + 1]; a++) {
        const uint32_t j = idx[a];
        if (j == WK_MCMC_UNSEEN)
            continue;
        const double x = val[a];
        y += m->w[j] * x;
        const double *vj = m->v + (size_t)j * k;
        for (int f = 0; f < k; f++)
            sq += vj[f] * vj[f] * x * x;
    }
    for (int f = 0; f < k; f++)
        q2 += q[f] * q[f];
    return y + 0.5 * (q2 - sq);
}

/* q_i of the current draw. */
static void s_q(const wk_mcmc *m, const uint64_t *at, const uint32_t *idx, const float *val,
                size_t i, double *q)
{
    const int k = m->dim;
    for (int f = 0; f < k; f++)
        q[f] = 0;
    for (uint64_t a = at[i]; a < at[i + 1]; a++) {
        const uint32_t j = idx[a];
        if (j == WK_MCMC_UNSEEN)
            continue;
        const double *vj = m->v + (size_t)j * k;
        for (int f = 0; f < k; f++)
            q[f] += vj[f] * val[a];
    }
}

wk_mcmc *wk_mcmc_new(const wk_mcmc_params *p, const wk_mcmc_rows *train, size_t n_features,
                     cm_error *err)
{
    if (!p || !train || p->dim < 1 || p->n_groups < 1 || train->n == 0 || n_features == 0 ||
        n_features >= WK_MCMC_UNSEEN || train->n >= UINT32_MAX || !(p->init_std >= 0)) {
        cm_error_set(err, CM_EINVAL,
                     "mcmc: needs dim >= 1, groups >= 1, init_std >= 0 and some training "
                     "examples and features (dim %d, %zu examples, %zu features)",
                     p ? p->dim : 0, train ? train->n : 0, n_features);
        return NULL;
    }
    wk_mcmc *m = calloc(1, sizeof *m);
    if (!m) {
        cm_error_set(err, CM_ENOMEM, "mcmc: out of memory");
        return NULL;
    }
    const int k = p->dim;
    const size_t n = train->n, nnz = train->at[n], G = p->n_groups;
    m->dim = k;
    m->binary = p->binary;
    m->n = n;
    m->n_feat = n_features;
    m->n_groups = p->n_groups;
    cm_rng_seed(&m->rng, p->seed);
    m->group = calloc(n_features, sizeof *m->group);
    m->group_size = calloc(G, sizeof *m->group_size);
    m->at = malloc((n + 1) * sizeof *m->at);
    m->idx = malloc((nnz + 1) * sizeof *m->idx);
    m->val = malloc((nnz + 1) * sizeof *m->val);
    m->label = malloc(n * sizeof *m->label);
    m->w = calloc(n_features, sizeof *m->w);
    m->v = malloc(n_features * (size_t)k * sizeof *m->v);
    m->mu_w = calloc(G, sizeof *m->mu_w);
    m->lambda_w = malloc(G * sizeof *m->lambda_w);
    m->mu_v = calloc(G * (size_t)k, sizeof *m->mu_v);
    m->lambda_v = malloc(G * (size_t)k * sizeof *m->lambda_v);
    m->target = malloc(n * sizeof *m->target);
    m->e = malloc(n * sizeof *m->e);
    m->q = malloc(n * (size_t)k * sizeof *m->q);
    m->sum = malloc(G * (size_t)k * sizeof *m->sum);
    m->sum2 = malloc(G * (size_t)k * sizeof *m->sum2);
    if (!m->group || !m->group_size || !m->at || !m->idx || !m->val || !m->label || !m->w ||
        !m->v || !m->mu_w || !m->lambda_w || !m->mu_v || !m->lambda_v || !m->target || !m->e ||
        !m->q || !m->sum || !m->sum2) {
        cm_error_set(err, CM_ENOMEM, "mcmc: out of memory for %zu examples, %zu features",
                     n, n_features);
        goto fail;
    }
    memcpy(m->at, train->at, (n + 1) * sizeof *m->at);
    memcpy(m->idx, train->idx, nnz * sizeof *m->idx);
    memcpy(m->val, train->val, nnz * sizeof *m->val);
    memcpy(m->label, train->label, n * sizeof *m->label);
    for (size_t a = 0; a < nnz; a++)
        if (m->idx[a] != WK_MCMC_UNSEEN && m->idx[a] >= n_features) {
            cm_error_set(err, CM_EINVAL, "mcmc: feature id %u of %zu features",
                         (unsigned)m->idx[a], n_features);
            goto fail;
        }
    for (size_t j = 0; j < n_features; j++) {
        const uint32_t g = p->group ? p->group[j] : 0;
        if (g >= G) {
            cm_error_set(err, CM_EINVAL, "mcmc: feature %zu in group %u of %zu", j,
                         (unsigned)g, G);
            goto fail;
        }
        m->group[j] = g;
        m->group_size[g]++;
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(m->label[i]) || (m->binary && m->label[i] != 0 && m->label[i] != 1)) {
            cm_error_set(err, CM_EINVAL, "mcmc: example %zu has label %g%s", i,
                         (double)m->label[i], m->binary ? " (binary needs 0 or 1)" : "");
            goto fail;
        }
    if (s_columns(m) != 0) {
        cm_error_set(err, CM_ENOMEM, "mcmc: out of memory for the feature index");
        goto fail;
    }
    for (size_t j = 0; j < n_features * (size_t)k; j++)
        m->v[j] = p->init_std * cm_rng_normal(&m->rng);
    for (size_t g = 0; g < G; g++) {
        m->lambda_w[g] = 1;
        for (int f = 0; f < k; f++)
            m->lambda_v[g * (size_t)k + f] = 1;
    }
    m->alpha = 1;
    for (size_t i = 0; i < n; i++) {
        /* binary: the latent target starts on its label's side */
        m->target[i] = m->binary ? (m->label[i] > 0.5f ? 1.0 : -1.0) : m->label[i];
        double *qi = m->q + i * (size_t)k;
        s_q(m, m->at, m->idx, m->val, i, qi);
        m->e[i] = s_score(m, m->at, m->idx, m->val, i, qi) - m->target[i];
    }
    return m;
fail:
    wk_mcmc_destroy(&m);
    return NULL;
}

/* Draws theta given the rest: sh2 = sum h^2, she = sum h (theta h - e)
 * over the examples it occurs in, prior N(mu, 1/lambda). */
static double s_draw(wk_mcmc *m, double sh2, double she, double mu, double lambda)
{
    const double s2 = 1.0 / (m->alpha * sh2 + lambda);
    return s2 * (m->alpha * she + mu * lambda) + sqrt(s2) * cm_rng_normal(&m->rng);
}

/* mu, lambda of one prior given its parameters' sum and sum of squares
 * (count of them: size), normal-gamma: lambda first from the current mu,
 * then mu given lambda. */
static void s_hyper(wk_mcmc *m, double sum, double sum2, size_t size, double *mu,
                    double *lambda)
{
    const double c = (double)size;
    /* sum (theta - mu)^2 + gamma_0 mu^2 */
    const double dev = sum2 - 2 * *mu * sum + c * *mu * *mu + S_GAMMA0 * *mu * *mu;
    *lambda = cm_rng_gamma(&m->rng, 0.5 * (S_AL + c + 1)) / (0.5 * (S_AL + (dev > 0 ? dev : 0)));
    const double prec = (c + S_GAMMA0) * *lambda;
    *mu = sum / (c + S_GAMMA0) + cm_rng_normal(&m->rng) / sqrt(prec);
}

static void s_draw_hypers(wk_mcmc *m)
{
    const size_t G = m->n_groups, k = (size_t)m->dim;
    /* alpha: the residuals' precision */
    if (!m->binary) {
        double se = 0;
        for (size_t i = 0; i < m->n; i++)
            se += m->e[i] * m->e[i];
        m->alpha = cm_rng_gamma(&m->rng, 0.5 * (S_A0 + (double)m->n)) / (0.5 * (S_A0 + se));
    }
    memset(m->sum, 0, G * sizeof *m->sum);
    memset(m->sum2, 0, G * sizeof *m->sum2);
    for (size_t j = 0; j < m->n_feat; j++) {
        m->sum[m->group[j]] += m->w[j];
        m->sum2[m->group[j]] += m->w[j] * m->w[j];
    }
    for (size_t g = 0; g < G; g++)
        s_hyper(m, m->sum[g], m->sum2[g], m->group_size[g], &m->mu_w[g], &m->lambda_w[g]);
    memset(m->sum, 0, G * k * sizeof *m->sum);
    memset(m->sum2, 0, G * k * sizeof *m->sum2);
    for (size_t j = 0; j < m->n_feat; j++) {
        const double *vj = m->v + j * k;
        double *s = m->sum + m->group[j] * k, *s2 = m->sum2 + m->group[j] * k;
        for (size_t f = 0; f < k; f++) {
            s[f] += vj[f];
            s2[f] += vj[f] * vj[f];
        }
    }
    for (size_t g = 0; g < G; g++)
        for (size_t f = 0; f < k; f++)
            s_hyper(m, m->sum[g * k + f], m->sum2[g * k + f], m->group_size[g],
                    &m->mu_v[g * k + f], &m->lambda_v[g * k + f]);
}

/* Binary: the latent targets, N(y(x_i), 1) truncated to the label's side. */
static void s_draw_targets(wk_mcmc *m)
{
    for (size_t i = 0; i < m->n; i++) {
        const double y = m->e[i] + m->target[i];
        /* z = y + d, d ~ N(0,1) with z > 0 (label 1) or z < 0 (label 0) */
        const double z = m->label[i] > 0.5f ? y + cm_rng_normal_above(&m->rng, -y)
                                            : y - cm_rng_normal_above(&m->rng, y);
        m->target[i] = z;
        m->e[i] = y - z;
    }
}

int wk_mcmc_sweep(wk_mcmc *m, cm_error *err)
{
    const size_t k = (size_t)m->dim;
    if (m->binary)
        s_draw_targets(m);
    s_draw_hypers(m);
    /* w0: h = 1 everywhere, flat prior */
    double she = 0;
    for (size_t i = 0; i < m->n; i++)
        she += m->w0 - m->e[i];
    const double w0 = s_draw(m, (double)m->n, she, 0, 0);
    for (size_t i = 0; i < m->n; i++)
        m->e[i] += w0 - m->w0;
    m->w0 = w0;
    /* w_j: h_i = x_ij */
    for (size_t j = 0; j < m->n_feat; j++) {
        const double old = m->w[j];
        double sh2 = 0;
        she = 0;
        for (uint64_t a = m->col_at[j]; a < m->col_at[j + 1]; a++) {
            const double h = m->col_val[a];
            sh2 += h * h;
            she += h * (old * h - m->e[m->col_row[a]]);
        }
        const uint32_t g = m->group[j];
        const double w = s_draw(m, sh2, she, m->mu_w[g], m->lambda_w[g]);
        for (uint64_t a = m->col_at[j]; a < m->col_at[j + 1]; a++)
            m->e[m->col_row[a]] += (w - old) * m->col_val[a];
        m->w[j] = w;
        if (!isfinite(w))
            return cm_error_set(err, CM_ERANGE, "mcmc: w of feature %zu is not finite", j);
    }
    /* v_jf: h_i = x_ij (q_if - v_jf x_ij) */
    for (size_t f = 0; f < k; f++)
        for (size_t j = 0; j < m->n_feat; j++) {
            const double old = m->v[j * k + f];
            double sh2 = 0;
            she = 0;
            for (uint64_t a = m->col_at[j]; a < m->col_at[j + 1]; a++) {
                const size_t i = m->col_row[a];
                const double x = m->col_val[a], h = x * (m->q[i * k + f] - old * x);
                sh2 += h * h;
                she += h * (old * h - m->e[i]);
            }
            const uint32_t g = m->group[j];
            const double v = s_draw(m, sh2, she, m->mu_v[g * k + f], m->lambda_v[g * k + f]);
            for (uint64_t a = m->col_at[j]; a < m->col_at[j + 1]; a++) {
                const size_t i = m->col_row[a];
                const double x = m->col_val[a], h = x * (m->q[i * k + f] - old * x);
                m->e[i] += (v - old) * h;
                m->q[i * k + f] += (v - old) * x;
            }
            m->v[j * k + f] = v;
            if (!isfinite(v))
                return cm_error_set(err, CM_ERANGE,
                                    "mcmc: factor %zu of feature %zu is not finite", f, j);
        }
    if (!isfinite(m->w0) || !isfinite(m->alpha))
        return cm_error_set(err, CM_ERANGE, "mcmc: w0 %g or alpha %g is not finite", m->w0,
                            m->alpha);
    return 0;
}

int wk_mcmc_predict(const wk_mcmc *m, const wk_mcmc_rows *rows, double *out)
{
    double *q = malloc((size_t)m->dim * sizeof *q);
    if (!q)
        return CM_ENOMEM;
    for (size_t i = 0; i < rows->n; i++) {
        s_q(m, rows->at, rows->idx, rows->val, i, q);
        out[i] = s_score(m, rows->at, rows->idx, rows->val, i, q);
    }
    free(q);
    return 0;
}

double wk_mcmc_train_loss(const wk_mcmc *m)
{
    double s = 0;
    for (size_t i = 0; i < m->n; i++) {
        const double y = m->e[i] + m->target[i];
        if (m->binary) {
            double p = wk_mcmc_probit(y);
            p = p < 1e-15 ? 1e-15 : p > 1 - 1e-15 ? 1 - 1e-15 : p;
            s -= m->label[i] > 0.5f ? log(p) : log(1 - p);
        } else {
            s += (y - m->label[i]) * (y - m->label[i]);
        }
    }
    return m->binary ? s / (double)m->n : sqrt(s / (double)m->n);
}

double wk_mcmc_alpha(const wk_mcmc *m)
{
    return m->alpha;
}

double wk_mcmc_w0(const wk_mcmc *m)
{
    return m->w0;
}
