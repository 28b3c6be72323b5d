/* Tests for common/bootstrap.c.
 *
 * Local: a group of 4 threads exchanges strings twice, meets at barriers,
 * gets distinct inproc endpoints and really talks over the shared van.
 * MPI: the test binary runs itself under `mpirun -np 3`; with
 * PSREC_TEST_BOOT_MPI set, a constructor takes over before Criterion's
 * main, runs the MPI bootstrap (allgather, advertise, barrier, a real
 * ZeroMQ exchange between ranks), prints what it saw and exits. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/bootstrap.h"
#include "common/config.h"

#define NT 4
#define EP CM_ENDPOINT_MAX

/* -------------------------------------------------------------------------
 * Local group
 * ------------------------------------------------------------------------- */

typedef struct {
    cm_boot_group *g;
    int rank;
    atomic_int *arrived;
    int failures;
    char why[1024];
    char bind[EP];     /* this rank's "data" endpoint */
    char all1[NT * EP]; /* first allgather */
    char all2[NT * EP]; /* second allgather */
    char binds[NT * EP];
} s_member;

#define S_CHECK(m, cond, ...)                                                        \
    do {                                                                             \
        if (!(cond) && !(m)->failures++)                                            \
            snprintf((m)->why, sizeof (m)->why, __VA_ARGS__);                         \
    } while (0)

static void *s_member_main(void *arg)
{
    s_member *m = arg;
    cm_error err = {0};
    cm_boot *b = cm_boot_local_new(m->g, m->rank, &err);
    S_CHECK(m, b != NULL, "rank %d: local_new: %s", m->rank, err.msg);
    if (!b)
        return NULL;
    S_CHECK(m, cm_boot_rank(b) == m->rank, "rank %d: rank() %d", m->rank, cm_boot_rank(b));
    S_CHECK(m, cm_boot_size(b) == NT, "size() %d", cm_boot_size(b));
    S_CHECK(m, !cm_boot_is_mpi(b), "is_mpi");
    S_CHECK(m, cm_boot_van(b) != NULL, "no van");

    cm_boot_bind_endpoint(b, "data", m->bind);
    char adv[EP];
    S_CHECK(m, cm_boot_advertise(b, m->bind, adv, &err) == 0, "advertise: %s", err.msg);
    S_CHECK(m, strcmp(adv, m->bind) == 0, "advertise changed %s to %s", m->bind, adv);

    char mine[EP];
    snprintf(mine, sizeof mine, "first-%d", m->rank);
    S_CHECK(m, cm_boot_allgather(b, mine, m->all1, &err) == 0, "allgather 1: %s", err.msg);
    snprintf(mine, sizeof mine, "second-%d-%s", m->rank, m->rank % 2 ? "odd" : "even");
    S_CHECK(m, cm_boot_allgather(b, mine, m->all2, &err) == 0, "allgather 2: %s", err.msg);
    S_CHECK(m, cm_boot_allgather(b, m->bind, m->binds, &err) == 0, "allgather 3: %s", err.msg);

    /* nobody passes the barrier before everyone arrived */
    atomic_fetch_add(m->arrived, 1);
    S_CHECK(m, cm_boot_barrier(b, &err) == 0, "barrier: %s", err.msg);
    S_CHECK(m, atomic_load(m->arrived) == NT, "passed the barrier with %d arrived",
            atomic_load(m->arrived));
    S_CHECK(m, cm_boot_barrier(b, &err) == 0, "barrier 2: %s", err.msg);

    S_CHECK(m, cm_boot_abort(b, 3) == CM_ESTATE, "local abort must return CM_ESTATE");
    cm_boot_destroy(&b);
    S_CHECK(m, b == NULL, "destroy did not NULL the pointer");
    return NULL;
}

Test(bootstrap, local_group_of_four)
{
    cm_error err = {0};
    cm_boot_group *g = cm_boot_group_new(NT, &err);
    cr_assert_not_null(g, "%s", err.msg);
    atomic_int arrived = 0;
    static s_member m[NT];
    pthread_t th[NT];
    for (int r = 0; r < NT; r++) {
        memset(&m[r], 0, sizeof m[r]);
        m[r].g = g;
        m[r].rank = r;
        m[r].arrived = &arrived;
        cr_assert_eq(pthread_create(&th[r], NULL, s_member_main, &m[r]), 0);
    }
    for (int r = 0; r < NT; r++)
        pthread_join(th[r], NULL);
    for (int r = 0; r < NT; r++)
        cr_assert_eq(m[r].failures, 0, "rank %d: %s", r, m[r].why);

    for (int r = 0; r < NT; r++) {
        for (int q = 0; q < NT; q++) {
            char want[EP];
            snprintf(want, sizeof want, "first-%d", q);
            cr_assert_str_eq(m[r].all1 + q * EP, want);
            snprintf(want, sizeof want, "second-%d-%s", q, q % 2 ? "odd" : "even");
            cr_assert_str_eq(m[r].all2 + q * EP, want);
            cr_assert_str_eq(m[r].binds + q * EP, m[q].bind);
        }
        cr_assert(strncmp(m[r].bind, "inproc://psrec-", 15) == 0, "%s", m[r].bind);
        char tail[32];
        snprintf(tail, sizeof tail, "-%d-data", r);
        cr_assert(strstr(m[r].bind, tail) != NULL, "%s", m[r].bind);
        for (int q = 0; q < r; q++)
            cr_assert_str_neq(m[r].bind, m[q].bind);
    }
    cm_boot_group_destroy(&g);
    cr_assert_null(g);
    cm_boot_group_destroy(&g); /* no-op on NULL */
}

/* A local group is one host; out-of-range ranks are on none. */
Test(bootstrap, local_same_host_and_hostname)
{
    cm_error err = {0};
    cm_boot_group *g = cm_boot_group_new(3, &err);
    cr_assert_not_null(g, "%s", err.msg);
    cm_boot *b = cm_boot_local_new(g, 1, &err);
    cr_assert_not_null(b, "%s", err.msg);
    for (int r = 0; r < 3; r++)
        cr_expect_eq(cm_boot_same_host(b, r), 1, "rank %d", r);
    cr_expect_eq(cm_boot_same_host(b, 3), 0);
    cr_expect_eq(cm_boot_same_host(b, -1), 0);
    cr_expect_eq(cm_boot_same_host(NULL, 0), 0);
    char want[256] = "", got[256] = "";
    cr_assert_eq(gethostname(want, sizeof want - 1), 0);
    cm_boot_hostname(b, 2, got, sizeof got);
    cr_expect_str_eq(got, want);
    char small[4] = "xyz";
    cm_boot_hostname(b, 2, small, sizeof small); /* cut, never unterminated */
    cr_expect_lt(strlen(small), sizeof small);
    cm_boot_destroy(&b);
    cm_boot_group_destroy(&g);
}

Test(bootstrap, local_host_place)
{
    cm_error err = {0};
    cm_boot_group *g = cm_boot_group_new(4, &err);
    cr_assert_not_null(g, "%s", err.msg);
    for (int r = 0; r < 4; r++) {
        cm_boot *b = cm_boot_local_new(g, r, &err);
        cr_assert_not_null(b, "%s", err.msg);
        int index, peers;
        cm_boot_host_place(b, 1, 3, &index, &peers); /* ranks 1..3: one host */
        cr_expect_eq(peers, 3, "rank %d", r);
        cr_expect_eq(index, r - 1, "rank %d", r);
        cm_boot_host_place(b, 2, 10, &index, &peers); /* clipped to the group */
        cr_expect_eq(peers, 2, "rank %d", r);
        cr_expect_eq(index, r >= 2 ? r - 2 : -1, "rank %d", r);
        cm_boot_destroy(&b);
    }
    cm_boot_group_destroy(&g);
}

Test(bootstrap, local_errors)
{
    cm_error err = {0};
    cr_assert_null(cm_boot_group_new(0, &err));
    cr_assert_eq(err.code, CM_EINVAL);
    cr_assert_null(cm_boot_group_new(-3, NULL));

    cm_boot_group *g = cm_boot_group_new(2, &err);
    cr_assert_not_null(g, "%s", err.msg);
    cr_assert_null(cm_boot_local_new(g, 2, &err));
    cr_assert_eq(err.code, CM_EINVAL);
    cr_assert_null(cm_boot_local_new(g, -1, &err));
    cr_assert_null(cm_boot_local_new(NULL, 0, &err));
    cr_assert_eq(err.code, CM_EINVAL);

    cm_boot *b = cm_boot_local_new(g, 1, &err);
    cr_assert_not_null(b, "%s", err.msg);
    cr_assert_null(cm_boot_local_new(g, 1, &err));
    cr_assert_eq(err.code, CM_ESTATE);
    cr_assert(strstr(err.msg, "rank 1") != NULL, "%s", err.msg);
    /* a rank's slot is free again after its boot is destroyed */
    cm_boot_destroy(&b);
    b = cm_boot_local_new(g, 1, &err);
    cr_assert_not_null(b, "%s", err.msg);

    char out[EP];
    char long_ep[EP + 10];
    memset(long_ep, 'x', sizeof long_ep - 1);
    long_ep[sizeof long_ep - 1] = '\0';
    cr_assert_eq(cm_boot_advertise(b, long_ep, out, &err), CM_EINVAL);
    cr_assert_eq(cm_boot_advertise(b, NULL, out, &err), CM_EINVAL);
    cm_boot_destroy(&b);
    cm_boot_destroy(&b); /* no-op on NULL */
    cm_boot_destroy(NULL);
    cm_boot_group_destroy(&g);
}

Test(bootstrap, local_groups_have_distinct_names)
{
    cm_boot_group *g1 = cm_boot_group_new(1, NULL), *g2 = cm_boot_group_new(1, NULL);
    cr_assert(g1 && g2);
    cm_boot *a = cm_boot_local_new(g1, 0, NULL), *b = cm_boot_local_new(g2, 0, NULL);
    cr_assert(a && b);
    char e1[EP], e2[EP], e3[EP];
    cm_boot_bind_endpoint(a, "ctl", e1);
    cm_boot_bind_endpoint(b, "ctl", e2);
    cm_boot_bind_endpoint(a, "data", e3);
    cr_assert_str_neq(e1, e2);
    cr_assert_str_neq(e1, e3);
    /* a group of one: collectives return at once */
    char all[EP];
    cr_assert_eq(cm_boot_allgather(a, "solo", all, NULL), 0);
    cr_assert_str_eq(all, "solo");
    cr_assert_eq(cm_boot_barrier(a, NULL), 0);
    cm_boot_destroy(&a);
    cm_boot_destroy(&b);
    cm_boot_group_destroy(&g1);
    cm_boot_group_destroy(&g2);
}

typedef struct {
    cm_boot_group *g;
    int rank;
    int rc;
    char all[2 * EP];
} s_long_member;

static void *s_long_main(void *arg)
{
    s_long_member *m = arg;
    cm_boot *b = cm_boot_local_new(m->g, m->rank, NULL);
    if (!b) {
        m->rc = 99;
        return NULL;
    }
    char long_text[EP + 1];
    memset(long_text, 'L', EP);
    long_text[EP] = '\0';
    m->rc = cm_boot_allgather(b, m->rank == 1 ? long_text : "short", m->all, NULL);
    cm_boot_destroy(&b);
    return NULL;
}

Test(bootstrap, local_allgather_too_long_does_not_hang_peers)
{
    cm_boot_group *g = cm_boot_group_new(2, NULL);
    cr_assert_not_null(g);
    s_long_member m[2] = {{.g = g, .rank = 0}, {.g = g, .rank = 1}};
    pthread_t th[2];
    for (int r = 0; r < 2; r++)
        pthread_create(&th[r], NULL, s_long_main, &m[r]);
    for (int r = 0; r < 2; r++)
        pthread_join(th[r], NULL);
    cr_assert_eq(m[0].rc, 0);
    cr_assert_eq(m[1].rc, CM_EINVAL);
    cr_assert_str_eq(m[0].all, "short");
    cr_assert_str_eq(m[0].all + EP, "");
    cm_boot_group_destroy(&g);
}

/* Rank 0 binds a ROUTER on its endpoint, the others connect DEALERs to the
 * gathered address and say hello: the group's van really is shared. */
typedef struct {
    cm_boot_group *g;
    int rank;
    int got; /* rank 0: hellos received */
    char why[1024];
} s_talk_member;

static void *s_talk_main(void *arg)
{
    s_talk_member *m = arg;
    cm_error err = {0};
    cm_boot *b = cm_boot_local_new(m->g, m->rank, &err);
    if (!b) {
        snprintf(m->why, sizeof m->why, "local_new: %s", err.msg);
        return NULL;
    }
    cm_sock *s = cm_sock_new(cm_boot_van(b), m->rank == 0 ? CM_SOCK_ROUTER : CM_SOCK_DEALER,
                             &err);
    char mine[EP] = "", all[NT * EP];
    if (s && m->rank == 0) {
        char bind[EP], bound[EP];
        cm_boot_bind_endpoint(b, "ctl", bind);
        if (cm_sock_bind(s, bind, bound) != 0)
            snprintf(m->why, sizeof m->why, "bind %s: %s", bind, cm_sock_errmsg(s));
        else
            cm_boot_advertise(b, bound, mine, &err);
    }
    cm_boot_allgather(b, mine, all, &err);
    if (s && m->rank != 0) {
        if (cm_sock_connect(s, all) != 0) {
            snprintf(m->why, sizeof m->why, "connect %.200s: %s", all, cm_sock_errmsg(s));
        } else {
            char hello[16];
            snprintf(hello, sizeof hello, "hello %d", m->rank);
            cm_iov iov = {hello, strlen(hello)};
            if (cm_sock_send(s, &iov, 1) != 0)
                snprintf(m->why, sizeof m->why, "send: %s", cm_sock_errmsg(s));
        }
    }
    if (s && m->rank == 0) {
        for (int i = 1; i < NT; i++) {
            cm_frames *f = NULL;
            if (cm_sock_recv(s, &f, 5000) != 0) {
                snprintf(m->why, sizeof m->why, "recv: %s", cm_sock_errmsg(s));
                break;
            }
            /* ROUTER: identity frame, then the payload */
            size_t n = cm_frames_count(f);
            if (n >= 1 && cm_frames_size(f, n - 1) >= 6 &&
                memcmp(cm_frames_data(f, n - 1), "hello ", 6) == 0)
                m->got++;
            cm_frames_destroy(&f);
        }
    }
    cm_boot_barrier(b, &err);
    cm_sock_destroy(&s);
    cm_boot_destroy(&b);
    return NULL;
}

Test(bootstrap, local_van_is_shared)
{
    cm_boot_group *g = cm_boot_group_new(NT, NULL);
    cr_assert_not_null(g);
    s_talk_member m[NT];
    pthread_t th[NT];
    for (int r = 0; r < NT; r++) {
        memset(&m[r], 0, sizeof m[r]);
        m[r].g = g;
        m[r].rank = r;
        pthread_create(&th[r], NULL, s_talk_main, &m[r]);
    }
    for (int r = 0; r < NT; r++)
        pthread_join(th[r], NULL);
    for (int r = 0; r < NT; r++)
        cr_assert_str_eq(m[r].why, "", "rank %d: %s", r, m[r].why);
    cr_assert_eq(m[0].got, NT - 1);
    cm_boot_group_destroy(&g);
}

/* -------------------------------------------------------------------------
 * MPI, through mpirun
 * ------------------------------------------------------------------------- */

/* Runs in every rank under mpirun (PSREC_TEST_BOOT_MPI=basic|host). Rank 0
 * prints the gathered view; every rank prints its own lines. Exits. */
static void s_mpi_helper(const char *mode)
{
    cm_error err = {0};
    /* what psrec train does: the job's host and transport, which the
     * environment variables override */
    cm_job job = cm_job_default();
    if (cm_job_apply_env(&job, &err) != 0) {
        printf("FAIL new: %s\n", err.msg);
        fflush(stdout);
        _exit(1);
    }
    cm_boot_net net = {.host = job.host, .tcp = job.transport == 1};
    cm_boot *b = cm_boot_mpi_new(NULL, NULL, &net, &err);
    if (!b) {
        printf("FAIL new: %s\n", err.msg);
        fflush(stdout);
        _exit(1);
    }
    int rank = cm_boot_rank(b), size = cm_boot_size(b), bad = 0;
    char *all = calloc((size_t)size, EP);
    const int wire = strcmp(mode, "wire") == 0;
    if (wire) {
        /* the job's keys and address, as cluster/run.c sets them up */
        const char *enc = getenv("PSREC_TEST_ENCRYPT");
        cm_boot_wire w = {.encrypt = enc && strcmp(enc, "on") == 0    ? CM_ENCRYPT_ON
                                     : enc && strcmp(enc, "off") == 0 ? CM_ENCRYPT_OFF
                                                                      : CM_ENCRYPT_AUTO,
                          .interface = getenv("PSREC_TEST_INTERFACE")};
        if (cm_boot_secure(b, &w, &err) != 0) {
            printf("secure error[%d]: %s\n", rank, err.msg);
            fflush(stdout);
            _exit(1);
        }
        printf("secure[%d]=%d\n", rank, cm_van_is_secure(cm_boot_van(b)));
    }

    char bind[EP], bound[EP], adv[EP];
    cm_boot_bind_endpoint(b, "data", bind);
    if (!cm_boot_is_mpi(b))
        printf("FAIL rank %d is not MPI\n", rank), bad = 1;
    printf("bind[%d]=%s\n", rank, strncmp(bind, "ipc://", 6) == 0 ? "ipc" : bind);
    snprintf(bound, sizeof bound, "tcp://0.0.0.0:%d", 7000 + rank);
    if (cm_boot_advertise(b, bound, adv, &err) != 0)
        printf("FAIL rank %d advertise: %s\n", rank, err.msg), bad = 1;
    /* a concrete address is left alone; an unresolved port is refused */
    char out[EP];
    if (cm_boot_advertise(b, "tcp://10.0.0.1:99", out, &err) != 0 ||
        strcmp(out, "tcp://10.0.0.1:99") != 0)
        printf("FAIL rank %d advertise kept address: %s\n", rank, out), bad = 1;
    if (cm_boot_advertise(b, "tcp://0.0.0.0:*", out, &err) != CM_EINVAL)
        printf("FAIL rank %d advertise of an unbound port\n", rank), bad = 1;

    if (cm_boot_allgather(b, adv, all, &err) != 0)
        printf("FAIL rank %d allgather 1: %s\n", rank, err.msg), bad = 1;
    {
        /* every rank on this host: ranks 1 and 2 are places 0 and 1 of 2 */
        int index, peers;
        cm_boot_host_place(b, 1, 2, &index, &peers);
        printf("place[%d]=%d/%d\n", rank, index, peers);
    }
    if (rank == 0) {
        printf("size=%d\n", size);
        for (int r = 0; r < size; r++)
            printf("ep[%d]=%s\n", r, all + (size_t)r * EP);
    }
    char mine[EP];
    snprintf(mine, sizeof mine, "second-%d", rank);
    if (cm_boot_allgather(b, mine, all, &err) != 0)
        printf("FAIL rank %d allgather 2: %s\n", rank, err.msg), bad = 1;
    for (int r = 0; r < size; r++) {
        snprintf(mine, sizeof mine, "second-%d", r);
        if (strcmp(all + (size_t)r * EP, mine) != 0)
            printf("FAIL rank %d allgather 2 slot %d: %s\n", rank, r, all + (size_t)r * EP),
                bad = 1;
    }
    /* a too-long string fails on its rank only, and the others get "" */
    char long_text[EP + 1];
    memset(long_text, 'L', EP);
    long_text[EP] = '\0';
    int rc = cm_boot_allgather(b, rank == 1 ? long_text : "ok", all, &err);
    if (rc != (rank == 1 ? CM_EINVAL : 0) || all[EP] != '\0')
        printf("FAIL rank %d allgather of a long string: rc %d\n", rank, rc), bad = 1;

    if (strcmp(mode, "basic") == 0 || wire) {
        /* real traffic: everyone says hello to rank 0 at its advertised address */
        cm_sock *s = cm_sock_new(cm_boot_van(b), rank == 0 ? CM_SOCK_ROUTER : CM_SOCK_DEALER,
                                 &err);
        char ep[EP] = "";
        if (rank == 0 && (cm_sock_bind(s, bind, bound) != 0 ||
                          cm_boot_advertise(b, bound, ep, &err) != 0))
            printf("FAIL bind/advertise: %s %s\n", cm_sock_errmsg(s), err.msg), bad = 1;
        cm_boot_allgather(b, ep, all, &err);
        if (rank != 0) {
            char hello[16];
            snprintf(hello, sizeof hello, "%d", rank);
            cm_iov iov = {hello, strlen(hello)};
            if (cm_sock_connect(s, all) != 0 || cm_sock_send(s, &iov, 1) != 0)
                printf("FAIL rank %d connect/send to %s: %s\n", rank, all, cm_sock_errmsg(s)),
                    bad = 1;
        } else {
            int got = 0;
            for (int i = 1; i < size; i++) {
                cm_frames *f = NULL;
                if (cm_sock_recv(s, &f, 10000) != 0)
                    break;
                got++;
                /* secured: the connection says which rank said hello */
                char said[16] = "";
                size_t sl = cm_frames_size(f, 1) < 15 ? cm_frames_size(f, 1) : 15;
                memcpy(said, cm_frames_data(f, 1), sl);
                if (wire && cm_van_is_secure(cm_boot_van(b)) && cm_frames_peer(f) != atoi(said))
                    printf("FAIL hello from rank %s on the connection of %d\n", said,
                           cm_frames_peer(f)), bad = 1;
                else if (wire && cm_van_is_secure(cm_boot_van(b)))
                    printf("peer %s ok\n", said);
                cm_frames_destroy(&f);
            }
            printf("hellos=%d\n", got);
        }
        if (cm_boot_barrier(b, &err) != 0)
            printf("FAIL rank %d barrier: %s\n", rank, err.msg), bad = 1;
        cm_sock_destroy(&s);
    }

    if (cm_boot_barrier(b, &err) != 0)
        printf("FAIL rank %d barrier: %s\n", rank, err.msg), bad = 1;
    printf("rank %d of %d done%s\n", rank, size, bad ? " with failures" : "");
    fflush(stdout);
    free(all);
    cm_boot_destroy(&b);
    _exit(bad);
}

__attribute__((constructor)) static void s_maybe_mpi_helper(void)
{
    const char *mode = getenv("PSREC_TEST_BOOT_MPI");
    if (mode && *mode)
        s_mpi_helper(mode);
}

static int s_find_mpirun(char *out, size_t n)
{
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/bin:/bin";
    while (*path) {
        size_t len = strcspn(path, ":");
        snprintf(out, n, "%.*s/mpirun", (int)len, path);
        if (len && access(out, X_OK) == 0)
            return 0;
        path += len + (path[len] == ':');
    }
    return -1;
}

/* Runs this binary as 3 MPI ranks; returns their combined output. */
static char *s_run_mpi(const char *mode, const char *extra_env, int *status)
{
    char mpirun[4096], self[4096], cmd[9000];
    if (s_find_mpirun(mpirun, sizeof mpirun) != 0)
        cr_skip_test("mpirun not found");
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert_gt(n, 0);
    self[n] = '\0';
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    unsetenv("PSREC_HOST"); /* the ranks see only what extra_env sets */
    unsetenv("PSREC_TRANSPORT");
    snprintf(cmd, sizeof cmd,
             "timeout 120 %s --allow-run-as-root --oversubscribe -np 3 "
             "-x PSREC_TEST_BOOT_MPI=%s %s %s 2>&1",
             mpirun, mode, extra_env, self);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t cap = 1 << 16, used = 0;
    char *text = malloc(cap);
    size_t got;
    while ((got = fread(text + used, 1, cap - used - 1, p)) > 0) {
        used += got;
        if (used + 1 == cap)
            text = realloc(text, cap *= 2);
    }
    text[used] = '\0';
    *status = pclose(p);
    return text;
}

Test(bootstrap, mpi_three_ranks)
{
    int status;
    char *out = s_run_mpi("basic", "", &status);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "mpirun failed:\n%s", out);
    cr_assert(strstr(out, "FAIL") == NULL, "%s", out);
    cr_assert(strstr(out, "size=3\n") != NULL, "%s", out);
    /* every rank on this host: advertised at 127.0.0.1 */
    cr_assert(strstr(out, "ep[0]=tcp://127.0.0.1:7000\n") != NULL, "%s", out);
    cr_assert(strstr(out, "ep[1]=tcp://127.0.0.1:7001\n") != NULL, "%s", out);
    cr_assert(strstr(out, "ep[2]=tcp://127.0.0.1:7002\n") != NULL, "%s", out);
    cr_assert(strstr(out, "hellos=2\n") != NULL, "%s", out);
    /* ... and bound on unix sockets, which carried the hellos */
    for (int r = 0; r < 3; r++) {
        char want[64];
        snprintf(want, sizeof want, "bind[%d]=ipc\n", r);
        cr_assert(strstr(out, want) != NULL, "%s", out);
    }
    cr_assert(strstr(out, "place[0]=-1/2\n") != NULL, "%s", out);
    cr_assert(strstr(out, "place[1]=0/2\n") != NULL, "%s", out);
    cr_assert(strstr(out, "place[2]=1/2\n") != NULL, "%s", out);
    for (int r = 0; r < 3; r++) {
        char want[64];
        snprintf(want, sizeof want, "rank %d of 3 done\n", r);
        cr_assert(strstr(out, want) != NULL, "%s", out);
    }
    free(out);
}

Test(bootstrap, mpi_psrec_host_overrides)
{
    int status;
    char *out = s_run_mpi("host", "-x PSREC_HOST=10.9.8.7", &status);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "mpirun failed:\n%s", out);
    cr_assert(strstr(out, "FAIL") == NULL, "%s", out);
    cr_assert(strstr(out, "ep[0]=tcp://10.9.8.7:7000\n") != NULL, "%s", out);
    cr_assert(strstr(out, "ep[2]=tcp://10.9.8.7:7002\n") != NULL, "%s", out);
    cr_assert(strstr(out, "bind[1]=tcp://0.0.0.0:*\n") != NULL, "%s", out);
    cr_assert(strstr(out, "rank 2 of 3 done\n") != NULL, "%s", out);
    free(out);
}

Test(bootstrap, mpi_unknown_transport_is_refused_by_name)
{
    int status;
    char *out = s_run_mpi("basic", "-x PSREC_TRANSPORT=tpc", &status);
    cr_assert(!WIFEXITED(status) || WEXITSTATUS(status) != 0, "mpirun succeeded:\n%s", out);
    cr_assert(strstr(out, "PSREC_TRANSPORT: transport: ") && strstr(out, "'tpc'"), "%s", out);
    free(out);
}

Test(bootstrap, mpi_transport_tcp_on_one_host)
{
    int status;
    char *out = s_run_mpi("basic", "-x PSREC_TRANSPORT=tcp", &status);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "mpirun failed:\n%s", out);
    cr_assert(strstr(out, "FAIL") == NULL, "%s", out);
    for (int r = 0; r < 3; r++) {
        char want[64];
        /* the advertised address, not every interface */
        snprintf(want, sizeof want, "bind[%d]=tcp://127.0.0.1:*\n", r);
        cr_assert(strstr(out, want) != NULL, "%s", out);
    }
    cr_assert(strstr(out, "hellos=2\n") != NULL, "%s", out);
    free(out);
}

/* The wire (cm_boot_secure): over tcp the job's keys secure the van and
 * each connection carries its rank; on one host over unix sockets auto
 * leaves it plain; a named interface that is not here stops every rank. */
Test(bootstrap, mpi_wire_tcp_is_encrypted_and_knows_its_ranks)
{
    int status;
    char *out = s_run_mpi("wire", "-x PSREC_TRANSPORT=tcp", &status);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "mpirun failed:\n%s", out);
    cr_assert(strstr(out, "FAIL") == NULL, "%s", out);
    for (int r = 0; r < 3; r++) {
        char want[64];
        snprintf(want, sizeof want, "secure[%d]=1\n", r);
        cr_assert(strstr(out, want) != NULL, "%s", out);
    }
    cr_assert(strstr(out, "peer 1 ok\n") && strstr(out, "peer 2 ok\n"), "%s", out);
    cr_assert(strstr(out, "hellos=2\n") != NULL, "%s", out);
    free(out);
}

Test(bootstrap, mpi_wire_one_host_auto_and_off)
{
    int status;
    char *out = s_run_mpi("wire", "", &status);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "mpirun failed:\n%s", out);
    cr_assert(strstr(out, "secure[1]=0\n") != NULL, "unix sockets, auto: plain\n%s", out);
    cr_assert(strstr(out, "hellos=2\n") != NULL, "%s", out);
    free(out);
    out = s_run_mpi("wire", "-x PSREC_TEST_ENCRYPT=on", &status);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "mpirun failed:\n%s", out);
    cr_assert(strstr(out, "secure[1]=1\n") != NULL, "unix sockets, on\n%s", out);
    cr_assert(strstr(out, "peer 2 ok\n") != NULL, "%s", out);
    free(out);
    out = s_run_mpi("wire", "-x PSREC_TRANSPORT=tcp -x PSREC_TEST_ENCRYPT=off", &status);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "mpirun failed:\n%s", out);
    cr_assert(strstr(out, "secure[1]=0\n") != NULL, "tcp, off\n%s", out);
    cr_assert(strstr(out, "hellos=2\n") != NULL, "%s", out);
    free(out);
}

Test(bootstrap, mpi_wire_interface_not_here_is_an_error)
{
    int status;
    char *out = s_run_mpi("wire", "-x PSREC_TRANSPORT=tcp -x PSREC_TEST_INTERFACE=10.255.77.0/24",
                          &status);
    cr_assert(!WIFEXITED(status) || WEXITSTATUS(status) != 0, "mpirun succeeded:\n%s", out);
    cr_assert(strstr(out, "interface: no up IPv4 address on this host matches '10.255.77.0/24'"),
              "%s", out);
    free(out);
    out = s_run_mpi("wire", "-x PSREC_TEST_INTERFACE=lo", &status);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "an interface that is here:\n%s",
              out);
    free(out);
    out = s_run_mpi("wire", "-x PSREC_TEST_INTERFACE=10.1.2.3/40", &status);
    cr_assert(strstr(out, "is neither an interface name nor an IPv4 network"), "%s", out);
    free(out);
}

/* -------------------------------------------------------------------------
 * Stale socket files
 * ------------------------------------------------------------------------- */

/* Binds a unix socket at dir/name; listening when listen_too, else closed
 * at once (the file stays, as after kill -9). Returns the fd or -1. */
static int s_sock_file(const char *dir, const char *name, int listen_too)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", dir, name);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "%s: %s", sa.sun_path,
                 strerror(errno));
    if (listen_too) {
        cr_assert_eq(listen(fd, 4), 0);
        return fd;
    }
    close(fd);
    return -1;
}

static int s_exists(const char *dir, const char *name)
{
    char p[256];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return lstat(p, &st) == 0;
}

Test(bootstrap, stale_sockets_of_dead_processes_are_swept)
{
    char dir[] = "/tmp/psrec_test_sweep.XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    /* a pid that is surely gone: a child that exited and was reaped */
    pid_t dead = fork();
    cr_assert_geq(dead, 0);
    if (dead == 0)
        _exit(0);
    cr_assert_eq(waitpid(dead, NULL, 0), dead);
    char stale[64], stale2[64], live[64], plain[64], other[64], listened[64];
    snprintf(stale, sizeof stale, "psrec-%ld-0-data", (long)dead);
    snprintf(stale2, sizeof stale2, "psrec-%ld-1-ctl", (long)dead);
    snprintf(live, sizeof live, "psrec-%ld-0-data", (long)getpid());
    snprintf(plain, sizeof plain, "psrec-%ld-2-data", (long)dead);
    snprintf(other, sizeof other, "psrecx-%ld-0-data", (long)dead);
    snprintf(listened, sizeof listened, "psrec-%ld-3-data", (long)dead);
    s_sock_file(dir, stale, 0);
    s_sock_file(dir, stale2, 0);
    int lfd = s_sock_file(dir, live, 1);
    s_sock_file(dir, other, 0);
    /* a dead pid whose socket someone still serves (another pid namespace) */
    int l2 = s_sock_file(dir, listened, 1);
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, plain);
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f);
    fclose(f);

    cr_expect_eq(cm_boot_sweep_sockets(dir), 2, "the two sockets of the dead process");
    cr_expect(!s_exists(dir, stale) && !s_exists(dir, stale2), "stale sockets removed");
    cr_expect(s_exists(dir, live), "a live process's socket is kept");
    cr_expect(s_exists(dir, listened), "a socket somebody accepts on is kept");
    cr_expect(s_exists(dir, plain), "a plain file with the name is kept");
    cr_expect(s_exists(dir, other), "other names are kept");
    cr_expect_eq(cm_boot_sweep_sockets(dir), 0, "nothing left to sweep");
    cr_expect_eq(cm_boot_sweep_sockets("/nonexistent/psrec"), 0, "a missing dir is no error");
    close(lfd);
    close(l2);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}
