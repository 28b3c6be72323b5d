/* Jobs the integration tests start in the background (mpirun, psrec
 * launch, training runs that are stopped or cut on the way): started with
 * their output in a file, waited for with a limit that only catches hangs,
 * and the small files they leave read back. */
#ifndef PSREC_TESTS_BGJOB_H
#define PSREC_TESTS_BGJOB_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* The whole of a small file ("" if absent), in out (cap bytes). */
static inline void th_read_file(const char *path, char *out, size_t cap)
{
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    fclose(f);
}

static inline double th_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Starts cmd (VAR=value words first allowed) with its stdout and stderr in
 * log; the pid returned is the command's own. pid_dir (may be NULL) goes to
 * the job as PSREC_PID_DIR, where every rank writes its pid; own_group
 * puts it in a process group of its own, so that leftovers can be ended at
 * once (kill(-pid)). */
static inline pid_t th_spawn(const char *cmd, const char *log, const char *pid_dir,
                             int own_group)
{
    static char full[16384];
    snprintf(full, sizeof full, "exec env %s", cmd);
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        if (own_group)
            setpgid(0, 0);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0)
            _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        if (pid_dir)
            setenv("PSREC_PID_DIR", pid_dir, 1);
        execl("/bin/sh", "sh", "-c", full, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Waits for pid (at most limit_s: an upper bound on a hang, never a speed
 * check): its exit status, 128 + the signal that ended it, or -1 when it
 * did not end, after which it is killed and reaped. */
static inline int th_reap(pid_t pid, double limit_s)
{
    const double until = th_clock() + limit_s;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0 || th_clock() >= until)
            break;
        usleep(20 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

/* The pid rank r of a job wrote under pid_dir (PSREC_PID_DIR), or -1
 * until it is there. */
static inline pid_t th_rank_pid(const char *pid_dir, int r)
{
    char path[1200], text[32];
    snprintf(path, sizeof path, "%.1100s/rank-%d.pid", pid_dir, r);
    th_read_file(path, text, sizeof text);
    long v = strtol(text, NULL, 10);
    return v > 1 ? (pid_t)v : -1;
}

#endif
