/* config: the job description and its single table of keys.
 *
 * One table {name, type, min, max, default, models, help} drives parsing of job
 * files (INI, read with inih), `--key value` / `--key=value` command-line
 * overrides (the command line wins), validation, `psrec train --help` and
 * docs/config.md. Sections in a job file are allowed for readability and
 * ignored: key names are global. Unknown keys and bad values are errors
 * naming the file and line, or the command-line flag. */
#ifndef PSREC_COMMON_CONFIG_H
#define PSREC_COMMON_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "common/err.h"

#define CM_PATH_MAX 1024
#define CM_MAX_BLOCKS_PER_WORKER 16
#define CM_JOB_MAX_KEYS 128 /* room in cm_job.explicit_ for the key table */

typedef enum {
    CM_OPT_SGD = 0,
    CM_OPT_ADAGRAD = 1,
    CM_OPT_ROWWISE = 2,
    CM_OPT_ADAM = 3, /* lazy, sparse-row: only rows with a gradient move */
    CM_OPT_FTRL = 4  /* FTRL-proximal, per coordinate */
} cm_optimizer;

/* How far workers may run apart inside an epoch (minibatch schedule). */
typedef enum {
    CM_CONS_ASP = 0,  /* never wait; epochs are still barriers */
    CM_CONS_SSP = 1,  /* wait when more than `staleness` minibatches ahead */
    CM_CONS_BSP = 2   /* wait for everyone after every minibatch */
} cm_consistency;

/* How workers and servers share the work of an epoch. */
typedef enum {
    CM_SCHED_MINIBATCH = 0, /* every minibatch pulls rows, pushes gradients */
    CM_SCHED_BLOCKS = 1     /* DSGD: each worker trains an item block locally */
} cm_schedule;

/* How mf and fm fit their parameters. auto is settled before training
 * (cluster/mcmc.h cl_method_settle): mcmc for a small regression job in
 * one process, sgd otherwise. */
typedef enum {
    CM_METHOD_SGD = 0,  /* the parameter servers and the optimizer (lr, l2) */
    CM_METHOD_MCMC = 1, /* Bayesian FM by Gibbs sampling in one process */
    CM_METHOD_AUTO = 2
} cm_method;

/* job->task: auto (binary when every training label is -1, 0 or 1), or
 * the cm_task values of common/features.h (0 regression, 1 binary). */
#define CM_JOB_TASK_AUTO (-1)

/* Implicit feedback: the loss over positives and sampled negatives. */
typedef enum {
    CM_LOSS_BPR = 0,      /* -log sigmoid(score(u,i) - score(u,j)) */
    CM_LOSS_LOGISTIC = 1  /* positives label 1, negatives label 0 */
} cm_implicit_loss;

/* Implicit feedback: how negatives are drawn. */
typedef enum {
    CM_SAMPLER_UNIFORM = 0,    /* every item alike */
    CM_SAMPLER_POPULARITY = 1  /* proportional to the item's training positives */
} cm_sampler;

/* How workers load a ratings file (worker/ingest.h). */
typedef enum {
    CM_INGEST_AUTO = 0,  /* exchange under MPI for .psrd inputs, else scan */
    CM_INGEST_SCAN = 1   /* every worker reads the whole file */
} cm_ingest;

/* Whether workers pin their training thread to a CPU (common/affinity.h). */
typedef enum {
    CM_AFFINITY_AUTO = 0, /* one CPU each when the host has enough for its workers */
    CM_AFFINITY_OFF = 1   /* leave placement to the system */
} cm_affinity;

/* How input files are read. */
typedef enum {
    CM_FMT_AUTO = 0,    /* by model and extension */
    CM_FMT_RATINGS = 1, /* user item rating [timestamp], or .psrd */
    CM_FMT_LIBSVM = 2,  /* label idx:val ... (libsvm, libFM) */
    CM_FMT_LIBFFM = 3,  /* label field:idx:val ... */
    CM_FMT_CSV = 4      /* header line; label_column, numeric/categorical_columns */
} cm_format;

/* Plain parameters struct: every field is one key of the table. */
typedef struct {
    char train[CM_PATH_MAX];   /* training data (text or .psrd) */
    char test[CM_PATH_MAX];    /* held-out data; "" for none */
    char validation[CM_PATH_MAX]; /* validation data; "" carves validation_fraction */
    double validation_fraction;   /* share of train carved for validation; 0: none */
    int patience;              /* evaluations without improvement before stopping; 0: never */
    int refit;                 /* 1: retrain on all the training data for the chosen epochs */
    char metrics[CM_PATH_MAX]; /* JSON-lines metrics file; "" for none */
    char model[32];            /* "mf", "fm", "ffm", "deep", "implicit" */
    int loss;                  /* implicit: cm_implicit_loss */
    int negatives;             /* implicit: negatives per positive */
    int sampler;               /* implicit: cm_sampler */
    double positive_threshold; /* implicit: ratings >= this are positives; 0: all */
    int top_k;                 /* implicit: K of the ranking metrics */
    int fields;                /* ffm, deep: fields per example; 0: from the data */
    char hidden[128];          /* deep: hidden widths "64,32" */
    int fm_term;               /* deep: 1 adds the FM terms (DeepFM) */
    int task;                  /* CM_JOB_TASK_AUTO or a cm_task */
    int format;                /* cm_format */
    char label_column[128];    /* csv */
    char numeric_columns[CM_PATH_MAX];     /* csv: comma-separated names */
    int numeric_transform;                 /* csv numeric columns: 0 none, 1 log */
    char categorical_columns[CM_PATH_MAX]; /* csv: comma-separated names */
    char user_column[128];     /* ratings with a header: column names; "" positional */
    char item_column[128];
    char rating_column[128];
    char timestamp_column[128];
    char user_features[CM_PATH_MAX];       /* fm on ratings: u.user-style side file */
    char item_features[CM_PATH_MAX];       /* fm on ratings: u.item-style side file */
    int dim;                   /* latent factors per row */
    int epochs;
    int eval_every;            /* evaluate every N epochs (and after the last) */
    int servers;               /* parameter-server ranks */
    int optimizer;             /* cm_optimizer */
    double lr;                 /* learning rate */
    double l2;                 /* L2 regularisation per occurrence */
    int regularization;        /* 0 fixed (l2 as given), 1 learned from validation */
    double init_std;           /* sd of initial factor entries */
    int min_count;             /* pushes of a key before it gets a row; 0/1: at once */
    int ttl;                   /* evict rows untouched this many epochs; 0: never */
    long max_rows;             /* rows per server per table (LRU beyond); 0: unbounded */
    double adam_beta1;         /* Adam: first-moment decay */
    double adam_beta2;         /* Adam: second-moment decay */
    double ftrl_l1;            /* FTRL: L1 strength (exact zeros below it) */
    double ftrl_beta;          /* FTRL: learning-rate smoothing beta */
    double adagrad_init;       /* AdaGrad, row-wise AdaGrad: accumulators' start */
    int batch;                 /* examples per minibatch per worker */
    int schedule;              /* cm_schedule */
    int method;                /* cm_method (fm) */
    int consistency;           /* cm_consistency */
    int staleness;             /* SSP: minibatches a worker may lead the slowest */
    int blocks_per_worker;     /* blocks schedule: item blocks per worker; 0 auto */
    int wire_dtype;            /* 0: f32, 1: f16 values on the wire */
    int ingest;                /* cm_ingest */
    int worker_affinity;       /* cm_affinity */
    uint64_t seed;
    long max_bad_lines;        /* stop loading after more bad lines */
    int slots;                 /* virtual slots per table */
    int progress;              /* -1 auto (terminal), 0 off, 1 on */
    int log_level;             /* cm_log_level */
    int local;                 /* 1: run all roles as threads, no MPI */
    int workers;               /* --local only: worker threads */
    double timeout;            /* seconds a role waits for a peer before giving up */
    int encrypt;               /* cm_encrypt (common/bootstrap.h): 0 auto, 1 on, 2 off */
    char interface[CM_PATH_MAX]; /* "" or an interface name or IPv4 CIDR to listen on */
    char host[200];            /* "" or the address this rank advertises (PSREC_HOST) */
    int transport;             /* 0 auto, 1 tcp: no unix sockets, no shared rows (PSREC_TRANSPORT) */
    int shared_rows;           /* 0 auto, 1 off: rows move by messages (PSREC_SHARED_ROWS) */
    int allow_singleton;       /* 1: train may start without mpirun (PSREC_ALLOW_SINGLETON) */
    double heartbeat;          /* seconds between heartbeats */
    int heartbeat_misses;      /* silent heartbeats that make a stall */
    char checkpoint_dir[CM_PATH_MAX]; /* "" for no checkpoints */
    int checkpoint_every;      /* epochs between checkpoints; 0: last epoch only */
    double checkpoint_secs;    /* also after this many seconds; 0: off */
    int checkpoint_keep;       /* newest checkpoints kept; 0: all */
    char resume[CM_PATH_MAX];  /* "" | checkpoint directory | "auto" */
    int restarts;              /* runs after a failure (psrec launch, --local) */
    double restart_backoff;    /* seconds before the first restart, doubled after */
    uint64_t memory_limit;     /* bytes per process for the planner; 0: MemAvailable / ranks
                                  on this host */
    uint64_t explicit_[CM_JOB_MAX_KEYS / 64]; /* private: bit i set when key i of the
                                                table was set by the user */
    uint64_t flagged_[CM_JOB_MAX_KEYS / 64];  /* private: ... set on the command line */
    int refit_part_;           /* private, not a key: set by cl_run_local_refit, 0 for a
                                  run of its own; 1: the validation run a refit follows
                                  (its closing line is not the final one); 2: the refit
                                  (its metrics records marked "refit": 1, appended) */
} cm_job;

/* The defaults (good ones: ml-100k u1 reaches RMSE <= 0.93 with them). */
cm_job cm_job_default(void);

/* Reads a job file into *job (keys present override what is there).
 * Errors name "path:line: key: reason". */
int cm_job_load_file(cm_job *job, const char *path, cm_error *err);

/* Sets one key from text; `where` names the source for messages
 * ("job.ini:12" or "--lr"). */
int cm_job_set(cm_job *job, const char *key, const char *value, const char *where,
               cm_error *err);

/* Parses `psrec train` arguments (argv[0] is the subcommand): an optional
 * positional job file (loaded first), then `--key value`, `--key=value`,
 * and the bare flag `--local`. `--help` sets *want_help. Command-line keys
 * win over the file whatever their order. */
int cm_job_parse_args(cm_job *job, int argc, char **argv, int *want_help,
                      cm_error *err);

/* Applies the environment variables that override keys of the job:
 * PSREC_HOST (host), PSREC_TRANSPORT (transport), PSREC_SHARED_ROWS
 * (shared_rows), PSREC_ALLOW_SINGLETON (allow_singleton). An unset or
 * empty variable leaves its key alone; a bad value is CM_ECONFIG naming
 * the variable. cm_job_parse_args calls it last, so these variables win
 * over the command line (under mpirun, `-x VAR=...` reaches every rank). */
int cm_job_apply_env(cm_job *job, cm_error *err);

/* Cross-key checks (e.g. train path set), and keys that do not apply to
 * job->model: one set with a command-line flag, or to a value other than
 * its default in a job file or by cm_job_set, is CM_ECONFIG naming the key
 * and the models it is for. Fields set directly in code are not checked. */
int cm_job_validate(const cm_job *job, cm_error *err);

/* Writes the key reference (name, type, range, default, help) to f;
 * markdown=1 writes a markdown table for docs/config.md. */
void cm_job_print_help(FILE *f, int markdown);

/* Writes the job as an INI file body (every key, current values). */
void cm_job_print(FILE *f, const cm_job *job);

/* Gives keys the user did not set the defaults that suit the job's model,
 * task and method (the model table in common/config.c declares them;
 * docs/config.md lists them). */
void cm_job_model_defaults(cm_job *job);

/* How a model trains and what it reads: which trainer a worker runs for
 * it (worker/), how the scheduler evaluates it, which inputs it takes. */
typedef enum {
    CM_FAMILY_RATINGS = 0, /* mf: (user, item, rating) rows; blocks or minibatch */
    CM_FAMILY_SPARSE,      /* fm, ffm, deep: rows of sparse features */
    CM_FAMILY_IMPLICIT     /* implicit: positives ranked against sampled negatives */
} cm_family;

/* A model as psrec knows it, declared once in common/config.c's model
 * table beside the key table; the rest of psrec asks this instead of
 * comparing model names. */
typedef struct {
    const char *key; /* a key of the key table, int or float */
    double value;
} cm_default;

typedef struct {
    const char *name;
    int family;     /* cm_family */
    int quadratic;  /* predictions quadratic in the weights: method = mcmc and
                     * regularization = learned apply (mf, fm) */
    int fields;     /* reads a field per feature occurrence (ffm, deep) */
    int mlp;        /* has hidden layers (deep) */
    const cm_default *defaults; /* keys whose default differs for this model,
                                 * ended by {NULL}; NULL for none */
} cm_model;

/* The model of that name; NULL for a name psrec does not know. */
const cm_model *cm_model_of(const char *name);

/* The job's model: cm_model_of(job->model), or mf's for a name psrec does
 * not know (cm_job_validate refuses those). */
const cm_model *cm_job_model(const cm_job *job);

/* 1 when the job trains with the blocks schedule (only mf can). */
int cm_job_uses_blocks(const cm_job *job);

/* 1 when the model reads sparse features (fm, ffm, deep) rather than
 * ratings. */
int cm_job_is_sparse(const cm_job *job);

/* 1 if the user set `key` (file, command line or environment), 0 if it
 * holds its default or the key is unknown. */
int cm_job_is_explicit(const cm_job *job, const char *key);

/* The first key of the table that only method sgd reads (lr, l2,
 * optimizer, servers, checkpoint_dir, ...) and that the user set; NULL for
 * none. One set asks for sgd where method = auto. */
const char *cm_job_sgd_key_set(const cm_job *job);

/* Name of an optimizer value ("sgd", "adagrad"). */
const char *cm_optimizer_name(int opt);

#endif
