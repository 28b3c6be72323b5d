#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int s_level = CM_LOG_INFO;
static _Thread_local char s_ident[96] = "psrec";
static pthread_once_t s_host_once = PTHREAD_ONCE_INIT;
static char s_host[64] = "?";

static void s_host_init(void)
{
    if (gethostname(s_host, sizeof s_host) != 0)
        strcpy(s_host, "?");
    s_host[sizeof s_host - 1] = '\0';
    char *dot = strchr(s_host, '.');
    if (dot)
        *dot = '\0';
}

void cm_log_set_level(int level) { atomic_store(&s_level, level); }

int cm_log_get_level(void) { return atomic_load(&s_level); }

int cm_log_level_parse(const char *name)
{
    static const char *names[] = {"debug", "info", "warn", "error", "silent"};
    for (int i = 0; i < 5; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

void cm_log_set_identity(const char *role, int rank)
{
    pthread_once(&s_host_once, s_host_init);
    if (rank >= 0)
        snprintf(s_ident, sizeof s_ident, "%s[%d]@%s", role, rank, s_host);
    else
        snprintf(s_ident, sizeof s_ident, "%s@%s", role, s_host);
}

void cm_log_write(int level, const char *fmt, ...)
{
    static const char tag[] = "DIWE";
    char line[2048];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03d %c %s ", tm.tm_hour,
                     tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000),
                     tag[level < 0 ? 0 : level > 3 ? 3 : level], s_ident);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    /* one write per line so threads and ranks do not interleave mid-line */
    fprintf(stderr, "%s\n", line);
}

double cm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cm_log_budget_take(cm_log_budget *b, uint64_t *quiet)
{
    double now = cm_now();
    if (now - b->window >= 60.0) {
        b->window = now;
        b->lines = 0;
    }
    if (b->lines >= b->per_minute) {
        b->quiet++;
        return 0;
    }
    b->lines++;
    *quiet = b->quiet;
    b->quiet = 0;
    return 1;
}
