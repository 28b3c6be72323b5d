#include "cluster/run.h"

#include <cblas.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "cluster/mcmc.h"
#include "common/bootstrap.h"
#include "common/heartbeat.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/stop.h"
#include "ps/server.h"
#include "worker/models/deep.h"
#include "worker/models/model.h"
#include "worker/sparse.h"
#include "worker/worker.h"

/* Marks a rank whose setup failed, in place of its endpoint, so every rank
 * learns of it from the one allgather and gives up together. */
#define S_FAILED "!"

int cl_preflight(const cm_job *job, int n_ranks, cm_error *err)
{
    int rc = cm_job_validate(job, err);
    if (rc == 0)
        rc = wk_sparse_check_input(job, err);
    if (rc != 0)
        return rc;
    if (n_ranks < job->servers + 2)
        return cm_error_set(err, CM_ECONFIG,
                            "%d ranks cannot run servers = %d: a job needs 1 scheduler, %d "
                            "server%s and at least 1 worker, so at least %d ranks "
                            "(mpirun -np %d, or --local)",
                            n_ranks, job->servers, job->servers, job->servers == 1 ? "" : "s",
                            job->servers + 2, job->servers + 2);
    return 0;
}

/* The job every role runs: fields = 0 resolved from the training data
 * (ffm, deep), since the servers size their tables before any worker
 * reads a line, and the deep net's keys checked. Every rank does the same
 * with the same file, so all agree. */
static int s_resolve(const cm_job *job, cm_job *out, cm_error *err)
{
    *out = *job;
    int f = wk_sparse_fields(job, err);
    if (f < 0)
        return f;
    out->fields = f;
    if (cm_job_model(job)->mlp) {
        wk_mlp_params p;
        int rc = wk_deep_params(out, &p, err);
        /* the roles already fill the cores (threads here, ranks under
         * mpirun): BLAS threads on top of them only contend (a 20x
         * slowdown measured with 2 worker threads on 2 cores) */
        if (rc == 0)
            openblas_set_num_threads(1);
        return rc;
    }
    return 0;
}

/* A worker's inputs must be readable where it runs (hosts may differ). */
static int s_check_files(const cm_job *job, cm_error *err)
{
    const char *paths[2] = {job->train, job->test};
    for (int i = 0; i < 2; i++) {
        if (!paths[i][0])
            continue;
        FILE *f = fopen(paths[i], "rb");
        if (!f)
            return cm_error_set(err, CM_EIO, "%s: cannot read the %s data: %s", paths[i],
                                i ? "test" : "training", strerror(errno));
        fclose(f);
    }
    return 0;
}

/* Logs this process's peak resident memory (each rank's, under MPI). */
static void s_log_peak_memory(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cm_log(CM_LOG_INFO, "peak memory (RSS) of this process: %.0f MiB",
               (double)ru.ru_maxrss / 1024.0);
}

/* Table parameters of the job's model, and (ct may be NULL) their
 * description for checkpoint manifests. */
static int s_tables(const cm_job *job, cm_table_spec *tp, cm_ckpt_table *ct, size_t *n,
                    cm_error *err)
{
    const wk_model_ops *model = wk_model_find(job->model);
    if (!model)
        return cm_error_set(err, CM_ECONFIG, "unknown model '%s'", job->model);
    for (size_t t = 0; t < model->n_tables; t++) {
        model->table_params(job, t, &tp[t]);
        /* the blocks schedule's item rows: co-located workers reach them in
         * the server's memory (worker/blocks.c) */
        tp[t].shared = t == 1 && cm_job_uses_blocks(job);
        if (!ct)
            continue;
        memset(&ct[t], 0, sizeof ct[t]);
        snprintf(ct[t].name, sizeof ct[t].name, "%s", model->table_names[t]);
        ct[t].dim = tp[t].dim;
        ct[t].row_floats = tp[t].dim + cm_optim_state_floats(tp[t].optim.kind, tp[t].dim);
        ct[t].optimizer = tp[t].optim.kind;
        ct[t].zero_prefix = tp[t].zero_prefix;
        ct[t].lr = tp[t].optim.lr;
        ct[t].init_std = tp[t].init_std;
        ct[t].seed = tp[t].seed;
    }
    *n = model->n_tables;
    return 0;
}

/* What a rank's life leaves to its caller, who ends it: the heartbeat
 * (kept through the last barrier) and what a failure it finds does. */
typedef struct {
    cm_hb *hb;
    cm_hb_fail_fn on_fail;
    void *arg;
    int agreed;        /* the error is known to every rank at once (setup failures
                        * seen in an allgather), so the ranks can end together */
    struct s_watch *watch; /* MPI: told once the heartbeats run; NULL locally */
} s_life;

/* ---------------------------------------------------------------------
 * Start-up watchdog (MPI)
 *
 * Until the heartbeats run, the ranks wait for each other in MPI's
 * collectives (MPI_Init, the key exchange, the first allgather), which have
 * no limit: a rank stopped there would hold every other rank forever. This
 * thread gives start-up the job's `timeout`; past it the rank says so and
 * exits without MPI_Finalize, which makes the runtime end every rank.
 * ------------------------------------------------------------------- */

typedef struct s_watch {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int up;          /* the heartbeats run: the watchdog has nothing left to do */
    double limit;    /* seconds start-up may take */
} s_watch;

static void *s_watch_main(void *arg)
{
    s_watch *w = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)w->limit;
    until.tv_nsec += (long)((w->limit - (double)(time_t)w->limit) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->lock);
    int rc = 0;
    while (!w->up && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&w->cond, &w->lock, &until);
    const int up = w->up;
    pthread_mutex_unlock(&w->lock);
    if (up)
        return NULL;
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    const char *rank = getenv("OMPI_COMM_WORLD_RANK");
    fprintf(stderr, "psrec: error: rank %s on %s, pid %d: the job's start-up (MPI, keys, "
            "heartbeats) did not finish within %.0f s (timeout): a rank is stalled or cannot "
            "be reached before heartbeats began; ending the job\n",
            rank ? rank : "?", host, (int)getpid(), w->limit);
    fflush(stderr);
    _exit(1);
}

static void s_watch_up(s_watch *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->up = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* Test hook: PSREC_TEST_STALL_START=<rank> makes that mpirun rank stop
 * before the heartbeats start, as a rank stopped during start-up would. */
static void s_start_stall_hook(cm_boot *b)
{
    const char *v = getenv("PSREC_TEST_STALL_START");
    if (!v || !*v || !cm_boot_is_mpi(b) || atoi(v) != cm_boot_rank(b))
        return;
    for (;;)
        pause();
}

/* Test hook: PSREC_PID_DIR names a directory where each rank of an mpirun
 * job writes rank-<r>.pid once its heartbeat runs, so that tests can stop
 * one rank by its pid. */
static void s_write_pid(int rank)
{
    const char *dir = getenv("PSREC_PID_DIR");
    if (!dir || !*dir)
        return;
    char path[1024], tmp[1040];
    snprintf(path, sizeof path, "%s/rank-%d.pid", dir, rank);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f, "%d\n", (int)getpid());
    /* renamed whole: a reader never sees half a number */
    if (fclose(f) == 0)
        rename(tmp, path);
}

/* Starts this rank's heartbeat: rank 0 binds the monitor and every rank
 * learns its endpoint from one allgather (collective). A monitor that
 * cannot start is known to all, so they give up together. */
static int s_heartbeat(cm_boot *b, const cm_job *job, s_life *life, cm_error *err)
{
    const int rank = cm_boot_rank(b), size = cm_boot_size(b);
    cm_hb_params hp = {
        .van = cm_boot_van(b), .rank = rank, .size = size, .n_servers = job->servers,
        .interval = job->heartbeat, .limit = job->heartbeat * job->heartbeat_misses,
        .on_fail = life->on_fail, .arg = life->arg,
    };
    char mine[CM_ENDPOINT_MAX] = "";
    cm_error e = {0};
    s_start_stall_hook(b);
    if (rank == 0) {
        char ep[CM_ENDPOINT_MAX];
        cm_boot_bind_endpoint(b, "hb", ep);
        life->hb = cm_hb_new(&hp, ep, &e);
        if (life->hb)
            cm_boot_advertise(b, cm_hb_endpoint(life->hb), mine, &e);
        if (e.code)
            snprintf(mine, sizeof mine, S_FAILED "%.200s", e.msg);
    }
    char *all = malloc((size_t)size * CM_ENDPOINT_MAX);
    if (!all) /* the others would wait in the allgather: only an abort ends that */
        return cm_error_set(err, CM_ENOMEM, "out of memory");
    int rc = cm_boot_allgather(b, mine, all, err);
    if (rc == 0 && all[0] == S_FAILED[0]) {
        life->agreed = 1;
        rc = cm_error_set(err, CM_EIO, "the scheduler's heartbeat could not start: %s",
                          all + 1);
    } else if (rc == 0 && rank != 0 && !(life->hb = cm_hb_new(&hp, all, err))) {
        rc = err ? err->code : CM_EIO;
    }
    free(all);
    if (rc == 0)
        s_watch_up(life->watch);
    if (rc == 0 && cm_boot_is_mpi(b))
        s_write_pid(rank);
    return rc;
}

/* Test hook: PSREC_TEST_STALL=<rank> makes that rank of a --local job stall
 * once its role is set up: its heartbeat goes silent and it waits without
 * doing anything, as a stopped process would, until the job is shut down
 * (or 20 timeouts pass). */
static int s_stall_hook(cm_boot *b, const cm_job *job, cm_hb *hb, cm_error *err)
{
    const char *v = getenv("PSREC_TEST_STALL");
    if (!v || !*v || cm_boot_is_mpi(b) || atoi(v) != cm_boot_rank(b))
        return 0;
    /* stall once the heartbeats flow both ways, as a rank stopped in
     * the middle of a job would (bounded by the job's timeout) */
    const int rank = cm_boot_rank(b), size = cm_boot_size(b);
    for (double until = cm_now() + job->timeout; cm_now() < until;) {
        int heard = 1;
        for (int r = rank == 0 ? 1 : 0; r < (rank == 0 ? size : 1); r++)
            heard &= cm_hb_heard(hb, r, NULL, 0);
        if (heard)
            break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    cm_hb_pause(hb);
    cm_sock *idle = cm_sock_new(cm_boot_van(b), CM_SOCK_DEALER, err);
    if (!idle)
        return err ? err->code : CM_EIO;
    cm_frames *f = NULL;
    int rc = cm_sock_recv(idle, &f, (int)(20 * job->timeout * 1000));
    cm_frames_destroy(&f);
    cm_sock_destroy(&idle);
    return cm_error_set(err, rc == 0 ? CM_ESTATE : rc, "rank %d: stalled by PSREC_TEST_STALL",
                        cm_boot_rank(b));
}

/* The scheduler's start-up: its control ROUTER bound and its endpoint
 * advertised in mine; NULL or a failure in *setup. */
static cm_sock *s_setup_scheduler(cm_boot *b, char mine[CM_ENDPOINT_MAX], cm_error *setup)
{
    char bind_ep[CM_ENDPOINT_MAX], bound[CM_ENDPOINT_MAX];
    cm_boot_bind_endpoint(b, "ctl", bind_ep);
    cm_sock *ctl = cm_sock_new(cm_boot_van(b), CM_SOCK_ROUTER, setup);
    if (ctl && cm_sock_bind(ctl, bind_ep, bound) != 0)
        cm_error_set(setup, CM_EIO, "scheduler: cannot bind %s: %s", bind_ep,
                     cm_sock_errmsg(ctl));
    if (!setup->code)
        cm_boot_advertise(b, bound, mine, setup);
    return ctl;
}

/* A server's start-up: its tables and data ROUTER, its endpoint advertised
 * in mine and, with a checkpoint_dir, its mark in the checkpoint root
 * (*token set once written). NULL or a failure in *setup. */
static ps_server *s_setup_server(cm_boot *b, const cm_job *job, cm_hb *hb,
                                 char mine[CM_ENDPOINT_MAX], int *token, cm_error *setup)
{
    const int rank = cm_boot_rank(b);
    char bind_ep[CM_ENDPOINT_MAX];
    cm_table_spec tp[WK_MAX_TABLES];
    size_t n_tables = 0;
    ps_server *srv = NULL;
    cm_boot_bind_endpoint(b, "data", bind_ep);
    if (s_tables(job, tp, NULL, &n_tables, setup) == 0 &&
        (srv = ps_server_new(cm_boot_van(b), bind_ep, tp, n_tables, setup)) != NULL) {
        ps_server_set_index(srv, rank - 1);
        ps_server_set_checkpoints(srv, job->checkpoint_dir, job->resume);
        ps_server_set_heartbeat(srv, hb);
        cm_boot_advertise(b, ps_server_endpoint(srv), mine, setup);
    }
    /* its mark in the checkpoint root, which the scheduler must see
     * (every mark is written before the allgather ends) */
    if (!setup->code && job->checkpoint_dir[0]) {
        char host[256];
        cm_boot_hostname(b, rank, host, sizeof host);
        cm_error e = {0};
        if (cm_ckpt_token_write(job->checkpoint_dir, rank - 1, mine, &e) != 0)
            cm_error_set(setup, e.code, "server %d on host %s: checkpoint_dir: %s", rank - 1,
                         host, e.msg);
        else
            *token = 1;
    }
    return srv;
}

/* After the allgather of endpoints (all: size of them): the first rank
 * that advertised a failure ends this one too, with this rank's own
 * failure (setup) where it had one. */
static int s_any_failed(const char *all, int size, const cm_error *setup, s_life *life,
                        cm_error *err)
{
    for (int r = 0; r < size; r++) {
        const char *ep = all + (size_t)r * CM_ENDPOINT_MAX;
        if (ep[0] != S_FAILED[0])
            continue;
        life->agreed = 1;
        if (setup->code)
            return cm_error_set(err, setup->code, "%s", setup->msg);
        return cm_error_set(err, CM_ESTATE, "rank %d could not start: %s", r, ep + 1);
    }
    return 0;
}

/* A server's run until STOP; a failure says whether the job failed
 * (heartbeats) or the transport did. */
static int s_run_server(ps_server *srv, cm_hb *hb, cm_error *err)
{
    int rc = ps_server_run(srv);
    char why[256];
    if (rc != 0 && cm_hb_failed(hb, why, sizeof why))
        cm_error_set(err, rc, "server: the job failed: %s", why);
    else if (rc != 0)
        cm_error_set(err, rc, "server: transport failed: %s", cm_strerror(rc));
    return rc;
}

/* One rank's whole life, the same under MPI and locally. *loud is set when
 * this rank should print its error itself (the scheduler reports the
 * failures of workers that told it). refused (rank 0): the memory check
 * said no; the ranks stop at the bootstrap, before any input is read. */
static int s_role(cm_boot *b, const cm_job *job, int refused, FILE *out, sch_result *res,
                  int *loud, s_life *life, cm_error *err)
{
    const int rank = cm_boot_rank(b), size = cm_boot_size(b);
    const int n_servers = job->servers, n_workers = size - 1 - n_servers;
    cm_van *van = cm_boot_van(b);
    cm_sock *ctl = NULL;
    ps_server *srv = NULL;
    char *all = NULL;
    char mine[CM_ENDPOINT_MAX] = "";
    cm_error setup = {0};
    int token = 0;
    char (*server_hosts)[256] = NULL; /* the scheduler's: for its messages */
    int rc = s_heartbeat(b, job, life, err);
    if (rc != 0)
        return rc;
    cm_hb *hb = life->hb;
    cm_hb_doing(hb, "setting up");

    if (rank == 0 && refused) {
        cm_log_set_identity("sch", rank);
        cm_error_set(&setup, CM_ECONFIG, "the job does not fit the memory it can see "
                                         "(memory plan above)");
    } else if (rank == 0) {
        cm_log_set_identity("sch", rank);
        ctl = s_setup_scheduler(b, mine, &setup);
    } else if (rank <= n_servers) {
        cm_log_set_identity("ps", rank);
        srv = s_setup_server(b, job, hb, mine, &token, &setup);
    } else {
        cm_log_set_identity("wk", rank);
        s_check_files(job, &setup);
    }
    *loud = rank == 0 || rank <= n_servers || setup.code != 0;
    if (setup.code)
        snprintf(mine, sizeof mine, S_FAILED "%.200s", setup.msg);

    all = malloc((size_t)size * CM_ENDPOINT_MAX);
    if (!all) {
        rc = cm_error_set(err, CM_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = cm_boot_allgather(b, mine, all, err)) != 0 ||
        (rc = s_any_failed(all, size, &setup, life, err)) != 0)
        goto out;

    const char *server_eps[1024];
    if (rank == 0)
        server_hosts = calloc((size_t)n_servers + 1, sizeof *server_hosts);
    const char *host_ptrs[1024];
    for (int i = 0; i < n_servers; i++) {
        server_eps[i] = all + (size_t)(i + 1) * CM_ENDPOINT_MAX;
        if (server_hosts)
            cm_boot_hostname(b, i + 1, server_hosts[i], sizeof server_hosts[i]);
        host_ptrs[i] = server_hosts ? server_hosts[i] : NULL;
    }
    if ((rc = s_stall_hook(b, job, hb, err)) != 0)
        goto out;

    if (rank == 0) {
        cm_table_spec tp[WK_MAX_TABLES];
        cm_ckpt_table ct[WK_MAX_TABLES];
        size_t n_tables = 0;
        if ((rc = s_tables(job, tp, ct, &n_tables, err)) != 0)
            goto out;
        sch_params sp = {
            .job = job, .van = van, .ctl = ctl,
            .n_workers = (uint32_t)n_workers, .n_servers = (uint32_t)n_servers,
            .server_eps = server_eps, .out = out, .tables = ct, .n_tables = n_tables,
            .server_hosts = server_hosts ? host_ptrs : NULL,
            .hb = hb,
            /* under mpirun the reason goes out before the stop does */
            .say_errors_as = life->watch ? "psrec: error: rank 0 (scheduler): " : NULL,
        };
        rc = sch_run(&sp, res, err);
    } else if (rank <= n_servers) {
        rc = s_run_server(srv, hb, err);
    } else {
        wk_params wp = {
            .job = job, .van = van, .rank = rank,
            .index = (uint32_t)(rank - 1 - n_servers), .n_workers = (uint32_t)n_workers,
            .sched_ep = all, .n_servers = (uint32_t)n_servers, .server_eps = server_eps,
            .boot = b, .hb = hb,
        };
        rc = wk_run(&wp, err);
    }
out:
    if (token) /* the scheduler removed it where it sees it; this host's copy */
        cm_ckpt_token_remove(job->checkpoint_dir, rank - 1, mine);
    ps_server_destroy(&srv);
    cm_sock_destroy(&ctl);
    free(server_hosts);
    free(all);
    return rc;
}

/* ---------------------------------------------------------------------
 * Local: every rank a thread
 * ------------------------------------------------------------------- */

/* The first stall a heartbeat finds in a --local job: every thread's waits
 * end when the shared van shuts down, and the job returns this reason. */
typedef struct {
    pthread_mutex_t lock;
    cm_van *van;            /* the group's, set by the first thread */
    int failed;
    char reason[512];
} s_local_fail;

static void s_local_on_fail(void *arg, const char *reason)
{
    s_local_fail *lf = arg;
    pthread_mutex_lock(&lf->lock);
    int first = !lf->failed;
    if (first) {
        lf->failed = 1;
        snprintf(lf->reason, sizeof lf->reason, "%s", reason);
    }
    cm_van *van = lf->van;
    pthread_mutex_unlock(&lf->lock);
    if (first && van)
        cm_van_shutdown(van);
}

typedef struct {
    cm_boot_group *group;
    int rank;
    const cm_job *job;
    FILE *out;
    sch_result *res;
    s_local_fail *fail;
    cm_error err;
    int rc;
} s_thread;

static void *s_thread_main(void *arg)
{
    s_thread *t = arg;
    cm_boot *b = cm_boot_local_new(t->group, t->rank, &t->err);
    if (!b) {
        t->rc = t->err.code ? t->err.code : CM_ESTATE;
        return NULL;
    }
    pthread_mutex_lock(&t->fail->lock);
    t->fail->van = cm_boot_van(b);
    pthread_mutex_unlock(&t->fail->lock);
    int loud = 0;
    s_life life = {.on_fail = s_local_on_fail, .arg = t->fail};
    t->rc = s_role(b, t->job, 0, t->out, t->res, &loud, &life, &t->err);
    /* a goodbye, so that roles ending at different moments are not taken
     * for stalls (a role that failed too: its error, not its silence, is
     * what the job returns). Rank 0 waits for them whether or not it
     * failed: over inproc a rank whose monitor is gone would wait in each
     * send (the van's send timeout) instead of ending. */
    const int wait_ms = (int)(t->job->heartbeat * t->job->heartbeat_misses * 1000) + 2000;
    if (cm_hb_finish(life.hb, t->rank && t->rc ? 1000 : wait_ms) != 0 && t->rc == 0)
        cm_log(CM_LOG_WARN, "heartbeat: %s", t->rank ? "the scheduler did not take the goodbye"
                                                     : "not every rank said goodbye");
    cm_hb_destroy(&life.hb);
    cm_boot_destroy(&b);
    return NULL;
}

int cl_run_local(const cm_job *job, FILE *out, sch_result *res, cm_error *err)
{
    if (job->method == CM_METHOD_MCMC)
        return cl_run_mcmc(job, out, res, err);
    const int size = 1 + job->servers + job->workers;
    int rc = cl_preflight(job, size, err);
    if (rc != 0)
        return rc;
    cm_job *run = malloc(sizeof *run);
    if (!run)
        return cm_error_set(err, CM_ENOMEM, "out of memory");
    if ((rc = s_resolve(job, run, err)) != 0) {
        free(run);
        return rc;
    }
    job = run;
    cm_boot_group *g = cm_boot_group_new(size, err);
    if (!g) {
        free(run);
        return err ? err->code : CM_ENOMEM;
    }
    s_thread *th = calloc((size_t)size, sizeof *th);
    pthread_t *tid = calloc((size_t)size, sizeof *tid);
    if (!th || !tid) {
        rc = cm_error_set(err, CM_ENOMEM, "out of memory");
        goto out;
    }
    s_local_fail fail = {.failed = 0};
    pthread_mutex_init(&fail.lock, NULL);
    int started = 0;
    for (int r = 0; r < size; r++) {
        th[r] = (s_thread){.group = g, .rank = r, .job = job, .out = out, .res = res,
                           .fail = &fail};
        if (pthread_create(&tid[r], NULL, s_thread_main, &th[r]) != 0) {
            /* the started threads would wait for the missing ones forever */
            rc = cm_error_set(err, CM_ENOMEM, "cannot start thread %d of %d", r, size);
            fprintf(stderr, "psrec: fatal: %s\n", err ? err->msg : "");
            abort();
        }
        started++;
    }
    for (int r = 0; r < started; r++)
        pthread_join(tid[r], NULL);
    s_log_peak_memory();
    /* a stall is the root cause of whatever the other threads then saw */
    if (fail.failed)
        rc = cm_error_set(err, CM_ETIMEDOUT, "%s", fail.reason);
    /* the scheduler's verdict first: it names the worker that failed */
    for (int r = 0; r < size && rc == 0; r++)
        if (th[r].rc != 0)
            rc = cm_error_set(err, th[r].rc, "%s", th[r].err.msg);
    pthread_mutex_destroy(&fail.lock);
out:
    free(th);
    free(tid);
    cm_boot_group_destroy(&g);
    free(run);
    return rc;
}

/* ---------------------------------------------------------------------
 * MPI: this process is one rank
 * ------------------------------------------------------------------- */

typedef struct {
    const cm_job *job;
    cl_refuse_fn refuses;
    int refused;
} s_check;

/* ------------------------------------------------------------------------
 * refit: the count of epochs chosen on a carved validation set, trained
 * again on every training example
 * ------------------------------------------------------------------------ */

int cl_refits(const cm_job *job)
{
    /* learned regularization moves l2 by the validation rows all the run;
     * without checkpoints the test file is all a refit could be read by */
    return job->refit && job->method != CM_METHOD_MCMC && !job->regularization &&
           cm_job_model(job)->family != CM_FAMILY_IMPLICIT && !job->validation[0] &&
           job->validation_fraction > 0 && !job->checkpoint_dir[0] && !job->resume[0] &&
           job->test[0];
}

int cl_run_local_refit(const cm_job *job, FILE *out, sch_result *res, cm_error *err)
{
    if (!cl_refits(job))
        return cl_run_local(job, out, res, err);
    cm_job *part = malloc(sizeof *part);
    if (!part)
        return cm_error_set(err, CM_ENOMEM, "out of memory");
    *part = *job;
    part->refit_part_ = 1;
    int rc = cl_run_local(part, out, res, err);
    if (rc != 0 || res->best_epoch < 1 || cm_stop_requested()) {
        free(part);
        return rc; /* a run stopped as asked is not trained again */
    }
    fprintf(out, "refit: training again on all the training examples (the %.4g%% validation "
            "carve too) for the %d epoch%s chosen on validation; refit = 0 keeps the "
            "validation run's model\n", 100 * job->validation_fraction, res->best_epoch,
            res->best_epoch == 1 ? "" : "s");
    fflush(out);
    /* the refit: every training example, the chosen count, its metrics
     * records appended to the validation run's, marked */
    part->refit_part_ = 2;
    part->validation_fraction = 0;
    part->epochs = res->best_epoch;
    part->patience = 0;
    const sch_result chosen = *res;
    rc = cl_run_local(part, out, res, err);
    free(part);
    if (rc != 0)
        return rc;
    /* what chose the count stays in the result */
    res->best_epoch = chosen.best_epoch;
    res->valid_metric = chosen.valid_metric;
    res->early_stopped = chosen.early_stopped;
    res->n_valid = chosen.n_valid;
    return 0;
}

static void *s_check_main(void *arg)
{
    s_check *c = arg;
    c->refused = c->refuses(c->job);
    return NULL;
}

/* Ends the whole job through the MPI runtime. Called from the main thread
 * or from the heartbeat thread: a stalled peer may leave the main thread
 * blocked in a collective or busy in a long compute loop, so the thread
 * that found the failure cannot hand the abort over. Open MPI's MPI_Abort
 * asks the runtime (PMIx) to kill the job and exits, without touching
 * the communication state the main thread may be using; if it ever
 * returned, the process exits non-zero, which mpirun also takes for the
 * end of the job. Only the first caller aborts; a second one waits for the
 * process to end (bounded). */
static atomic_int s_aborting;

static void s_mpi_abort(cm_boot *b)
{
    fflush(stdout);
    fflush(stderr);
    if (atomic_exchange(&s_aborting, 1)) {
        sleep(30);
        _exit(1);
    }
    cm_boot_abort(b, 1);
    _exit(1);
}

/* A heartbeat found a stall (on rank 0: a stalled rank, or another rank's
 * own failure forwarded to it; elsewhere: a stalled scheduler). */
static void s_mpi_on_fail(void *arg, const char *reason)
{
    cm_boot *b = arg;
    fprintf(stderr, "psrec: error: %s (found by rank %d)\n", reason, cm_boot_rank(b));
    s_mpi_abort(b);
}

int cl_run_mpi(const cm_job *job, int *argc, char ***argv, cl_refuse_fn refuses)
{
    cm_error err = {0};
    /* the memory check reads the whole input: it runs while MPI starts
     * (every other rank waits for rank 0 at the bootstrap either way) */
    s_check chk = {job, refuses, 0};
    pthread_t tid;
    int threaded = refuses && pthread_create(&tid, NULL, s_check_main, &chk) == 0;
    static s_watch watch = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    watch.limit = job->timeout;
    pthread_t wtid;
    if (pthread_create(&wtid, NULL, s_watch_main, &watch) == 0)
        pthread_detach(wtid);
    if (refuses && !threaded)
        chk.refused = refuses(job);
    cm_boot_net net = {.host = job->host, .tcp = job->transport == 1};
    cm_boot *b = cm_boot_mpi_new(argc, argv, &net, &err);
    if (threaded)
        pthread_join(tid, NULL);
    if (!b) {
        fprintf(stderr, "psrec: error: %s\n", err.msg);
        return 1;
    }
    cm_boot_wire wire = {.encrypt = (cm_encrypt)job->encrypt, .interface = job->interface};
    if (cm_boot_secure(b, &wire, &err) != 0) {
        fprintf(stderr, "psrec: error: %s\n", err.msg);
        cm_boot_abort(b, 1);
        return 1;
    }
    const int rank = cm_boot_rank(b);
    int rc = cl_preflight(job, cm_boot_size(b), &err);
    cm_job *run = rc == 0 ? malloc(sizeof *run) : NULL;
    if (rc == 0 && !run)
        rc = cm_error_set(&err, CM_ENOMEM, "out of memory");
    if (rc == 0)
        rc = s_resolve(job, run, &err);
    /* under mpirun the rank count decides the workers (the key is for
     * --local); models that scale by it read it from the job */
    if (rc == 0)
        run->workers = cm_boot_size(b) - 1 - run->servers;
    /* a preflight error is the same on every rank: rank 0 says it */
    int loud = rank == 0;
    s_life life = {.on_fail = s_mpi_on_fail, .arg = b, .agreed = rc != 0, .watch = &watch};
    sch_result res;
    sch_result_init(&res);
    if (rc == 0)
        rc = s_role(b, run, chk.refused, stdout, &res, &loud, &life, &err);
    double limit = job->heartbeat * job->heartbeat_misses;
    free(run);
    if (rc != 0 && !life.agreed) {
        /* this rank's own failure: it says it, rank 0 says it with this
         * rank's host and state (a stalled scheduler cannot: then the
         * wait is short), and the runtime ends every rank; never a
         * barrier here, which a stalled peer would hold forever */
        if (!res.error_said)
            fprintf(stderr, "psrec: error: rank %d (%s): %s\n", rank,
                    cm_hb_role(rank, job->servers), err.msg);
        if (rank != 0)
            cm_hb_report(life.hb, err.msg, limit < 2 ? (int)(limit * 1000) : 2000);
        s_mpi_abort(b);
    }
    if (rc != 0 && loud && !res.error_said)
        fprintf(stderr, "psrec: error: %s\n", err.msg);
    /* every rank reached the end: goodbyes first (rank 0 waits for them, and
     * still finds a rank that stalls meanwhile), so that the barrier below
     * waits only for ranks known to be there */
    if (rc == 0) {
        int hr = cm_hb_finish(life.hb, (int)(limit * 1000) + 2000);
        if (hr != 0) {
            fprintf(stderr, "psrec: error: rank %d (%s): %s\n", rank,
                    cm_hb_role(rank, job->servers),
                    rank == 0 ? "not every rank said goodbye at the end of the job"
                              : "the scheduler did not answer the goodbye at the end of the job");
            s_mpi_abort(b);
        }
    }
    s_log_peak_memory();
    cm_error be = {0};
    if (cm_boot_barrier(b, &be) != 0)
        fprintf(stderr, "psrec: %s\n", be.msg);
    cm_hb_destroy(&life.hb);
    cm_boot_destroy(&b);
    return rc == 0 ? 0 : chk.refused ? 2 : 1;
}
