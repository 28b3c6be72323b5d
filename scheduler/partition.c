#include "scheduler/partition.h"

#include <stdlib.h>

typedef struct {
    double w;
    uint32_t slot;
} s_slot_weight;

static int s_by_weight_desc(const void *a, const void *b)
{
    const s_slot_weight *x = a, *y = b;
    if (x->w != y->w)
        return x->w < y->w ? 1 : -1;
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

void sch_plan_slots(uint32_t *map, uint32_t n_slots, uint32_t n_servers,
                    const double *weights)
{
    if (!weights) {
        for (uint32_t s = 0; s < n_slots; s++)
            map[s] = s % n_servers;
        return;
    }
    s_slot_weight *order = malloc(n_slots * sizeof *order);
    double *load = calloc(n_servers, sizeof *load);
    if (!order || !load) {
        /* fall back to the unweighted plan: still correct, just less even */
        free(order);
        free(load);
        sch_plan_slots(map, n_slots, n_servers, NULL);
        return;
    }
    for (uint32_t s = 0; s < n_slots; s++)
        order[s] = (s_slot_weight){weights[s], s};
    qsort(order, n_slots, sizeof *order, s_by_weight_desc);
    for (uint32_t i = 0; i < n_slots; i++) {
        uint32_t best = 0;
        for (uint32_t k = 1; k < n_servers; k++)
            if (load[k] < load[best])
                best = k;
        map[order[i].slot] = best;
        load[best] += order[i].w;
    }
    free(order);
    free(load);
}

double sch_plan_imbalance(const uint32_t *map, uint32_t n_slots, uint32_t n_servers,
                          const double *weights)
{
    double *load = calloc(n_servers, sizeof *load);
    if (!load)
        return -1.0;
    double total = 0;
    for (uint32_t s = 0; s < n_slots; s++) {
        double w = weights ? weights[s] : 1.0;
        load[map[s]] += w;
        total += w;
    }
    double mx = 0;
    for (uint32_t k = 0; k < n_servers; k++)
        if (load[k] > mx)
            mx = load[k];
    free(load);
    return total > 0 ? mx / (total / n_servers) : 1.0;
}
