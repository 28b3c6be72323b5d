/* serve_bench: top-K latency and throughput of the serving tier.
 *
 *   serve_bench [--items 100000] [--dim 64] [--users 10000] [--queries 3000] [--k 10]
 *               [--attack PSREC_BINARY [--serve-args "ARGS"]]
 *
 * Builds a random MF model (dim factors plus a bias per row), writes it as
 * a .psm and loads it as psrec serve does, then times top-K queries for
 * random users: in process (sv_recommend: OpenBLAS sgemv + selection), and
 * through the ZeroMQ server over inproc and TCP loopback with one client
 * waiting for each reply. Prints p50/p99 latency in ms and queries/s.
 *
 * --attack runs `PSREC_BINARY serve` on that model (with ARGS, split at
 * spaces) and does to it what the limits are for: four clients at once
 * announce a 512 MiB frame each (peak RSS of the server before and after,
 * from /proc), then one client asks for top-10 excluding 20M ids while
 * another sends small queries one at a time (the slow reply's time and
 * the small ones' worst latency). Any psrec binary works, so the figures
 * can be taken for an older build too. */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/codec.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/van.h"
#include "serve/psm_write.h"
#include "serve/score.h"
#include "serve/service.h"
#include "tests/serve_helpers.h"

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int s_cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void s_report(const char *what, double *lat, size_t n, double wall)
{
    qsort(lat, n, sizeof *lat, s_cmp_d);
    printf("%-26s p50 %7.3f ms   p99 %7.3f ms   max %7.3f ms   %8.0f queries/s\n", what,
           lat[n / 2] * 1e3, lat[(size_t)(n * 0.99)] * 1e3, lat[n - 1] * 1e3, n / wall);
}

typedef struct {
    sv_service *srv;
    atomic_int stop;
} s_thr;

static void *s_serve(void *arg)
{
    s_thr *t = arg;
    sv_service_run(t->srv, &t->stop);
    return NULL;
}

/* Times queries through a server bound at `bind`. */
static int s_bench_server(cm_van *van, const char *model, const char *bind, size_t n_users,
                          size_t queries, uint32_t k, const char *label)
{
    cm_error err = {0};
    sv_service_params p = sv_service_params_default();
    p.model = model;
    p.bind = bind;
    s_thr t = {.srv = sv_service_new(van, &p, &err)};
    if (!t.srv) {
        fprintf(stderr, "serve_bench: %s\n", err.msg);
        return 1;
    }
    cm_sock *c = cm_sock_new(van, CM_SOCK_DEALER, &err);
    if (!c || cm_sock_connect(c, sv_service_endpoint(t.srv)) != 0) {
        fprintf(stderr, "serve_bench: client: %s\n", c ? cm_sock_errmsg(c) : err.msg);
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, s_serve, &t);
    double *lat = malloc(queries * sizeof *lat);
    int rc = 0, fallbacks = 0;
    double t0 = 0;
    for (size_t q = 0; q < queries + 50 && rc == 0; q++) {
        if (q == 50)
            t0 = s_now();
        cm_rec_request rq = {.user = 1 + cm_mix64(q) % n_users, .k = k};
        uint8_t *buf = NULL;
        size_t len = 0;
        double a = s_now();
        cm_codec_rec_request_pack(&rq, &buf, &len);
        cm_iov iov = {buf, len};
        rc = cm_sock_send(c, &iov, 1);
        free(buf);
        cm_frames *f = NULL;
        if (rc == 0)
            rc = cm_sock_recv(c, &f, 10000);
        cm_rec_reply rep;
        if (rc == 0)
            rc = cm_codec_rec_reply_unpack(cm_frames_data(f, 0), cm_frames_size(f, 0), &rep,
                                           &err);
        if (rc == 0) {
            if (rep.status != 0 || rep.n != k)
                rc = 1;
            fallbacks += rep.fallback;
            free(rep.items);
            free(rep.scores);
        }
        cm_frames_destroy(&f);
        if (q >= 50)
            lat[q - 50] = s_now() - a;
    }
    if (rc == 0) {
        char what[128];
        snprintf(what, sizeof what, "server, %s:", label);
        s_report(what, lat, queries, s_now() - t0);
    } else {
        fprintf(stderr, "serve_bench: %s: query failed (%d)\n", label, rc);
    }
    atomic_store(&t.stop, 1);
    pthread_join(th, NULL);
    cm_sock_destroy(&c);
    sv_service_destroy(&t.srv);
    free(lat);
    return rc != 0 || fallbacks != 0;
}


/* ------------------------------------------------------------ attack -- */

typedef struct {
    int port;
    long long sent;
} s_flood;

static void *s_flood_main(void *arg)
{
    s_flood *f = arg;
    f->sent = sh_zmtp_flood(f->port, 512ull << 20);
    return NULL;
}

/* One request on c; its reply's status, or a negative code when none
 * came within timeout_ms. */
static int s_ask(cm_sock *c, uint64_t user, uint32_t k, uint64_t *ex, size_t n_ex,
                 int timeout_ms)
{
    cm_rec_request rq = {.user = user, .k = k, .n_exclude = n_ex, .exclude = ex};
    uint8_t *buf = NULL;
    size_t len = 0;
    if (cm_codec_rec_request_pack(&rq, &buf, &len) != 0)
        return CM_ENOMEM;
    cm_iov iov = {buf, len};
    int rc = cm_sock_send(c, &iov, 1);
    free(buf);
    if (rc != 0 || timeout_ms == 0)
        return rc;
    cm_frames *f = NULL;
    if ((rc = cm_sock_recv(c, &f, timeout_ms)) != 0)
        return rc;
    cm_rec_reply rep;
    cm_error err = {0};
    rc = cm_codec_rec_reply_unpack(cm_frames_data(f, 0), cm_frames_size(f, 0), &rep, &err);
    cm_frames_destroy(&f);
    if (rc != 0)
        return rc;
    free(rep.items);
    free(rep.scores);
    return rep.status;
}

static int s_attack(const char *psrec, const char *model, const char *serve_args,
                    size_t n_items, size_t n_users)
{
    char args[1024];
    snprintf(args, sizeof args, "%s", serve_args ? serve_args : "");
    const char *argv[40] = {psrec, "serve", "--model", model, "--bind", "tcp://127.0.0.1:*",
                            "--log-level", "warn"};
    size_t na = 8;
    for (char *t = strtok(args, " "); t && na < 39; t = strtok(NULL, " "))
        argv[na++] = t;
    argv[na] = NULL;
    int pfd[2];
    if (pipe(pfd) != 0)
        return 1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        execv(psrec, (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    FILE *out = fdopen(pfd[0], "r");
    char line[1024], endpoint[CM_ENDPOINT_MAX] = "";
    while (!endpoint[0] && fgets(line, sizeof line, out)) {
        const char *p = strstr(line, " on tcp://");
        if (p)
            sscanf(p + 4, "%255s", endpoint);
    }
    if (!endpoint[0]) {
        fprintf(stderr, "serve_bench: %s serve did not start\n", psrec);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 1;
    }
    const int port = atoi(strrchr(endpoint, ':') + 1);
    printf("attack on %s serve%s%s (pid %d, %s)\n", psrec, serve_args ? " " : "",
           serve_args ? serve_args : "", (int)pid, endpoint);
    cm_error err = {0};
    cm_van *van = cm_van_new(&err);
    cm_sock *small = cm_sock_new(van, CM_SOCK_DEALER, &err);
    cm_sock *slow = cm_sock_new(van, CM_SOCK_DEALER, &err);
    cm_sock_connect(small, endpoint);
    cm_sock_connect(slow, endpoint);
    int rc = s_ask(small, 1, 10, NULL, 0, 10000);
    const long long idle = sh_peak_rss(pid);

    s_flood fl[4];
    pthread_t th[4];
    double a = s_now();
    for (int i = 0; i < 4; i++) {
        fl[i] = (s_flood){port, 0};
        pthread_create(&th[i], NULL, s_flood_main, &fl[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    const long long peak = sh_peak_rss(pid);
    printf("  4 x 512 MiB frames: %.2f s; bytes each client wrote before its connection closed %lld %lld %lld %lld;\n"
           "  server peak RSS %.1f MB idle -> %.1f MB (+%.1f MB)\n",
           s_now() - a, fl[0].sent, fl[1].sent, fl[2].sent, fl[3].sent, idle / 1e6,
           peak / 1e6, (peak - idle) / 1e6);

    /* 20M excluded ids (each item many times over) beside small queries */
    const size_t n_ex = 20000000;
    uint64_t *ex = malloc(n_ex * sizeof *ex);
    for (size_t i = 0; i < n_ex; i++)
        ex[i] = 1 + i % n_items;
    a = s_now();
    int src = s_ask(slow, 2, 10, ex, n_ex, 0);
    free(ex);
    double worst = 0, slow_done = -1;
    size_t n_small = 0;
    int small_rc = 0;
    while (s_now() - a < 20 && src == 0) {
        double b = s_now();
        small_rc |= s_ask(small, 1 + n_small % n_users, 10, NULL, 0, 30000) != 0;
        double l = s_now() - b;
        worst = l > worst ? l : worst;
        n_small++;
        cm_frames *f = NULL;
        if (slow_done < 0 && cm_sock_recv(slow, &f, 0) == 0) {
            slow_done = s_now() - a;
            cm_rec_reply rep;
            if (cm_codec_rec_reply_unpack(cm_frames_data(f, 0), cm_frames_size(f, 0), &rep,
                                          &err) == 0) {
                printf("  20M-id exclude list: reply status %d after %.3f s\n", rep.status,
                       slow_done);
                free(rep.items);
                free(rep.scores);
            }
            cm_frames_destroy(&f);
        }
        if (slow_done >= 0 && s_now() - a > slow_done + 0.2)
            break;
    }
    if (slow_done < 0)
        printf("  20M-id exclude list: no reply within 20 s (dropped with its connection)\n");
    printf("  small queries meanwhile: %zu, worst latency %.3f s%s\n", n_small, worst,
           small_rc ? " (some failed)" : "");
    cm_sock_destroy(&small);
    cm_sock_destroy(&slow);
    cm_van_destroy(&van);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    fclose(out);
    return rc != 0 || small_rc;
}

int main(int argc, char **argv)
{
    const char *attack = NULL, *serve_args = NULL;
    size_t n_items = 100000, n_users = 10000, queries = 3000;
    int dim = 64;
    uint32_t k = 10;
    for (int i = 1; i + 1 < argc; i += 2) {
        unsigned long long v = strtoull(argv[i + 1], NULL, 10);
        if (strcmp(argv[i], "--items") == 0)
            n_items = v;
        else if (strcmp(argv[i], "--dim") == 0)
            dim = (int)v;
        else if (strcmp(argv[i], "--users") == 0)
            n_users = v;
        else if (strcmp(argv[i], "--queries") == 0)
            queries = v;
        else if (strcmp(argv[i], "--k") == 0)
            k = (uint32_t)v;
        else if (strcmp(argv[i], "--attack") == 0)
            attack = argv[i + 1];
        else if (strcmp(argv[i], "--serve-args") == 0)
            serve_args = argv[i + 1];
        else {
            fprintf(stderr, "usage: serve_bench [--items N] [--dim D] [--users U] "
                            "[--queries Q] [--k K] [--attack PSREC [--serve-args ARGS]]\n");
            return 2;
        }
    }
    if (!n_items || !n_users || !queries || dim < 1 || k < 1 || k > 1000) {
        fprintf(stderr, "serve_bench: bad arguments\n");
        return 2;
    }
    cm_log_set_level(CM_LOG_WARN);
    const int row = dim + 1;
    uint64_t *uid = malloc(n_users * sizeof *uid), *iid = malloc(n_items * sizeof *iid);
    float *ur = malloc(n_users * (size_t)row * sizeof *ur);
    float *ir = malloc(n_items * (size_t)row * sizeof *ir);
    uint64_t x = 12345;
    for (size_t i = 0; i < n_users * (size_t)row; i++)
        ur[i] = (float)((x = cm_mix64(x)) >> 40) / (float)(1 << 24) * 0.2f - 0.1f;
    for (size_t i = 0; i < n_items * (size_t)row; i++)
        ir[i] = (float)((x = cm_mix64(x)) >> 40) / (float)(1 << 24) * 0.2f - 0.1f;
    for (size_t i = 0; i < n_users; i++)
        uid[i] = i + 1;
    for (size_t i = 0; i < n_items; i++)
        iid[i] = i + 1;

    char dir[] = "/tmp/psrec-serve-bench-XXXXXX", path[256];
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/model.psm", dir);
    sv_psm_table t[2] = {{"user", row, n_users, uid, ur}, {"item", row, n_items, iid, ir}};
    sv_psm_model pm = {"mf", "", 3.5, 1.f, 5.f, 2, t};
    cm_error err = {0};
    double a = s_now();
    if (sv_psm_write(path, &pm, &err) != 0) {
        fprintf(stderr, "serve_bench: %s\n", err.msg);
        return 1;
    }
    double w = s_now() - a;
    a = s_now();
    sv_model *m = sv_model_open(path, &err);
    if (!m) {
        fprintf(stderr, "serve_bench: %s\n", err.msg);
        return 1;
    }
    printf("serve_bench: %zu items x dim %d (+ bias), %zu users, top-%u, %zu queries; "
           "%ld CPUs\n",
           n_items, dim, n_users, k, queries, sysconf(_SC_NPROCESSORS_ONLN));
    printf("model.psm: %.1f MB, written in %.1f ms, loaded and validated in %.1f ms\n",
           (double)(n_items + n_users) * (8 + 4 * row) / 1e6, w * 1e3, (s_now() - a) * 1e3);
    if (attack) {
        sv_model_destroy(&m);
        int arc = s_attack(attack, path, serve_args, n_items, n_users);
        unlink(path);
        rmdir(dir);
        return arc;
    }

    sv_scorer *sc = sv_scorer_new(&err);
    sv_hit *hits = malloc(k * sizeof *hits);
    double *lat = malloc(queries * sizeof *lat);
    size_t n = 0;
    for (size_t q = 0; q < 200; q++) /* warm up: page faults, OpenBLAS threads */
        sv_recommend(sc, m, 1 + q % n_users, k, NULL, 0, hits, &n, NULL, NULL);
    double t0 = s_now();
    for (size_t q = 0; q < queries; q++) {
        a = s_now();
        sv_recommend(sc, m, 1 + cm_mix64(q) % n_users, k, NULL, 0, hits, &n, NULL, NULL);
        lat[q] = s_now() - a;
    }
    s_report("in process (sgemv+top-K):", lat, queries, s_now() - t0);
    sv_scorer_destroy(&sc);
    sv_model_destroy(&m);
    free(hits);
    free(lat);

    int rc = 0;
    cm_van *van = cm_van_new(&err);
    if (!van) {
        fprintf(stderr, "serve_bench: %s\n", err.msg);
        return 1;
    }
    rc |= s_bench_server(van, path, "inproc://serve-bench", n_users, queries, k, "inproc");
    rc |= s_bench_server(van, path, "tcp://127.0.0.1:*", n_users, queries, k, "tcp loopback");
    cm_van_destroy(&van);
    unlink(path);
    rmdir(dir);
    free(uid);
    free(iid);
    free(ur);
    free(ir);
    return rc;
}
