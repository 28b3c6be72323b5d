/* The deep model as the worker sees it: NCF / DeepFM on field embeddings.
 *
 * Two tables (docs/deep.md, "On the servers"):
 *   0 "feature"  a row per feature, [w, v_1 .. v_k] as in fm.c;
 *   1 "dense"    the MLP's flat weight array (deep.h layout) in rows of R
 *                floats keyed 0..n_rows-1, created by the servers from the
 *                table spec's declarative dense init (wk_mlp_init_spec), so
 *                the net starts from wk_mlp_init_weights(params,
 *                wk_deep_seed(job)) on any number of servers.
 * Per example the embedding of field f is the value-weighted sum of its
 * features' v (e_f = sum_{i in f} x_i v_i) and its first-order weight
 * lin_f = sum_{i in f} x_i w_i; wk_mlp does the rest on the whole batch.
 * Chain rule back to a feature i of field f: dL/dv_i = x_i dL/de_f,
 * dL/dw_i = x_i dL/dlin_f (fm_term only), plus l2 on the row per
 * occurrence as in fm.c. The net's weights occur in every example, so
 * they get l2 per example: n l2 w per batch of n added to wk_mlp's
 * gradient, and the sum is then divided by n (the batch's mean loss; the
 * dense table's rate is lr / workers) (without it the MLP memorises a small training set within a
 * few epochs; docs/deep.md has the figures). The context's offset (the
 * training mean, for regression) is added to the output, so the output
 * bias starts near 0. The global bias row of the batch is not used: the
 * output layer's bias plays its part. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/features.h"
#include "common/hash.h"
#include "worker/models/deep.h"
#include "worker/models/model.h"

#define S_DENSE_NAME 0x64656e7365ULL /* "dense" */

int wk_deep_params(const cm_job *job, wk_mlp_params *p, cm_error *err)
{
    memset(p, 0, sizeof *p);
    if (job->fields < 1)
        return cm_error_set(err, CM_ECONFIG,
                            "deep: fields is %d: the field count must be known (set fields, "
                            "or let the launcher read it from the data)",
                            job->fields);
    p->n_fields = job->fields;
    p->k = job->dim;
    p->fm_term = job->fm_term ? 1 : 0;
    const char *s = job->hidden;
    while (*s == ' ')
        s++;
    while (*s) {
        if (p->n_hidden == WK_MLP_MAX_HIDDEN)
            return cm_error_set(err, CM_ECONFIG, "hidden: '%s' has more than %d layers",
                                job->hidden, WK_MLP_MAX_HIDDEN);
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 1 || v > 65536)
            return cm_error_set(err, CM_ECONFIG,
                                "hidden: '%s' is not a list of layer widths in [1, 65536] "
                                "(e.g. 64,32)",
                                job->hidden);
        p->hidden[p->n_hidden++] = (int)v;
        s = end;
        while (*s == ' ')
            s++;
        if (*s == ',') {
            s++;
            while (*s == ' ')
                s++;
            if (!*s)
                return cm_error_set(err, CM_ECONFIG, "hidden: '%s' ends with a comma",
                                    job->hidden);
        } else if (*s) {
            return cm_error_set(err, CM_ECONFIG,
                                "hidden: '%s' is not a list of layer widths (e.g. 64,32)",
                                job->hidden);
        }
    }
    cm_error e = {0};
    if (wk_mlp_check(p, &e) != 0)
        return cm_error_set(err, CM_ECONFIG, "deep: %s", e.msg);
    return 0;
}

uint64_t wk_deep_seed(const cm_job *job)
{
    return cm_mix64(job->seed ^ S_DENSE_NAME);
}

/* A stand-in net for a job whose keys are wrong, so that table_params,
 * which cannot fail, still gives sane tables; the launcher and the worker
 * report the error before anything trains. */
static wk_mlp_params s_params(const cm_job *job)
{
    wk_mlp_params p;
    if (wk_deep_params(job, &p, NULL) != 0) {
        p = wk_mlp_params_default();
        p.n_fields = 1;
        p.k = job->dim > 0 ? job->dim : 1;
        p.n_hidden = 0;
    }
    return p;
}

static void s_table_params(const cm_job *job, size_t t, cm_table_spec *out)
{
    memset(out, 0, sizeof *out);
    if (t == 0) {
        out->dim = job->dim + 1;
        out->zero_prefix = 1;
        out->init_std = (float)job->init_std;
        out->seed = job->seed * 2 + 1;
        wk_model_table_common(job, out);
        return;
    }
    const wk_mlp_params p = s_params(job);
    out->dim = wk_mlp_row_floats(&p);
    out->seed = wk_deep_seed(job);
    wk_model_table_common(job, out);
    /* every batch touches every dense row: admission would drop the
     * net's gradients and eviction would forget its weights */
    out->min_count = 0;
    out->ttl = 0;
    out->max_rows = 0;
    /* the net's initialisation as data: the servers make each row from
     * it without the model's code */
    wk_mlp_init_spec(&p, &out->dense);
    /* every worker's every batch steps the whole net, each step from
     * nearly the same weights: W workers would move it W times as far per
     * round as one (a frappe MLP with 32 workers collapsed to a constant,
     * AUC 0.5). Each push is 1/W of a step, as data-parallel training
     * averages its workers' gradients (docs/deep.md, "Many workers"). */
    if (job->workers > 1)
        out->optim.lr /= (float)job->workers;
}

static size_t s_dense_rows(const cm_job *job)
{
    const wk_mlp_params p = s_params(job);
    return wk_mlp_n_rows(&p, wk_mlp_row_floats(&p));
}

/* ---------------------------------------------------------------------------
 * Batches
 * ------------------------------------------------------------------------- */

typedef struct {
    wk_mlp *mlp;
    wk_mlp_params p;
    int max_batch;
    size_t n_weights;
    float *emb, *lin, *gemb, *glin, *target;   /* max_batch x (F k | F | 1) */
} s_scratch;

static void s_scratch_destroy(void **ps)
{
    if (!ps || !*ps)
        return;
    s_scratch *s = *ps;
    wk_mlp_destroy(&s->mlp);
    free(s->emb);
    free(s->lin);
    free(s->gemb);
    free(s->glin);
    free(s->target);
    free(s);
    *ps = NULL;
}

size_t wk_deep_scratch_bytes(const wk_mlp_params *p, int max_batch)
{
    const size_t n = (size_t)max_batch, F = (size_t)p->n_fields, Fk = F * (size_t)p->k;
    /* emb, gemb, lin, glin, target: as s_scratch_new makes them */
    return sizeof(s_scratch) + wk_mlp_bytes(p, max_batch) +
           n * (2 * Fk + 2 * F + 1) * sizeof(float);
}

static void *s_scratch_new(const cm_job *job, int max_batch, cm_error *err)
{
    s_scratch *s = calloc(1, sizeof *s);
    if (!s) {
        cm_error_set(err, CM_ENOMEM, "deep: out of memory");
        return NULL;
    }
    if (wk_deep_params(job, &s->p, err) != 0 || !(s->mlp = wk_mlp_new(&s->p, max_batch, err)))
        goto fail;
    s->max_batch = max_batch;
    s->n_weights = wk_mlp_n_weights(&s->p);
    const size_t n = (size_t)max_batch, F = (size_t)s->p.n_fields, Fk = F * s->p.k;
    s->emb = malloc(n * Fk * sizeof *s->emb);
    s->gemb = malloc(n * Fk * sizeof *s->gemb);
    s->lin = malloc(n * F * sizeof *s->lin);
    s->glin = malloc(n * F * sizeof *s->glin);
    s->target = malloc(n * sizeof *s->target);
    if (!s->emb || !s->gemb || !s->lin || !s->glin || !s->target) {
        cm_error_set(err, CM_ENOMEM, "deep: out of memory for batches of %d", max_batch);
        goto fail;
    }
    return s;
fail:;
    void *v = s;
    s_scratch_destroy(&v);
    return NULL;
}

/* Field f of occurrence a; a batch without fields is all field 0, and a
 * field past the net's (which the loaders reject) joins the last one. */
static int s_field(const wk_sparse_extra *x, int n_fields, uint64_t a)
{
    if (!x->field)
        return 0;
    return x->field[a] < (uint32_t)n_fields ? (int)x->field[a] : n_fields - 1;
}

/* Pooled field embeddings and first-order weights of examples
 * [first, first + n) into s->emb and s->lin. */
static void s_pool(s_scratch *s, const wk_sparse_batch *b, const wk_sparse_extra *xb,
                   size_t first, int n, int dim, const float *rows)
{
    const int F = s->p.n_fields, k = s->p.k;
    memset(s->emb, 0, (size_t)n * F * k * sizeof *s->emb);
    memset(s->lin, 0, (size_t)n * F * sizeof *s->lin);
    for (int j = 0; j < n; j++)
        for (uint64_t a = b->at[first + j]; a < b->at[first + j + 1]; a++) {
            const int f = s_field(xb, F, a);
            const float *r = rows + (size_t)b->idx[a] * dim, x = b->val[a];
            float *e = s->emb + ((size_t)j * F + f) * k;
            s->lin[(size_t)j * F + f] += x * r[0];
            for (int c = 0; c < k; c++)
                e[c] += x * r[1 + c];
        }
}

static double s_train_ext(const wk_model_ctx *ctx, int task, const wk_sparse_batch *b,
                          const wk_sparse_extra *d, int dim, const float *rows, float *grads)
{
    s_scratch *s = d->scratch;
    const int F = s->p.n_fields, k = s->p.k;
    const float off = task == CM_TASK_BINARY ? 0.f : ctx->offset, l2 = ctx->l2;
    double loss = 0;
    for (size_t first = 0; first < b->n; first += (size_t)s->max_batch) {
        const int n = (int)(b->n - first < (size_t)s->max_batch ? b->n - first
                                                                 : (size_t)s->max_batch);
        s_pool(s, b, d, first, n, dim, rows);
        for (int j = 0; j < n; j++)
            s->target[j] = b->label[first + j] - off;
        loss += wk_mlp_forward_backward(s->mlp, d->dense, s->emb, s->lin, s->target, n, task,
                                        d->dense_grads, s->gemb, s->glin, NULL);
        for (int j = 0; j < n; j++)
            for (uint64_t a = b->at[first + j]; a < b->at[first + j + 1]; a++) {
                const int f = s_field(d, F, a);
                const float *r = rows + (size_t)b->idx[a] * dim, x = b->val[a];
                float *g = grads + (size_t)b->idx[a] * dim;
                const float *ge = s->gemb + ((size_t)j * F + f) * k;
                g[0] += (s->p.fm_term ? x * s->glin[(size_t)j * F + f] : 0.f) + l2 * r[0];
                for (int c = 0; c < k; c++)
                    g[1 + c] += x * ge[c] + l2 * r[1 + c];
            }
        /* the net occurs in every example: l2 per example, as the rows
         * get it per occurrence (padding is 0 and stays 0). After the last
         * chunk the net's gradient is of the batch's mean loss: summed over
         * 256 examples it dwarfs AdaGrad's starting accumulator, and every
         * first step is then +-lr on every weight whatever the gradient.
         * One pass does both (scale 1 before the last chunk is exact). */
        const float dl2 = l2 * (float)n;
        const float scale = first + (size_t)n >= b->n ? 1.f / (float)b->n : 1.f;
        for (size_t i = 0; i < s->n_weights; i++)
            d->dense_grads[i] = (d->dense_grads[i] + dl2 * d->dense[i]) * scale;
    }
    return loss;
}

static void s_predict_ext(const wk_model_ctx *ctx, const wk_sparse_batch *b,
                          const wk_sparse_extra *d, int dim, const float *rows, float *score)
{
    s_scratch *s = d->scratch;
    const float off = ctx ? ctx->offset : 0.f;
    for (size_t first = 0; first < b->n; first += (size_t)s->max_batch) {
        const int n = (int)(b->n - first < (size_t)s->max_batch ? b->n - first
                                                                 : (size_t)s->max_batch);
        s_pool(s, b, d, first, n, dim, rows);
        wk_mlp_predict(s->mlp, d->dense, s->emb, s->lin, n, score + first);
        for (int j = 0; j < n; j++)
            score[first + j] += off;
    }
}

static const char *const s_table_names[] = {"feature", "dense"};

const wk_model_ops wk_model_deep = {
    .name = "deep",
    .n_tables = 2,
    .table_names = s_table_names,
    .table_params = s_table_params,
    .dense_rows = s_dense_rows,
    .scratch_new = s_scratch_new,
    .scratch_destroy = s_scratch_destroy,
    .train_ext = s_train_ext,
    .predict_ext = s_predict_ext,
};
