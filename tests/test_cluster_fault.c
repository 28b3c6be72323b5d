/* Faults on one host: a rank that stalls (SIGSTOP) under mpirun, a role
 * that stalls in a --local job, and a worker that fails while the others
 * wait in a collective. Each must end the whole job, non-zero, within
 * the heartbeat's limit plus a few seconds, and say which rank, on which
 * host, was doing what. The time bounds asserted are generous (a loaded CI
 * machine): they catch hangs; the measured times are logged. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>

#include "common/log.h"
#include "bgjob.h"

TestSuite(cluster_fault, .timeout = 600);

/* Upper bound on the seconds from the fault to the end of the job: the
 * target is timeout + 5 s (10 s here); more than this is a hang. */
#define S_BOUND 60.0

static void s_nap(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A job started in the background: mpirun's pid (its process group's
 * too) and the file holding its stdout and stderr; ranks write their pids
 * under dir. */
typedef struct {
    char dir[64];
    char log[128];
    pid_t pid, group;
} s_job;

static void s_start(s_job *j, const char *cmd)
{
    snprintf(j->dir, sizeof j->dir, "/tmp/psrec-fault-XXXXXX");
    cr_assert_not_null(mkdtemp(j->dir));
    snprintf(j->log, sizeof j->log, "%s/out", j->dir);
    j->pid = j->group = th_spawn(cmd, j->log, j->dir, 1);
}

/* The pid rank r wrote, or -1. */
static pid_t s_rank_pid(const s_job *j, int r)
{
    return th_rank_pid(j->dir, r);
}

/* Polls (up to secs) until the job's output holds `text`; 1 if it does,
 * 0 if it did not come or the job ended first. */
static int s_wait_output(const s_job *j, const char *text, double secs)
{
    static char out[1 << 20];
    double until = cm_now() + secs;
    for (;;) {
        th_read_file(j->log, out, sizeof out);
        if (strstr(out, text))
            return 1;
        if (cm_now() >= until || kill(j->pid, 0) != 0 || waitpid(j->pid, NULL, WNOHANG) != 0)
            return 0;
        s_nap(50);
    }
}

/* Waits (up to secs) for mpirun to end: its exit status, or -1 when it
 * did not end (it is killed then, the rest of its group by s_cleanup). */
static int s_wait_end(s_job *j, double secs)
{
    int rc = th_reap(j->pid, secs);
    j->pid = -1;
    return rc;
}

/* Nothing may outlive a test: ranks continued and killed, mpirun's group
 * killed, the directory removed. */
static void s_cleanup(s_job *j, int ranks)
{
    for (int r = 0; r < ranks; r++) {
        pid_t p = s_rank_pid(j, r);
        if (p > 1 && kill(p, 0) == 0) {
            kill(p, SIGCONT);
            kill(p, SIGKILL);
        }
    }
    if (j->group > 0)
        kill(-j->group, SIGKILL);
    if (j->pid > 0) {
        kill(j->pid, SIGKILL);
        waitpid(j->pid, NULL, 0);
        j->pid = -1;
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", j->dir);
    cr_expect_eq(system(cmd), 0);
}

/* 1 scheduler, 1 server, 2 workers on ml-100k, training far longer than
 * the test lasts; rank `victim` is stopped once epoch 10 is done. */
static void s_stop_one(int victim, const char *named)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): fault test skipped");
    char cmd[8192];
    /* patience 0: the job must still be training when it is stopped */
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-x PSREC_PID_DIR -np 4 %s train --train %s/ml-100k/u1.base "
             "--test %s/ml-100k/u1.test --servers 1 --epochs 100000 --patience 0 --progress off "
             "--timeout 5 --heartbeat 1 --heartbeat_misses 3",
             PSREC_BINARY, data, data);
    s_job j;
    s_start(&j, cmd);
    int up = s_wait_output(&j, "epoch  10/", 300);
    pid_t pid = s_rank_pid(&j, victim);
    if (!up || pid < 0) {
        static char out[1 << 16];
        th_read_file(j.log, out, sizeof out);
        s_cleanup(&j, 4);
        cr_assert_fail("the job did not reach epoch 10 (pid of rank %d: %d):\n%s", victim,
                       (int)pid, out);
    }
    double t0 = cm_now();
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    int rc = s_wait_end(&j, S_BOUND);
    double secs = cm_now() - t0;
    static char out[1 << 20];
    th_read_file(j.log, out, sizeof out);
    s_cleanup(&j, 4);
    cr_log_info("SIGSTOP of rank %d: mpirun exited %d after %.1f s", victim, rc, secs);
    cr_assert_neq(rc, -1, "no end %.0f s after SIGSTOP of rank %d:\n%s", S_BOUND, victim, out);
    cr_expect_neq(rc, 0, "mpirun exits non-zero:\n%s", out);
    cr_expect_lt(secs, S_BOUND, "ended %.1f s after the stop", secs);
    char host[64];
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    char *dot = strchr(host, '.');
    if (dot)
        *dot = '\0';
    cr_expect(strstr(out, named) != NULL, "stderr names '%s':\n%s", named, out);
    cr_expect(strstr(out, host) != NULL, "stderr names the host %s:\n%s", host, out);
    char pidtext[64];
    snprintf(pidtext, sizeof pidtext, "pid %d", (int)pid);
    cr_expect(strstr(out, pidtext) != NULL, "stderr names the stalled %s:\n%s", pidtext, out);
    cr_expect(strstr(out, "it was ") != NULL, "says what it was doing:\n%s", out);
}

Test(cluster_fault, sigstop_scheduler_ends_the_job)
{
    s_stop_one(0, "the scheduler (rank 0 on ");
}

Test(cluster_fault, sigstop_server_ends_the_job)
{
    s_stop_one(1, "rank 1 (server) on ");
}

Test(cluster_fault, sigstop_worker_ends_the_job)
{
    s_stop_one(3, "rank 3 (worker) on ");
}

/* A rank that stops during start-up, before the heartbeats run, while the
 * others wait for it in MPI's collectives: their start-up watchdog ends
 * the job within `timeout`, non-zero, saying what did not finish. */
Test(cluster_fault, stall_before_heartbeats_ends_the_job)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): fault test skipped");
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "PSREC_TEST_STALL_START=2 " TH_MPIRUN "-x PSREC_PID_DIR -x PSREC_TEST_STALL_START "
             "-np 4 %s train --train %s/ml-100k/u1.base --servers 1 --epochs 3 "
             "--progress off --timeout 5",
             PSREC_BINARY, data);
    s_job j;
    s_start(&j, cmd);
    double t0 = cm_now();
    int rc = s_wait_end(&j, S_BOUND + 30);
    double secs = cm_now() - t0;
    static char out[1 << 20];
    th_read_file(j.log, out, sizeof out);
    s_cleanup(&j, 4);
    cr_log_info("a rank stopped in start-up: mpirun exited %d after %.1f s", rc, secs);
    cr_assert_neq(rc, -1, "no end %.0f s after the start:\n%s", S_BOUND + 30, out);
    cr_expect_neq(rc, 0, "mpirun exits non-zero:\n%s", out);
    cr_expect(strstr(out, "start-up (MPI, keys, heartbeats) did not finish within 5 s") != NULL,
              "says start-up did not finish:\n%s", out);
}

/* A worker that fails while loading (too many bad lines in its part of the
 * input) while the other waits for it in the ingest exchange: the job ends
 * with that worker's own reason, and no barrier holds anyone. */
Test(cluster_fault, worker_failure_while_others_wait)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): fault test skipped");
    char dir[] = "/tmp/psrec-fault-bad-XXXXXX", path[128], cmd[8192];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/half-bad.txt", dir);
    /* good ratings, then a run of bad lines in the second worker's half */
    snprintf(cmd, sizeof cmd,
             "head -40000 %s/ml-100k/u1.base > %s && yes 'not a rating' | head -2000 >> %s && "
             "tail -40000 %s/ml-100k/u1.base >> %s",
             data, path, path, data, path);
    cr_assert_eq(system(cmd), 0);
    s_job j;
    /* timeout 30, not 5: the other worker waits for this one's rows with
     * that limit, and under load (the sanitizers, busy cores) reading
     * 42,000 lines to the bad run can take longer than 5 s; the other
     * worker's timeout, not the bad lines, would then end the job */
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-x PSREC_PID_DIR -np 4 %s train --train %s --servers 1 --epochs 3 "
             "--progress off --max_bad_lines 10 --timeout 30 --heartbeat 1 "
             "--heartbeat_misses 3",
             PSREC_BINARY, path);
    s_start(&j, cmd);
    double t0 = cm_now();
    int rc = s_wait_end(&j, 120);
    double secs = cm_now() - t0;
    static char out[1 << 20];
    th_read_file(j.log, out, sizeof out);
    s_cleanup(&j, 4);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
    cr_log_info("a worker's load failure: mpirun exited %d after %.1f s", rc, secs);
    cr_assert_neq(rc, -1, "no end within 120 s:\n%s", out);
    cr_expect_neq(rc, 0, "mpirun exits non-zero:\n%s", out);
    /* the worker's own line, or the scheduler's relay of it, quoted: which
     * one is printed before the job's abort depends on which rank gets
     * there first */
    cr_expect((strstr(out, "(worker): ") != NULL || strstr(out, "failed: \"") != NULL) &&
                  strstr(out, "too many bad lines") != NULL,
              "the worker's own reason is shown:\n%s", out);
    cr_expect(strstr(out, "half-bad.txt:4000") != NULL, "with the line:\n%s", out);
}

/* --local: a role that stalls (the PSREC_TEST_STALL hook silences its
 * heartbeat and leaves it waiting) ends the job with an error naming it,
 * instead of a hang. */
Test(cluster_fault, local_stalled_role_ends_the_job)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): fault test skipped");
    const char *named[3] = {"the scheduler (rank 0", "rank 1 (server) on ",
                            "rank 2 (worker) on "};
    for (int r = 0; r < 3; r++) {
        cm_log_set_level(CM_LOG_ERROR);
        cm_job job = cm_job_default();
        snprintf(job.train, sizeof job.train, "%.900s/ml-100k/u1.base", data);
        snprintf(job.test, sizeof job.test, "%.900s/ml-100k/u1.test", data);
        job.local = 1;
        job.servers = 1;
        job.workers = 2;
        job.epochs = 3;
        job.progress = 0;
        job.log_level = CM_LOG_ERROR;
        job.timeout = 10;
        job.heartbeat = 0.2;
        job.heartbeat_misses = 5;
        char v[16];
        snprintf(v, sizeof v, "%d", r);
        setenv("PSREC_TEST_STALL", v, 1);
        sch_result res;
        cm_error err = {0};
        double t0 = cm_now();
        int rc = th_local(&job, &res, &err);
        double secs = cm_now() - t0;
        unsetenv("PSREC_TEST_STALL");
        cr_log_info("--local, rank %d stalled: error after %.1f s: %s", r, secs, err.msg);
        cr_expect_neq(rc, 0, "rank %d stalled: the job fails", r);
        cr_expect(strstr(err.msg, named[r]) != NULL, "names '%s': %s", named[r], err.msg);
        cr_expect(strstr(err.msg, "stopped") != NULL, "%s", err.msg);
        /* the limit is 1 s; 20 timeouts (200 s) is where the hook itself gives up */
        cr_expect_lt(secs, S_BOUND, "ended after %.1f s", secs);
    }
}
