/* table: key -> row slab for one parameter table.
 *
 * Storage. Rows live in chunks that never move once allocated (no realloc
 * + memcpy of a large slab while a server is answering). The first G
 * chunks grow geometrically, chunk k holding 64 << k rows, so a small
 * table costs little; after them every chunk holds F = 64 << G rows, where
 * F is the largest power of two whose chunk fits in S_CHUNK_MAX_BYTES. So
 * the slack is at most one chunk (at most the table's size, and at most
 * 16 MiB), and row index i maps to (chunk, offset) with a compare, a
 * count-leading-zeros or a shift, and a mask. Chunks come from
 * aligned_alloc(64) and a row's slot (stride) is a multiple of 16 floats,
 * so every row starts on a 64-byte boundary. ps_table_bytes() counts whole
 * chunks (what was asked for, not what the kernel backed).
 *
 * A slot is: dim weights, cm_optim_state_floats() floats of
 * optimizer state, zero padding up to the stride.
 *
 * Shared tables (params.shared) take their chunks from one memory file
 * (memfd) instead: a header page (magic, token), then the chunks one after
 * another, each mapped MAP_SHARED at its offset as the file grows. Since
 * every chunk's size is a whole number of pages and chunks follow in row
 * order, row i sits at byte header + i * stride * 4 of the file, which is
 * all a co-located process needs to reach it (ps_table_place).
 *
 * Index: one cm_hashmap from key to row index, one lookup per key (upsert
 * when rows may be created).
 *
 * Hot path. Keys of a request hit random rows of a table much larger than
 * the caches, so pull and push work in blocks of S_BLOCK keys: pass 1
 * resolves every key of the block to its row (independent lookups, which
 * the CPU overlaps) and prefetches the row; pass 2 copies or updates the
 * rows, by then in cache. The row pointers live on the stack: no
 * allocation per request.
 *
 * Admission and eviction (both off by default; then `slow` is 0 and the
 * paths above run unchanged). With either on, pull and push go key by key
 * through s_slow(): resolving a whole block first would be unsafe, since
 * making the row of a later key may evict the row of an earlier one.
 * - Admission keeps a second cm_hashmap, key -> pushes seen, for keys
 *   without a row; it is cleared whole when it would pass max_pending
 *   entries, so rare keys cannot make it grow without bound.
 * - Eviction keeps a meta record per slot, in chunks parallel to the slab
 *   (rows and checkpoints keep their layout): the key, a touch stamp from
 *   a per-table clock, the epoch of the last touch, and whether the slot
 *   is live. Freed slots form a list threaded through their meta records
 *   and are reused before the slab grows. LRU is sampled (as Redis does):
 *   the victim is the oldest of S_SAMPLES live slots drawn at random, or
 *   the exact oldest when the table has at most S_EXACT slots. */
#define _GNU_SOURCE /* memfd_create */
#include "ps/table.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/config.h"
#include "common/slots.h"
#include "common/hash.h"
#include "common/hashmap.h"
#include "common/mem.h"
#include "common/rng.h"

#define S_ALIGN 64                       /* bytes: a row's alignment */
#define S_ALIGN_FLOATS (S_ALIGN / (int)sizeof(float))
#define S_CHUNK0_LOG 6                   /* chunk 0 holds 64 rows */
#define S_CHUNK_MAX_BYTES ((size_t)16 << 20)
#define S_MAX_ROWS ((size_t)UINT32_MAX)  /* row index is a u32 in the index */
#define S_BLOCK 128                      /* keys resolved before rows are touched */
#define S_PREFETCH_LINES 8               /* cache lines prefetched per row, at most */
#define S_PENDING_MAX ((size_t)1 << 20)  /* default max_pending */
#define S_SAMPLES 32                     /* slots sampled per LRU victim */
#define S_EXACT 64                       /* up to this many slots: exact LRU */
#define S_NONE SIZE_MAX                  /* end of the free list */

/* Per slot, when eviction is on. */
typedef struct {
    uint64_t key;    /* live: the row's key; free: the next free slot (S_NONE) */
    uint64_t stamp;  /* clock at the last touch */
    uint32_t epoch;  /* epoch of the last touch */
    uint32_t live;   /* 1 while the slot holds a row */
} s_meta;

/* How s_slow treats a key without a row. */
enum {
    S_READ,  /* pull without create: leave it */
    S_PULL,  /* pull with create: make it if admission is off */
    S_PUSH,  /* push, delta: one sighting; make it when admitted */
    S_LOAD   /* checkpoint: make it, admission or not */
};

struct ps_table {
    cm_table_spec p;              /* as given, validated */
    int dim;                        /* p.dim */
    int fd;                         /* shared: the memory file; else -1 */
    size_t stride;                  /* floats per row slot, multiple of 16 */
    size_t used;                    /* floats of a slot that carry data */
    int pull_lines;                 /* cache lines a pull reads from a row */
    int push_lines;                 /* cache lines a push touches in a row */
    cm_hashmap *index;              /* key -> row index */
    float **chunks;                 /* n_chunks chunks; see the banner */
    size_t n_chunks;
    size_t chunks_cap;              /* entries allocated in chunks[] */
    int geo;                        /* G: chunks [0, G) grow geometrically */
    int fixed_log;                  /* F = 1 << fixed_log rows per later chunk */
    size_t geo_rows;                /* rows in those: 64 * (2^G - 1) */
    size_t n_rows;                  /* slots handed out; indexes [0, n_rows) */
    size_t cap;                     /* row slots in the allocated chunks */
    size_t slab_bytes;              /* bytes of the allocated chunks */
    uint64_t token;                 /* shared: written after the magic */
    /* Admission and eviction; all zero/NULL when off. */
    int slow;                       /* admit || evict: pull/push via s_slow */
    int admit;                      /* min_count > 1 */
    int evict;                      /* ttl > 0 || max_rows > 0: meta kept */
    uint32_t epoch;                 /* ps_table_set_epoch */
    cm_hashmap *pending;            /* key -> pushes seen, keys without a row */
    size_t max_pending;             /* pending cleared when it would pass this */
    s_meta **meta;                  /* per chunk, parallel to chunks[] */
    size_t meta_bytes;              /* bytes of the meta chunks */
    size_t free_head;               /* first free slot, or S_NONE */
    size_t n_free;                  /* slots on the free list */
    uint64_t clock;                 /* touch stamps */
    uint64_t evicted;               /* rows evicted, ever */
    uint64_t dropped;               /* gradients dropped before admission */
    cm_rng rng;                     /* LRU sampling */
    /* Confinement (ps_table_confine); slot_map NULL when off. The fields
     * above are ordered without holes, so these cost no byte more. */
    const uint32_t *slot_map;       /* slot -> server, borrowed */
    uint32_t n_slots;
    uint32_t table_id;              /* the slot hash's table */
    int owner;                      /* this server's index */
};

/* ---------------------------------------------------------------------------
 * Slab */

/* Chunk and offset of row index i. */
static inline void s_locate(const ps_table *t, size_t i, size_t *k, size_t *off)
{
    if (i < t->geo_rows) {
        uint64_t j = ((uint64_t)i >> S_CHUNK0_LOG) + 1;
        *k = (size_t)(63 - __builtin_clzll(j));
        *off = i - ((((size_t)1 << *k) - 1) << S_CHUNK0_LOG);
    } else {
        size_t d = i - t->geo_rows;
        *k = (size_t)t->geo + (d >> t->fixed_log);
        *off = d & (((size_t)1 << t->fixed_log) - 1);
    }
}

static inline float *s_row(const ps_table *t, size_t i)
{
    size_t k, off;
    s_locate(t, i, &k, &off);
    return t->chunks[k] + off * t->stride;
}

static inline s_meta *s_meta_of(const ps_table *t, size_t i)
{
    size_t k, off;
    s_locate(t, i, &k, &off);
    return &t->meta[k][off];
}

/* Rows in chunk k of a table whose first geo chunks grow geometrically. */
static size_t s_rows_in_chunk(int geo, int fixed_log, size_t k)
{
    if (k < (size_t)geo)
        return (size_t)1 << (S_CHUNK0_LOG + k);
    return (size_t)1 << fixed_log;
}

static size_t s_chunk_rows(const ps_table *t, size_t k)
{
    return s_rows_in_chunk(t->geo, t->fixed_log, k);
}

/* G: geometric chunks until the next would pass S_CHUNK_MAX_BYTES. */
static int s_geo(size_t stride)
{
    const size_t slot_bytes = stride * sizeof(float);
    int g = 0;
    while (g < 26 && ((size_t)1 << (S_CHUNK0_LOG + g + 1)) * slot_bytes <= S_CHUNK_MAX_BYTES)
        g++;
    return g;
}

/* Entries of the chunk list once it holds n chunks (s_grow's growth). */
static size_t s_chunks_cap(size_t n)
{
    size_t cap = 0;
    while (cap < n)
        cap = cap ? 2 * cap : 16;
    return cap;
}

/* The next chunk of a shared table, `bytes` (whole pages) at the end of
 * its file; NULL (file unchanged) when the file cannot grow. */
static float *s_shared_chunk(ps_table *t, size_t bytes)
{
    off_t at = (off_t)(CM_SHARE_HEADER + t->slab_bytes);
    if (ftruncate(t->fd, at + (off_t)bytes) != 0)
        return NULL;
    void *c = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, t->fd, at);
    if (c == MAP_FAILED) {
        (void)ftruncate(t->fd, at);
        return NULL;
    }
    return c;
}

/* Makes t's memory file and writes its header; on failure the table keeps
 * private rows (the caller logs nothing: sharing is an optimisation). */
static void s_share_open(ps_table *t)
{
    uint64_t tok = 0;
    if (getrandom(&tok, sizeof tok, GRND_NONBLOCK) != (ssize_t)sizeof tok)
        tok = cm_mix64((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)t);
    t->token = tok | 1; /* never 0 */
    int fd = memfd_create("psrec-table", MFD_CLOEXEC);
    if (fd < 0)
        return;
    const cm_share_head head = {CM_SHARE_MAGIC, t->token};
    if (ftruncate(fd, CM_SHARE_HEADER) != 0 || pwrite(fd, &head, sizeof head, 0) != sizeof head) {
        close(fd);
        return;
    }
    t->fd = fd;
}

/* Adds the next chunk. 0 or CM_ENOMEM (table unchanged). */
static int s_grow(ps_table *t)
{
    if (t->n_chunks == t->chunks_cap) {
        size_t ncap = t->chunks_cap ? 2 * t->chunks_cap : 16;
        float **nc = realloc(t->chunks, ncap * sizeof *nc);
        if (!nc)
            return CM_ENOMEM;
        t->chunks = nc;
        if (t->evict) {
            /* chunks_cap moves only once both arrays have the room */
            s_meta **nm = realloc(t->meta, ncap * sizeof *nm);
            if (!nm)
                return CM_ENOMEM;
            t->meta = nm;
        }
        t->chunks_cap = ncap;
    }
    size_t rows = s_chunk_rows(t, t->n_chunks);
    size_t bytes = rows * t->stride * sizeof(float);
    float *c = t->fd >= 0 ? s_shared_chunk(t, bytes) : cm_alloc_big(bytes); /* 64-byte aligned */
    if (!c)
        return CM_ENOMEM;
    if (t->evict) {
        s_meta *m = calloc(rows, sizeof *m);
        if (!m) {
            free(c); /* never shared: eviction keeps rows private */
            return CM_ENOMEM;
        }
        t->meta[t->n_chunks] = m;
        t->meta_bytes += rows * sizeof *m;
    }
    t->chunks[t->n_chunks++] = c;
    t->cap += rows;
    t->slab_bytes += bytes;
    return 0;
}

/* Fills a fresh slot: initial weights, optimizer state, zero padding. */
static void s_init_slot(ps_table *t, uint64_t key, float *row)
{
    cm_table_spec_fresh_row(&t->p, key, row);
    if (t->stride > t->used)
        memset(row + t->used, 0, (t->stride - t->used) * sizeof(float));
}

/* Confinement: 1 when key lies in another server's slot. Asked only of
 * keys without a row: a confined table makes no row of another server's
 * slot, so the rows it holds need no check. */
static inline int s_foreign(const ps_table *t, uint64_t key)
{
    return t->slot_map &&
           (int)t->slot_map[cm_slot_of(key, t->table_id, t->n_slots)] != t->owner;
}

/* *out = the row of key, made if missing: a copy of fill (t->used floats)
 * when fill is not NULL, else the initialisation. 0, CM_ENOMEM or
 * CM_EPERM (confinement; s_foreign), the table unchanged on failure. */
static inline int s_get_or_make(ps_table *t, uint64_t key, const float *fill, uint32_t *at,
                                float **out)
{
    uint32_t idx;
    /* Room for one more row before the upsert, so a failed chunk
     * allocation never leaves a key in the index without a row. Only at a
     * chunk boundary (rare) does this cost a second lookup. */
    if (t->n_rows == t->cap || t->n_rows >= S_MAX_ROWS) {
        if (cm_hashmap_get(t->index, key, &idx)) {
            if (at)
                *at = idx;
            *out = s_row(t, idx);
            return 0;
        }
        if (s_foreign(t, key))
            return CM_EPERM;
        if (t->n_rows >= S_MAX_ROWS || s_grow(t) != 0)
            return CM_ENOMEM;
    }
    int inserted;
    if (cm_hashmap_upsert(t->index, key, (uint32_t)t->n_rows, &idx, &inserted) != 0)
        return CM_ENOMEM;
    if (inserted && s_foreign(t, key)) {
        cm_hashmap_remove(t->index, key);
        return CM_EPERM;
    }
    float *row = s_row(t, idx);
    *out = row;
    if (at)
        *at = idx;
    if (inserted) {
        t->n_rows++;
        if (!fill) {
            s_init_slot(t, key, row);
        } else {
            memcpy(row, fill, t->used * sizeof(float));
            if (t->stride > t->used)
                memset(row + t->used, 0, (t->stride - t->used) * sizeof(float));
        }
    }
    return 0;
}

static inline void s_prefetch(const float *row, int lines, int write)
{
    const char *p = (const char *)row;
    if (write) {
        for (int l = 0; l < lines; l++)
            __builtin_prefetch(p + l * S_ALIGN, 1, 3);
    } else {
        for (int l = 0; l < lines; l++)
            __builtin_prefetch(p + l * S_ALIGN, 0, 3);
    }
}

/* Pass 1 over a block of keys: every hash slot, then every row (made when
 * missing: a copy of fill + i * used when fill is not NULL, else the
 * initialisation), each prefetched for reading or writing. CM_ENOMEM or
 * CM_EPERM when a row cannot be made (the rows before it stand). */
static int s_resolve(ps_table *t, const uint64_t *kb, size_t m, const float *fill, int lines,
                     int write, float **rows)
{
    for (size_t i = 0; i < m; i++)
        cm_hashmap_prefetch(t->index, kb[i]);
    for (size_t i = 0; i < m; i++) {
        float *row;
        int rc = s_get_or_make(t, kb[i], fill ? fill + i * t->used : NULL, NULL, &row);
        if (rc != 0)
            return rc;
        s_prefetch(row, lines, write);
        rows[i] = row;
    }
    return 0;
}

static int s_lines(size_t floats)
{
    size_t l = (floats * sizeof(float) + S_ALIGN - 1) / S_ALIGN;
    return l > S_PREFETCH_LINES ? S_PREFETCH_LINES : (int)l;
}

/* ---------------------------------------------------------------------------
 * Admission and eviction (only when t->slow) */

static inline size_t s_live(const ps_table *t)
{
    return t->n_rows - t->n_free;
}

static inline void s_touch(ps_table *t, size_t i)
{
    s_meta *m = s_meta_of(t, i);
    m->stamp = ++t->clock;
    m->epoch = t->epoch;
}

/* Evicts the row in slot i: out of the index, slot onto the free list. */
static void s_free_slot(ps_table *t, size_t i)
{
    s_meta *m = s_meta_of(t, i);
    cm_hashmap_remove(t->index, m->key);
    m->live = 0;
    m->key = (uint64_t)t->free_head;
    t->free_head = i;
    t->n_free++;
    t->evicted++;
}

/* The slot of the least recently touched row (sampled above S_EXACT
 * slots), or S_NONE if no row is live. */
static size_t s_lru_victim(ps_table *t)
{
    size_t best = S_NONE;
    uint64_t oldest = UINT64_MAX;
    if (t->n_rows > S_EXACT) {
        for (int got = 0, tries = 0; got < S_SAMPLES && tries < 4 * S_SAMPLES; tries++) {
            size_t i = (size_t)cm_rng_below(&t->rng, t->n_rows);
            const s_meta *m = s_meta_of(t, i);
            if (!m->live)
                continue;
            got++;
            if (m->stamp < oldest) {
                oldest = m->stamp;
                best = i;
            }
        }
        if (best != S_NONE)
            return best;
    }
    /* Small table, or so many free slots that sampling missed: scan. */
    for (size_t i = 0; i < t->n_rows; i++) {
        const s_meta *m = s_meta_of(t, i);
        if (m->live && m->stamp < oldest) {
            oldest = m->stamp;
            best = i;
        }
    }
    return best;
}

/* Makes the row of a key not in the index, evicting the LRU row first
 * when max_rows are live. 0 or CM_ENOMEM (no row made). */
static int s_make(ps_table *t, uint64_t key, float **out)
{
    if (t->p.max_rows && s_live(t) >= t->p.max_rows) {
        size_t v = s_lru_victim(t);
        if (v != S_NONE)
            s_free_slot(t, v);
    }
    size_t idx = t->free_head;
    if (idx == S_NONE) {
        if (t->n_rows >= S_MAX_ROWS)
            return CM_ENOMEM;
        if (t->n_rows == t->cap && s_grow(t) != 0)
            return CM_ENOMEM;
        idx = t->n_rows;
    }
    if (cm_hashmap_put(t->index, key, (uint32_t)idx) != 0)
        return CM_ENOMEM;
    if (idx == t->free_head) {
        t->free_head = (size_t)s_meta_of(t, idx)->key;
        t->n_free--;
    } else {
        t->n_rows++;
    }
    float *row = s_row(t, idx);
    s_init_slot(t, key, row);
    if (t->evict) {
        s_meta *m = s_meta_of(t, idx);
        m->key = key;
        m->live = 1;
        m->stamp = ++t->clock;
        m->epoch = t->epoch;
    }
    *out = row;
    return 0;
}

/* Counts one push of a key without a row. 1 if it is now admitted, 0 if
 * not yet, or CM_ENOMEM. */
static int s_sighting(ps_table *t, uint64_t key)
{
    uint32_t seen = 0;
    cm_hashmap_get(t->pending, key, &seen);
    if (++seen >= t->p.min_count)
        return 1;
    if (seen == 1 && cm_hashmap_size(t->pending) >= t->max_pending) {
        /* The bound on keys seen but never admitted: start counting over. */
        cm_hashmap *fresh = cm_hashmap_new(0);
        if (!fresh)
            return CM_ENOMEM;
        cm_hashmap_destroy(&t->pending);
        t->pending = fresh;
    }
    if (cm_hashmap_put(t->pending, key, seen) != 0)
        return CM_ENOMEM;
    return 0;
}

/* The row of key under admission and eviction: *out = the row (touched),
 * or NULL when the key has none and `mode` does not make it. 0, CM_ENOMEM
 * or CM_EPERM (confinement, in any mode). */
static int s_slow(ps_table *t, uint64_t key, int mode, float **out)
{
    uint32_t idx;
    *out = NULL;
    if (cm_hashmap_get(t->index, key, &idx)) {
        if (t->evict)
            s_touch(t, idx);
        *out = s_row(t, idx);
        return 0;
    }
    if (s_foreign(t, key))
        return CM_EPERM;
    if (mode == S_READ || (t->admit && mode == S_PULL))
        return 0;
    if (t->admit && mode == S_PUSH) {
        int rc = s_sighting(t, key);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            t->dropped++;
            return 0;
        }
    }
    int rc = s_make(t, key, out);
    if (rc == 0 && t->admit)
        cm_hashmap_remove(t->pending, key);
    return rc;
}

static int s_pull_slow(ps_table *t, const uint64_t *keys, size_t n, float *out, int create,
                       size_t *n_missing)
{
    const size_t dim = (size_t)t->dim;
    size_t missing = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        float *row;
        rc = s_slow(t, keys[i], create ? S_PULL : S_READ, &row);
        if (rc < 0)
            break;
        if (row) {
            memcpy(out + i * dim, row, dim * sizeof(float));
        } else {
            memset(out + i * dim, 0, dim * sizeof(float));
            missing++;
        }
    }
    if (n_missing)
        *n_missing = missing;
    return rc;
}

static int s_push_slow(ps_table *t, const uint64_t *keys, size_t n, const float *grads)
{
    const size_t dim = (size_t)t->dim;
    for (size_t i = 0; i < n; i++) {
        float *row;
        int rc = s_slow(t, keys[i], S_PUSH, &row);
        if (rc < 0)
            return rc;   /* the rows before keep their update */
        if (row)
            cm_optim_update(&t->p.optim, row, grads + i * dim, t->dim);
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Lifecycle */

ps_table *ps_table_new(const cm_table_spec *p, cm_error *err)
{
    if (!p) {
        cm_error_set(err, CM_EINVAL, "table: no parameters");
        return NULL;
    }
    if (cm_table_spec_check(p, err) != 0)
        return NULL;
    ps_table *t = calloc(1, sizeof *t);
    if (!t)
        goto nomem;
    t->p = *p;
    t->dim = p->dim;
    t->used = (size_t)cm_table_spec_row_floats(p);
    t->stride = ps_table_stride(p);
    t->pull_lines = s_lines((size_t)p->dim);
    t->push_lines = s_lines(t->used);

    const int g = s_geo(t->stride);
    t->geo = g;
    t->geo_rows = (((size_t)1 << g) - 1) << S_CHUNK0_LOG;
    t->fixed_log = S_CHUNK0_LOG + g;

    t->index = cm_hashmap_new(0);
    if (!t->index)
        goto nomem;
    t->fd = -1;

    t->admit = p->min_count > 1;
    t->evict = p->ttl > 0 || p->max_rows > 0;
    t->slow = t->admit || t->evict;
    t->free_head = S_NONE;
    t->max_pending = ps_table_max_pending(p);
    cm_rng_seed(&t->rng, cm_mix64(p->seed ^ 0x6576696374ULL));
    if (t->admit) {
        t->pending = cm_hashmap_new(0);
        if (!t->pending)
            goto nomem;
    }
    if (p->shared && !t->slow)
        s_share_open(t);
    return t;
nomem:
    ps_table_destroy(&t);
    cm_error_set(err, CM_ENOMEM, "table: out of memory");
    return NULL;
}

void ps_table_destroy(ps_table **pt)
{
    if (!pt || !*pt)
        return;
    ps_table *t = *pt;
    for (size_t k = 0; k < t->n_chunks; k++) {
        if (t->fd >= 0)
            munmap(t->chunks[k], s_chunk_rows(t, k) * t->stride * sizeof(float));
        else
            free(t->chunks[k]);
    }
    if (t->fd >= 0)
        close(t->fd);
    free(t->chunks);
    if (t->meta)
        for (size_t k = 0; k < t->n_chunks; k++)
            free(t->meta[k]);
    free(t->meta);
    cm_hashmap_destroy(&t->index);
    cm_hashmap_destroy(&t->pending);
    free(t);
    *pt = NULL;
}

/* ---------------------------------------------------------------------------
 * Pull and push (the hot path) */

/* The fast path of a pull; kept (NULL: not wanted) receives each key's
 * row, for a creating pull. */
static int s_pull(ps_table *t, const uint64_t *keys, size_t n, float *out, int create,
                  size_t *n_missing, float **kept)
{
    const size_t dim = (size_t)t->dim;
    const size_t row_bytes = dim * sizeof(float);
    const int lines = t->pull_lines;
    float *local[S_BLOCK];
    size_t missing = 0;
    int rc = 0;
    for (size_t b = 0; b < n; b += S_BLOCK) {
        size_t m = n - b < S_BLOCK ? n - b : S_BLOCK;
        const uint64_t *kb = keys + b;
        float **rows = kept ? kept + b : local;
        if (create) {
            if ((rc = s_resolve(t, kb, m, NULL, lines, 0, rows)) != 0)
                goto out;
        } else {
            for (size_t i = 0; i < m; i++)
                cm_hashmap_prefetch(t->index, kb[i]);
            for (size_t i = 0; i < m; i++) {
                uint32_t idx;
                if (cm_hashmap_get(t->index, kb[i], &idx)) {
                    rows[i] = s_row(t, idx);
                    s_prefetch(rows[i], lines, 0);
                } else if (s_foreign(t, kb[i])) {
                    rc = CM_EPERM;
                    goto out;
                } else {
                    rows[i] = NULL;
                    missing++;
                }
            }
        }
        float *ob = out + b * dim;
        for (size_t i = 0; i < m; i++) {
            if (rows[i])
                memcpy(ob + i * dim, rows[i], row_bytes);
            else
                memset(ob + i * dim, 0, row_bytes);
        }
    }
out:
    if (n_missing)
        *n_missing = missing;
    return rc;
}

int ps_table_pull(ps_table *t, const uint64_t *keys, size_t n, float *out, int create,
                  size_t *n_missing)
{
    if (t->slow)
        return s_pull_slow(t, keys, n, out, create, n_missing);
    return s_pull(t, keys, n, out, create, n_missing, NULL);
}

int ps_table_pull_keep(ps_table *t, const uint64_t *keys, size_t n, float *out, float **kept)
{
    return t->slow ? CM_ENOTSUP : s_pull(t, keys, n, out, 1, NULL, kept);
}

/* The optimizer step on m resolved rows. */
static void s_apply(const ps_table *t, float *const *rows, size_t m, const float *grads)
{
    const size_t dim = (size_t)t->dim;
    for (size_t i = 0; i < m; i++)
        cm_optim_update(&t->p.optim, rows[i], grads + i * dim, t->dim);
}

int ps_table_push_kept(ps_table *t, float *const *rows, size_t n, const float *grads)
{
    if (t->slow)
        return CM_ENOTSUP;
    for (size_t b = 0; b < n; b += S_BLOCK) {
        size_t m = n - b < S_BLOCK ? n - b : S_BLOCK;
        for (size_t i = 0; i < m; i++)
            s_prefetch(rows[b + i], t->push_lines, 1);
        s_apply(t, rows + b, m, grads + b * (size_t)t->dim);
    }
    return 0;
}

int ps_table_push(ps_table *t, const uint64_t *keys, size_t n, const float *grads)
{
    float *rows[S_BLOCK];
    if (t->slow)
        return s_push_slow(t, keys, n, grads);
    for (size_t b = 0; b < n; b += S_BLOCK) {
        size_t m = n - b < S_BLOCK ? n - b : S_BLOCK;
        int rc = s_resolve(t, keys + b, m, NULL, t->push_lines, 1, rows);
        if (rc != 0)
            return rc;   /* the rows before keep their update */
        s_apply(t, rows, m, grads + b * (size_t)t->dim);
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Accessors */

int ps_table_dim(const ps_table *t)
{
    return t->dim;
}

size_t ps_table_rows(const ps_table *t)
{
    return s_live(t);
}

size_t ps_table_bytes(const ps_table *t)
{
    size_t b = sizeof *t + t->chunks_cap * sizeof(float *) + t->slab_bytes +
               cm_hashmap_bytes(t->index);
    if (t->meta)
        b += t->chunks_cap * sizeof(s_meta *) + t->meta_bytes;
    if (t->pending)
        b += cm_hashmap_bytes(t->pending);
    return b;
}

size_t ps_table_stride(const cm_table_spec *s)
{
    const size_t used = (size_t)cm_table_spec_row_floats(s);
    return (used + S_ALIGN_FLOATS - 1) / S_ALIGN_FLOATS * S_ALIGN_FLOATS;
}

size_t ps_table_max_pending(const cm_table_spec *s)
{
    return s->max_pending ? s->max_pending : S_PENDING_MAX;
}

/* Follows ps_table_new, s_grow and ps_table_bytes: a change there shows in
 * tests/test_plan.c, which compares this with real tables. */
void ps_table_footprint_of(const cm_table_spec *s, size_t rows, size_t pending,
                           ps_table_footprint *out)
{
    memset(out, 0, sizeof *out);
    const size_t stride = ps_table_stride(s);
    const int geo = s_geo(stride);
    const int fixed_log = S_CHUNK0_LOG + geo;
    size_t n_chunks = 0, slots = 0;
    while (slots < rows)
        slots += s_rows_in_chunk(geo, fixed_log, n_chunks++);
    const int evict = s->ttl > 0 || s->max_rows > 0;
    const size_t state = (size_t)cm_optim_state_floats(s->optim.kind, s->dim);
    out->weights = rows * (size_t)s->dim * sizeof(float);
    out->state = rows * state * sizeof(float);
    out->pad = slots * stride * sizeof(float) - out->weights - out->state;
    out->index = cm_hashmap_bytes_for(rows);
    if (evict)
        out->meta = slots * sizeof(s_meta);
    if (s->min_count > 1)
        out->pending = cm_hashmap_bytes_for(pending);
    const size_t cap = s_chunks_cap(n_chunks);
    out->fixed = sizeof(ps_table) + cap * sizeof(float *) + (evict ? cap * sizeof(s_meta *) : 0);
    out->total = out->weights + out->state + out->pad + out->index + out->meta + out->pending +
                 out->fixed;
}

void ps_table_stats(const ps_table *t, ps_table_counters *out)
{
    out->rows = s_live(t);
    out->bytes = ps_table_bytes(t);
    out->evicted = t->evicted;
    out->admitted = (uint64_t)s_live(t) + t->evicted;
    out->pending = t->pending ? cm_hashmap_size(t->pending) : 0;
    out->dropped = t->dropped;
}

void ps_table_set_epoch(ps_table *t, uint32_t epoch)
{
    t->epoch = epoch;
}

size_t ps_table_evict(ps_table *t)
{
    if (!t->evict)
        return 0;
    uint64_t before = t->evicted;
    if (t->p.ttl) {
        for (size_t i = 0; i < t->n_rows; i++) {
            const s_meta *m = s_meta_of(t, i);
            if (m->live && (uint64_t)m->epoch + t->p.ttl < (uint64_t)t->epoch)
                s_free_slot(t, i);
        }
    }
    while (t->p.max_rows && s_live(t) > t->p.max_rows) {
        size_t v = s_lru_victim(t);
        if (v == S_NONE)
            break;
        s_free_slot(t, v);
    }
    return (size_t)(t->evicted - before);
}

const float *ps_table_find(const ps_table *t, uint64_t key)
{
    uint32_t idx;
    if (!cm_hashmap_get(t->index, key, &idx))
        return NULL;
    return s_row(t, idx);
}

int ps_table_next(const ps_table *t, size_t *pos, uint64_t *key, const float **row)
{
    uint64_t k;
    uint32_t idx;
    if (!cm_hashmap_next(t->index, pos, &k, &idx))
        return 0;
    if (key)
        *key = k;
    if (row)
        *row = s_row(t, idx);
    return 1;
}

int ps_table_row_floats(const ps_table *t)
{
    return (int)t->used;
}

int ps_table_load_row(ps_table *t, uint64_t key, const float *row)
{
    float *dst = NULL;
    if (t->slow) {
        int rc = s_slow(t, key, S_LOAD, &dst);
        if (rc < 0)
            return rc;
    } else {
        int rc = s_get_or_make(t, key, row, NULL, &dst);
        if (rc != 0)
            return rc;
    }
    if (!dst)
        return CM_ENOMEM;
    memcpy(dst, row, t->used * sizeof(float));
    return 0;
}

int ps_table_push_rows(ps_table *t, const uint64_t *keys, size_t n, const float *rows)
{
    const size_t rf = t->used;
    float *dst[S_BLOCK];
    for (size_t b = 0; b < n; b += S_BLOCK) {
        size_t m = n - b < S_BLOCK ? n - b : S_BLOCK;
        const uint64_t *kb = keys + b;
        const float *rb = rows + b * rf;
        if (t->slow) {
            for (size_t i = 0; i < m; i++) {
                int rc = ps_table_load_row(t, kb[i], rb + i * rf);
                if (rc != 0)
                    return rc;
            }
            continue;
        }
        int rc = s_resolve(t, kb, m, rb, t->push_lines, 1, dst);
        if (rc != 0)
            return rc;
        for (size_t i = 0; i < m; i++)
            memcpy(dst[i], rb + i * rf, rf * sizeof(float));
    }
    return 0;
}

int ps_table_pull_full(ps_table *t, const uint64_t *keys, size_t n, float *out)
{
    const size_t rf = t->used;
    if (!t->slow) {
        float *src[S_BLOCK];
        for (size_t b = 0; b < n; b += S_BLOCK) {
            size_t m = n - b < S_BLOCK ? n - b : S_BLOCK;
            int rc = s_resolve(t, keys + b, m, NULL, t->push_lines, 0, src);
            if (rc != 0)
                return rc;
            for (size_t i = 0; i < m; i++)
                memcpy(out + (b + i) * rf, src[i], rf * sizeof(float));
        }
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        float *row;
        if (t->slow) {
            int rc = s_slow(t, keys[i], S_PULL, &row);
            if (rc < 0)
                return rc;
            if (!row) {
                /* Not admitted: zero weights and the state a fresh row of
                 * zeros would have, so a delta from it is well defined. */
                float *o = out + i * rf;
                memset(o, 0, rf * sizeof(float));
                cm_optim_init_state(&t->p.optim, o, t->dim);
                continue;
            }
        } else {
            int rc = s_get_or_make(t, keys[i], NULL, NULL, &row);
            if (rc != 0)
                return rc;
        }
        memcpy(out + i * rf, row, rf * sizeof(float));
    }
    return 0;
}

int ps_table_push_delta(ps_table *t, const uint64_t *keys, size_t n, const float *deltas)
{
    const size_t rf = t->used;
    for (size_t i = 0; i < n; i++) {
        float *found;
        if (t->slow) {
            int rc = s_slow(t, keys[i], S_PUSH, &found);
            if (rc < 0)
                return rc;
            if (!found)
                continue;   /* not admitted yet: dropped */
        } else {
            int rc = s_get_or_make(t, keys[i], NULL, NULL, &found);
            if (rc != 0)
                return rc;
        }
        float *restrict row = found;
        const float *restrict d = deltas + i * rf;
        for (size_t j = 0; j < rf; j++)
            row[j] += d[j];
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Shared rows */

int ps_table_share(const ps_table *t, ps_table_share_info *out)
{
    if (t->fd < 0)
        return CM_ENOTSUP;
    *out = (ps_table_share_info){
        .fd = t->fd,
        .token = t->token,
        .header = CM_SHARE_HEADER,
        .stride = t->stride,
        .bytes = CM_SHARE_HEADER + t->slab_bytes,
    };
    return 0;
}

int ps_table_place(ps_table *t, const uint64_t *keys, size_t n, int create, uint64_t *idx)
{
    if (t->fd < 0)
        return CM_ENOTSUP;
    for (size_t b = 0; b < n; b += S_BLOCK) {
        size_t m = n - b < S_BLOCK ? n - b : S_BLOCK;
        for (size_t i = 0; i < m; i++)
            cm_hashmap_prefetch(t->index, keys[b + i]);
        for (size_t i = 0; i < m; i++) {
            uint32_t at;
            if (!create) {
                idx[b + i] = cm_hashmap_get(t->index, keys[b + i], &at) ? at : UINT64_MAX;
                if (idx[b + i] == UINT64_MAX && s_foreign(t, keys[b + i]))
                    return CM_EPERM;
                continue;
            }
            float *row;
            int rc = s_get_or_make(t, keys[b + i], NULL, &at, &row);
            if (rc != 0)
                return rc;
            idx[b + i] = at;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Confinement */

void ps_table_confine(ps_table *t, const uint32_t *slot_map, uint32_t n_slots,
                      uint32_t table_id, int owner)
{
    t->slot_map = n_slots ? slot_map : NULL;
    t->n_slots = n_slots;
    t->table_id = table_id;
    t->owner = owner;
}
