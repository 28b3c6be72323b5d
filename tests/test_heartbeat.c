/* test_heartbeat: the monitor (rank 0) and watched ranks as heartbeats in
 * one process over inproc: a clean goodbye, a rank that stops beating, a
 * scheduler that stops answering, a rank's own failure forwarded, garbage
 * on the monitor's socket, and bad parameters. Stalls are made with the
 * pause hook (the thread runs on but goes silent, as a stopped process
 * would look from outside). Waits poll for the condition with generous
 * upper bounds; only the test that proves silence after a goodbye waits a
 * fixed time, since an absence cannot be polled for. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/heartbeat.h"
#include "common/log.h"

/* What an on_fail saw. */
typedef struct {
    pthread_mutex_t lock;
    int calls;
    char reason[1024];
    double when;
} s_catch;

static void s_on_fail(void *arg, const char *reason)
{
    s_catch *c = arg;
    pthread_mutex_lock(&c->lock);
    if (c->calls++ == 0) {
        snprintf(c->reason, sizeof c->reason, "%s", reason);
        c->when = cm_now();
    }
    pthread_mutex_unlock(&c->lock);
}

static int s_calls(s_catch *c)
{
    pthread_mutex_lock(&c->lock);
    int n = c->calls;
    pthread_mutex_unlock(&c->lock);
    return n;
}

static void s_nap(void)
{
    struct timespec ts = {0, 5 * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls until c was called, up to `secs`; 1 if it was. */
static int s_wait_fail(s_catch *c, double secs)
{
    double until = cm_now() + secs;
    while (s_calls(c) == 0 && cm_now() < until)
        s_nap();
    return s_calls(c) > 0;
}

/* Polls until hb heard `rank` say exactly `doing`. */
static int s_wait_heard(cm_hb *hb, int rank, const char *doing, double secs)
{
    double until = cm_now() + secs;
    char buf[CM_HB_TEXT_MAX];
    while (cm_now() < until) {
        if (cm_hb_heard(hb, rank, buf, sizeof buf) && strcmp(buf, doing) == 0)
            return 1;
        s_nap();
    }
    return 0;
}

static cm_van *s_van;
static s_catch s_c[4];

static void s_setup(void)
{
    cm_log_set_level(CM_LOG_ERROR);
    cm_error err = {0};
    s_van = cm_van_new(&err);
    cr_assert_not_null(s_van, "%s", err.msg);
    for (int i = 0; i < 4; i++) {
        memset(&s_c[i], 0, sizeof s_c[i]);
        pthread_mutex_init(&s_c[i].lock, NULL);
    }
}

static void s_teardown(void)
{
    cm_van_destroy(&s_van);
}

TestSuite(heartbeat, .init = s_setup, .fini = s_teardown, .timeout = 120);

/* A job of `size` ranks (1 server): the monitor on inproc://name, then the
 * others connected to it. interval and limit in seconds. */
static void s_job(const char *name, int size, double interval, double limit, cm_hb **hb)
{
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://%s", name);
    for (int r = 0; r < size; r++) {
        cm_hb_params p = {.van = s_van, .rank = r, .size = size, .n_servers = 1,
                          .interval = interval, .limit = limit, .on_fail = s_on_fail,
                          .arg = &s_c[r]};
        cm_error err = {0};
        hb[r] = cm_hb_new(&p, r == 0 ? ep : cm_hb_endpoint(hb[0]), &err);
        cr_assert_not_null(hb[r], "rank %d: %s", r, err.msg);
    }
    cr_assert_str_eq(cm_hb_endpoint(hb[0]), ep);
    cr_assert_str_eq(cm_hb_endpoint(hb[1]), "");
}

static void s_destroy(cm_hb **hb, int size)
{
    for (int r = size - 1; r >= 0; r--) {
        cm_hb_destroy(&hb[r]);
        cr_assert_null(hb[r]);
    }
}

Test(heartbeat, clean_goodbye_is_not_a_stall)
{
    cm_hb *hb[3];
    s_job("hb-clean", 3, 0.02, 20, hb);
    cm_hb_doing(hb[2], "training epoch 1");
    cr_assert(s_wait_heard(hb[0], 2, "training epoch 1", 30), "the monitor heard rank 2");
    cm_hb_doing(hb[0], "waiting for the workers");
    cr_assert(s_wait_heard(hb[1], 0, "waiting for the workers", 30),
              "rank 1 heard what the scheduler does");
    for (int r = 1; r < 3; r++)
        cr_assert_eq(cm_hb_finish(hb[r], 30000), 0, "rank %d's goodbye was taken", r);
    cr_assert_eq(cm_hb_finish(hb[0], 30000), 0, "every rank said goodbye");
    for (int r = 0; r < 3; r++) {
        cr_expect_eq(s_calls(&s_c[r]), 0, "rank %d: %s", r, s_c[r].reason);
        cr_expect_eq(cm_hb_failed(hb[r], NULL, 0), 0);
    }
    s_destroy(hb, 3);
}

/* After its goodbye a rank may go away: the monitor stops watching it. */
Test(heartbeat, after_goodbye_silence_is_fine)
{
    cm_hb *hb[2];
    s_job("hb-bye", 2, 0.02, 0.3, hb);
    cr_assert_eq(cm_hb_finish(hb[1], 30000), 0);
    cm_hb_destroy(&hb[1]);
    cr_assert_eq(cm_hb_finish(hb[0], 30000), 0);
    sleep(1); /* over three limits of silence from rank 1 */
    cr_expect_eq(s_calls(&s_c[0]), 0, "%s", s_c[0].reason);
    s_destroy(hb, 2);
}

Test(heartbeat, stalled_worker_named_with_what_it_did)
{
    cm_hb *hb[3];
    s_job("hb-stall-rank", 3, 0.05, 0.5, hb);
    cm_hb_doing(hb[2], "training epoch 7");
    cr_assert(s_wait_heard(hb[0], 2, "training epoch 7", 30));
    double t0 = cm_now();
    cm_hb_pause(hb[2]);
    cr_assert(s_wait_fail(&s_c[0], 60), "the monitor found the stall");
    char host[CM_HB_HOST_MAX], want[256];
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    snprintf(want, sizeof want, "rank 2 (worker) on %s, pid %d, stopped", host, (int)getpid());
    cr_expect(strstr(s_c[0].reason, want) != NULL, "names the rank, host and pid: %s",
              s_c[0].reason);
    cr_expect(strstr(s_c[0].reason, "it was training epoch 7") != NULL, "%s", s_c[0].reason);
    /* not before the limit; the upper bound is only against a hang */
    cr_expect_geq(s_c[0].when - t0, 0.5 - 0.1, "found after %.2f s", s_c[0].when - t0);
    char copy[1024];
    cr_expect_eq(cm_hb_failed(hb[0], copy, sizeof copy), 1);
    cr_expect_str_eq(copy, s_c[0].reason);
    /* one call only, however long the silence lasts */
    cr_expect_eq(cm_hb_finish(hb[0], 100), CM_ECLOSED, "a failure ends the wait for goodbyes");
    cr_expect_eq(s_calls(&s_c[0]), 1);
    s_destroy(hb, 3);
}

Test(heartbeat, stalled_scheduler_named_by_a_rank)
{
    cm_hb *hb[2];
    s_job("hb-stall-sched", 2, 0.05, 0.5, hb);
    cm_hb_doing(hb[0], "writing the checkpoint of epoch 4");
    cr_assert(s_wait_heard(hb[1], 0, "writing the checkpoint of epoch 4", 30));
    cm_hb_pause(hb[0]);
    cr_assert(s_wait_fail(&s_c[1], 60), "rank 1 found the stalled scheduler");
    cr_expect(strstr(s_c[1].reason, "the scheduler (rank 0 on ") != NULL, "%s", s_c[1].reason);
    cr_expect(strstr(s_c[1].reason, "it was writing the checkpoint of epoch 4") != NULL, "%s",
              s_c[1].reason);
    cr_expect_eq(s_calls(&s_c[0]), 0, "the paused monitor judges no one: %s", s_c[0].reason);
    s_destroy(hb, 2);
}

Test(heartbeat, own_failure_forwarded_to_rank_0)
{
    cm_hb *hb[3];
    s_job("hb-report", 3, 0.05, 20, hb);
    cm_hb_doing(hb[2], "training epoch 3");
    cr_assert(s_wait_heard(hb[0], 2, "training epoch 3", 30));
    cr_assert_eq(cm_hb_report(hb[2], "kv: no reply from the servers within 5 s", 30000), 0);
    cr_assert(s_wait_fail(&s_c[0], 30));
    cr_expect(strstr(s_c[0].reason, "rank 2 (worker) on ") != NULL, "%s", s_c[0].reason);
    cr_expect(strstr(s_c[0].reason,
                     "failed while training epoch 3: kv: no reply from the servers within 5 s") !=
                  NULL,
              "%s", s_c[0].reason);
    cr_expect_eq(cm_hb_report(hb[0], "x", 10), CM_ESTATE, "rank 0 has no one to tell");
    s_destroy(hb, 3);
}

/* Nothing from the network crashes the monitor or counts as a beat. */
Test(heartbeat, garbage_is_ignored)
{
    cm_hb *hb[2];
    s_job("hb-garbage", 2, 0.05, 20, hb);
    cm_error err = {0};
    cm_sock *d = cm_sock_new(s_van, CM_SOCK_DEALER, &err);
    cr_assert_not_null(d, "%s", err.msg);
    cr_assert_eq(cm_sock_connect(d, "inproc://hb-garbage"), 0);
    const char *bad[] = {"", "B", "B x 1 h t", "B 1 1", "B 9 1 host text", "B -1 1 h t",
                         "Z 1 1 host text", "F 1 x host why", "B 1 1  text"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cm_iov f = {bad[i], strlen(bad[i])};
        cr_assert_eq(cm_sock_send(d, &f, 1), 0);
    }
    cm_iov two[2] = {{"B 1 1 h a", 9}, {"extra", 5}};
    cr_assert_eq(cm_sock_send(d, two, 2), 0);
    cm_hb_doing(hb[1], "after the garbage");
    cr_assert(s_wait_heard(hb[0], 1, "after the garbage", 30), "still serving beats");
    cr_expect_eq(s_calls(&s_c[0]), 0, "%s", s_c[0].reason);
    cr_assert_eq(cm_hb_finish(hb[1], 30000), 0);
    cr_assert_eq(cm_hb_finish(hb[0], 30000), 0);
    cm_sock_destroy(&d);
    s_destroy(hb, 2);
}

Test(heartbeat, bad_parameters_refused)
{
    cm_error err = {0};
    cm_hb_params p = {.van = s_van, .rank = 0, .size = 2, .interval = 1, .limit = 3};
    cm_hb_params bad[] = {p, p, p, p, p};
    bad[0].interval = 0;
    bad[1].limit = 0.5; /* below the interval */
    bad[2].rank = 2;
    bad[3].van = NULL;
    bad[4].size = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_expect_null(cm_hb_new(&bad[i], "inproc://hb-bad", &err), "case %zu", i);
        cr_expect_eq(err.code, CM_EINVAL, "case %zu", i);
        cr_expect(strstr(err.msg, "heartbeat: bad parameters") != NULL, "%s", err.msg);
    }
    cr_expect_null(cm_hb_new(&p, "nonsense://x", &err));
    cr_expect(strstr(err.msg, "heartbeat: cannot bind nonsense://x") != NULL, "%s", err.msg);
    /* NULL is a no-op everywhere */
    cm_hb *none = NULL;
    cm_hb_destroy(&none);
    cm_hb_destroy(NULL);
    cm_hb_doing(NULL, "x");
    cm_hb_pause(NULL);
    cr_expect_eq(cm_hb_failed(NULL, NULL, 0), 0);
    cr_expect_eq(cm_hb_finish(NULL, 10), 0);
    cr_expect_eq(cm_hb_heard(NULL, 0, NULL, 0), 0);
    cr_expect_str_eq(cm_hb_endpoint(NULL), "");
    cr_expect_str_eq(cm_hb_role(0, 2), "scheduler");
    cr_expect_str_eq(cm_hb_role(2, 2), "server");
    cr_expect_str_eq(cm_hb_role(3, 2), "worker");
}

/* On secured vans a beat counts only on the connection of the rank it
 * names: rank 2 speaking for rank 1 is ignored, its own beat is heard. */
Test(heartbeat, a_beat_counts_only_on_its_own_connection)
{
    if (!cm_van_can_secure())
        cr_skip_test("this ZeroMQ cannot secure a van");
    enum { N = 3 };
    uint8_t spub[CM_KEY_BYTES], ssec[CM_KEY_BYTES], admit[N * CM_KEY_BYTES],
        csec[N][CM_KEY_BYTES];
    cm_error err = {0};
    cr_assert_eq(cm_van_keypair(spub, ssec, &err), 0, "%s", err.msg);
    cm_van *v[N];
    for (int r = 0; r < N; r++)
        cr_assert_eq(cm_van_keypair(admit + r * CM_KEY_BYTES, csec[r], &err), 0, "%s", err.msg);
    for (int r = 0; r < N; r++) {
        cm_van_keys k;
        memset(&k, 0, sizeof k);
        memcpy(k.server_public, spub, CM_KEY_BYTES);
        memcpy(k.server_secret, ssec, CM_KEY_BYTES);
        memcpy(k.public_key, admit + r * CM_KEY_BYTES, CM_KEY_BYTES);
        memcpy(k.secret_key, csec[r], CM_KEY_BYTES);
        k.admit = admit;
        k.n_admit = N;
        v[r] = cm_van_new(&err);
        cr_assert_not_null(v[r], "%s", err.msg);
        cr_assert_eq(cm_van_secure(v[r], &k, &err), 0, "%s", err.msg);
    }
    cm_hb_params p = {.van = v[0], .rank = 0, .size = N, .n_servers = 1, .interval = 0.05,
                      .limit = 60, .on_fail = s_on_fail, .arg = &s_c[0]};
    cm_hb *mon = cm_hb_new(&p, "tcp://127.0.0.1:*", &err);
    cr_assert_not_null(mon, "%s", err.msg);
    cm_sock *d = cm_sock_new(v[2], CM_SOCK_DEALER, &err);
    cr_assert_not_null(d, "%s", err.msg);
    cr_assert_eq(cm_sock_connect(d, cm_hb_endpoint(mon)), 0, "%s", cm_sock_errmsg(d));
    char spoof[64], own[64];
    snprintf(spoof, sizeof spoof, "B 1 %d h spoofed", (int)getpid());
    snprintf(own, sizeof own, "B 2 %d h its-own", (int)getpid());
    cm_iov f1 = {spoof, strlen(spoof)}, f2 = {own, strlen(own)};
    cr_assert_eq(cm_sock_send(d, &f1, 1), 0);
    cr_assert_eq(cm_sock_send(d, &f2, 1), 0);
    /* one connection delivers in order: once rank 2's own beat is in,
     * the spoofed one before it has been handled */
    cr_assert(s_wait_heard(mon, 2, "its-own", 60), "rank 2's own beat is heard");
    char buf[CM_HB_TEXT_MAX] = "";
    cr_expect(!cm_hb_heard(mon, 1, buf, sizeof buf) || strcmp(buf, "spoofed") != 0,
              "a beat for rank 1 on rank 2's connection was taken");
    cm_sock_destroy(&d);
    cm_hb_destroy(&mon);
    for (int r = 0; r < N; r++)
        cm_van_destroy(&v[r]);
}
