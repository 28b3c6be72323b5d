/* bootstrap: rank, size, endpoint exchange and barriers, over MPI or over
 * threads of one process.
 *
 * A cm_boot is a small ops table plus the state both implementations share.
 * This is the only file in psrec that includes mpi.h; MPI is called from
 * the thread that made the boot (MPI_THREAD_FUNNELED). */
#include "common/bootstrap.h"

#include <arpa/inet.h>
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <ifaddrs.h>
#include <mpi.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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
    char bind_ip[64];           /* MPI: the address tcp sockets bind ("0.0.0.0" only
                                 * when host is none of this host's addresses) */
    int host_from_env;          /* MPI: host came from cm_boot_net (the `host` key) */
    int all_here;               /* MPI: every rank runs on this host */
    int unix_sockets;           /* MPI: every rank on this host; bind ipc:// */
    int *host_of;               /* MPI: per rank, the lowest rank on its host (from the
                                 * MPI runtime); NULL locally (one host) */
    char *names;                /* MPI: size * CM_ENDPOINT_MAX hostnames, for messages;
                                 * NULL locally */
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

/* 1 when addr (IPv4 text) is assigned to an interface of this host (any
 * loopback address counts). */
static int s_is_own_ipv4(const char *addr)
{
    struct in_addr want;
    if (inet_pton(AF_INET, addr, &want) != 1)
        return 0;
    if ((ntohl(want.s_addr) >> 24) == 127)
        return 1;
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0)
        return 0;
    int own = 0;
    for (struct ifaddrs *i = ifs; i && !own; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET &&
            ((const struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr == want.s_addr)
            own = 1;
    freeifaddrs(ifs);
    return own;
}

/* The first non-loopback IPv4 address of this host: what its hostname
 * resolves to when that address is this host's own, else (hostnames often
 * resolve to 127.0.1.1) the first up interface. 0, or -1 when there is
 * none. */
static int s_host_ipv4(const char *hostname, char *out, size_t n)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(hostname, NULL, &hints, &res) == 0) {
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            const struct sockaddr_in *sin = (const struct sockaddr_in *)ai->ai_addr;
            if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127)
                continue;
            /* hosts that share a name may resolve it to another host's
             * address (one /etc/hosts baked into every container image) */
            if (inet_ntop(AF_INET, &sin->sin_addr, out, (socklen_t)n) && s_is_own_ipv4(out)) {
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

/* What makes two processes one host for psrec: one kernel (shared memory,
 * /proc/<pid>/fd), one network namespace (127.0.0.1) and one temporary
 * directory (ipc:// sockets). Hosts that share a hostname differ here. */
static void s_host_identity(char *out, size_t n)
{
    char boot[64] = "?";
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(boot, sizeof boot, f))
            snprintf(boot, sizeof boot, "?");
        boot[strcspn(boot, "\n")] = '\0';
        fclose(f);
    }
    const char *tmp = getenv("TMPDIR");
    struct stat net = {0}, dir = {0};
    stat("/proc/self/ns/net", &net);
    stat(tmp && *tmp ? tmp : "/tmp", &dir);
    snprintf(out, n, "%s/%llu:%llu/%llu:%llu", boot, (unsigned long long)net.st_dev,
             (unsigned long long)net.st_ino, (unsigned long long)dir.st_dev,
             (unsigned long long)dir.st_ino);
}

/* Collective: which ranks share this rank's host. The MPI runtime decides
 * (one shared-memory domain: MPI_COMM_TYPE_SHARED), never the hostname,
 * and psrec only narrows its answer: ranks the runtime puts together but
 * whose kernel, network namespace or temporary directory differ
 * (s_host_identity) are on different hosts. Where two such ranks also
 * share a hostname the runtime is not asked at all: Open MPI 4.1 takes
 * hosts of one name for one node, and collectives on the shared-memory
 * communicator it then makes crash. b->host_of[r] becomes the lowest
 * world rank on rank r's host; *all_here is 1 when every rank is on this
 * host. b->names gets every rank's hostname, for messages only. */
static int s_mpi_locality(cm_boot *b, const char *hostname, int *all_here, cm_error *err)
{
    char id[CM_ENDPOINT_MAX] = {0};
    s_host_identity(id, sizeof id);
    b->host_of = malloc((size_t)b->size * sizeof *b->host_of);
    b->names = malloc((size_t)b->size * CM_ENDPOINT_MAX);
    char *ids = malloc((size_t)b->size * CM_ENDPOINT_MAX);
    if (!b->host_of || !b->names || !ids) {
        free(ids);
        return cm_error_set(err, CM_ENOMEM, "bootstrap: out of memory for %d ranks", b->size);
    }
    int rc = MPI_Allgather(hostname, CM_ENDPOINT_MAX, MPI_CHAR, b->names, CM_ENDPOINT_MAX,
                           MPI_CHAR, MPI_COMM_WORLD);
    if (rc == MPI_SUCCESS)
        rc = MPI_Allgather(id, CM_ENDPOINT_MAX, MPI_CHAR, ids, CM_ENDPOINT_MAX, MPI_CHAR,
                           MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) {
        free(ids);
        return s_mpi_error(err, rc, "bootstrap: MPI_Allgather of hosts");
    }
#define S_NAME(r) (b->names + (size_t)(r) * CM_ENDPOINT_MAX)
#define S_ID(r) (ids + (size_t)(r) * CM_ENDPOINT_MAX)
    /* bytes from other processes: make sure every string ends */
    for (int r = 0; r < b->size; r++)
        S_NAME(r)[CM_ENDPOINT_MAX - 1] = S_ID(r)[CM_ENDPOINT_MAX - 1] = '\0';
    int clash = -1, clash_r = -1;
    for (int r = 1; r < b->size && clash < 0; r++)
        for (int q = 0; q < r; q++)
            if (strcmp(S_NAME(q), S_NAME(r)) == 0 && strcmp(S_ID(q), S_ID(r)) != 0) {
                clash = q;
                clash_r = r;
                break;
            }
    if (clash >= 0 && b->rank == 0)
        cm_log(CM_LOG_WARN, "bootstrap: ranks %d and %d run on different hosts of one name "
                            "(%s); psrec tells the hosts apart itself (Open MPI takes them for "
                            "one node: give each host its own name)",
               clash, clash_r, S_NAME(clash_r));
    int *leader = calloc((size_t)b->size, sizeof *leader);
    if (!leader) {
        free(ids);
        return cm_error_set(err, CM_ENOMEM, "bootstrap: out of memory for %d ranks", b->size);
    }
    if (clash < 0) {
        MPI_Comm node = MPI_COMM_NULL;
        int mine = b->rank;
        rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
        if (rc == MPI_SUCCESS) {
            rc = MPI_Allreduce(&b->rank, &mine, 1, MPI_INT, MPI_MIN, node);
            MPI_Comm_free(&node);
        }
        if (rc == MPI_SUCCESS)
            rc = MPI_Allgather(&mine, 1, MPI_INT, leader, 1, MPI_INT, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) {
            free(ids);
            free(leader);
            return s_mpi_error(err, rc, "bootstrap: the ranks of each host "
                                        "(MPI_Comm_split_type SHARED)");
        }
    }
    int n_here = 0;
    for (int r = 0; r < b->size; r++) {
        b->host_of[r] = r;
        for (int q = 0; q < r; q++)
            if (leader[q] == leader[r] && strcmp(S_ID(q), S_ID(r)) == 0) {
                b->host_of[r] = b->host_of[q];
                break;
            }
    }
    for (int r = 0; r < b->size; r++)
        n_here += b->host_of[r] == b->host_of[b->rank];
#undef S_NAME
#undef S_ID
    free(ids);
    free(leader);
    *all_here = n_here == b->size;
    return 0;
}

/* Sets b->bind_ip from b->host: the advertised address itself when it is
 * one of this host's (a name is resolved first), so nothing listens on
 * the other interfaces; else 0.0.0.0 with a warning (an address behind
 * NAT, say). */
static void s_pick_bind(cm_boot *b)
{
    char ip[64] = "";
    struct in_addr a;
    if (inet_pton(AF_INET, b->host, &a) == 1) {
        inet_ntop(AF_INET, &a, ip, sizeof ip);
    } else {
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        if (getaddrinfo(b->host, NULL, &hints, &res) == 0) {
            for (struct addrinfo *ai = res; ai && !ip[0]; ai = ai->ai_next) {
                const struct sockaddr_in *sin = (const struct sockaddr_in *)ai->ai_addr;
                char t[64];
                if (inet_ntop(AF_INET, &sin->sin_addr, t, sizeof t) && s_is_own_ipv4(t))
                    snprintf(ip, sizeof ip, "%s", t);
            }
            freeaddrinfo(res);
        }
    }
    if (ip[0] && s_is_own_ipv4(ip)) {
        snprintf(b->bind_ip, sizeof b->bind_ip, "%s", ip);
        return;
    }
    snprintf(b->bind_ip, sizeof b->bind_ip, "0.0.0.0");
    cm_log(CM_LOG_WARN, "bootstrap: rank %d advertises %s, which is not an address of this "
           "host: listening on every interface (set `interface` or `host` to one of "
           "this host's addresses to narrow it)", b->rank, b->host);
}

/* The first IPv4 address of this host that matches spec: an interface
 * name ("eth1") or a network in CIDR form ("10.1.0.0/16"). 0, or
 * CM_ENOTFOUND / CM_ECONFIG with the reason. */
static int s_interface_ipv4(const char *spec, char *out, size_t n, cm_error *err)
{
    uint32_t net = 0, mask = 0;
    int cidr = strchr(spec, '/') != NULL;
    if (cidr) {
        char addr[64];
        const char *slash = strchr(spec, '/');
        size_t al = (size_t)(slash - spec);
        char *end = NULL;
        long bits = strtol(slash + 1, &end, 10);
        struct in_addr a;
        if (al >= sizeof addr || !*(slash + 1) || *end || bits < 0 || bits > 32)
            return cm_error_set(err, CM_ECONFIG, "interface: '%.64s' is neither an interface "
                                "name nor an IPv4 network like 10.1.0.0/16", spec);
        memcpy(addr, spec, al);
        addr[al] = '\0';
        if (inet_pton(AF_INET, addr, &a) != 1)
            return cm_error_set(err, CM_ECONFIG, "interface: '%.64s' is not an IPv4 network",
                                spec);
        mask = bits == 0 ? 0 : 0xffffffffu << (32 - bits);
        net = ntohl(a.s_addr) & mask;
    }
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0)
        return cm_error_set(err, CM_EIO, "interface: getifaddrs: %s", strerror(errno));
    int rc = CM_ENOTFOUND;
    for (struct ifaddrs *i = ifs; i && rc != 0; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP))
            continue;
        const struct sockaddr_in *sin = (const struct sockaddr_in *)i->ifa_addr;
        uint32_t ip = ntohl(sin->sin_addr.s_addr);
        if (cidr ? (ip & mask) != net : strcmp(i->ifa_name, spec) != 0)
            continue;
        if (inet_ntop(AF_INET, &sin->sin_addr, out, (socklen_t)n))
            rc = 0;
    }
    freeifaddrs(ifs);
    if (rc != 0)
        return cm_error_set(err, CM_ENOTFOUND, "interface: no up IPv4 address on this host "
                            "matches '%.64s'", spec);
    return 0;
}

/* Collective: decides b->host, the address this rank advertises.
 * net->host wins; 127.0.0.1 when every rank runs on this host (as the
 * MPI runtime sees it); else this host's own IPv4 address (what its name
 * resolves to when that is an address of this host, else the first up
 * interface's), else its name. With every rank on this host and neither
 * a host nor tcp asked for, ranks bind unix sockets instead
 * (b->unix_sockets). */
static int s_mpi_pick_host(cm_boot *b, const cm_boot_net *net, cm_error *err)
{
    char mine[CM_ENDPOINT_MAX] = {0};
    if (gethostname(mine, sizeof mine - 1) != 0)
        snprintf(mine, sizeof mine, "localhost");
    int same = 0;
    int rc = s_mpi_locality(b, mine, &same, err);
    if (rc != 0)
        return rc;

    const int want_tcp = net && net->tcp;
    const char *env = net && net->host && *net->host ? net->host : NULL;
    const char *why;
    if (env) {
        /* room for "tcp://[host]:65535" in an endpoint */
        if (strlen(env) > CM_ENDPOINT_MAX - 32)
            return cm_error_set(err, CM_EINVAL, "host: '%.64s...' is too long", env);
        snprintf(b->host, sizeof b->host, "%s", env);
        why = "host";
    } else if (same) {
        snprintf(b->host, sizeof b->host, "127.0.0.1");
        b->unix_sockets = !want_tcp;
        why = b->unix_sockets ? "every rank is on this host; unix sockets"
                              : "every rank is on this host; transport = tcp";
    } else if (s_host_ipv4(mine, b->host, sizeof b->host) == 0) {
        why = "this host's IPv4 address";
    } else {
        snprintf(b->host, sizeof b->host, "%s", mine);
        why = "no IPv4 address found; using the hostname";
    }
    b->host_from_env = env != NULL;
    b->all_here = same;
    s_pick_bind(b);
    cm_log(CM_LOG_DEBUG, "bootstrap: rank %d of %d on %s advertises %s (%s), binds %s", b->rank,
           b->size, mine, b->host, why, b->bind_ip);
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
        static atomic_flag s_swept = ATOMIC_FLAG_INIT;
        const char *dir = getenv("TMPDIR");
        if (!dir || !*dir)
            dir = "/tmp";
        if (!atomic_flag_test_and_set(&s_swept))
            cm_boot_sweep_sockets(dir);
        int n = snprintf(out, CM_ENDPOINT_MAX, "ipc://%s/psrec-%ld-%u-%s", dir, (long)getpid(),
                         atomic_fetch_add(&s_binds, 1), purpose);
        if (n > 0 && n < CM_ENDPOINT_MAX && n - 6 <= S_UNIX_PATH_MAX)
            return;
    }
    snprintf(out, CM_ENDPOINT_MAX, "tcp://%s:*", b->bind_ip[0] ? b->bind_ip : "0.0.0.0");
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
    /* an IPv6 literal (from the `host` key) needs brackets in an endpoint */
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

cm_boot *cm_boot_mpi_new(int *argc, char ***argv, const cm_boot_net *net, cm_error *err)
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

    if (s_mpi_pick_host(b, net, err) != 0)
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
    free(b->names);
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
 * Securing the wire (MPI)
 * ------------------------------------------------------------------------- */

/* The job's keys: rank 0's server pair broadcast, every rank's client
 * public key gathered, then the van secured. Every step is collective
 * whatever happened before on this rank, and one MPI_Allreduce makes every
 * rank fail alike, so no rank waits for a peer that gave up. */
static int s_mpi_keys(cm_boot *b, cm_error *err)
{
    cm_van_keys k;
    memset(&k, 0, sizeof k);
    uint8_t pair[2 * CM_KEY_BYTES] = {0};
    uint8_t *all = malloc((size_t)b->size * CM_KEY_BYTES + 1);
    cm_error mine = {0};
    int bad = 0;
    if (!all) {
        cm_error_set(&mine, CM_ENOMEM, "bootstrap: out of memory for %d keys", b->size);
        bad = 1;
    }
    if (!bad && cm_van_keypair(k.public_key, k.secret_key, &mine) != 0)
        bad = 1;
    if (b->rank == 0 && !bad && cm_van_keypair(pair, pair + CM_KEY_BYTES, &mine) != 0)
        bad = 1;
    int rc = MPI_Bcast(pair, (int)sizeof pair, MPI_BYTE, 0, MPI_COMM_WORLD);
    uint8_t dummy[CM_KEY_BYTES] = {0};
    if (rc == MPI_SUCCESS)
        rc = MPI_Allgather(k.public_key, CM_KEY_BYTES, MPI_BYTE, all ? all : dummy,
                           all ? CM_KEY_BYTES : 0, MPI_BYTE, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) {
        s_mpi_error(&mine, rc, "bootstrap: exchanging keys");
        bad = 1;
    }
    int any_bad = bad;
    if (MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        any_bad = 1;
    if (!any_bad) {
        memcpy(k.server_public, pair, CM_KEY_BYTES);
        memcpy(k.server_secret, pair + CM_KEY_BYTES, CM_KEY_BYTES);
        k.admit = all;
        k.n_admit = (size_t)b->size;
        if (cm_van_secure(b->van, &k, &mine) != 0)
            bad = 1;
    }
    /* secret halves live on only inside the van */
    memset(&k, 0, sizeof k);
    memset(pair, 0, sizeof pair);
    free(all);
    if (bad)
        return cm_error_set(err, mine.code ? mine.code : CM_EIO, "%s", mine.msg);
    if (any_bad)
        return cm_error_set(err, CM_ESTATE, "bootstrap: another rank could not make its keys "
                            "(its log says why)");
    return 0;
}

int cm_boot_secure(cm_boot *b, const cm_boot_wire *w, cm_error *err)
{
    if (!b || !w)
        return cm_error_set(err, CM_EINVAL, "bootstrap: secure needs a boot and settings");
    if (!b->ops->is_mpi)
        return 0;   /* inproc: one process, nothing on the wire */
    cm_error e = {0};
    int bad = 0;
    if (w->interface && w->interface[0]) {
        /* checked on every job, so a typo shows on one host too; used when
         * the ranks span hosts and the `host` key does not say otherwise */
        char ip[64];
        if (s_interface_ipv4(w->interface, ip, sizeof ip, &e) != 0) {
            bad = 1;
        } else if (!b->host_from_env && !b->all_here) {
            snprintf(b->host, sizeof b->host, "%s", ip);
            s_pick_bind(b);
            cm_log(CM_LOG_DEBUG, "bootstrap: rank %d listens on %s (interface = %s)", b->rank,
                   b->host, w->interface);
        }
    }
    /* auto: a job on one host over unix sockets relies on the files being
     * its user's (zmq makes them so, see van_zmq.c); anything over tcp is
     * encrypted */
    int on = w->encrypt == CM_ENCRYPT_ON || (w->encrypt == CM_ENCRYPT_AUTO && !b->unix_sockets);
    int rc = 0;
    if (on)
        rc = s_mpi_keys(b, err);
    else if (b->rank == 0)
        cm_log(w->encrypt == CM_ENCRYPT_OFF ? CM_LOG_WARN : CM_LOG_DEBUG,
               "bootstrap: the job's traffic is not encrypted (%s)",
               w->encrypt == CM_ENCRYPT_OFF ? "encrypt = off: anyone who can reach its ports "
                                              "is trusted"
                                            : "one host, unix sockets of this user");
    if (bad)
        return cm_error_set(err, e.code, "%s", e.msg);
    return rc;
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
    free(b->names);
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

int cm_boot_same_host(const cm_boot *b, int rank)
{
    if (!b || rank < 0 || rank >= b->size)
        return 0;
    return !b->host_of || b->host_of[rank] == b->host_of[b->rank];
}

void cm_boot_hostname(const cm_boot *b, int rank, char *out, size_t n)
{
    if (n == 0)
        return;
    if (b && b->names && rank >= 0 && rank < b->size)
        snprintf(out, n, "%s", b->names + (size_t)rank * CM_ENDPOINT_MAX);
    else if (gethostname(out, n) != 0 || !memchr(out, '\0', n))
        snprintf(out, n, "localhost");
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

/* ---------------------------------------------------------------------
 * Stale socket files
 * ------------------------------------------------------------------- */

int cm_boot_sweep_sockets(const char *dir)
{
    if (!dir || !*dir)
        dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        /* psrec-<pid>-<n>-<purpose>, as s_mpi_bind_endpoint names them */
        char *end = NULL;
        if (strncmp(e->d_name, "psrec-", 6) != 0 || e->d_name[6] < '1' || e->d_name[6] > '9')
            continue;
        long pid = strtol(e->d_name + 6, &end, 10);
        if (*end != '-' || end[1] < '0' || end[1] > '9' || pid <= 0 || pid != (pid_t)pid)
            continue;
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", dir, e->d_name) >=
            (int)sizeof sa.sun_path)
            continue;
        struct stat st;
        if (lstat(sa.sun_path, &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_uid != geteuid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int refused = connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 &&
                      (errno == ECONNREFUSED || errno == ENOENT);
        close(fd);
        if (refused && unlink(sa.sun_path) == 0) {
            removed++;
            cm_log(CM_LOG_DEBUG, "bootstrap: removed %s (its process %ld is gone)", sa.sun_path,
                   pid);
        }
    }
    closedir(d);
    return removed;
}
