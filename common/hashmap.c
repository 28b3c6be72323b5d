/* hashmap: open addressing with linear probing over a power-of-two table.
 *
 * Occupancy: each slot is {key u64, val u32, used u32}. The `used` word sits
 * in what would otherwise be the padding of a {u64, u32} pair, so it costs
 * no memory and lives in the same cache line as the key: every u64 key
 * (0 and UINT64_MAX included) and every u32 value is storable, with no
 * sentinel and no side table.
 *
 * Load factor is kept <= 0.7; the table doubles when an insert would exceed
 * it. Deletion uses backward shifting (no tombstones), so probe sequences
 * stay short under churn and lookups never scan deleted slots. */
#include "common/hashmap.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/hash.h"
#include "common/mem.h"

#define S_MIN_CAP 16

typedef struct {
    uint64_t key;
    uint32_t val;
    uint32_t used;   /* 1 if the slot holds an entry */
} s_slot;

struct cm_hashmap {
    s_slot *slots;   /* cap slots */
    size_t cap;      /* power of two */
    size_t mask;     /* cap - 1 */
    size_t size;     /* entries held */
    size_t limit;    /* grow when size would exceed this (0.7 * cap) */
};

static inline size_t s_home(const cm_hashmap *m, uint64_t key)
{
    return (size_t)cm_mix64(key) & m->mask;
}

static size_t s_limit(size_t cap)
{
    return cap / 10 * 7 + (cap % 10) * 7 / 10;
}

/* Smallest power-of-two capacity holding n keys under the load limit; 0 on
 * overflow. */
static size_t s_cap_for(size_t n)
{
    size_t cap = S_MIN_CAP;
    while (s_limit(cap) < n) {
        if (cap > ((size_t)-1 >> 1) / sizeof(s_slot))
            return 0;
        cap <<= 1;
    }
    return cap;
}

static int s_alloc(cm_hashmap *m, size_t cap)
{
    s_slot *slots = cm_calloc_big(cap, sizeof *slots);
    if (!slots)
        return CM_ENOMEM;
    m->slots = slots;
    m->cap = cap;
    m->mask = cap - 1;
    m->limit = s_limit(cap);
    return 0;
}

cm_hashmap *cm_hashmap_new(size_t expected)
{
    cm_hashmap *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    size_t cap = s_cap_for(expected);
    if (cap == 0 || s_alloc(m, cap) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

void cm_hashmap_destroy(cm_hashmap **pm)
{
    if (!pm || !*pm)
        return;
    free((*pm)->slots);
    free(*pm);
    *pm = NULL;
}

/* Slot index holding key, or the empty slot where it would go. */
static inline size_t s_find(const cm_hashmap *m, uint64_t key)
{
    size_t i = s_home(m, key);
    for (;;) {
        const s_slot *s = &m->slots[i];
        if (!s->used || s->key == key)
            return i;
        i = (i + 1) & m->mask;
    }
}

static int s_grow(cm_hashmap *m)
{
    if (m->cap > ((size_t)-1 >> 1) / sizeof(s_slot))
        return CM_ENOMEM;
    s_slot *old = m->slots;
    size_t old_cap = m->cap;
    if (s_alloc(m, old_cap << 1) != 0)
        return CM_ENOMEM;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].used)
            continue;
        size_t j = s_home(m, old[i].key);
        while (m->slots[j].used)
            j = (j + 1) & m->mask;
        m->slots[j] = old[i];
    }
    free(old);
    return 0;
}

int cm_hashmap_get(const cm_hashmap *m, uint64_t key, uint32_t *val)
{
    const s_slot *s = &m->slots[s_find(m, key)];
    if (!s->used)
        return 0;
    if (val)
        *val = s->val;
    return 1;
}

/* Inserts an absent key whose probe ended at empty slot i; grows first when
 * the insert would pass the load limit (then the slot is found again). */
static inline int s_insert(cm_hashmap *m, size_t i, uint64_t key, uint32_t val)
{
    if (m->size + 1 > m->limit) {
        if (s_grow(m) != 0)
            return CM_ENOMEM;
        i = s_find(m, key);
    }
    m->slots[i].key = key;
    m->slots[i].val = val;
    m->slots[i].used = 1;
    m->size++;
    return 0;
}

int cm_hashmap_upsert(cm_hashmap *m, uint64_t key, uint32_t val_if_new,
                      uint32_t *val, int *inserted)
{
    size_t i = s_find(m, key);
    int fresh = !m->slots[i].used;
    if (fresh && s_insert(m, i, key, val_if_new) != 0)
        return CM_ENOMEM;
    if (val)
        *val = fresh ? val_if_new : m->slots[i].val;
    if (inserted)
        *inserted = fresh;
    return 0;
}

void cm_hashmap_prefetch(const cm_hashmap *m, uint64_t key)
{
    __builtin_prefetch(&m->slots[s_home(m, key)], 0, 3);
}

int cm_hashmap_put(cm_hashmap *m, uint64_t key, uint32_t val)
{
    size_t i = s_find(m, key);
    if (m->slots[i].used) {
        m->slots[i].val = val;
        return 0;
    }
    return s_insert(m, i, key, val);
}

int cm_hashmap_remove(cm_hashmap *m, uint64_t key)
{
    size_t i = s_find(m, key);
    if (!m->slots[i].used)
        return 0;
    /* Backward shift: walk the cluster after the hole and move back every
     * entry whose home is not cyclically inside (hole, j], so that each
     * remaining key is still reachable from its home without a gap. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        s_slot *s = &m->slots[j];
        if (!s->used)
            break;
        size_t home = s_home(m, s->key);
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->slots[i] = *s;
            i = j;
        }
    }
    m->slots[i].used = 0;
    m->slots[i].key = 0;
    m->slots[i].val = 0;
    m->size--;
    return 1;
}

size_t cm_hashmap_size(const cm_hashmap *m)
{
    return m->size;
}

size_t cm_hashmap_bytes(const cm_hashmap *m)
{
    return sizeof *m + m->cap * sizeof(s_slot);
}

size_t cm_hashmap_bytes_for(size_t n)
{
    /* growth doubles from the least capacity, so it lands where s_cap_for
     * starts from scratch */
    return sizeof(cm_hashmap) + s_cap_for(n) * sizeof(s_slot);
}

int cm_hashmap_next(const cm_hashmap *m, size_t *pos, uint64_t *key, uint32_t *val)
{
    for (size_t i = *pos; i < m->cap; i++) {
        if (m->slots[i].used) {
            if (key)
                *key = m->slots[i].key;
            if (val)
                *val = m->slots[i].val;
            *pos = i + 1;
            return 1;
        }
    }
    *pos = m->cap;
    return 0;
}
