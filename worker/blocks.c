#include "worker/blocks.h"

#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/hashmap.h"
#include "common/msg.h"
#include "common/rng.h"

#define S_BLOCK_SEED 0x70737265632d626bULL
#define S_CHUNK 262144   /* ratings between progress reports */
#define S_ROWS_PER_MSG 65536 /* rows per pull or push: bounded message size */

/* One block: its items (sorted) and this worker's ratings of them,
 * grouped by ranges of users so that the rows one group touches stay in
 * cache (the groups are visited in a new random order every time, and the
 * ratings shuffled within each group). */
typedef struct {
    uint64_t *items;      /* n_items keys, ascending */
    size_t n_items;
    wk_rating *ratings;   /* n_ratings, i indexes items: the working order */
    wk_rating *canon;     /* the same ratings in their fixed order: each
                             shuffle starts from it, so the order of an
                             epoch depends on (seed, epoch, block) only and a
                             resumed run repeats it */
    size_t n_ratings;
    size_t *group_at;     /* n_groups + 1 offsets into ratings */
} s_block;

struct wk_blocks {
    int dim;
    int rf_user, rf_item;       /* floats per row used */
    size_t us, is;              /* row strides (floats) */
    uint64_t *users;            /* n_users keys, ascending */
    size_t n_users;
    float *urows, *ubase;       /* held user rows and their last written state */
    int have_users;             /* user rows held (pulled or initialised) */
    size_t group_users;         /* users per group */
    uint32_t n_groups;
    s_block *blocks;
    uint32_t n_blocks;
    float *irows, *ibase;       /* rows of the block being trained */
    size_t icap;                /* rows irows can hold */
    float *delta;               /* scratch for deltas */
    size_t dcap;
};

uint32_t wk_block_of(uint64_t item, uint32_t n_blocks)
{
    return (uint32_t)(cm_hash_key(item, S_BLOCK_SEED) % n_blocks);
}

static int s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sorted unique copy of keys[0..n) (n may be 0): a hash set first, so
 * only the distinct keys are sorted. */
static uint64_t *s_unique(const uint64_t *keys, size_t n, size_t *n_out)
{
    cm_hashmap *seen = cm_hashmap_new(1024);
    uint64_t *u = NULL;
    if (!seen)
        return NULL;
    size_t k = 0;
    for (size_t j = 0; j < n; j++)
        if (cm_hashmap_upsert(seen, keys[j], 0, &(uint32_t){0}, NULL) != 0)
            goto out;
    u = malloc((cm_hashmap_size(seen) + 1) * sizeof *u);
    if (!u)
        goto out;
    size_t pos = 0;
    uint64_t key;
    uint32_t val;
    while (cm_hashmap_next(seen, &pos, &key, &val))
        u[k++] = key;
    qsort(u, k, sizeof *u, s_cmp_u64);
    *n_out = k;
out:
    cm_hashmap_destroy(&seen);
    return u;
}

static size_t s_stride(int rf)
{
    return ((size_t)rf + 7) / 8 * 8;
}

wk_blocks *wk_blocks_new(const cm_ratings *train, uint32_t n_blocks, int dim,
                         const int *row_floats, const ps_table_params *user_init,
                         cm_error *err)
{
    wk_blocks *b = calloc(1, sizeof *b);
    cm_hashmap *uix = NULL, *iix = NULL;
    uint64_t *tmp = NULL;
    size_t *fill = NULL;
    if (!b)
        goto oom;
    b->dim = dim;
    b->rf_user = row_floats[0];
    b->rf_item = row_floats[1];
    b->us = s_stride(b->rf_user);
    b->is = s_stride(b->rf_item);
    b->n_blocks = n_blocks;
    b->blocks = calloc(n_blocks, sizeof *b->blocks);
    if (!b->blocks)
        goto oom;

    /* users: sorted unique, local index by hashmap */
    b->users = s_unique(train->user, train->n, &b->n_users);
    uix = cm_hashmap_new(b->n_users);
    if (!b->users || !uix)
        goto oom;
    for (size_t j = 0; j < b->n_users; j++)
        if (cm_hashmap_put(uix, b->users[j], (uint32_t)j) != 0)
            goto oom;

    /* items per block: gather, sort unique, index */
    tmp = malloc((train->n + 1) * sizeof *tmp);
    fill = calloc(n_blocks, sizeof *fill);
    iix = cm_hashmap_new(1024);
    if (!tmp || !fill || !iix)
        goto oom;
    for (uint32_t k = 0; k < n_blocks; k++) {
        size_t m = 0;
        for (size_t j = 0; j < train->n; j++)
            if (wk_block_of(train->item[j], n_blocks) == k)
                tmp[m++] = train->item[j];
        s_block *bl = &b->blocks[k];
        bl->n_ratings = m;
        bl->items = s_unique(tmp, m, &bl->n_items);
        bl->ratings = malloc((m + 1) * sizeof *bl->ratings);
        bl->canon = malloc((m + 1) * sizeof *bl->canon);
        if (!bl->items || !bl->ratings || !bl->canon)
            goto oom;
        for (size_t j = 0; j < bl->n_items; j++)
            if (cm_hashmap_put(iix, bl->items[j], (uint32_t)j) != 0)
                goto oom;
        if (bl->n_items > b->icap)
            b->icap = bl->n_items;
    }
    /* groups of users whose rows take about 256 KiB */
    b->group_users = (256 * 1024) / (b->us * sizeof(float)) + 1;
    b->n_groups = (uint32_t)((b->n_users + b->group_users - 1) / b->group_users);
    if (b->n_groups == 0)
        b->n_groups = 1;
    for (uint32_t k = 0; k < n_blocks; k++) {
        b->blocks[k].group_at = calloc(b->n_groups + 2, sizeof(size_t));
        if (!b->blocks[k].group_at)
            goto oom;
    }
    uint32_t *blk = malloc((train->n + 1) * sizeof *blk);
    uint32_t *uloc = malloc((train->n + 1) * sizeof *uloc);
    if (!blk || !uloc) {
        free(blk);
        free(uloc);
        goto oom;
    }
    for (size_t j = 0; j < train->n; j++) {
        uint32_t u = 0;
        cm_hashmap_get(uix, train->user[j], &u);
        blk[j] = wk_block_of(train->item[j], n_blocks);
        uloc[j] = u;
        b->blocks[blk[j]].group_at[u / b->group_users + 2]++;
    }
    for (uint32_t k = 0; k < n_blocks; k++)
        for (uint32_t g = 0; g < b->n_groups; g++)
            b->blocks[k].group_at[g + 2] += b->blocks[k].group_at[g + 1];
    /* group_at[g + 1] is now the fill cursor of group g */
    for (size_t j = 0; j < train->n; j++) {
        uint32_t i = 0;
        cm_hashmap_get(iix, train->item[j], &i);
        s_block *bl = &b->blocks[blk[j]];
        bl->canon[bl->group_at[uloc[j] / b->group_users + 1]++] =
            (wk_rating){uloc[j], i, train->rating[j]};
    }
    free(blk);
    free(uloc);
    b->urows = aligned_alloc(64, ((b->n_users + 1) * b->us * sizeof(float) + 63) / 64 * 64);
    b->ubase = malloc((b->n_users + 1) * b->us * sizeof(float));
    b->irows = aligned_alloc(64, ((b->icap + 1) * b->is * sizeof(float) + 63) / 64 * 64);
    b->ibase = malloc((b->icap + 1) * b->is * sizeof(float));
    b->dcap = (b->n_users > b->icap ? b->n_users : b->icap) + 1;
    b->delta = malloc(b->dcap * (size_t)(b->rf_user > b->rf_item ? b->rf_user : b->rf_item) *
                      sizeof(float));
    if (!b->urows || !b->ubase || !b->irows || !b->ibase || !b->delta)
        goto oom;
    if (user_init) {
        /* exactly the row a server makes on first touch (ps/table.c) */
        for (size_t j = 0; j < b->n_users; j++) {
            float *row = b->urows + j * b->us;
            ps_table_init_row(user_init, b->users[j], row);
            ps_optim_init_state(&user_init->optim, row, user_init->dim);
        }
        memcpy(b->ubase, b->urows, b->n_users * b->us * sizeof(float));
        b->have_users = 1;
    }
    free(tmp);
    free(fill);
    cm_hashmap_destroy(&uix);
    cm_hashmap_destroy(&iix);
    return b;
oom:
    cm_error_set(err, CM_ENOMEM, "worker: out of memory indexing %zu ratings into %u blocks",
                 train->n, n_blocks);
    free(tmp);
    free(fill);
    cm_hashmap_destroy(&uix);
    cm_hashmap_destroy(&iix);
    wk_blocks_destroy(&b);
    return NULL;
}

void wk_blocks_destroy(wk_blocks **pb)
{
    if (!pb || !*pb)
        return;
    wk_blocks *b = *pb;
    for (uint32_t k = 0; b->blocks && k < b->n_blocks; k++) {
        free(b->blocks[k].items);
        free(b->blocks[k].ratings);
        free(b->blocks[k].canon);
        free(b->blocks[k].group_at);
    }
    free(b->blocks);
    free(b->users);
    free(b->urows);
    free(b->ubase);
    free(b->irows);
    free(b->ibase);
    free(b->delta);
    free(b);
    *pb = NULL;
}

/* Pulls whole rows of keys into rows (stride floats apart) and base. */
static int s_pull_rows(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n, int rf,
                       size_t stride, float *rows, float *base, float *scratch,
                       cm_error *err)
{
    for (size_t first = 0; first < n; first += S_ROWS_PER_MSG) {
        size_t m = n - first < S_ROWS_PER_MSG ? n - first : S_ROWS_PER_MSG;
        wk_pull req = {table, keys + first, m, scratch, CM_PULL_FULL};
        int rc = wk_kv_pull(kv, &req, 1, err);
        if (rc != 0)
            return rc;
        for (size_t j = 0; j < m; j++)
            memcpy(rows + (first + j) * stride, scratch + j * (size_t)rf,
                   (size_t)rf * sizeof(float));
    }
    memcpy(base, rows, n * stride * sizeof(float));
    return 0;
}

/* Pushes rows - base for every row that changed, then makes base = rows. */
static int s_push_changes(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n, int rf,
                          size_t stride, float *rows, float *base, float *delta,
                          uint64_t *changed, cm_error *err)
{
    size_t m = 0;
    for (size_t j = 0; j < n; j++) {
        float *r = rows + j * stride;
        const float *o = base + j * stride;
        if (memcmp(r, o, (size_t)rf * sizeof(float)) == 0)
            continue;
        float *d = delta + m * (size_t)rf;
        /* keep what the server will hold, o + (r - o), which rounding can
         * make differ from r: then a run resumed from the server's rows
         * continues exactly like this one */
        for (int k = 0; k < rf; k++) {
            d[k] = r[k] - o[k];
            r[k] = o[k] + d[k];
        }
        changed[m++] = keys[j];
    }
    memcpy(base, rows, n * stride * sizeof(float));
    int rc = 0;
    for (size_t first = 0; first < m && rc == 0; first += S_ROWS_PER_MSG) {
        size_t c = m - first < S_ROWS_PER_MSG ? m - first : S_ROWS_PER_MSG;
        rc = wk_kv_push_delta(kv, table, changed + first, c, delta + first * (size_t)rf, err);
    }
    if (rc == 0)
        rc = wk_kv_flush(kv, err);
    return rc;
}

int wk_blocks_train(wk_blocks *b, wk_kv *kv, const wk_model_ops *model,
                    const wk_model_ctx *ctx, const ps_optim *opt, uint32_t block, uint64_t seed,
                    wk_progress_fn progress, void *arg, double *sq, size_t *n, cm_error *err)
{
    int rc;
    if (block >= b->n_blocks)
        return cm_error_set(err, CM_EINVAL, "worker: no block %u of %u", block, b->n_blocks);
    /* the changed keys of a push reuse the pull's scratch: both fit dcap */
    uint64_t *changed = malloc(b->dcap * sizeof *changed);
    if (!changed)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory");
    if (!b->have_users) {
        rc = s_pull_rows(kv, 0, b->users, b->n_users, b->rf_user, b->us, b->urows, b->ubase,
                         b->delta, err);
        if (rc != 0)
            goto out;
        b->have_users = 1;
    }
    s_block *bl = &b->blocks[block];
    rc = s_pull_rows(kv, 1, bl->items, bl->n_items, b->rf_item, b->is, b->irows, b->ibase,
                     b->delta, err);
    if (rc != 0)
        goto out;

    cm_rng rng;
    cm_rng_seed(&rng, seed);
    uint32_t *order = malloc((b->n_groups + 1) * sizeof *order);
    if (!order) {
        rc = cm_error_set(err, CM_ENOMEM, "worker: out of memory");
        goto out;
    }
    for (uint32_t g = 0; g < b->n_groups; g++)
        order[g] = g;
    cm_rng_shuffle_u32(&rng, order, b->n_groups);
    wk_rows users = {b->urows, b->us}, items = {b->irows, b->is};
    size_t done = 0, reported = 0;
    for (uint32_t gi = 0; gi < b->n_groups; gi++) {
        wk_rating *r = bl->ratings + bl->group_at[order[gi]];
        size_t m = bl->group_at[order[gi] + 1] - bl->group_at[order[gi]];
        memcpy(r, bl->canon + bl->group_at[order[gi]], m * sizeof *r);
        for (size_t j = m; j > 1; j--) {
            size_t k = (size_t)cm_rng_below(&rng, j);
            wk_rating t = r[j - 1];
            r[j - 1] = r[k];
            r[k] = t;
        }
        *sq += model->train_local(ctx, opt, r, m, b->dim, users, items);
        done += m;
        if (progress && done - reported >= S_CHUNK) {
            reported = done;
            if ((rc = progress(arg, done)) != 0) {
                free(order);
                goto out;
            }
        }
    }
    *n += done;
    free(order);
    rc = s_push_changes(kv, 1, bl->items, bl->n_items, b->rf_item, b->is, b->irows, b->ibase,
                        b->delta, changed, err);
out:
    free(changed);
    return rc;
}

int wk_blocks_writeback(wk_blocks *b, wk_kv *kv, cm_error *err)
{
    if (!b->have_users)
        return 0;
    uint64_t *changed = malloc(b->dcap * sizeof *changed);
    if (!changed)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory");
    int rc = s_push_changes(kv, 0, b->users, b->n_users, b->rf_user, b->us, b->urows, b->ubase,
                            b->delta, changed, err);
    free(changed);
    return rc;
}
