/* Memory planner: estimates on ml-100k u1 against hand-computed figures,
 * linear growth in dim, `psrec plan` output, and `psrec train` refusing a
 * job that does not fit its memory_limit. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "cluster/plan.h"
#include "worker/trainer.h"
#include "tests/helpers.h"

static char s_base[900], s_test[900];

/* Sets the u1 paths; skips when the data is absent. */
static void s_need_data(void)
{
    const char *d = th_data_dir();
    if (!d)
        cr_skip_test("no ../shared/data");
    if (strlen(d) > 800)
        cr_skip_test("data path too long");
    snprintf(s_base, sizeof s_base, "%.800s/ml-100k/u1.base", d);
    snprintf(s_test, sizeof s_test, "%.800s/ml-100k/u1.test", d);
    if (access(s_base, R_OK) != 0)
        cr_skip_test("no ml-100k");
}

static cm_job s_job(int dim, const char *opt, const char *schedule)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    snprintf(j.train, sizeof j.train, "%s", s_base);
    char d[16];
    snprintf(d, sizeof d, "%d", dim);
    cr_assert_eq(cm_job_set(&j, "dim", d, "test", &err), 0, "%s", err.msg);
    cr_assert_eq(cm_job_set(&j, "optimizer", opt, "test", &err), 0, "%s", err.msg);
    cr_assert_eq(cm_job_set(&j, "schedule", schedule, "test", &err), 0, "%s", err.msg);
    return j;
}

static uint64_t s_item(const cl_plan_role *r, const char *name)
{
    for (size_t k = 0; k < r->n_items; k++)
        if (strcmp(r->items[k].name, name) == 0)
            return r->items[k].bytes;
    return 0;
}

static void s_near(uint64_t got, double want, const char *what)
{
    cr_expect(got >= want * 0.97 && got <= want * 1.03, "%s: got %llu, hand-computed %.0f",
              what, (unsigned long long)got, want);
}

Test(cli_plan, counts_u1_base)
{
    s_need_data();
    cm_job j = s_job(32, "adagrad", "minibatch");
    cl_plan p;
    cm_error err = {0};
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &p, &err), 0, "%s", err.msg);
    cr_expect_eq(p.data.n_train, 80000);
    cr_expect_eq(p.data.n_users, 943);
    cr_expect_eq(p.data.n_items, 1650);
    cr_expect_eq(p.row_floats, 66);
    cr_expect_eq(p.stride_floats, 80);
}

/* Sketched counts (forced on the 80k ratings) land within 4% above the
 * exact ones, never below them by more than the sketch's error, and the
 * per-worker and per-block figures stay consistent. */
Test(cli_plan, sketched_counts_near_exact)
{
    s_need_data();
    cm_job j = s_job(32, "adagrad", "blocks");
    cl_plan exact, sk;
    cm_error err = {0};
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &exact, &err), 0, "%s", err.msg);
    cr_assert_eq(cl_plan_estimate_ex(&j, 1, 2, 0, &sk, &err), 0, "%s", err.msg);
    cr_expect_eq(exact.data.sketched, 0);
    cr_expect_eq(sk.data.sketched, 1);
    cr_expect_eq(sk.data.n_train, exact.data.n_train);
    cr_expect_eq(sk.data.w_train, exact.data.w_train);
    const uint64_t *e[] = {&exact.data.n_users, &exact.data.n_items, &exact.data.w_users,
                           &exact.data.block_items};
    const uint64_t *g[] = {&sk.data.n_users, &sk.data.n_items, &sk.data.w_users,
                           &sk.data.block_items};
    for (int k = 0; k < 4; k++)
        cr_expect(*g[k] >= *e[k] * 0.99 && *g[k] <= *e[k] * 1.04,
                  "count %d: sketched %llu, exact %llu", k, (unsigned long long)*g[k],
                  (unsigned long long)*e[k]);
    cr_expect(sk.worker.total >= exact.worker.total * 0.99, "worker plan shrank");
}

/* dim 32, adagrad, 1 server, minibatch: by hand from the layouts. */
Test(cli_plan, server_matches_hand_computation)
{
    s_need_data();
    cm_job j = s_job(32, "adagrad", "minibatch");
    cl_plan p;
    cm_error err = {0};
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &p, &err), 0, "%s", err.msg);
    const cl_plan_role *s = &p.server;
    /* 943 + 1650 rows of 33 weights and 33 AdaGrad accumulators */
    cr_expect_eq(s_item(s, "rows: weights"), (943 + 1650) * 33 * 4);
    cr_expect_eq(s_item(s, "rows: optimizer state"), (943 + 1650) * 33 * 4);
    /* slots of 80 floats; chunks of 64, 128, 256, 512 (, 1024) rows:
     * 960 user slots, 1984 item slots */
    double slab = (960 + 1984) * 80 * 4.0;
    /* hash: 943 keys -> 2048 entries, 1650 -> 4096; 16 bytes each */
    double index = (2048 + 4096) * 16.0;
    /* reply: 1650 item keys x 33 floats, over 16384 floats: a buffer of its
     * own, of its size; request 1650 x (8 + 132) */
    double bufs = 1650 * 33 * 4.0 + 1650 * (8 + 132);
    s_near(s->total, slab + index + bufs, "server total");
    s_near(s_item(s, "hash index"), index, "hash index");

    /* worker: 80000 ratings, 20 bytes each, split over 2 workers by hash */
    const cl_plan_role *w = &p.worker;
    cr_expect(p.data.w_train >= 40000 && p.data.w_train < 42000, "largest shard %llu",
              (unsigned long long)p.data.w_train);
    cr_expect_eq(s_item(w, "ratings shard (train + test)"), p.data.w_train * 20);
    /* per example: its key, dedupe scratch, two labels; then two sets
     * (the one computing, the one whose pull is in flight) of two tables'
     * unique keys and positions, rows and gradient sums */
    double batch = 4096 * (8 + 16 + 4 + 4) + 2 * 2 * (4096 * 12 + 2 * 4096 * 33 * 4);
    s_near(s_item(w, "minibatch buffers"), batch, "batch buffers");
    /* loading: the file (80000 x 20) twice + the shard */
    s_near(w->loading, 2 * 80000 * 20.0 + 41000 * 20.0, "worker loading peak");
}

Test(cli_plan, grows_linearly_with_dim)
{
    s_need_data();
    cl_plan p[3];
    cm_error err = {0};
    const int dims[3] = {64, 128, 256};
    for (int k = 0; k < 3; k++) {
        cm_job j = s_job(dims[k], "sgd", "minibatch");
        cr_assert_eq(cl_plan_estimate(&j, 1, 2, &p[k], &err), 0, "%s", err.msg);
    }
    /* weights exactly linear; totals nearly (padding and chunk slack step) */
    for (int k = 0; k < 2; k++)
        cr_expect_eq(s_item(&p[k + 1].server, "rows: weights") -
                         s_item(&p[k].server, "rows: weights"),
                     (uint64_t)(943 + 1650) * (uint64_t)(dims[k + 1] - dims[k]) * 4);
    double d1 = (double)p[1].server.training - (double)p[0].server.training;
    double d2 = (double)p[2].server.training - (double)p[1].server.training;
    cr_expect(d2 > 1.8 * d1 && d2 < 2.2 * d1, "server: steps %.0f then %.0f", d1, d2);
    double w1 = (double)p[1].worker.training - (double)p[0].worker.training;
    double w2 = (double)p[2].worker.training - (double)p[1].worker.training;
    cr_expect(w2 > 1.8 * w1 && w2 < 2.2 * w1, "worker: steps %.0f then %.0f", w1, w2);
    /* more servers: less per server */
    cm_job j = s_job(256, "sgd", "minibatch");
    cl_plan four;
    cr_assert_eq(cl_plan_estimate(&j, 4, 2, &four, &err), 0, "%s", err.msg);
    cr_expect_lt(s_item(&four.server, "rows: weights") * 3, s_item(&p[2].server, "rows: weights"));
}

/* Each schedule is charged for the buffers its own trainer allocates:
 * minibatch's batch buffers (as the trainer reports them) and example
 * order, none of them under blocks. */
Test(cli_plan, worker_lines_follow_the_schedule)
{
    s_need_data();
    cl_plan mb, bl;
    cm_error err = {0};
    cm_job j = s_job(32, "adagrad", "minibatch");
    j.batch = 10000;
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &mb, &err), 0, "%s", err.msg);
    const int dims[2] = {33, 33};
    cr_expect_eq(s_item(&mb.worker, "minibatch buffers"), wk_trainer_minibatch_bytes(10000, dims));
    cr_expect_eq(s_item(&mb.worker, "example order"), mb.data.w_train * 4);
    cr_expect_eq(wk_trainer_minibatch_cap(100), 4096);
    cr_expect_eq(wk_trainer_minibatch_cap(10000), 10000);
    j = s_job(32, "adagrad", "blocks");
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &bl, &err), 0, "%s", err.msg);
    cr_expect_eq(s_item(&bl.worker, "minibatch buffers"), 0);
    cr_expect_eq(s_item(&bl.worker, "example order"), 0);
    cr_expect(s_item(&bl.worker, "blocks: user rows (rows + base)") > 0);
}

Test(cli_plan, check_names_the_role)
{
    s_need_data();
    cm_job j = s_job(32, "adam", "blocks");
    j.memory_limit = 1 << 20;
    cl_plan p;
    cm_error err = {0};
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &p, &err), 0, "%s", err.msg);
    cr_expect_eq(p.avail, 1 << 20);
    cr_expect_eq(cl_plan_check(&p, &err), CM_ENOMEM);
    cr_expect(strstr(err.msg, "worker") != NULL, "%s", err.msg);
    cr_expect(strstr(err.msg, "rowwise_adagrad") != NULL, "%s", err.msg);
    j.memory_limit = (uint64_t)1 << 40;
    cr_assert_eq(cl_plan_estimate(&j, 1, 2, &p, &err), 0, "%s", err.msg);
    cr_expect_eq(cl_plan_check(&p, &err), 0);
}

Test(cli_plan, bad_input_is_an_error)
{
    cm_job j = cm_job_default();
    cl_plan p;
    cm_error err = {0};
    cr_expect_eq(cl_plan_estimate(&j, 1, 2, &p, &err), CM_EINVAL);
    snprintf(j.train, sizeof j.train, "/nonexistent/ratings.tsv");
    cr_expect_lt(cl_plan_estimate(&j, 1, 2, &p, &err), 0);
    cr_expect(strstr(err.msg, "/nonexistent/ratings.tsv") != NULL, "%s", err.msg);
    cr_expect_eq(cl_plan_estimate(&j, 0, 2, &p, &err), CM_EINVAL);
}

Test(cli_plan, plan_prints_the_table)
{
    s_need_data();
    char cmd[4096], out[16384];
    snprintf(cmd, sizeof cmd, "%s plan --train %s --test %s --dim 16 --servers 2 --ranks 6",
             PSREC_BINARY, s_base, s_test);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "943 users, 1650 items") != NULL, "%s", out);
    cr_expect(strstr(out, "server") && strstr(out, "worker"), "%s", out);
    cr_expect(strstr(out, "hash index") != NULL, "%s", out);
    cr_expect(strstr(out, "2 servers, 3 workers") != NULL, "%s", out);
    cr_expect(strstr(out, "verdict: ") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "%s plan --help", PSREC_BINARY);
    cr_expect_eq(th_run(cmd, out, sizeof out), 0);
    cr_expect(strstr(out, "--ranks") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "%s plan --train %s --ranks 2", PSREC_BINARY, s_base);
    cr_expect_eq(th_run(cmd, out, sizeof out), 2, "%s", out);
}

Test(cli_plan, train_refuses_what_does_not_fit)
{
    s_need_data();
    char cmd[4096], out[16384];
    snprintf(cmd, sizeof cmd,
             "%s train --train %s --local --epochs 1 --memory_limit 100000 --progress off",
             PSREC_BINARY, s_base);
    cr_assert_eq(th_run(cmd, out, sizeof out), 2, "%s", out);
    cr_expect(strstr(out, "memory plan:") != NULL, "%s", out);
    cr_expect(strstr(out, "worker") != NULL, "%s", out);
    cr_expect(strstr(out, "--servers") != NULL, "%s", out);
    cr_expect(strstr(out, "DOES NOT FIT") != NULL, "%s", out);
}

/* Under mpirun rank 0 checks the memory while MPI starts; a refusal stops
 * every rank at the bootstrap, before any of them reads its input. */
Test(cli_plan, train_under_mpirun_refuses_before_any_rank_reads)
{
    s_need_data();
    char cmd[4096], out[16384];
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "--timeout 60 -np 4 %s train --train %s --epochs 1 "
             "--memory_limit 100000 --progress off --log_level info",
             PSREC_BINARY, s_base);
    cr_assert_neq(th_run(cmd, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "memory plan:") != NULL, "%s", out);
    cr_expect(strstr(out, "DOES NOT FIT") != NULL, "%s", out);
    cr_expect(strstr(out, "does not fit the memory it can see") != NULL, "%s", out);
    cr_expect(strstr(out, "read rows") == NULL && strstr(out, "epoch") == NULL,
              "no rank read its input or trained:\n%s", out);
    cr_expect(strstr(out, "time limit") == NULL, "nothing waits:\n%s", out);
}
