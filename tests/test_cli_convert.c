/* `psrec convert` interrupted: a signal while the output is written, or a
 * write that fails midway, leaves no temporary file behind.
 *
 * To be inside the write without a race, the test puts a FIFO where the
 * child will create its temporary file ("<output>.tmp.<pid>": the test
 * knows the pid before the exec): opening it for writing blocks until
 * the test signals. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "tmpdir.h"

static void s_init(void)
{
    th_tmpdir_make("convert");
}

TestSuite(cli_convert, .init = s_init, .fini = th_tmpdir_remove, .timeout = 120);

static const char *s_input(void)
{
    static char p[1100];
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    snprintf(p, sizeof p, "%s/ml-100k/u.data", data);
    return p;
}

/* Names in th_dir that contain needle. */
static int s_count(const char *needle)
{
    DIR *d = opendir(th_dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strstr(e->d_name, needle) != NULL;
    closedir(d);
    return n;
}

/* 1 once pid sleeps in open(2) of a FIFO with no reader. */
static int s_blocked_in_open(pid_t pid)
{
    char p[64], buf[128] = "";
    snprintf(p, sizeof p, "/proc/%d/wchan", (int)pid);
    FILE *f = fopen(p, "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
        if (strstr(buf, "wait_for_partner") || strstr(buf, "fifo_open"))
            return 1;
    }
    return 0;
}

static void s_interrupted(int sig)
{
    const char *in = s_input();
    const char *out = th_path(sig == SIGINT ? "int.psrd" : "term.psrd");
    int go[2];
    cr_assert_eq(pipe(go), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char c;
        close(go[1]);
        /* wait for the FIFO to be in place */
        if (read(go[0], &c, 1) != 1)
            _exit(126);
        signal(SIGINT, SIG_DFL);
        execl(PSREC_BINARY, PSREC_BINARY, "convert", in, out, (char *)NULL);
        _exit(127);
    }
    close(go[0]);
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", out, (int)pid);
    cr_assert_eq(mkfifo(tmp, 0644), 0);
    cr_assert_eq(write(go[1], "g", 1), 1);
    close(go[1]);
    int blocked = 0;
    /* an upper bound on a hang, not a speed figure */
    for (int i = 0; i < 30000 && !blocked && waitpid(pid, NULL, WNOHANG) == 0; i++) {
        blocked = s_blocked_in_open(pid);
        if (!blocked)
            usleep(2000);
    }
    if (!blocked) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        unlink(tmp);
        cr_skip_test("cannot see the process wait in open(2) (/proc/PID/wchan)");
    }
    cr_assert_eq(kill(pid, sig), 0);
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 128 + sig,
              "exits as the signal would (status %d)", st);
    struct stat sb;
    cr_expect(lstat(tmp, &sb) != 0, "the temporary file is removed");
    cr_expect(lstat(out, &sb) != 0, "no output");
    cr_expect_eq(s_count(".tmp."), 0, "no temporary file of any name");
}

Test(cli_convert, sigterm_while_writing_leaves_no_temp_file)
{
    s_interrupted(SIGTERM);
}

Test(cli_convert, sigint_while_writing_leaves_no_temp_file)
{
    s_interrupted(SIGINT);
}

Test(cli_convert, a_write_that_fails_midway_leaves_no_temp_file)
{
    const char *in = s_input();
    const char *out = th_path("split.psrd");
    /* the train file (10% of the rows) fits under the limit, the test
     * file does not: it fails after its temporary file exists */
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct rlimit rl = {512 * 1024, 512 * 1024};
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &rl);
        int fd = open(th_path("fail.log"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0)
            dup2(fd, 2);
        execl(PSREC_BINARY, PSREC_BINARY, "convert", in, out, "--test-fraction", "0.9",
              (char *)NULL);
        _exit(127);
    }
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    char log[4096] = "";
    FILE *f = fopen(th_path("fail.log"), "r");
    if (f) {
        size_t n = fread(log, 1, sizeof log - 1, f);
        log[n] = '\0';
        fclose(f);
    }
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "convert fails (status %d): %s", st, log);
    cr_expect(strstr(log, "split.test.psrd") != NULL, "the failing file is named: %s", log);
    cr_expect_eq(s_count("split.train.psrd"), 1, "the first file was written whole: %s", log);
    cr_expect_eq(s_count("split.test.psrd"), 0, "no test file, temporary or not: %s", log);
    cr_expect_eq(s_count(".tmp."), 0, "no temporary file");
}
