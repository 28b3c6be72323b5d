/* Real multi-process jobs: mpirun with several ranks on this host, over
 * tcp:// on loopback, on MovieLens 100K and on generated data. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <sys/types.h>

#include "helpers.h"

TestSuite(cluster_mpi, .timeout = 600);

/* Default settings; then the blocks schedule with two blocks per worker
 * (each worker pulls its next block's rows while it trains one). */
Test(cluster_mpi, ml100k_u1_two_servers_two_workers)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): MovieLens test skipped");
    char dir[] = "/tmp/psrec-mpi-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[4096], out[65536], metrics[512];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-np 5 %s train --train %s/ml-100k/u1.base "
             "--test %s/ml-100k/u1.test --servers 2 --metrics %s --progress off",
             PSREC_BINARY, data, data, metrics);
    int rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "mpirun failed (%d):\n%s", rc, out);
    double rmse = th_last_metric(metrics, "test_rmse");
    cr_expect_gt(rmse, 0, "metrics file has test_rmse:\n%s", out);
    cr_expect_leq(rmse, 0.93, "ml-100k u1 test RMSE %.4f with default settings", rmse);
    cr_expect(strstr(out, "final test RMSE") != NULL, "summary printed:\n%s", out);
    unlink(metrics);

    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-np 5 %s train --train %s/ml-100k/u1.base "
             "--test %s/ml-100k/u1.test --servers 2 --metrics %s --progress off "
             "--schedule blocks --blocks_per_worker 2 --log_level info",
             PSREC_BINARY, data, data, metrics);
    rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "mpirun failed (%d):\n%s", rc, out);
    rmse = th_last_metric(metrics, "test_rmse");
    cr_expect_gt(rmse, 0, "metrics file has test_rmse:\n%s", out);
    cr_expect_leq(rmse, 0.93, "ml-100k u1, 2 blocks per worker: test RMSE %.4f", rmse);
    cr_expect(strstr(out, "blocks: 4 of") != NULL, "4 balanced blocks:\n%s", out);
    cr_expect(strstr(out, "item rows shared with the servers on this host") != NULL,
              "one host: item rows in the servers' memory:\n%s", out);
    cr_expect(strstr(out, "(4 of 4 blocks trained in place)") != NULL,
              "blocks spanning both servers' files train in place:\n%s", out);
    unlink(metrics);

    /* rows by messages instead (switched off by the key, or over tcp by the
     * variable that overrides the key): the same model */
    const char *by_msg[2][3] = {
        {"", "--shared_rows off", "shared rows switched off"},
        {"-x PSREC_TRANSPORT=tcp", "", "server 0 is reached over tcp"}};
    for (int k = 0; k < 2; k++) {
        snprintf(cmd, sizeof cmd,
                 TH_MPIRUN "%s -np 5 %s train --train %s/ml-100k/u1.base "
                 "--test %s/ml-100k/u1.test --servers 2 --metrics %s --progress off "
                 "--schedule blocks --blocks_per_worker 2 --log_level info %s",
                 by_msg[k][0], PSREC_BINARY, data, data, metrics, by_msg[k][1]);
        rc = th_run(cmd, out, sizeof out);
        cr_assert_eq(rc, 0, "mpirun failed (%d):\n%s", rc, out);
        cr_expect(strstr(out, "item rows move by messages") != NULL &&
                      strstr(out, by_msg[k][2]) != NULL,
                  "%s%s: rows by messages, and why:\n%s", by_msg[k][0], by_msg[k][1], out);
        double again = th_last_metric(metrics, "test_rmse");
        cr_expect_eq(again, rmse, "%s%s: test RMSE %.9f, shared rows %.9f", by_msg[k][0],
                     by_msg[k][1], again, rmse);
        unlink(metrics);
    }
    /* a value that is neither auto nor off stops the job and says so */
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-x PSREC_SHARED_ROWS=of -np 4 %s train --train %s/ml-100k/u1.base "
             "--servers 1 --epochs 1 --progress off", PSREC_BINARY, data);
    rc = th_run(cmd, out, sizeof out);
    cr_expect_neq(rc, 0, "must fail:\n%s", out);
    cr_expect(strstr(out, "PSREC_SHARED_ROWS: shared_rows: expected one of auto|off, got 'of'") !=
                  NULL,
              "names the variable:\n%s", out);
    rmdir(dir);
}

Test(cluster_mpi, too_few_ranks_is_a_clear_error)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    char dir[] = "/tmp/psrec-mpi-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[4096], out[16384], path[512];
    snprintf(path, sizeof path, "%s/r.tsv", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "1\t1\t5\n2\t1\t3\n");
    fclose(f);
    snprintf(cmd, sizeof cmd, TH_MPIRUN "-np 3 %s train --train %s --servers 2", PSREC_BINARY,
             path);
    int rc = th_run(cmd, out, sizeof out);
    cr_expect_neq(rc, 0, "must fail:\n%s", out);
    cr_expect(strstr(out, "at least 4 ranks") != NULL, "says how many ranks:\n%s", out);
    unlink(path);
    rmdir(dir);
}

Test(cluster_mpi, generated_data_one_server_two_workers)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    char dir[] = "/tmp/psrec-mpi-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[4096], out[65536], metrics[512];
    snprintf(cmd, sizeof cmd,
             "%s gen --out %s/syn --ratings 100000 --users 1000 --items 600 --rank 4 "
             "--seed 5",
             PSREC_BINARY, dir);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-np 4 %s train --train %s/syn.train.psrd "
             "--test %s/syn.test.psrd --metrics %s --epochs 10 --l2 0.05 --progress off --schedule minibatch",
             PSREC_BINARY, dir, dir, metrics);
    int rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "mpirun failed (%d):\n%s", rc, out);
    double rmse = th_last_metric(metrics, "test_rmse");
    double floor = th_last_metric(metrics, "noise_floor");
    cr_expect_gt(floor, 0, "noise floor recorded");
    cr_expect_leq(rmse, 1.15 * floor, "RMSE %.4f vs noise floor %.4f", rmse, floor);
    char rmcmd[600];
    snprintf(rmcmd, sizeof rmcmd, "rm -rf %s", dir);
    cr_expect_eq(system(rmcmd), 0);
}

/* Marks the processes of the job the kill test may kill. */
static char s_kill_tag[64];

/* The pid of the psrec process that is rank `rank` of the tagged mpirun
 * job. */
static pid_t s_find_rank(int rank)
{
    DIR *d = opendir("/proc");
    if (!d)
        return -1;
    struct dirent *e;
    pid_t found = -1;
    char want[64];
    snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
    /* only this test's job: other jobs on the machine have a rank 3 too */
    char tag[128];
    snprintf(tag, sizeof tag, "PSREC_KILL_TAG=%s", s_kill_tag);
    int tagged;
    while (found < 0 && (e = readdir(d))) {
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid <= 0)
            continue;
        char path[64], buf[65536];
        snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        if (!strstr(buf, "psrec") || strstr(buf, "mpirun"))
            continue;
        snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
        f = fopen(path, "r");
        if (!f)
            continue;
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        int is_rank = 0;
        tagged = 0;
        for (size_t i = 0; i < n; i += strlen(buf + i) + 1) {
            is_rank |= strcmp(buf + i, want) == 0;
            tagged |= strcmp(buf + i, tag) == 0;
        }
        if (is_rank && tagged)
            found = pid;
    }
    closedir(d);
    return found;
}

static int s_epochs_done(const char *metrics)
{
    double e = th_last_metric(metrics, "epoch");
    return e < 0 ? 0 : (int)e;
}

Test(cluster_mpi, kill_a_worker_then_resume_auto)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    char dir[] = "/tmp/psrec-kill-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[4096], out[65536], m_ref[512], m_run[512], log[512];
    snprintf(cmd, sizeof cmd,
             "%s gen --out %s/syn --ratings 2000000 --users 20000 --items 5000 --rank 4 "
             "--seed 9",
             PSREC_BINARY, dir);
    snprintf(s_kill_tag, sizeof s_kill_tag, "%s", dir);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
    snprintf(m_ref, sizeof m_ref, "%s/ref.jsonl", dir);
    snprintf(m_run, sizeof m_run, "%s/run.jsonl", dir);
    snprintf(log, sizeof log, "%s/killed.log", dir);
    const char *job = "--train %s/syn.train.psrd --test %s/syn.test.psrd --epochs 8 "
                      "--l2 0.05 --progress off --checkpoint_dir %s/ck%s";
    char args[1024];

    /* fault-free reference */
    snprintf(args, sizeof args, job, dir, dir, dir, "ref");
    snprintf(cmd, sizeof cmd, TH_MPIRUN "-np 4 %s train %s --metrics %s", PSREC_BINARY, args,
             m_ref);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
    double want = th_last_metric(m_ref, "test_rmse");

    /* the same job, with worker rank 3 killed -9 once epoch 3 is done */
    snprintf(args, sizeof args, job, dir, dir, dir, "run");
    snprintf(cmd, sizeof cmd,
             "PSREC_KILL_TAG=%s " TH_MPIRUN "-x PSREC_KILL_TAG -np 4 %s train %s --metrics %s "
             "> %s 2>&1",
             s_kill_tag, PSREC_BINARY, args, m_run, log);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int killed = 0;
    for (int i = 0; i < 6000 && !killed; i++) {
        usleep(10 * 1000);
        if (s_epochs_done(m_run) >= 3) {
            pid_t w = s_find_rank(3);
            if (w > 0 && kill(w, SIGKILL) == 0)
                killed = 1;
        }
        if (waitpid(child, NULL, WNOHANG) == child) {
            child = -1;
            break;
        }
    }
    int st = 0;
    if (child > 0)
        waitpid(child, &st, 0);
    cr_assert(killed, "found and killed worker rank 3 (epochs done: %d)", s_epochs_done(m_run));
    cr_expect(!WIFEXITED(st) || WEXITSTATUS(st) != 0, "the killed job failed");
    int done = s_epochs_done(m_run);
    cr_expect_lt(done, 8, "killed before the end (after epoch %d)", done);

    /* resume from the newest intact checkpoint and finish */
    snprintf(cmd, sizeof cmd, TH_MPIRUN "-np 4 %s train %s --metrics %s --resume auto",
             PSREC_BINARY, args, m_run);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "resumed from") != NULL, "%s", out);
    double got = th_last_metric(m_run, "test_rmse");
    cr_expect_eq(s_epochs_done(m_run), 8);
    cr_expect(got > 0 && fabs(got - want) <= 0.005 * want,
              "resumed final test RMSE %.5f vs fault-free %.5f (must be within 0.5%%)", got,
              want);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

Test(cluster_mpi, fm_on_frappe_two_servers_two_workers)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): frappe test skipped");
    char dir[] = "/tmp/psrec-mpi-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[4096], out[65536], metrics[512];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-np 5 %s train --model fm --train %s/frappe/frappe.validation.libfm "
             "--test %s/frappe/frappe.test.libfm --servers 2 --l2 0.01 --metrics %s "
             "--progress off",
             PSREC_BINARY, data, data, metrics);
    int rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "mpirun failed (%d):\n%s", rc, out);
    double auc = th_last_metric(metrics, "test_auc");
    cr_expect_geq(auc, 0.945, "frappe FM test AUC %.4f under mpirun:\n%s", auc, out);
    cr_expect(strstr(out, "final test AUC") != NULL, "%s", out);
    unlink(metrics);
    rmdir(dir);
}
