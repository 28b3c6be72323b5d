/* plan: how the scheduler partitions a job.
 *
 * Keys go to servers through a fixed number of virtual slots: a key's slot
 * is xxh64(key, table seed) mod n_slots, and the plan maps slots to
 * servers. Users go to workers by xxh64(user, partition seed) mod
 * n_workers, so each user's interactions live on one worker. Because the
 * slot of a key never changes, a different server count is only a
 * different slot map. */
#ifndef PSREC_SCHEDULER_PLAN_H
#define PSREC_SCHEDULER_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"

/* Seed of table t's slot hash (distinct per table, fixed forever). */
static inline uint64_t sch_table_seed(uint32_t table)
{
    return cm_mix64(0x70737265632d7462ULL + table);
}

/* Seed of the user -> worker hash. */
#define SCH_USER_SEED 0x70737265632d7573ULL

static inline uint32_t sch_slot_of(uint64_t key, uint32_t table, uint32_t n_slots)
{
    return (uint32_t)(cm_hash_key(key, sch_table_seed(table)) % n_slots);
}

static inline uint32_t sch_worker_of(uint64_t user, uint32_t n_workers)
{
    return (uint32_t)(cm_hash_key(user, SCH_USER_SEED) % n_workers);
}

/* Fills map[0..n_slots) with a server per slot so that each server gets
 * n_slots/n_servers slots (+1 for the first remainder), interleaved.
 * With weights (may be NULL: all equal), slots are instead assigned
 * heaviest first to the least loaded server (longest-processing-time). */
void sch_plan_slots(uint32_t *map, uint32_t n_slots, uint32_t n_servers,
                    const double *weights);

/* max/mean of the per-server sums of weights under map (1.0 is perfect). */
double sch_plan_imbalance(const uint32_t *map, uint32_t n_slots, uint32_t n_servers,
                          const double *weights);

#endif
