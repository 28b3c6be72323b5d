/* synth: synthetic explicit ratings with a known optimum (psrec gen).
 *
 * rating = mean + b_user + b_item + <p_user, q_item> + noise, with planted
 * Gaussian biases, rank-r Gaussian factors, Zipf-like item popularity
 * (exponent `zipf` over a random permutation of the item ids), lognormal
 * user activity and Gaussian noise of standard deviation `noise`. Ratings
 * are not clipped, so the noise floor (the RMSE of the true function on
 * the test rows) is known; it is measured on the rows written and stored in
 * the files' headers. Streams to disk in chunks: 10^8 rows need memory for
 * the factors, not for the rows. */
#ifndef PSREC_COMMON_SYNTH_H
#define PSREC_COMMON_SYNTH_H

#include <stdint.h>

#include "common/err.h"

typedef struct {
    uint64_t n_ratings;      /* rows in all (train + test); default 100000 */
    uint64_t n_users;        /* default 943 */
    uint64_t n_items;        /* default 1682 */
    int rank;                /* planted rank; default 8 */
    double noise;            /* noise standard deviation; default 0.5 */
    double zipf;             /* item popularity exponent; default 0.9 */
    double mean;             /* global mean; default 3.5 */
    double user_bias_sd;     /* default 0.4 */
    double item_bias_sd;     /* default 0.4 */
    double factor_sd;        /* sd of each planted factor entry; <= 0 (the
                                default): automatic, sqrt(0.6 / sqrt(rank)),
                                so that <p_u, q_i> has sd 0.6 */
    double test_fraction;    /* share of rows written to the test file; default 0.1 */
    uint64_t seed;           /* default 42 */
    int text;                /* 1: write TSV text instead of .psrd binary */
} cm_synth_params;

cm_synth_params cm_synth_params_default(void);

typedef struct {
    uint64_t n_train, n_test;
    double noise_floor;      /* RMSE of the noiseless ratings on the test rows
                                (on the train rows when there are no test rows) */
    char train_path[4096];
    char test_path[4096];
} cm_synth_report;

/* Writes <prefix>.train.psrd and <prefix>.test.psrd (or .tsv with text;
 * text files end with a "#psrec noise_floor=<x>" comment line). Same
 * params and seed, same files. rep may be NULL. 0 or a CM_E* code with a
 * message. */
int cm_synth_write(const cm_synth_params *p, const char *prefix,
                   cm_synth_report *rep, cm_error *err);

#endif
