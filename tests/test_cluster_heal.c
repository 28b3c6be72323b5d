/* A job that fails stops cleanly and comes back by itself, on MovieLens
 * 100K: divergence stops the job with nothing non-finite published;
 * resume = auto starts fresh where nothing was written; SIGTERM writes a
 * last checkpoint (--local and every rank of an mpirun job, as Slurm
 * sends it); `psrec launch` survives kill -9 of a server and finishes
 * within 1% of a fault-free run; --local restarts itself. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <sys/types.h>

#include "common/ckpt.h"
#include "bgjob.h"
#include "tmpdir.h"

static void s_init(void)
{
    th_tmpdir_make("heal");
}

TestSuite(cluster_heal, .init = s_init, .fini = th_tmpdir_remove, .timeout = 400);

/* --train/--test of ml-100k u1 (skips the test without the data). */
static const char *s_ml(void)
{
    static char buf[2200];
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    snprintf(buf, sizeof buf, "--train %s/ml-100k/u1.base --test %s/ml-100k/u1.test", data,
             data);
    return buf;
}

/* 1 while pid (a child) has not ended; it is left to th_reap. */
static int s_running(pid_t pid)
{
    siginfo_t si = {0};
    return waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0;
}

/* The epoch of the checkpoint LATEST names under root, or -1. */
static int s_latest_epoch(const char *root)
{
    char p[600], buf[64];
    snprintf(p, sizeof p, "%s/LATEST", root);
    th_read_file(p, buf, sizeof buf);
    int e = -1;
    return sscanf(buf, "ckpt-%d", &e) == 1 ? e : -1;
}

/* The highest epoch of a checkpoint directory under root that got as far
 * as its MANIFEST, or -1. */
static int s_newest_manifest(const char *root)
{
    DIR *d = opendir(root);
    int best = -1;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int ep;
        char p[700];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s/MANIFEST", root, e->d_name);
        if (sscanf(e->d_name, "ckpt-%d", &ep) == 1 && stat(p, &st) == 0 && ep > best)
            best = ep;
    }
    if (d)
        closedir(d);
    return best;
}

/* Reads a pid that PSREC_PID_DIR made the process write; -1 until there. */
static pid_t s_pid(const char *dir, const char *name)
{
    char p[600], buf[32];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    th_read_file(p, buf, sizeof buf);
    long v = atol(buf);
    return v > 0 ? (pid_t)v : -1;
}

static int s_epochs_done(const char *metrics)
{
    double e = th_last_metric(metrics, "epoch");
    return e < 0 ? 0 : (int)e;
}

/* The figure after `key` in text, or -1. */
static double s_after(const char *text, const char *key)
{
    const char *p = strstr(text, key);
    return p ? strtod(p + strlen(key), NULL) : -1;
}

/* ---------------------------------------------------------------------
 * Divergence
 * ------------------------------------------------------------------- */

/* Checks a diverged run: non-zero exit, the reason said, no final line,
 * and no checkpoint at or after the epoch that diverged. */
static void s_expect_diverged(int rc, const char *out, const char *ck)
{
    cr_expect(rc != 0, "a diverged job fails:\n%s", out);
    const char *p = strstr(out, "training diverged");
    cr_assert_not_null(p, "the reason is said:\n%s", out);
    cr_expect(strstr(out, "final test RMSE") == NULL, "no final metric of a diverged job:\n%s",
              out);
    const char *q = strstr(out, ": training diverged");
    int e = -1;
    while (q > out && q[-1] != ' ')
        q--;
    cr_assert(sscanf(q, "%d", &e) == 1 && e >= 1, "epoch named:\n%s", out);
    cr_expect_lt(s_latest_epoch(ck), e, "LATEST names an epoch before %d", e);
    cr_expect_lt(s_newest_manifest(ck), e, "no manifest from epoch %d on", e);
    if (s_latest_epoch(ck) > 0) {
        cm_error err = {0};
        char dir[600];
        snprintf(dir, sizeof dir, "%s/ckpt-%06d", ck, s_latest_epoch(ck));
        cr_expect_eq(cm_ckpt_verify(dir, &err), 0, "%s", err.msg);
    }
}

Test(cluster_heal, divergence_stops_the_job_and_publishes_nothing)
{
    const char *ml = s_ml();
    char cmd[4096], out[65536];
    /* the case: sgd at lr 0.2 turns nan after an epoch or two */
    snprintf(cmd, sizeof cmd,
             "%s train --local %s --optimizer sgd --lr 0.2 --schedule minibatch --epochs 6 "
             "--checkpoint_dir %s --progress off",
             PSREC_BINARY, ml, th_path("div1"));
    int rc = th_run(cmd, out, sizeof out);
    s_expect_diverged(rc, out, th_path("div1"));
    cr_expect(strstr(out, "lr = 0.2") != NULL, "the step size is named:\n%s", out);

    /* from the first epoch on: no checkpoint at all */
    snprintf(cmd, sizeof cmd,
             "%s train --local %s --optimizer sgd --lr 3 --schedule minibatch --epochs 3 "
             "--checkpoint_dir %s --progress off",
             PSREC_BINARY, ml, th_path("div2"));
    rc = th_run(cmd, out, sizeof out);
    s_expect_diverged(rc, out, th_path("div2"));
    cr_expect_eq(s_latest_epoch(th_path("div2")), -1, "nothing published:\n%s", out);

    /* --local restarts: the run comes again, then gives up */
    snprintf(cmd, sizeof cmd,
             "%s train --local %s --optimizer sgd --lr 3 --schedule minibatch --epochs 3 "
             "--checkpoint_dir %s --progress off --restarts 1 --restart_backoff 0",
             PSREC_BINARY, ml, th_path("div3"));
    rc = th_run(cmd, out, sizeof out);
    cr_expect_eq(rc, 1, "%s", out);
    cr_expect(strstr(out, "restart 1 of 1") != NULL, "one restart:\n%s", out);
    const char *first = strstr(out, "training diverged");
    cr_expect(first && strstr(first + 1, "training diverged"), "two attempts:\n%s", out);
}

Test(cluster_heal, divergence_under_mpirun_exits_non_zero)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *ml = s_ml();
    char cmd[4096], out[65536];
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-np 4 %s train %s --optimizer sgd --lr 3 --schedule minibatch "
             "--epochs 3 --checkpoint_dir %s --progress off",
             PSREC_BINARY, ml, th_path("divm"));
    int rc = th_run(cmd, out, sizeof out);
    s_expect_diverged(rc, out, th_path("divm"));
    cr_expect_eq(s_latest_epoch(th_path("divm")), -1, "nothing published:\n%s", out);
}

/* ---------------------------------------------------------------------
 * resume = auto with nothing to resume
 * ------------------------------------------------------------------- */

Test(cluster_heal, resume_auto_starts_fresh_without_a_checkpoint)
{
    const char *ml = s_ml();
    char cmd[4096], out[65536];
    const char *ck = th_path("fresh");
    /* a directory whose only checkpoint never got its MANIFEST */
    char p[700];
    snprintf(p, sizeof p, "%s/ckpt-000001", ck);
    cr_assert_eq(mkdir(ck, 0755), 0);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(cmd, sizeof cmd,
             "%s train --local %s --epochs 2 --checkpoint_dir %s --resume auto --progress off",
             PSREC_BINARY, ml, ck);
    int rc = th_run(cmd, out, sizeof out);
    cr_expect_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, "starting from scratch") != NULL, "%s", out);
    cr_expect(strstr(out, "final test RMSE") != NULL, "%s", out);
    cr_expect_eq(s_latest_epoch(ck), 2);

    /* now there is one: auto resumes from it */
    snprintf(cmd, sizeof cmd,
             "%s train --local %s --epochs 3 --checkpoint_dir %s --resume auto --progress off",
             PSREC_BINARY, ml, ck);
    rc = th_run(cmd, out, sizeof out);
    cr_expect_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, "resumed from") != NULL, "%s", out);

    /* a published checkpoint that is damaged is refused, not ignored */
    for (int e = 1; e <= 3; e++) {
        snprintf(p, sizeof p, "%s/ckpt-%06d/t0-s0.rows", ck, e);
        cr_assert_eq(truncate(p, 100), 0, "%s: %s", p, strerror(errno));
    }
    snprintf(cmd, sizeof cmd,
             "%s train --local %s --epochs 4 --checkpoint_dir %s --resume auto --progress off",
             PSREC_BINARY, ml, ck);
    rc = th_run(cmd, out, sizeof out);
    cr_expect_neq(rc, 0, "%s", out);
    cr_expect(strstr(out, "is intact") != NULL, "%s", out);
}

/* ---------------------------------------------------------------------
 * SIGTERM
 * ------------------------------------------------------------------- */

Test(cluster_heal, sigterm_writes_a_last_checkpoint_local)
{
    const char *ml = s_ml();
    char cmd[4096], out[65536];
    const char *ck = th_path("term"), *metrics = th_path("term.jsonl"), *log = th_path("t.log");
    /* no checkpoint is due before epoch 3000: only the signal makes one */
    snprintf(cmd, sizeof cmd,
             "%s train --local %s --epochs 3000 --eval_every 1000 --checkpoint_every 0 "
             "--checkpoint_dir %s --metrics %s --progress off",
             PSREC_BINARY, ml, ck, metrics);
    pid_t pid = th_spawn(cmd, log, NULL, 0);
    for (int i = 0; i < 60000 && s_epochs_done(metrics) < 1 && s_running(pid); i++)
        usleep(5000);
    cr_assert_geq(s_epochs_done(metrics), 1, "training started");
    cr_assert_eq(kill(pid, SIGTERM), 0);
    int rc = th_reap(pid, 120);
    th_read_file(log, out, sizeof out);
    cr_expect_eq(rc, 1, "a stopped job exits 1 (%d):\n%s", rc, out);
    cr_expect(strstr(out, "stopped by signal 15") != NULL, "%s", out);
    int e = s_epochs_done(metrics);
    cr_expect(e >= 1 && e < 3000, "stopped early (epoch %d)", e);
    cr_expect_eq(s_latest_epoch(ck), e, "the last checkpoint is the last epoch's");
    char dir[700];
    cm_error err = {0};
    snprintf(dir, sizeof dir, "%s/ckpt-%06d", ck, e);
    cr_expect_eq(cm_ckpt_verify(dir, &err), 0, "%s", err.msg);
    snprintf(cmd, sizeof cmd,
             "%s train --local %s --epochs %d --checkpoint_dir %s --resume auto --progress off",
             PSREC_BINARY, ml, e + 1, ck);
    rc = th_run(cmd, out, sizeof out);
    cr_expect_eq(rc, 0, "%s", out);
    char want[64];
    snprintf(want, sizeof want, "epoch %d done", e);
    cr_expect(strstr(out, want) != NULL, "goes on from epoch %d:\n%s", e, out);
}

Test(cluster_heal, sigterm_to_every_rank_under_mpirun)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *ml = s_ml();
    char cmd[4096], out[65536];
    const char *ck = th_path("mterm"), *metrics = th_path("mterm.jsonl"),
               *log = th_path("mt.log"), *pids = th_path("mtpids");
    cr_assert_eq(mkdir(pids, 0755), 0);
    snprintf(cmd, sizeof cmd,
             "PSREC_PID_DIR=%s " TH_MPIRUN "-x PSREC_PID_DIR -np 4 %s train %s --epochs 3000 "
             "--eval_every 1000 --checkpoint_every 0 --checkpoint_dir %s --metrics %s "
             "--progress off",
             pids, PSREC_BINARY, ml, ck, metrics);
    pid_t pid = th_spawn(cmd, log, NULL, 0);
    for (int i = 0; i < 60000 && s_epochs_done(metrics) < 1 && s_running(pid); i++)
        usleep(5000);
    cr_assert_geq(s_epochs_done(metrics), 1, "training started");
    /* as Slurm does: every task of the step gets it */
    char name[32];
    for (int r = 0; r < 4; r++) {
        snprintf(name, sizeof name, "rank-%d.pid", r);
        pid_t p = s_pid(pids, name);
        cr_assert_gt(p, 0, "rank %d wrote its pid", r);
        cr_expect_eq(kill(p, SIGTERM), 0);
    }
    int rc = th_reap(pid, 120);
    th_read_file(log, out, sizeof out);
    cr_expect(rc != 0 && rc != -1, "mpirun ends non-zero (%d):\n%s", rc, out);
    cr_expect(strstr(out, "stopped by signal 15") != NULL, "%s", out);
    int e = s_epochs_done(metrics);
    cr_expect(e >= 1 && e < 3000, "stopped early (epoch %d)", e);
    cr_expect_eq(s_latest_epoch(ck), e, "the last checkpoint is the last epoch's:\n%s", out);
}

/* ---------------------------------------------------------------------
 * psrec launch: kill -9 of a server, restarted from a checkpoint
 * ------------------------------------------------------------------- */

/* How many of this pid's socket files are in dir. */
static int s_sockets_of(const char *dir, pid_t pid)
{
    char pre[64];
    snprintf(pre, sizeof pre, "psrec-%ld-", (long)pid);
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strncmp(e->d_name, pre, strlen(pre)) == 0;
    if (d)
        closedir(d);
    return n;
}

Test(cluster_heal, launch_restarts_after_kill9_of_a_server)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *ml = s_ml();
    char cmd[4096], out[65536], args[2048];
    const char *pids = th_path("lpids"), *log = th_path("launch.log"), *ck = th_path("lck");
    const char *sock = th_path("sock");
    cr_assert_eq(mkdir(pids, 0755), 0);
    cr_assert_eq(mkdir(sock, 0755), 0);
    const char *job = "%s --schedule minibatch --epochs 15 --progress off --checkpoint_dir %s "
                      "--metrics %s";

    /* fault-free reference */
    snprintf(args, sizeof args, job, ml, th_path("refck"), th_path("ref.jsonl"));
    snprintf(cmd, sizeof cmd, TH_MPIRUN "-np 4 %s train %s", PSREC_BINARY, args);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
    double want = th_last_metric(th_path("ref.jsonl"), "test_rmse");
    cr_assert_gt(want, 0);

    /* ranks bind their unix sockets in the test's own TMPDIR */
    snprintf(args, sizeof args, job, ml, ck, th_path("run.jsonl"));
    snprintf(cmd, sizeof cmd,
             "TMPDIR=%s PSREC_PID_DIR=%s ASAN_OPTIONS=detect_leaks=0 %s launch "
             "--allow-run-as-root --oversubscribe --bind-to none -x ASAN_OPTIONS -x TMPDIR "
             "-x PSREC_PID_DIR -np 4 -- %s --restarts 2 --restart_backoff 0.2",
             sock, pids, PSREC_BINARY, args);
    pid_t pid = th_spawn(cmd, log, NULL, 0);
    /* after the first checkpoint: freeze server rank 1 (so the job cannot
     * end before the kill), then kill -9 it */
    pid_t victim = -1;
    for (int i = 0; i < 60000 && victim < 0 && s_running(pid); i++) {
        if (s_latest_epoch(ck) >= 1)
            victim = s_pid(pids, "rank-1.pid");
        if (victim < 0)
            usleep(2000);
    }
    cr_assert_gt(victim, 0, "a checkpoint exists and the server wrote its pid");
    cr_assert_eq(kill(victim, SIGSTOP), 0, "the server is still running");
    int at_kill = s_epochs_done(th_path("run.jsonl"));
    cr_assert_eq(kill(victim, SIGKILL), 0);
    int rc = th_reap(pid, 300);
    th_read_file(log, out, sizeof out);
    cr_expect_eq(rc, 0, "the launcher finishes the job (%d):\n%s", rc, out);
    cr_expect_lt(at_kill, 15, "killed before the end (epoch %d)", at_kill);
    cr_expect(strstr(out, "attempt 1 of 3 failed") != NULL, "%s", out);
    cr_expect(strstr(out, "resumed from") != NULL, "%s", out);
    cr_expect(strstr(out, "finished after 1 restart") != NULL, "%s", out);
    double got = s_after(out, "final test RMSE ");
    cr_expect(got > 0 && fabs(got - want) <= 0.01 * want,
              "final test RMSE %.5f after the restart vs %.5f fault-free (within 1%%)", got,
              want);
    /* the restarted ranks swept the killed server's socket files */
    cr_expect_eq(s_sockets_of(sock, victim), 0, "no socket file of the killed rank is left");
}

/* Slurm's `--signal=B:TERM@N` with `exec psrec launch` in the script:
 * the launcher gets SIGTERM and every rank stops after the epoch. */
Test(cluster_heal, sigterm_to_the_launcher_stops_every_rank_with_a_checkpoint)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *ml = s_ml();
    char cmd[4096], out[65536];
    const char *ck = th_path("lterm"), *metrics = th_path("lterm.jsonl"),
               *log = th_path("lt.log");
    snprintf(cmd, sizeof cmd,
             "ASAN_OPTIONS=detect_leaks=0 %s launch --allow-run-as-root --oversubscribe "
             "--bind-to none -x ASAN_OPTIONS -np 4 -- %s --epochs 3000 --eval_every 1000 "
             "--checkpoint_every 0 --checkpoint_dir %s --metrics %s --progress off "
             "--restarts 3",
             PSREC_BINARY, ml, ck, metrics);
    pid_t pid = th_spawn(cmd, log, NULL, 0);
    for (int i = 0; i < 60000 && s_epochs_done(metrics) < 1 && s_running(pid); i++)
        usleep(5000);
    cr_assert_geq(s_epochs_done(metrics), 1, "training started");
    cr_assert_eq(kill(pid, SIGTERM), 0);
    int rc = th_reap(pid, 120);
    th_read_file(log, out, sizeof out);
    cr_expect(rc != 0 && rc != -1, "the launcher ends non-zero (%d):\n%s", rc, out);
    cr_expect(strstr(out, "stopped by signal 10") != NULL, "the ranks got SIGUSR1:\n%s", out);
    cr_expect(strstr(out, "not restarting") != NULL, "%s", out);
    int e = s_epochs_done(metrics);
    cr_expect(e >= 1 && e < 3000, "stopped early (epoch %d)", e);
    cr_expect_eq(s_latest_epoch(ck), e, "the last checkpoint is the last epoch's:\n%s", out);
}
