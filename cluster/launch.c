#include "cluster/launch.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/config.h"
#include "common/stop.h"

/* Exit status of a job refused before it ran (configuration, memory
 * plan): the same refusal would come again, so it is not restarted. */
#define S_REFUSED 2
/* Exit status of a command that could not be started. */
#define S_NOEXEC 127

double cl_launch_delay(double backoff, int restart)
{
    if (backoff <= 0 || restart < 1)
        return 0;
    double d = backoff;
    for (int i = 1; i < restart && d < CL_LAUNCH_MAX_DELAY; i++)
        d *= 2;
    return d < CL_LAUNCH_MAX_DELAY ? d : CL_LAUNCH_MAX_DELAY;
}

char **cl_launch_argv(const char *mpirun, char **mpi_opts, int n_mpi, const char *self,
                      char **train, int n_train, int resume_auto)
{
    char **v = calloc((size_t)n_mpi + (size_t)n_train + 6, sizeof *v);
    if (!v)
        return NULL;
    int k = 0;
    v[k++] = (char *)mpirun;
    for (int i = 0; i < n_mpi; i++)
        v[k++] = mpi_opts[i];
    v[k++] = (char *)self;
    v[k++] = "train";
    for (int i = 0; i < n_train; i++)
        v[k++] = train[i];
    /* last: the command line's last value of a key wins */
    if (resume_auto) {
        v[k++] = "--resume";
        v[k++] = "auto";
    }
    v[k] = NULL;
    return v;
}

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: psrec launch [MPIRUN OPTIONS] -- [JOB.ini] [--key value ...]\n\n"
            "Runs `mpirun MPIRUN OPTIONS psrec train JOB.ini ...` and, when it fails,\n"
            "runs it again up to `restarts` times (a job key), each time from the\n"
            "newest intact checkpoint under checkpoint_dir (--resume auto: from scratch\n"
            "while there is none), waiting restart_backoff seconds before the first\n"
            "restart and twice as long before each further one (at most %.0f s).\n"
            "A job refused before it ran (exit status 2) is not restarted. SIGTERM,\n"
            "SIGINT or SIGHUP ends the loop: the first reaches every rank as SIGUSR1\n"
            "(mpirun passes it on), so the job stops after the running epoch with a\n"
            "last checkpoint; a second is passed to mpirun as it is.\n\n"
            "  psrec launch -np 8 --hostfile hosts -- job.ini --restarts 3\n\n"
            "PSREC_MPIRUN names another mpirun. docs/checkpoints.md, \"Restarts\".\n",
            CL_LAUNCH_MAX_DELAY);
}

/* The running attempt's pid, for the signal thread. */
static atomic_int s_child;

/* The first signal becomes SIGUSR1 for mpirun, which passes it on to
 * every rank: the job stops after the running epoch with a last
 * checkpoint (mpirun itself would end the ranks at once on SIGTERM). A
 * second signal is passed on as it is. */
static void s_forward(int sig, int count, pid_t from, void *arg)
{
    (void)arg;
    (void)from;
    pid_t c = (pid_t)atomic_load(&s_child);
    if (c > 0)
        kill(c, count == 1 ? SIGUSR1 : sig);
}

/* Waits secs, or less when a stop is requested. */
static void s_wait(double secs)
{
    const double step = 0.05;
    for (double t = 0; t < secs && !cm_stop_requested(); t += step) {
        struct timespec ts = {0, (long)(step * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* One attempt: runs v to its end. The exit status, 128 + signal when a
 * signal ended it, S_NOEXEC when it could not start. */
static int s_attempt(char **v, int attempt)
{
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "psrec launch: cannot fork: %s\n", strerror(errno));
        return S_NOEXEC;
    }
    if (pid == 0) {
        /* the launcher blocks the signals it forwards; mpirun must not */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        char a[32];
        snprintf(a, sizeof a, "%d", attempt);
        setenv("PSREC_LAUNCH_ATTEMPT", a, 1);
        execvp(v[0], v);
        fprintf(stderr, "psrec launch: cannot run %s: %s\n", v[0], strerror(errno));
        _exit(S_NOEXEC);
    }
    atomic_store(&s_child, (int)pid);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    atomic_store(&s_child, 0);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return WIFEXITED(st) ? WEXITSTATUS(st) : S_NOEXEC;
}

/* The job's arguments (after `--`) checked here, so a typo fails at once,
 * not N times: -1 when the job may run (*job filled), else the exit
 * status. */
static int s_check_job(char **train, int n_train, cm_job *job)
{
    char **targs = calloc((size_t)n_train + 2, sizeof *targs);
    if (!targs) {
        fprintf(stderr, "psrec launch: out of memory\n");
        return 1;
    }
    targs[0] = "train";
    for (int i = 0; i < n_train; i++)
        targs[i + 1] = train[i];
    *job = cm_job_default();
    cm_error err = {0};
    int help = 0, rc = cm_job_parse_args(job, n_train + 1, targs, &help, &err);
    free(targs);
    if (rc == 0 && !help) {
        cm_job_model_defaults(job);
        rc = cm_job_validate(job, &err);
    }
    if (rc == 0 && !help && !job->local)
        return -1;
    if (rc != 0)
        fprintf(stderr, "psrec launch: %s\n", err.msg);
    else if (job->local)
        fprintf(stderr, "psrec launch: runs mpirun; a --local job restarts by itself "
                        "(psrec train --local --restarts N)\n");
    else
        s_usage(stdout);
    return rc == 0 && help ? 0 : S_REFUSED;
}

/* After attempt `attempt` ended with `status`: -1 to restart (after the
 * back-off, said on stderr), else the exit status to end with. */
static int s_after_attempt(const cm_job *job, int attempt, int status)
{
    if (status == 0) {
        if (attempt > 0)
            fprintf(stderr, "psrec launch: the job finished after %d restart%s\n", attempt,
                    attempt == 1 ? "" : "s");
        return 0;
    }
    const int sig = cm_stop_requested();
    if (sig) {
        fprintf(stderr, "psrec launch: stopped by signal %d (%s); not restarting (exit "
                        "status %d)\n", sig, strsignal(sig), status);
        return status;
    }
    if (status == S_REFUSED || status == S_NOEXEC) {
        fprintf(stderr, "psrec launch: the job was %s (exit status %d); not restarting\n",
                status == S_REFUSED ? "refused before it ran" : "not started", status);
        return status;
    }
    if (attempt >= job->restarts) {
        if (job->restarts > 0)
            fprintf(stderr, "psrec launch: giving up: attempt %d of %d failed (exit status "
                            "%d)\n", attempt + 1, job->restarts + 1, status);
        return status;
    }
    const double d = cl_launch_delay(job->restart_backoff, attempt + 1);
    if (job->checkpoint_dir[0])
        fprintf(stderr, "psrec launch: attempt %d of %d failed (exit status %d); restarting "
                        "in %.3g s from the newest intact checkpoint under %s\n",
                attempt + 1, job->restarts + 1, status, d, job->checkpoint_dir);
    else
        fprintf(stderr, "psrec launch: attempt %d of %d failed (exit status %d); restarting "
                        "in %.3g s from scratch (no checkpoint_dir)\n",
                attempt + 1, job->restarts + 1, status, d);
    s_wait(d);
    return cm_stop_requested() ? status : -1;
}

int cl_launch_main(int argc, char **argv)
{
    int dd = -1;
    for (int i = 1; i < argc && dd < 0; i++) {
        if (strcmp(argv[i], "--") == 0)
            dd = i;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            s_usage(stdout);
            return 0;
        }
    }
    if (dd < 0) {
        fprintf(stderr, "psrec launch: missing `--` between the mpirun options and the job\n\n");
        s_usage(stderr);
        return S_REFUSED;
    }
    char **mpi = argv + 1, **train = argv + dd + 1;
    const int n_mpi = dd - 1, n_train = argc - dd - 1;
    cm_job job;
    int rc = s_check_job(train, n_train, &job);
    if (rc >= 0)
        return rc;

    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "psrec launch: cannot find this program (/proc/self/exe): %s\n",
                strerror(errno));
        return 1;
    }
    self[n] = '\0';
    const char *mpirun = getenv("PSREC_MPIRUN");
    if (!mpirun || !*mpirun)
        mpirun = "mpirun";
    /* the ranks learn that restarts are in hand (train warns otherwise) */
    setenv("PSREC_LAUNCHED", "1", 1);
    const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
    cm_error err = {0};
    if (cm_stop_watch(sigs, sizeof sigs / sizeof sigs[0], s_forward, NULL, &err) != 0) {
        fprintf(stderr, "psrec launch: %s\n", err.msg);
        return 1;
    }
    for (int attempt = 0;; attempt++) {
        char **v = cl_launch_argv(mpirun, mpi, n_mpi, self, train, n_train,
                                  attempt > 0 && job.checkpoint_dir[0]);
        if (!v) {
            fprintf(stderr, "psrec launch: out of memory\n");
            return 1;
        }
        const int status = s_attempt(v, attempt);
        free(v);
        if ((rc = s_after_attempt(&job, attempt, status)) >= 0)
            return rc;
    }
}
