/* Small helpers shared by the integration tests. */
#ifndef PSREC_TESTS_HELPERS_H
#define PSREC_TESTS_HELPERS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster/run.h"

/* ../shared/data beside the checkout, or $PSREC_DATA; NULL if absent. */
static inline const char *th_data_dir(void)
{
    static char dir[1024];
    const char *env = getenv("PSREC_DATA");
    snprintf(dir, sizeof dir, "%s", env && *env ? env : PSREC_SOURCE_DIR "/../shared/data");
    struct stat st;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? dir : NULL;
}

/* Runs a shell command, capturing stdout+stderr into out (cap bytes).
 * Returns the exit status, or -1 if it could not run. */
static inline int th_run(const char *cmd, char *out, size_t cap)
{
    char full[8192];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p)
        return -1;
    size_t n = 0;
    if (out && cap)
        out[0] = '\0';
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, p)) > 0) {
        if (out && n + 1 < cap) {
            size_t k = got < cap - 1 - n ? got : cap - 1 - n;
            memcpy(out + n, buf, k);
            n += k;
            out[n] = '\0';
        }
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#ifdef PSREC_BINARY
#include <stdarg.h>
/* Runs `psrec ARGS` (ARGS a printf format) in dir; returns its exit
 * status, its output (stdout and stderr) in out. */
static inline int th_psrec(const char *dir, char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static inline int th_psrec(const char *dir, char *out, size_t cap, const char *fmt, ...)
{
    char args[4096], cmd[5000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd %s && %s %s", dir, PSREC_BINARY, args);
    return th_run(cmd, out, cap);
}
#endif

static inline int th_have_mpirun(void)
{
    return th_run("command -v mpirun", NULL, 0) == 0;
}

/* The last value of "key": in a JSON-lines file, or -1. */
static inline double th_last_metric(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[2048], pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    double v = -1;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, pat);
        if (p)
            v = strtod(p + strlen(pat), NULL);
    }
    fclose(f);
    return v;
}

/* Leak checking stays on for in-process tests; in mpirun's processes it
 * would report Open MPI's own start-up allocations, which it never frees. */
/* Runs job as a --local cluster, its epoch lines discarded. Returns
 * cl_run_local's code; *res and *err are filled. */
static inline int th_local(const cm_job *job, sch_result *res, cm_error *err)
{
    FILE *out = fopen("/dev/null", "w");
    int rc = cl_run_local(job, out ? out : stdout, res, err);
    if (out)
        fclose(out);
    return rc;
}

/* 1 in the sanitizer build: its jobs run about ten times slower, so the
 * longest integration jobs take a smaller shape there (the release suite
 * runs the full one). */
#ifdef PSREC_SANITIZED
#define TH_SANITIZED 1
#else
#define TH_SANITIZED 0
#endif

/* th_local that must succeed: the test fails with the job's error
 * otherwise. Needs criterion.h included first. */
#define th_local_ok(job)                                                            \
    ({                                                                              \
        sch_result th_res_;                                                         \
        cm_error th_err_ = {0};                                                     \
        int th_rc_ = th_local((job), &th_res_, &th_err_);                           \
        cr_assert_eq(th_rc_, 0, "%s", th_err_.msg);                                 \
        th_res_;                                                                    \
    })

#define TH_MPIRUN                                                                   \
    "ASAN_OPTIONS=detect_leaks=0 mpirun --allow-run-as-root --oversubscribe "       \
    "--bind-to none -x ASAN_OPTIONS "

#endif
