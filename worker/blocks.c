#include "worker/blocks.h"

#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/hashmap.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/msg.h"
#include "common/rng.h"
#include "common/sorted.h"

#define S_BLOCK_SEED 0x70737265632d626bULL
#define S_CHUNK 262144   /* ratings between progress reports */
#define S_ROWS_PER_MSG 65536 /* rows per pull or push: bounded message size */

/* One block: its items (sorted) and this worker's ratings of them,
 * grouped by ranges of users so that the rows one group touches stay in
 * cache. Each group is shuffled once when the block is built; an epoch then
 * visits the groups in a new random order and starts each group at a
 * random place in it, so no rating is copied per epoch, and the order of
 * an epoch depends on (seed, epoch, block) only: a resumed run repeats it. */
typedef struct {
    uint64_t *items;      /* n_items keys, ascending */
    size_t n_items;
    wk_rating *ratings;   /* n_ratings, i indexes items, u the user rows */
    size_t n_ratings;
    size_t *group_at;     /* n_groups + 1 offsets into ratings */
    float **place;        /* shared rows: each item's row in its server's memory */
    float *base;          /* shared rows, in place: the rows sit at base + x * is and
                             ratings' i are those x (s_train_in_place); else NULL */
} s_block;

struct wk_blocks {
    int dim;
    int rf_user, rf_item;       /* floats per row used */
    size_t us, is;              /* row strides (floats): whole 64-byte lines */
    uint64_t *users;            /* n_users keys, ascending */
    size_t n_users;
    float *urows;               /* held user rows */
    int have_users;             /* user rows held (pulled or initialised) */
    int users_dirty;            /* trained since the last write-back */
    size_t group_users;         /* users per group */
    uint32_t n_groups;
    s_block *blocks;
    uint32_t n_blocks;
    float *irows;               /* rows of the block being trained */
    size_t icap;                /* rows irows can hold */
    /* the next block's rows, pulled while this one trains */
    float *pf;                  /* icap rows like irows: the two swap */
    wk_pull *pf_reqs;           /* one pull per S_ROWS_PER_MSG rows */
    uint32_t pf_block;          /* the block in pf or in flight; UINT32_MAX: none */
    int pf_flying;              /* the pull is in flight */
    double spread_before, spread_after; /* wk_blocks_balance's figures; -1: by hash */
    int shared;                 /* item rows reached in the servers' memory: 1 yes,
                                   -1 no (moved by messages), 0 not tried yet */
};

uint32_t wk_block_of(uint64_t item, uint32_t n_blocks)
{
    return (uint32_t)(cm_hash_key(item, S_BLOCK_SEED) % n_blocks);
}

/* Items in placing order: more ratings first, then lower key. */
typedef struct {
    float count;
    uint32_t at;
    uint64_t key;
} s_load;

static int s_cmp_load(const void *a, const void *b)
{
    const s_load *x = a, *y = b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return (x->key > y->key) - (x->key < y->key);
}

/* Largest block load over the mean. */
static double s_spread(const double *load, uint32_t n)
{
    double sum = 0, most = 0;
    for (uint32_t k = 0; k < n; k++) {
        sum += load[k];
        most = load[k] > most ? load[k] : most;
    }
    return sum > 0 ? most * n / sum : 1.0;
}

int wk_blocks_balance(const wk_block_map *map, uint32_t n_blocks, uint32_t *block,
                      double *before, double *after)
{
    if (n_blocks == 0 || map->n >= UINT32_MAX)
        return CM_EINVAL;
    s_load *order = malloc((map->n + 1) * sizeof *order);
    double *load = calloc(n_blocks, sizeof *load);
    if (!order || !load) {
        free(order);
        free(load);
        return CM_ENOMEM;
    }
    for (size_t i = 0; i < map->n; i++) {
        /* a count that is not a finite non-negative number weighs nothing */
        float c = map->count[i] >= 0 && map->count[i] < 3e38f ? map->count[i] : 0.f;
        order[i] = (s_load){c, (uint32_t)i, map->keys[i]};
        load[wk_block_of(map->keys[i], n_blocks)] += c;
    }
    if (before)
        *before = s_spread(load, n_blocks);
    memset(load, 0, n_blocks * sizeof *load);
    qsort(order, map->n, sizeof *order, s_cmp_load);
    for (size_t i = 0; i < map->n; i++) {
        uint32_t least = 0;
        for (uint32_t k = 1; k < n_blocks; k++)
            if (load[k] < load[least])
                least = k;
        block[order[i].at] = least;
        load[least] += order[i].count;
    }
    if (after)
        *after = s_spread(load, n_blocks);
    free(order);
    free(load);
    return 0;
}

static int s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Key ranges up to this many times the number of keys are indexed with a
 * plain array over the range instead of a hash map. */
#define S_DENSE_FACTOR 4
#define S_DENSE_MIN (1u << 20)

/* Keys within [lo, lo + range): mark the keys present, rank them in key
 * order, look each one up. */
static int s_index_dense(const uint64_t *keys, size_t n, uint64_t lo, size_t range,
                         uint32_t *loc, uint64_t **uniq, size_t *n_uniq)
{
    uint32_t *rank = calloc(range, sizeof *rank);
    if (!rank)
        return CM_ENOMEM;
    for (size_t j = 0; j < n; j++)
        rank[keys[j] - lo] = 1;
    size_t k = 0;
    for (size_t x = 0; x < range; x++)
        if (rank[x])
            rank[x] = (uint32_t)++k;
    uint64_t *u = malloc((k + 1) * sizeof *u);
    if (!u) {
        free(rank);
        return CM_ENOMEM;
    }
    for (size_t x = 0; x < range; x++)
        if (rank[x])
            u[rank[x] - 1] = lo + x;
    for (size_t j = 0; j < n; j++)
        loc[j] = rank[keys[j] - lo] - 1;
    free(rank);
    *uniq = u;
    *n_uniq = k;
    return 0;
}

/* Keys spread wide (hashed ids): number keys in order of first sight with
 * one lookup per rating (consecutive repeats skip it), then sort the
 * distinct keys and renumber. */
static int s_index_hashed(const uint64_t *keys, size_t n, uint32_t *loc, uint64_t **uniq,
                          size_t *n_uniq)
{
    int rc = CM_ENOMEM;
    cm_hashmap *seen = cm_hashmap_new(n / 4 + 1024);
    uint64_t *u = NULL, *pairs = NULL;
    uint32_t *perm = NULL;
    if (!seen)
        goto out;
    uint64_t last = 0;
    uint32_t last_loc = UINT32_MAX;
    for (size_t j = 0; j < n; j++) {
        if (last_loc == UINT32_MAX || keys[j] != last) {
            uint32_t v = 0;
            if (cm_hashmap_upsert(seen, keys[j], (uint32_t)cm_hashmap_size(seen), &v, NULL) != 0)
                goto out;
            last = keys[j];
            last_loc = v;
        }
        loc[j] = last_loc;
    }
    size_t k = cm_hashmap_size(seen);
    u = malloc((k + 1) * sizeof *u);
    perm = malloc((k + 1) * sizeof *perm);
    if (!u || !perm)
        goto out;
    size_t pos = 0;
    uint64_t key;
    uint32_t val;
    while (cm_hashmap_next(seen, &pos, &key, &val))
        u[val] = key;
    cm_hashmap_destroy(&seen);
    /* sort the distinct keys, then turn first-seen numbers into ranks
     * through a map over the sorted keys: one hash per distinct key */
    pairs = malloc((k + 1) * sizeof *pairs);
    if (!pairs)
        goto out;
    memcpy(pairs, u, k * sizeof *u);
    qsort(pairs, k, sizeof *pairs, s_cmp_u64);
    seen = cm_hashmap_new(k);
    if (!seen)
        goto out;
    for (size_t x = 0; x < k; x++)
        if (cm_hashmap_put(seen, pairs[x], (uint32_t)x) != 0)
            goto out;
    for (size_t x = 0; x < k; x++)
        cm_hashmap_get(seen, u[x], &perm[x]);
    for (size_t j = 0; j < n; j++)
        loc[j] = perm[loc[j]];
    free(u);
    u = pairs;
    pairs = NULL;
    *uniq = u;
    *n_uniq = k;
    u = NULL;
    rc = 0;
out:
    cm_hashmap_destroy(&seen);
    free(u);
    free(pairs);
    free(perm);
    return rc;
}

int wk_blocks_index_keys(const uint64_t *keys, size_t n, uint32_t *loc, uint64_t **uniq,
                         size_t *n_uniq)
{
    *uniq = NULL;
    *n_uniq = 0;
    if (n >= UINT32_MAX)
        return CM_EINVAL;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t j = 0; j < n; j++) {
        lo = keys[j] < lo ? keys[j] : lo;
        hi = keys[j] > hi ? keys[j] : hi;
    }
    size_t limit = n * S_DENSE_FACTOR > S_DENSE_MIN ? n * S_DENSE_FACTOR : S_DENSE_MIN;
    if (n > 0 && hi - lo < limit && hi - lo < UINT32_MAX - 1)
        return s_index_dense(keys, n, lo, (size_t)(hi - lo) + 1, loc, uniq, n_uniq);
    return s_index_hashed(keys, n, loc, uniq, n_uniq);
}

size_t wk_blocks_msg_rows(void)
{
    return S_ROWS_PER_MSG;
}

size_t wk_blocks_stride(int row_floats)
{
    return ((size_t)row_floats + 15) / 16 * 16;
}


/* ---------------------------------------------------------------------
 * The DSGD rule
 * ------------------------------------------------------------------- */

struct wk_dsgd {
    uint32_t n_workers, per_worker; /* W and k */
    uint64_t seed;                  /* the job's */
    uint32_t epoch;                 /* the epoch perm is drawn for; UINT32_MAX none */
    uint32_t *perm;                 /* the workers' places, then k permutations of W,
                                     * one per residue class */
};

wk_dsgd *wk_dsgd_new(uint32_t n_workers, uint32_t per_worker, uint64_t seed)
{
    wk_dsgd *d = calloc(1, sizeof *d);
    if (!d || n_workers == 0 || per_worker == 0 ||
        !(d->perm = malloc((1 + (size_t)per_worker) * n_workers * sizeof *d->perm))) {
        free(d);
        return NULL;
    }
    d->n_workers = n_workers;
    d->per_worker = per_worker;
    d->seed = seed;
    d->epoch = UINT32_MAX;
    return d;
}

void wk_dsgd_destroy(wk_dsgd **pd)
{
    if (!pd || !*pd)
        return;
    free((*pd)->perm);
    free(*pd);
    *pd = NULL;
}

uint32_t wk_dsgd_block(wk_dsgd *d, uint32_t worker, uint32_t epoch, uint32_t round)
{
    const uint32_t nw = d->n_workers, k = d->per_worker;
    if (d->epoch != epoch) {
        cm_rng rng;
        cm_rng_seed(&rng, cm_mix64(d->seed ^ cm_mix64(0x626c6f636b73ULL + epoch)));
        for (uint32_t c = 0; c <= k; c++) {
            for (uint32_t j = 0; j < nw; j++)
                d->perm[c * nw + j] = j;
            cm_rng_shuffle_u32(&rng, d->perm + c * nw, nw);
        }
        d->epoch = epoch;
    }
    const uint32_t b = (k * d->perm[worker] + round) % (k * nw);
    return k * d->perm[(1 + b % k) * nw + b / k] + b % k;
}

/* Fisher-Yates over r[0..m). */
static void s_shuffle(cm_rng *rng, wk_rating *r, size_t m)
{
    for (size_t j = m; j > 1; j--) {
        size_t k = (size_t)cm_rng_below(rng, j);
        wk_rating t = r[j - 1];
        r[j - 1] = r[k];
        r[k] = t;
    }
}

/* Each item's block (by the map's balance where it has the item, else by
 * hash) and its place in that block, and each block's items in key order.
 * ik: the n_items distinct items, ascending. 0 or CM_ENOMEM. */
static int s_place_items(wk_blocks *b, const wk_block_map *map, const uint64_t *ik,
                         size_t n_items, uint32_t *iblk, uint32_t *ilocal)
{
    uint32_t *placed = NULL;
    b->spread_before = b->spread_after = -1;
    if (map && map->n > 0) {
        if (!(placed = malloc(map->n * sizeof *placed)))
            return CM_ENOMEM;
        int rc = wk_blocks_balance(map, b->n_blocks, placed, &b->spread_before,
                                   &b->spread_after);
        if (rc == CM_ENOMEM) {
            free(placed);
            return rc;
        }
        if (rc != 0) {
            free(placed);
            placed = NULL;
        }
    }
    /* both key lists ascend: one walk finds each item's place in the map */
    size_t at = 0;
    for (size_t x = 0; x < n_items; x++) {
        while (placed && at < map->n && map->keys[at] < ik[x])
            at++;
        iblk[x] = placed && at < map->n && map->keys[at] == ik[x]
                      ? placed[at]
                      : wk_block_of(ik[x], b->n_blocks);
        ilocal[x] = (uint32_t)b->blocks[iblk[x]].n_items++;
    }
    free(placed);
    for (uint32_t k = 0; k < b->n_blocks; k++) {
        s_block *bl = &b->blocks[k];
        bl->items = malloc((bl->n_items + 1) * sizeof *bl->items);
        if (!bl->items)
            return CM_ENOMEM;
        if (bl->n_items > b->icap)
            b->icap = bl->n_items;
        bl->n_items = 0;
    }
    for (size_t x = 0; x < n_items; x++) {
        s_block *bl = &b->blocks[iblk[x]];
        bl->items[bl->n_items++] = ik[x];
    }
    return 0;
}

/* Counts each block's ratings by group of users and copies them into
 * their block, in input order: uloc and il number each rating's user and
 * item, iblk and ilocal each item's block and place there. Leaves
 * group_at[g + 1] at the start of group g, the fill cursors of the second
 * pass (s_sort_groups). Returns the most ratings of a block, 0 when out of
 * memory (*oom set). */
static size_t s_fill_blocks(wk_blocks *b, const cm_ratings *train, const uint32_t *uloc,
                            const uint32_t *il, const uint32_t *iblk, const uint32_t *ilocal,
                            int *oom)
{
    /* groups of users whose rows take about 256 KiB */
    b->group_users = (256 * 1024) / (b->us * sizeof(float)) + 1;
    b->n_groups = (uint32_t)((b->n_users + b->group_users - 1) / b->group_users);
    if (b->n_groups == 0)
        b->n_groups = 1;
    *oom = 1;
    for (uint32_t k = 0; k < b->n_blocks; k++) {
        b->blocks[k].group_at = calloc(b->n_groups + 2, sizeof(size_t));
        if (!b->blocks[k].group_at)
            return 0;
    }
    /* counting sort by (block, group); 32-bit division: user rows fit */
    const uint32_t gu = (uint32_t)b->group_users;
    for (size_t j = 0; j < train->n; j++)
        b->blocks[iblk[il[j]]].group_at[uloc[j] / gu + 2]++;
    for (uint32_t k = 0; k < b->n_blocks; k++) {
        s_block *bl = &b->blocks[k];
        for (uint32_t g = 0; g < b->n_groups; g++)
            bl->group_at[g + 2] += bl->group_at[g + 1];
        bl->n_ratings = bl->group_at[b->n_groups + 1];
        bl->ratings = cm_alloc_big((bl->n_ratings + 1) * sizeof *bl->ratings);
        if (!bl->ratings)
            return 0;
    }
    *oom = 0;
    /* In two stable passes, so that each pass writes to few places at once
     * (one pass over thousands of groups of every block misses the caches
     * on every write): by block, in input order (here); then each block by
     * group through a scratch block (s_sort_groups). */
    size_t most_ratings = 0;
    for (uint32_t k = 0; k < b->n_blocks; k++) {
        most_ratings = b->blocks[k].n_ratings > most_ratings ? b->blocks[k].n_ratings
                                                             : most_ratings;
        b->blocks[k].n_ratings = 0; /* the cursor of the first pass */
    }
    for (size_t j = 0; j < train->n; j++) {
        uint32_t x = il[j];
        s_block *bl = &b->blocks[iblk[x]];
        bl->ratings[bl->n_ratings++] = (wk_rating){uloc[j], ilocal[x], train->rating[j]};
    }
    return most_ratings;
}

/* The second pass: each block's ratings by group (group_at[g + 1] is the
 * fill cursor of group g; filled, group_at[g] is where group g starts),
 * then each group's fixed order, a shuffle seeded by the block alone. 0 or
 * CM_ENOMEM. */
static int s_sort_groups(wk_blocks *b, size_t most_ratings)
{
    const uint32_t gu = (uint32_t)b->group_users;
    wk_rating *scratch = cm_alloc_big((most_ratings + 1) * sizeof *scratch);
    if (!scratch)
        return CM_ENOMEM;
    for (uint32_t k = 0; k < b->n_blocks; k++) {
        s_block *bl = &b->blocks[k];
        for (size_t j = 0; j < bl->n_ratings; j++)
            scratch[bl->group_at[bl->ratings[j].u / gu + 1]++] = bl->ratings[j];
        memcpy(bl->ratings, scratch, bl->n_ratings * sizeof *scratch);
    }
    free(scratch);
    for (uint32_t k = 0; k < b->n_blocks; k++) {
        s_block *bl = &b->blocks[k];
        cm_rng rng;
        cm_rng_seed(&rng, S_BLOCK_SEED ^ cm_mix64(k + 1));
        for (uint32_t g = 0; g < b->n_groups; g++)
            s_shuffle(&rng, bl->ratings + bl->group_at[g], bl->group_at[g + 1] - bl->group_at[g]);
    }
    return 0;
}

/* The held user rows, the block rows and the prefetch; with user_init the
 * user rows made as a server would make them. 0 or CM_ENOMEM. */
static int s_alloc_rows(wk_blocks *b, const cm_table_spec *user_init)
{
    b->urows = cm_alloc_big((b->n_users + 1) * b->us * sizeof(float));
    b->irows = cm_alloc_big((b->icap + 1) * b->is * sizeof(float));
    b->pf = cm_alloc_big((b->icap + 1) * b->is * sizeof(float));
    const size_t most = b->n_users > b->icap ? b->n_users : b->icap;
    b->pf_reqs = malloc((most / S_ROWS_PER_MSG + 1) * sizeof *b->pf_reqs);
    b->pf_block = UINT32_MAX;
    if (!b->urows || !b->irows || !b->pf || !b->pf_reqs)
        return CM_ENOMEM;
    if (user_init) {
        /* exactly the row a server makes on first touch: both call the
         * spec's fresh_row */
        for (size_t j = 0; j < b->n_users; j++)
            cm_table_spec_fresh_row(user_init, b->users[j], b->urows + j * b->us);
        b->have_users = 1;
        b->users_dirty = 1; /* the servers have not made these rows yet */
    }
    return 0;
}

wk_blocks *wk_blocks_new(const cm_ratings *train, uint32_t n_blocks, int dim,
                         const int *row_floats, const cm_table_spec *user_init,
                         const wk_block_map *map, const wk_key_index *given,
                         cm_error *err)
{
    wk_blocks *b = calloc(1, sizeof *b);
    uint32_t *uloc = NULL, *iloc = NULL, *iblk = NULL, *ilocal = NULL;
    uint64_t *items = NULL;
    size_t n_items = 0;
    /* the item numbering: given (borrowed) or made here (iloc, items) */
    const uint32_t *il = given ? given->loc : NULL;
    const uint64_t *ik = given ? given->uniq : NULL;
    if (!b)
        goto oom;
    if (n_blocks == 0 || train->n >= UINT32_MAX) {
        cm_error_set(err, CM_EINVAL, "worker: cannot index %zu ratings into %u blocks",
                     train->n, n_blocks);
        free(b);
        return NULL;
    }
    b->dim = dim;
    b->rf_user = row_floats[0];
    b->rf_item = row_floats[1];
    b->us = wk_blocks_stride(b->rf_user);
    b->is = wk_blocks_stride(b->rf_item);
    b->n_blocks = n_blocks;
    b->blocks = calloc(n_blocks, sizeof *b->blocks);
    uloc = malloc((train->n + 1) * sizeof *uloc);
    if (!given)
        iloc = malloc((train->n + 1) * sizeof *iloc);
    if (!b->blocks || !uloc || (!given && !iloc))
        goto oom;

    /* users and items: sorted distinct keys and each rating's rank */
    if (wk_blocks_index_keys(train->user, train->n, uloc, &b->users, &b->n_users) != 0)
        goto oom;
    if (given) {
        n_items = given->n;
    } else {
        if (wk_blocks_index_keys(train->item, train->n, iloc, &items, &n_items) != 0)
            goto oom;
        il = iloc;
        ik = items;
    }
    /* each item's block and its row there */
    iblk = malloc((n_items + 1) * sizeof *iblk);
    ilocal = malloc((n_items + 1) * sizeof *ilocal);
    if (!iblk || !ilocal || s_place_items(b, map, ik, n_items, iblk, ilocal) != 0)
        goto oom;
    free(items);
    items = NULL;
    int no_mem;
    const size_t most_ratings = s_fill_blocks(b, train, uloc, il, iblk, ilocal, &no_mem);
    if (no_mem)
        goto oom;
    /* the numberings are done with before the second pass's scratch */
    free(uloc);
    free(iloc);
    free(iblk);
    free(ilocal);
    uloc = iloc = iblk = ilocal = NULL;
    if (s_sort_groups(b, most_ratings) != 0 || s_alloc_rows(b, user_init) != 0)
        goto oom;
    return b;
oom:
    cm_error_set(err, CM_ENOMEM, "worker: out of memory indexing %zu ratings into %u blocks",
                 train->n, n_blocks);
    free(uloc);
    free(iloc);
    free(iblk);
    free(ilocal);
    free(items);
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
        free(b->blocks[k].group_at);
        free(b->blocks[k].place);
    }
    free(b->blocks);
    free(b->users);
    free(b->urows);
    free(b->irows);
    free(b->pf);
    free(b->pf_reqs);
    free(b);
    *pb = NULL;
}

/* The pulls of whole rows of keys[0..n) into rows, stride floats apart:
 * one request per S_ROWS_PER_MSG rows, in reqs. Returns how many. */
static size_t s_pull_reqs(uint32_t table, const uint64_t *keys, size_t n, size_t stride,
                          float *rows, wk_pull *reqs)
{
    size_t n_reqs = 0;
    for (size_t first = 0; first < n; first += S_ROWS_PER_MSG) {
        size_t m = n - first < S_ROWS_PER_MSG ? n - first : S_ROWS_PER_MSG;
        reqs[n_reqs++] =
            (wk_pull){table, keys + first, m, rows + first * stride, CM_PULL_FULL, stride};
    }
    return n_reqs;
}

/* Pulls whole rows of keys into rows, stride floats apart, every request
 * in flight at once. */
static int s_pull_rows(wk_blocks *b, wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n,
                       size_t stride, float *rows, cm_error *err)
{
    size_t n_reqs = s_pull_reqs(table, keys, n, stride, rows, b->pf_reqs);
    return wk_kv_pull(kv, b->pf_reqs, n_reqs, err);
}

/* Pushes rows whole, the servers replacing their copy (only this worker
 * trains them until it pushes), gathered into one buffer per message that
 * the transport sends uncopied. Unless async, waits for the acks. */
static int s_push_rows(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n, int rf,
                       size_t stride, const float *rows, int async, cm_error *err)
{
    const size_t bytes = (size_t)rf * sizeof(float);
    int rc = 0;
    for (size_t first = 0; first < n && rc == 0; first += S_ROWS_PER_MSG) {
        size_t m = n - first < S_ROWS_PER_MSG ? n - first : S_ROWS_PER_MSG;
        float *buf = malloc(m * bytes + 1);
        if (!buf)
            return cm_error_set(err, CM_ENOMEM, "worker: out of memory for %zu rows", m);
        for (size_t j = 0; j < m; j++)
            memcpy(buf + j * (size_t)rf, rows + (first + j) * stride, bytes);
        rc = wk_kv_push_rows_owned(kv, table, keys + first, m, buf, err);
    }
    if (rc == 0 && !async)
        rc = wk_kv_flush(kv, err);
    return rc;
}

/* Shared rows, when every row of block k lies a whole number of rows
 * (b->is floats: the servers round a row up to whole 64-byte lines too)
 * from the block's lowest and no further than 2^32 rows from it, as
 * wk_kv_place's mappings make them on every server: the block trains its
 * rows where they are. Its ratings' i become the rows' places counted
 * from the lowest, so the kernel reads and writes the servers' memory
 * directly and nothing is copied per round. */
static void s_train_in_place(wk_blocks *b, uint32_t k)
{
    s_block *bl = &b->blocks[k];
    if (bl->n_items == 0)
        return;
    const size_t row = b->is * sizeof(float);
    const char *lo = (const char *)bl->place[0], *hi = lo;
    for (size_t x = 1; x < bl->n_items; x++) {
        const char *p = (const char *)bl->place[x];
        lo = p < lo ? p : lo;
        hi = p > hi ? p : hi;
    }
    if ((size_t)(hi - lo) / row >= UINT32_MAX)
        return;
    uint32_t *at = malloc(bl->n_items * sizeof *at);
    if (!at)
        return; /* the copying path still works */
    for (size_t x = 0; x < bl->n_items; x++) {
        const size_t off = (size_t)((const char *)bl->place[x] - lo);
        if (off % row != 0) { /* another mapping or another stride: copy */
            free(at);
            return;
        }
        at[x] = (uint32_t)(off / row);
    }
    for (size_t j = 0; j < bl->n_ratings; j++)
        bl->ratings[j].i = at[bl->ratings[j].i];
    free(at);
    bl->base = (float *)(void *)lo;
}

/* Shared rows: block k's item rows copied out of the servers' memory into
 * rows (stride b->is), or back into it. */
static void s_gather(const wk_blocks *b, uint32_t k, float *rows)
{
    const s_block *bl = &b->blocks[k];
    const size_t bytes = (size_t)b->rf_item * sizeof(float);
    for (size_t i = 0; i < bl->n_items; i++)
        memcpy(rows + i * b->is, bl->place[i], bytes);
}

static void s_scatter(const wk_blocks *b, uint32_t k, const float *rows)
{
    const s_block *bl = &b->blocks[k];
    const size_t bytes = (size_t)b->rf_item * sizeof(float);
    for (size_t i = 0; i < bl->n_items; i++)
        memcpy(bl->place[i], rows + i * b->is, bytes);
}

/* First pass: asks the servers where every block's item rows sit, for
 * workers on the servers' host; where they cannot say (another host, rows
 * kept private), rows travel by messages from then on. */
static int s_share_items(wk_blocks *b, wk_kv *kv, cm_error *err)
{
    cm_error why = {0};
    int rc = 0;
    for (uint32_t k = 0; k < b->n_blocks && rc == 0; k++) {
        s_block *bl = &b->blocks[k];
        if (!(bl->place = malloc((bl->n_items + 1) * sizeof *bl->place)))
            return cm_error_set(err, CM_ENOMEM, "worker: out of memory for %zu row places",
                                bl->n_items);
        rc = wk_kv_place(kv, 1, bl->items, bl->n_items, 1, bl->place, &why);
    }
    if (rc == 0) {
        b->shared = 1;
        for (uint32_t k = 0; k < b->n_blocks; k++)
            s_train_in_place(b, k);
        cm_log(CM_LOG_INFO, "blocks: item rows shared with the servers on this host "
                            "(%u of %u blocks trained in place)", wk_blocks_in_place(b),
               b->n_blocks);
        return 0;
    }
    for (uint32_t k = 0; k < b->n_blocks; k++) {
        free(b->blocks[k].place);
        b->blocks[k].place = NULL;
    }
    if (rc != CM_ENOTSUP)
        return cm_error_set(err, rc, "%s", why.msg);
    b->shared = -1;
    cm_log(CM_LOG_INFO, "blocks: item rows move by messages (%s)", why.msg);
    return 0;
}

/* Starts the pull of block k's item rows into pf (shared rows: copies
 * them now; in place: nothing to move). */
static int s_prefetch_start(wk_blocks *b, wk_kv *kv, uint32_t k, cm_error *err)
{
    const s_block *bl = &b->blocks[k];
    if (b->shared > 0) {
        if (!bl->base)
            s_gather(b, k, b->pf);
        b->pf_block = k;
        return 0;
    }
    size_t n_reqs = s_pull_reqs(1, bl->items, bl->n_items, b->is, b->pf, b->pf_reqs);
    int rc = wk_kv_pull_start(kv, b->pf_reqs, n_reqs, err);
    if (rc == 0) {
        b->pf_block = k;
        b->pf_flying = 1;
    }
    return rc;
}

/* Waits for the prefetch in flight, if any. */
static int s_prefetch_wait(wk_blocks *b, wk_kv *kv, cm_error *err)
{
    if (!b->pf_flying)
        return 0;
    b->pf_flying = 0;
    int rc = wk_kv_pull_wait(kv, err);
    if (rc != 0)
        b->pf_block = UINT32_MAX;
    return rc;
}

/* Block k's item rows into irows: the prefetch's buffer when it holds
 * them (the two buffers swap), else pulled now. */
static int s_block_rows(wk_blocks *b, wk_kv *kv, uint32_t k, cm_error *err)
{
    const s_block *bl = &b->blocks[k];
    int rc = s_prefetch_wait(b, kv, err);
    if (rc != 0)
        return rc;
    if (bl->base) { /* trained in place: nothing to move */
        b->pf_block = UINT32_MAX;
        return 0;
    }
    if (b->pf_block != k) {
        b->pf_block = UINT32_MAX;
        if (b->shared > 0) {
            s_gather(b, k, b->irows);
            return 0;
        }
        return s_pull_rows(b, kv, 1, bl->items, bl->n_items, b->is, b->irows, err);
    }
    b->pf_block = UINT32_MAX;
    float *t = b->irows;
    b->irows = b->pf;
    b->pf = t;
    return 0;
}

int wk_blocks_train(wk_blocks *b, wk_kv *kv, const wk_model_ops *model,
                    const wk_model_ctx *ctx, const cm_optim *opt, const wk_block_pass *pass,
                    double *sq, size_t *n, cm_error *err)
{
    int rc;
    const uint32_t block = pass->block, next = pass->next;
    wk_progress_fn progress = pass->progress;
    void *arg = pass->arg;
    if (block >= b->n_blocks || (next != UINT32_MAX && (next >= b->n_blocks || next == block)))
        return cm_error_set(err, CM_EINVAL, "worker: no block %u (next %d) of %u", block,
                            next == UINT32_MAX ? -1 : (int)next, b->n_blocks);
    if (!b->have_users) {
        if ((rc = s_prefetch_wait(b, kv, err)) != 0)
            goto out;
        rc = s_pull_rows(b, kv, 0, b->users, b->n_users, b->us, b->urows, err);
        if (rc != 0)
            goto out;
        b->have_users = 1;
    }
    if (b->shared == 0) {
        if ((rc = s_prefetch_wait(b, kv, err)) != 0 || (rc = s_share_items(b, kv, err)) != 0)
            goto out;
    }
    s_block *bl = &b->blocks[block];
    const double t0 = cm_now();
    if ((rc = s_block_rows(b, kv, block, err)) != 0)
        goto out;
    /* the next block is nobody's this round: its rows come in while this
     * one trains, once the gate says its last pushes are home */
    int pending = next != UINT32_MAX;
    if (pending && (!pass->gate || (rc = pass->gate(arg, 0)) == 1)) {
        if ((rc = s_prefetch_start(b, kv, next, err)) != 0)
            goto out;
        pending = 0;
    } else if (pending && rc < 0) {
        goto out;
    }

    const double t1 = cm_now();
    b->users_dirty = 1;
    cm_rng rng;
    cm_rng_seed(&rng, pass->seed);
    uint32_t *order = malloc((b->n_groups + 1) * sizeof *order);
    if (!order) {
        rc = cm_error_set(err, CM_ENOMEM, "worker: out of memory");
        goto out;
    }
    for (uint32_t g = 0; g < b->n_groups; g++)
        order[g] = g;
    cm_rng_shuffle_u32(&rng, order, b->n_groups);
    wk_rows users = {b->urows, b->us}, items = {bl->base ? bl->base : b->irows, b->is};
    size_t done = 0, reported = 0;
    for (uint32_t gi = 0; gi < b->n_groups; gi++) {
        const wk_rating *r = bl->ratings + bl->group_at[order[gi]];
        size_t m = bl->group_at[order[gi] + 1] - bl->group_at[order[gi]];
        size_t at = m > 1 ? (size_t)cm_rng_below(&rng, m) : 0;
        *sq += model->train_local(ctx, opt, r + at, m - at, b->dim, users, items);
        *sq += model->train_local(ctx, opt, r, at, b->dim, users, items);
        done += m;
        if (done - reported >= S_CHUNK) {
            reported = done;
            rc = progress ? progress(arg, done) : 0;
            /* asked even once the prefetch is out: that is where the acks
             * of earlier pushes come in and are told on */
            if (rc == 0 && pass->gate && (rc = pass->gate(arg, 0)) == 1 && pending) {
                rc = s_prefetch_start(b, kv, next, err);
                pending = 0;
            }
            if (rc < 0) {
                free(order);
                goto out;
            }
            rc = 0;
        }
    }
    *n += done;
    free(order);
    const double t2 = cm_now();
    if (pending) {
        rc = pass->gate(arg, 1); /* waits until it opens */
        if (rc == 1)
            rc = s_prefetch_start(b, kv, next, err);
        if (rc != 0)
            goto out;
    }
    /* asynchronous: the pull stays in flight while the rows go out */
    if (!pass->async && (rc = s_prefetch_wait(b, kv, err)) != 0)
        goto out;
    const double t3 = cm_now();
    if (b->shared > 0) {
        if (!bl->base)
            s_scatter(b, block, b->irows);
    } else
        rc = s_push_rows(kv, 1, bl->items, bl->n_items, b->rf_item, b->is, b->irows,
                         pass->async, err);
    cm_log(CM_LOG_DEBUG, "block %u: %zu rows ready in %.3f s, %zu ratings in %.3f s, waited "
                         "%.3f s for the next block's, pushed in %.3f s%s", block, bl->n_items,
           t1 - t0, done, t2 - t1, t3 - t2, cm_now() - t3, pass->async ? " (sent)" : "");
out:
    return rc;
}

void wk_blocks_spread(const wk_blocks *b, double *before, double *after)
{
    *before = b->spread_before;
    *after = b->spread_after;
}

int wk_blocks_items_shared(const wk_blocks *b)
{
    return b->shared > 0;
}

uint32_t wk_blocks_in_place(const wk_blocks *b)
{
    uint32_t n = 0;
    for (uint32_t k = 0; k < b->n_blocks; k++)
        n += b->blocks[k].base != NULL;
    return n;
}

int wk_blocks_holds_users(const wk_blocks *b)
{
    return b->have_users;
}


void wk_blocks_user_places(const wk_blocks *b, const uint64_t *users, size_t n, uint32_t *at)
{
    /* a walk reads all held keys; searches read about log2 of them each */
    size_t log2 = 1;
    while (((size_t)1 << log2) < b->n_users)
        log2++;
    if (n * log2 >= b->n_users) {
        size_t j = 0;
        for (size_t k = 0; k < n; k++) {
            while (j < b->n_users && b->users[j] < users[k])
                j++;
            at[k] = j < b->n_users && b->users[j] == users[k] ? (uint32_t)j : UINT32_MAX;
        }
        return;
    }
    for (size_t k = 0; k < n; k++) {
        size_t j = cm_lower_bound_u64(b->users, b->n_users, users[k]);
        at[k] = j < b->n_users && b->users[j] == users[k] ? (uint32_t)j : UINT32_MAX;
    }
}

const float *wk_blocks_user_row_at(const wk_blocks *b, uint32_t at)
{
    return b->have_users && at < b->n_users ? b->urows + (size_t)at * b->us : NULL;
}

const float *wk_blocks_user_row(const wk_blocks *b, uint64_t user)
{
    uint32_t at;
    wk_blocks_user_places(b, &user, 1, &at);
    return wk_blocks_user_row_at(b, at);
}

int wk_blocks_writeback(wk_blocks *b, wk_kv *kv, cm_error *err)
{
    if (!b->have_users || !b->users_dirty)
        return 0;
    int rc = s_push_rows(kv, 0, b->users, b->n_users, b->rf_user, b->us, b->urows, 0, err);
    if (rc == 0)
        b->users_dirty = 0;
    return rc;
}
