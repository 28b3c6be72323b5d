/* implicit_train: a worker's part of implicit-feedback MF (model = implicit).
 *
 * The input holds positives only (clicks, purchases, or ratings at or above
 * positive_threshold). Each minibatch takes positives of this worker's
 * users, draws `negatives` items per positive from the item universe
 * (uniformly, or in proportion to each item's training positives), never
 * one of the user's own training positives, pulls the user and item rows,
 * adds the gradients of the BPR or logistic loss and pushes them.
 *
 * The item universe is every item with a training positive on any worker:
 * workers send their item counts to the scheduler after their HELLO and
 * get the merged, sorted list back with the PLAN.
 *
 * Evaluation ranks every item of the universe for each of this worker's
 * test users, leaving out the user's training items, pulling the item rows
 * in chunks, and sums Recall@K, NDCG@K and HR@K (common/metrics.h), with
 * the same sums for the popularity ranking. docs/implicit.md has the exact
 * definitions.
 *
 * Rows are laid out as mf's, [bias, f_1 .. f_k] for users and items, so
 * checkpoints and exports read the same. The user bias is never trained (it
 * stays 0: it cannot change a user's ranking, and BPR cancels it).
 *   score(u, i) = b_i + <p_u, q_i>
 * One owning thread. */
#ifndef PSREC_WORKER_IMPLICIT_TRAIN_H
#define PSREC_WORKER_IMPLICIT_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/ctl.h"
#include "common/dataset.h"
#include "common/err.h"
#include "common/rng.h"
#include "worker/kv.h"

/* ---------------------------------------------------------------------
 * Positives
 * ------------------------------------------------------------------- */

/* Copies into *out the rows of `in` whose rating is >= threshold (every
 * row when threshold is 0). *out owns its memory. */
int wk_implicit_positives(const cm_ratings *in, double threshold, cm_ratings *out,
                          cm_error *err);

/* ---------------------------------------------------------------------
 * Loss math on rows of [bias, f_1 .. f_{dim-1}]
 * ------------------------------------------------------------------- */

/* score(u, i) = q[0] + <p[1..], q[1..]> (p[0], the user bias, is unused). */
float wk_implicit_score(const float *p, const float *q, int dim);

/* BPR on one triple (user p, positive qi, negative qj): with
 * x = score(p, qi) - score(p, qj) the loss is -log sigmoid(x) plus
 * l2/2 (|p|^2 + |qi|^2 + |qj|^2) (factors and item biases; the user bias
 * gets no gradient). Adds the gradients to gp, gi, gj and returns the data
 * term -log sigmoid(x). */
double wk_bpr_grad(const float *p, const float *qi, const float *qj, int dim, float l2,
                   float *gp, float *gi, float *gj);

/* Logistic loss on one pair with label y (1 positive, 0 negative):
 * softplus(s) - y s with s = score(p, q), plus l2/2 (|p|^2 + |q|^2). Adds
 * the gradients to gp, gq and returns the data term. */
double wk_logistic_grad(const float *p, const float *q, int dim, float y, float l2,
                        float *gp, float *gq);

/* ---------------------------------------------------------------------
 * Negative sampling
 * ------------------------------------------------------------------- */

typedef struct wk_sampler wk_sampler;

/* A sampler over item indexes [0, n): uniform (CM_SAMPLER_UNIFORM) or in
 * proportion to counts[i] (CM_SAMPLER_POPULARITY; counts may be NULL for
 * uniform). NULL with *err when n is 0, a count is negative or not finite,
 * every count is 0, or memory runs out. */
wk_sampler *wk_sampler_new(int kind, const float *counts, size_t n, cm_error *err);
void wk_sampler_destroy(wk_sampler **ps);

/* One item index. */
uint32_t wk_sampler_draw(const wk_sampler *s, cm_rng *rng);

/* One item index not in excl[0..n_excl) (sorted ascending), drawn again
 * while it is excluded, at most `tries` draws; WK_NO_NEGATIVE when every
 * draw was excluded (a user who has nearly every item). */
uint32_t wk_sampler_draw_excluding(const wk_sampler *s, cm_rng *rng, const uint32_t *excl,
                                   size_t n_excl, int tries);

#define WK_NO_NEGATIVE UINT32_MAX

/* ---------------------------------------------------------------------
 * Training and evaluation
 * ------------------------------------------------------------------- */

typedef struct wk_implicit wk_implicit;

/* What the worker does around each minibatch (consistency and progress). */
typedef struct {
    /* before minibatch `clock` (0-based); may wait for slower workers */
    int (*before)(void *arg, uint64_t clock, cm_error *err);
    /* after minibatch `clock` was pushed: `done` positives and `loss` so
     * far this epoch */
    int (*after)(void *arg, uint64_t clock, size_t done, double loss, cm_error *err);
    void *arg;
} wk_implicit_hooks;

/* Builds a worker's state from its positives (train), its held-out
 * positives (test, may be empty) and the universe: n_items item keys
 * (sorted ascending, unique) with their training positives over all
 * workers. dims are the two tables' row widths (dim + 1 each). Every train
 * item must be in the universe (CM_EPROTO otherwise: the scheduler sent a
 * wrong list). Copies what it keeps. */
wk_implicit *wk_implicit_new(const cm_job *job, const cm_ratings *train,
                             const cm_ratings *test, const uint64_t *items,
                             const float *counts, size_t n_items, const int *dims,
                             cm_error *err);
void wk_implicit_destroy(wk_implicit **pim);

/* One epoch over this worker's positives in a shuffled order seeded by
 * (job seed, worker index `who`, epoch). *loss gets the summed data term
 * (per pair for BPR, per labelled example for logistic) and *n the
 * positives trained. hooks may be NULL. */
int wk_implicit_train(wk_implicit *im, wk_kv *kv, uint32_t epoch, uint32_t who,
                      const wk_implicit_hooks *hooks, double *loss, size_t *n,
                      cm_error *err);

/* Ranks the universe for every test user (top_k of the job) and fills *st
 * with the sums an evaluation reports (common/ctl.h). Pulls rows without
 * creating them. */
int wk_implicit_eval(wk_implicit *im, wk_kv *kv, cm_ranking_done *st, cm_error *err);

/* Only the popularity part of *st (and the counts and users), without
 * pulls. */
void wk_implicit_eval_popularity(const wk_implicit *im, cm_ranking_done *st);

#endif
