/* synth_ctr: synthetic click data with a known best AUC (psrec gen --ctr).
 *
 * Each line has one active categorical feature per field (value 1), drawn
 * from the field's vocabulary with Zipf-like popularity, and optionally a
 * few numeric fields first (one feature each, value in [0, 1)). The label
 * is a Bernoulli draw from a planted logistic factorization machine:
 *
 *   p = sigmoid(b + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j)
 *
 * with Gaussian w and v scaled so that the logit around b has standard
 * deviation `signal` (a share `pair_share` of its variance from the pairs),
 * and b chosen so that the mean of p is `ctr`. The Bayes AUC (the AUC of
 * the planted p on the test lines) is the ceiling any model can reach; it
 * is measured on the lines written and reported beside the files.
 *
 * Features are numbered globally from 1 in field order (numeric fields
 * first, then each categorical field's vocabulary), so the same line reads
 * the same in every format:
 *   libsvm  PREFIX.{train,test}.libsvm   label idx:val ...
 *   libffm  PREFIX.{train,test}.ffm      label field:idx:val ...
 *   CSV     PREFIX.{train,test}.csv      header label,I1..,C1..; numeric
 *           columns hold the value, categorical ones the global index
 * Labels are 0/1. PREFIX.info holds the parameters and the measured click
 * rates, Bayes AUC and Bayes log loss as key=value lines. Streams to disk
 * in chunks: memory is the planted model, not the lines. Same params and
 * seed, same bytes. */
#ifndef PSREC_COMMON_SYNTH_CTR_H
#define PSREC_COMMON_SYNTH_CTR_H

#include <stdint.h>

#include "common/err.h"

enum {
    CM_CTR_LIBSVM = 1,
    CM_CTR_LIBFFM = 2,
    CM_CTR_CSV = 4
};

typedef struct {
    uint64_t n_lines;        /* lines in all (train + test); default 100000 */
    int n_fields;            /* fields per line, numeric ones included; default 39 */
    int n_numeric;           /* how many of them are numeric (the first ones); default 0 */
    uint64_t features;       /* categorical vocabulary over all fields; default 1000000 */
    uint64_t vocab_min;      /* smallest field's vocabulary; default 4. Field sizes are
                                log-uniform between this and the largest, scaled to
                                add up to `features` */
    double zipf;             /* popularity exponent within a field; default 1.1 */
    int rank;                /* planted factor rank; default 8 */
    double signal;           /* sd of the planted logit around the bias; default 1.5 */
    double pair_share;       /* share of its variance from pairwise terms; default 0.5 */
    double ctr;              /* target mean click probability; default 0.2 */
    double test_fraction;    /* share of lines written to the test files; default 0.1 */
    uint64_t seed;           /* default 42 */
    unsigned formats;        /* CM_CTR_* bits; default all three */
} cm_synth_ctr_params;

cm_synth_ctr_params cm_synth_ctr_params_default(void);

typedef struct {
    uint64_t n_train, n_test;
    uint64_t clicks_train, clicks_test;
    uint64_t n_features;     /* indices 1..n_features are used */
    double bias;             /* the planted b */
    double bayes_auc;        /* AUC of the planted p on the test lines (on the
                                train lines when there are none) */
    double bayes_logloss;    /* log loss of the planted p, same lines */
    double mean_p;           /* mean planted p, same lines */
    char info_path[4096];
    char train_path[3][4096];  /* by format: libsvm, libffm, csv; "" if not written */
    char test_path[3][4096];
} cm_synth_ctr_report;

/* Writes the files named in the banner for every format in p->formats,
 * and PREFIX.info. rep may be NULL. 0 or a CM_E* code with a message. */
int cm_synth_ctr_write(const cm_synth_ctr_params *p, const char *prefix,
                       cm_synth_ctr_report *rep, cm_error *err);

/* "libsvm,ffm,csv" (any order; "libffm" = "ffm"; "all") -> CM_CTR_* bits
 * in *out. 0 or CM_EINVAL with a message naming the bad word. */
int cm_synth_ctr_formats(const char *list, unsigned *out, cm_error *err);

#endif
