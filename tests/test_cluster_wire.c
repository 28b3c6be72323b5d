/* The wire end to end.
 * - wire_dtype = f16: a --local cluster on MovieLens 100K (mf, minibatch
 *   schedule) and on frappe (fm) trains to the same quality with
 *   half-precision gradients and pulled weights as with f32.
 * - Strangers: under mpirun over tcp, raw ZeroMQ clients without the job's
 *   keys (none, or keys of their own) and a plain socket send garbage and
 *   well-formed requests to every port the job's ranks listen on (the
 *   ZeroMQ ports; MPI's own are outside psrec's model, docs/security.md).
 *   They get no reply at all, the job logs them as refused, and its final
 *   metric equals an undisturbed run's. This test plays the stranger with
 *   libzmq itself. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "cluster/run.h"
#include "common/codec.h"
#include "common/features.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/van.h"
#include "bgjob.h"

static cm_job s_job(const char *data, const char *train, const char *test)
{
    cm_job job = cm_job_default();
    snprintf(job.train, sizeof job.train, "%.900s/%s", data, train);
    snprintf(job.test, sizeof job.test, "%.900s/%s", data, test);
    job.local = 1;
    job.servers = 2;
    job.workers = 1; /* one worker: the two runs differ only by the wire */
    job.progress = 0;
    job.log_level = CM_LOG_WARN;
    job.timeout = 30;
    return job;
}

Test(cluster_wire, mf_minibatch_half_wire_matches_f32, .timeout = 300)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): wire test skipped");
    cm_log_set_level(CM_LOG_WARN);
    double rmse[2];
    for (int f16 = 0; f16 < 2; f16++) {
        cm_job job = s_job(data, "ml-100k/u1.base", "ml-100k/u1.test");
        job.schedule = CM_SCHED_MINIBATCH;
        job.epochs = 10;
        job.wire_dtype = f16;
        sch_result res;
        cm_error err = {0};
        cr_assert_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
        rmse[f16] = res.test_rmse;
    }
    cr_expect_lt(rmse[0], 0.96, "f32 RMSE %.4f", rmse[0]);
    cr_expect_lt(fabs(rmse[1] - rmse[0]) / rmse[0], 0.005, "f16 RMSE %.4f vs f32 %.4f",
                 rmse[1], rmse[0]);
    cr_expect_neq(rmse[1], rmse[0], "the half wire changed nothing: was it used?");
}

Test(cluster_wire, fm_half_wire_matches_f32, .timeout = 300)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): wire test skipped");
    cm_log_set_level(CM_LOG_WARN);
    double auc[2];
    for (int f16 = 0; f16 < 2; f16++) {
        cm_job job =
            s_job(data, "frappe/frappe.validation.libfm", "frappe/frappe.test.libfm");
        snprintf(job.model, sizeof job.model, "fm");
        job.epochs = 8;
        job.wire_dtype = f16;
        cm_job_model_defaults(&job);
        sch_result res;
        cm_error err = {0};
        cr_assert_eq(th_local(&job, &res, &err), 0, "%s", err.msg);
        auc[f16] = res.test_auc;
    }
    cr_expect_gt(auc[0], 0.94, "f32 AUC %.4f", auc[0]);
    cr_expect_lt(fabs(auc[1] - auc[0]), 0.002, "f16 AUC %.4f vs f32 %.4f", auc[1], auc[0]);
}

/* ------------------------------------------------------------ strangers -- */

/* 1 when pid is `root` or one of its descendants (up to a few levels). */
static int s_under(pid_t pid, pid_t root)
{
    for (int depth = 0; depth < 6 && pid > 1; depth++) {
        if (pid == root)
            return 1;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        if (!f)
            return 0;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *rp = strrchr(buf, ')');
        int ppid = 0;
        if (!rp || sscanf(rp + 2, "%*c %d", &ppid) != 1)
            return 0;
        pid = ppid;
    }
    return 0;
}

/* The tcp ports that psrec processes under `root` listen on, on 127.0.0.1
 * (where a one-host tcp job's ZeroMQ sockets bind). Returns how many (at
 * most cap) went to ports[]. */
static int s_job_ports(pid_t root, const char *binary, int *ports, int cap)
{
    char want[PATH_MAX];
    if (!realpath(binary, want))
        return 0;
    unsigned long inodes[256];
    int n_in = 0;
    DIR *proc = opendir("/proc");
    if (!proc)
        return 0;
    struct dirent *de;
    while ((de = readdir(proc)) && n_in < 256) {
        pid_t pid = (pid_t)atoi(de->d_name);
        if (pid <= 0 || !s_under(pid, root))
            continue;
        char path[64], exe[PATH_MAX];
        snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
        ssize_t len = readlink(path, exe, sizeof exe - 1);
        if (len <= 0)
            continue;
        exe[len] = '\0';
        if (strcmp(exe, want) != 0)
            continue;
        snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
        DIR *fds = opendir(path);
        if (!fds)
            continue;
        struct dirent *fe;
        while ((fe = readdir(fds)) && n_in < 256) {
            char fp[PATH_MAX], link[64];
            snprintf(fp, sizeof fp, "%s/%s", path, fe->d_name);
            ssize_t l = readlink(fp, link, sizeof link - 1);
            if (l <= 0)
                continue;
            link[l] = '\0';
            unsigned long ino;
            if (sscanf(link, "socket:[%lu]", &ino) == 1)
                inodes[n_in++] = ino;
        }
        closedir(fds);
    }
    closedir(proc);
    FILE *t = fopen("/proc/net/tcp", "r");
    if (!t)
        return 0;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, t) && n < cap) {
        unsigned addr, port, st;
        unsigned long ino;
        if (sscanf(line, " %*d: %x:%x %*x:%*x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &addr, &port,
                   &st, &ino) != 4)
            continue;
        if (st != 0x0A || ntohl(addr) != 0x7f000001u)
            continue;
        for (int i = 0; i < n_in; i++)
            if (inodes[i] == ino) {
                ports[n++] = (int)port;
                break;
            }
    }
    fclose(t);
    return n;
}

/* A raw ZeroMQ DEALER: no keys (curve 0) or a CURVE client with keys of
 * its own and a server key it made up (curve 1). */
static void *s_stranger(void *ctx, int curve, int port)
{
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    cr_assert_not_null(d);
    int zero = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    if (curve) {
        char pub[41], sec[41], spub[41], ssec[41];
        cr_assert_eq(zmq_curve_keypair(pub, sec), 0);
        cr_assert_eq(zmq_curve_keypair(spub, ssec), 0);
        zmq_setsockopt(d, ZMQ_CURVE_SERVERKEY, spub, 40);
        zmq_setsockopt(d, ZMQ_CURVE_PUBLICKEY, pub, 40);
        zmq_setsockopt(d, ZMQ_CURVE_SECRETKEY, sec, 40);
    }
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    cr_assert_eq(zmq_connect(d, ep), 0, "%s", zmq_strerror(zmq_errno()));
    return d;
}

/* Sends what the stranger sent: garbage, then well-formed PULL,
 * PUSH of NaN rows, CHECKPOINT to a path of its choosing, HELLO claiming a
 * rank, ERROR with its own text, STOP. */
static void s_attack(void *d)
{
    static const char junk[] = "\x01\x02garbage\xff\xfe";
    zmq_send(d, junk, sizeof junk, ZMQ_DONTWAIT);
    const uint64_t keys[3] = {1, 2, 3};
    float nan_rows[3 * 32];
    for (size_t i = 0; i < 3 * 32; i++)
        nan_rows[i] = NAN;
    const int ops[] = {CM_OP_PULL, CM_OP_PUSH, CM_OP_CHECKPOINT, CM_OP_HELLO, CM_OP_ERROR,
                       CM_OP_STOP};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        cm_hdr h = cm_hdr_make(ops[i]);
        h.sender = 3;
        h.req_id = i + 1;
        h.n_keys = 3;
        h.dim = 32;
        h.flags = ops[i] == CM_OP_PUSH ? CM_PUSH_SET : 0;
        snprintf(h.path, sizeof h.path, "/tmp");
        snprintf(h.error, sizeof h.error, "stranger: stop the job");
        uint8_t *buf = NULL;
        size_t len = 0;
        cr_assert_eq(cm_codec_hdr_pack(&h, &buf, &len), 0);
        int keyed = ops[i] == CM_OP_PULL || ops[i] == CM_OP_PUSH;
        int rows = ops[i] == CM_OP_PUSH;
        zmq_send(d, buf, len, ZMQ_DONTWAIT | (keyed ? ZMQ_SNDMORE : 0));
        if (keyed)
            zmq_send(d, keys, sizeof keys, ZMQ_DONTWAIT | (rows ? ZMQ_SNDMORE : 0));
        if (rows)
            zmq_send(d, nan_rows, sizeof nan_rows, ZMQ_DONTWAIT);
        free(buf);
    }
}

/* Not ZeroMQ at all: a plain connection writing bytes. */
static void s_raw_garbage(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(0x7f000001u);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        char junk[4096];
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (char)(i * 131 + 7);
        ssize_t w = write(fd, junk, sizeof junk);
        (void)w;
    }
    close(fd);
}

Test(cluster_wire, strangers_get_nothing_and_change_nothing, .timeout = 600)
{
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    if (!cm_van_can_secure())
        cr_skip_test("this libzmq has no CURVE");
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): stranger test skipped");
    char dir[] = "/tmp/psrec-wire-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[4096], metrics[512], log[512];
    static char out[1 << 16];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    snprintf(log, sizeof log, "%s/job.log", dir);
    /* long enough (hundreds of epochs) for the strangers to knock while it
     * trains; the test checks below that they did */
    const char *job_fmt = TH_MPIRUN "-x PSREC_TRANSPORT=tcp -np 5 %s train --train "
                                    "%s/ml-100k/u1.base --test %s/ml-100k/u1.test --servers 2 "
                                    "--epochs %d --patience 0 --metrics %s --progress off";
    const int epochs = TH_SANITIZED ? 250 : 600;
    snprintf(cmd, sizeof cmd, job_fmt, PSREC_BINARY, data, data, epochs, metrics);
    int rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "undisturbed run failed (%d):\n%s", rc, out);
    double undisturbed = th_last_metric(metrics, "test_rmse");
    cr_assert_gt(undisturbed, 0, "%s", out);
    unlink(metrics);

    /* the same job, in the background */
    snprintf(cmd, sizeof cmd, job_fmt, PSREC_BINARY, data, data, epochs, metrics);
    strncat(cmd, " >", sizeof cmd - strlen(cmd) - 1);
    strncat(cmd, log, sizeof cmd - strlen(cmd) - 1);
    strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
    pid_t job = fork();
    cr_assert_geq(job, 0);
    if (job == 0) {
        setpgid(0, 0);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    /* the scheduler and both servers listen: three ports, found within a
     * minute or the job is over */
    int ports[16], n = 0, status = 0;
    for (int i = 0; i < 1200 && n < 3; i++) {
        if (waitpid(job, &status, WNOHANG) == job)
            cr_assert_fail("the job ended before its ports were seen");
        n = s_job_ports(job, PSREC_BINARY, ports, 16);
        if (n < 3)
            usleep(50000);
    }
    cr_assert_geq(n, 3, "listening ports of the job: %d", n);

    void *ctx = zmq_ctx_new();
    void *d[32];
    int nd = 0;
    for (int i = 0; i < n; i++) {
        s_raw_garbage(ports[i]);
        for (int curve = 0; curve < 2; curve++) {
            d[nd] = s_stranger(ctx, curve, ports[i]);
            s_attack(d[nd++]);
        }
    }
    /* no reply at all: nothing comes back while the job trains */
    zmq_pollitem_t items[32];
    for (int i = 0; i < nd; i++)
        items[i] = (zmq_pollitem_t){.socket = d[i], .events = ZMQ_POLLIN};
    int got = zmq_poll(items, nd, 2000);
    cr_assert_eq(got, 0, "a stranger got a reply (%d sockets readable)", got);
    rc = -1;
    for (int i = 0; i < 6000 && rc < 0; i++) {
        if (waitpid(job, &status, WNOHANG) == job)
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        else
            usleep(50000);
    }
    if (rc < 0) {
        kill(-job, SIGKILL);
        waitpid(job, &status, 0);
    }
    for (int i = 0; i < nd; i++) {
        cr_assert_eq(zmq_recv(d[i], out, sizeof out, ZMQ_DONTWAIT), -1,
                     "stranger %d got a reply", i);
        zmq_close(d[i]);
    }
    zmq_ctx_term(ctx);
    th_read_file(log, out, sizeof out);
    cr_assert_eq(rc, 0, "disturbed run failed (%d):\n%s", rc, out);
    cr_assert(strstr(out, "van: refused") != NULL,
              "the job saw the strangers and refused them:\n%s", out);
    cr_assert(strstr(out, "stranger") == NULL, "a stranger's text reached the log:\n%s", out);
    double disturbed = th_last_metric(metrics, "test_rmse");
    cr_assert_eq(disturbed, undisturbed, "test RMSE %.9f with strangers, %.9f without",
                 disturbed, undisturbed);
    unlink(metrics);
    unlink(log);
    rmdir(dir);
}
