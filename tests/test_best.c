/* test_best: the chosen-epoch bookkeeping (scheduler/best.h): the lowest
 * validation metric is chosen, ties keep the earlier epoch, evaluations
 * without improvement count up to patience, and patience 0 never stops. */
#include <criterion/criterion.h>
#include <math.h>

#include "scheduler/best.h"

Test(best, lowest_metric_is_chosen)
{
    sch_best b = sch_best_start(3);
    cr_expect_eq(b.epoch, 0, "nothing chosen before an evaluation");
    const double m[] = {0.95, 0.93, 0.94, 0.92, 0.925};
    const int chosen[] = {1, 2, 2, 4, 4};
    const int improved[] = {1, 1, 0, 1, 0};
    for (int e = 1; e <= 5; e++) {
        cr_expect_eq(sch_best_add(&b, e, m[e - 1]), improved[e - 1], "epoch %d", e);
        cr_expect_eq(b.epoch, chosen[e - 1], "after epoch %d", e);
    }
    cr_expect_float_eq(b.metric, 0.92, 1e-12);
    cr_expect_eq(b.stale, 1);
}

Test(best, a_tie_keeps_the_earlier_epoch)
{
    sch_best b = sch_best_start(2);
    sch_best_add(&b, 1, 0.5);
    cr_expect_eq(sch_best_add(&b, 2, 0.5), 0);
    cr_expect_eq(b.epoch, 1);
    cr_expect_eq(b.stale, 1);
}

Test(best, patience_stops_after_that_many_evaluations)
{
    sch_best b = sch_best_start(3);
    sch_best_add(&b, 1, 1.0);
    sch_best_add(&b, 2, 0.8);
    for (int e = 3; e <= 5; e++) {
        cr_expect_not(sch_best_exhausted(&b), "stopped before epoch %d", e);
        sch_best_add(&b, e, 0.9);
    }
    cr_expect(sch_best_exhausted(&b), "3 evaluations without improvement");
    cr_expect_eq(b.epoch, 2);
    /* an improvement resets the count */
    sch_best c = sch_best_start(2);
    sch_best_add(&c, 1, 1.0);
    sch_best_add(&c, 2, 1.1);
    sch_best_add(&c, 3, 0.9);
    sch_best_add(&c, 4, 1.0);
    cr_expect_not(sch_best_exhausted(&c));
    cr_expect_eq(c.stale, 1);
}

Test(best, patience_zero_never_stops)
{
    sch_best b = sch_best_start(0);
    sch_best_add(&b, 1, 0.1);
    for (int e = 2; e < 100; e++)
        sch_best_add(&b, e, 1.0);
    cr_expect_not(sch_best_exhausted(&b));
    cr_expect_eq(b.epoch, 1);
    cr_expect_eq(sch_best_start(-4).patience, 0, "a negative patience is none");
}

Test(best, non_finite_is_never_chosen)
{
    sch_best b = sch_best_start(5);
    cr_expect_eq(sch_best_add(&b, 1, NAN), 0);
    cr_expect_eq(b.epoch, 0);
    cr_expect_eq(sch_best_add(&b, 2, INFINITY), 0);
    cr_expect_eq(sch_best_add(&b, 3, 2.0), 1);
    cr_expect_eq(b.epoch, 3);
    cr_expect_eq(sch_best_add(&b, 4, NAN), 0);
    cr_expect_eq(b.epoch, 3);
    cr_expect_eq(b.stale, 1);
}
