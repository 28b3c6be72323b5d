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

/* Names the running figure the bar shows ("rmse" until set; at most 15
 * characters are kept). */
void sch_progress_set_label(sch_progress *p, const char *label);

/* Ranking metrics of one evaluation (implicit feedback), averaged over
 * test users; a negative value was not measured. */
typedef struct {
    int k;
    double recall, ndcg, hr;             /* the model */
    double pop_recall, pop_ndcg, pop_hr; /* the popularity baseline */
} sch_ranking;

/* Writes "recall@K r  ndcg@K n  hr@K h  (popularity r / n / h)" into out
 * (n bytes, always terminated; the popularity part only when measured).
 * Returns the length it needed, as snprintf does. */
int sch_ranking_text(char *out, size_t n, const sch_ranking *r);

typedef struct sch_metrics sch_metrics;

/* Opens path for JSON lines, truncated or (append=1) appended to; NULL
 * with *err on failure. mark: a name each record starts with, as
 * "mark": 1 (the refit's records), or NULL. */
sch_metrics *sch_metrics_open(const char *path, int append, const char *mark, cm_error *err);
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
