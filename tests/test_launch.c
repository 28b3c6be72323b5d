/* Tests for cluster/launch.c (`psrec launch`) and common/stop.c.
 *
 * The launcher runs a stand-in for mpirun (PSREC_MPIRUN, a shell script
 * that logs its arguments and fails a set number of times), so restarts,
 * `--resume auto`, refusals and signal forwarding are seen exactly. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster/launch.h"
#include "common/stop.h"
#include "tmpdir.h"

static void s_init(void)
{
    th_tmpdir_make("launch");
}

TestSuite(launch, .init = s_init, .fini = th_tmpdir_remove, .timeout = 120);

Test(launch, delay_doubles_up_to_the_cap)
{
    cr_expect_float_eq(cl_launch_delay(2, 1), 2, 1e-12);
    cr_expect_float_eq(cl_launch_delay(2, 2), 4, 1e-12);
    cr_expect_float_eq(cl_launch_delay(2, 4), 16, 1e-12);
    cr_expect_float_eq(cl_launch_delay(2, 100), CL_LAUNCH_MAX_DELAY, 1e-12);
    cr_expect_float_eq(cl_launch_delay(1000, 1), CL_LAUNCH_MAX_DELAY, 1e-12);
    cr_expect_float_eq(cl_launch_delay(0, 3), 0, 1e-12);
    cr_expect_float_eq(cl_launch_delay(2, 0), 0, 1e-12);
}

Test(launch, argv_of_an_attempt)
{
    char *mpi[] = {"-np", "4"};
    char *train[] = {"job.ini", "--restarts", "2"};
    char **v = cl_launch_argv("mpirun", mpi, 2, "/bin/psrec", train, 3, 0);
    cr_assert_not_null(v);
    const char *want[] = {"mpirun", "-np", "4", "/bin/psrec", "train", "job.ini", "--restarts",
                          "2", NULL};
    for (int i = 0; want[i]; i++)
        cr_expect_str_eq(v[i], want[i]);
    cr_expect_null(v[8]);
    free(v);
    v = cl_launch_argv("mpirun", mpi, 0, "/bin/psrec", train, 1, 1);
    cr_assert_not_null(v);
    const char *again[] = {"mpirun", "/bin/psrec", "train", "job.ini", "--resume", "auto",
                           NULL};
    for (int i = 0; again[i]; i++)
        cr_expect_str_eq(v[i], again[i]);
    cr_expect_null(v[6]);
    free(v);
}

/* Writes the stand-in mpirun: appends its arguments as one line to
 * th_dir/calls, then exits with the next code of th_dir/codes (one a
 * line; 0 when they run out). With hang, it waits for SIGUSR1 instead
 * and logs "USR1". */
static const char *s_fake(int hang)
{
    static char path[2][512];
    snprintf(path[hang], sizeof path[hang], "%s", th_path(hang ? "mpirun-hang" : "mpirun-fake"));
    FILE *f = fopen(path[hang], "w");
    cr_assert_not_null(f);
    fprintf(f,
            "#!/bin/sh\n"
            "echo \"$*\" >> %s\n"
            "n=$(wc -l < %s)\n"
            "code=$(sed -n \"${n}p\" %s 2>/dev/null)\n"
            "exit ${code:-0}\n",
            th_path("calls"), th_path("calls"), th_path("codes"));
    fclose(f);
    if (hang) {
        f = fopen(path[hang], "w");
        cr_assert_not_null(f);
        fprintf(f,
                "#!/bin/sh\n"
                "echo \"$*\" >> %s\n"
                "trap 'echo USR1 >> %s; exit 1' USR1\n"
                "touch %s\n"
                "while :; do sleep 0.05; done\n",
                th_path("calls"), th_path("calls"), th_path("started"));
        fclose(f);
    }
    cr_assert_eq(chmod(path[hang], 0755), 0);
    return path[hang];
}

static void s_codes(const char *codes)
{
    FILE *f = fopen(th_path("codes"), "w");
    cr_assert_not_null(f);
    fputs(codes, f);
    fclose(f);
    unlink(th_path("calls"));
}

/* Runs `psrec launch args` with the stand-in; the exit status. */
static int s_launch(const char *fake, const char *args, char *out, size_t cap)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "PSREC_MPIRUN=%s %s launch %s 2>&1", fake, PSREC_BINARY, args);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Lines of th_dir/calls into lines[] (at most 8); how many. */
static int s_calls(char lines[][1024])
{
    FILE *f = fopen(th_path("calls"), "r");
    int n = 0;
    while (f && n < 8 && fgets(lines[n], 1024, f))
        n++;
    if (f)
        fclose(f);
    return n;
}

Test(launch, restarts_with_resume_auto_until_it_succeeds)
{
    const char *fake = s_fake(0);
    char out[8192], calls[8][1024];
    s_codes("1\n137\n0\n");
    int rc = s_launch(fake, "-np 4 -- --train x.csv --checkpoint_dir /tmp/ck --restarts 3 "
                            "--restart_backoff 0.01", out, sizeof out);
    cr_expect_eq(rc, 0, "%s", out);
    int n = s_calls(calls);
    cr_assert_eq(n, 3, "three attempts:\n%s", out);
    cr_expect(strstr(calls[0], "-np 4 ") == calls[0], "mpirun options first: %s", calls[0]);
    cr_expect(strstr(calls[0], " train --train x.csv") != NULL, "%s", calls[0]);
    cr_expect(strstr(calls[0], "--resume") == NULL, "the first attempt as given: %s", calls[0]);
    cr_expect(strstr(calls[1], "--resume auto") != NULL, "%s", calls[1]);
    cr_expect(strstr(calls[2], "--resume auto") != NULL, "%s", calls[2]);
    cr_expect(strstr(out, "attempt 2 of 4 failed (exit status 137)") != NULL, "%s", out);
    cr_expect(strstr(out, "finished after 2 restarts") != NULL, "%s", out);
}

Test(launch, gives_up_after_restarts_and_keeps_the_status)
{
    const char *fake = s_fake(0);
    char out[8192], calls[8][1024];
    s_codes("1\n1\n1\n1\n");
    int rc = s_launch(fake, "-np 4 -- --train x.csv --restarts 1 --restart_backoff 0", out,
                      sizeof out);
    cr_expect_eq(rc, 1, "%s", out);
    cr_expect_eq(s_calls(calls), 2, "one run and one restart:\n%s", out);
    cr_expect(strstr(calls[1], "--resume") == NULL,
              "without checkpoint_dir the restart starts from scratch: %s", calls[1]);
    cr_expect(strstr(out, "from scratch") != NULL, "%s", out);
    cr_expect(strstr(out, "giving up") != NULL, "%s", out);

    /* restarts = 0 (the default): one run */
    s_codes("1\n0\n");
    rc = s_launch(fake, "-np 4 -- --train x.csv", out, sizeof out);
    cr_expect_eq(rc, 1, "%s", out);
    cr_expect_eq(s_calls(calls), 1);
}

Test(launch, refusals_are_not_restarted)
{
    const char *fake = s_fake(0);
    char out[8192], calls[8][1024];
    /* the job refused itself (exit status 2): the same would come again */
    s_codes("2\n0\n");
    int rc = s_launch(fake, "-np 4 -- --train x.csv --restarts 3", out, sizeof out);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect_eq(s_calls(calls), 1, "%s", out);
    cr_expect(strstr(out, "not restarting") != NULL, "%s", out);
    /* a bad key: refused before mpirun runs */
    s_codes("0\n");
    rc = s_launch(fake, "-np 4 -- --train x.csv --restarts many", out, sizeof out);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect_eq(s_calls(calls), 0, "mpirun never ran:\n%s", out);
    cr_expect(strstr(out, "restarts") != NULL, "the key is named:\n%s", out);
    /* no `--` */
    rc = s_launch(fake, "-np 4 --train x.csv", out, sizeof out);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "missing `--`") != NULL, "%s", out);
    /* --local jobs restart themselves */
    rc = s_launch(fake, "-np 4 -- --train x.csv --local", out, sizeof out);
    cr_expect_eq(rc, 2, "%s", out);
    /* mpirun that cannot be run */
    rc = s_launch("/nonexistent/mpirun", "-- --train x.csv --restarts 3", out, sizeof out);
    cr_expect_eq(rc, 127, "%s", out);
    cr_expect(strstr(out, "cannot run /nonexistent/mpirun") != NULL, "%s", out);
}

Test(launch, sigterm_reaches_mpirun_as_sigusr1_and_ends_the_loop)
{
    const char *fake = s_fake(1);
    char cmd[4096];
    unlink(th_path("calls"));
    unlink(th_path("started"));
    snprintf(cmd, sizeof cmd, "%s", PSREC_BINARY);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        setenv("PSREC_MPIRUN", fake, 1);
        int fd = open(th_path("launch.log"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execl(cmd, cmd, "launch", "-np", "2", "--", "--train", "x.csv", "--restarts", "5",
              "--restart_backoff", "0", (char *)NULL);
        _exit(127);
    }
    /* an upper bound on a hang, not a speed figure */
    for (int i = 0; i < 20000 && access(th_path("started"), F_OK) != 0 &&
                    waitpid(pid, NULL, WNOHANG) == 0;
         i++)
        usleep(5000);
    cr_assert_eq(access(th_path("started"), F_OK), 0, "the stand-in mpirun started");
    cr_assert_eq(kill(pid, SIGTERM), 0);
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "mpirun's status is returned");
    char calls[8][1024];
    int n = s_calls(calls);
    cr_expect_eq(n, 2, "one attempt, then USR1 logged by it (%d lines)", n);
    cr_expect(n == 2 && strncmp(calls[1], "USR1", 4) == 0,
              "mpirun got SIGUSR1, which it passes on to every rank");
}

/* ---------------------------------------------------------------------
 * common/stop.c
 * ------------------------------------------------------------------- */

static int s_seen_sig, s_seen_count;
static pid_t s_seen_from;

static void s_note(int sig, int count, pid_t from, void *arg)
{
    s_seen_sig = sig;
    s_seen_count = count;
    s_seen_from = from;
    (*(int *)arg)++;
}

Test(launch, stop_records_the_first_signal)
{
    int calls = 0;
    const int sigs[] = {SIGUSR1, SIGUSR2};
    cm_stop_reset();
    cr_assert_eq(cm_stop_watch(sigs, 2, s_note, &calls, NULL), 0);
    cr_expect_eq(cm_stop_requested(), 0);
    cr_assert_eq(raise(SIGUSR1), 0);
    cr_expect_eq(cm_stop_requested(), SIGUSR1, "the process lives on, the request is kept");
    cr_expect_eq(calls, 1);
    cr_expect_eq(s_seen_sig, SIGUSR1);
    cr_expect_eq(s_seen_count, 1);
    cr_expect_eq(s_seen_from, getpid(), "the sender is known");
    cr_assert_eq(raise(SIGUSR2), 0);
    cr_expect_eq(cm_stop_requested(), SIGUSR1, "the first signal is the one kept");
    cr_expect_eq(s_seen_count, 2);
    cm_stop_reset();
    cr_expect_eq(cm_stop_requested(), 0);
    cm_stop_request(SIGTERM);
    cr_expect_eq(cm_stop_requested(), SIGTERM);
    cr_expect_eq(calls, 2, "a request made by hand calls nothing");
    cm_stop_reset();
    const int bad[] = {SIGKILL};
    cm_error err = {0};
    cr_expect_eq(cm_stop_watch(bad, 1, NULL, NULL, &err), CM_EINVAL);
    cr_expect(strstr(err.msg, "cannot be handled") != NULL, "%s", err.msg);
}
