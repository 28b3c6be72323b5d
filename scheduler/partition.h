/* partition: how the scheduler maps virtual slots to servers (the hashes that
 * put keys in slots and users on workers are in common/slots.h). */
#ifndef PSREC_SCHEDULER_PARTITION_H
#define PSREC_SCHEDULER_PARTITION_H

#include <stddef.h>
#include <stdint.h>

#include "common/slots.h"

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
