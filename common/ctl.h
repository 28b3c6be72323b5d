/* ctl: what control messages say, as plain structs with named fields.
 *
 * Every control payload is one typed body of the message header (the
 * oneof `body` of psrec.pb.Header; common/codec.c converts both ways), so
 * sender and receiver name the same fields and the compiler checks both.
 * Raw frames carry keys and rows only.
 *
 *   body              op            from -> to
 *   CM_BODY_HELLO     HELLO         worker -> scheduler
 *   CM_BODY_PLAN      PLAN          scheduler -> worker
 *   CM_BODY_PROGRESS  PROGRESS      worker -> scheduler
 *   CM_BODY_EPOCH     EPOCH_DONE    worker -> scheduler
 *   CM_BODY_EVAL      EVAL_DONE     worker (rating, sparse models) -> scheduler
 *   CM_BODY_RANKING   EVAL_DONE     worker (implicit model) -> scheduler
 *   CM_BODY_PLACE     REPLY         server -> worker, to a PULL with CM_PULL_PLACE
 *   CM_BODY_PULLED    REPLY         server -> worker, to a PULL with CM_PULL_NO_CREATE
 *   CM_BODY_CKPT      REPLY         server -> scheduler, to CHECKPOINT
 *   CM_BODY_LOADED    REPLY         server -> scheduler, to LOAD
 *   CM_BODY_TABLES    REPLY         server -> scheduler, to EPOCH and STOP
 *
 * A receiver checks the body's kind before it reads it; a message whose
 * body is not the one its op carries is refused like any malformed one. */
#ifndef PSREC_COMMON_CTL_H
#define PSREC_COMMON_CTL_H

#include <stddef.h>
#include <stdint.h>

/* Tables a server reports on (and a model has) at most. */
#define CM_CTL_MAX_TABLES 16

typedef enum {
    CM_BODY_NONE = 0,
    CM_BODY_HELLO,
    CM_BODY_PLAN,
    CM_BODY_PROGRESS,
    CM_BODY_EPOCH,
    CM_BODY_EVAL,
    CM_BODY_RANKING,
    CM_BODY_PLACE,
    CM_BODY_PULLED,
    CM_BODY_CKPT,
    CM_BODY_LOADED,
    CM_BODY_TABLES
} cm_body_kind;

/* HELLO: what a worker's shard holds. */
typedef struct {
    uint64_t n_train;          /* training examples (implicit: positives) */
    double label_sum;          /* sum of their labels */
    double label_min, label_max; /* 0 when n_train is 0 */
    uint64_t n_test;           /* test examples */
    uint64_t bad_train, bad_test; /* malformed lines skipped */
    double noise_floor;        /* of the test set if known, else < 0 */
    int32_t task;              /* sparse models: cm_task; -1 ratings */
    uint64_t raw_train, raw_test; /* implicit: rows before positive_threshold */
    uint64_t n_valid;          /* validation examples */
    size_t n_slot_load;
    float *slot_load;          /* expected requests per slot from this shard;
                                * unpack: malloc'ed, freed with the header */
} cm_hello;

/* PLAN: the job's globals (the slot map travels in cm_hdr.slots). */
typedef struct {
    double mean;               /* global mean of the training labels */
    float clip_lo, clip_hi;    /* predictions are clipped to [clip_lo, clip_hi] */
    uint32_t blocks_per_worker;
} cm_plan;

/* PROGRESS: examples done this epoch and their loss sum so far. */
typedef struct {
    uint64_t done;
    double loss;
} cm_progress;

/* EPOCH_DONE. */
typedef struct {
    double loss;               /* squared error, log loss or sampled loss, summed */
    uint64_t n;                /* examples trained */
    double seconds;
    int64_t max_lead;          /* most minibatches ahead of the slowest worker;
                                * -1: not tracked */
} cm_epoch_done;

/* EVAL_DONE of a rating or sparse model: error sums. */
typedef struct {
    double test_sq, test_abs;  /* test: squared and absolute error sums */
    uint64_t test_n;
    uint64_t unseen;           /* test examples whose user or item never trained */
    double test_logloss;
    double valid_sq, valid_abs; /* validation: the same */
    uint64_t valid_n;
    double valid_logloss;
    size_t n_auc;              /* binary tasks: CM_AUC_BINS, else 0 */
    uint64_t *auc_pos;         /* score histograms of the positives and */
    uint64_t *auc_neg;         /* negatives; unpack: malloc'ed, freed with the header */
} cm_eval_done;

/* EVAL_DONE of an implicit model: ranking sums over the evaluated users. */
typedef struct {
    double recall, ndcg, hit;
    uint64_t users;
    double pop_recall, pop_ndcg, pop_hit; /* popularity ranking; NaN: not measured */
    uint64_t cold_users;       /* test users without a training positive (skipped) */
    uint64_t cold_items;       /* test positives of an item outside the universe */
    uint64_t positives;        /* test positives scored */
    uint64_t repeats;          /* test positives that repeat a training positive */
} cm_ranking_done;

/* REPLY to a PULL with CM_PULL_PLACE: how a process on the server's host
 * maps the table's file. */
typedef struct {
    int64_t pid;               /* the server's process */
    int32_t fd;                /* the file's descriptor in that process */
    uint64_t token;            /* written in the file's header */
    uint64_t header;           /* bytes before the first row */
    uint64_t stride;           /* floats per row */
    uint64_t bytes;            /* the file's size */
} cm_place_reply;

/* REPLY to a PULL with CM_PULL_NO_CREATE. */
typedef struct {
    uint64_t missing;          /* rows missing, read as zeros */
} cm_pull_reply;

/* REPLY to CHECKPOINT: per table, in table order, its shard file. */
typedef struct {
    size_t n;
    struct {
        uint64_t size, checksum, rows;
    } shard[CM_CTL_MAX_TABLES];
} cm_ckpt_reply;

/* REPLY to LOAD. */
typedef struct {
    uint64_t rows;             /* rows loaded */
} cm_load_reply;

/* REPLY to EPOCH and STOP from a server: per table, in table order
 * (STOP: rows and bytes only). */
typedef struct {
    uint64_t rows, bytes, evicted, admitted, pending, dropped;
} cm_table_stat;

typedef struct {
    size_t n;
    cm_table_stat table[CM_CTL_MAX_TABLES];
} cm_table_stats;

#endif
