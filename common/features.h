/* features: sparse labelled examples for factorization machines, and side
 * features joined by user or item id.
 *
 * Examples come from libsvm/libFM text (`label idx:val ...`), libffm text
 * (`label field:idx:val ...`) or CSV with named columns (the Criteo layout:
 * a label column, numeric columns, categorical columns whose strings hash
 * to keys). They are held column-wise in CSR form: one label per example,
 * n+1 row offsets, and flat key/value(/field) arrays. Side features are a
 * per-id list of keys (value 1) read from a delimited file such as
 * ml-100k's u.user and u.item, for cold-start users and items.
 *
 * Bad lines follow dataset.h: never a crash, never silent; each is counted,
 * the first few are logged as "file:line: reason" and loading stops with
 * CM_ETOOMANY after more than max_bad_lines. How keys are formed, and every
 * rule, is in docs/features.md. */
#ifndef PSREC_COMMON_FEATURES_H
#define PSREC_COMMON_FEATURES_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* ------------------------------------------------------------------------
 * Examples
 * ------------------------------------------------------------------------ */

typedef enum {
    CM_TASK_REGRESSION = 0,  /* squared loss: any finite label */
    CM_TASK_BINARY = 1       /* logistic loss: labels -1/+1 or 0/1, stored as 0/1 */
} cm_task;

typedef struct {
    long max_bad_lines;   /* fail when more than this many; default 10;
                             negative: no limit */
    int log_bad_lines;    /* how many bad lines to log at WARN; default 5 */
    int task;             /* cm_task; default CM_TASK_REGRESSION */
    uint64_t max_index;   /* 0: unbounded. libsvm/libffm: an index >= max_index
                             is a bad line. CSV and side keys are hashes:
                             they are folded (key % max_index) instead */
    uint32_t n_fields;    /* libffm: 0 = the first data line sets the count
                             (its largest field + 1); otherwise fixed. A
                             field beyond the count is a bad line */
} cm_feat_opts;

/* The defaults above, by value. */
cm_feat_opts cm_feat_opts_default(void);

/* A set of sparse examples in CSR form. Example i has the features
 * [row_at[i], row_at[i+1]) of key/val (and field). cm_examples_free
 * releases everything. */
typedef struct {
    size_t n;             /* examples */
    float *label;         /* n labels (binary: 0 or 1) */
    uint64_t *row_at;     /* n + 1 offsets; row_at[0] = 0, row_at[n] = nnz */
    uint64_t *key;        /* nnz feature keys */
    float *val;           /* nnz feature values */
    uint32_t *field;      /* nnz field ids (libffm, CSV); NULL for libsvm */
    size_t nnz;           /* features in all */
    uint32_t n_fields;    /* fields (libffm, CSV); 0 for libsvm */
    size_t bad_lines;     /* malformed lines skipped while loading */
    void *owner_;         /* private: the memory behind the arrays */
} cm_examples;

/* Loads libsvm / libFM text (`label idx:val ...`, '#' comments) into *out
 * (zeroed on failure); opts NULL for the defaults. Key = index as written.
 * 0 or a CM_E* code with a message naming the file (and line). */
int cm_examples_load_libsvm(const char *path, const cm_feat_opts *opts, cm_examples *out,
                            cm_error *err);

/* Loads libffm text (`label field:idx:val ...`). Key = index (libffm
 * indices are global), field kept in out->field; out->n_fields is the
 * field count (opts->n_fields, or set by the first data line). */
int cm_examples_load_libffm(const char *path, const cm_feat_opts *opts, cm_examples *out,
                            cm_error *err);

/* Which CSV columns to use; names are matched against the header line. */
typedef struct {
    const char *label_column;          /* NULL: no label, every label is 0 */
    const char *const *numeric;        /* numeric column names */
    size_t n_numeric;
    const char *const *categorical;    /* categorical column names */
    size_t n_categorical;
    char sep;                          /* 0: auto (tab if the header has one,
                                          else ','); ',' or '\t' */
    int numeric_log;                   /* numeric values become
                                          sign(x) ln(1 + |x|); 0: as read */
} cm_csv_spec;

/* Loads a CSV file with a header line. Numeric column j (spec order) gives
 * key cm_feat_key_numeric(name), value the number (or its log, with
 * spec->numeric_log), field j; categorical
 * column j gives key cm_feat_key_categorical(name, s), value 1, field
 * n_numeric + j. Empty fields are absent. CM_EPARSE if a spec column is
 * missing from the header. */
int cm_examples_load_csv(const char *path, const cm_csv_spec *spec, const cm_feat_opts *opts,
                         cm_examples *out, cm_error *err);

/* Releases what *ex holds and zeroes it; no-op on a zeroed struct. */
void cm_examples_free(cm_examples *ex);

/* The key of numeric CSV column `column`: XXH64(name, seed 0). */
uint64_t cm_feat_key_numeric(const char *column);

/* The key of string s (n bytes) in categorical CSV column `column`:
 * XXH64(s, seed = XXH64(name, seed 0)). */
uint64_t cm_feat_key_categorical(const char *column, const char *s, size_t n);

/* ------------------------------------------------------------------------
 * Side features
 * ------------------------------------------------------------------------ */

typedef enum {
    CM_SIDE_CAT = 1,     /* each column's string -> one key */
    CM_SIDE_FLAGS = 2,   /* 0/1 columns (multi-hot) -> one key per set flag */
    CM_SIDE_BUCKET = 3   /* number x -> key of floor(x / width) */
} cm_side_kind;

/* A run of columns [first, last] (0-based; column 0 is the id) read one
 * way. */
typedef struct {
    uint32_t first, last;
    int kind;            /* cm_side_kind */
    double width;        /* CM_SIDE_BUCKET: bucket width (> 0) */
} cm_side_col;

#define CM_SIDE_MAX_COLS 16

typedef struct {
    const char *name;    /* namespace seeding every key ("ml100k.user"):
                            user and item keys never meet */
    char sep;            /* field separator ('|' for ml-100k) */
    uint32_t n_columns;  /* columns per line; 0: at least what cols use */
    size_t n_cols;       /* entries of cols */
    cm_side_col cols[CM_SIDE_MAX_COLS];
} cm_side_spec;

/* ml-100k u.user: `user|age|gender|occupation|zip`: age in decades
 * (bucket width 10), gender and occupation categorical; zip unused. */
cm_side_spec cm_side_spec_ml100k_user(void);

/* ml-100k u.item: `item|title|date|video date|url|19 genre flags`: the
 * genre flags (columns 5..23) multi-hot; the rest unused. */
cm_side_spec cm_side_spec_ml100k_item(void);

/* Side features by id. Opaque; one owner thread; read-only after load. */
typedef struct cm_side cm_side;

/* Loads `path` under *spec (copied; spec->name need not outlive the call).
 * Ids are read like dataset.h ids (numeric kept, other strings hashed), so
 * they join with cm_ratings keys. opts: max_bad_lines, log_bad_lines and
 * max_index (folds keys) are used; NULL for the defaults. A duplicate id is
 * a bad line. 0 or a CM_E* code; *out NULL on failure. */
int cm_side_load(const char *path, const cm_side_spec *spec, const cm_feat_opts *opts,
                 cm_side **out, cm_error *err);

/* Frees and NULLs *ps; no-op on NULL. */
void cm_side_destroy(cm_side **ps);

/* The keys of id (each with value 1): 1 and *keys, *n set when the id is
 * known; 0 with *keys NULL and *n 0 when not. The array belongs to side. */
int cm_side_features(const cm_side *side, uint64_t id, const uint64_t **keys, size_t *n);

/* Ids loaded; most keys any id has (for sizing batch buffers); bad lines. */
size_t cm_side_size(const cm_side *side);
size_t cm_side_max_keys(const cm_side *side);
size_t cm_side_bad_lines(const cm_side *side);

/* The keys cm_side_load makes (before any max_index folding), so models
 * and tests can name them: string s of categorical column `column`, flag
 * column `column` set, bucket b of numeric column `column`. */
uint64_t cm_side_key_cat(const cm_side_spec *spec, uint32_t column, const char *s, size_t n);
uint64_t cm_side_key_flag(const cm_side_spec *spec, uint32_t column);
uint64_t cm_side_key_bucket(const cm_side_spec *spec, uint32_t column, int64_t bucket);

#endif
