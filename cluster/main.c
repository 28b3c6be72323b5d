/* psrec: the one binary. `psrec train` runs a role (under mpirun) or a
 * whole cluster (--local); `gen` and `convert` make data. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster/gen_ctr.h"
#include "cluster/launch.h"
#include "cluster/mcmc.h"
#include "cluster/plan.h"
#include "cluster/run.h"
#include "common/config.h"
#include "common/dataset.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/opts.h"
#include "common/stop.h"
#include "common/synth.h"
#include "serve/cli.h"

#define PSREC_VERSION "0.1.0"

static void s_usage(FILE *f)
{
    fprintf(f,
            "psrec %s: distributed parameter-server training for recommendation models\n"
            "\n"
            "usage: psrec COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  train [JOB.ini] [--key value ...]   train a model; run it under\n"
            "        mpirun -np N (rank 0 scheduler, 1..S servers, the rest workers)\n"
            "        or add --local to run every role as a thread of this process\n"
            "  launch [MPIRUN OPTIONS] -- [JOB.ini] [--key value ...]\n"
            "                                      mpirun psrec train, restarted from the\n"
            "                                      newest checkpoint after a failure\n"
            "  plan [JOB.ini] [--ranks N]          per-server and per-worker memory of a job\n"
            "  gen [options]                       write synthetic ratings with a known\n"
            "                                      noise floor (--ctr: click data)\n"
            "  convert INPUT OUTPUT [options]      text ratings -> binary .psrd dataset\n"
            "  export CHECKPOINT --out DIR         checkpoint -> npy, fvecs and .psm files\n"
            "  recommend --model EXPORT --user ID  top-K items for a user\n"
            "  serve --model EXPORT [--bind EP]    ZeroMQ top-K server with hot reload\n"
            "  help [COMMAND]                      this text, or a command's options\n"
            "  version                             print the version\n"
            "\n"
            "`psrec COMMAND --help` lists a command's options.\n",
            PSREC_VERSION);
}

/* -------------------------------------------------------------------------
 * gen
 * ----------------------------------------------------------------------- */

static int s_gen(int argc, char **argv)
{
    if (cl_gen_is_ctr(argc, argv))
        return cl_gen_ctr_main(argc, argv);
    cm_synth_params p = cm_synth_params_default();
    const char *out = "synthetic";
    static const char *const formats[] = {"bin", "text", NULL};
    cm_opt_choice format = {&p.text, formats};
    const cm_opt opts[] = {
        {"out", 0, CM_OPT_STR, &out, "output prefix: writes PREFIX.train.psrd and PREFIX.test.psrd "
                             "(default synthetic)"},
        {"ratings", 0, CM_OPT_U64, &p.n_ratings, "ratings in all, train + test (default 100000; "
                                         "1e8 is fine)"},
        {"users", 0, CM_OPT_U64, &p.n_users, "number of users (default 943)"},
        {"items", 0, CM_OPT_U64, &p.n_items, "number of items (default 1682)"},
        {"rank", 0, CM_OPT_INT, &p.rank, "rank of the planted factors (default 8)"},
        {"noise", 0, CM_OPT_DBL, &p.noise,
         "standard deviation of the rating noise (default 0.5)"},
        {"zipf", 0, CM_OPT_DBL, &p.zipf, "item popularity exponent (default 0.9)"},
        {"mean", 0, CM_OPT_DBL, &p.mean, "global mean rating (default 3.5)"},
        {"test-fraction", 0, CM_OPT_DBL, &p.test_fraction,
         "share of rows held out (default 0.1)"},
        {"seed", 0, CM_OPT_U64, &p.seed, "random seed (default 42)"},
        {"format", 0, CM_OPT_CHOICE, &format, "bin (.psrd, default) or text (.tsv)"},
    };
    const size_t n_opts = sizeof opts / sizeof opts[0];
    const char *pos[1];
    int n_pos = 0;
    cm_error err = {0};
    int rc = cm_opts_parse_cmd(stderr, argc, argv, opts, n_opts, pos, 0, &n_pos);
    if (rc > 0)
        return rc;
    if (rc < 0) {
        printf("usage: psrec gen [options]\n\n"
               "Writes synthetic explicit ratings: global mean + user and item biases +\n"
               "a planted low-rank dot product + Gaussian noise, with Zipf-like item\n"
               "popularity. Prints the noise floor: the best test RMSE any model can\n"
               "reach on the held-out rows.\n\n");
        cm_opts_print(stdout, opts, n_opts);
        return 0;
    }
    if (p.test_fraction > 1 || p.n_users == 0 || p.n_items == 0 || p.rank < 1) {
        fprintf(stderr, "psrec gen: need users, items, rank >= 1 and test-fraction <= 1\n");
        return 2;
    }
    cm_synth_report rep;
    if (cm_synth_write(&p, out, &rep, &err) != 0) {
        fprintf(stderr, "psrec gen: %s\n", err.msg);
        return 1;
    }
    printf("wrote %s (%llu ratings) and %s (%llu ratings)\n"
           "noise floor (best achievable test RMSE): %.4f\n",
           rep.train_path, (unsigned long long)rep.n_train, rep.test_path,
           (unsigned long long)rep.n_test, rep.noise_floor);
    return 0;
}

/* -------------------------------------------------------------------------
 * convert
 * ----------------------------------------------------------------------- */

/* "out.psrd" -> "out.train.psrd" (suffix before a .psrd extension). */
static void s_with_suffix(const char *path, const char *suffix, char *out, size_t n)
{
    size_t len = strlen(path);
    if (len > 5 && strcmp(path + len - 5, ".psrd") == 0)
        snprintf(out, n, "%.*s.%s.psrd", (int)(len - 5), path, suffix);
    else
        snprintf(out, n, "%s.%s.psrd", path, suffix);
}

/* The outputs of a running convert: a signal removes their temporary
 * files (a full-size file is made before the rows are written), then ends
 * the process as the signal would have. */
typedef struct {
    char paths[2][4096];
    char tmps[2][4200]; /* the names cm_atomic writes to first (common/atomic.h) */
    int n;
} s_outputs;

/* In the signal handler: async-signal-safe calls only. */
static void s_convert_signal(int sig, int count, pid_t from, void *arg)
{
    (void)count;
    (void)from;
    const s_outputs *o = arg;
    for (int i = 0; i < o->n; i++)
        unlink(o->tmps[i]);
    static const char msg[] = "psrec convert: stopped by a signal; temporary files removed\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(128 + sig);
}

static int s_convert(int argc, char **argv)
{
    double test_fraction = 0;
    uint64_t seed = 1, max_bad = 10;
    const cm_opt opts[] = {
        {"test-fraction", 0, CM_OPT_DBL, &test_fraction,
         "hold out this share of rows: writes OUTPUT's stem + .train.psrd and .test.psrd "
         "(default 0: one file)"},
        {"seed", 0, CM_OPT_U64, &seed, "seed of the split (default 1)"},
        {"max-bad-lines", 0, CM_OPT_U64, &max_bad, "give up after this many malformed lines "
                                           "(default 10)"},
    };
    const size_t n_opts = sizeof opts / sizeof opts[0];
    const char *pos[2];
    int n_pos = 0;
    cm_error err = {0};
    int prc = cm_opts_parse_cmd(stderr, argc, argv, opts, n_opts, pos, 2, &n_pos);
    if (prc > 0)
        return prc;
    if (prc < 0) {
        printf("usage: psrec convert INPUT OUTPUT [options]\n\n"
               "Reads ratings as text (`user item rating [timestamp]` separated by '::',\n"
               "tabs, commas or spaces; a CSV header line is skipped) and writes psrec's\n"
               "binary, mmap-able, checksummed dataset (.psrd).\n\n");
        cm_opts_print(stdout, opts, n_opts);
        return 0;
    }
    if (n_pos != 2) {
        fprintf(stderr, "psrec convert: need INPUT and OUTPUT (see --help)\n");
        return 2;
    }
    if (test_fraction < 0 || test_fraction >= 1) {
        fprintf(stderr, "psrec convert: --test-fraction must be in [0, 1)\n");
        return 2;
    }
    static s_outputs outs;
    if (test_fraction == 0) {
        snprintf(outs.paths[0], sizeof outs.paths[0], "%s", pos[1]);
        outs.n = 1;
    } else {
        s_with_suffix(pos[1], "train", outs.paths[0], sizeof outs.paths[0]);
        s_with_suffix(pos[1], "test", outs.paths[1], sizeof outs.paths[1]);
        outs.n = 2;
    }
    for (int i = 0; i < outs.n; i++) {
        /* through a local buffer: the compiler cannot tell the two arrays
         * of outs apart when it looks for overlap */
        char tmp[sizeof outs.tmps[i]];
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", outs.paths[i], (long)getpid());
        memcpy(outs.tmps[i], tmp, sizeof tmp);
    }
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    if (cm_stop_watch(sigs, sizeof sigs / sizeof sigs[0], s_convert_signal, &outs, &err) != 0) {
        fprintf(stderr, "psrec convert: %s\n", err.msg);
        return 1;
    }
    cm_load_opts lo = cm_load_opts_default();
    lo.max_bad_lines = (long)max_bad;
    cm_ratings all = {0}, train = {0}, test = {0};
    int rc = cm_ratings_load(pos[0], &lo, &all, &err);
    if (rc == 0 && test_fraction == 0) {
        rc = cm_ratings_write_bin(pos[1], &all, pos[0], &err);
        if (rc == 0)
            printf("wrote %s: %zu ratings (%zu malformed lines skipped)\n", pos[1], all.n,
                   all.bad_lines);
    } else if (rc == 0) {
        const char *tp = outs.paths[0], *sp = outs.paths[1];
        rc = cm_ratings_split(&all, test_fraction, seed, &train, &test, &err);
        if (rc == 0)
            rc = cm_ratings_write_bin(tp, &train, pos[0], &err);
        if (rc == 0)
            rc = cm_ratings_write_bin(sp, &test, pos[0], &err);
        if (rc == 0)
            printf("wrote %s (%zu ratings) and %s (%zu ratings); %zu malformed lines "
                   "skipped\n",
                   tp, train.n, sp, test.n, all.bad_lines);
    }
    if (rc != 0)
        fprintf(stderr, "psrec convert: %s\n", err.msg);
    cm_ratings_free(&all);
    cm_ratings_free(&train);
    cm_ratings_free(&test);
    return rc == 0 ? 0 : 1;
}

/* -------------------------------------------------------------------------
 * train
 * ----------------------------------------------------------------------- */

/* The rank of this process if started by a launcher, else -1. */
static int s_launcher_rank(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return atoi(v);
    }
    return -1;
}

/* -------------------------------------------------------------------------
 * plan (and train's memory check)
 * ----------------------------------------------------------------------- */

/* The world size a launcher gives, else -1. */
static int s_launcher_size(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return atoi(v);
    }
    return -1;
}

/* 1 (after printing the table and why) when the job would not fit. Under
 * mpirun only rank 0 checks, while MPI starts (cl_run_mpi), and a refusal
 * stops every rank at the bootstrap. A plan that cannot be made is left
 * to the run. */
static int s_plan_refuses(const cm_job *job)
{
    int size = job->local ? 0 : s_launcher_size();
    int workers = job->local ? job->workers : size - 1 - job->servers;
    if (workers < 1)
        return 0;
    cl_plan plan;
    cm_error err = {0};
    if (cl_plan_estimate(job, job->servers, workers, &plan, &err) != 0)
        return 0;
    if (!job->local) {
        const char *ls = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
        if (!ls || !*ls)
            ls = getenv("MPI_LOCALNRANKS");
        plan.avail = cl_plan_available(job, ls && *ls ? atoi(ls) : size, plan.avail_how,
                                       sizeof plan.avail_how);
    }
    if (cl_plan_check(&plan, &err) == 0)
        return 0;
    cl_plan_print(stderr, &plan);
    fprintf(stderr, "\npsrec train: %s\n", err.msg);
    return 1;
}

/* The first `--name` of argv that is a near miss of plan's own --ranks
 * (which the job's key table cannot suggest), or NULL. */
static const char *s_near_ranks(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0)
            continue;
        char name[CM_OPT_NAME_MAX + 1];
        snprintf(name, sizeof name, "%.*s", (int)strcspn(argv[i] + 2, "="), argv[i] + 2);
        size_t d = cm_opt_distance(name, "ranks");
        if (d > 0 && d <= 2 && d < strlen(name))
            return argv[i];
    }
    return NULL;
}

static int s_plan(int argc, char **argv)
{
    /* --ranks N is plan's own; everything else is a job key */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    int n = 0, ranks = 0;
    cm_error err = {0};
    if (!rest) {
        fprintf(stderr, "psrec plan: out of memory\n");
        return 1;
    }
    for (int i = 0; i < argc; i++) {
        const char *v = NULL;
        if (strncmp(argv[i], "--ranks=", 8) == 0)
            v = argv[i] + 8;
        else if (strcmp(argv[i], "--ranks") == 0)
            v = i + 1 < argc ? argv[++i] : "";
        else {
            rest[n++] = argv[i];
            continue;
        }
        char *end = NULL;
        long r = strtol(v, &end, 10);
        if (!*v || *end || r < 3 || r > 1 << 20) {
            fprintf(stderr, "psrec plan: --ranks: expected an integer >= 3, got '%s'\n", v);
            free(rest);
            return 2;
        }
        ranks = (int)r;
    }
    cm_job job = cm_job_default();
    int help = 0, rc = cm_job_parse_args(&job, n, rest, &help, &err);
    free(rest);
    if (rc != 0) {
        const char *near = s_near_ranks(argc, argv);
        if (near)
            fprintf(stderr, "psrec plan: %.*s: unknown option (did you mean --ranks?)\n",
                    (int)strcspn(near, "="), near);
        else
            fprintf(stderr, "psrec plan: %s\n", err.msg);
        return 2;
    }
    if (help) {
        printf("usage: psrec plan [JOB.ini] [--key value ...] [--ranks N | --workers N]\n\n"
               "Counts the job's data (users, items, ratings; fm: feature keys) and prints\n"
               "the memory of each server and worker process: rows x dim x 4 bytes,\n"
               "optimizer state, slot padding, hash index, message and batch buffers,\n"
               "the worker's shard, and what loading the input holds; then whether the\n"
               "largest process fits memory_limit (default: MemAvailable / ranks on\n"
               "this host). `psrec train` refuses a job that does not fit.\n\n"
               "  --ranks N     size of an mpirun job: 1 scheduler, `servers` servers,\n"
               "                the rest workers (default: --local with `workers`)\n"
               "  --workers N   workers of a --local job (default 2)\n\n"
               "Every job key is accepted (see `psrec train --help`); docs/planner.md.\n");
        return 0;
    }
    cm_job_model_defaults(&job);
    if (cm_job_validate(&job, &err) != 0) {
        fprintf(stderr, "psrec plan: %s\n", err.msg);
        return 2;
    }
    int workers = job.workers;
    if (ranks) {
        job.local = 0;
        workers = ranks - 1 - job.servers;
        if (workers < 1) {
            fprintf(stderr, "psrec plan: %d ranks leave no worker beside 1 scheduler and %d "
                            "server%s\n", ranks, job.servers, job.servers == 1 ? "" : "s");
            return 2;
        }
    } else {
        job.local = 1;
    }
    cl_plan plan;
    if (cl_plan_estimate(&job, job.servers, workers, &plan, &err) != 0) {
        fprintf(stderr, "psrec plan: %s\n", err.msg);
        return 1;
    }
    cl_plan_print(stdout, &plan);
    return 0;
}

/* 1 when this rank was started by Open MPI's mpirun or daemon. */
static int s_under_ompi;

/* SIGTERM (Slurm before preemption or at the time limit) or SIGUSR1
 * (what mpirun passes on to every rank, and psrec launch sends it): the
 * first asks the scheduler to end the job after the running epoch, with a
 * last checkpoint when checkpoint_dir is set; a second SIGTERM ends this
 * process now. So does a SIGTERM from the Open MPI process that started
 * this rank: that is the runtime ending the job after another rank died,
 * which must not wait for the SIGKILL that follows. */
static void s_train_signal(int sig, int count, pid_t from, void *arg)
{
    /* in the signal handler: async-signal-safe calls only */
    static const char msg[] = "psrec train: stop signal: the job stops after this epoch (with "
                              "a checkpoint when checkpoint_dir is set); SIGTERM again stops "
                              "it at once\n";
    static volatile sig_atomic_t terms;
    if (sig == SIGTERM && (terms++ > 0 || (s_under_ompi && from > 0 && from == getppid())))
        _exit(128 + sig);
    if (count == 1 && *(const int *)arg) {
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
    }
}

/* With PSREC_PID_DIR set (tests, operators), each process writes its pid
 * to DIR/rank-R.pid (DIR/local.pid with --local), whole or not at all, so
 * a fault can be aimed at one rank. */
static void s_write_pid_file(int lrank)
{
    const char *dir = getenv("PSREC_PID_DIR");
    if (!dir || !*dir)
        return;
    char path[4096], tmp[4200];
    if (lrank >= 0)
        snprintf(path, sizeof path, "%s/rank-%d.pid", dir, lrank);
    else
        snprintf(path, sizeof path, "%s/local.pid", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    int ok = f != NULL && fprintf(f, "%ld\n", (long)getpid()) > 0;
    if (f && fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        fprintf(stderr, "psrec train: PSREC_PID_DIR: cannot write %s: %s\n", path,
                strerror(errno));
        unlink(tmp);
    }
}

/* --local: the job in this process, run again after a failure up to
 * `restarts` times, from the newest intact checkpoint. */
static int s_train_local(cm_job *job, cl_mcmc_data *loaded)
{
    cm_error err = {0};
    if (job->method == CM_METHOD_MCMC) {
        /* the sampler, from the data method auto read (restarts is sgd's) */
        sch_result res;
        if (cl_run_mcmc_loaded(job, loaded, stdout, &res, &err) == 0)
            return 0;
        fprintf(stderr, "psrec train: error: %s\n", err.msg);
        return 1;
    }
    cl_mcmc_data_free(&loaded);
    for (int attempt = 0;; attempt++) {
        sch_result res;
        if (cl_run_local_refit(job, stdout, &res, &err) == 0)
            return 0;
        fprintf(stderr, "psrec train: error: %s\n", err.msg);
        if (cm_stop_requested() || attempt >= job->restarts)
            return 1;
        const double d = cl_launch_delay(job->restart_backoff, attempt + 1);
        fprintf(stderr, "psrec train: restart %d of %d in %.3g s, %s\n", attempt + 1,
                job->restarts, d, job->checkpoint_dir[0]
                                      ? "from the newest intact checkpoint"
                                      : "from scratch (no checkpoint_dir)");
        for (double t = 0; t < d && !cm_stop_requested(); t += 0.05)
            nanosleep(&(struct timespec){0, 50000000L}, NULL);
        if (cm_stop_requested())
            return 1;
        if (job->checkpoint_dir[0])
            snprintf(job->resume, sizeof job->resume, "auto");
    }
}

/* The exit status of a rank that refuses the job before MPI starts, for
 * a reason every rank finds alike (its arguments, keys, environment):
 * rank 0 says why and fails the job; the others leave quietly with 0,
 * since the first rank to fail would otherwise make mpirun end the rest,
 * rank 0 too, before it had printed the reason (seen under the
 * sanitizers, whose start is slow). */
static int s_refused(int lrank)
{
    return lrank > 0 ? 0 : 2;
}

/* method mcmc: one process samples, with --local or as the only rank. */
static int s_train_mcmc(const cm_job *job, int lrank)
{
    const char *size = getenv("OMPI_COMM_WORLD_SIZE");
    if (size && atoi(size) > 1) {
        if (lrank <= 0)
            fprintf(stderr, "psrec train: method mcmc samples in one process; run it with "
                            "--local (or mpirun -np 1), or use method sgd to train on "
                            "%s ranks\n", size);
        return s_refused(lrank);
    }
    cm_error err = {0};
    sch_result res;
    if (cl_run_mcmc(job, stdout, &res, &err) != 0) {
        fprintf(stderr, "psrec train: error: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static int s_train(int argc, char **argv, int *pargc, char ***pargv)
{
    cm_job job = cm_job_default();
    cm_error err = {0};
    int help = 0;
    const int lrank = s_launcher_rank();
    if (cm_job_parse_args(&job, argc, argv, &help, &err) != 0) {
        if (lrank <= 0)
            fprintf(stderr, "psrec train: %s\n", err.msg);
        return s_refused(lrank);
    }
    if (help) {
        if (lrank <= 0) {
            printf("usage: psrec train [JOB.ini] [--key value ...] [--local]\n\n"
                   "  mpirun -np N psrec train job.ini   rank 0 schedules, ranks 1..servers\n"
                   "                                     serve parameters, the rest work\n"
                   "  psrec train job.ini --local        the same roles as threads, no MPI\n\n"
                   "Every key can be set in the job file (key = value) or on the command\n"
                   "line (--key value); the command line wins.\n\n");
            cm_job_print_help(stdout, 0);
        }
        return 0;
    }
    cm_job_model_defaults(&job);
    if (cm_job_validate(&job, &err) != 0) {
        if (lrank <= 0)
            fprintf(stderr, "psrec train: %s\n", err.msg);
        return s_refused(lrank);
    }
    cm_log_set_level(job.log_level);
    cm_log_set_identity("psrec", -1);
    cl_mcmc_data *loaded = NULL; /* what settling method auto read, for mcmc */
    if (job.method == CM_METHOD_AUTO) {
        char why[256];
        cl_method_settle(&job, job.local, why, sizeof why, &loaded);
        cm_job_model_defaults(&job); /* mcmc's own where it is mcmc */
        if (lrank <= 0 && cm_job_model(&job)->quadratic)
            printf("method %s (auto: %s)\n", job.method == CM_METHOD_MCMC ? "mcmc" : "sgd",
                   why);
    }
    if (!job.local || job.method != CM_METHOD_MCMC)
        cl_mcmc_data_free(&loaded); /* only a --local job settles to mcmc */
    if (job.method == CM_METHOD_MCMC && !job.local)
        return s_train_mcmc(&job, lrank);
    if (job.local && s_plan_refuses(&job)) {
        cl_mcmc_data_free(&loaded);
        return 2;
    }
    /* from here on a stop signal is a request, in every thread
     * (common/stop.h); installed before MPI starts */
    static int loud;
    loud = lrank <= 0;
    s_under_ompi = getenv("OMPI_COMM_WORLD_RANK") != NULL;
    const int sigs[] = {SIGTERM, SIGUSR1};
    if (cm_stop_watch(sigs, 2, s_train_signal, &loud, &err) != 0)
        cm_log(CM_LOG_WARN, "%s; SIGTERM will end the job without a last checkpoint", err.msg);
    s_write_pid_file(job.local ? -1 : lrank);
    if (job.local)
        return s_train_local(&job, loaded);
    if (job.restarts > 0 && lrank <= 0 && !getenv("PSREC_LAUNCHED"))
        fprintf(stderr, "psrec train: restarts = %d needs `psrec launch` to start mpirun "
                        "(a rank cannot restart the job); this run will not restart\n",
                job.restarts);
    if (lrank < 0 && !job.allow_singleton) {
        fprintf(stderr,
                "psrec train: not started by mpirun; run `mpirun -np %d psrec train ...` "
                "(1 scheduler, %d server%s, workers) or add --local\n",
                job.servers + 3, job.servers, job.servers == 1 ? "" : "s");
        return 2;
    }
    /* under mpirun rank 0 checks the memory while MPI starts */
    return cl_run_mpi(&job, pargc, pargv, lrank <= 0 ? s_plan_refuses : NULL);
}

/* The subcommands besides train, which also needs the process's own argv
 * for MPI. Each takes argv[0] = its name. */
static const struct {
    const char *name;
    int (*main)(int argc, char **argv);
} s_cmds[] = {
    {"plan", s_plan},
    {"launch", cl_launch_main},
    {"gen", s_gen},
    {"convert", s_convert},
    {"export", sv_export_main},
    {"recommend", sv_recommend_main},
    {"serve", sv_serve_main},
};
#define S_NCMDS (sizeof s_cmds / sizeof s_cmds[0])

static const char *s_cmd_name(const void *table, size_t i)
{
    (void)table;
    static const char *const extra[] = {"train", "help", "version"};
    return i < S_NCMDS ? s_cmds[i].name : extra[i - S_NCMDS];
}

/* Runs the command argv[0] (not train); -1 when there is none. */
static int s_dispatch(int argc, char **argv)
{
    for (size_t i = 0; i < S_NCMDS; i++)
        if (strcmp(argv[0], s_cmds[i].name) == 0)
            return s_cmds[i].main(argc, argv);
    return -1;
}

int main(int argc, char **argv)
{
    cm_mem_keep_buffers();
    if (argc < 2) {
        s_usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        if (argc > 2 && strcmp(cmd, "help") == 0) {
            char *sub[] = {argv[2], "--help", NULL};
            if (strcmp(sub[0], "train") == 0) {
                int n = 2;
                char **v = sub;
                return s_train(n, v, &n, &v);
            }
            int rc = s_dispatch(2, sub);
            if (rc >= 0)
                return rc;
        }
        s_usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("psrec %s\n", PSREC_VERSION);
        return 0;
    }
    if (strcmp(cmd, "train") == 0)
        return s_train(argc - 1, argv + 1, &argc, &argv);
    int rc = s_dispatch(argc - 1, argv + 1);
    if (rc >= 0)
        return rc;
    const char *near = cm_opt_suggest(cmd, s_cmd_name, NULL, S_NCMDS + 3);
    if (near)
        fprintf(stderr, "psrec: unknown command '%s' (did you mean '%s'?)\n\n", cmd, near);
    else
        fprintf(stderr, "psrec: unknown command '%s'\n\n", cmd);
    s_usage(stderr);
    return 2;
}
