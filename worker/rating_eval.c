#include "worker/rating_eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/msg.h"
#include "worker/evalset.h"
#include "worker/reglearn.h"

/* Test ratings per evaluation chunk: one pull of at most this many rows
 * per table. */
#define S_EVAL_CHUNK 131072

struct wk_rating_eval {
    const wk_shard *shard;
    const wk_model_ops *model;
    const int *dims;
    wk_kv *kv;
    wk_blocks *blocks;        /* blocks schedule; NULL: minibatch */
    const wk_params *p;
    wk_evalset *evalset;      /* the test rows' chunks */
    wk_pull reqs[2];          /* the pull in flight */
    float *erows[2][2];       /* [set][table]: chunk c's rows are in set c % 2 */
    float *epred;
    unsigned char *eknown[2]; /* per distinct key of a chunk: a row the servers know */
    uint32_t **eplace;        /* blocks: per chunk, its users' places among the held
                                 rows (wk_blocks_user_places), found once */
    float ***eitem;           /* blocks, shared item rows: per chunk, each item's row
                                 in the servers' memory (NULL: none), found once */
};

static void s_free_eitem(wk_rating_eval *e)
{
    for (size_t c = 0; e->eitem && c < wk_evalset_count(e->evalset); c++)
        free(e->eitem[c]);
    free(e->eitem);
    e->eitem = NULL;
}

/* Where each chunk's item rows sit in the servers' memory, asked once
 * (without making rows): evaluation follows training, by when every item
 * with a training rating has its row, and rows never move. Where the rows
 * cannot be reached so, evaluation pulls them by messages. */
static int s_places(wk_rating_eval *e, cm_error *err)
{
    const size_t n_chunks = wk_evalset_count(e->evalset);
    if (!(e->eitem = calloc(n_chunks + 1, sizeof *e->eitem)))
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for evaluation places");
    cm_error why = {0};
    for (size_t c = 0; c < n_chunks; c++) {
        const wk_eval_chunk *ch = wk_evalset_chunk(e->evalset, c);
        if (!(e->eitem[c] = malloc((ch->n_uniq[1] + 1) * sizeof **e->eitem))) {
            s_free_eitem(e);
            return cm_error_set(err, CM_ENOMEM, "worker: out of memory for evaluation places");
        }
        int rc = wk_kv_place(e->kv, 1, ch->uniq[1], ch->n_uniq[1], 0, e->eitem[c], &why);
        if (rc == CM_ENOTSUP) {
            s_free_eitem(e);
            cm_log(CM_LOG_DEBUG, "worker %u: evaluation pulls item rows (%s)", e->p->index,
                   why.msg);
            return 0;
        }
        if (rc != 0) {
            s_free_eitem(e);
            return cm_error_set(err, rc, "%s", why.msg);
        }
    }
    return 0;
}

wk_rating_eval *wk_rating_eval_new(const wk_params *p, const wk_shard *shard,
                                   const wk_model_ops *model, const int *dims, wk_kv *kv,
                                   wk_blocks *blocks, cm_error *err)
{
    wk_rating_eval *e = calloc(1, sizeof *e);
    if (!e) {
        cm_error_set(err, CM_ENOMEM, "worker: out of memory for evaluation rows");
        return NULL;
    }
    *e = (wk_rating_eval){.shard = shard, .model = model, .dims = dims, .kv = kv,
                          .blocks = blocks, .p = p};
    return e;
}

/* At the first run: the chunks, the row buffers, and where the rows are
 * read from when they are not pulled. */
static int s_setup(wk_rating_eval *e, cm_error *err)
{
    const cm_ratings *test = &e->shard->test;
    if (!(e->evalset = wk_evalset_new(test, S_EVAL_CHUNK, err)))
        return err ? err->code : CM_ENOMEM;
    size_t most = test->n < S_EVAL_CHUNK ? test->n : S_EVAL_CHUNK;
    e->epred = malloc((most + 1) * sizeof *e->epred);
    int ok = e->epred != NULL;
    for (int t = 0; t < 4; t++) {
        size_t rows = wk_evalset_max_uniq(e->evalset, t % 2) + 1;
        e->erows[t / 2][t % 2] = malloc(rows * (size_t)e->dims[t % 2] * sizeof(float));
        ok = ok && e->erows[t / 2][t % 2];
        if (t < 2)
            ok = ok && (e->eknown[t] = malloc(rows));
    }
    /* blocks: where each chunk's users sit among the held rows, once */
    const size_t n_chunks = wk_evalset_count(e->evalset);
    wk_blocks *blocks = e->blocks;
    if (ok && blocks && (ok = (e->eplace = calloc(n_chunks + 1, sizeof *e->eplace)) != NULL))
        for (size_t c = 0; ok && c < n_chunks; c++) {
            const wk_eval_chunk *ch = wk_evalset_chunk(e->evalset, c);
            if ((ok = (e->eplace[c] = malloc((ch->n_uniq[0] + 1) * sizeof **e->eplace)) != NULL))
                wk_blocks_user_places(blocks, ch->uniq[0], ch->n_uniq[0], e->eplace[c]);
        }
    if (!ok)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for evaluation rows");
    if (blocks && wk_blocks_items_shared(blocks) && wk_blocks_holds_users(blocks))
        return s_places(e, err);
    return 0;
}

void wk_rating_eval_destroy(wk_rating_eval **pe)
{
    if (!pe || !*pe)
        return;
    wk_rating_eval *e = *pe;
    for (size_t c = 0; e->eplace && c < wk_evalset_count(e->evalset); c++)
        free(e->eplace[c]);
    free(e->eplace);
    s_free_eitem(e);
    wk_evalset_destroy(&e->evalset);
    for (int t = 0; t < 4; t++)
        free(e->erows[t / 2][t % 2]);
    free(e->epred);
    free(e->eknown[0]);
    free(e->eknown[1]);
    free(e);
    *pe = NULL;
}

/* A row that was never trained reads back as zeros (NO_CREATE pull). */
static int s_row_known(const float *row, int dim)
{
    for (int k = 0; k < dim; k++)
        if (row[k] != 0.f)
            return 1;
    return 0;
}

/* A row's dim weights into out, or zeros for a row nobody has (NULL). */
static void s_put_row(float *out, const float *row, size_t dim)
{
    if (row)
        memcpy(out, row, dim * sizeof *out);
    else
        memset(out, 0, dim * sizeof *out);
}

/* Blocks schedule: the rows of chunk c's users from the rows this worker
 * holds (users it does not hold read as zeros, as a pull without creating
 * would give), so evaluation needs no write-back. */
static void s_local_user_rows(wk_rating_eval *e, size_t c, float *out)
{
    const size_t dim = (size_t)e->dims[0], n = wk_evalset_chunk(e->evalset, c)->n_uniq[0];
    for (size_t k = 0; k < n; k++)
        s_put_row(out + k * dim, wk_blocks_user_row_at(e->blocks, e->eplace[c][k]), dim);
}

/* Blocks schedule with shared item rows: chunk c's item rows read from
 * the servers' memory (an item no server has reads as zeros, as a pull
 * without creating would give). */
static void s_placed_item_rows(wk_rating_eval *e, size_t c, float *out)
{
    const size_t dim = (size_t)e->dims[1], n = wk_evalset_chunk(e->evalset, c)->n_uniq[1];
    for (size_t k = 0; k < n; k++)
        s_put_row(out + k * dim, e->eitem[c][k], dim);
}

/* Starts the pull of chunk c's rows into set c % 2 (items only when the
 * users are held here). */
static int s_pull_start(wk_rating_eval *e, size_t c, int local, cm_error *err)
{
    const wk_eval_chunk *ch = wk_evalset_chunk(e->evalset, c);
    size_t n = 0;
    for (int t = local ? 1 : 0; t < 2; t++)
        e->reqs[n++] = (wk_pull){(uint32_t)t, ch->uniq[t], ch->n_uniq[t], e->erows[c % 2][t],
                                 CM_PULL_NO_CREATE, 0};
    return wk_kv_pull_start(e->kv, e->reqs, n, err);
}

/* Learned l2 (reglearn.h): the chunk's validation ratings scored again
 * with every pulled row scaled by 1 +- eps. */
static int s_reg_chunk(wk_rating_eval *e, const wk_model_ctx *ctx, const wk_eval_chunk *ch,
                       const float *const *rows, const wk_batch *b, wk_reg_sums *reg,
                       cm_error *err)
{
    const size_t n0 = ch->n_uniq[0] * (size_t)e->dims[0];
    const size_t n1 = ch->n_uniq[1] * (size_t)e->dims[1];
    float *buf = malloc((n0 + n1 + 2 * ch->n + 1) * sizeof *buf);
    if (!buf)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for learning l2");
    float *up = buf + n0 + n1, *down = up + ch->n;
    const float *scaled[2] = {buf, buf + n0};
    for (int k = 0; k < 2; k++) {
        const float t = k == 0 ? 1.f + WK_REG_EPS : 1.f - WK_REG_EPS;
        wk_reg_scale(rows[0], buf, n0, t);
        wk_reg_scale(rows[1], buf + n0, n1, t);
        e->model->predict(ctx, b, e->dims[0], scaled, k == 0 ? up : down);
    }
    /* the validation ratings are the shard's last ones (from n_test on) */
    const size_t n_test = e->shard->n_test;
    const size_t from = ch->first >= n_test ? 0 : n_test - ch->first;
    wk_reg_add(reg, 0, e->epred + from, up + from, down + from, b->label + from, ch->n - from);
    free(buf);
    return 0;
}

int wk_rating_eval_run(wk_rating_eval *e, uint32_t epoch, wk_model_ctx *ctx,
                       cm_eval_done *out, cm_error *err)
{
    int rc;
    const int learn = e->p->job->regularization == 1;
    wk_reg_sums sums = {0}, *reg = learn ? &sums : NULL;
    if (!e->evalset && (rc = s_setup(e, err)) != 0)
        return rc;
    const cm_ratings *d = &e->shard->test;
    const size_t n_test = e->shard->n_test;
    double sq = 0, ab = 0, vsq = 0, vab = 0;
    size_t unseen = 0;
    /* blocks: the users' rows are here and may be newer than the servers';
     * with shared item rows (placed) nothing is pulled */
    const int local = e->blocks && wk_blocks_holds_users(e->blocks);
    const int placed = local && e->eitem;
    const size_t n_chunks = wk_evalset_count(e->evalset);
    if (n_chunks > 0 && !placed && (rc = s_pull_start(e, 0, local, err)) != 0)
        return rc;
    const double t0 = cm_now();
    double waited = 0;
    for (size_t c = 0; c < n_chunks; c++) {
        const double tw = cm_now();
        if (!placed && (rc = wk_kv_pull_wait(e->kv, err)) != 0)
            return rc;
        waited += cm_now() - tw;
        const wk_eval_chunk *ch = wk_evalset_chunk(e->evalset, c);
        const float *rows[2] = {e->erows[c % 2][0], e->erows[c % 2][1]};
        if (local)
            s_local_user_rows(e, c, e->erows[c % 2][0]);
        if (placed)
            s_placed_item_rows(e, c, e->erows[c % 2][1]);
        else if (c + 1 < n_chunks && (rc = s_pull_start(e, c + 1, local, err)) != 0)
            return rc;
        for (int t = 0; t < 2; t++)
            for (size_t k = 0; k < ch->n_uniq[t]; k++)
                e->eknown[t][k] =
                    (unsigned char)s_row_known(rows[t] + k * e->dims[t], e->dims[t]);
        const float *label = d->rating + ch->first;
        wk_batch b = {ch->n, ch->idx[0], ch->idx[1], label};
        e->model->predict(ctx, &b, e->dims[0], rows, e->epred);
        if (reg && ch->first + ch->n > n_test &&
            (rc = s_reg_chunk(e, ctx, ch, rows, &b, reg, err)) != 0)
            return rc;
        for (size_t j = 0; j < ch->n; j++) {
            float pr = e->epred[j];
            if (pr < ctx->clip_lo)
                pr = ctx->clip_lo;
            if (pr > ctx->clip_hi)
                pr = ctx->clip_hi;
            double er = (double)pr - label[j];
            if (ch->first + j >= n_test) {
                vsq += er * er;
                vab += fabs(er);
                continue;
            }
            sq += er * er;
            ab += fabs(er);
            unseen += !(e->eknown[0][b.uidx[j]] & e->eknown[1][b.iidx[j]]);
        }
    }
    cm_log(CM_LOG_DEBUG, "worker %u: %zu test ratings scored in %.3f s (%.3f s waiting for rows)",
           e->p->index, d->n, cm_now() - t0, waited);
    if (learn)
        ctx->l2 = wk_reg_learn(ctx->l2, reg, e->p->job->lr, e->p->index, epoch);
    *out = (cm_eval_done){.test_sq = sq, .test_abs = ab, .test_n = n_test, .unseen = unseen,
                          .valid_sq = vsq, .valid_abs = vab, .valid_n = d->n - n_test};
    return 0;
}
