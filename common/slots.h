/* slots: where a key lives and which worker owns a user.
 *
 * Keys go to servers through a fixed number of virtual slots: a key's slot
 * is xxh64(key, table seed) mod n_slots, and the scheduler's plan maps
 * slots to servers. Users go to workers by xxh64(user, user seed) mod
 * n_workers, so each user's interactions live on one worker. Because the
 * slot of a key never changes, a different server count is only a
 * different slot map. */
#ifndef PSREC_COMMON_SLOTS_H
#define PSREC_COMMON_SLOTS_H

#include <stdint.h>

#include "common/hash.h"

/* Seed of table t's slot hash (distinct per table, fixed forever). */
static inline uint64_t cm_table_seed(uint32_t table)
{
    return cm_mix64(0x70737265632d7462ULL + table);
}

/* Seed of the user -> worker hash. */
#define CM_USER_SEED 0x70737265632d7573ULL

static inline uint32_t cm_slot_of(uint64_t key, uint32_t table, uint32_t n_slots)
{
    return (uint32_t)(cm_hash_key(key, cm_table_seed(table)) % n_slots);
}

static inline uint32_t cm_worker_of(uint64_t user, uint32_t n_workers)
{
    return (uint32_t)(cm_hash_key(user, CM_USER_SEED) % n_workers);
}

#endif
