/* deep: an MLP over concatenated field embeddings (see deep.h).
 *
 * Forward, per layer l on the batch X (n x in):  Z = X.W_l^T + b_l, then
 * ReLU for hidden layers; the output layer is linear (n x 1).
 * Backward from g = dL/dy (n x 1), for l = L-1 .. 0 with D = dL/dZ_l:
 *   dW_l += D^T.X,  db_l += column sums of D,  dX = D.W_l,
 *   and D for layer l-1 is dX masked by (A_{l-1} > 0): A is post-ReLU, so
 *   A > 0 exactly where Z > 0 (the subgradient at Z = 0 is taken as 0).
 * FM part (fm_term), s_c = sum_f e_fc:
 *   y += sum_f lin_f + 1/2 sum_c (s_c^2 - sum_f e_fc^2)
 *   dy/de_fc = s_c - e_fc,  dy/dlin_f = 1. */
#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/features.h"
#include "worker/models/deep.h"
#include "worker/models/model.h"

#define S_ALIGN_BYTES 64
#define S_MAX_WIDTH (1 << 16)       /* widest layer or F*k we accept */
#define S_MAX_BATCH (1 << 24)
#define S_DENSE_ROW 64              /* floats per dense-table row, small nets */
#define S_DENSE_MAX_ROWS 256        /* larger nets get longer rows instead */

struct wk_mlp {
    wk_mlp_params p;                                  /* the net's shape */
    int max_batch;                                    /* largest n accepted */
    int n_layers;                                     /* n_hidden + 1 */
    wk_mlp_layer_info layer[WK_MLP_MAX_HIDDEN + 1];   /* offsets into the weights */
    float *act[WK_MLP_MAX_HIDDEN];                    /* post-ReLU output of hidden layer l */
    float *err[2];                                    /* ping-pong dL/dZ, max_batch x widest */
    float *y;                                         /* outputs, then dL/dy (max_batch) */
    float *s;                                         /* FM: sum of field embeddings (k) */
    void *block;                                      /* one allocation holding all of it */
};

/* ---------------------------------------------------------------------------
 * Shape and layout
 * ------------------------------------------------------------------------- */

static size_t s_round(size_t n)
{
    return (n + WK_MLP_ALIGN - 1) / WK_MLP_ALIGN * WK_MLP_ALIGN;
}

wk_mlp_params wk_mlp_params_default(void)
{
    return (wk_mlp_params){.n_fields = 2, .k = 8, .n_hidden = 2, .hidden = {64, 32}};
}

int wk_mlp_check(const wk_mlp_params *p, cm_error *err)
{
    if (!p)
        return cm_error_set(err, CM_EINVAL, "mlp: no params");
    if (p->n_fields < 1 || p->k < 1 || (long)p->n_fields * p->k > S_MAX_WIDTH)
        return cm_error_set(err, CM_EINVAL, "mlp: n_fields %d x k %d must be in [1, %d]",
                            p->n_fields, p->k, S_MAX_WIDTH);
    if (p->n_hidden < 0 || p->n_hidden > WK_MLP_MAX_HIDDEN)
        return cm_error_set(err, CM_EINVAL, "mlp: n_hidden %d must be in [0, %d]", p->n_hidden,
                            WK_MLP_MAX_HIDDEN);
    for (int l = 0; l < p->n_hidden; l++)
        if (p->hidden[l] < 1 || p->hidden[l] > S_MAX_WIDTH)
            return cm_error_set(err, CM_EINVAL, "mlp: hidden[%d] = %d must be in [1, %d]", l,
                                p->hidden[l], S_MAX_WIDTH);
    if (p->fm_term != 0 && p->fm_term != 1)
        return cm_error_set(err, CM_EINVAL, "mlp: fm_term %d must be 0 or 1", p->fm_term);
    return 0;
}

int wk_mlp_n_layers(const wk_mlp_params *p)
{
    return p->n_hidden + 1;
}

wk_mlp_layer_info wk_mlp_layer(const wk_mlp_params *p, int l)
{
    assert(l >= 0 && l <= p->n_hidden);
    size_t off = 0;
    int in = p->n_fields * p->k;
    for (int i = 0;; i++) {
        const int out = i < p->n_hidden ? p->hidden[i] : 1;
        wk_mlp_layer_info li = {.w_off = off, .b_off = off + s_round((size_t)out * in),
                                .in = in, .out = out};
        if (i == l)
            return li;
        off = li.b_off + s_round((size_t)out);
        in = out;
    }
}

size_t wk_mlp_n_weights(const wk_mlp_params *p)
{
    wk_mlp_layer_info last = wk_mlp_layer(p, p->n_hidden);
    return last.b_off + s_round((size_t)last.out);
}

size_t wk_mlp_n_rows(const wk_mlp_params *p, int row_floats)
{
    assert(row_floats > 0);
    return (wk_mlp_n_weights(p) + (size_t)row_floats - 1) / (size_t)row_floats;
}

void wk_mlp_init_spec(const wk_mlp_params *p, cm_dense_init *out)
{
    memset(out, 0, sizeof *out);
    for (int l = 0; l <= p->n_hidden; l++) {
        const wk_mlp_layer_info li = wk_mlp_layer(p, l);
        const double std = l < p->n_hidden ? sqrt(2.0 / li.in) : sqrt(2.0 / (li.in + li.out));
        out->seg[out->n++] = (cm_dense_seg){li.w_off, (uint64_t)li.out * li.in, std};
    }
}

void wk_mlp_init_weights(const wk_mlp_params *p, uint64_t seed, float *w)
{
    cm_dense_init d;
    wk_mlp_init_spec(p, &d);
    cm_dense_init_fill(&d, seed, 0, wk_mlp_n_weights(p), w);
}

void wk_mlp_init_row(const wk_mlp_params *p, uint64_t seed, int row_floats, size_t r,
                     float *out)
{
    assert(row_floats > 0);
    cm_dense_init d;
    wk_mlp_init_spec(p, &d);
    cm_dense_init_fill(&d, seed, r * (uint64_t)row_floats, (size_t)row_floats, out);
}

int wk_mlp_row_floats(const wk_mlp_params *p)
{
    const size_t n = wk_mlp_n_weights(p), per = (n + S_DENSE_MAX_ROWS - 1) / S_DENSE_MAX_ROWS;
    return per <= S_DENSE_ROW ? S_DENSE_ROW : (int)s_round(per);
}

/* ---------------------------------------------------------------------------
 * Object
 * ------------------------------------------------------------------------- */

/* The activation block of a net of p for batches of nb: every buffer's
 * offset (hidden activations, two error buffers of the widest layer, y,
 * s) in off[] when not NULL, and the total floats. */
static size_t s_block_layout(const wk_mlp_params *p, size_t nb, size_t *off)
{
    int widest = p->n_fields * p->k;
    for (int l = 0; l < p->n_hidden; l++)
        if (p->hidden[l] > widest)
            widest = p->hidden[l];
    size_t total = 0;
    int nbuf = 0;
    for (int l = 0; l < p->n_hidden; l++) {
        if (off)
            off[nbuf++] = total;
        total += s_round(nb * p->hidden[l]);
    }
    for (int i = 0; i < 2; i++) {
        if (off)
            off[nbuf++] = total;
        total += s_round(nb * widest);
    }
    if (off)
        off[nbuf++] = total;
    total += s_round(nb);
    if (off)
        off[nbuf++] = total;
    total += s_round((size_t)p->k);
    return total;
}

size_t wk_mlp_bytes(const wk_mlp_params *p, int max_batch)
{
    return sizeof(wk_mlp) + s_block_layout(p, (size_t)max_batch, NULL) * sizeof(float);
}

wk_mlp *wk_mlp_new(const wk_mlp_params *p, int max_batch, cm_error *err)
{
    if (wk_mlp_check(p, err) < 0)
        return NULL;
    if (max_batch < 1 || max_batch > S_MAX_BATCH) {
        cm_error_set(err, CM_EINVAL, "mlp: max_batch %d must be in [1, %d]", max_batch,
                     S_MAX_BATCH);
        return NULL;
    }
    wk_mlp *m = calloc(1, sizeof *m);
    if (!m) {
        cm_error_set(err, CM_ENOMEM, "mlp: out of memory");
        return NULL;
    }
    m->p = *p;
    m->max_batch = max_batch;
    m->n_layers = wk_mlp_n_layers(p);
    for (int l = 0; l < m->n_layers; l++)
        m->layer[l] = wk_mlp_layer(p, l);

    /* One block; every buffer starts on a 64-byte boundary. */
    size_t off[WK_MLP_MAX_HIDDEN + 4];
    const size_t total = s_block_layout(p, (size_t)max_batch, off);

    m->block = aligned_alloc(S_ALIGN_BYTES, total * sizeof(float));
    if (!m->block) {
        free(m);
        cm_error_set(err, CM_ENOMEM, "mlp: out of memory for %zu floats of activations", total);
        return NULL;
    }
    float *base = m->block;
    int b = 0;
    for (int l = 0; l < p->n_hidden; l++)
        m->act[l] = base + off[b++];
    m->err[0] = base + off[b++];
    m->err[1] = base + off[b++];
    m->y = base + off[b++];
    m->s = base + off[b++];
    return m;
}

void wk_mlp_destroy(wk_mlp **m)
{
    if (!m || !*m)
        return;
    free((*m)->block);
    free(*m);
    *m = NULL;
}

const wk_mlp_params *wk_mlp_get_params(const wk_mlp *m)
{
    return &m->p;
}

/* ---------------------------------------------------------------------------
 * Math
 * ------------------------------------------------------------------------- */

/* FM part of example j's output; leaves s_c = sum_f e_fc in m->s. */
static float s_fm(wk_mlp *m, const float *e, const float *lin)
{
    const int F = m->p.n_fields, k = m->p.k;
    float *s = m->s, sq = 0.f, ss = 0.f, y = 0.f;
    memset(s, 0, (size_t)k * sizeof *s);
    for (int f = 0; f < F; f++) {
        y += lin[f];
        for (int c = 0; c < k; c++) {
            const float v = e[f * k + c];
            s[c] += v;
            sq += v * v;
        }
    }
    for (int c = 0; c < k; c++)
        ss += s[c] * s[c];
    return y + 0.5f * (ss - sq);
}

/* Outputs of the batch into m->y; hidden activations kept for backward. */
static void s_forward(wk_mlp *m, const float *w, const float *emb, const float *lin, int n)
{
    const float *x = emb;
    for (int l = 0; l < m->n_layers; l++) {
        const wk_mlp_layer_info *li = &m->layer[l];
        const int hidden = l < m->p.n_hidden;
        float *z = hidden ? m->act[l] : m->y;
        const float *b = w + li->b_off;
        for (int j = 0; j < n; j++)
            memcpy(z + (size_t)j * li->out, b, (size_t)li->out * sizeof *z);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, li->out, li->in, 1.f, x, li->in,
                    w + li->w_off, li->in, 1.f, z, li->out);
        if (hidden)
            for (size_t i = 0; i < (size_t)n * li->out; i++)
                z[i] = z[i] > 0.f ? z[i] : 0.f;
        x = z;
    }
    if (m->p.fm_term) {
        const int F = m->p.n_fields, Fk = F * m->p.k;
        for (int j = 0; j < n; j++)
            m->y[j] += s_fm(m, emb + (size_t)j * Fk, lin + (size_t)j * F);
    }
}

double wk_mlp_forward_backward(wk_mlp *m, const float *w, const float *emb, const float *lin,
                               const float *label, int n, int task, float *grad_w,
                               float *grad_emb, float *grad_lin, float *score)
{
    assert(n >= 0 && n <= m->max_batch);
    assert(!m->p.fm_term || (lin && grad_lin));
    if (n == 0)
        return 0;
    s_forward(m, w, emb, lin, n);

    double loss = 0;
    float *g = m->y;
    for (int j = 0; j < n; j++) {
        if (score)
            score[j] = m->y[j];
        loss += wk_model_loss(task, m->y[j], label[j], &g[j]);
    }

    /* D = dL/dZ of the current layer; ping-pong through err[]. */
    const float *d = g;
    int pp = 0;
    for (int l = m->n_layers - 1; l >= 0; l--) {
        const wk_mlp_layer_info *li = &m->layer[l];
        const float *x = l > 0 ? m->act[l - 1] : emb;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, li->out, li->in, n, 1.f, d, li->out,
                    x, li->in, 1.f, grad_w + li->w_off, li->in);
        float *gb = grad_w + li->b_off;
        for (int j = 0; j < n; j++)
            for (int o = 0; o < li->out; o++)
                gb[o] += d[(size_t)j * li->out + o];
        float *dx = l > 0 ? m->err[pp] : grad_emb;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, li->in, li->out, 1.f, d, li->out,
                    w + li->w_off, li->in, 0.f, dx, li->in);
        if (l > 0)
            for (size_t i = 0; i < (size_t)n * li->in; i++)
                dx[i] = x[i] > 0.f ? dx[i] : 0.f;
        d = dx;
        pp ^= 1;
    }

    if (m->p.fm_term) {
        const int F = m->p.n_fields, k = m->p.k;
        for (int j = 0; j < n; j++) {
            const float *e = emb + (size_t)j * F * k;
            float *ge = grad_emb + (size_t)j * F * k;
            s_fm(m, e, lin + (size_t)j * F);
            for (int f = 0; f < F; f++) {
                grad_lin[(size_t)j * F + f] = g[j];
                for (int c = 0; c < k; c++)
                    ge[f * k + c] += g[j] * (m->s[c] - e[f * k + c]);
            }
        }
    }
    return loss;
}

void wk_mlp_predict(wk_mlp *m, const float *w, const float *emb, const float *lin, int n,
                    float *score)
{
    assert(n >= 0 && n <= m->max_batch);
    assert(!m->p.fm_term || lin);
    if (n == 0)
        return;
    s_forward(m, w, emb, lin, n);
    memcpy(score, m->y, (size_t)n * sizeof *score);
}
