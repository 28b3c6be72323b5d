/* bootstrap: rank, size, endpoint exchange and barriers, over MPI or over
 * threads of one process.
 *
 * A cm_boot is a small ops table plus the state both implementations share.
 * This is the only file in psrec that includes mpi.h; MPI is called from
 * the thread that made the boot (MPI_THREAD_FUNNELED). */
#include "common/bootstrap.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <ifaddrs.h>
#include <mpi.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"

/* -------------------------------------------------------------------------
 * Structures
 * ------------------------------------------------------------------------- */

typedef struct {
    int is_mpi;
    int (*allgather)(cm_boot *b, const char *mine, int too_long, char *all, cm_error *err);
    int (*barrier)(cm_boot *b, cm_error *err);
    void (*bind_endpoint)(const cm_boot *b, const char *purpose, char *out);
    int (*advertise)(const cm_boot *b, const char *bound, char *out, cm_error *err);
    int (*abort)(cm_boot *b, int code);
    int (*exchange)(cm_boot *b, int first, int count, size_t rec_size, const void *send,
                    const uint64_t *send_counts, void **recv, uint64_t *n_recv,
                    cm_error *err); /* NULL: not available */
    void (*destroy)(cm_boot *b);
} s_ops;

struct cm_boot {
    const s_ops *ops;
    int rank;
    int size;
    cm_van *van;                /* MPI: owned; local: the group's */
    cm_boot_group *group;       /* local: the group this rank belongs to */
    char host[CM_ENDPOINT_MAX]; /* MPI: the address peers reach this rank at */
    int unix_sockets;           /* MPI: every rank on this host; bind ipc:// */
    int *host_of;               /* MPI: per rank, the lowest rank on its host; NULL locally
                                 * (one host) */
    MPI_Comm sub;               /* MPI: ranks sub_first.. of the last exchange */
    int sub_first, sub_count;
};

struct cm_boot_group {
    int size;
    char gid[32];               /* "<pid>.<n>": names this group's inproc endpoints
                                 * distinctly from any other group's in logs */
    cm_van *van;                /* shared by every rank of the group */
    pthread_barrier_t barrier;  /* all `size` ranks */
    pthread_mutex_t lock;       /* guards taken[] and members */
    unsigned char *taken;       /* taken[r]: a cm_boot for rank r exists */
    int members;
    char *slots;                /* size * CM_ENDPOINT_MAX: allgather exchange */
};

/* -------------------------------------------------------------------------
 * Common helpers
 * ------------------------------------------------------------------------- */

static int s_copy_endpoint(const char *in, char *out, cm_error *err)
{
    size_t len = strlen(in);
    if (len >= CM_ENDPOINT_MAX)
        return cm_error_set(err, CM_EINVAL, "endpoint '%.64s...' is %zu bytes (max %d)", in,
                            len, CM_ENDPOINT_MAX - 1);
    memcpy(out, in, len + 1);
    return 0;
}

/* -------------------------------------------------------------------------
 * MPI
 * ------------------------------------------------------------------------- */

/* MPI is process-wide: it is finalized when the last MPI boot goes. */
static pthread_mutex_t s_mpi_lock = PTHREAD_MUTEX_INITIALIZER;
static int s_mpi_boots;

static int s_mpi_error(cm_error *err, int rc, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof text, "error %d", rc);
    return cm_error_set(err, CM_EMPI, "%s: %s", what, text);
}

/* The first non-loopback IPv4 address of this host: what its hostname
 * resolves to, else (hostnames often resolve to 127.0.1.1) the first up
 * interface. 0, or -1 when there is none. */
static int s_host_ipv4(const char *hostname, char *out, size_t n)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(hostname, NULL, &hints, &res) == 0) {
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            const struct sockaddr_in *sin = (const struct sockaddr_in *)ai->ai_addr;
            if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127)
                continue;
            if (inet_ntop(AF_INET, &sin->sin_addr, out, (socklen_t)n)) {
                freeaddrinfo(res);
                return 0;
            }
        }
        freeaddrinfo(res);
    }
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0)
        return -1;
    int rc = -1;
    for (struct ifaddrs *i = ifs; i && rc != 0; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
            continue;
        if ((i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_UP))
            continue;
        const struct sockaddr_in *sin = (const struct sockaddr_in *)i->ifa_addr;
        if (inet_ntop(AF_INET, &sin->sin_addr, out, (socklen_t)n))
            rc = 0;
    }
    freeifaddrs(ifs);
    return rc;
}

/* Collective: decides b->host, the address this rank advertises.
 * PSREC_HOST wins; 127.0.0.1 when every rank runs on this host; else this
 * host's IPv4 address, else its name. Every rank takes part in the
 * hostname exchange whatever its environment says. With every rank on
 * this host and neither PSREC_HOST nor PSREC_TRANSPORT=tcp set (auto, the
 * default, or tcp; anything else is refused), ranks bind
 * unix sockets instead (b->unix_sockets). */
static int s_mpi_pick_host(cm_boot *b, cm_error *err)
{
    char mine[CM_ENDPOINT_MAX] = {0};
    if (gethostname(mine, sizeof mine - 1) != 0)
        snprintf(mine, sizeof mine, "localhost");
    char *all = malloc((size_t)b->size * CM_ENDPOINT_MAX);
    if (!all)
        return cm_error_set(err, CM_ENOMEM, "bootstrap: out of memory for %d hostnames",
                            b->size);
    int rc = MPI_Allgather(mine, CM_ENDPOINT_MAX, MPI_CHAR, all, CM_ENDPOINT_MAX, MPI_CHAR,
                           MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) {
        free(all);
        return s_mpi_error(err, rc, "bootstrap: MPI_Allgather of hostnames");
    }
    int same = 1;
    b->host_of = malloc((size_t)b->size * sizeof *b->host_of);
    if (!b->host_of) {
        free(all);
        return cm_error_set(err, CM_ENOMEM, "bootstrap: out of memory for %d hostnames",
                            b->size);
    }
    for (int r = 0; r < b->size; r++) {
        const char *name = all + (size_t)r * CM_ENDPOINT_MAX;
        all[(size_t)r * CM_ENDPOINT_MAX + CM_ENDPOINT_MAX - 1] = '\0';
        if (strcmp(name, mine) != 0)
            same = 0;
        b->host_of[r] = r;
        for (int q = 0; q < r; q++)
            if (strcmp(all + (size_t)q * CM_ENDPOINT_MAX, name) == 0) {
                b->host_of[r] = q;
                break;
            }
    }
    free(all);

    const char *tr = getenv("PSREC_TRANSPORT");
    if (tr && *tr && strcmp(tr, "tcp") != 0 && strcmp(tr, "auto") != 0)
        return cm_error_set(err, CM_EINVAL, "PSREC_TRANSPORT: '%.64s' is neither auto nor tcp",
                            tr);
    const int want_tcp = tr && strcmp(tr, "tcp") == 0;
    const char *env = getenv("PSREC_HOST");
    const char *why;
    if (env && *env) {
        /* room for "tcp://[host]:65535" in an endpoint */
        if (strlen(env) > CM_ENDPOINT_MAX - 32)
            return cm_error_set(err, CM_EINVAL, "PSREC_HOST: '%.64s...' is too long", env);
        snprintf(b->host, sizeof b->host, "%s", env);
        why = "PSREC_HOST";
    } else if (same) {
        snprintf(b->host, sizeof b->host, "127.0.0.1");
        b->unix_sockets = !want_tcp;
        why = b->unix_sockets ? "every rank is on this host; unix sockets"
                              : "every rank is on this host; PSREC_TRANSPORT=tcp";
    } else if (s_host_ipv4(mine, b->host, sizeof b->host) == 0) {
        why = "this host's IPv4 address";
    } else {
        snprintf(b->host, sizeof b->host, "%s", mine);
        why = "no IPv4 address found; using the hostname";
    }
    cm_log(CM_LOG_DEBUG, "bootstrap: rank %d of %d on %s advertises %s (%s)", b->rank, b->size,
           mine, b->host, why);
    return 0;
}

static int s_mpi_allgather(cm_boot *b, const char *mine, int too_long, char *all,
                           cm_error *err)
{
    char buf[CM_ENDPOINT_MAX] = {0};
    if (!too_long)
        memcpy(buf, mine, strlen(mine));
    int rc = MPI_Allgather(buf, CM_ENDPOINT_MAX, MPI_CHAR, all, CM_ENDPOINT_MAX, MPI_CHAR,
                           MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return s_mpi_error(err, rc, "bootstrap: MPI_Allgather");
    /* bytes from other processes: make sure every string ends */
    for (int r = 0; r < b->size; r++)
        all[(size_t)r * CM_ENDPOINT_MAX + CM_ENDPOINT_MAX - 1] = '\0';
    return 0;
}

static int s_mpi_barrier(cm_boot *b, cm_error *err)
{
    (void)b;
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return s_mpi_error(err, rc, "bootstrap: MPI_Barrier");
    return 0;
}

/* A unix socket's path must fit sockaddr_un.sun_path with its NUL. */
#define S_UNIX_PATH_MAX 107

static void s_mpi_bind_endpoint(const cm_boot *b, const char *purpose, char *out)
{
    /* one host: a unix socket moves a byte for about half the CPU time of
     * tcp loopback (13 MB messages both ways: 1.3 vs 2.9 CPU s per 5.4 GB) */
    if (b->unix_sockets) {
        static atomic_uint s_binds;
        const char *dir = getenv("TMPDIR");
        if (!dir || !*dir)
            dir = "/tmp";
        int n = snprintf(out, CM_ENDPOINT_MAX, "ipc://%s/psrec-%ld-%u-%s", dir, (long)getpid(),
                         atomic_fetch_add(&s_binds, 1), purpose);
        if (n > 0 && n < CM_ENDPOINT_MAX && n - 6 <= S_UNIX_PATH_MAX)
            return;
    }
    snprintf(out, CM_ENDPOINT_MAX, "tcp://0.0.0.0:*");
}

static int s_mpi_advertise(const cm_boot *b, const char *bound, char *out, cm_error *err)
{
    if (strncmp(bound, "tcp://", 6) != 0)
        return s_copy_endpoint(bound, out, err);
    const char *host = bound + 6;
    const char *colon = strrchr(host, ':');
    if (!colon || colon[1] == '\0')
        return cm_error_set(err, CM_EINVAL, "advertise: '%.200s' has no port", bound);
    if (strcmp(colon + 1, "*") == 0)
        return cm_error_set(err, CM_EINVAL,
                            "advertise: '%.200s' has no port yet (pass the endpoint the bind "
                            "resolved to)",
                            bound);
    size_t hl = (size_t)(colon - host);
    int wildcard = (hl == 7 && memcmp(host, "0.0.0.0", 7) == 0) || (hl == 1 && host[0] == '*');
    if (!wildcard)
        return s_copy_endpoint(bound, out, err);
    /* an IPv6 literal (from PSREC_HOST) needs brackets in an endpoint */
    int v6 = strchr(b->host, ':') != NULL && b->host[0] != '[';
    int n = snprintf(out, CM_ENDPOINT_MAX, "tcp://%s%s%s:%s", v6 ? "[" : "", b->host,
                     v6 ? "]" : "", colon + 1);
    if (n < 0 || n >= CM_ENDPOINT_MAX)
        return cm_error_set(err, CM_EINVAL, "advertise: endpoint for '%.200s' is too long",
                            bound);
    return 0;
}

static int s_mpi_abort(cm_boot *b, int code)
{
    (void)b;
    int exit_code = code > 0 && code < 256 ? code : 1;
    /* the one MPI call that may come from a thread other than the one that
     * made the boot (MPI_THREAD_FUNNELED): in Open MPI it asks the runtime
     * to kill the job and exits; see cm_boot_abort in the header */
    int rc = MPI_Abort(MPI_COMM_WORLD, exit_code);
    /* MPI_Abort does not return on any implementation we know */
    return rc == MPI_SUCCESS ? 0 : CM_EMPI;
}

static void s_mpi_destroy(cm_boot *b)
{
    /* every rank reaches the end before anyone tears down its sockets */
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        cm_log(CM_LOG_WARN, "bootstrap: last MPI_Barrier failed (%d); finalizing anyway", rc);
    if (b->sub != MPI_COMM_NULL)
        MPI_Comm_free(&b->sub);
    cm_van_destroy(&b->van);
    pthread_mutex_lock(&s_mpi_lock);
    int last = --s_mpi_boots == 0;
    pthread_mutex_unlock(&s_mpi_lock);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (last && !finalized)
        MPI_Finalize();
}

/* The communicator of ranks first..first+count-1, made once per boot with
 * MPI_Comm_create_group (collective over those ranks only). */
static int s_mpi_subcomm(cm_boot *b, int first, int count, MPI_Comm *out, cm_error *err)
{
    if (b->sub != MPI_COMM_NULL && b->sub_first == first && b->sub_count == count) {
        *out = b->sub;
        return 0;
    }
    if (b->sub != MPI_COMM_NULL)
        MPI_Comm_free(&b->sub);
    MPI_Group world, part;
    int range[1][3] = {{first, first + count - 1, 1}};
    int rc = MPI_Comm_group(MPI_COMM_WORLD, &world);
    if (rc == MPI_SUCCESS) {
        rc = MPI_Group_range_incl(world, 1, range, &part);
        if (rc == MPI_SUCCESS) {
            rc = MPI_Comm_create_group(MPI_COMM_WORLD, part, 0x5053, &b->sub);
            MPI_Group_free(&part);
        }
        MPI_Group_free(&world);
    }
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_set_errhandler(b->sub, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS)
        return s_mpi_error(err, rc, "bootstrap: MPI_Comm_create_group");
    b->sub_first = first;
    b->sub_count = count;
    *out = b->sub;
    return 0;
}

static int s_mpi_exchange(cm_boot *b, int first, int count, size_t rec_size,
                          const void *send, const uint64_t *send_counts, void **recv,
                          uint64_t *n_recv, cm_error *err)
{
    MPI_Comm comm = MPI_COMM_NULL;
    int rc = s_mpi_subcomm(b, first, count, &comm, err);
    if (rc != 0)
        return rc;
    uint64_t *rc64 = malloc((size_t)count * sizeof *rc64);
    int *sc = malloc((size_t)count * 4 * sizeof *sc);
    MPI_Datatype rec = MPI_DATATYPE_NULL;
    char *in = NULL;
    if (!rc64 || !sc) {
        rc = cm_error_set(err, CM_ENOMEM, "bootstrap: out of memory for an exchange");
        goto out;
    }
    int mrc = MPI_Alltoall(send_counts, 1, MPI_UINT64_T, rc64, 1, MPI_UINT64_T, comm);
    if (mrc != MPI_SUCCESS) {
        rc = s_mpi_error(err, mrc, "bootstrap: MPI_Alltoall of counts");
        goto out;
    }
    /* counts and displacements are ints (in records): refuse what they
     * cannot hold rather than wrap */
    int *sd = sc + count, *rcn = sc + 2 * count, *rd = sc + 3 * count;
    uint64_t so = 0, ro = 0;
    for (int d = 0; d < count; d++) {
        if (so > INT32_MAX || ro > INT32_MAX || send_counts[d] > INT32_MAX ||
            rc64[d] > INT32_MAX) {
            rc = cm_error_set(err, CM_ERANGE,
                              "bootstrap: an exchange of more than 2^31 records per rank");
            goto out;
        }
        sc[d] = (int)send_counts[d];
        sd[d] = (int)so;
        rcn[d] = (int)rc64[d];
        rd[d] = (int)ro;
        so += send_counts[d];
        ro += rc64[d];
    }
    if (!(in = malloc((ro + 1) * rec_size))) { /* room for a record even when none come */
        rc = cm_error_set(err, CM_ENOMEM, "bootstrap: out of memory for %llu records",
                          (unsigned long long)ro);
        goto out;
    }
    mrc = MPI_Type_contiguous((int)rec_size, MPI_BYTE, &rec);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Type_commit(&rec);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Alltoallv(send, sc, sd, rec, in, rcn, rd, rec, comm);
    if (mrc != MPI_SUCCESS) {
        rc = s_mpi_error(err, mrc, "bootstrap: MPI_Alltoallv");
        goto out;
    }
    *recv = in;
    *n_recv = ro;
    in = NULL;
out:
    if (rec != MPI_DATATYPE_NULL)
        MPI_Type_free(&rec);
    free(in);
    free(rc64);
    free(sc);
    return rc;
}

static const s_ops s_mpi_ops = {
    .is_mpi = 1,
    .allgather = s_mpi_allgather,
    .barrier = s_mpi_barrier,
    .bind_endpoint = s_mpi_bind_endpoint,
    .advertise = s_mpi_advertise,
    .abort = s_mpi_abort,
    .exchange = s_mpi_exchange,
    .destroy = s_mpi_destroy,
};

cm_boot *cm_boot_mpi_new(int *argc, char ***argv, cm_error *err)
{
    cm_boot *b = calloc(1, sizeof *b);
    if (!b) {
        cm_error_set(err, CM_ENOMEM, "bootstrap: out of memory");
        return NULL;
    }
    b->ops = &s_mpi_ops;
    b->sub = MPI_COMM_NULL;

    int finalized = 0, initialized = 0, rc;
    MPI_Finalized(&finalized);
    if (finalized) {
        cm_error_set(err, CM_ESTATE, "bootstrap: MPI was already finalized in this process");
        goto fail;
    }
    MPI_Initialized(&initialized);
    if (!initialized) {
        int provided = 0;
        rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) {
            s_mpi_error(err, rc, "bootstrap: MPI_Init_thread");
            goto fail;
        }
        if (provided < MPI_THREAD_FUNNELED)
            cm_log(CM_LOG_WARN, "bootstrap: MPI gives thread level %d, less than FUNNELED",
                   provided);
    }
    /* errors become return codes (CM_EMPI), not a dead job */
    rc = MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_rank(MPI_COMM_WORLD, &b->rank);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_size(MPI_COMM_WORLD, &b->size);
    if (rc != MPI_SUCCESS) {
        s_mpi_error(err, rc, "bootstrap: MPI_COMM_WORLD");
        goto fail;
    }
    pthread_mutex_lock(&s_mpi_lock);
    s_mpi_boots++;
    pthread_mutex_unlock(&s_mpi_lock);

    if (s_mpi_pick_host(b, err) != 0)
        goto fail_counted;
    b->van = cm_van_new(err);
    if (!b->van)
        goto fail_counted;
    return b;

    /* MPI stays initialized on failure: finalizing is collective and the
     * other ranks may never get there. The caller exits with an error and
     * mpirun ends the job. */
fail_counted:
    pthread_mutex_lock(&s_mpi_lock);
    s_mpi_boots--;
    pthread_mutex_unlock(&s_mpi_lock);
fail:
    free(b->host_of);
    free(b);
    return NULL;
}

/* -------------------------------------------------------------------------
 * Local (threads of one process)
 * ------------------------------------------------------------------------- */

/* Groups must never share inproc names, even across tests in one process. */
static atomic_uint s_group_counter;

/* The two barrier kinds only ever fail on misuse (a destroyed barrier). */
static int s_local_wait(cm_boot_group *g, cm_error *err)
{
    int rc = pthread_barrier_wait(&g->barrier);
    if (rc != 0 && rc != PTHREAD_BARRIER_SERIAL_THREAD)
        return cm_error_set(err, CM_ESTATE, "bootstrap: barrier of group %s: %s", g->gid,
                            strerror(rc));
    return 0;
}

static int s_local_allgather(cm_boot *b, const char *mine, int too_long, char *all,
                             cm_error *err)
{
    cm_boot_group *g = b->group;
    char *slot = g->slots + (size_t)b->rank * CM_ENDPOINT_MAX;
    memset(slot, 0, CM_ENDPOINT_MAX);
    if (!too_long)
        memcpy(slot, mine, strlen(mine));
    /* phase 1: every slot written; phase 2: every rank has copied, so the
     * next allgather may overwrite the slots */
    int rc = s_local_wait(g, err);
    if (rc)
        return rc;
    memcpy(all, g->slots, (size_t)g->size * CM_ENDPOINT_MAX);
    return s_local_wait(g, err);
}

static int s_local_barrier(cm_boot *b, cm_error *err)
{
    return s_local_wait(b->group, err);
}

static void s_local_bind_endpoint(const cm_boot *b, const char *purpose, char *out)
{
    snprintf(out, CM_ENDPOINT_MAX, "inproc://psrec-%s-%d-%s", b->group->gid, b->rank,
             purpose ? purpose : "");
}

static int s_local_advertise(const cm_boot *b, const char *bound, char *out, cm_error *err)
{
    (void)b;
    return s_copy_endpoint(bound, out, err);
}

static int s_local_abort(cm_boot *b, int code)
{
    (void)b;
    (void)code;
    return CM_ESTATE;
}

static void s_local_destroy(cm_boot *b)
{
    cm_boot_group *g = b->group;
    pthread_mutex_lock(&g->lock);
    g->taken[b->rank] = 0;
    g->members--;
    pthread_mutex_unlock(&g->lock);
}

static const s_ops s_local_ops = {
    .is_mpi = 0,
    .allgather = s_local_allgather,
    .barrier = s_local_barrier,
    .bind_endpoint = s_local_bind_endpoint,
    .advertise = s_local_advertise,
    .abort = s_local_abort,
    .destroy = s_local_destroy,
};

/* More threads than this in one process is a mistake, not a cluster. */
#define S_LOCAL_MAX 4096

cm_boot_group *cm_boot_group_new(int size, cm_error *err)
{
    if (size < 1 || size > S_LOCAL_MAX) {
        cm_error_set(err, CM_EINVAL, "bootstrap: local group size %d not in [1, %d]", size,
                     S_LOCAL_MAX);
        return NULL;
    }
    cm_boot_group *g = calloc(1, sizeof *g);
    if (!g) {
        cm_error_set(err, CM_ENOMEM, "bootstrap: out of memory");
        return NULL;
    }
    int have_barrier = 0, have_lock = 0;
    g->size = size;
    snprintf(g->gid, sizeof g->gid, "%ld.%u", (long)getpid(),
             atomic_fetch_add(&s_group_counter, 1) + 1);
    g->taken = calloc((size_t)size, 1);
    g->slots = calloc((size_t)size, CM_ENDPOINT_MAX);
    if (!g->taken || !g->slots) {
        cm_error_set(err, CM_ENOMEM, "bootstrap: out of memory for a group of %d", size);
        goto fail;
    }
    int rc = pthread_barrier_init(&g->barrier, NULL, (unsigned)size);
    if (rc != 0) {
        cm_error_set(err, CM_ENOMEM, "bootstrap: pthread_barrier_init: %s", strerror(rc));
        goto fail;
    }
    have_barrier = 1;
    rc = pthread_mutex_init(&g->lock, NULL);
    if (rc != 0) {
        cm_error_set(err, CM_ENOMEM, "bootstrap: pthread_mutex_init: %s", strerror(rc));
        goto fail;
    }
    have_lock = 1;
    g->van = cm_van_new(err);
    if (!g->van)
        goto fail;
    return g;

fail:
    if (have_lock)
        pthread_mutex_destroy(&g->lock);
    if (have_barrier)
        pthread_barrier_destroy(&g->barrier);
    free(g->taken);
    free(g->slots);
    free(g);
    return NULL;
}

void cm_boot_group_destroy(cm_boot_group **pg)
{
    if (!pg || !*pg)
        return;
    cm_boot_group *g = *pg;
    assert(g->members == 0 && "destroy every cm_boot of the group first");
    cm_van_destroy(&g->van);
    pthread_barrier_destroy(&g->barrier);
    pthread_mutex_destroy(&g->lock);
    free(g->taken);
    free(g->slots);
    free(g);
    *pg = NULL;
}

cm_boot *cm_boot_local_new(cm_boot_group *g, int rank, cm_error *err)
{
    if (!g) {
        cm_error_set(err, CM_EINVAL, "bootstrap: NULL group");
        return NULL;
    }
    if (rank < 0 || rank >= g->size) {
        cm_error_set(err, CM_EINVAL, "bootstrap: rank %d not in group %s of size %d", rank,
                     g->gid, g->size);
        return NULL;
    }
    cm_boot *b = calloc(1, sizeof *b);
    if (!b) {
        cm_error_set(err, CM_ENOMEM, "bootstrap: out of memory");
        return NULL;
    }
    pthread_mutex_lock(&g->lock);
    int taken = g->taken[rank];
    if (!taken) {
        g->taken[rank] = 1;
        g->members++;
    }
    pthread_mutex_unlock(&g->lock);
    if (taken) {
        free(b);
        cm_error_set(err, CM_ESTATE, "bootstrap: rank %d of group %s already has a member", rank,
                     g->gid);
        return NULL;
    }
    b->ops = &s_local_ops;
    b->rank = rank;
    b->size = g->size;
    b->van = g->van;
    b->group = g;
    return b;
}

/* -------------------------------------------------------------------------
 * The interface
 * ------------------------------------------------------------------------- */

void cm_boot_destroy(cm_boot **pb)
{
    if (!pb || !*pb)
        return;
    cm_boot *b = *pb;
    b->ops->destroy(b);
    free(b->host_of);
    free(b);
    *pb = NULL;
}

void cm_boot_host_place(const cm_boot *b, int first, int count, int *index, int *peers)
{
    *index = -1;
    *peers = 0;
    for (int r = first; r < first + count && r < b->size; r++) {
        if (b->host_of && b->host_of[r] != b->host_of[b->rank])
            continue;
        if (r == b->rank)
            *index = *peers;
        (*peers)++;
    }
}

int cm_boot_rank(const cm_boot *b) { return b->rank; }

int cm_boot_size(const cm_boot *b) { return b->size; }

int cm_boot_is_mpi(const cm_boot *b) { return b->ops->is_mpi; }

cm_van *cm_boot_van(cm_boot *b) { return b->van; }

void cm_boot_bind_endpoint(const cm_boot *b, const char *purpose, char *out)
{
    b->ops->bind_endpoint(b, purpose, out);
}

int cm_boot_advertise(const cm_boot *b, const char *bound, char *out, cm_error *err)
{
    if (!b || !bound || !out)
        return cm_error_set(err, CM_EINVAL, "advertise: NULL argument");
    return b->ops->advertise(b, bound, out, err);
}

int cm_boot_allgather(cm_boot *b, const char *mine, char *all, cm_error *err)
{
    if (!b || !all)
        return cm_error_set(err, CM_EINVAL, "allgather: NULL argument");
    /* A bad string still takes part (as "") so the other ranks are not
     * left waiting in the collective; only this rank sees the error. */
    int too_long = !mine || strnlen(mine, CM_ENDPOINT_MAX) >= CM_ENDPOINT_MAX;
    int rc = b->ops->allgather(b, mine, too_long, all, err);
    if (rc)
        return rc;
    if (!mine)
        return cm_error_set(err, CM_EINVAL, "allgather: rank %d gave NULL", b->rank);
    if (too_long)
        return cm_error_set(err, CM_EINVAL, "allgather: rank %d's string is %d bytes or longer",
                            b->rank, CM_ENDPOINT_MAX);
    return 0;
}

int cm_boot_barrier(cm_boot *b, cm_error *err)
{
    if (!b)
        return cm_error_set(err, CM_EINVAL, "barrier: NULL boot");
    return b->ops->barrier(b, err);
}

int cm_boot_can_exchange(const cm_boot *b)
{
    return b && b->ops->exchange != NULL;
}

int cm_boot_exchange(cm_boot *b, int first, int count, size_t rec_size, const void *send,
                     const uint64_t *send_counts, void **recv, uint64_t *n_recv, cm_error *err)
{
    *recv = NULL;
    *n_recv = 0;
    if (!cm_boot_can_exchange(b))
        return cm_error_set(err, CM_ESTATE, "bootstrap: no all-to-all exchange without MPI");
    if (count < 1 || first < 0 || first + count > b->size || b->rank < first ||
        b->rank >= first + count || rec_size == 0 || rec_size > INT32_MAX)
        return cm_error_set(err, CM_EINVAL,
                            "bootstrap: exchange among ranks %d..%d of %d from rank %d",
                            first, first + count - 1, b->size, b->rank);
    return b->ops->exchange(b, first, count, rec_size, send, send_counts, recv, n_recv, err);
}

int cm_boot_abort(cm_boot *b, int code)
{
    if (!b)
        return CM_EINVAL;
    return b->ops->abort(b, code);
}
