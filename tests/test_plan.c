/* Slot partitioning: every slot mapped, balance by count and by load. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "common/slots.h"
#include "scheduler/plan.h"

Test(plan, unweighted_is_even)
{
    enum { SLOTS = 4096 };
    static uint32_t map[SLOTS];
    for (uint32_t servers = 1; servers <= 7; servers++) {
        sch_plan_slots(map, SLOTS, servers, NULL);
        uint32_t count[8] = {0};
        for (uint32_t s = 0; s < SLOTS; s++) {
            cr_assert_lt(map[s], servers);
            count[map[s]]++;
        }
        for (uint32_t k = 0; k < servers; k++)
            cr_expect_leq(abs((int)count[k] - (int)(SLOTS / servers)), 1,
                          "%u servers: server %u has %u slots", servers, k, count[k]);
        cr_expect_leq(sch_plan_imbalance(map, SLOTS, servers, NULL), 1.0 + 1.0 * servers / SLOTS);
    }
}

Test(plan, weighted_evens_out_power_law_load)
{
    enum { SLOTS = 1024, SERVERS = 4 };
    static uint32_t map[SLOTS];
    static double w[SLOTS];
    /* Zipf-like slot loads: a few hot slots carry most requests */
    for (uint32_t s = 0; s < SLOTS; s++)
        w[s] = 1.0 / pow((double)((s * 7919u) % SLOTS) + 1.0, 0.9);
    sch_plan_slots(map, SLOTS, SERVERS, NULL);
    double before = sch_plan_imbalance(map, SLOTS, SERVERS, w);
    sch_plan_slots(map, SLOTS, SERVERS, w);
    double after = sch_plan_imbalance(map, SLOTS, SERVERS, w);
    cr_expect_lt(after, before, "load-aware plan %.4f is better than %.4f", after, before);
    cr_expect_lt(after, 1.05, "max/mean load %.4f", after);
}

Test(plan, keys_spread_over_slots)
{
    enum { SLOTS = 64, KEYS = 64000 };
    uint32_t count[SLOTS] = {0};
    for (uint64_t k = 1; k <= KEYS; k++)
        count[cm_slot_of(k, 1, SLOTS)]++;
    for (int s = 0; s < SLOTS; s++)
        cr_expect(count[s] > 800 && count[s] < 1200, "slot %d holds %u of %d keys", s,
                  count[s], KEYS);
    cr_expect_eq(cm_slot_of(12345, 0, 4096), cm_slot_of(12345, 0, 4096), "stable");
    int differ = 0;
    for (uint64_t k = 1; k <= 100; k++)
        differ += cm_slot_of(k, 0, 4096) != cm_slot_of(k, 1, 4096);
    cr_expect_gt(differ, 90, "tables hash with their own seeds");
}

Test(plan, users_spread_over_workers)
{
    uint32_t count[3] = {0};
    for (uint64_t u = 1; u <= 30000; u++)
        count[cm_worker_of(u, 3)]++;
    for (int w = 0; w < 3; w++)
        cr_expect(count[w] > 9500 && count[w] < 10500, "worker %d owns %u users", w, count[w]);
}
