/* HyperLogLog: estimates against exact counts over several magnitudes,
 * duplicates ignored, merges equal the sketch of the union. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "common/hll.h"
#include "common/rng.h"

static cm_hll s_h, s_g;

static double s_rel(double est, double exact)
{
    return fabs(est - exact) / exact;
}

Test(hll, empty_is_zero)
{
    cm_hll_clear(&s_h);
    cr_assert_eq(cm_hll_estimate(&s_h), 0.0);
}

Test(hll, estimates_within_three_percent)
{
    const uint64_t sizes[] = {100, 1000, 20000, 200000, 3000000};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        cm_hll_clear(&s_h);
        for (uint64_t k = 0; k < sizes[s]; k++)
            cm_hll_add(&s_h, k * 7919 + 13);
        double e = cm_hll_estimate(&s_h);
        cr_assert(s_rel(e, (double)sizes[s]) < 0.03, "n %llu: estimate %.0f",
                  (unsigned long long)sizes[s], e);
    }
}

Test(hll, duplicates_do_not_count)
{
    cm_hll_clear(&s_h);
    cm_rng rng;
    cm_rng_seed(&rng, 5);
    for (int r = 0; r < 500000; r++)
        cm_hll_add(&s_h, cm_rng_next(&rng) % 5000);
    cr_assert(s_rel(cm_hll_estimate(&s_h), 5000) < 0.03, "%.0f", cm_hll_estimate(&s_h));
}

Test(hll, merge_is_the_union)
{
    cm_hll_clear(&s_h);
    cm_hll_clear(&s_g);
    for (uint64_t k = 0; k < 300000; k++)
        cm_hll_add(k % 2 ? &s_h : &s_g, k);
    cr_assert(s_rel(cm_hll_estimate(&s_h), 150000) < 0.03);
    cm_hll_merge(&s_h, &s_g);
    cr_assert(s_rel(cm_hll_estimate(&s_h), 300000) < 0.03, "%.0f", cm_hll_estimate(&s_h));
}
