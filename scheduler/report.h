/* report: what the scheduler shows people and machines.
 *
 * A progress bar on a terminal (examples/s, ETA, running loss) redrawn in
 * place on stderr, and the metrics file: one JSON object per line. */
#ifndef PSREC_SCHEDULER_REPORT_H
#define PSREC_SCHEDULER_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "common/err.h"

typedef struct sch_progress sch_progress;

/* enabled: 1 on, 0 off, -1 when stderr is a terminal. */
sch_progress *sch_progress_new(int enabled);
void sch_progress_destroy(sch_progress **pp);

/* Redraws (at most ~10 times a second) for `done` of `total` examples in
 * epoch `epoch`, with the running training RMSE. */
void sch_progress_update(sch_progress *p, int epoch, int epochs, uint64_t done, uint64_t total,
                         double rmse, double seconds);

/* Clears the bar so that a normal line can be printed. */
void sch_progress_clear(sch_progress *p);

typedef struct sch_metrics sch_metrics;

/* Opens path for JSON lines, truncated or (append=1) appended to; NULL
 * with *err on failure. */
sch_metrics *sch_metrics_open(const char *path, int append, cm_error *err);
void sch_metrics_close(sch_metrics **pm);

/* One field of a metrics line; a NaN or negative-by-convention value is
 * written as null where `null_if_negative` is set. */
typedef struct {
    const char *name;
    double value;
    int null_if_negative;
} sch_field;

/* Appends {"k": v, ...} and a newline, flushed. */
int sch_metrics_write(sch_metrics *m, const sch_field *fields, size_t n, cm_error *err);

#endif
