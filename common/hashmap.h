/* hashmap: open-addressing map from any 64-bit key to a 32-bit value
 * (typically a row index into a slab). Grows by doubling; every key value,
 * 0 and UINT64_MAX included, is a valid key. One owning thread. */
#ifndef PSREC_COMMON_HASHMAP_H
#define PSREC_COMMON_HASHMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct cm_hashmap cm_hashmap;

/* New map sized for about `expected` keys (0 is fine). NULL on ENOMEM. */
cm_hashmap *cm_hashmap_new(size_t expected);

/* Frees and NULLs *pm; no-op on NULL. */
void cm_hashmap_destroy(cm_hashmap **pm);

/* Looks up key; on hit stores the value in *val and returns 1, else 0. */
int cm_hashmap_get(const cm_hashmap *m, uint64_t key, uint32_t *val);

/* Inserts or overwrites. 0, or CM_ENOMEM (map unchanged). */
int cm_hashmap_put(cm_hashmap *m, uint64_t key, uint32_t val);

/* Finds key; if absent inserts it with value `val_if_new`. Stores the value
 * in *val and sets *inserted (may be NULL). 0, or CM_ENOMEM. */
int cm_hashmap_upsert(cm_hashmap *m, uint64_t key, uint32_t val_if_new,
                      uint32_t *val, int *inserted);

/* A hint that key is looked up soon: starts loading the slot its probe
 * begins at, so a batch of lookups waits for memory once, not per key. */
void cm_hashmap_prefetch(const cm_hashmap *m, uint64_t key);

/* Removes key; returns 1 if it was present. */
int cm_hashmap_remove(cm_hashmap *m, uint64_t key);

/* Number of keys. */
size_t cm_hashmap_size(const cm_hashmap *m);

/* Bytes held by the map (for memory accounting). */
size_t cm_hashmap_bytes(const cm_hashmap *m);

/* What cm_hashmap_bytes() reports for a map made with cm_hashmap_new(0)
 * once it holds n keys (its capacity then is the least power of two with
 * room for n at the load limit): for memory plans. */
size_t cm_hashmap_bytes_for(size_t n);

/* Iteration: start with *pos = 0; returns 1 and fills key/val while entries
 * remain, 0 at the end. The map must not change during iteration. */
int cm_hashmap_next(const cm_hashmap *m, size_t *pos, uint64_t *key, uint32_t *val);

#endif
