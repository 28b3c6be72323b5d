/* One CPU per training thread (common/affinity.h). */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <sched.h>

#include "common/affinity.h"

static int s_allowed(cpu_set_t *set)
{
    CPU_ZERO(set);
    cr_assert_eq(sched_getaffinity(0, sizeof *set, set), 0);
    return CPU_COUNT(set);
}

/* The index-th allowed CPU, in CPU order. */
static int s_nth(const cpu_set_t *set, int index)
{
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, set) && index-- == 0)
            return cpu;
    return -1;
}

Test(affinity, pins_to_the_index_th_allowed_cpu)
{
    cpu_set_t before, after;
    int n = s_allowed(&before);
    int index = n - 1; /* the last one: differs from the first wherever n > 1 */
    int cpu = cm_pin_thread(index, n);
    cr_assert_eq(cpu, s_nth(&before, index));
    cr_assert_eq(s_allowed(&after), 1);
    cr_expect(CPU_ISSET(cpu, &after));
}

Test(affinity, leaves_the_thread_alone_without_a_cpu_each)
{
    cpu_set_t before, after;
    int n = s_allowed(&before);
    cr_expect_eq(cm_pin_thread(0, n + 1), -1, "more peers than CPUs");
    cr_expect_eq(cm_pin_thread(n, n), -1, "index out of range");
    cr_expect_eq(cm_pin_thread(-1, n), -1, "not one of the peers");
    cr_expect_eq(cm_pin_thread(0, 0), -1, "no peers");
    cr_assert_eq(s_allowed(&after), n);
    cr_expect(CPU_EQUAL(&before, &after), "the allowed set is unchanged");
}

Test(affinity, a_launcher_binding_to_one_cpu_is_kept)
{
    cpu_set_t before, one, after;
    s_allowed(&before);
    CPU_ZERO(&one);
    CPU_SET(s_nth(&before, 0), &one);
    cr_assert_eq(sched_setaffinity(0, sizeof one, &one), 0);
    /* two workers on the host, one CPU allowed: a launcher chose */
    cr_expect_eq(cm_pin_thread(1, 2), -1);
    s_allowed(&after);
    cr_expect(CPU_EQUAL(&one, &after));
}
