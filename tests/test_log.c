/* test_log: levels, and the per-minute budget for warnings about what
 * peers send. */
#include <criterion/criterion.h>

#include "common/log.h"

Test(log, levels_parse)
{
    cr_expect_eq(cm_log_level_parse("debug"), CM_LOG_DEBUG);
    cr_expect_eq(cm_log_level_parse("warn"), CM_LOG_WARN);
    cr_expect_eq(cm_log_level_parse("silent"), CM_LOG_SILENT);
    cr_expect_eq(cm_log_level_parse("loud"), -1);
}

/* A zeroed budget of 3 a minute gives 3 lines, then holds the rest back
 * and says how many at the next line it gives; a new minute starts over. */
Test(log, budget_gives_per_minute_and_counts_the_rest)
{
    cm_log_budget b = {.per_minute = 3};
    uint64_t quiet = 99;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(cm_log_budget_take(&b, &quiet), 1, "line %d", i);
        cr_expect_eq(quiet, 0);
    }
    for (int i = 0; i < 5; i++)
        cr_assert_eq(cm_log_budget_take(&b, &quiet), 0, "held back %d", i);
    /* the minute is over (moved back, as time passing would) */
    b.window -= 61.0;
    cr_assert_eq(cm_log_budget_take(&b, &quiet), 1);
    cr_expect_eq(quiet, 5, "the five held back are reported");
    cr_assert_eq(cm_log_budget_take(&b, &quiet), 1);
    cr_expect_eq(quiet, 0);
}

Test(log, budget_of_zero_gives_nothing)
{
    cm_log_budget b = {.per_minute = 0};
    uint64_t quiet = 0;
    cr_expect_eq(cm_log_budget_take(&b, &quiet), 0);
    cr_expect_eq(b.quiet, 1);
}
