/* Push/pull micro-benchmark: psrec's KV client and parameter server over
 * tcp loopback, against raw ZeroMQ request/reply moving the same bytes in
 * the same pattern (a request of n keys, a reply of n rows, one in flight).
 * Prints MB/s of payload for each and psrec's share of the raw figure.
 * Loopback rates swing by 2x from one second to the next on a shared
 * machine, so each case is measured in 5 slices taken in turn with the
 * others (raw, psrec f32, psrec f16, raw, ...) and the medians are shown.
 * "curve" rows: psrec f32 with the van secured by CURVE keys as an mpirun
 * job's is (docs/security.md), to show what encryption costs.
 *
 *   build/pushpull_bench [seconds per case, default 2] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "common/config.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/msg.h"
#include "ps/server.h"
#include "scheduler/plan.h"
#include "scheduler/scheduler.h"
#include "worker/kv.h"

enum { KEYS = 4096, SLOTS = 64, SLICES = 5 };


static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double s_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- raw ZeroMQ: ROUTER echoing `reply` bytes for each request --------- */

typedef struct {
    void *ctx;
    char ep[256];
    size_t reply;
    volatile int ready;
} s_raw;

static void *s_raw_server(void *arg)
{
    s_raw *r = arg;
    void *sock = zmq_socket(r->ctx, ZMQ_ROUTER);
    zmq_bind(sock, "tcp://127.0.0.1:*");
    size_t len = sizeof r->ep;
    zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, r->ep, &len);
    char *buf = calloc(1, r->reply + 1);
    r->ready = 1;
    for (;;) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&id, sock, 0) < 0)
            break;
        zmq_msg_recv(&body, sock, 0);
        int stop = zmq_msg_size(&body) == 0;
        zmq_msg_send(&id, sock, ZMQ_SNDMORE);
        zmq_send(sock, buf, stop ? 0 : r->reply, 0);
        zmq_msg_close(&body);
        if (stop)
            break;
    }
    free(buf);
    zmq_close(sock);
    return NULL;
}

/* Bytes per second moved by raw request/reply of (req, reply) bytes. */
static double s_raw_rate(size_t req, size_t reply, double secs)
{
    s_raw r = {.ctx = zmq_ctx_new(), .reply = reply};
    pthread_t t;
    pthread_create(&t, NULL, s_raw_server, &r);
    while (!r.ready)
        ;
    void *d = zmq_socket(r.ctx, ZMQ_DEALER);
    zmq_connect(d, r.ep);
    char *out = calloc(1, req + 1), *in = malloc(reply + 1);
    double t0 = cm_now(), moved = 0;
    while (cm_now() - t0 < secs) {
        zmq_send(d, out, req, 0);
        zmq_recv(d, in, reply, 0);
        moved += (double)(req + reply);
    }
    double rate = moved / (cm_now() - t0);
    zmq_send(d, out, 0, 0);
    zmq_recv(d, in, reply, 0);
    pthread_join(t, NULL);
    zmq_close(d);
    zmq_ctx_term(r.ctx);
    free(out);
    free(in);
    return rate;
}

/* ---- psrec: wk_kv against a ps_server ----------------------------------- */

static void *s_serve(void *arg)
{
    ps_server_run(arg);
    return NULL;
}

/* psrec's pull and push rates in bytes/s of f32 rows (keys + 4 bytes per
 * value); with f16 the wire carries half the value bytes, and the rate
 * still counts the f32 rows it stands for. */
static int s_psrec_rates(int dim, int f16, int plain, int curve, double secs, double *pull,
                         double *push)
{
    cm_error err = {0};
    cm_van *van = cm_van_new(&err);
    if (van && curve) {
        /* one process, both ends: the server pair, and one client key the
         * handler admits (as rank 0) */
        cm_van_keys k;
        memset(&k, 0, sizeof k);
        if (cm_van_keypair(k.server_public, k.server_secret, &err) != 0 ||
            cm_van_keypair(k.public_key, k.secret_key, &err) != 0) {
            fprintf(stderr, "pushpull_bench: %s\n", err.msg);
            return 1;
        }
        k.admit = k.public_key;
        k.n_admit = 1;
        if (cm_van_secure(van, &k, &err) != 0) {
            fprintf(stderr, "pushpull_bench: %s\n", err.msg);
            return 1;
        }
    }
    cm_table_spec tp = {.dim = dim, .init_std = 0.1f, .seed = 1,
                          .optim = {.kind = CM_OPT_SGD, .lr = 0.01f}};
    ps_server *srv = van ? ps_server_new(van, "tcp://127.0.0.1:*", &tp, 1, &err) : NULL;
    if (!srv) {
        fprintf(stderr, "pushpull_bench: %s\n", err.msg);
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, s_serve, srv);
    const char *eps[1] = {ps_server_endpoint(srv)};
    uint32_t map[SLOTS];
    sch_plan_slots(map, SLOTS, 1, NULL);
    wk_kv_params kp = {.n_servers = 1, .server_eps = eps, .n_slots = SLOTS, .slot_map = map,
                       .n_tables = 1, .dims = &dim, .timeout_ms = 10000, .wire_f16 = f16,
                       .plain_keys = plain};
    wk_kv *kv = wk_kv_new(van, &kp, &err);
    uint64_t *keys = malloc(KEYS * sizeof *keys);
    float *vals = calloc((size_t)KEYS * dim, sizeof *vals);
    for (size_t i = 0; i < KEYS; i++)
        keys[i] = 1000 + 3 * i;
    wk_pull req = {0, keys, KEYS, vals, 0, 0};
    wk_kv_pull(kv, &req, 1, &err); /* create the rows */
    const double bytes = KEYS * (8.0 + 4.0 * dim);
    double t0 = cm_now(), n = 0;
    while (cm_now() - t0 < secs && wk_kv_pull(kv, &req, 1, &err) == 0)
        n++;
    *pull = n * bytes / (cm_now() - t0);
    t0 = cm_now();
    n = 0;
    while (cm_now() - t0 < secs && wk_kv_push(kv, 0, keys, KEYS, vals, &err) == 0 &&
           wk_kv_flush(kv, &err) == 0)
        n++;
    *push = n * bytes / (cm_now() - t0);
    wk_kv_destroy(&kv);
    sch_stop_servers(van, 1, eps, 10000, NULL, NULL, &err);
    pthread_join(t, NULL);
    ps_server_destroy(&srv);
    cm_van_destroy(&van);
    free(keys);
    free(vals);
    return 0;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 2.0;
    if (secs <= 0)
        secs = 2.0;
    cm_log_set_level(CM_LOG_WARN);
    cm_mem_keep_buffers(); /* as psrec itself runs */
    printf("pull/push of %d rows per request over tcp loopback, one request in flight\n",
           KEYS);
    printf("(f16 rows: wire_dtype = f16; MB/s counts the f32 rows moved, so the share\n"
           " can pass 100%%: it is rows per second against raw f32 bytes; medians of %d\n"
           " slices taken in turn)\n", SLICES);
    printf("(a push names the pull of the same keys before it, and the server applies it\n"
           " to the rows it kept; \"keys sent\": every push carries its keys, kept keys off)\n");
    printf("%-6s %-16s %12s %12s %8s\n", "dim", "op", "psrec MB/s", "raw MB/s", "share");
    const int dims[2] = {32, 128};
    const double slice = secs / SLICES;
    for (int d = 0; d < 2; d++) {
        size_t keys = KEYS * 8, rows = (size_t)KEYS * 4 * dims[d];
        /* [0] raw, [1] psrec f32, [2] psrec f16, [3] psrec f32 with every
         * push sending its keys, [4] psrec f32 encrypted; pulls and pushes */
        double pull[5][SLICES], push[5][SLICES];
        const int n_cases = cm_van_can_secure() ? 5 : 4;
        for (int k = 0; k < SLICES; k++) {
            pull[0][k] = s_raw_rate(keys, rows, slice);
            push[0][k] = s_raw_rate(keys + rows, 0, slice);
            for (int c = 1; c < n_cases; c++)
                if (s_psrec_rates(dims[d], c == 2, c == 3, c == 4, slice, &pull[c][k],
                                  &push[c][k]) != 0)
                    return 1;
        }
        double mp[5], mq[5];
        for (int c = 0; c < n_cases; c++) {
            mp[c] = s_median(pull[c], SLICES);
            mq[c] = s_median(push[c], SLICES);
        }
        const char *names[5][2] = {{"", ""}, {"pull", "push"}, {"pull f16", "push f16"},
                                   {"", "push, keys sent"}, {"pull curve", "push curve"}};
        for (int c = 1; c < n_cases; c++) {
            if (c != 3)
                printf("%-6d %-16s %12.0f %12.0f %7.0f%%\n", dims[d], names[c][0],
                       mp[c] / 1e6, mp[0] / 1e6, 100 * mp[c] / mp[0]);
            printf("%-6d %-16s %12.0f %12.0f %7.0f%%\n", dims[d], names[c][1], mq[c] / 1e6,
                   mq[0] / 1e6, 100 * mq[c] / mq[0]);
        }
    }
    return 0;
}
