#include "worker/sparse.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/dataset.h"
#include "common/features.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/msg.h"
#include "common/rng.h"
#include "common/slots.h"
#include "common/sorted.h"

#define S_EVAL_BATCH 4096
#define S_MAX_FIELDS 1024  /* the fields key's range */
#define S_FIELDS_LINES 1000 /* lines read for a libffm field count, at most */

/* A set's fixed minibatches: batch b is rows [b * batch, (b + 1) * batch)
 * of the set. Its sorted unique keys (the bias key among them) and each
 * occurrence's row among them are worked out once, when the set is first
 * trained or scored, instead of in every epoch. */
typedef struct {
    size_t batch;        /* examples per batch (the last may have fewer); 0: not made */
    size_t n_batches;
    uint32_t *idx;       /* per occurrence of the set: its key's row in its batch */
    uint64_t *uniq;      /* the batches' unique keys, back to back */
    size_t *uat;         /* n_batches + 1: batch b's keys are uniq[uat[b] .. uat[b + 1]) */
    uint32_t *bias_row;  /* per batch: the bias key's row */
    size_t max_uniq;     /* the most keys of one batch */
} s_layout;

/* This worker's rows of one file, in CSR form (owned copies). */
typedef struct {
    size_t n;
    float *label;
    uint64_t *at;     /* n + 1 */
    uint64_t *key;
    float *val;
    uint32_t *field;  /* field of each occurrence (ffm, deep); NULL otherwise */
    size_t bad_lines;
    s_layout lay;     /* its minibatches */
} s_set;

struct wk_sparse {
    const cm_job *job;   /* the run's job (outlives this) */
    uint32_t index, n_workers; /* this worker keeps rows index mod n_workers */
    int task;
    int dim;
    uint32_t n_fields;   /* fields per example (ffm, deep); 0 when unused */
    size_t batch;
    s_set train, test;
    s_set valid;         /* validation rows (docs/validation.md) */
    /* batch scratch, grown as needed */
    float *rows, *grads, *score;
    size_t cap_rows, cap_ex;
    uint32_t *order;     /* an epoch's order of the training batches */
    /* models with a dense table (deep), set up at the first batch */
    const wk_model_ops *dense_model;
    wk_sparse_extra extra;  /* fields, dense rows and scratch, for ext models */
    float *dense_rows, *dense_grads;
    uint64_t *dense_keys;   /* 0 .. n_dense-1 */
    size_t n_dense;
    int dense_dim;
};

static void s_set_free(s_set *d)
{
    free(d->label);
    free(d->at);
    free(d->key);
    free(d->val);
    free(d->field);
    free(d->lay.idx);
    free(d->lay.uniq);
    free(d->lay.uat);
    free(d->lay.bias_row);
    memset(d, 0, sizeof *d);
}

void wk_sparse_destroy(wk_sparse **ps)
{
    if (!ps || !*ps)
        return;
    wk_sparse *s = *ps;
    s_set_free(&s->train);
    s_set_free(&s->test);
    s_set_free(&s->valid);
    free(s->rows);
    free(s->grads);
    free(s->score);
    free(s->order);
    if (s->dense_model)
        s->dense_model->scratch_destroy(&s->extra.scratch);
    free(s->dense_rows);
    free(s->dense_grads);
    free(s->dense_keys);
    free(s);
    *ps = NULL;
}

int wk_sparse_task(const wk_sparse *s)
{
    return s->task;
}

wk_sparse_view wk_sparse_examples(const wk_sparse *s, int test)
{
    const s_set *d = test ? &s->test : &s->train;
    return (wk_sparse_view){d->n, d->label, d->at, d->key, d->val, d->field};
}

/* 1 when the job names ratings columns (user_column ... timestamp_column). */
static int s_names_ratings_columns(const cm_job *job)
{
    return job->user_column[0] || job->item_column[0] || job->rating_column[0] ||
           job->timestamp_column[0];
}

/* 1 when the job names csv feature columns (label, numeric, categorical). */
static int s_names_csv_columns(const cm_job *job)
{
    return job->label_column[0] || job->numeric_columns[0] || job->categorical_columns[0];
}

/* 1 when [p, p + n) contains one of the words (ASCII, any case). */
static int s_has_word(const char *p, size_t n, const char *const *words)
{
    for (; *words; words++) {
        size_t w = strlen(*words);
        for (size_t i = 0; i + w <= n; i++)
            if (strncasecmp(p + i, *words, w) == 0)
                return 1;
    }
    return 0;
}

/* 1 when [p, p + n) is a whole decimal number. */
static int s_is_number(const char *p, size_t n)
{
    char buf[64];
    if (n == 0 || n >= sizeof buf)
        return 0;
    memcpy(buf, p, n);
    buf[n] = '\0';
    char *end;
    double v = strtod(buf, &end);
    return end != buf && *end == '\0' && isfinite(v);
}

/* Splits a csv line at sep into up to max fields (trimmed of blanks and a
 * line end); returns the full count. */
static int s_csv_fields(const char *line, char sep, const char **f, size_t *len, int max)
{
    int n = 0;
    const char *p = line;
    for (;;) {
        const char *e = p;
        while (*e && *e != sep && *e != '\n' && *e != '\r')
            e++;
        const char *s = p, *t = e;
        while (s < t && (*s == ' ' || *s == '\t'))
            s++;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if (n < max) {
            f[n] = s;
            len[n] = (size_t)(t - s);
        }
        n++;
        if (*e != sep)
            return n;
        p = e + 1;
    }
}

wk_csv_shape wk_csv_shape_of(const char *path, char *header, size_t header_size)
{
    static const char *const users[] = {"user", "uid", NULL};
    static const char *const items[] = {"item", "movie", "product", "iid", NULL};
    static const char *const ratings[] = {"rating", "score", "stars", NULL};
    if (header && header_size)
        header[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return WK_CSV_UNKNOWN; /* the loader names the error */
    char *line = NULL;
    size_t cap = 0;
    const char *fl[4];
    size_t fn[4];
    int lines = 0, shape = WK_CSV_UNKNOWN, header_fields = 0;
    while (lines < 2 && getline(&line, &cap, f) > 0) {
        const char *p = line;
        if (lines == 0 && (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBB &&
            (unsigned char)p[2] == 0xBF)
            p += 3; /* a UTF-8 byte order mark */
        p += strspn(p, " \t");
        if (*p == '\0' || *p == '\n' || *p == '\r' || *p == '#')
            continue;
        const char sep = strchr(p, '\t') ? '\t' : ',';
        int n = s_csv_fields(p, sep, fl, fn, 4);
        int numeric = n >= 3 && s_is_number(fl[2], fn[2]);
        if (lines++ == 0) {
            if (header && header_size)
                snprintf(header, header_size, "%.*s", (int)strcspn(p, "\r\n"), p);
            header_fields = n;
            if (n < 3 || n > 4) {
                shape = WK_CSV_COLUMNS;
                break;
            }
            if (numeric) { /* no header: user, item, rating rows as they are */
                shape = WK_CSV_RATINGS;
                break;
            }
            shape = s_has_word(fl[0], fn[0], users) && s_has_word(fl[1], fn[1], items) &&
                            s_has_word(fl[2], fn[2], ratings)
                        ? WK_CSV_RATINGS
                        : WK_CSV_AMBIGUOUS;
        } else if (n != header_fields || !numeric) {
            /* rows that do not read as ratings under the header */
            shape = WK_CSV_COLUMNS;
        }
    }
    free(line);
    fclose(f);
    return (wk_csv_shape)shape;
}

/* The input format of path: the job's; else by extension; else ratings
 * for a .psrd file or a text file whose first data line has no ':'; else
 * libffm when that line's first feature is field:idx:val; else libsvm. A
 * .csv file is csv when the job names csv columns, ratings when it names
 * ratings columns or its shape is ratings (wk_csv_shape_of), else csv
 * (wk_sparse_check_input then says how to read it). */
int wk_sparse_format(const cm_job *job, const char *path)
{
    if (job->format != CM_FMT_AUTO)
        return job->format;
    const char *dot = strrchr(path, '.');
    if (dot && (!strcasecmp(dot, ".ffm") || !strcasecmp(dot, ".libffm")))
        return CM_FMT_LIBFFM;
    if (dot && !strcasecmp(dot, ".csv")) {
        if (s_names_csv_columns(job))
            return CM_FMT_CSV;
        if (s_names_ratings_columns(job) || wk_csv_shape_of(path, NULL, 0) == WK_CSV_RATINGS)
            return CM_FMT_RATINGS;
        return CM_FMT_CSV;
    }
    if (cm_dataset_is_binary(path) == 1)
        return CM_FMT_RATINGS;
    FILE *f = fopen(path, "r");
    char line[4096];
    int fmt = CM_FMT_LIBSVM;
    while (f && fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n' || line[0] == '\r')
            continue;
        fmt = strchr(line, ':') && !strstr(line, "::") ? CM_FMT_LIBSVM : CM_FMT_RATINGS;
        /* `label field:idx:val`: the first feature has two colons */
        const char *tok = line + strcspn(line, " \t");
        tok += strspn(tok, " \t");
        const char *c1 = fmt == CM_FMT_LIBSVM ? strchr(tok, ':') : NULL;
        if (c1 && c1 - tok < (long)strcspn(tok, " \t\r\n")) {
            const char *c2 = strchr(c1 + 1, ':');
            if (c2 && c2 - tok < (long)strcspn(tok, " \t\r\n"))
                fmt = CM_FMT_LIBFFM;
        }
        break;
    }
    if (f)
        fclose(f);
    return fmt;
}

/* A csv file read with no label column would train on labels that are all
 * 0: say why and how to read the file instead. */
static int s_csv_needs_label(const char *path, cm_error *err)
{
    char header[200];
    wk_csv_shape shape = wk_csv_shape_of(path, header, sizeof header);
    if (shape == WK_CSV_AMBIGUOUS || shape == WK_CSV_RATINGS)
        return cm_error_set(err, CM_ECONFIG,
                            "%s: no label_column, and the header '%s' could be ratings or "
                            "named columns: set --format ratings (user item rating "
                            "[timestamp], or name them with --user_column, --item_column, "
                            "--rating_column), or --format csv --label_column NAME",
                            path, header);
    return cm_error_set(err, CM_ECONFIG,
                        "%s: csv with no label_column: every label would be 0. Set "
                        "--label_column NAME (with --numeric_columns and/or "
                        "--categorical_columns), or for ratings --format ratings with "
                        "--user_column, --item_column, --rating_column (header '%s')",
                        path, header);
}

int wk_sparse_check_input(const cm_job *job, cm_error *err)
{
    if (!cm_job_is_sparse(job))
        return 0;
    const char *paths[2] = {job->train, job->test};
    for (int i = 0; i < 2; i++) {
        if (!paths[i][0])
            continue;
        int fmt = wk_sparse_format(job, paths[i]);
        if (fmt == CM_FMT_CSV && !job->label_column[0])
            return s_csv_needs_label(paths[i], err);
        if (i == 0 && fmt == CM_FMT_RATINGS)
            break; /* the test file is read as ratings too (wk_sparse_new) */
    }
    return 0;
}

void wk_ratings_columns(const cm_job *job, cm_load_opts *o)
{
    o->user_column = job->user_column;
    o->item_column = job->item_column;
    /* label_column is the rating column's other name wherever ratings are
     * read (a csv job's label_column makes the file csv instead) */
    o->rating_column = job->rating_column[0] ? job->rating_column : job->label_column;
    o->timestamp_column = job->timestamp_column;
}

/* Ratings as FM examples: the user and the item as one-hot features, each
 * in its own key space, plus their side features (value 1 each) when side
 * files are given. Rows i with i % n_workers == index are kept. With
 * fields, the fields are S_FIELD_USER .. S_FIELD_ITEM_SIDE. */
#define S_USER_NS 0x7573657273ULL
#define S_ITEM_NS 0x6974656d73ULL

enum { S_FIELD_USER, S_FIELD_ITEM, S_FIELD_USER_SIDE, S_FIELD_ITEM_SIDE };

/* Row i of a file is this worker's when i is index modulo the worker
 * count, and goes to the set being taken when held (NULL: none held) marks
 * it as `want`: 0 training, 1 validation. */
#define S_TAKES(held, i, want) ((held) ? (held)[i] == (want) : (want) == 0)

static int s_take_ratings(const cm_ratings *all, const cm_side *us, const cm_side *is,
                          uint32_t index, uint32_t n_workers, int fields,
                          const unsigned char *held, int want, s_set *d, cm_error *err)
{
    size_t n = 0, nnz = 0;
    const uint64_t *k;
    size_t nk;
    for (size_t i = index; i < all->n; i += n_workers) {
        if (!S_TAKES(held, i, want))
            continue;
        n++;
        nnz += 2;
        if (us && cm_side_features(us, all->user[i], &k, &nk))
            nnz += nk;
        if (is && cm_side_features(is, all->item[i], &k, &nk))
            nnz += nk;
    }
    d->label = malloc((n + 1) * sizeof *d->label);
    d->at = malloc((n + 1) * sizeof *d->at);
    d->key = malloc((nnz + 1) * sizeof *d->key);
    d->val = malloc((nnz + 1) * sizeof *d->val);
    if (fields)
        d->field = malloc((nnz + 1) * sizeof *d->field);
    if (!d->label || !d->at || !d->key || !d->val || (fields && !d->field))
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for %zu examples", n);
    uint32_t scratch_field;
    uint32_t *fld = fields ? d->field : &scratch_field;
    const size_t fstep = fields ? 1 : 0;
    d->n = n;
    d->at[0] = 0;
    size_t j = 0, a = 0;
    for (size_t i = index; i < all->n; i += n_workers) {
        if (!S_TAKES(held, i, want))
            continue;
        d->label[j] = all->rating[i];
        fld[a * fstep] = S_FIELD_USER;
        d->key[a] = cm_hash_key(all->user[i], S_USER_NS);
        d->val[a++] = 1.f;
        fld[a * fstep] = S_FIELD_ITEM;
        d->key[a] = cm_hash_key(all->item[i], S_ITEM_NS);
        d->val[a++] = 1.f;
        if (us && cm_side_features(us, all->user[i], &k, &nk))
            for (size_t x = 0; x < nk; x++, a++) {
                fld[a * fstep] = S_FIELD_USER_SIDE;
                d->key[a] = k[x];
                d->val[a] = 1.f;
            }
        if (is && cm_side_features(is, all->item[i], &k, &nk))
            for (size_t x = 0; x < nk; x++, a++) {
                fld[a * fstep] = S_FIELD_ITEM_SIDE;
                d->key[a] = k[x];
                d->val[a] = 1.f;
            }
        d->at[++j] = a;
    }
    d->bad_lines = all->bad_lines;
    return 0;
}

/* 1 when the job's model reads a field per feature occurrence. */
static int s_needs_fields(const cm_job *job)
{
    return cm_job_model(job)->fields;
}

/* Splits "a,b,c" into up to max names (pointers into buf). */
static size_t s_split(char *buf, const char **names, size_t max)
{
    size_t n = 0;
    for (char *p = buf; *p && n < max;) {
        while (*p == ',' || *p == ' ')
            p++;
        if (!*p)
            break;
        names[n++] = p;
        while (*p && *p != ',')
            p++;
        if (*p)
            *p++ = '\0';
    }
    return n;
}

int wk_sparse_load_features(const cm_job *job, const char *path, int log_lines,
                            cm_examples *out, cm_error *err)
{
    cm_feat_opts fo = cm_feat_opts_default();
    fo.max_bad_lines = job->max_bad_lines;
    fo.log_bad_lines = log_lines;
    fo.task = CM_TASK_REGRESSION; /* raw labels; the task is settled after */
    fo.n_fields = job->fields > 0 ? (uint32_t)job->fields : 0;
    switch (wk_sparse_format(job, path)) {
    case CM_FMT_LIBFFM:
        return cm_examples_load_libffm(path, &fo, out, err);
    case CM_FMT_CSV: {
        if (!job->label_column[0])
            return s_csv_needs_label(path, err);
        char num[CM_PATH_MAX], cat[CM_PATH_MAX];
        const char *nn[256], *cn[256];
        snprintf(num, sizeof num, "%s", job->numeric_columns);
        snprintf(cat, sizeof cat, "%s", job->categorical_columns);
        cm_csv_spec spec = {.label_column = job->label_column[0] ? job->label_column : NULL,
                            .numeric = nn, .n_numeric = s_split(num, nn, 256),
                            .categorical = cn, .n_categorical = s_split(cat, cn, 256),
                            .numeric_log = job->numeric_transform == 1};
        return cm_examples_load_csv(path, &spec, &fo, out, err);
    }
    default:
        return cm_examples_load_libsvm(path, &fo, out, err);
    }
}

/* Copies the rows i with i % n_workers == index that S_TAKES (and their
 * fields when fields is set). */
static int s_take(const cm_examples *all, uint32_t index, uint32_t n_workers, int fields,
                  const unsigned char *held, int want, s_set *d, cm_error *err)
{
    size_t n = 0, nnz = 0;
    for (size_t i = index; i < all->n; i += n_workers) {
        if (!S_TAKES(held, i, want))
            continue;
        n++;
        nnz += all->row_at[i + 1] - all->row_at[i];
    }
    d->label = malloc((n + 1) * sizeof *d->label);
    d->at = malloc((n + 1) * sizeof *d->at);
    d->key = malloc((nnz + 1) * sizeof *d->key);
    d->val = malloc((nnz + 1) * sizeof *d->val);
    fields = fields && all->field;
    if (fields)
        d->field = malloc((nnz + 1) * sizeof *d->field);
    if (!d->label || !d->at || !d->key || !d->val || (fields && !d->field))
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for %zu examples", n);
    d->n = n;
    d->at[0] = 0;
    size_t j = 0, k = 0;
    for (size_t i = index; i < all->n; i += n_workers) {
        if (!S_TAKES(held, i, want))
            continue;
        d->label[j] = all->label[i];
        for (uint64_t a = all->row_at[i]; a < all->row_at[i + 1]; a++, k++) {
            d->key[k] = all->key[a];
            d->val[k] = all->val[a];
            if (fields)
                d->field[k] = all->field[a];
        }
        d->at[++j] = k;
    }
    d->bad_lines = all->bad_lines;
    return 0;
}

/* The field count of a libffm file: the largest field + 1 of its first
 * line that reads as libffm (the loader lets the same line set it). */
static int s_libffm_fields(const char *path, cm_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return cm_error_set(err, CM_EIO, "%s: cannot read the training data", path);
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0, max = -1;
    while (max < 0 && lineno < S_FIELDS_LINES && getline(&line, &cap, f) > 0) {
        lineno++;
        char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save), *end;
        if (!tok || *tok == '#')
            continue;
        double label = strtod(tok, &end);
        if (*end || !isfinite(label))
            continue; /* a bad line to the loader too: the next one decides */
        long m = -1;
        while ((tok = strtok_r(NULL, " \t\r\n", &save)) != NULL && *tok != '#') {
            char *c1 = strchr(tok, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
            long v = strtol(tok, &end, 10);
            if (!c2 || strchr(c2 + 1, ':') || end != c1 || tok[0] < '0' || tok[0] > '9' ||
                v >= INT_MAX) {
                m = -1;
                break;
            }
            m = v > m ? v : m;
        }
        max = m;
    }
    free(line);
    fclose(f);
    if (max >= S_MAX_FIELDS)
        return cm_error_set(err, CM_ECONFIG,
                            "%s:%ld: field %ld: at most %d fields are supported", path, lineno,
                            max, S_MAX_FIELDS);
    if (max < 0)
        return cm_error_set(err, CM_EPARSE,
                            "%s: no libffm line (label field:idx:val ...) in its first %ld to "
                            "read the field count from; set fields",
                            path, lineno);
    return (int)max + 1;
}

int wk_sparse_fields(const cm_job *job, cm_error *err)
{
    if (!s_needs_fields(job))
        return job->fields;
    return wk_sparse_data_fields(job, err);
}

int wk_sparse_data_fields(const cm_job *job, cm_error *err)
{
    if (job->fields > 0)
        return job->fields;
    switch (wk_sparse_format(job, job->train)) {
    case CM_FMT_RATINGS:
        return job->user_features[0] || job->item_features[0] ? 4 : 2;
    case CM_FMT_LIBFFM:
        return s_libffm_fields(job->train, err);
    case CM_FMT_CSV: {
        char num[CM_PATH_MAX], cat[CM_PATH_MAX];
        const char *names[256];
        snprintf(num, sizeof num, "%s", job->numeric_columns);
        snprintf(cat, sizeof cat, "%s", job->categorical_columns);
        size_t n = s_split(num, names, 256) + s_split(cat, names, 256);
        if (n == 0)
            return cm_error_set(err, CM_ECONFIG,
                                "%s: model %s on csv needs numeric_columns or "
                                "categorical_columns (one field each)",
                                job->train, job->model);
        return (int)n;
    }
    default:
        return cm_error_set(err, CM_ECONFIG,
                            "%s: model %s needs a field per feature, and libsvm/libFM input "
                            "has none: use libffm (label field:idx:val ...), csv columns or "
                            "ratings, or model = fm",
                            job->train, job->model);
    }
}

/* Binary when every training label is -1, 0 or 1. */
static int s_is_binary(const cm_examples *ex)
{
    for (size_t i = 0; i < ex->n; i++)
        if (ex->label[i] != 1.f && ex->label[i] != 0.f && ex->label[i] != -1.f)
            return 0;
    return ex->n > 0;
}

/* Binary labels to 0/1; anything else is an error naming the file. */
static int s_binarize(s_set *d, const char *path, cm_error *err)
{
    for (size_t i = 0; i < d->n; i++) {
        float t = d->label[i];
        if (t != 1.f && t != 0.f && t != -1.f)
            return cm_error_set(err, CM_EPARSE,
                                "%s: label %g in a binary task (labels must be -1/+1 or 0/1)",
                                path, (double)t);
        d->label[i] = t > 0.f ? 1.f : 0.f;
    }
    return 0;
}

/* Ratings files (train and test) with optional side features: regression
 * on the ratings. */
static int s_load_ratings(wk_sparse *s, const cm_job *job, uint32_t index,
                          uint32_t n_workers, int log_lines, cm_error *err)
{
    cm_side *us = NULL, *is = NULL;
    cm_ratings all = {0};
    unsigned char *held = NULL;
    cm_load_opts lo = cm_load_opts_default();
    lo.max_bad_lines = job->max_bad_lines;
    lo.log_bad_lines = log_lines;
    wk_ratings_columns(job, &lo);
    cm_feat_opts fo = cm_feat_opts_default();
    fo.max_bad_lines = job->max_bad_lines;
    fo.log_bad_lines = log_lines;
    int rc = 0;
    if (job->user_features[0]) {
        cm_side_spec sp = cm_side_spec_ml100k_user();
        if ((rc = cm_side_load(job->user_features, &sp, &fo, &us, err)) != 0)
            goto out;
    }
    if (job->item_features[0]) {
        cm_side_spec sp = cm_side_spec_ml100k_item();
        if ((rc = cm_side_load(job->item_features, &sp, &fo, &is, err)) != 0)
            goto out;
    }
    s->task = job->task == CM_JOB_TASK_AUTO ? CM_TASK_REGRESSION : job->task;
    const char *paths[3] = {job->train, job->test, job->validation};
    s_set *sets[3] = {&s->train, &s->test, &s->valid};
    for (int f = 0; f < 3 && rc == 0; f++) {
        if (!paths[f][0])
            continue;
        if ((rc = cm_ratings_load(paths[f], &lo, &all, err)) != 0)
            goto out;
        /* no validation file: the training file's carved pairs */
        if (f == 0 && !job->validation[0] && job->validation_fraction > 0) {
            if (!(held = malloc(all.n + 1))) {
                rc = cm_error_set(err, CM_ENOMEM, "worker: out of memory");
                goto out;
            }
            for (size_t i = 0; i < all.n; i++)
                held[i] = (unsigned char)cm_carve_pair(all.user[i], all.item[i], job->seed,
                                                       job->validation_fraction);
            rc = s_take_ratings(&all, us, is, index, n_workers, s->n_fields > 0, held, 1,
                                &s->valid, err);
            if (rc == 0 && s->task == CM_TASK_BINARY)
                rc = s_binarize(&s->valid, paths[f], err);
        }
        if (rc == 0)
            rc = s_take_ratings(&all, us, is, index, n_workers, s->n_fields > 0,
                                f == 0 ? held : NULL, 0, sets[f], err);
        cm_ratings_free(&all);
        if (rc == 0 && s->task == CM_TASK_BINARY)
            rc = s_binarize(sets[f], paths[f], err);
    }
out:
    free(held);
    cm_ratings_free(&all);
    cm_side_destroy(&us);
    cm_side_destroy(&is);
    return rc;
}

/* This worker's rows of a held-out file (`what`: validation or test) into
 * *set, labelled as the training rows are. The task is settled. */
static int s_load_held_out(wk_sparse *s, const char *path, const char *what, int log_lines,
                           s_set *set, cm_error *err)
{
    const int fields = s_needs_fields(s->job);
    cm_examples all = {0};
    int rc = wk_sparse_load_features(s->job, path, log_lines, &all, err);
    if (rc == 0 && fields && (!all.field || all.n_fields > s->n_fields))
        rc = cm_error_set(err, CM_ECONFIG, "%s: the %s data has %u fields, the model %u", path,
                          what, all.n_fields, s->n_fields);
    if (rc == 0)
        rc = s_take(&all, s->index, s->n_workers, fields, NULL, 0, set, err);
    cm_examples_free(&all);
    if (rc == 0 && s->task == CM_TASK_BINARY)
        rc = s_binarize(set, path, err);
    return rc;
}

wk_sparse *wk_sparse_new(const cm_job *job, uint32_t index, uint32_t n_workers, int dim,
                         cm_error *err)
{
    return wk_sparse_new_fields(job, index, n_workers, dim, s_needs_fields(job), err);
}

wk_sparse *wk_sparse_new_fields(const cm_job *job, uint32_t index, uint32_t n_workers, int dim,
                                int keep_fields, cm_error *err)
{
    wk_sparse *s = calloc(1, sizeof *s);
    cm_examples all = {0};
    unsigned char *held = NULL; /* per training row: 1 carved for validation */
    if (!s) {
        cm_error_set(err, CM_ENOMEM, "worker: out of memory");
        return NULL;
    }
    s->job = job;
    s->index = index;
    s->n_workers = n_workers;
    s->dim = dim;
    s->batch = (size_t)job->batch;
    const int log_lines = index == 0 ? 5 : 0;
    const int fields = keep_fields;
    if (fields) {
        /* the tables were made for job->fields: the launcher resolves 0 */
        if (job->fields < 1) {
            cm_error_set(err, CM_ECONFIG,
                         "worker: model %s with fields = 0 (wk_sparse_fields resolves it "
                         "before the tables are made)",
                         job->model);
            goto fail;
        }
        s->n_fields = (uint32_t)job->fields;
    }
    if (wk_sparse_format(job, job->train) == CM_FMT_RATINGS) {
        const uint32_t need = job->user_features[0] || job->item_features[0] ? 4 : 2;
        if (fields && need > s->n_fields) {
            cm_error_set(err, CM_ECONFIG,
                         "%s: ratings%s have %u fields (user, item%s) but fields = %u",
                         job->train, need == 4 ? " with side features" : "", need,
                         need == 4 ? ", user side, item side" : "", s->n_fields);
            goto fail;
        }
        if (s_load_ratings(s, job, index, n_workers, log_lines, err) != 0)
            goto fail;
        goto loaded;
    }
    if (wk_sparse_load_features(job, job->train, log_lines, &all, err) != 0)
        goto fail;
    if (fields && !all.field) {
        /* the launcher says so first (wk_sparse_fields); a direct caller
         * with fields set gets it here */
        cm_error_set(err, CM_ECONFIG,
                     "%s: model %s needs a field per feature, and libsvm/libFM input has "
                     "none: use libffm (label field:idx:val ...), csv columns or ratings",
                     job->train, job->model);
        goto fail;
    }
    if (fields && all.n_fields > s->n_fields) {
        cm_error_set(err, CM_ECONFIG, "%s: the data has %u fields but fields = %u", job->train,
                     all.n_fields, s->n_fields);
        goto fail;
    }
    s->task = job->task == CM_JOB_TASK_AUTO
                  ? (s_is_binary(&all) ? CM_TASK_BINARY : CM_TASK_REGRESSION)
                  : job->task;
    if (!job->validation[0] && job->validation_fraction > 0) {
        /* no validation file: carved by position in the training file */
        if (!(held = malloc(all.n + 1))) {
            cm_error_set(err, CM_ENOMEM, "worker: out of memory");
            goto fail;
        }
        for (size_t i = 0; i < all.n; i++)
            held[i] = (unsigned char)cm_carve_position(i, job->seed, job->validation_fraction);
        if (s_take(&all, index, n_workers, fields, held, 1, &s->valid, err) != 0)
            goto fail;
        if (s->task == CM_TASK_BINARY && s_binarize(&s->valid, job->train, err) != 0)
            goto fail;
    }
    if (s_take(&all, index, n_workers, fields, held, 0, &s->train, err) != 0)
        goto fail;
    cm_examples_free(&all);
    if (s->task == CM_TASK_BINARY && s_binarize(&s->train, job->train, err) != 0)
        goto fail;
    if (job->validation[0] &&
        s_load_held_out(s, job->validation, "validation", log_lines, &s->valid, err) != 0)
        goto fail;
    if (job->test[0] && s_load_held_out(s, job->test, "test", log_lines, &s->test, err) != 0)
        goto fail;
loaded:
    free(held);
    return s;
fail:
    free(held);
    cm_examples_free(&all);
    wk_sparse_destroy(&s);
    return NULL;
}

void wk_sparse_hello(const wk_sparse *s, cm_hello *he, float *loads, uint32_t n_slots)
{
    double sum = 0, lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < s->train.n; i++) {
        sum += s->train.label[i];
        lo = fmin(lo, s->train.label[i]);
        hi = fmax(hi, s->train.label[i]);
    }
    he->n_train = s->train.n;
    he->label_sum = sum;
    he->label_min = s->train.n ? lo : 0;
    he->label_max = s->train.n ? hi : 0;
    he->n_test = s->test.n;
    he->bad_train = s->train.bad_lines;
    he->bad_test = s->test.bad_lines;
    he->noise_floor = -1;
    he->task = s->task;
    he->n_valid = s->valid.n;
    const size_t nnz = s->train.n ? s->train.at[s->train.n] : 0;
    for (size_t k = 0; k < nnz; k++)
        loads[cm_slot_of(s->train.key[k], 0, n_slots)] += 1.f;
}

/* Puts the examples of d in a random order (seeded), so that the fixed
 * minibatches (s_layout) are consecutive rows and differ from the file's
 * order. */
static int s_set_shuffle(s_set *d, uint64_t seed, cm_error *err)
{
    const size_t n = d->n, nnz = n ? d->at[n] : 0;
    uint32_t *perm = malloc((n + 1) * sizeof *perm);
    float *label = malloc((n + 1) * sizeof *label), *val = malloc((nnz + 1) * sizeof *val);
    uint64_t *at = malloc((n + 1) * sizeof *at), *key = malloc((nnz + 1) * sizeof *key);
    uint32_t *field = d->field ? malloc((nnz + 1) * sizeof *field) : NULL;
    if (!perm || !label || !val || !at || !key || (d->field && !field)) {
        free(perm);
        free(label);
        free(val);
        free(at);
        free(key);
        free(field);
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory shuffling %zu examples", n);
    }
    cm_rng rng;
    cm_rng_seed(&rng, seed);
    for (size_t j = 0; j < n; j++)
        perm[j] = (uint32_t)j;
    cm_rng_shuffle_u32(&rng, perm, n);
    at[0] = 0;
    for (size_t j = 0, k = 0; j < n; j++) {
        const size_t r = perm[j], len = d->at[r + 1] - d->at[r];
        label[j] = d->label[r];
        memcpy(key + k, d->key + d->at[r], len * sizeof *key);
        memcpy(val + k, d->val + d->at[r], len * sizeof *val);
        if (field)
            memcpy(field + k, d->field + d->at[r], len * sizeof *field);
        k += len;
        at[j + 1] = k;
    }
    free(perm);
    free(d->label);
    free(d->at);
    free(d->key);
    free(d->val);
    free(d->field);
    d->label = label;
    d->at = at;
    d->key = key;
    d->val = val;
    d->field = field;
    return 0;
}

/* Makes d's layout of batches of `batch` examples (a no-op once made). */
static int s_layout_make(s_set *d, size_t batch, cm_error *err)
{
    s_layout *l = &d->lay;
    if (l->batch)
        return 0;
    const size_t nb = (d->n + batch - 1) / batch, nnz = d->n ? d->at[d->n] : 0;
    size_t most = 0; /* occurrences of the largest batch */
    for (size_t b = 0; b < nb; b++) {
        const size_t first = b * batch, last = first + batch < d->n ? first + batch : d->n;
        if (d->at[last] - d->at[first] > most)
            most = d->at[last] - d->at[first];
    }
    /* a batch has at most its occurrences + the bias as keys */
    l->idx = malloc((nnz + 1) * sizeof *l->idx);
    l->uniq = malloc((nnz + nb + 1) * sizeof *l->uniq);
    l->uat = malloc((nb + 1) * sizeof *l->uat);
    l->bias_row = malloc((nb + 1) * sizeof *l->bias_row);
    uint64_t *keys = malloc((most + 1) * sizeof *keys);
    uint64_t *scratch = malloc(2 * (most + 1) * sizeof *scratch);
    uint32_t *idx = malloc((most + 1) * sizeof *idx);
    int rc = 0;
    if (!l->idx || !l->uniq || !l->uat || !l->bias_row || !keys || !scratch || !idx) {
        rc = cm_error_set(err, CM_ENOMEM, "worker: out of memory for the batches of %zu "
                          "examples", d->n);
        goto out;
    }
    l->uat[0] = 0;
    l->max_uniq = 0;
    for (size_t b = 0; b < nb; b++) {
        const size_t first = b * batch, last = first + batch < d->n ? first + batch : d->n;
        const size_t from = d->at[first], m = d->at[last] - from;
        size_t nu;
        memcpy(keys, d->key + from, m * sizeof *keys);
        keys[m] = WK_FM_BIAS_KEY;
        cm_dedupe_u64(keys, m + 1, l->uniq + l->uat[b], idx, &nu, scratch);
        memcpy(l->idx + from, idx, m * sizeof *idx);
        l->bias_row[b] = idx[m];
        l->uat[b + 1] = l->uat[b] + nu;
        if (nu > l->max_uniq)
            l->max_uniq = nu;
    }
    uint64_t *fit = realloc(l->uniq, (l->uat[nb] + 1) * sizeof *fit);
    if (fit)
        l->uniq = fit;
    l->n_batches = nb;
    l->batch = batch;
out:
    free(keys);
    free(scratch);
    free(idx);
    return rc;
}

/* Makes room for a batch of n examples with nu unique keys. */
static int s_reserve(wk_sparse *s, size_t n, size_t nu, cm_error *err)
{
    if (nu > s->cap_rows) {
        const size_t c = nu * 2;
        free(s->rows);
        free(s->grads);
        s->rows = malloc(c * (size_t)s->dim * sizeof *s->rows);
        s->grads = malloc(c * (size_t)s->dim * sizeof *s->grads);
        s->cap_rows = c;
        if (!s->rows || !s->grads) {
            s->cap_rows = 0;
            return cm_error_set(err, CM_ENOMEM, "worker: out of memory for a batch");
        }
    }
    if (n + 1 > s->cap_ex) {
        const size_t c = (n + 1) * 2;
        free(s->score);
        s->score = malloc(c * sizeof *s->score);
        s->cap_ex = c;
        if (!s->score) {
            s->cap_ex = 0;
            return cm_error_set(err, CM_ENOMEM, "worker: out of memory for a batch");
        }
    }
    return 0;
}

/* Batch bi of d (its layout made) as the model sees it, reading the set's
 * arrays in place, and pulls its rows. */
static int s_batch(wk_sparse *s, wk_kv *kv, const s_set *d, size_t bi, uint32_t flags,
                   wk_sparse_batch *b, size_t *n_uniq, cm_error *err)
{
    const s_layout *l = &d->lay;
    const size_t first = bi * l->batch;
    const size_t n = d->n - first < l->batch ? d->n - first : l->batch;
    const size_t nu = l->uat[bi + 1] - l->uat[bi];
    int rc = s_reserve(s, n, nu, err);
    if (rc != 0)
        return rc;
    /* at holds offsets into the whole set's arrays: idx and val are the
     * set's, not copies */
    *b = (wk_sparse_batch){n, d->at + first, l->idx, d->val, d->label + first, l->bias_row[bi]};
    *n_uniq = nu;
    s->extra.field = d->field;
    s->extra.n_fields = d->field ? s->n_fields : 0;
    /* the dense rows are made on first touch even while evaluating: they
     * start from the net's initialisation, not zeros */
    wk_pull req[2] = {{0, l->uniq + l->uat[bi], nu, s->rows, flags, 0},
                      {1, s->dense_keys, s->n_dense, s->dense_rows, 0, 0}};
    return wk_kv_pull(kv, req, s->dense_model ? 2 : 1, err);
}

/* Models with a dense table: their scratch and the dense rows' buffers,
 * made once (the first batch tells which model runs). */
static int s_dense_setup(wk_sparse *s, const wk_model_ops *m, cm_error *err)
{
    if (!m->dense_rows || s->dense_model)
        return 0;
    if (!m->scratch_new || !m->scratch_destroy || !m->train_ext || !m->predict_ext ||
        m->n_tables < 2)
        return cm_error_set(err, CM_EINVAL, "worker: model %s has an incomplete dense part",
                            m->name);
    cm_table_spec tp;
    m->table_params(s->job, 1, &tp);
    const size_t max_batch = s->batch > S_EVAL_BATCH ? s->batch : S_EVAL_BATCH;
    void *scratch = m->scratch_new(s->job, (int)max_batch, err);
    if (!scratch)
        return err && err->code ? err->code : CM_ENOMEM;
    s->dense_model = m;
    s->extra.scratch = scratch;
    s->dense_dim = tp.dim;
    s->n_dense = m->dense_rows(s->job);
    /* 64-byte aligned for BLAS: a multiple of 16 floats per row */
    const size_t floats = (s->n_dense * (size_t)tp.dim + 15) / 16 * 16;
    s->dense_rows = aligned_alloc(64, floats * sizeof(float));
    s->dense_grads = aligned_alloc(64, floats * sizeof(float));
    s->dense_keys = malloc(s->n_dense * sizeof *s->dense_keys);
    if (!s->dense_rows || !s->dense_grads || !s->dense_keys)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for %zu dense rows",
                            s->n_dense);
    for (size_t r = 0; r < s->n_dense; r++)
        s->dense_keys[r] = r;
    s->extra.dense = s->dense_rows;
    s->extra.dense_grads = s->dense_grads;
    return 0;
}

int wk_sparse_train(wk_sparse *s, wk_kv *kv, const wk_model_ops *m, const wk_model_ctx *ctx,
                    uint64_t seed, wk_sparse_progress_fn progress, void *arg, double *loss,
                    size_t *n, cm_error *err)
{
    const size_t total = s->train.n;
    int rc = s_dense_setup(s, m, err);
    if (rc != 0)
        return rc;
    if (!s->train.lay.batch) {
        /* batch membership is drawn once; each epoch shuffles their order */
        if ((rc = s_set_shuffle(&s->train, s->job->seed, err)) != 0 ||
            (rc = s_layout_make(&s->train, s->batch, err)) != 0)
            return rc;
        s->order = malloc((s->train.lay.n_batches + 1) * sizeof *s->order);
        if (!s->order)
            return cm_error_set(err, CM_ENOMEM, "worker: out of memory");
    }
    const size_t nb = s->train.lay.n_batches;
    cm_rng rng;
    cm_rng_seed(&rng, seed);
    for (size_t j = 0; j < nb; j++)
        s->order[j] = (uint32_t)j;
    cm_rng_shuffle_u32(&rng, s->order, nb);
    double sum = 0;
    size_t done = 0;
    for (size_t i = 0; i < nb; i++) {
        size_t nu = 0;
        wk_sparse_batch b;
        if ((rc = s_batch(s, kv, &s->train, s->order[i], 0, &b, &nu, err)) != 0)
            return rc;
        memset(s->grads, 0, nu * (size_t)s->dim * sizeof(float));
        if (s->dense_model)
            memset(s->dense_grads, 0, s->n_dense * (size_t)s->dense_dim * sizeof(float));
        if (m->train_ext) {
            sum += m->train_ext(ctx, s->task, &b, &s->extra, s->dim, s->rows, s->grads);
        } else {
            sum += m->train_sparse(ctx, s->task, &b, s->dim, s->rows, s->grads);
        }
        const s_layout *l = &s->train.lay;
        if ((rc = wk_kv_push(kv, 0, l->uniq + l->uat[s->order[i]], nu, s->grads, err)) != 0)
            return rc;
        if (s->dense_model &&
            (rc = wk_kv_push(kv, 1, s->dense_keys, s->n_dense, s->dense_grads, err)) != 0)
            return rc;
        done += b.n;
        if (progress && (rc = progress(arg, done, sum)) != 0)
            return rc;
    }
    *loss += sum;
    *n += total;
    return wk_kv_flush(kv, err);
}

/* One evaluation batch's share of the learned-l2 sums: the batch's nu
 * rows scaled by 1 +- eps into *srows (grown to fit), scored again. */
static int s_reg_batch(wk_sparse *s, const wk_model_ops *m, const wk_model_ctx *ctx,
                       const wk_sparse_batch *b, size_t nu, float **srows, float *up,
                       float *down, wk_reg_sums *reg, cm_error *err)
{
    const size_t n = nu * (size_t)s->dim;
    float *grown = realloc(*srows, (n ? n : 1) * sizeof *grown);
    if (!grown)
        return cm_error_set(err, CM_ENOMEM, "worker: out of memory for learning l2");
    *srows = grown;
    /* the global bias is not regularised (fm.c): it stays as it is */
    const size_t bias = (size_t)b->bias_row * (size_t)s->dim;
    wk_reg_scale(s->rows, grown, n, 1.f + WK_REG_EPS);
    grown[bias] = s->rows[bias];
    m->predict_sparse(ctx, b, s->dim, grown, up);
    wk_reg_scale(s->rows, grown, n, 1.f - WK_REG_EPS);
    grown[bias] = s->rows[bias];
    m->predict_sparse(ctx, b, s->dim, grown, down);
    wk_reg_add(reg, s->task == CM_TASK_BINARY, s->score, up, down, b->label, b->n);
    return 0;
}

/* Scores set d; pos/neg may be NULL (no AUC histograms). */
static int s_eval_set(wk_sparse *s, s_set *d, wk_kv *kv, const wk_model_ops *m,
                      const wk_model_ctx *ctx, wk_sparse_sums *out, uint64_t *pos,
                      uint64_t *neg, wk_reg_sums *reg, cm_error *err)
{
    double sq = 0, ab = 0, ll = 0;
    int rc0 = s_dense_setup(s, m, err);
    if (rc0 != 0)
        return rc0;
    /* learned l2: predictions again with the rows scaled (reglearn.h);
     * plain fm only, whose scores are quadratic in its one table */
    float *srows = NULL, *sup = NULL, *sdown = NULL;
    if (reg && m->predict_ext)
        reg = NULL;
    if (reg) {
        srows = malloc(sizeof *srows);
        sup = malloc(S_EVAL_BATCH * sizeof *sup);
        sdown = malloc(S_EVAL_BATCH * sizeof *sdown);
        if (!srows || !sup || !sdown) {
            free(srows);
            free(sup);
            free(sdown);
            return cm_error_set(err, CM_ENOMEM, "worker: out of memory for learning l2");
        }
    }
    int rc = s_layout_make(d, S_EVAL_BATCH, err);
    for (size_t bi = 0; rc == 0 && bi < d->lay.n_batches; bi++) {
        size_t nu;
        wk_sparse_batch b;
        if ((rc = s_batch(s, kv, d, bi, CM_PULL_NO_CREATE, &b, &nu, err)) != 0)
            break;
        if (m->predict_ext)
            m->predict_ext(ctx, &b, &s->extra, s->dim, s->rows, s->score);
        else
            m->predict_sparse(ctx, &b, s->dim, s->rows, s->score);
        if (reg && (rc = s_reg_batch(s, m, ctx, &b, nu, &srows, sup, sdown, reg, err)) != 0)
            break;
        for (size_t j = 0; j < b.n; j++) {
            double y = s->score[j], t = b.label[j];
            if (s->task != CM_TASK_BINARY)
                y = y < ctx->clip_lo ? ctx->clip_lo : (y > ctx->clip_hi ? ctx->clip_hi : y);
            if (s->task == CM_TASK_BINARY) {
                float p = (float)(1.0 / (1.0 + exp(-y)));
                if (pos && neg)
                    cm_auc_add(pos, neg, p, t > 0.5);
                ll += cm_logloss(p, t > 0.5);
                y = p;
            }
            sq += (y - t) * (y - t);
            ab += fabs(y - t);
        }
    }
    free(srows);
    free(sup);
    free(sdown);
    if (rc != 0)
        return rc;
    *out = (wk_sparse_sums){.sq = sq, .abs = ab, .logloss = ll, .n = d->n};
    return 0;
}

int wk_sparse_eval(wk_sparse *s, wk_kv *kv, const wk_model_ops *m, const wk_model_ctx *ctx,
                   wk_sparse_sums *out, uint64_t *pos, uint64_t *neg, cm_error *err)
{
    return s_eval_set(s, &s->test, kv, m, ctx, out, pos, neg, NULL, err);
}

int wk_sparse_eval_valid(wk_sparse *s, wk_kv *kv, const wk_model_ops *m,
                         const wk_model_ctx *ctx, wk_sparse_sums *out, wk_reg_sums *reg,
                         cm_error *err)
{
    return s_eval_set(s, &s->valid, kv, m, ctx, out, NULL, NULL, reg, err);
}
