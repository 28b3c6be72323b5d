/* Slot partitioning: every slot mapped, balance by count and by load. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "common/slots.h"
#include "scheduler/partition.h"

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

/* ---------------------------------------------------------------------------
 * The memory planner (cluster/plan.c) for ffm and deep: the row sizes of
 * their tables, fields read from the data as the launcher does.
 * ------------------------------------------------------------------------- */

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cluster/plan.h"

static uint64_t s_item(const cl_plan_role *r, const char *name)
{
    for (size_t k = 0; k < r->n_items; k++)
        if (strcmp(r->items[k].name, name) == 0)
            return r->items[k].bytes;
    return 0;
}

static cm_job s_plan_job(const char *model, const char *train)
{
    cm_job j = cm_job_default();
    snprintf(j.model, sizeof j.model, "%s", model);
    snprintf(j.train, sizeof j.train, "%s", train);
    j.dim = 4;
    j.optimizer = CM_OPT_SGD;
    return j;
}

Test(plan, ffm_and_deep_rows)
{
    char path[] = "/tmp/psrec-plan-XXXXXX.ffm";
    int fd = mkstemps(path, 4);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 100; i++)
        fprintf(f, "%d 0:%d:1 1:%d:1 2:%d:0.5\n", i % 2, i % 10, 100 + i % 7, 200 + i % 3);
    fclose(f);
    cm_error err = {0};
    cl_plan fm, ffm, deep;

    cm_job j = s_plan_job("fm", path);
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &fm, &err), 0, "%s", err.msg);
    cr_expect_eq(fm.row_floats, 5, "fm: [w, v (4)]");

    j = s_plan_job("ffm", path);
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &ffm, &err), 0, "%s", err.msg);
    cr_expect_eq(ffm.row_floats, 1 + 3 * 4, "ffm: [w, v per field (3 x 4)]");
    cr_expect_eq(ffm.data.n_features, fm.data.n_features);
    cr_expect_gt(s_item(&ffm.server, "rows: weights"), 2 * s_item(&fm.server, "rows: weights"));

    j = s_plan_job("deep", path);
    snprintf(j.hidden, sizeof j.hidden, "64,32");
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &deep, &err), 0, "%s", err.msg);
    cr_expect_eq(deep.row_floats, 5, "deep's feature rows are FM rows");
    /* + the net: (12 x 64 + 64 + 64 x 32 + 32 + 32 + 1, padded) floats */
    const uint64_t net = s_item(&deep.server, "rows: weights") -
                         s_item(&fm.server, "rows: weights");
    cr_expect(net >= (12 * 64 + 64 + 64 * 32 + 32 + 32 + 1) * 4 && net < 4 * 4096,
              "dense table weights %llu B", (unsigned long long)net);
    cr_expect_gt(s_item(&deep.worker, "MLP scratch (activations)"), 4096 * (64 + 32) * 4);
    cr_expect_gt(s_item(&deep.worker, "dense rows, gradients, messages"), 0);
    cr_expect_eq(s_item(&fm.worker, "MLP scratch (activations)"), 0);

    /* ffm on libsvm: the planner says what the launcher would */
    char svm[] = "/tmp/psrec-plan-XXXXXX.svm";
    fd = mkstemps(svm, 4);
    cr_assert_geq(fd, 0);
    f = fdopen(fd, "w");
    fprintf(f, "1 1:1 2:1\n");
    fclose(f);
    j = s_plan_job("ffm", svm);
    cr_expect_eq(cl_plan_estimate(&j, 1, 2, &ffm, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "libsvm") != NULL, "%s", err.msg);
    unlink(path);
    unlink(svm);
}
