/* log: leveled logging with the caller's role, rank and host on every line.
 *
 * The identity ("ps[2]@node3") is per thread, so a --local cluster running
 * every role as a thread still labels each line correctly. The level test
 * happens before the arguments are evaluated. Lines go to stderr. */
#ifndef PSREC_COMMON_LOG_H
#define PSREC_COMMON_LOG_H

#include <stdint.h>

typedef enum {
    CM_LOG_DEBUG = 0,
    CM_LOG_INFO = 1,
    CM_LOG_WARN = 2,
    CM_LOG_ERROR = 3,
    CM_LOG_SILENT = 4
} cm_log_level;

/* Process-wide threshold; lines below it are dropped. Default INFO. */
void cm_log_set_level(int level);
int cm_log_get_level(void);

/* Parses "debug|info|warn|error|silent"; returns the level or -1. */
int cm_log_level_parse(const char *name);

/* Sets this thread's identity: role name ("sch", "ps", "wk", "psrec") and
 * rank (-1 for none). Host is taken from gethostname() once. */
void cm_log_set_identity(const char *role, int rank);

/* Seconds on the monotonic clock: for timing phases (not wall time). */
double cm_now(void);

/* A budget of lines a minute, for warnings whose cause is outside psrec
 * (what peers send): a flood of bad input must not flood the log. Zero it,
 * set per_minute, and ask before each line. One owner thread. */
typedef struct {
    unsigned per_minute; /* lines allowed in one minute */
    double window;       /* start of the current minute (cm_now) */
    unsigned lines;      /* lines taken in that minute */
    uint64_t quiet;      /* lines held back since the last one taken */
} cm_log_budget;

/* 1 when a line may go out now; *quiet then holds how many were held back
 * since the last one (for "and N more"). 0 when the minute's lines are
 * spent (the line is counted as held back). */
int cm_log_budget_take(cm_log_budget *b, uint64_t *quiet);

void cm_log_write(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define cm_log(level, ...)                                  \
    do {                                                    \
        if ((int)(level) >= cm_log_get_level())             \
            cm_log_write((level), __VA_ARGS__);             \
    } while (0)

#endif
