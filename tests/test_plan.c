/* Slot partitioning: every slot mapped, balance by count and by load. */
#include <criterion/criterion.h>
#include <inttypes.h>
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

/* ---------------------------------------------------------------------------
 * Footprints: what each module says it allocates, against real objects
 * holding that many rows or keys (their own byte counts).
 * ------------------------------------------------------------------------- */

#include "common/hashmap.h"
#include "helpers.h"
#include "ps/server.h"
#include "ps/table.h"
#include "worker/blocks.h"

Test(plan, hashmap_footprint_matches_real_maps)
{
    cm_hashmap *m = cm_hashmap_new(0);
    cr_assert_not_null(m);
    size_t checked = 0;
    for (uint64_t n = 0; n <= 50000; n++) {
        if (n > 0)
            cr_assert_eq(cm_hashmap_put(m, n * 0x9E3779B97F4A7C15ULL, (uint32_t)n), 0);
        /* every size up to 200, then around the growth points and a sample */
        if (n <= 200 || n % 997 == 0 || cm_hashmap_bytes(m) != cm_hashmap_bytes_for(n - (n > 0))) {
            cr_assert_eq(cm_hashmap_bytes(m), cm_hashmap_bytes_for(n),
                         "%" PRIu64 " keys: map holds %zu B, footprint says %zu", n,
                         cm_hashmap_bytes(m), cm_hashmap_bytes_for(n));
            checked++;
        }
    }
    cr_expect_gt(checked, 250);
    cr_expect_gt(cm_hashmap_bytes_for(50000), cm_hashmap_bytes_for(100));
    cm_hashmap_destroy(&m);
}

static cm_table_spec s_tspec(int dim, int opt)
{
    cm_table_spec s;
    memset(&s, 0, sizeof s);
    s.dim = dim;
    s.zero_prefix = 1;
    s.init_std = 0.01f;
    s.seed = 3;
    s.optim = cm_optim_default(opt, 0.05f);
    return s;
}

/* Makes a table of spec s, gives it n rows by creating pulls, and checks
 * that ps_table_bytes equals the footprint's total (and its parts add up). */
static void s_check_table(const cm_table_spec *s, size_t n, const char *what)
{
    cm_error e = {0};
    ps_table *t = ps_table_new(s, &e);
    cr_assert_not_null(t, "%s: %s", what, e.msg);
    float *out = malloc(256 * (size_t)s->dim * sizeof *out);
    uint64_t keys[256];
    cr_assert_not_null(out);
    for (size_t done = 0; done < n;) {
        size_t m = n - done < 256 ? n - done : 256;
        for (size_t i = 0; i < m; i++)
            keys[i] = 1000 + 7 * (done + i);
        cr_assert_eq(ps_table_pull(t, keys, m, out, 1, NULL), 0);
        done += m;
    }
    cr_assert_eq(ps_table_rows(t), n, "%s", what);
    ps_table_footprint f;
    ps_table_footprint_of(s, n, 0, &f);
    cr_expect_eq(ps_table_bytes(t), f.total, "%s, %zu rows: table holds %zu B, footprint %zu",
                 what, n, ps_table_bytes(t), f.total);
    cr_expect_eq(f.weights + f.state + f.pad + f.index + f.meta + f.pending + f.fixed,
                 f.total);
    cr_expect_eq(f.weights, n * (size_t)s->dim * 4);
    cr_expect_eq(f.state, n * (size_t)cm_optim_state_floats(s->optim.kind, s->dim) * 4);
    free(out);
    ps_table_destroy(&t);
}

Test(plan, table_footprint_matches_real_tables)
{
    static const size_t ns[] = {0, 1, 63, 64, 65, 191, 192, 1000, 20000};
    const struct {
        int dim, opt;
    } shapes[] = {{33, CM_OPT_ADAGRAD}, {5, CM_OPT_SGD}, {17, CM_OPT_ADAM},
                  {9, CM_OPT_FTRL},     {33, CM_OPT_ROWWISE}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
            cm_table_spec s = s_tspec(shapes[k].dim, shapes[k].opt);
            s_check_table(&s, ns[i], "plain");
            s.ttl = 2; /* eviction records */
            s_check_table(&s, ns[i], "ttl");
        }
    /* slots of 2 KiB: the chunks reach their 16 MiB bound and stop growing */
    cm_table_spec big = s_tspec(512, CM_OPT_SGD);
    s_check_table(&big, 10000, "fixed-size chunks");
    big.max_rows = 20000;
    s_check_table(&big, 10000, "max_rows");
    /* a shared table takes its chunks from a file: the same bytes */
    cm_table_spec sh = s_tspec(33, CM_OPT_ADAGRAD);
    sh.shared = 1;
    s_check_table(&sh, 3000, "shared");
}

Test(plan, table_footprint_counts_admission_counters)
{
    cm_table_spec s = s_tspec(9, CM_OPT_ADAGRAD);
    s.min_count = 3;
    cm_error e = {0};
    ps_table *t = ps_table_new(&s, &e);
    cr_assert_not_null(t, "%s", e.msg);
    enum { N = 5000 };
    uint64_t *keys = malloc(N * sizeof *keys);
    float *g = calloc((size_t)N * 9, sizeof *g);
    cr_assert(keys && g);
    for (size_t i = 0; i < N; i++)
        keys[i] = 5 + 3 * i;
    /* one sighting each: counters, no rows */
    cr_assert_eq(ps_table_push(t, keys, N, g), 0);
    ps_table_counters c;
    ps_table_stats(t, &c);
    cr_assert_eq(c.rows, 0);
    cr_assert_eq(c.pending, N);
    ps_table_footprint f;
    ps_table_footprint_of(&s, 0, N, &f);
    cr_expect_eq(ps_table_bytes(t), f.total, "table %zu B, footprint %zu", ps_table_bytes(t),
                 f.total);
    cr_expect_gt(f.pending, (size_t)N * 16, "the counters are counted");
    cr_expect_eq(ps_table_max_pending(&s), (size_t)1 << 20);
    s.max_pending = 77;
    cr_expect_eq(ps_table_max_pending(&s), 77);
    free(keys);
    free(g);
    ps_table_destroy(&t);
}

Test(plan, server_reply_and_blocks_footprints)
{
    /* the reused buffer doubles from 4096 floats; large replies own theirs */
    cr_expect_eq(ps_server_reply_bytes(1, 1), 4096 * 4);
    cr_expect_eq(ps_server_reply_bytes(4097, 1), 8192 * 4);
    cr_expect_eq(ps_server_reply_bytes(100000, 1), 100000 * 4);
    cr_expect_geq(ps_server_reply_bytes(16383, 1), 16383 * 4);
    /* f16 replies are converted into the reused buffer, which doubles */
    cr_expect_eq(ps_server_reply_bytes(100000, 0), 131072 * 4);
    for (int rf = 1; rf < 70; rf++) {
        const size_t st = wk_blocks_stride(rf);
        cr_expect(st >= (size_t)rf && st % 16 == 0 && st < (size_t)rf + 16, "stride %zu", st);
    }
    cr_expect_gt(wk_blocks_msg_rows(), 0);
}

/* The planner's server lines are the footprints of the real tables a
 * server of the job would hold: ml-100k u1.base, mf, one server. */
Test(plan, planner_server_tables_match_real_tables)
{
    const char *d = th_data_dir();
    if (!d)
        cr_skip_test("no ../shared/data");
    cm_job j = cm_job_default();
    snprintf(j.train, sizeof j.train, "%.900s/ml-100k/u1.base", d);
    j.dim = 32;
    j.optimizer = CM_OPT_ADAGRAD;
    j.ttl = 3;
    cl_plan p;
    cm_error err = {0};
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &p, &err), 0, "%s", err.msg);
    /* the real tables: every user and every item of the data, as the
     * model's own specs make them */
    cm_ratings r;
    cr_assert_eq(cm_ratings_load(j.train, NULL, &r, &err), 0, "%s", err.msg);
    size_t real = 0;
    for (int tb = 0; tb < 2; tb++) {
        cm_table_spec s;
        wk_model_mf.table_params(&j, (size_t)tb, &s);
        ps_table *t = ps_table_new(&s, &err);
        cr_assert_not_null(t, "%s", err.msg);
        float *out = malloc((size_t)s.dim * sizeof *out);
        for (size_t i = 0; i < r.n; i++) {
            uint64_t k = tb == 0 ? r.user[i] : r.item[i];
            cr_assert_eq(ps_table_pull(t, &k, 1, out, 1, NULL), 0);
        }
        free(out);
        cr_expect_eq(ps_table_rows(t), tb == 0 ? p.data.n_users : p.data.n_items);
        real += ps_table_bytes(t);
        ps_table_destroy(&t);
    }
    cm_ratings_free(&r);
    static const char *const parts[] = {
        "rows: weights",      "rows: optimizer state", "rows: slot padding + chunk slack",
        "hash index",         "eviction records",      "admission counters",
        "table headers + chunk lists"};
    uint64_t planned = 0;
    for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++)
        planned += s_item(&p.server, parts[k]);
    cr_expect_eq(planned, real, "planned %llu B of tables, real tables hold %zu B",
                 (unsigned long long)planned, real);
    cr_expect_gt(s_item(&p.server, "eviction records"), 0, "ttl: records planned");
}

/* ---------------------------------------------------------------------------
 * deep's worker scratch: the footprint against what the allocator hands
 * out when the model makes it (glibc's own accounting, mallinfo2).
 * ------------------------------------------------------------------------- */

#include <malloc.h>

#include "worker/models/deep.h"

static size_t s_heap_in_use(void)
{
    const struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

Test(plan, deep_scratch_footprint_matches_the_allocations)
{
    /* an allocator that keeps no books (sanitizers) cannot answer */
    const size_t probe0 = s_heap_in_use();
    void *probe = malloc(1 << 20);
    cr_assert_not_null(probe);
    const size_t probe1 = s_heap_in_use();
    free(probe);
    if (probe1 - probe0 < (1 << 20))
        cr_skip_test("the allocator does not report its use (mallinfo2)");

    cm_job job = cm_job_default();
    snprintf(job.model, sizeof job.model, "deep");
    job.dim = 8;
    job.fields = 10;
    snprintf(job.hidden, sizeof job.hidden, "64,32");
    wk_mlp_params p;
    cr_assert_eq(wk_deep_params(&job, &p, NULL), 0);
    const int batches[] = {512, 4096, 20000};
    for (size_t k = 0; k < sizeof batches / sizeof batches[0]; k++) {
        cm_error e = {0};
        const size_t before = s_heap_in_use();
        void *sc = wk_model_deep.scratch_new(&job, batches[k], &e);
        cr_assert_not_null(sc, "%s", e.msg);
        const size_t held = s_heap_in_use() - before;
        wk_model_deep.scratch_destroy(&sc);
        const size_t fp = wk_deep_scratch_bytes(&p, batches[k]);
        /* the allocator adds a header per block and rounds large blocks to
         * pages: a few KiB over 7 allocations, nothing like a buffer */
        const double gap = (double)held - (double)fp;
        cr_expect(gap >= 0 && gap <= 7 * 4096 + 64.0,
                  "batch %d: allocated %zu B, footprint %zu B", batches[k], held, fp);
    }
}
