#include "scheduler/best.h"

#include <math.h>

sch_best sch_best_start(int patience)
{
    return (sch_best){.patience = patience > 0 ? patience : 0, .epoch = 0, .metric = INFINITY,
                      .stale = 0};
}

int sch_best_add(sch_best *b, int epoch, double metric)
{
    /* strict: a tie keeps the earlier, cheaper-to-reach epoch */
    if (isfinite(metric) && (b->epoch == 0 || metric < b->metric)) {
        b->epoch = epoch;
        b->metric = metric;
        b->stale = 0;
        return 1;
    }
    b->stale++;
    return 0;
}

int sch_best_exhausted(const sch_best *b)
{
    return b->patience > 0 && b->stale >= b->patience;
}
