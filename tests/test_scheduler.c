/* test_scheduler: who the scheduler listens to before the job starts. A
 * fake worker on one inproc connection (so its messages arrive in order)
 * tries what a stranger would: a HELLO and an ERROR for a rank that is no
 * worker of the job, a second HELLO for its own rank, an ERROR claiming
 * another worker's rank; only its own ERROR counts, and its text comes
 * back quoted and cut. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/van.h"
#include "scheduler/scheduler.h"

typedef struct {
    sch_params p;
    sch_result res;
    cm_error err;
    int rc;
} s_run;

static void *s_main(void *arg)
{
    s_run *r = arg;
    r->rc = sch_run(&r->p, &r->res, &r->err);
    return NULL;
}

static void s_tell(cm_sock *d, int op, int sender, const char *text)
{
    cm_hdr h = cm_hdr_make(op);
    h.sender = sender;
    if (text)
        snprintf(h.error, sizeof h.error, "%s", text);
    cr_assert_eq(cm_msg_send(d, NULL, 0, &h, NULL, 0, NULL, 0), 0, "%s", cm_sock_errmsg(d));
}

Test(scheduler, only_a_workers_own_word_counts_before_start, .timeout = 60)
{
    cm_log_set_level(CM_LOG_ERROR);
    cm_error e = {0};
    cm_van *van = cm_van_new(&e);
    cr_assert_not_null(van, "%s", e.msg);
    cm_sock *ctl = cm_sock_new(van, CM_SOCK_ROUTER, &e);
    cr_assert_not_null(ctl, "%s", e.msg);
    cr_assert_eq(cm_sock_bind(ctl, "inproc://sch-test-hello", NULL), 0);
    cm_job job = cm_job_default();
    job.timeout = 30;
    job.progress = 0;
    FILE *out = tmpfile();
    cr_assert_not_null(out);
    s_run r;
    memset(&r, 0, sizeof r);
    /* no servers; workers are ranks 1 and 2 */
    r.p = (sch_params){.job = &job, .van = van, .ctl = ctl, .n_workers = 2, .n_servers = 0,
                       .out = out};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, s_main, &r), 0);

    cm_sock *d = cm_sock_new(van, CM_SOCK_DEALER, &e);
    cr_assert_not_null(d, "%s", e.msg);
    cr_assert_eq(cm_sock_connect(d, "inproc://sch-test-hello"), 0);
    s_tell(d, CM_OP_HELLO, 99, NULL);              /* no such worker */
    s_tell(d, CM_OP_ERROR, 99, "stranger says stop");
    s_tell(d, CM_OP_HELLO, 1, NULL);               /* taken as rank 1 */
    s_tell(d, CM_OP_HELLO, 1, NULL);               /* rank 1 is present */
    s_tell(d, CM_OP_ERROR, 2, "not my rank");      /* rank 1's route claiming rank 2 */
    char text[CM_HDR_ERROR_MAX];
    memset(text, 'x', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    memcpy(text, "boom\n\x1b[31m\"", 11);
    s_tell(d, CM_OP_ERROR, 1, text);
    cr_assert_eq(pthread_join(th, NULL), 0);

    cr_assert_eq(r.rc, CM_EREMOTE, "rc %d: %s", r.rc, r.err.msg);
    cr_assert(strstr(r.err.msg, "worker rank 1 failed: \"boom\\x0a\\x1b[31m\\\"xxx") != NULL,
              "the worker's own text, quoted: %s", r.err.msg);
    cr_assert(strstr(r.err.msg, "\"...") != NULL, "cut: %s", r.err.msg);
    cr_assert(strstr(r.err.msg, "stranger") == NULL && strstr(r.err.msg, "not my rank") == NULL,
              "%s", r.err.msg);
    /* the STOP that ends the job goes to the one worker it knows, rank 1 */
    cm_msg m;
    cr_assert_eq(cm_msg_recv(d, &m, 20000, &e), 0, "%s", e.msg);
    cr_assert_eq(m.hdr.op, CM_OP_STOP);
    cm_msg_release(&m);
    cm_sock_destroy(&d);
    cm_sock_destroy(&ctl);
    cm_van_destroy(&van);
    fclose(out);
}
