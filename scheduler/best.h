/* best: which epoch's model is kept, and when training stops early.
 *
 * Each evaluation hands in the validation metric of the epoch just
 * trained (lower is better: RMSE, log loss). The lowest so far is the
 * chosen epoch; an evaluation that does not beat it counts against
 * `patience`, and once `patience` evaluations in a row have not, the job
 * stops early (docs/validation.md). The test data never comes in here. A
 * plain struct: the scheduler keeps one per run and stores its fields in
 * each checkpoint's MANIFEST, so a resumed run goes on counting. */
#ifndef PSREC_SCHEDULER_BEST_H
#define PSREC_SCHEDULER_BEST_H

typedef struct {
    int patience;     /* evaluations without improvement allowed; 0: no early stop */
    int epoch;        /* the chosen epoch; 0 before the first evaluation */
    double metric;    /* its validation metric */
    int stale;        /* evaluations since it without a better metric */
} sch_best;

/* An empty record for a run with this patience (negative counts as 0). */
sch_best sch_best_start(int patience);

/* Records the validation metric of epoch. Returns 1 when it is the new
 * chosen epoch (strictly lower than the best so far, or the first one),
 * 0 when not; a NaN or infinite metric never is. */
int sch_best_add(sch_best *b, int epoch, double metric);

/* 1 when training should stop: patience is set and that many evaluations
 * in a row did not improve on the chosen epoch. */
int sch_best_exhausted(const sch_best *b);

#endif
