/* Jobs across three hosts simulated on this machine (tests/hosts/hosts.sh:
 * network namespaces on a private bridge, each with its own address,
 * hostname and /tmp; Open MPI started through an rsh agent that enters
 * them), on MovieLens 100K with the blocks schedule. Skipped, saying why,
 * where namespaces cannot be made (not root, no iproute2, no unshare).
 *
 * Layout: mpirun -np 5 --map-by node puts rank 0 (scheduler) and worker 3
 * on h0, the server (rank 1) and worker 4 on h1, worker 2 on h2; so worker
 * 4 trains the server's rows in place and workers 2 and 3 by messages. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <time.h>

#include "bgjob.h"

TestSuite(cluster_hosts, .timeout = 600);

/* snprintf that fails the test rather than cut a path or command short. */
__attribute__((format(printf, 3, 4))) static void s_fmt(char *out, size_t n, const char *fmt,
                                                        ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    cr_assert(len >= 0 && (size_t)len < n, "%zu bytes are too few for '%.80s...'", n, out);
}

/* This test's hosts: DIR holds the harness state (outside /tmp, which each
 * host has its own of) and the job's shared files. */
static char s_dir[256];
static char s_script[512];

static void s_down(void)
{
    if (!s_dir[0])
        return;
    char cmd[4096];
    s_fmt(cmd, sizeof cmd, "%s down %s", s_script, s_dir);
    th_run(cmd, NULL, 0);
    s_dir[0] = '\0';
}

/* Makes the three hosts (skips the test where that cannot be done). */
static void s_up(int same_hostname)
{
    s_fmt(s_script, sizeof s_script, "%s/tests/hosts/hosts.sh", PSREC_SOURCE_DIR);
    char bin[200];
    s_fmt(bin, sizeof bin, "%s", PSREC_BINARY);
    s_fmt(s_dir, sizeof s_dir, "%s/hosts-%ld", dirname(bin), (long)getpid());
    char cmd[4096], out[8192];
    s_fmt(cmd, sizeof cmd, "PSREC_HOSTS_OWNER=%ld %s up %s%s", (long)getpid(), s_script,
             s_dir, same_hostname ? " --same-hostname" : "");
    int rc = th_run(cmd, out, sizeof out);
    if (rc == 77) {
        s_dir[0] = '\0';
        cr_skip_test("no simulated hosts here: %s", out);
    }
    cr_assert_eq(rc, 0, "hosts.sh up failed (%d):\n%s", rc, out);
}

static void s_fini(void)
{
    s_down();
}

/* Logs the job's error line ("psrec: error: ..."), if any, for the record. */
static void s_log_error(const char *what, const char *out)
{
    const char *e = strstr(out, "psrec: error: ");
    if (e)
        cr_log_info("%s: %.*s", what, (int)strcspn(e, "\n"), e);
}

/* mpirun's options that place 5 ranks across the hosts (the rest of the
 * command line, after them, is the program). */
static void s_mpi_opts(char *out, size_t n)
{
    char subnet[64] = "";
    char path[1024];
    s_fmt(path, sizeof path, "%s/subnet", s_dir);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_not_null(fgets(subnet, sizeof subnet, f));
    fclose(f);
    subnet[strcspn(subnet, "\n")] = '\0';
    s_fmt(out, n,
          "--allow-run-as-root --oversubscribe --bind-to none -x ASAN_OPTIONS "
          "-x PSREC_PID_DIR --hostfile %s/hostfile --map-by node "
          "--mca plm_rsh_agent %s/agent --mca plm_rsh_no_tree_spawn 1 "
          "--mca oob_tcp_if_include %s --mca btl_tcp_if_include %s -np 5",
          s_dir, s_dir, subnet, subnet);
}

/* The mpirun command line that runs `args` across the hosts from h0; each
 * rank writes its pid under pid_dir (PSREC_PID_DIR), here the harness's
 * directory when pid_dir is NULL. */
static void s_mpirun_pids(char *cmd, size_t n, const char *args, const char *pid_dir)
{
    char opts[2048];
    s_mpi_opts(opts, sizeof opts);
    s_fmt(cmd, n,
          "timeout 300 %s exec %s h0 env ASAN_OPTIONS=detect_leaks=0 PSREC_PID_DIR=%s "
          "mpirun %s %s %s",
          s_script, s_dir, pid_dir ? pid_dir : s_dir, opts, PSREC_BINARY, args);
}

static void s_mpirun(char *cmd, size_t n, const char *args)
{
    s_mpirun_pids(cmd, n, args, NULL);
}

/* The training job every case runs, its files under dir. */
static void s_job(char *args, size_t n, const char *data, const char *dir, int epochs,
                  const char *extra)
{
    /* patience 0: the jobs must run their epochs for the faults to land */
    s_fmt(args, n,
             "train --train %s/ml-100k/u1.base --test %s/ml-100k/u1.test --servers 1 "
             "--schedule blocks --epochs %d --patience 0 --progress off --log_level info "
             "--metrics %s/metrics.jsonl %s",
             data, data, epochs, dir, extra ? extra : "");
}

/* The last line of a metrics file, from its first '"train_loss"' on (the
 * model's figures at the precision written; timings come later). */
static void s_final_line(const char *dir, char *out, size_t n)
{
    char path[1024], line[4096] = "";
    s_fmt(path, sizeof path, "%s/metrics.jsonl", dir);
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        const char *from = strstr(line, "\"train_loss\"");
        const char *to = strstr(line, "\"examples_per_s\"");
        if (from && to && to > from)
            s_fmt(out, n, "%.*s", (int)(to - from), from);
    }
    fclose(f);
}

/* 1 when files a and b hold the same bytes. */
static int s_same_file(const char *a, const char *b)
{
    char cmd[2100];
    s_fmt(cmd, sizeof cmd, "cmp -s %s %s", a, b);
    return th_run(cmd, NULL, 0) == 0;
}

/* Reference: the same job with every rank on this host (mpirun as usual). */
static void s_reference(const char *data, int epochs, const char *extra, char *final,
                        size_t n)
{
    char dir[512], args[4096], cmd[7000], out[65536];
    s_fmt(dir, sizeof dir, "%s/one-host", s_dir);
    mkdir(dir, 0755);
    s_job(args, sizeof args, data, dir, epochs, extra);
    s_fmt(cmd, sizeof cmd, "timeout 300 env " TH_MPIRUN "-np 5 %s %s", PSREC_BINARY, args);
    int rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "one-host reference failed (%d):\n%s", rc, out);
    s_final_line(dir, final, n);
    cr_assert(final[0], "one-host metrics:\n%s", out);
}

/* Across three hosts: the single-host model bit for bit (final metrics at
 * full precision, and the checkpoint's row files byte for byte), the
 * server's host training in place and the others by messages. */
Test(cluster_hosts, three_hosts_equal_one_host, .fini = s_fini)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    s_up(0);
    char one[2048], many[2048], dir[1200], ck1[1300], ck3[1300];
    s_fmt(ck1, sizeof ck1, "--checkpoint_dir %s/one-host/ckpt", s_dir);
    s_reference(data, 20, ck1, one, sizeof one);

    s_fmt(dir, sizeof dir, "%s/three", s_dir);
    mkdir(dir, 0755);
    s_fmt(ck3, sizeof ck3, "--checkpoint_dir %s/ckpt", dir);
    char args[4096], cmd[7000], out[65536];
    s_job(args, sizeof args, data, dir, 20, ck3);
    s_mpirun(cmd, sizeof cmd, args);
    double t0 = th_clock();
    int rc = th_run(cmd, out, sizeof out);
    double secs = th_clock() - t0;
    cr_assert_eq(rc, 0, "three hosts: mpirun failed (%d) after %.1f s:\n%s", rc, secs, out);
    cr_log_info("three hosts: exit %d after %.1f s", rc, secs);
    s_final_line(dir, many, sizeof many);
    cr_expect_str_eq(many, one, "three hosts vs one host:\n%s", out);
    cr_expect(strstr(out, "item rows shared with the servers on this host") != NULL,
              "the worker beside the server trains in place:\n%s", out);
    cr_expect(strstr(out, "runs on another host") != NULL,
              "the other workers go by messages, and say why:\n%s", out);
    cr_expect(strstr(out, "@psrec") != NULL && strstr(out, "-h1 ") != NULL,
              "ranks log their own host:\n%s", out);
    for (int t = 0; t < 2; t++) {
        char a[1024], b[1024];
        s_fmt(a, sizeof a, "%s/one-host/ckpt/ckpt-000020/t%d-s0.rows", s_dir, t);
        s_fmt(b, sizeof b, "%s/ckpt/ckpt-000020/t%d-s0.rows", dir, t);
        cr_expect(s_same_file(a, b), "table %d: %s and %s differ", t, a, b);
    }
}

/* Hosts that share one hostname (containers often do): told apart all the
 * same; the job finishes with the single-host model. */
Test(cluster_hosts, one_hostname_for_every_host, .fini = s_fini)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    s_up(1);
    char one[2048], many[2048], dir[1200];
    s_reference(data, 20, NULL, one, sizeof one);
    s_fmt(dir, sizeof dir, "%s/same-name", s_dir);
    mkdir(dir, 0755);
    char args[4096], cmd[7000], out[65536];
    s_job(args, sizeof args, data, dir, 20, "--timeout 60");
    s_mpirun(cmd, sizeof cmd, args);
    double t0 = th_clock();
    int rc = th_run(cmd, out, sizeof out);
    double secs = th_clock() - t0;
    cr_assert_eq(rc, 0, "one hostname: mpirun failed (%d) after %.1f s:\n%s", rc, secs, out);
    cr_log_info("one hostname: exit %d after %.1f s", rc, secs);
    s_final_line(dir, many, sizeof many);
    cr_expect_str_eq(many, one, "one hostname vs one host:\n%s", out);
    cr_expect(strstr(out, "different hosts of one name") != NULL,
              "the shared name is reported:\n%s", out);
    cr_expect(strstr(out, "item rows shared with the servers on this host") != NULL &&
                  strstr(out, "runs on another host") != NULL,
              "in place beside the server only:\n%s", out);
    cr_expect(strstr(out, "ipc://") == NULL, "no unix sockets across hosts:\n%s", out);
}

/* The last epoch in dir's metrics file, or 0. */
static int s_epochs_done(const char *dir)
{
    char path[1024], line[4096];
    s_fmt(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    int e = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"epoch\": ");
        if (p)
            e = atoi(p + 9);
    }
    fclose(f);
    return e;
}

/* The longest time between two consecutive epochs' ends in dir's metrics
 * ("elapsed" values), in seconds. */
static double s_longest_epoch_gap(const char *dir)
{
    char path[1024], line[4096];
    s_fmt(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    double prev = -1, gap = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"elapsed\": ");
        if (!p)
            continue;
        double t = strtod(p + 11, NULL);
        if (prev >= 0 && t - prev > gap)
            gap = t - prev;
        prev = t;
    }
    fclose(f);
    return gap;
}

/* A running job: its pid and the file its output goes to. */
typedef struct {
    pid_t pid;
    char log[600];
} s_bg;

static void s_link(const char *host, const char *state)
{
    char cmd[4096], out[1024];
    s_fmt(cmd, sizeof cmd, "%s link %s %s %s", s_script, s_dir, host, state);
    int rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "link %s %s: %s", host, state, out);
}

/* Cuts host h1 (the server and a worker) off while the job trains, for
 * `cut` seconds; returns the job's exit code, its output in out. */
static int s_cut_job(const char *data, const char *dir, int epochs, double cut,
                     const char *extra, char *out, size_t n, double *secs, double *cut_at)
{
    char args[4096], cmd[7000];
    s_job(args, sizeof args, data, dir, epochs, extra);
    s_mpirun(cmd, sizeof cmd, args);
    s_bg j;
    s_fmt(j.log, sizeof j.log, "%s/out.log", dir);
    double t0 = th_clock();
    j.pid = th_spawn(cmd, j.log, NULL, 0);
    /* cut once training is under way (two epochs done); every wait bounded */
    while (s_epochs_done(dir) < 2 && th_clock() - t0 < 120 && waitpid(j.pid, NULL, WNOHANG) == 0)
        usleep(20 * 1000);
    int before = s_epochs_done(dir);
    s_link("h1", "down");
    *cut_at = th_clock() - t0;
    int still = waitpid(j.pid, NULL, WNOHANG) == 0;
    if (still)
        usleep((useconds_t)(cut * 1e6)); /* the fault's length, not a wait for a result */
    int during = s_epochs_done(dir);
    s_link("h1", "up");
    cr_assert(still && before >= 2 && before < epochs,
              "the job must still train when the link goes (epoch %d of %d); make it longer",
              before, epochs);
    cr_log_info("cut at epoch %d after %.1f s; epoch %d when the link came back", before,
                *cut_at, during);
    int rc = th_reap(j.pid, 300);
    *secs = th_clock() - t0;
    th_read_file(j.log, out, n);
    return rc;
}

/* A cut shorter than `timeout`: the job waits it out and finishes with the
 * model it makes without one. */
Test(cluster_hosts, short_link_cut, .fini = s_fini)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    s_up(0);
    /* long enough that the job still trains when the link comes back; the
     * sanitizer build's epochs are several times slower */
    const int epochs = TH_SANITIZED ? 100 : 400;
    char one[2048], after[2048], dir[1200];
    s_reference(data, epochs, NULL, one, sizeof one);
    s_fmt(dir, sizeof dir, "%s/short-cut", s_dir);
    mkdir(dir, 0755);
    static char out[1 << 20];
    double secs = 0, cut_at = 0;
    int rc = s_cut_job(data, dir, epochs, 4.0, "--timeout 30", out, sizeof out, &secs, &cut_at);
    cr_log_info("short cut: exit %d after %.1f s", rc, secs);
    cr_assert_eq(rc, 0, "a 4 s cut with --timeout 30: exit %d after %.1f s:\n%s", rc, secs, out);
    s_final_line(dir, after, sizeof after);
    cr_expect_str_eq(after, one, "after a short cut vs no cut:\n%s", out);
    /* the cut was real: training stood still for most of it */
    double gap = s_longest_epoch_gap(dir);
    cr_log_info("short cut: longest pause between epochs %.1f s", gap);
    cr_expect_geq(gap, 2.0, "a 4 s cut of the server's host stalls an epoch (longest pause "
                            "%.2f s):\n%s", gap, out);
}

/* A checkpoint directory that is not one filesystem for every host (here
 * /tmp, which each host has its own of): refused at start-up, before any
 * training, naming the hosts and what to do (docs/checkpoints.md). */
Test(cluster_hosts, checkpoint_dir_not_shared, .fini = s_fini)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    s_up(0);
    char dir[512], extra[256];
    s_fmt(dir, sizeof dir, "%s/unshared", s_dir);
    mkdir(dir, 0755);
    s_fmt(extra, sizeof extra, "--checkpoint_dir /tmp/psrec-ckpt-%ld --timeout 30",
             (long)getpid());
    char args[4096], cmd[7000], out[65536];
    s_job(args, sizeof args, data, dir, 20, extra);
    s_mpirun(cmd, sizeof cmd, args);
    double t0 = th_clock();
    int rc = th_run(cmd, out, sizeof out);
    double secs = th_clock() - t0;
    cr_log_info("checkpoint dir not shared: exit %d after %.1f s", rc, secs);
    s_log_error("checkpoint dir not shared", out);
    cr_expect_neq(rc, 0, "a job whose checkpoints would be scattered must not run:\n%s", out);
    cr_expect_neq(rc, 124, "refused, not hung (%.1f s):\n%s", secs, out);
    cr_expect(strstr(out, "not one filesystem") != NULL, "says what is wrong:\n%s", out);
    char h0[64], h1[64];
    s_fmt(h0, sizeof h0, "psrec%ld-h0", (long)getpid());
    s_fmt(h1, sizeof h1, "psrec%ld-h1", (long)getpid());
    cr_expect(strstr(out, h0) && strstr(out, h1),
              "names the scheduler's host %s and the server's %s:\n%s", h0, h1, out);
    cr_expect(strstr(out, "shared filesystem") != NULL, "says what to do:\n%s", out);
    cr_expect(s_epochs_done(dir) == 0, "no epoch trained:\n%s", out);
}

/* The checkpoint root vanishes under the server's host mid-job (another
 * filesystem mounted over it there, as a stale or remounted network mount
 * would): the server's files of the next checkpoint land where the
 * scheduler cannot see them. That checkpoint is not published, the job
 * stops naming the server's host, and LATEST still names an intact one. */
Test(cluster_hosts, checkpoint_files_unseen_are_not_published, .fini = s_fini)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    s_up(0);
    const int epochs = 400;
    char dir[512], root[600], extra[1000];
    s_fmt(dir, sizeof dir, "%s/overmount", s_dir);
    mkdir(dir, 0755);
    s_fmt(root, sizeof root, "%s/ckpt", dir);
    s_fmt(extra, sizeof extra, "--checkpoint_dir %s --checkpoint_every 1 --checkpoint_keep 2 "
                               "--timeout 30", root);
    char args[4096], cmd[7000];
    s_job(args, sizeof args, data, dir, epochs, extra);
    s_mpirun(cmd, sizeof cmd, args);
    s_bg j;
    s_fmt(j.log, sizeof j.log, "%s/out.log", dir);
    double t0 = th_clock();
    j.pid = th_spawn(cmd, j.log, NULL, 0);
    /* once a checkpoint is published (the start-up check passed), cover the
     * root on h1 with an empty filesystem holding every checkpoint's
     * directory, so the server's writes succeed, out of the scheduler's sight */
    char latest[700];
    s_fmt(latest, sizeof latest, "%s/LATEST", root);
    while (access(latest, F_OK) != 0 && th_clock() - t0 < 120 &&
           waitpid(j.pid, NULL, WNOHANG) == 0)
        usleep(20 * 1000);
    int still = waitpid(j.pid, NULL, WNOHANG) == 0;
    int done = s_epochs_done(dir);
    cr_assert(still && done < epochs - 5,
              "the job must still train when the root is covered (epoch %d of %d)", done,
              epochs);
    char mnt[2048], mout[1024];
    s_fmt(mnt, sizeof mnt,
          "%s exec %s h1 sh -c 'mkdir -p /tmp/cover && cd /tmp/cover && "
          "mkdir $(seq -f ckpt-%%06g 1 %d) && mount --bind /tmp/cover %s'",
          s_script, s_dir, epochs, root);
    int mrc = th_run(mnt, mout, sizeof mout);
    cr_assert_eq(mrc, 0, "mount over the root on h1: %s", mout);
    int rc = th_reap(j.pid, 300);
    double secs = th_clock() - t0;
    static char out[1 << 20];
    th_read_file(j.log, out, sizeof out);
    cr_log_info("checkpoint files unseen: exit %d after %.1f s", rc, secs);
    s_log_error("checkpoint files unseen", out);
    cr_expect(rc != 0 && rc != -1, "the job stops (exit %d):\n%s", rc, out);
    /* the cover usually lands between two checkpoints, and the scheduler
     * finds files it cannot see; when it lands while the server writes one,
     * the server's own rename fails first. Either way nothing is published
     * and the server's host is named. */
    char h1[64], h1_err[96];
    s_fmt(h1, sizeof h1, "psrec%ld-h1 wrote", (long)getpid());
    s_fmt(h1_err, sizeof h1_err, "server 0 on host psrec%ld-h1: checkpoint: ", (long)getpid());
    const int unseen = strstr(out, "not published") != NULL && strstr(out, h1) != NULL;
    const int failed = strstr(out, h1_err) != NULL;
    cr_log_info("checkpoint files unseen: %s", unseen ? "the scheduler's check refused them"
                                                      : "the server's write failed first");
    cr_expect(unseen || failed,
              "says the checkpoint is not published, naming %s, or names the server's failed "
              "write on its host:\n%s", h1, out);
    /* what LATEST names is whole, and older than the job's end */
    char name[64] = "", ck[800], verify[1000], vout[4096];
    FILE *f = fopen(latest, "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(name, sizeof name, f));
    fclose(f);
    name[strcspn(name, "\n")] = '\0';
    s_fmt(ck, sizeof ck, "%s/%s", root, name);
    s_fmt(verify, sizeof verify, "%s export %s --out %s/export 2>&1", PSREC_BINARY,
          ck, dir);
    cr_expect_eq(th_run(verify, vout, sizeof vout), 0, "LATEST (%s) exports:\n%s", name, vout);
    cr_expect_lt(atoi(name + 5), epochs, "LATEST is %s", name);
}

/* How many processes run on host (other than the one holding it open). */
static int s_procs_on(const char *host, char *list, size_t n)
{
    char cmd[2048];
    s_fmt(cmd, sizeof cmd, "%s procs %s %s | tr '\\n' ' '", s_script, s_dir, host);
    int rc = th_run(cmd, list, n);
    cr_assert_eq(rc, 0, "hosts.sh procs %s: %s", host, list);
    int count = 0;
    for (const char *p = list; *p;) {
        p += strspn(p, " \n");
        if (*p)
            count++;
        p += strcspn(p, " \n");
    }
    return count;
}

/* A cut longer than `timeout`: the server's host h1 is unplugged and stays
 * so. The ranks on h1 end themselves when they lose the scheduler, rank 0
 * names the silent rank and its host and aborts, and mpirun exits non-zero
 * while the link is still down (it learns that h1's daemon is gone when
 * TCP gives up on it: tests/hosts/hosts.sh, docs/design.md); nothing is
 * left running on h1. The bounds are limits on a hang, not speed. */
Test(cluster_hosts, long_link_cut, .fini = s_fini)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    s_up(0);
    char dir[512], pids[600];
    s_fmt(dir, sizeof dir, "%s/long-cut", s_dir);
    mkdir(dir, 0755);
    s_fmt(pids, sizeof pids, "%s/pids", dir);
    mkdir(pids, 0755);
    char args[4096], cmd[7000];
    /* the heartbeat (10 s of silence) notices before the 20 s timeout of a
     * worker waiting for the server, so the silent host is what is named */
    s_job(args, sizeof args, data, dir, 100000, "--timeout 20");
    s_mpirun_pids(cmd, sizeof cmd, args, pids);
    s_bg j;
    s_fmt(j.log, sizeof j.log, "%s/out.log", dir);
    double t0 = th_clock();
    j.pid = th_spawn(cmd, j.log, NULL, 0);
    while (s_epochs_done(dir) < 2 && th_clock() - t0 < 120 && waitpid(j.pid, NULL, WNOHANG) == 0)
        usleep(20 * 1000);
    int before = s_epochs_done(dir);
    pid_t rank_pid[5];
    for (int r = 0; r < 5; r++)
        rank_pid[r] = th_rank_pid(pids, r);
    s_link("h1", "down");
    double cut_at = th_clock();
    /* the link stays down for as long as the job may take to end */
    const double limit = 150;
    int rc = th_reap(j.pid, limit);
    double secs = th_clock() - cut_at;
    /* what runs on h1 once mpirun is gone (its daemon ends when TCP gives
     * up on mpirun, as mpirun did on it): polled, bounded */
    char left[4096] = "";
    int n_left = -1;
    for (double t1 = th_clock(); th_clock() - t1 < 60;) {
        if ((n_left = s_procs_on("h1", left, sizeof left)) == 0)
            break;
        usleep(200 * 1000);
    }
    int ranks_alive = 0;
    for (int r = 0; r < 5; r++)
        ranks_alive += rank_pid[r] > 0 && kill(rank_pid[r], 0) == 0;
    s_link("h1", "up");
    static char out[1 << 20];
    th_read_file(j.log, out, sizeof out);
    cr_assert(before >= 2, "the job must train when the link goes (epoch %d):\n%s", before,
              out);
    for (int r = 0; r < 5; r++)
        cr_assert_gt(rank_pid[r], 0, "rank %d wrote its pid under %s:\n%s", r, pids, out);
    cr_log_info("long cut at epoch %d: exit %d %.1f s after the cut", before, rc, secs);
    cr_expect(rc != -1, "mpirun still ran %.0f s after the cut began (the link still "
                        "down):\n%s", limit, out);
    cr_expect(rc != 0 && rc != -1, "a cut longer than timeout ends the job non-zero (%d):\n%s",
              rc, out);
    cr_expect_eq(ranks_alive, 0, "every rank is gone (%d alive):\n%s", ranks_alive, out);
    cr_expect_eq(n_left, 0, "nothing left running on h1 (pids: %s):\n%s", left, out);
    char h1[64];
    s_fmt(h1, sizeof h1, "on psrec%ld-h1", (long)getpid());
    int named = 0;
    for (const char *e = out; (e = strstr(e, "psrec: error: ")) != NULL; e++) {
        int len = (int)strcspn(e, "\n");
        cr_log_info("long cut: %.*s", len, e);
        named |= memmem(e, (size_t)len, h1, strlen(h1)) != NULL;
    }
    cr_expect(named, "an error names the host cut off (%s):\n%s", h1, out);
}

/* kill -9 of the server under `psrec launch` with restarts: the job
 * relaunches from its newest checkpoint (--resume auto) and finishes within
 * 1% of the fault-free metric. */
Test(cluster_hosts, kill_server_with_restarts, .fini = s_fini)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    s_up(0);
    const int epochs = 100;
    char one[2048], dir[1200], pids[1300], extra[1400];
    s_reference(data, epochs, NULL, one, sizeof one);
    s_fmt(dir, sizeof dir, "%s/restarts", s_dir);
    mkdir(dir, 0755);
    s_fmt(pids, sizeof pids, "%s/pids", dir);
    mkdir(pids, 0755);
    s_fmt(extra, sizeof extra,
          "--checkpoint_dir %s/ckpt --checkpoint_every 10 --restarts 3 --restart_backoff 1 "
          "--timeout 15", dir);
    char args[4096], opts[2048], cmd[9000];
    s_job(args, sizeof args, data, dir, epochs, extra);
    cr_assert(strncmp(args, "train ", 6) == 0);
    s_mpi_opts(opts, sizeof opts);
    /* launch runs PSREC_MPIRUN's mpirun with the options before `--` */
    s_fmt(cmd, sizeof cmd,
          "timeout 500 %s exec %s h0 env ASAN_OPTIONS=detect_leaks=0 PSREC_PID_DIR=%s "
          "PSREC_MPIRUN=mpirun %s launch %s -- %s",
          s_script, s_dir, pids, PSREC_BINARY, opts, args + 6);
    s_bg j;
    s_fmt(j.log, sizeof j.log, "%s/out.log", dir);
    double t0 = th_clock();
    j.pid = th_spawn(cmd, j.log, NULL, 0);
    /* a checkpoint or two first (epoch 25: the newest is epoch 20's) */
    while (s_epochs_done(dir) < 25 && th_clock() - t0 < 200 && waitpid(j.pid, NULL, WNOHANG) == 0)
        usleep(20 * 1000);
    int at = s_epochs_done(dir);
    pid_t server = th_rank_pid(pids, 1);
    cr_assert(at >= 25 && at < epochs && server > 0,
              "the job must train when the server is killed (epoch %d of %d, pid %d)", at,
              epochs, (int)server);
    cr_assert_eq(kill(server, SIGKILL), 0, "kill -9 %d: %s", (int)server, strerror(errno));
    int rc = th_reap(j.pid, 500);
    static char out[1 << 20];
    th_read_file(j.log, out, sizeof out);
    cr_log_info("kill -9 of the server at epoch %d under psrec launch: exit %d after %.1f s", at,
                rc, th_clock() - t0);
    cr_assert_eq(rc, 0, "restarted to the end (%d):\n%s", rc, out);
    cr_expect(strstr(out, "psrec launch: attempt 1 of 4 failed") != NULL &&
                  strstr(out, "psrec launch: the job finished after 1 restart") != NULL,
              "one failure, one restart:\n%s", out);
    cr_expect(strstr(out, "resumed from ") != NULL,
              "the restart resumed from a checkpoint:\n%s", out);
    const char *rs = strstr(one, "\"test_rmse\": ");
    cr_assert_not_null(rs, "fault-free metrics: %s", one);
    double ref = strtod(rs + 13, NULL);
    char path[1300];
    s_fmt(path, sizeof path, "%s/metrics.jsonl", dir);
    double got = th_last_metric(path, "test_rmse");
    cr_log_info("kill -9 with restarts: test RMSE %.6f vs %.6f fault-free", got, ref);
    cr_expect(got > 0 && fabs(got / ref - 1) <= 0.01, "test RMSE %.6f vs %.6f fault-free", got,
              ref);
    cr_expect_eq(s_epochs_done(dir), epochs, "the last epoch is %d:\n%s", epochs, out);
}
