/* config: the job description and its single table of keys.
 *
 * Everything a user can set is one row of s_keys below. Parsing (job file
 * and command line), range checks, defaults, `--help`, cm_job_print and the
 * reference in docs/config.md all read that table, so a key added there is
 * complete. */
#include "common/config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/opts.h"

/* -------------------------------------------------------------------------
 * The key table
 * ------------------------------------------------------------------------- */

typedef enum {
    S_STR,  /* text (paths), stored NUL-terminated in a char array */
    S_INT,  /* signed integer, stored as int or long (by size) */
    S_U64,  /* any uint64_t */
    S_DBL,  /* finite double */
    S_ENUM, /* one of names[], stored as an int (values[] or the index) */
    S_WORD, /* one of names[], stored as the name itself in a char array */
    S_BOOL  /* 1/0 true/false yes/no on/off, stored as int 1 or 0 */
} s_type;

typedef struct {
    const char *name;         /* key in job files; --name on the command line */
    s_type type;
    size_t off;               /* offset of the field in cm_job */
    size_t size;              /* size of the field */
    long long imin, imax;     /* S_INT: inclusive range */
    double dmin, dmax;        /* S_DBL: range, max inclusive */
    int dmin_open;            /* S_DBL: 1 if dmin itself is not allowed */
    const char *const *names; /* S_ENUM, S_WORD: NULL-terminated choices */
    const int *values;        /* S_ENUM: value of names[i]; NULL means i */
    const char *def;          /* default, as text a user could write */
    const char *help;         /* one line for --help and the docs */
    unsigned models;          /* S_M_* bits of the models the key applies to; 0: all */
    int sgd_only;             /* read by method sgd alone: one the user sets asks for sgd
                               * where method = auto (cm_job_sgd_key_set) */
} s_key;

/* Models as bits of s_key.models, in the order of s_models. A key that
 * does not apply to the job's model is an error when the user gives it a
 * value other than its default (cm_job_validate), so a mistyped job fails
 * instead of training something else than meant. */
enum {
    S_M_MF = 1u << 0,
    S_M_FM = 1u << 1,
    S_M_FFM = 1u << 2,
    S_M_DEEP = 1u << 3,
    S_M_IMPLICIT = 1u << 4,
    S_M_SPARSE = S_M_FM | S_M_FFM | S_M_DEEP
};

#define S_AT(field) .off = offsetof(cm_job, field), .size = sizeof(((cm_job *)0)->field)

/* Defaults that differ from the key table's, for keys the user left unset
 * (cm_job_model_defaults; docs/config.md lists them, and tests/test_config.c
 * checks every model, task and method against that list). They apply in
 * this order, a later one winning: the family's, the model's, the task's,
 * the method's. Tuned on frappe for the sparse models and on ml-100k u1,
 * ratings >= 4, for implicit. */
static const cm_default s_sparse_defaults[] = {{"l2", 0.01}, {NULL, 0}};
/* squared loss on sparse features: smaller steps */
static const cm_default s_sparse_regression_defaults[] = {{"lr", 0.04}, {NULL, 0}};
static const cm_default s_fm_defaults[] = {{"dim", 64}, {NULL, 0}};
/* ffm keeps the table's dim: its rows hold a vector per field */
static const cm_default s_deep_defaults[] = {{"dim", 64}, {NULL, 0}};
/* ranking from positives wants more factors, less shrinkage and a few more
 * epochs than rating regression */
static const cm_default s_implicit_defaults[] = {
    {"dim", 64}, {"l2", 0.03}, {"lr", 0.05}, {"epochs", 30}, {"init_std", 0.1}, {NULL, 0}};
/* method mcmc (fm, mf): sweeps, not epochs, and libFM's start
 * (docs/mcmc.md has the figures) */
static const cm_default s_mcmc_defaults[] = {
    {"dim", 8}, {"epochs", 100}, {"init_std", 0.1}, {NULL, 0}};

/* A family's defaults: for each of its models, and with task = regression. */
static const struct {
    const cm_default *all, *regression;
} s_family_defaults[CM_FAMILY_IMPLICIT + 1] = {
    [CM_FAMILY_SPARSE] = {s_sparse_defaults, s_sparse_regression_defaults},
};

/* Every model, in the order of the S_M_* bits; s_models names them for
 * the key's choices (tests/test_config.c checks the two agree). */
static const cm_model s_model_table[] = {
    {.name = "mf", .family = CM_FAMILY_RATINGS, .quadratic = 1},
    {.name = "fm", .family = CM_FAMILY_SPARSE, .quadratic = 1, .defaults = s_fm_defaults},
    {.name = "ffm", .family = CM_FAMILY_SPARSE, .fields = 1},
    {.name = "deep", .family = CM_FAMILY_SPARSE, .fields = 1, .mlp = 1,
     .defaults = s_deep_defaults},
    {.name = "implicit", .family = CM_FAMILY_IMPLICIT, .defaults = s_implicit_defaults},
};
static const char *const s_models[] = {"mf", "fm", "ffm", "deep", "implicit", NULL};
static const char *const s_losses[] = {"bpr", "logistic", NULL};
static const char *const s_samplers[] = {"uniform", "popularity", NULL};
static const char *const s_wire_dtypes[] = {"f32", "f16", NULL};
static const char *const s_ingest[] = {"auto", "scan", NULL};
static const char *const s_encrypt[] = {"auto", "on", "off", NULL};
static const char *const s_affinity[] = {"auto", "off", NULL};
static const char *const s_transports[] = {"auto", "tcp", NULL};
static const char *const s_tasks[] = {"auto", "regression", "binary", NULL};
static const char *const s_numeric_transforms[] = {"none", "log", NULL};
static const int s_task_values[] = {CM_JOB_TASK_AUTO, 0, 1};
static const char *const s_formats[] = {"auto", "ratings", "libsvm", "libffm", "csv", NULL};
static const char *const s_optimizers[] = {"sgd",  "adagrad", "rowwise_adagrad",
                                            "adam", "ftrl",    NULL};
static const char *const s_progress[] = {"auto", "on", "off", NULL};
static const char *const s_schedules[] = {"minibatch", "blocks", NULL};
static const char *const s_methods[] = {"sgd", "mcmc", "auto", NULL};
static const char *const s_regularization[] = {"fixed", "learned", NULL};
static const char *const s_consistency[] = {"asp", "ssp", "bsp", NULL};
static const int s_progress_values[] = {-1, 1, 0};
static const char *const s_log_levels[] = {"debug", "info", "warn", "error", "silent", NULL};

static const s_key s_keys[] = {
    {.name = "train", .type = S_STR, S_AT(train), .def = "",
     .help = "training data: a text file (user item rating [timestamp]) or a .psrd dataset"},
    {.name = "test", .type = S_STR, S_AT(test), .def = "",
     .help = "held-out data for metrics after each epoch; empty for none"},
    {.name = "validation", .type = S_STR, S_AT(validation), .def = "",
     .help = "validation data (the train file's format) that picks the epoch whose model is "
             "kept and stops training early; empty: carve validation_fraction of train",
     .sgd_only = 1},
    {.name = "validation_fraction", .type = S_DBL, S_AT(validation_fraction), .dmin = 0,
     .dmax = 0.5, .def = "0.05",
     .help = "without a validation file: this share of the training examples, picked by a "
             "hash of each example and seed, is held out for validation, not trained on "
             "(0: no validation; implicit: not used, see docs/validation.md)",
     .sgd_only = 1},
    {.name = "patience", .type = S_INT, S_AT(patience), .imin = 0, .imax = 100000,
     .def = "3",
     .help = "evaluations without a better validation metric before training stops early "
             "(0: never stop early)",
     .sgd_only = 1},
    {.name = "refit", .type = S_BOOL, S_AT(refit), .def = "1",
     .help = "with a carved validation set (validation_fraction, no validation file), "
             "train again on every training example for the epoch count chosen on "
             "validation, and keep that model (--local train with a test file, fixed "
             "regularization, no checkpoint_dir; docs/validation.md)",
     .models = S_M_MF | S_M_SPARSE, .sgd_only = 1},
    {.name = "metrics", .type = S_STR, S_AT(metrics), .def = "",
     .help = "JSON-lines metrics file, one object per epoch (a resumed run appends); "
             "empty for none"},
    {.name = "model", .type = S_WORD, S_AT(model), .names = s_models, .def = "mf",
     .help = "model to train (mf: biased matrix factorization; fm: factorization machine "
             "over sparse features; ffm: field-aware FM; deep: MLP on field embeddings "
             "(NCF / DeepFM); implicit: MF from positives only, with sampled negatives)"},
    {.name = "loss", .type = S_ENUM, S_AT(loss), .names = s_losses, .def = "bpr",
     .help = "implicit: bpr (pairwise, positive above each sampled negative) or logistic "
             "(positives 1, sampled negatives 0)",
     .models = S_M_IMPLICIT},
    {.name = "negatives", .type = S_INT, S_AT(negatives), .imin = 1, .imax = 1000,
     .def = "4", .help = "implicit: negatives sampled per positive",
     .models = S_M_IMPLICIT},
    {.name = "sampler", .type = S_ENUM, S_AT(sampler), .names = s_samplers, .def = "uniform",
     .help = "implicit: how negatives are drawn: uniform over items, or popularity "
             "(proportional to an item's training positives)",
     .models = S_M_IMPLICIT},
    {.name = "positive_threshold", .type = S_DBL, S_AT(positive_threshold), .dmin = -1e30,
     .dmax = 1e30, .def = "0",
     .help = "implicit: rows whose rating is at least this are positives, the rest are "
             "dropped (0: every row is a positive)",
     .models = S_M_IMPLICIT},
    {.name = "top_k", .type = S_INT, S_AT(top_k), .imin = 1, .imax = 10000, .def = "20",
     .help = "implicit: K of Recall@K, NDCG@K and HR@K",
     .models = S_M_IMPLICIT},
    {.name = "fields", .type = S_INT, S_AT(fields), .imin = 0, .imax = 1024, .def = "0",
     .help = "ffm, deep: feature fields per example (0: from the data: the first libffm "
             "line, the csv columns, or user/item (+ side features) for ratings)",
     .models = S_M_FFM | S_M_DEEP},
    {.name = "hidden", .type = S_STR, S_AT(hidden), .def = "64,32",
     .help = "deep: widths of the hidden layers, comma-separated (at most 4; empty: none)",
     .models = S_M_DEEP},
    {.name = "fm_term", .type = S_BOOL, S_AT(fm_term), .def = "1",
     .help = "deep: add the FM first- and second-order terms to the MLP output (DeepFM)",
     .models = S_M_DEEP},
    {.name = "task", .type = S_ENUM, S_AT(task), .names = s_tasks, .values = s_task_values,
     .def = "auto",
     .help = "fm, ffm, deep: regression (squared loss) or binary (logistic loss); auto: "
             "binary when every training label is -1, 0 or 1",
     .models = S_M_SPARSE},
    {.name = "format", .type = S_ENUM, S_AT(format), .names = s_formats, .def = "auto",
     .help = "input format; auto: ratings for mf and implicit; for fm, ffm and deep libffm "
             "(.ffm, or field:idx:val features), csv (.csv: named columns with label_column; "
             "read as ratings when the header is user,item,rating[,timestamp] or the *_column "
             "keys are set; otherwise an error naming the choice), ratings (.psrd, or text "
             "without ':') or libsvm/libFM. mf and implicit take ratings or csv (ratings "
             "picked by column name)"},
    {.name = "label_column", .type = S_STR, S_AT(label_column), .def = "",
     .help = "csv: the label column's name (fm, ffm, deep); for mf and implicit the same as "
             "rating_column"},
    {.name = "numeric_columns", .type = S_STR, S_AT(numeric_columns), .def = "",
     .help = "csv: comma-separated numeric columns (one feature each, value = the number "
             "after numeric_transform)",
     .models = S_M_SPARSE},
    {.name = "numeric_transform", .type = S_ENUM, S_AT(numeric_transform),
     .names = s_numeric_transforms, .def = "log",
     .help = "csv numeric columns: log (value sign(x) ln(1 + |x|), so that raw counts in the "
             "thousands do not swamp the model) or none (the number as read)",
     .models = S_M_SPARSE},
    {.name = "categorical_columns", .type = S_STR, S_AT(categorical_columns), .def = "",
     .help = "csv: comma-separated categorical columns (each value hashes to a feature)",
     .models = S_M_SPARSE},
    {.name = "user_column", .type = S_STR, S_AT(user_column), .def = "",
     .help = "ratings with a header line: the user id column's name (empty: the first "
             "column; any of the *_column keys set: columns are found by name)"},
    {.name = "item_column", .type = S_STR, S_AT(item_column), .def = "",
     .help = "ratings with a header line: the item id column's name (empty: the second "
             "column)"},
    {.name = "rating_column", .type = S_STR, S_AT(rating_column), .def = "",
     .help = "ratings with a header line: the rating column's name (empty: label_column, "
             "else the third column)"},
    {.name = "timestamp_column", .type = S_STR, S_AT(timestamp_column), .def = "",
     .help = "ratings with a header line: the timestamp column's name; it must exist, and "
             "training does not use its values"},
    {.name = "user_features", .type = S_STR, S_AT(user_features), .def = "",
     .help = "fm, ffm, deep on ratings: side features of users, joined by user id (MovieLens 100K "
             "u.user layout: id|age|gender|occupation|zip)",
     .models = S_M_SPARSE},
    {.name = "item_features", .type = S_STR, S_AT(item_features), .def = "",
     .help = "fm, ffm, deep on ratings: side features of items, joined by item id (MovieLens 100K "
             "u.item layout: id|title|date|video date|url|19 genre flags)",
     .models = S_M_SPARSE},
    {.name = "dim", .type = S_INT, S_AT(dim), .imin = 1, .imax = 1024, .def = "32",
     .help = "latent factors per row"},
    {.name = "epochs", .type = S_INT, S_AT(epochs), .imin = 1, .imax = 100000, .def = "20",
     .help = "passes over the training data"},
    {.name = "eval_every", .type = S_INT, S_AT(eval_every), .imin = 1, .imax = 100000,
     .def = "1", .help = "evaluate on the test data every N epochs (and after the last)"},
    {.name = "servers", .type = S_INT, S_AT(servers), .imin = 1, .imax = 1024, .def = "1",
     .help = "parameter-server ranks (mpirun: ranks 1..servers; the rest are workers)",
     .sgd_only = 1},
    {.name = "optimizer", .type = S_ENUM, S_AT(optimizer), .names = s_optimizers,
     .def = "adagrad",
     .help = "update rule for every row: sgd, adagrad (an accumulator per weight), "
             "rowwise_adagrad (one accumulator per row), adam (lazy: only rows with a "
             "gradient move) or ftrl (FTRL-proximal; see docs/optimizers.md)",
     .sgd_only = 1},
    {.name = "lr", .type = S_DBL, S_AT(lr), .dmin = 0, .dmax = 100, .dmin_open = 1,
     .def = "0.07", .help = "learning rate", .sgd_only = 1},
    {.name = "l2", .type = S_DBL, S_AT(l2), .dmin = 0, .dmax = 100, .def = "0.12",
     .help = "L2 regularisation, applied per occurrence of a row in a batch",
     .sgd_only = 1},
    {.name = "regularization", .type = S_ENUM, S_AT(regularization), .names = s_regularization,
     .def = "fixed",
     .help = "mf, fm (sgd): fixed (l2 as given) or learned (l2 is only the start; each "
             "evaluation moves it by the validation loss's gradient through one lookahead "
             "step; docs/validation.md)",
     .models = S_M_MF | S_M_FM, .sgd_only = 1},
    {.name = "init_std", .type = S_DBL, S_AT(init_std), .dmin = 0, .dmax = 10, .def = "0.05",
     .help = "standard deviation of initial factor entries"},
    {.name = "min_count", .type = S_INT, S_AT(min_count), .imin = 0, .imax = 1000000,
     .def = "0",
     .help = "pushes of a key a server sees before it gives the key a row (before: reads "
             "as zeros, gradients dropped); 0 or 1: at once",
     .sgd_only = 1},
    {.name = "ttl", .type = S_INT, S_AT(ttl), .imin = 0, .imax = 1000000, .def = "0",
     .help = "evict rows not touched for this many epochs (0: never)",
     .sgd_only = 1},
    {.name = "max_rows", .type = S_INT, S_AT(max_rows), .imin = 0,
     .imax = 4000000000LL, .def = "0",
     .help = "rows per table per server; beyond it the least recently used are evicted "
             "(0: unbounded)",
     .sgd_only = 1},
    {.name = "adam_beta1", .type = S_DBL, S_AT(adam_beta1), .dmin = 0, .dmax = 0.999999,
     .def = "0.9", .help = "Adam: decay of the first-moment (mean) estimate",
     .sgd_only = 1},
    {.name = "adam_beta2", .type = S_DBL, S_AT(adam_beta2), .dmin = 0, .dmax = 0.999999,
     .def = "0.999", .help = "Adam: decay of the second-moment estimate",
     .sgd_only = 1},
    {.name = "ftrl_l1", .type = S_DBL, S_AT(ftrl_l1), .dmin = 0, .dmax = 1e6, .def = "0",
     .help = "FTRL: L1 strength; weights whose |z| is below it are exactly 0",
     .sgd_only = 1},
    {.name = "ftrl_beta", .type = S_DBL, S_AT(ftrl_beta), .dmin = 0, .dmax = 1e6,
     .dmin_open = 1, .def = "1",
     .help = "FTRL: beta in the per-coordinate rate alpha / (beta + sqrt(n))",
     .sgd_only = 1},
    {.name = "adagrad_init", .type = S_DBL, S_AT(adagrad_init), .dmin = 0, .dmax = 1e6,
     .def = "0.1",
     .help = "adagrad, rowwise_adagrad: the accumulators' starting value; a larger one "
             "damps the first steps of rarely seen rows (docs/optimizers.md)",
     .sgd_only = 1},
    {.name = "batch", .type = S_INT, S_AT(batch), .imin = 1, .imax = 10000000, .def = "256",
     .help = "examples per minibatch per worker",
     .sgd_only = 1},
    {.name = "schedule", .type = S_ENUM, S_AT(schedule), .names = s_schedules,
     .def = "blocks",
     .help = "minibatch: every minibatch pulls its rows and pushes gradients that the servers "
             "apply; blocks: each worker trains one block of items at a time locally and "
             "pushes the changes (DSGD, far fewer messages)",
     .models = S_M_MF, .sgd_only = 1},
    {.name = "method", .type = S_ENUM, S_AT(method), .names = s_methods, .def = "auto",
     .help = "sgd (the parameter servers apply `optimizer` with lr and l2), mcmc (a "
             "Bayesian FM by Gibbs sampling in one process, as libFM's: no lr or l2 to "
             "tune, priors per field learned from the data; epochs are sweeps, default "
             "100, dim 8, init_std 0.1) or auto: mcmc for a regression job of at most "
             "1,000,000 training lines run with --local that sets no SGD key (lr, l2, "
             "optimizer, ...) and no checkpoint_dir, sgd otherwise; the choice and its "
             "reason are printed (docs/mcmc.md)",
     .models = S_M_FM | S_M_MF},
    {.name = "consistency", .type = S_ENUM, S_AT(consistency), .names = s_consistency,
     .def = "asp",
     .help = "minibatch schedule, inside an epoch: asp (never wait), ssp (wait when more "
             "than `staleness` minibatches ahead of the slowest worker) or bsp (wait after "
             "every minibatch); epochs are always barriers",
     .sgd_only = 1},
    {.name = "staleness", .type = S_INT, S_AT(staleness), .imin = 0, .imax = 1000000,
     .def = "4", .help = "ssp: minibatches a worker may lead the slowest worker by",
     .sgd_only = 1},
    {.name = "blocks_per_worker", .type = S_INT, S_AT(blocks_per_worker), .imin = 0,
     .imax = CM_MAX_BLOCKS_PER_WORKER, .def = "0",
     .help = "blocks schedule: item blocks per worker. From 2 on, a worker pulls its next "
             "block's rows while it trains one and rounds run without barriers (smaller blocks "
             "stay nearer the cores; a little less progress per epoch); 1: one barrier per "
             "round, no prefetch; 0: as many as keep one block's item rows within 8 MiB",
     .models = S_M_MF, .sgd_only = 1},
    {.name = "ingest", .type = S_ENUM, S_AT(ingest), .names = s_ingest, .def = "auto",
     .help = "how workers load ratings: auto (under mpirun with a .psrd file each worker "
             "reads 1/W of it and an MPI all-to-all routes rows to their owners; otherwise "
             "scan) or scan (every worker reads the whole file)",
     .models = S_M_MF | S_M_IMPLICIT},
    {.name = "worker_affinity", .type = S_ENUM, S_AT(worker_affinity), .names = s_affinity,
     .def = "auto",
     .help = "auto: each worker pins its training thread to a CPU of its own when its host "
             "runs two or more workers and allows at least as many CPUs (a launcher's binding "
             "to fewer is kept); off: the system places threads"},
    {.name = "wire_dtype", .type = S_ENUM, S_AT(wire_dtype), .names = s_wire_dtypes,
     .def = "f32",
     .help = "values on the wire between workers and servers: f32, or f16 (half the bytes "
             "for gradients and pulled weights; whole rows and deltas stay f32)",
     .sgd_only = 1},
    {.name = "seed", .type = S_U64, S_AT(seed), .def = "1",
     .help = "seed for initialisation, shuffling and sampling"},
    {.name = "max_bad_lines", .type = S_INT, S_AT(max_bad_lines), .imin = 0,
     .imax = 1000000000000LL, .def = "10",
     .help = "stop loading data after more malformed lines than this"},
    {.name = "slots", .type = S_INT, S_AT(slots), .imin = 1, .imax = 1 << 20, .def = "4096",
     .help = "virtual slots per table (keys hash to slots, slots map to servers)",
     .sgd_only = 1},
    {.name = "progress", .type = S_ENUM, S_AT(progress), .names = s_progress,
     .values = s_progress_values, .def = "auto",
     .help = "progress bar: auto (when stderr is a terminal), on or off"},
    {.name = "log_level", .type = S_ENUM, S_AT(log_level), .names = s_log_levels,
     .def = "info", .help = "lowest level of log lines printed"},
    {.name = "local", .type = S_BOOL, S_AT(local), .def = "0",
     .help = "run every role as a thread of one process, without MPI"},
    {.name = "workers", .type = S_INT, S_AT(workers), .imin = 1, .imax = 1024, .def = "2",
     .help = "worker threads with --local (under mpirun the rank count decides)",
     .sgd_only = 1},
    {.name = "checkpoint_dir", .type = S_STR, S_AT(checkpoint_dir), .def = "",
     .help = "directory for checkpoints (shared by all ranks); empty: no checkpoints",
     .sgd_only = 1},
    {.name = "checkpoint_every", .type = S_INT, S_AT(checkpoint_every), .imin = 0,
     .imax = 1000000, .def = "1",
     .help = "write a checkpoint every N epochs (0: only the last epoch)",
     .sgd_only = 1},
    {.name = "checkpoint_secs", .type = S_DBL, S_AT(checkpoint_secs), .dmin = 0, .dmax = 1e9,
     .def = "0", .help = "also write one when this many seconds passed since the last (0: off)",
     .sgd_only = 1},
    {.name = "checkpoint_keep", .type = S_INT, S_AT(checkpoint_keep), .imin = 0,
     .imax = 1000000, .def = "3", .help = "keep the newest N checkpoints (0: keep all)",
     .sgd_only = 1},
    {.name = "resume", .type = S_STR, S_AT(resume), .def = "",
     .help = "continue from a checkpoint directory, or 'auto' for the newest intact one "
             "under checkpoint_dir (none there yet: start fresh)",
     .sgd_only = 1},
    {.name = "restarts", .type = S_INT, S_AT(restarts), .imin = 0, .imax = 1000, .def = "0",
     .help = "under `psrec launch` (or with --local): after a failure, run the job again "
             "up to N times, from the newest intact checkpoint (resume = auto) when "
             "checkpoint_dir is set",
     .sgd_only = 1},
    {.name = "restart_backoff", .type = S_DBL, S_AT(restart_backoff), .dmin = 0,
     .dmax = 3600, .def = "2",
     .help = "seconds before the first restart; each further one waits twice as long, at "
             "most 300 s"},
    {.name = "memory_limit", .type = S_U64, S_AT(memory_limit), .def = "0",
     .help = "bytes one process may use; `train` refuses a job whose memory plan (`psrec "
             "plan`) exceeds it (0: MemAvailable of /proc/meminfo / ranks on this host)"},
    {.name = "timeout", .type = S_DBL, S_AT(timeout), .dmin = 0, .dmax = 1e6, .dmin_open = 1,
     .def = "60", .help = "seconds a role waits for a peer before giving up"},
    {.name = "encrypt", .type = S_ENUM, S_AT(encrypt), .names = s_encrypt, .def = "auto",
     .help = "per-job CURVE keys on the job's ZeroMQ traffic: auto (on over tcp; off on one "
             "host over unix sockets, which only this user can open), on, or off (a trusted "
             "network only: anyone who reaches the ports can then act as a rank)"},
    {.name = "interface", .type = S_STR, S_AT(interface), .def = "",
     .help = "interface name (eth1) or IPv4 network (10.1.0.0/16) the ranks listen and "
             "advertise on when they span hosts; empty: the hostname's address (`host` "
             "wins)"},
    {.name = "host", .type = S_STR, S_AT(host), .def = "",
     .help = "address (IP or name) every rank advertises to the others, whatever "
             "`interface` says; empty: picked (127.0.0.1 on one host). The environment "
             "variable PSREC_HOST overrides it"},
    {.name = "transport", .type = S_ENUM, S_AT(transport), .names = s_transports,
     .def = "auto",
     .help = "auto: ranks on one host talk over unix sockets and share rows in memory; "
             "tcp: tcp loopback and every row on the wire (for comparisons). PSREC_TRANSPORT "
             "overrides it"},
    {.name = "shared_rows", .type = S_ENUM, S_AT(shared_rows), .names = s_affinity,
     .def = "auto",
     .help = "auto: a worker reads and writes the rows of servers on its host in place; "
             "off: rows move by messages (for comparisons). PSREC_SHARED_ROWS overrides it",
     .sgd_only = 1},
    {.name = "allow_singleton", .type = S_BOOL, S_AT(allow_singleton), .def = "0",
     .help = "let `psrec train` without mpirun or --local start as a one-rank MPI job (MPI "
             "singleton; for debugging). PSREC_ALLOW_SINGLETON overrides it"},
    {.name = "heartbeat", .type = S_DBL, S_AT(heartbeat), .dmin = 0, .dmax = 3600,
     .dmin_open = 1, .def = "1",
     .help = "seconds between the heartbeats every rank exchanges with the scheduler"},
    {.name = "heartbeat_misses", .type = S_INT, S_AT(heartbeat_misses), .imin = 2,
     .imax = 1000000, .def = "10",
     .help = "heartbeats missed in a row (heartbeat x this many seconds of silence) before "
             "a rank or the scheduler is taken for stalled and the job ends"},
};

#define S_NKEYS (sizeof s_keys / sizeof s_keys[0])

/* Longest key name we ever need to copy out of a "--key=value" argument. */
#define S_NAME_MAX 64

/* Job-file lines may hold a path of CM_PATH_MAX bytes plus the key. */
#define S_LINE_MAX 8192

/* -------------------------------------------------------------------------
 * Helpers: key lookup and suggestions
 * ------------------------------------------------------------------------- */

/* Key names follow the command lines' name rules (common/opts.h): '-'
 * equals '_' so --max-bad-lines works, and a near miss is suggested. */
static const s_key *s_find(const char *name)
{
    for (size_t i = 0; i < S_NKEYS; i++)
        if (cm_opt_name_eq(name, strlen(name), s_keys[i].name))
            return &s_keys[i];
    return NULL;
}

static const char *s_key_name(const void *table, size_t i)
{
    return ((const s_key *)table)[i].name;
}

static int s_unknown(cm_error *err, const char *where, const char *name)
{
    const char *s = cm_opt_suggest(name, s_key_name, s_keys, S_NKEYS);
    char hint[S_NAME_MAX + 32] = "";
    int flag = where && where[0] == '-';
    if (s) {
        char typed[S_NAME_MAX + 1];
        cm_opt_as_typed(name, s, typed, sizeof typed);
        snprintf(hint, sizeof hint, flag ? " (did you mean --%s?)" : " (did you mean '%s'?)",
                 typed);
    }
    if (flag)
        return cm_error_set(err, CM_ECONFIG, "%s: unknown option%s", where, hint);
    if (where && *where)
        return cm_error_set(err, CM_ECONFIG, "%s: unknown key '%.64s'%s", where, name, hint);
    return cm_error_set(err, CM_ECONFIG, "unknown key '%.64s'%s", name, hint);
}

/* -------------------------------------------------------------------------
 * Helpers: values
 * ------------------------------------------------------------------------- */

static int s_parse_ll(const char *s, long long *out)
{
    if (!*s || isspace((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int s_parse_u64(const char *s, uint64_t *out)
{
    /* strtoull would accept "-1" as UINT64_MAX */
    if (!*s || isspace((unsigned char)*s) || *s == '-')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static int s_parse_dbl(const char *s, double *out)
{
    if (!*s || isspace((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || !isfinite(v))
        return -1;
    /* ERANGE on underflow is fine (the value is tiny or 0); overflow gave inf */
    *out = v;
    return 0;
}

static int s_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

/* Index of s in names (case-insensitive), or -1. */
static int s_choice(const char *const *names, const char *s)
{
    for (int i = 0; names[i]; i++)
        if (strcasecmp(s, names[i]) == 0)
            return i;
    return -1;
}

static void s_choices_text(const char *const *names, char *out, size_t n)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; names[i] && used < n; i++) {
        int w = snprintf(out + used, n - used, "%s%s", i ? "|" : "", names[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/* The allowed values of a key, as shown in messages and help. */
static void s_range_text(const s_key *k, char *out, size_t n)
{
    switch (k->type) {
    case S_INT:
        snprintf(out, n, "[%lld, %lld]", k->imin, k->imax);
        break;
    case S_U64:
        snprintf(out, n, "[0, 2^64)");
        break;
    case S_DBL:
        snprintf(out, n, "%c%g, %g]", k->dmin_open ? '(' : '[', k->dmin, k->dmax);
        break;
    case S_ENUM:
    case S_WORD:
        s_choices_text(k->names, out, n);
        break;
    case S_BOOL:
        snprintf(out, n, "0|1");
        break;
    case S_STR:
        snprintf(out, n, "< %zu bytes", k->size);
        break;
    }
}

static const char *s_type_name(s_type t)
{
    switch (t) {
    case S_STR: return "path";
    case S_INT: return "int";
    case S_U64: return "u64";
    case S_DBL: return "float";
    case S_ENUM:
    case S_WORD: return "enum";
    case S_BOOL: return "bool";
    }
    return "?";
}

static long long s_get_int(const cm_job *job, const s_key *k)
{
    const char *p = (const char *)job + k->off;
    if (k->size == sizeof(int)) {
        int v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    assert(k->size == sizeof(long));
    long v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void s_put_int(cm_job *job, const s_key *k, long long v)
{
    char *p = (char *)job + k->off;
    if (k->size == sizeof(int)) {
        int x = (int)v;
        memcpy(p, &x, sizeof x);
    } else {
        assert(k->size == sizeof(long));
        long x = (long)v;
        memcpy(p, &x, sizeof x);
    }
}

/* "where: key" for a job file or programmatic source, just "--flag" on the
 * command line (the flag already names the key). */
static void s_where(char *out, size_t n, const char *where, const s_key *k)
{
    if (!where || !*where)
        snprintf(out, n, "%s", k->name);
    else if (where[0] == '-')
        snprintf(out, n, "%s", where);
    else
        snprintf(out, n, "%s: %s", where, k->name);
}

static int s_parse_into(cm_job *job, const s_key *k, const char *value, const char *where,
                        cm_error *err);

/* Remembers that the user set k, and whether with a command-line flag
 * (where is "--name"). */
static void s_mark_explicit(cm_job *job, const s_key *k, const char *where)
{
    size_t i = (size_t)(k - s_keys);
    job->explicit_[i / 64] |= 1ULL << (i % 64);
    if (where && where[0] == '-')
        job->flagged_[i / 64] |= 1ULL << (i % 64);
}

static int s_is_flagged(const cm_job *job, const s_key *k)
{
    size_t i = (size_t)(k - s_keys);
    return (job->flagged_[i / 64] >> (i % 64)) & 1;
}

static int s_is_explicit(const cm_job *job, const s_key *k)
{
    size_t i = (size_t)(k - s_keys);
    return (job->explicit_[i / 64] >> (i % 64)) & 1;
}

/* Parses text for key k into *job and remembers that the user set it;
 * 0 or CM_ECONFIG with "where: reason". */
static int s_set(cm_job *job, const s_key *k, const char *value, const char *where,
                 cm_error *err)
{
    int rc = s_parse_into(job, k, value, where, err);
    if (rc == 0)
        s_mark_explicit(job, k, where);
    return rc;
}

static int s_parse_into(cm_job *job, const s_key *k, const char *value, const char *where,
                        cm_error *err)
{
    char at[CM_PATH_MAX + 96], range[128];
    s_where(at, sizeof at, where, k);
    s_range_text(k, range, sizeof range);
    char *field = (char *)job + k->off;

    switch (k->type) {
    case S_STR: {
        size_t len = strlen(value);
        if (len >= k->size)
            return cm_error_set(err, CM_ECONFIG, "%s: longer than %zu bytes", at, k->size - 1);
        memset(field, 0, k->size);
        memcpy(field, value, len);
        return 0;
    }
    case S_INT: {
        long long v;
        if (s_parse_ll(value, &v) != 0 || v < k->imin || v > k->imax)
            return cm_error_set(err, CM_ECONFIG, "%s: expected an integer in %s, got '%.80s'",
                                at, range, value);
        s_put_int(job, k, v);
        return 0;
    }
    case S_U64: {
        uint64_t v;
        if (s_parse_u64(value, &v) != 0)
            return cm_error_set(err, CM_ECONFIG,
                                "%s: expected an unsigned 64-bit integer, got '%.80s'", at, value);
        memcpy(field, &v, sizeof v);
        return 0;
    }
    case S_DBL: {
        double v;
        if (s_parse_dbl(value, &v) != 0 || v < k->dmin || (k->dmin_open && v == k->dmin) ||
            v > k->dmax)
            return cm_error_set(err, CM_ECONFIG, "%s: expected a number in %s, got '%.80s'",
                                at, range, value);
        memcpy(field, &v, sizeof v);
        return 0;
    }
    case S_ENUM:
    case S_WORD: {
        int i = s_choice(k->names, value);
        if (i < 0)
            return cm_error_set(err, CM_ECONFIG, "%s: expected one of %s, got '%.80s'", at,
                                range, value);
        if (k->type == S_WORD) {
            assert(strlen(k->names[i]) < k->size);
            memset(field, 0, k->size);
            memcpy(field, k->names[i], strlen(k->names[i]));
        } else {
            int v = k->values ? k->values[i] : i;
            memcpy(field, &v, sizeof v);
        }
        return 0;
    }
    case S_BOOL: {
        int v;
        if (s_parse_bool(value, &v) != 0)
            return cm_error_set(err, CM_ECONFIG,
                                "%s: expected a boolean (1/0, true/false, yes/no, on/off), "
                                "got '%.80s'",
                                at, value);
        memcpy(field, &v, sizeof v);
        return 0;
    }
    }
    return cm_error_set(err, CM_EINVAL, "%s: bad key type", at);
}

/* Writes the current value of k in job as text that s_set accepts back. */
static void s_value_text(const cm_job *job, const s_key *k, char *out, size_t n)
{
    const char *field = (const char *)job + k->off;
    switch (k->type) {
    case S_STR:
    case S_WORD:
        snprintf(out, n, "%.*s", (int)strnlen(field, k->size), field);
        return;
    case S_INT:
        snprintf(out, n, "%lld", s_get_int(job, k));
        return;
    case S_U64: {
        uint64_t v;
        memcpy(&v, field, sizeof v);
        snprintf(out, n, "%" PRIu64, v);
        return;
    }
    case S_DBL: {
        double v;
        memcpy(&v, field, sizeof v);
        /* shortest text that reads back as the same double */
        for (int prec = 6; prec <= 17; prec++) {
            snprintf(out, n, "%.*g", prec, v);
            if (strtod(out, NULL) == v)
                return;
        }
        return;
    }
    case S_ENUM: {
        int v;
        memcpy(&v, field, sizeof v);
        for (int i = 0; k->names[i]; i++)
            if ((k->values ? k->values[i] : i) == v) {
                snprintf(out, n, "%s", k->names[i]);
                return;
            }
        snprintf(out, n, "%d", v);
        return;
    }
    case S_BOOL: {
        int v;
        memcpy(&v, field, sizeof v);
        snprintf(out, n, "%d", v != 0);
        return;
    }
    }
    snprintf(out, n, "?");
}

/* Checks a value already in *job against its key's range (jobs can be
 * filled in by code, not only by s_set). */
static int s_check(const cm_job *job, const s_key *k, cm_error *err)
{
    const char *field = (const char *)job + k->off;
    char range[128];
    s_range_text(k, range, sizeof range);
    switch (k->type) {
    case S_STR:
        if (strnlen(field, k->size) >= k->size)
            return cm_error_set(err, CM_ECONFIG, "%s: not NUL-terminated", k->name);
        return 0;
    case S_INT: {
        long long v = s_get_int(job, k);
        if (v < k->imin || v > k->imax)
            return cm_error_set(err, CM_ECONFIG, "%s: %lld is not in %s", k->name, v, range);
        return 0;
    }
    case S_U64:
        return 0;
    case S_DBL: {
        double v;
        memcpy(&v, field, sizeof v);
        if (!isfinite(v) || v < k->dmin || (k->dmin_open && v == k->dmin) || v > k->dmax)
            return cm_error_set(err, CM_ECONFIG, "%s: %g is not in %s", k->name, v, range);
        return 0;
    }
    case S_WORD:
        if (strnlen(field, k->size) >= k->size || s_choice(k->names, field) < 0)
            return cm_error_set(err, CM_ECONFIG, "%s: '%.*s' is not one of %s", k->name,
                                (int)strnlen(field, k->size), field, range);
        return 0;
    case S_ENUM: {
        int v;
        memcpy(&v, field, sizeof v);
        for (int i = 0; k->names[i]; i++)
            if ((k->values ? k->values[i] : i) == v)
                return 0;
        return cm_error_set(err, CM_ECONFIG, "%s: %d is not one of %s", k->name, v, range);
    }
    case S_BOOL: {
        int v;
        memcpy(&v, field, sizeof v);
        if (v != 0 && v != 1)
            return cm_error_set(err, CM_ECONFIG, "%s: %d is not 0 or 1", k->name, v);
        return 0;
    }
    }
    return 0;
}

/* -------------------------------------------------------------------------
 * Public: defaults, set, job files
 * ------------------------------------------------------------------------- */

cm_job cm_job_default(void)
{
    cm_job job;
    memset(&job, 0, sizeof job);
    for (size_t i = 0; i < S_NKEYS; i++) {
        int rc = s_parse_into(&job, &s_keys[i], s_keys[i].def, "default", NULL);
        assert(rc == 0 && "every default in s_keys must parse");
        (void)rc;
    }
    return job;
}

int cm_job_set(cm_job *job, const char *key, const char *value, const char *where,
               cm_error *err)
{
    if (!job || !key)
        return cm_error_set(err, CM_EINVAL, "cm_job_set: NULL job or key");
    const s_key *k = s_find(key);
    if (!k)
        return s_unknown(err, where, key);
    if (!value) {
        char at[CM_PATH_MAX + 96];
        s_where(at, sizeof at, where, k);
        return cm_error_set(err, CM_ECONFIG, "%s: missing value", at);
    }
    return s_set(job, k, value, where, err);
}

/* State shared by the inih reader and handler while loading one file. */
typedef struct {
    FILE *f;
    const char *path;
    size_t line;      /* lines read so far: the line the handler sees */
    char *buf;        /* getline buffer */
    size_t cap;
    size_t long_line; /* first line too long for inih's buffer, or 0 */
    int read_errno;   /* errno of a read error, or 0 */
    cm_job *job;
    size_t err_line;  /* line of the first bad key or value, or 0 */
    cm_error err;     /* its message */
} s_ini;

static pthread_once_t s_ini_once = PTHREAD_ONCE_INIT;

static void s_ini_setup(void)
{
    /* Debian's inih reads its line length at run time (default 200, which
     * a long data path exceeds); we only ever raise it. */
    if (ini_max_line < S_LINE_MAX)
        ini_max_line = S_LINE_MAX;
}

/* fgets-style reader for inih. Counting lines here gives the handler its
 * line number (this inih is built without INI_HANDLER_LINENO). Leading
 * blanks are dropped so an indented line is a key of its own, never a
 * continuation of the previous value. */
static char *s_ini_read(char *str, int num, void *stream)
{
    s_ini *c = stream;
    ssize_t n = getline(&c->buf, &c->cap, c->f);
    if (n < 0) {
        if (ferror(c->f))
            c->read_errno = errno ? errno : EIO;
        return NULL;
    }
    c->line++;
    const char *p = c->buf;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t len = strlen(p);
    if (num < 2 || len + 1 > (size_t)num) {
        if (!c->long_line)
            c->long_line = c->line;
        p = "\n";
        len = 1;
    }
    memcpy(str, p, len + 1);
    return str;
}

static int s_ini_handler(void *user, const char *section, const char *name, const char *value)
{
    (void)section; /* sections are for readability only */
    s_ini *c = user;
    if (c->err_line)
        return 1;
    char where[CM_PATH_MAX + 32];
    snprintf(where, sizeof where, "%s:%zu", c->path, c->line);
    if (cm_job_set(c->job, name, value, where, &c->err) != 0)
        c->err_line = c->line;
    /* our errors are reported from c->err; inih's return value is left to
     * mean syntax errors only */
    return 1;
}

int cm_job_load_file(cm_job *job, const char *path, cm_error *err)
{
    if (!job || !path)
        return cm_error_set(err, CM_EINVAL, "cm_job_load_file: NULL job or path");
    pthread_once(&s_ini_once, s_ini_setup);

    int rc = 0;
    cm_job tmp = *job; /* a failed load leaves *job as it was */
    s_ini c = {.path = path, .job = &tmp};
    c.f = fopen(path, "r");
    if (!c.f) {
        rc = cm_error_set(err, CM_EIO, "%s: cannot open job file: %s", path, strerror(errno));
        goto out;
    }
    int r = ini_parse_stream(s_ini_read, &c, s_ini_handler, &c);
    if (c.read_errno) {
        rc = cm_error_set(err, CM_EIO, "%s: cannot read job file: %s", path,
                          strerror(c.read_errno));
        goto out;
    }
    if (r < 0) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory while parsing", path);
        goto out;
    }
    /* report the earliest problem in the file */
    size_t first = r > 0 ? (size_t)r : 0;
    if (c.long_line && (!first || c.long_line < first))
        first = c.long_line;
    if (c.err_line && (!first || c.err_line < first))
        first = c.err_line;
    if (!first)
        goto out;
    if (first == c.long_line)
        rc = cm_error_set(err, CM_ECONFIG, "%s:%zu: line longer than %d bytes", path, first,
                          ini_max_line - 2);
    else if (first == c.err_line)
        rc = cm_error_set(err, c.err.code, "%s", c.err.msg);
    else
        rc = cm_error_set(err, CM_ECONFIG,
                          "%s:%zu: syntax error (expected 'key = value', '[section]' or "
                          "a '#' comment)",
                          path, first);
out:
    if (c.f)
        fclose(c.f);
    free(c.buf);
    if (rc == 0)
        *job = tmp;
    return rc;
}

/* -------------------------------------------------------------------------
 * Public: command line
 * ------------------------------------------------------------------------- */

static int s_is_help(const char *a)
{
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* One walk over argv. With apply=0 it checks the shape (known flags, values
 * present, at most one job file) and finds the job file; with apply=1 it
 * sets every flag's value into *job, in order, so a later flag wins. */
static int s_walk_args(cm_job *job, int argc, char **argv, int apply, const char **file,
                       cm_error *err)
{
    int only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || a[1] == '\0') {
            if (*file && *file != a && !apply)
                return cm_error_set(err, CM_ECONFIG,
                                    "%s: a second job file ('%s' was the first); "
                                    "give at most one",
                                    a, *file);
            *file = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_positional = 1;
            continue;
        }
        if (s_is_help(a))
            continue;
        if (a[1] != '-')
            return cm_error_set(err, CM_ECONFIG,
                                "%.80s: unknown option (keys are set with --key VALUE)", a);

        /* "--key", "--key=value" */
        const char *eq = strchr(a + 2, '=');
        size_t nlen = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        char name[S_NAME_MAX + 1], flag[S_NAME_MAX + 3];
        if (nlen == 0 || nlen > S_NAME_MAX)
            return cm_error_set(err, CM_ECONFIG, "%.80s: unknown option", a);
        memcpy(name, a + 2, nlen);
        name[nlen] = '\0';
        snprintf(flag, sizeof flag, "--%s", name);
        const s_key *k = s_find(name);
        if (!k)
            return s_unknown(err, flag, name);

        const char *value;
        if (eq) {
            value = eq + 1;
        } else if (k->type == S_BOOL) {
            /* "--refit 0" takes its word; a bare --local, or one followed
             * by anything but a boolean word (a job file), means 1 */
            int v;
            value = i + 1 < argc && s_parse_bool(argv[i + 1], &v) == 0 ? argv[++i] : "1";
        } else if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0) {
            return cm_error_set(err, CM_ECONFIG, "%s: missing value (%s VALUE or %s=VALUE)",
                                flag, flag, flag);
        } else {
            value = argv[++i];
        }
        if (apply) {
            int rc = s_set(job, k, value, flag, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

int cm_job_parse_args(cm_job *job, int argc, char **argv, int *want_help, cm_error *err)
{
    if (!job || (argc > 0 && !argv))
        return cm_error_set(err, CM_EINVAL, "cm_job_parse_args: NULL job or argv");
    if (want_help)
        *want_help = 0;
    /* help wins over anything else on the line, even mistakes */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (s_is_help(argv[i])) {
            if (want_help)
                *want_help = 1;
            return 0;
        }
    }

    const char *file = NULL;
    int rc = s_walk_args(job, argc, argv, 0, &file, err);
    if (rc)
        return rc;
    cm_job tmp = *job; /* on error *job stays as it was */
    if (file) {
        rc = cm_job_load_file(&tmp, file, err);
        if (rc)
            return rc;
    }
    rc = s_walk_args(&tmp, argc, argv, 1, &file, err);
    if (rc == 0)
        rc = cm_job_apply_env(&tmp, err);
    if (rc)
        return rc;
    *job = tmp;
    return 0;
}

/* The keys an environment variable overrides. They stay variables because
 * scripts and tests set them for every rank at once (mpirun -x) without
 * touching the job; docs/config.md lists them. */
static const struct {
    const char *env, *key;
} s_env_keys[] = {
    {"PSREC_HOST", "host"},
    {"PSREC_TRANSPORT", "transport"},
    {"PSREC_SHARED_ROWS", "shared_rows"},
    {"PSREC_ALLOW_SINGLETON", "allow_singleton"},
};

int cm_job_apply_env(cm_job *job, cm_error *err)
{
    for (size_t i = 0; i < sizeof s_env_keys / sizeof s_env_keys[0]; i++) {
        const char *v = getenv(s_env_keys[i].env);
        const s_key *k = s_find(s_env_keys[i].key);
        if (!v || !*v)
            continue;
        assert(k);
        int rc = s_set(job, k, v, s_env_keys[i].env, err);
        if (rc)
            return rc;
    }
    return 0;
}

/* -------------------------------------------------------------------------
 * Public: validation and output
 * ------------------------------------------------------------------------- */

const cm_model *cm_model_of(const char *name)
{
    for (size_t i = 0; i < sizeof s_model_table / sizeof s_model_table[0]; i++)
        if (strcmp(name, s_model_table[i].name) == 0)
            return &s_model_table[i];
    return NULL;
}

const cm_model *cm_job_model(const cm_job *job)
{
    const cm_model *m = cm_model_of(job->model);
    return m ? m : &s_model_table[0];
}

/* The S_M_* bit of a model name; 0 for a name outside the model table. */
static unsigned s_model_bit(const char *model)
{
    const cm_model *m = cm_model_of(model);
    return m ? 1u << (m - s_model_table) : 0;
}

/* "fm, ffm, deep" for a models mask, "all" for 0. */
static void s_models_text(unsigned models, const char *sep, char *out, size_t n)
{
    size_t used = 0;
    out[0] = '\0';
    if (!models) {
        snprintf(out, n, "all");
        return;
    }
    for (int i = 0; s_models[i] && used < n; i++) {
        if (!(models & (1u << i)))
            continue;
        int w = snprintf(out + used, n - used, "%s%s", used ? sep : "", s_models[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/* 1 when job holds key k's table default (def is cm_job_default()). */
static int s_is_default(const cm_job *job, const cm_job *def, const s_key *k)
{
    const char *a = (const char *)job + k->off, *b = (const char *)def + k->off;
    if (k->type == S_STR || k->type == S_WORD)
        return strncmp(a, b, k->size) == 0;
    return memcmp(a, b, k->size) == 0;
}

/* A key given for a model it does not apply to is an error: ignoring it
 * would train another job than the one written. On the command line any
 * value counts; from a job file (or cm_job_set) only a value other than the
 * default, so a file that lists every key (as cm_job_print and the
 * checkpoints' job text do) still loads for every model. */
static int s_check_applies(const cm_job *job, cm_error *err)
{
    const unsigned bit = s_model_bit(job->model);
    if (!bit)
        return 0; /* s_check already refused the model */
    const cm_job def = cm_job_default();
    for (size_t i = 0; i < S_NKEYS; i++) {
        const s_key *k = &s_keys[i];
        if (!k->models || (k->models & bit) || !s_is_explicit(job, k) ||
            (!s_is_flagged(job, k) && s_is_default(job, &def, k)))
            continue;
        char value[CM_PATH_MAX + 64], models[64];
        s_value_text(job, k, value, sizeof value);
        s_models_text(k->models, ", ", models, sizeof models);
        if (s_is_flagged(job, k))
            return cm_error_set(err, CM_ECONFIG,
                                "--%s %.80s: applies to model %s, not %s (remove it, or "
                                "train a model it applies to)",
                                k->name, value, models, job->model);
        return cm_error_set(err, CM_ECONFIG,
                            "%s = %.80s: applies to model %s, not %s (remove it, or train a "
                            "model it applies to)",
                            k->name, value, models, job->model);
    }
    return 0;
}

/* How mf and implicit read their input: ratings, by position or by column
 * name; label_column is rating_column's other name there. */
static int s_check_ratings_input(const cm_job *job, cm_error *err)
{
    if (cm_job_is_sparse(job))
        return 0;
    if (job->format == CM_FMT_LIBSVM || job->format == CM_FMT_LIBFFM)
        return cm_error_set(err, CM_ECONFIG,
                            "format = %s: model %s reads ratings (format = ratings, or csv "
                            "with user_column, item_column, rating_column); libsvm and libffm "
                            "are for fm, ffm and deep",
                            s_formats[job->format], job->model);
    if (job->label_column[0] && job->rating_column[0] &&
        strcmp(job->label_column, job->rating_column) != 0)
        return cm_error_set(err, CM_ECONFIG,
                            "label_column = %.64s and rating_column = %.64s: for model %s both "
                            "name the rating column; give one",
                            job->label_column, job->rating_column, job->model);
    return 0;
}

int cm_job_validate(const cm_job *job, cm_error *err)
{
    if (!job)
        return cm_error_set(err, CM_EINVAL, "cm_job_validate: NULL job");
    for (size_t i = 0; i < S_NKEYS; i++) {
        int rc = s_check(job, &s_keys[i], err);
        if (rc)
            return rc;
    }
    if (!job->train[0])
        return cm_error_set(err, CM_ECONFIG,
                            "train: no training data (set train in the job file or --train PATH)");
    if (job->slots < job->servers)
        return cm_error_set(err, CM_ECONFIG,
                            "slots (%d) must be at least servers (%d): each server owns whole "
                            "slots",
                            job->slots, job->servers);
    if (strcmp(job->resume, "auto") == 0 && !job->checkpoint_dir[0])
        return cm_error_set(err, CM_ECONFIG,
                            "resume = auto needs checkpoint_dir: where should it look?");
    if (job->method == CM_METHOD_MCMC && !cm_job_model(job)->quadratic)
        return cm_error_set(err, CM_ECONFIG,
                            "method = mcmc is for models fm and mf (got %s); the other models "
                            "train with method = sgd",
                            job->model);
    /* learned regularization needs predictions that are quadratic in the
     * weights (reglearn.h) and validation rows to learn from */
    if (job->regularization == 1) {
        if (job->method == CM_METHOD_MCMC || !cm_job_model(job)->quadratic)
            return cm_error_set(err, CM_ECONFIG,
                                "regularization = learned is for models fm and mf with method "
                                "= sgd (got %s)",
                                job->model);
        if (!job->validation[0] && !(job->validation_fraction > 0))
            return cm_error_set(err, CM_ECONFIG,
                                "regularization = learned needs validation data: set "
                                "validation or validation_fraction > 0");
    }
    int rc = s_check_applies(job, err);
    if (rc == 0)
        rc = s_check_ratings_input(job, err);
    return rc;
}

void cm_job_print_help(FILE *f, int markdown)
{
    char range[128], def[160], models[64];
    if (markdown) {
        fprintf(f, "| key | type | range | default | models | description |\n");
        fprintf(f, "|-----|------|-------|---------|--------|-------------|\n");
        for (size_t i = 0; i < S_NKEYS; i++) {
            const s_key *k = &s_keys[i];
            s_range_text(k, range, sizeof range);
            s_models_text(k->models, ", ", models, sizeof models);
            /* '|' would split the markdown cell */
            char cell[256];
            size_t o = 0;
            for (const char *p = range; *p && o + 3 < sizeof cell; p++) {
                if (*p == '|')
                    cell[o++] = '\\';
                cell[o++] = *p;
            }
            cell[o] = '\0';
            fprintf(f, "| `%s` | %s | %s | %s%s%s | %s | %s |\n", k->name,
                    s_type_name(k->type), cell, k->def[0] ? "`" : "",
                    k->def[0] ? k->def : "(empty)", k->def[0] ? "`" : "", models, k->help);
        }
        return;
    }
    size_t wname = strlen("key"), wtype = strlen("type"), wrange = strlen("range"),
           wdef = strlen("default"), wmodels = strlen("models");
    for (size_t i = 0; i < S_NKEYS; i++) {
        const s_key *k = &s_keys[i];
        s_range_text(k, range, sizeof range);
        s_models_text(k->models, ",", models, sizeof models);
        size_t l = strlen(k->name) + 2; /* shown as --name */
        if (l > wname)
            wname = l;
        if (strlen(s_type_name(k->type)) > wtype)
            wtype = strlen(s_type_name(k->type));
        if (strlen(range) > wrange)
            wrange = strlen(range);
        if (strlen(k->def[0] ? k->def : "\"\"") > wdef)
            wdef = strlen(k->def[0] ? k->def : "\"\"");
        if (strlen(models) > wmodels)
            wmodels = strlen(models);
    }
    fprintf(f, "%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", (int)wname, "key", (int)wtype, "type",
            (int)wrange, "range", (int)wdef, "default", (int)wmodels, "models", "description");
    for (size_t i = 0; i < S_NKEYS; i++) {
        const s_key *k = &s_keys[i];
        char flag[S_NAME_MAX + 3];
        snprintf(flag, sizeof flag, "--%s", k->name);
        s_range_text(k, range, sizeof range);
        s_models_text(k->models, ",", models, sizeof models);
        snprintf(def, sizeof def, "%s", k->def[0] ? k->def : "\"\"");
        fprintf(f, "%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", (int)wname, flag, (int)wtype,
                s_type_name(k->type), (int)wrange, range, (int)wdef, def, (int)wmodels, models,
                k->help);
    }
}

void cm_job_print(FILE *f, const cm_job *job)
{
    char value[CM_PATH_MAX + 64];
    for (size_t i = 0; i < S_NKEYS; i++) {
        s_value_text(job, &s_keys[i], value, sizeof value);
        fprintf(f, "%s = %s\n", s_keys[i].name, value);
    }
}

_Static_assert(S_NKEYS <= CM_JOB_MAX_KEYS, "explicit_ has one bit per key");

/* Gives the keys of d that the user left unset d's values. */
static void s_apply_defaults(cm_job *job, const cm_default *d)
{
    for (; d && d->key; d++) {
        const s_key *k = s_find(d->key);
        if (!k || s_is_explicit(job, k))
            continue;
        if (k->type == S_INT)
            *(int *)((char *)job + k->off) = (int)d->value;
        else if (k->type == S_DBL)
            *(double *)((char *)job + k->off) = d->value;
    }
}

void cm_job_model_defaults(cm_job *job)
{
    const cm_model *m = cm_job_model(job);
    const int f = m->family;
    s_apply_defaults(job, s_family_defaults[f].all);
    s_apply_defaults(job, m->defaults);
    if (job->task == 0 /* cm_task regression */)
        s_apply_defaults(job, s_family_defaults[f].regression);
    if (job->method == CM_METHOD_MCMC)
        s_apply_defaults(job, s_mcmc_defaults);
}

int cm_job_is_explicit(const cm_job *job, const char *key)
{
    const s_key *k = s_find(key);
    return k && s_is_explicit(job, k);
}

const char *cm_job_sgd_key_set(const cm_job *job)
{
    for (size_t i = 0; i < S_NKEYS; i++)
        if (s_keys[i].sgd_only && s_is_explicit(job, &s_keys[i]))
            return s_keys[i].name;
    return NULL;
}

int cm_job_uses_blocks(const cm_job *job)
{
    return job->schedule == CM_SCHED_BLOCKS && cm_job_model(job)->family == CM_FAMILY_RATINGS;
}

int cm_job_is_sparse(const cm_job *job)
{
    return cm_job_model(job)->family == CM_FAMILY_SPARSE;
}

const char *cm_optimizer_name(int opt)
{
    if (opt < 0 || opt >= (int)(sizeof s_optimizers / sizeof s_optimizers[0]) - 1)
        return "?";
    return s_optimizers[opt];
}
