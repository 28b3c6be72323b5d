/* Single-process baseline for the sparse benchmark: FM or FFM with
 * logistic loss, trained one example at a time by AdaGrad on a dense table
 * indexed by feature number, several threads updating it without locks
 * (Hogwild, as LIBFFM and xLearn do), no cluster around it.
 *
 * Reads the libsvm (fm) or libffm (ffm) files psrec trains on with psrec's
 * own loaders, and uses psrec's defaults for the update (AdaGrad with an
 * accumulator per weight starting at 0.1, lr 0.07, l2 0.01 per occurrence,
 * initial factors N(0, 0.05^2), the bias row unregularised), so the ratio
 * of psrec's figure to this one is what the parameter-server machinery
 * costs. Each epoch walks a fixed shuffle of the training lines, cut into
 * one contiguous range per thread. Prints per epoch examples/s of training
 * alone (wall), the train log loss, test AUC and log loss; then one summary
 * line ("summary ...") that bench/sparse_bench.sh reads.
 *
 *   build/fm_baseline TRAIN TEST [--model fm|ffm] [--threads T] [--epochs E]
 *       [--dim K] [--lr X] [--l2 X] [--init_std X] [--seed S] */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/features.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/rng.h"

#define S_INIT_ACCUM 0.1f
#define S_EPS 1e-8f
#define S_MAX_THREADS 64
#define S_MAX_DIM 1024

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    int ffm;
    int dim;              /* k */
    uint32_t nf;          /* fields (ffm) */
    size_t row;           /* weights per feature: 1 + k (fm), 1 + F k (ffm) */
    size_t stride;        /* 2 * row: a feature's weights, then their accumulators,
                             side by side so that one feature is one stretch of
                             memory */
    uint64_t n_rows;      /* feature numbers 0..n_rows-1 */
    float *w;             /* n_rows * stride */
    float bias, bias_a;   /* the global bias and its accumulator */
    float lr, l2;
} s_model;

static float s_sigmoid(float z)
{
    return z >= 0 ? 1.0f / (1.0f + expf(-z)) : expf(z) / (1.0f + expf(z));
}

static inline void s_step(float *w, float *a, float g, float lr)
{
    *a += g * g;
    *w -= lr * g / sqrtf(*a + S_EPS);
}

/* The logit of example [b, e); s: k scratch floats (fm: sum of v x). */
static float s_score(const s_model *m, const cm_examples *ex, uint64_t b, uint64_t e, float *s)
{
    const int k = m->dim;
    float z = m->bias;
    if (!m->ffm) {
        float sq = 0.0f;
        for (int d = 0; d < k; d++)
            s[d] = 0.0f;
        for (uint64_t j = b; j < e; j++) {
            const float *r = m->w + ex->key[j] * m->stride, x = ex->val[j];
            z += r[0] * x;
            for (int d = 0; d < k; d++) {
                float t = r[1 + d] * x;
                s[d] += t;
                sq += t * t;
            }
        }
        float dot = 0.0f;
        for (int d = 0; d < k; d++)
            dot += s[d] * s[d];
        return z + 0.5f * (dot - sq);
    }
    for (uint64_t j = b; j < e; j++) {
        const float *ri = m->w + ex->key[j] * m->stride;
        z += ri[0] * ex->val[j];
        for (uint64_t l = j + 1; l < e; l++) {
            const float *vi = ri + 1 + (size_t)ex->field[l] * k;
            const float *vl = m->w + ex->key[l] * m->stride + 1 + (size_t)ex->field[j] * k;
            float dot = 0.0f;
            for (int d = 0; d < k; d++)
                dot += vi[d] * vl[d];
            z += dot * ex->val[j] * ex->val[l];
        }
    }
    return z;
}

/* One AdaGrad step on example i; returns its log loss. */
static double s_train_one(s_model *m, const cm_examples *ex, size_t i, float *s)
{
    const uint64_t b = ex->row_at[i], e = ex->row_at[i + 1];
    const int k = m->dim;
    const float lr = m->lr, l2 = m->l2;
    float p = s_sigmoid(s_score(m, ex, b, e, s));
    int y = ex->label[i] > 0.5f;
    float g = p - (float)y;
    s_step(&m->bias, &m->bias_a, g, lr);
    for (uint64_t j = b; j < e; j++) {
        float *w = m->w + ex->key[j] * m->stride, *a = w + m->row, x = ex->val[j];
        s_step(&w[0], &a[0], g * x + l2 * w[0], lr);
        if (!m->ffm)
            for (int d = 0; d < k; d++)
                s_step(&w[1 + d], &a[1 + d], g * x * (s[d] - w[1 + d] * x) + l2 * w[1 + d],
                       lr);
    }
    if (m->ffm) {
        for (uint64_t j = b; j < e; j++)
            for (uint64_t l = j + 1; l < e; l++) {
                float *vj = m->w + ex->key[j] * m->stride + 1 + (size_t)ex->field[l] * k;
                float *vl = m->w + ex->key[l] * m->stride + 1 + (size_t)ex->field[j] * k;
                float *aj = vj + m->row, *al = vl + m->row;
                float gx = g * ex->val[j] * ex->val[l];
                for (int d = 0; d < k; d++) {
                    float gj = gx * vl[d] + l2 * vj[d], gl = gx * vj[d] + l2 * vl[d];
                    s_step(&vj[d], &aj[d], gj, lr);
                    s_step(&vl[d], &al[d], gl, lr);
                }
            }
    }
    return cm_logloss(p, y);
}

typedef struct {
    s_model *m;
    const cm_examples *ex;
    const uint32_t *order;
    size_t begin, end;
    double loss;
} s_job;

static void *s_worker(void *arg)
{
    s_job *j = arg;
    float s[S_MAX_DIM];
    double loss = 0.0;
    for (size_t t = j->begin; t < j->end; t++)
        loss += s_train_one(j->m, j->ex, j->order[t], s);
    j->loss = loss;
    return NULL;
}

static void s_eval(const s_model *m, const cm_examples *te, double *auc, double *ll)
{
    float *score = malloc(te->n * sizeof *score);
    float s[S_MAX_DIM];
    double sum = 0.0;
    for (size_t i = 0; i < te->n; i++) {
        float p = s_sigmoid(s_score(m, te, te->row_at[i], te->row_at[i + 1], s));
        if (score)
            score[i] = p;
        sum += cm_logloss(p, te->label[i] > 0.5f);
    }
    *auc = score ? cm_auc_exact(score, te->label, te->n) : -1;
    *ll = te->n ? sum / (double)te->n : -1;
    free(score);
}

static uint64_t s_max_key(const cm_examples *ex)
{
    uint64_t mx = 0;
    for (size_t j = 0; j < ex->nnz; j++)
        if (ex->key[j] > mx)
            mx = ex->key[j];
    return mx;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TRAIN TEST [--model fm|ffm] [--threads T] [--epochs E] "
                        "[--dim K] [--lr X] [--l2 X] [--init_std X] [--seed S]\n", argv[0]);
        return 2;
    }
    const char *train = argv[1], *test = argv[2], *model = "fm";
    int threads = 2, epochs = 5, dim = 16;
    double lr = 0.07, l2 = 0.01, init_std = 0.05;
    unsigned long long seed = 1;
    for (int i = 3; i + 1 < argc; i += 2) {
        const char *o = argv[i], *v = argv[i + 1];
        if (!strcmp(o, "--model"))
            model = v;
        else if (!strcmp(o, "--threads"))
            threads = atoi(v);
        else if (!strcmp(o, "--epochs"))
            epochs = atoi(v);
        else if (!strcmp(o, "--dim"))
            dim = atoi(v);
        else if (!strcmp(o, "--lr"))
            lr = atof(v);
        else if (!strcmp(o, "--l2"))
            l2 = atof(v);
        else if (!strcmp(o, "--init_std"))
            init_std = atof(v);
        else if (!strcmp(o, "--seed"))
            seed = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "unknown option %s\n", o);
            return 2;
        }
    }
    int ffm = !strcmp(model, "ffm");
    if ((!ffm && strcmp(model, "fm")) || threads < 1 || threads > S_MAX_THREADS || dim < 1 ||
        dim > S_MAX_DIM || epochs < 1) {
        fprintf(stderr, "bad options (model fm|ffm, threads 1..%d, dim 1..%d, epochs >= 1)\n",
                S_MAX_THREADS, S_MAX_DIM);
        return 2;
    }
    cm_log_set_level(CM_LOG_WARN);
    cm_feat_opts o = cm_feat_opts_default();
    o.task = CM_TASK_BINARY;
    cm_examples tr = {0}, te = {0};
    cm_error err;
    double t0 = s_now();
    int rc = ffm ? cm_examples_load_libffm(train, &o, &tr, &err)
                 : cm_examples_load_libsvm(train, &o, &tr, &err);
    if (rc == 0 && ffm)
        o.n_fields = tr.n_fields;
    if (rc == 0)
        rc = ffm ? cm_examples_load_libffm(test, &o, &te, &err)
                 : cm_examples_load_libsvm(test, &o, &te, &err);
    if (rc != 0) {
        fprintf(stderr, "fm_baseline: %s\n", err.msg);
        return 1;
    }
    double t_load = s_now() - t0;

    s_model m = {.ffm = ffm, .dim = dim, .nf = ffm ? tr.n_fields : 0, .lr = (float)lr,
                 .l2 = (float)l2, .bias_a = S_INIT_ACCUM};
    m.row = 1 + (size_t)dim * (ffm ? m.nf : 1);
    m.stride = 2 * m.row;
    uint64_t mk = s_max_key(&tr), mt = s_max_key(&te);
    m.n_rows = (mk > mt ? mk : mt) + 1;
    m.w = malloc(m.n_rows * m.stride * sizeof *m.w);
    uint32_t *order = malloc(tr.n * sizeof *order);
    if (!m.w || !order) {
        fprintf(stderr, "fm_baseline: out of memory for %llu rows of %zu floats\n",
                (unsigned long long)m.n_rows, m.row);
        return 1;
    }
    cm_rng r;
    cm_rng_seed(&r, seed);
    for (uint64_t i = 0; i < m.n_rows; i++) {
        float *w = m.w + i * m.stride;
        w[0] = 0.0f;
        cm_rng_normals_f32(&r, w + 1, (int)(m.row - 1), (float)init_std);
        for (size_t d = 0; d < m.row; d++)
            w[m.row + d] = S_INIT_ACCUM;
    }
    for (size_t i = 0; i < tr.n; i++)
        order[i] = (uint32_t)i;
    cm_rng_shuffle_u32(&r, order, tr.n);
    printf("fm_baseline: %s k=%d, %zu train and %zu test lines, %llu rows, %d threads, "
           "loaded in %.2f s\n",
           model, dim, tr.n, te.n, (unsigned long long)m.n_rows, threads, t_load);

    s_job jobs[S_MAX_THREADS];
    pthread_t th[S_MAX_THREADS];
    double rate_sum = 0, train_secs = 0, auc = -1, ll = -1;
    int rate_n = 0;
    for (int e = 1; e <= epochs; e++) {
        double t1 = s_now();
        for (int t = 0; t < threads; t++) {
            jobs[t] = (s_job){&m, &tr, order, tr.n * (size_t)t / (size_t)threads,
                              tr.n * (size_t)(t + 1) / (size_t)threads, 0};
            if (pthread_create(&th[t], NULL, s_worker, &jobs[t]) != 0) {
                fprintf(stderr, "fm_baseline: cannot start thread %d\n", t);
                return 1;
            }
        }
        double loss = 0;
        for (int t = 0; t < threads; t++) {
            pthread_join(th[t], NULL);
            loss += jobs[t].loss;
        }
        double secs = s_now() - t1;
        train_secs += secs;
        s_eval(&m, &te, &auc, &ll);
        double rate = (double)tr.n / secs;
        if (e > 1 || epochs == 1) {
            rate_sum += rate;
            rate_n++;
        }
        printf("epoch %3d/%d  train_logloss %.4f  test_auc %.4f  test_logloss %.4f  "
               "%.0f ex/s  %.2f s\n",
               e, epochs, loss / (double)tr.n, auc, ll, rate, secs);
        fflush(stdout);
    }
    printf("summary examples_per_s %.0f train_seconds %.2f test_auc %.4f test_logloss %.4f "
           "wall %.2f\n",
           rate_sum / rate_n, train_secs, auc, ll, s_now() - t0);
    free(m.w);
    free(order);
    cm_examples_free(&tr);
    cm_examples_free(&te);
    return 0;
}
