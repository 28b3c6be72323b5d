/* Tests for common/hashmap: against a brute-force reference under random
 * inserts and removes, edge keys and values, growth and iteration; and
 * common/hash's inline key hash against the xxhash library. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/hash.h"
#include "common/hashmap.h"
#include "common/rng.h"

Test(hashmap, empty_map)
{
    cm_hashmap *m = cm_hashmap_new(0);
    cr_assert_not_null(m);
    cr_assert_eq(cm_hashmap_size(m), 0);
    uint32_t v = 7;
    cr_assert_eq(cm_hashmap_get(m, 0, &v), 0);
    cr_assert_eq(cm_hashmap_get(m, UINT64_MAX, &v), 0);
    cr_assert_eq(v, 7, "a miss leaves *val alone");
    cr_assert_eq(cm_hashmap_remove(m, 123), 0);
    size_t pos = 0;
    uint64_t k;
    cr_assert_eq(cm_hashmap_next(m, &pos, &k, &v), 0);
    cr_assert_gt(cm_hashmap_bytes(m), 0);
    cm_hashmap_destroy(&m);
    cr_assert_null(m);
    cm_hashmap_destroy(&m);
    cm_hashmap_destroy(NULL);
}

Test(hashmap, edge_keys_and_values)
{
    cm_hashmap *m = cm_hashmap_new(4);
    uint64_t keys[] = {0, UINT64_MAX, 1, UINT64_MAX - 1, 1ULL << 63};
    uint32_t vals[] = {UINT32_MAX, 0, 1, UINT32_MAX - 1, 42};
    for (int i = 0; i < 5; i++)
        cr_assert_eq(cm_hashmap_put(m, keys[i], vals[i]), 0);
    cr_assert_eq(cm_hashmap_size(m), 5);
    for (int i = 0; i < 5; i++) {
        uint32_t v = 12345;
        cr_assert_eq(cm_hashmap_get(m, keys[i], &v), 1, "key %d", i);
        cr_assert_eq(v, vals[i]);
    }
    /* overwrite */
    cr_assert_eq(cm_hashmap_put(m, 0, 9), 0);
    uint32_t v;
    cr_assert(cm_hashmap_get(m, 0, &v) && v == 9);
    cr_assert_eq(cm_hashmap_size(m), 5);
    cr_assert_eq(cm_hashmap_remove(m, UINT64_MAX), 1);
    cr_assert_eq(cm_hashmap_remove(m, UINT64_MAX), 0);
    cr_assert_eq(cm_hashmap_get(m, UINT64_MAX, &v), 0);
    cr_assert_eq(cm_hashmap_size(m), 4);
    cr_assert_eq(cm_hashmap_remove(m, 0), 1);
    cr_assert_eq(cm_hashmap_get(m, 0, NULL), 0);
    cr_assert_eq(cm_hashmap_get(m, 1, NULL), 1);
    cm_hashmap_destroy(&m);
}

Test(hashmap, upsert_semantics)
{
    cm_hashmap *m = cm_hashmap_new(0);
    uint32_t v = 0;
    int ins = -1;
    cr_assert_eq(cm_hashmap_upsert(m, 77, 5, &v, &ins), 0);
    cr_assert_eq(ins, 1);
    cr_assert_eq(v, 5);
    cr_assert_eq(cm_hashmap_upsert(m, 77, 6, &v, &ins), 0);
    cr_assert_eq(ins, 0);
    cr_assert_eq(v, 5, "an existing value is returned, not replaced");
    cr_assert_eq(cm_hashmap_upsert(m, 78, 8, NULL, NULL), 0);
    cr_assert_eq(cm_hashmap_size(m), 2);
    /* the row-index idiom: value = size before insert */
    for (uint64_t k = 1000; k < 1100; k++) {
        uint32_t idx;
        cr_assert_eq(cm_hashmap_upsert(m, k, (uint32_t)cm_hashmap_size(m), &idx, NULL), 0);
    }
    for (uint64_t k = 1000; k < 1100; k++) {
        cr_assert(cm_hashmap_get(m, k, &v));
        cr_assert_eq(v, k - 1000 + 2);
    }
    cm_hashmap_destroy(&m);
}

/* Brute-force reference over a fixed universe of keys. */
typedef struct {
    uint64_t *keys;
    uint32_t *vals;
    char *present;
    size_t n, size;
} ref_map;

static void check_equal(const cm_hashmap *m, const ref_map *ref)
{
    cr_assert_eq(cm_hashmap_size(m), ref->size);
    for (size_t i = 0; i < ref->n; i++) {
        uint32_t v = 0;
        int hit = cm_hashmap_get(m, ref->keys[i], &v);
        cr_assert_eq(hit, ref->present[i], "key %zu (%llu)", i, (unsigned long long)ref->keys[i]);
        if (hit)
            cr_assert_eq(v, ref->vals[i]);
    }
    /* iteration yields exactly the present keys, each once */
    char *seen = calloc(ref->n, 1);
    size_t pos = 0, count = 0;
    uint64_t k;
    uint32_t v;
    while (cm_hashmap_next(m, &pos, &k, &v)) {
        size_t i = 0;
        while (i < ref->n && ref->keys[i] != k)
            i++;
        cr_assert_lt(i, ref->n, "iterated an unknown key");
        cr_assert(ref->present[i] && !seen[i]);
        cr_assert_eq(v, ref->vals[i]);
        seen[i] = 1;
        count++;
    }
    cr_assert_eq(count, ref->size);
    free(seen);
}

static void random_ops(uint64_t seed, size_t universe, long ops, int clustered)
{
    cm_rng r;
    cm_rng_seed(&r, seed);
    ref_map ref = {.n = universe};
    ref.keys = malloc(universe * sizeof *ref.keys);
    ref.vals = calloc(universe, sizeof *ref.vals);
    ref.present = calloc(universe, 1);
    for (size_t i = 0; i < universe; i++)
        ref.keys[i] = clustered ? (uint64_t)i : cm_rng_next(&r);
    ref.keys[0] = 0;
    ref.keys[1] = UINT64_MAX;
    ref.keys[2] = UINT64_MAX - 1;
    cm_hashmap *m = cm_hashmap_new(0);
    cr_assert_not_null(m);
    for (long op = 0; op < ops; op++) {
        size_t i = cm_rng_below(&r, universe);
        uint32_t val = (uint32_t)cm_rng_next(&r);
        switch (cm_rng_below(&r, 4)) {
        case 0:
        case 1:
            cr_assert_eq(cm_hashmap_put(m, ref.keys[i], val), 0);
            ref.size += !ref.present[i];
            ref.present[i] = 1;
            ref.vals[i] = val;
            break;
        case 2: {
            uint32_t got;
            int ins;
            cr_assert_eq(cm_hashmap_upsert(m, ref.keys[i], val, &got, &ins), 0);
            cr_assert_eq(ins, !ref.present[i]);
            if (!ref.present[i]) {
                ref.present[i] = 1;
                ref.vals[i] = val;
                ref.size++;
            }
            cr_assert_eq(got, ref.vals[i]);
            break;
        }
        default:
            cr_assert_eq(cm_hashmap_remove(m, ref.keys[i]), ref.present[i]);
            ref.size -= ref.present[i];
            ref.present[i] = 0;
        }
        if (op % 5000 == 0)
            check_equal(m, &ref);
    }
    check_equal(m, &ref);
    /* drain: remove everything in random order */
    for (size_t i = 0; i < universe; i++) {
        size_t j = (i * 7919) % universe;
        cr_assert_eq(cm_hashmap_remove(m, ref.keys[j]), ref.present[j]);
        ref.size -= ref.present[j];
        ref.present[j] = 0;
    }
    check_equal(m, &ref);
    cr_assert_eq(cm_hashmap_size(m), 0);
    cm_hashmap_destroy(&m);
    free(ref.keys);
    free(ref.vals);
    free(ref.present);
}

Test(hashmap, random_ops_match_reference)
{
    random_ops(1, 2000, 200000, 0);
}

Test(hashmap, random_ops_dense_keys_high_churn)
{
    /* small universe: the table stays small and full of clusters, which is
     * where backward-shift deletion has to be right */
    random_ops(2, 300, 200000, 1);
}

Test(hashmap, growth_keeps_everything)
{
    cm_hashmap *m = cm_hashmap_new(0);
    size_t b0 = cm_hashmap_bytes(m);
    const uint64_t n = 200000;
    for (uint64_t k = 0; k < n; k++)
        cr_assert_eq(cm_hashmap_put(m, k * 0x10000ULL, (uint32_t)k), 0);
    cr_assert_eq(cm_hashmap_size(m), n);
    size_t b1 = cm_hashmap_bytes(m);
    cr_assert_gt(b1, b0);
    /* load <= 0.7 with 16-byte slots, and not wastefully more than 2x that */
    cr_assert_geq(b1, (size_t)(n / 0.7 * 16));
    cr_assert_leq(b1, (size_t)(n / 0.7 * 16 * 2) + 4096);
    for (uint64_t k = 0; k < n; k++) {
        uint32_t v;
        cr_assert(cm_hashmap_get(m, k * 0x10000ULL, &v));
        cr_assert_eq(v, (uint32_t)k);
    }
    cr_assert_eq(cm_hashmap_get(m, 1, NULL), 0);
    cm_hashmap_destroy(&m);
}

Test(hashmap, presized_map_does_not_grow)
{
    cm_hashmap *m = cm_hashmap_new(10000);
    size_t b0 = cm_hashmap_bytes(m);
    for (uint64_t k = 0; k < 10000; k++)
        cr_assert_eq(cm_hashmap_put(m, k, 1), 0);
    cr_assert_eq(cm_hashmap_bytes(m), b0);
    cm_hashmap_destroy(&m);
}

Test(hashmap, iteration_visits_each_key_once)
{
    cm_hashmap *m = cm_hashmap_new(0);
    for (uint64_t k = 1; k <= 1000; k++)
        cm_hashmap_put(m, k, (uint32_t)(k * 3));
    cm_hashmap_put(m, 0, 0);
    size_t pos = 0, n = 0;
    uint64_t key, sum = 0;
    uint32_t v;
    while (cm_hashmap_next(m, &pos, &key, &v)) {
        cr_assert_eq(v, key * 3);
        sum += key;
        n++;
    }
    cr_assert_eq(n, 1001);
    cr_assert_eq(sum, 1000 * 1001 / 2);
    cr_assert_eq(cm_hashmap_next(m, &pos, &key, &v), 0, "stays at the end");
    cm_hashmap_destroy(&m);
}

/* cm_hash_key is xxh64 of the key's 8 bytes written out inline: every
 * slot, block and worker placement (and so every saved plan and
 * checkpoint's layout) depends on it giving the library's value. */
Test(hash, key_hash_is_the_library_xxh64)
{
    const uint64_t edge[] = {0, 1, 0xFF, 0x8000000000000000ULL, UINT64_MAX, 0x123456789ABCDEFULL};
    const uint64_t seeds[] = {0, 1, 0x686c6cULL, UINT64_MAX};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++)
        for (size_t s = 0; s < sizeof seeds / sizeof seeds[0]; s++)
            cr_assert_eq(cm_hash_key(edge[i], seeds[s]), XXH64(&edge[i], 8, seeds[s]),
                         "key %#llx seed %#llx", (unsigned long long)edge[i],
                         (unsigned long long)seeds[s]);
    cm_rng r;
    cm_rng_seed(&r, 42);
    for (int i = 0; i < 100000; i++) {
        uint64_t k = cm_rng_next(&r), seed = cm_rng_next(&r);
        cr_assert_eq(cm_hash_key(k, seed), XXH64(&k, 8, seed));
    }
}
