/* features: libsvm/libFM, libffm and CSV examples; side features by id.
 *
 * Files are mapped (or read whole when they cannot be) and parsed in one
 * pass with hand-written tokenising and number parsing; strtod is only the
 * fallback for exponents and long mantissas. Arrays grow by doubling and
 * are trimmed at the end. A bad line rolls back whatever it had appended,
 * so a skipped line leaves no trace but its count. Rules: docs/features.md. */
#include "common/features.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/hashmap.h"
#include "common/log.h"
#include "common/textfile.h"

cm_feat_opts cm_feat_opts_default(void)
{
    cm_feat_opts o;
    memset(&o, 0, sizeof o);
    o.max_bad_lines = 10;
    o.log_bad_lines = 5;
    o.task = CM_TASK_REGRESSION;
    o.max_index = 0;
    o.n_fields = 0;
    return o;
}

/* ------------------------------------------------------------------------
 * Lines, numbers
 * ------------------------------------------------------------------------ */

static inline int s_is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Opens the iterator past a UTF-8 byte order mark; refuses binary data. */
static int s_lines_init(cm_lines *it, const char *path, const cm_textfile *f, cm_error *err)
{
    if (cm_lines_init(it, f))
        return cm_error_set(err, CM_EPARSE,
                            "%s: binary data in a text file (compressed? a .psrd dataset?)", path);
    return 0;
}

/* Next line without its "\n" or "\r\n" and without surrounding blanks;
 * 0 at the end of the file. Blank lines are returned (empty). */
static inline int s_next_line(cm_lines *it, const char **ls, const char **le)
{
    const char *s, *e;
    if (!cm_lines_next(it, &s, &e))
        return 0;
    while (s < e && s_is_blank(*s))
        s++;
    while (e > s && s_is_blank(e[-1]))
        e--;
    *ls = s;
    *le = e;
    return 1;
}

/* A short printable excerpt of a token for messages. */
static inline int s_show(size_t n)
{
    return n > 40 ? 40 : (int)n;
}

/* Parses a decimal number into a float. 0 on success; -1 when [p, p+n) is
 * not a number (or has trailing characters); -2 when it is a number (or
 * nan/inf: "not finite", not "garbage") but not a finite float. */
static inline int s_parse_f32(const char *p, size_t n, float *out)
{
    int rc = cm_text_parse_f32(p, n, out);
    return rc == -3 ? -2 : rc;
}

/* Parses a plain non-negative decimal integer (digits only) that fits in
 * 64 bits. 0 on success, -1 not digits, -2 too large. */
static inline int s_parse_u64(const char *p, size_t n, uint64_t *out)
{
    if (n == 0)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)((unsigned char)p[i] - '0');
        if (d > 9)
            return -1;
        if (v > (UINT64_MAX - d) / 10)
            return -2;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Reads a label under the task into *out; on failure writes a reason. */
static int s_label(int task, const char *p, size_t n, float *out, char *why, size_t wn)
{
    float v;
    int rc = s_parse_f32(p, n, &v);
    if (rc == -1) {
        snprintf(why, wn, "expected a numeric label, got '%.*s'", s_show(n), p);
        return -1;
    }
    if (rc == -2) {
        snprintf(why, wn, "label '%.*s' is not a finite number", s_show(n), p);
        return -1;
    }
    if (task == CM_TASK_BINARY) {
        if (v == 1.0f)
            v = 1.0f;
        else if (v == 0.0f || v == -1.0f)
            v = 0.0f;
        else {
            snprintf(why, wn, "label '%.*s' is not a binary label (expected -1/+1 or 0/1)",
                     s_show(n), p);
            return -1;
        }
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------
 * Growing CSR columns
 * ------------------------------------------------------------------------ */

typedef struct {
    float *label;
    uint64_t *row_at;
    uint64_t *key;
    float *val;
    uint32_t *field;      /* NULL when the format has no fields */
} s_owner;

typedef struct {
    s_owner *o;
    size_t n, cap_rows;   /* rows so far; room for cap_rows (row_at: +1) */
    size_t nnz, cap_nnz;
    int with_field;
} s_build;

static int s_build_init(s_build *b, size_t rows, size_t nnz, int with_field)
{
    memset(b, 0, sizeof *b);
    if (rows < 16)
        rows = 16;
    if (nnz < 64)
        nnz = 64;
    b->o = calloc(1, sizeof *b->o);
    if (!b->o)
        return CM_ENOMEM;
    b->with_field = with_field;
    b->cap_rows = rows;
    b->cap_nnz = nnz;
    b->o->label = malloc(rows * sizeof *b->o->label);
    b->o->row_at = malloc((rows + 1) * sizeof *b->o->row_at);
    b->o->key = malloc(nnz * sizeof *b->o->key);
    b->o->val = malloc(nnz * sizeof *b->o->val);
    if (with_field)
        b->o->field = malloc(nnz * sizeof *b->o->field);
    if (!b->o->label || !b->o->row_at || !b->o->key || !b->o->val ||
        (with_field && !b->o->field))
        return CM_ENOMEM;
    b->o->row_at[0] = 0;
    return 0;
}

static void s_owner_free(s_owner *o)
{
    if (!o)
        return;
    free(o->label);
    free(o->row_at);
    free(o->key);
    free(o->val);
    free(o->field);
    free(o);
}

static int s_grow_rows(s_build *b)
{
    size_t cap = b->cap_rows * 2;
    if (cap > SIZE_MAX / sizeof(uint64_t) - 1)
        return CM_ENOMEM;
    float *l = realloc(b->o->label, cap * sizeof *l);
    if (!l)
        return CM_ENOMEM;
    b->o->label = l;
    uint64_t *r = realloc(b->o->row_at, (cap + 1) * sizeof *r);
    if (!r)
        return CM_ENOMEM;
    b->o->row_at = r;
    b->cap_rows = cap;
    return 0;
}

static int s_grow_nnz(s_build *b)
{
    size_t cap = b->cap_nnz * 2;
    if (cap > SIZE_MAX / sizeof(uint64_t))
        return CM_ENOMEM;
    uint64_t *k = realloc(b->o->key, cap * sizeof *k);
    if (!k)
        return CM_ENOMEM;
    b->o->key = k;
    float *v = realloc(b->o->val, cap * sizeof *v);
    if (!v)
        return CM_ENOMEM;
    b->o->val = v;
    if (b->with_field) {
        uint32_t *f = realloc(b->o->field, cap * sizeof *f);
        if (!f)
            return CM_ENOMEM;
        b->o->field = f;
    }
    b->cap_nnz = cap;
    return 0;
}

static inline int s_push(s_build *b, uint64_t key, float val, uint32_t field)
{
    if (b->nnz == b->cap_nnz && s_grow_nnz(b) != 0)
        return CM_ENOMEM;
    b->o->key[b->nnz] = key;
    b->o->val[b->nnz] = val;
    if (b->with_field)
        b->o->field[b->nnz] = field;
    b->nnz++;
    return 0;
}

/* Ends the current row with `label`. */
static inline int s_end_row(s_build *b, float label)
{
    if (b->n == b->cap_rows && s_grow_rows(b) != 0)
        return CM_ENOMEM;
    b->o->label[b->n] = label;
    b->n++;
    b->o->row_at[b->n] = b->nnz;
    return 0;
}

/* Forgets the features of an unfinished row (a bad line). */
static inline void s_drop_row(s_build *b)
{
    b->nnz = b->o->row_at[b->n];
}

/* Trims the slack and hands the columns to *out. */
static void s_build_finish(s_build *b, cm_examples *out, uint32_t n_fields, size_t bad)
{
    s_owner *o = b->o;
    size_t rows = b->n ? b->n : 1, nnz = b->nnz ? b->nnz : 1;
    if (rows < b->cap_rows) {
        float *l = realloc(o->label, rows * sizeof *l);
        if (l)
            o->label = l;
        uint64_t *r = realloc(o->row_at, (rows + 1) * sizeof *r);
        if (r)
            o->row_at = r;
    }
    if (nnz < b->cap_nnz) {
        uint64_t *k = realloc(o->key, nnz * sizeof *k);
        if (k)
            o->key = k;
        float *v = realloc(o->val, nnz * sizeof *v);
        if (v)
            o->val = v;
        if (o->field) {
            uint32_t *f = realloc(o->field, nnz * sizeof *f);
            if (f)
                o->field = f;
        }
    }
    memset(out, 0, sizeof *out);
    out->n = b->n;
    out->label = o->label;
    out->row_at = o->row_at;
    out->key = o->key;
    out->val = o->val;
    out->field = o->field;
    out->nnz = b->nnz;
    out->n_fields = n_fields;
    out->bad_lines = bad;
    out->owner_ = o;
    b->o = NULL;
}

void cm_examples_free(cm_examples *ex)
{
    if (!ex)
        return;
    s_owner_free(ex->owner_);
    memset(ex, 0, sizeof *ex);
}

/* The end of a load: "no data rows" if nothing was read, else the summary
 * log line and the hand-over. */
static int s_finish(s_build *b, const cm_badlines *c, size_t lines, uint32_t n_fields,
                    cm_examples *out, cm_error *err)
{
    int rc = cm_badlines_finish(c, b->n, lines, err);
    if (rc == 0)
        s_build_finish(b, out, n_fields, c->bad);
    return rc;
}

/* ------------------------------------------------------------------------
 * libsvm / libFM and libffm
 * ------------------------------------------------------------------------ */

/* Parses one `idx:val` (ffm: `field:idx:val`) token. 0 and the parts, or
 * -1 with a reason in why. */
static int s_pair(const char *t, size_t tn, int ffm, uint64_t max_index, uint32_t *field,
                  uint64_t *idx, float *val, char *why, size_t wn)
{
    const char *te = t + tn;
    const char *c1 = memchr(t, ':', tn);
    const char *c2 = c1 ? memchr(c1 + 1, ':', (size_t)(te - c1 - 1)) : NULL;
    const char *c3 = c2 ? memchr(c2 + 1, ':', (size_t)(te - c2 - 1)) : NULL;
    const char *want = ffm ? "field:idx:val" : "idx:val";
    if (!c1) {
        snprintf(why, wn, "malformed feature '%.*s' (expected %s)", s_show(tn), t, want);
        return -1;
    }
    if (!ffm && tn >= 4 && memcmp(t, "qid:", 4) == 0) {
        snprintf(why, wn, "'%.*s': ranking query ids (qid:) are not supported", s_show(tn), t);
        return -1;
    }
    if (!ffm && c2) {
        snprintf(why, wn,
                 "malformed feature '%.*s' (expected idx:val; field:idx:val is libffm, "
                 "read with the libffm loader / model = ffm)",
                 s_show(tn), t);
        return -1;
    }
    if (ffm && !c2) {
        snprintf(why, wn, "malformed feature '%.*s' (expected field:idx:val, got no field)",
                 s_show(tn), t);
        return -1;
    }
    if (c3) {
        snprintf(why, wn, "malformed feature '%.*s' (expected %s)", s_show(tn), t, want);
        return -1;
    }
    const char *ip = ffm ? c1 + 1 : t, *ie = ffm ? c2 : c1;
    const char *vp = ie + 1;
    if (ffm) {
        uint64_t f;
        int r = s_parse_u64(t, (size_t)(c1 - t), &f);
        if (c1 == t) {
            snprintf(why, wn, "missing field in '%.*s'", s_show(tn), t);
            return -1;
        }
        if (r != 0 || f > UINT32_MAX - 1) {
            snprintf(why, wn, "field '%.*s' in '%.*s' is not a non-negative integer below 2^32-1",
                     s_show((size_t)(c1 - t)), t, s_show(tn), t);
            return -1;
        }
        *field = (uint32_t)f;
    }
    if (ie == ip) {
        snprintf(why, wn, "missing index in '%.*s'", s_show(tn), t);
        return -1;
    }
    if (vp == te) {
        snprintf(why, wn, "missing value in '%.*s'", s_show(tn), t);
        return -1;
    }
    int r = s_parse_u64(ip, (size_t)(ie - ip), idx);
    if (r == -1) {
        snprintf(why, wn, "index '%.*s' in '%.*s' is not a non-negative integer",
                 s_show((size_t)(ie - ip)), ip, s_show(tn), t);
        return -1;
    }
    if (r == -2) {
        snprintf(why, wn, "index '%.*s' does not fit in 64 bits", s_show((size_t)(ie - ip)), ip);
        return -1;
    }
    if (max_index && *idx >= max_index) {
        snprintf(why, wn, "feature index %llu out of range (table has %llu rows)",
                 (unsigned long long)*idx, (unsigned long long)max_index);
        return -1;
    }
    r = s_parse_f32(vp, (size_t)(te - vp), val);
    if (r == -1) {
        snprintf(why, wn, "value '%.*s' in '%.*s' is not a number", s_show((size_t)(te - vp)), vp,
                 s_show(tn), t);
        return -1;
    }
    if (r == -2) {
        snprintf(why, wn, "value '%.*s' in '%.*s' is not a finite number",
                 s_show((size_t)(te - vp)), vp, s_show(tn), t);
        return -1;
    }
    return 0;
}

/* The common shape `idx:val` / `field:idx:val` with at most 18-digit
 * numbers, parsed in one pass over the token. Returns the token's end, or
 * NULL for anything else (s_pair then gives the verdict and the reason). */
static inline const char *s_pair_fast(const char *t, const char *le, int ffm,
                                      uint64_t max_index, uint32_t *field, uint64_t *idx,
                                      float *val)
{
    const char *q = t;
    uint64_t x = 0;
    int nd = 0;
    if (ffm) {
        while (q < le && (unsigned)(*q - '0') <= 9 && nd < 9) {
            x = x * 10 + (uint64_t)(*q++ - '0');
            nd++;
        }
        if (nd == 0 || q == le || *q != ':')
            return NULL;
        *field = (uint32_t)x;
        q++;
        x = 0;
        nd = 0;
    }
    while (q < le && (unsigned)(*q - '0') <= 9 && nd < 18) {
        x = x * 10 + (uint64_t)(*q++ - '0');
        nd++;
    }
    if (nd == 0 || q == le || *q != ':' || (max_index && x >= max_index))
        return NULL;
    *idx = x;
    const char *v = ++q;
    while (q < le && !s_is_blank(*q))
        q++;
    if (q == v || s_parse_f32(v, (size_t)(q - v), val) != 0)
        return NULL;
    return q;
}

static int s_load_sparse(const char *path, const cm_feat_opts *opts_in, int ffm,
                         cm_examples *out, cm_error *err)
{
    memset(out, 0, sizeof *out);
    cm_feat_opts opts = opts_in ? *opts_in : cm_feat_opts_default();
    if (opts.task != CM_TASK_REGRESSION && opts.task != CM_TASK_BINARY)
        return cm_error_set(err, CM_EINVAL, "%s: unknown task %d", path, opts.task);
    cm_textfile f;
    int rc = cm_textfile_open(&f, path, err);
    if (rc != 0)
        return rc;
    cm_lines it;
    s_build b = {0};
    if ((rc = s_lines_init(&it, path, &f, err)) != 0)
        goto out;
    size_t rows = cm_lines_count(&it);
    if (s_build_init(&b, rows, f.len / 8, ffm) != 0) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: cannot allocate %zu rows", path, rows);
        goto out;
    }
    cm_badlines c;
    cm_badlines_init(&c, path, opts.max_bad_lines, opts.log_bad_lines);
    uint32_t n_fields = ffm ? opts.n_fields : 0;
    size_t fields_line = 0; /* the line that set n_fields, 0 if opts did */
    const char *ls, *le;
    char why[320];

    while (s_next_line(&it, &ls, &le)) {
        if (ls == le || *ls == '#')
            continue;
        const char *p = ls;
        while (p < le && !s_is_blank(*p))
            p++;
        float label;
        if (s_label(opts.task, ls, (size_t)(p - ls), &label, why, sizeof why) != 0)
            goto bad;
        uint32_t max_field = 0;
        int any = 0;
        for (;;) {
            while (p < le && s_is_blank(*p))
                p++;
            if (p == le || *p == '#')
                break; /* a token starting with '#' begins a trailing comment */
            const char *t = p;
            uint32_t fld = 0;
            uint64_t idx;
            float v;
            p = s_pair_fast(t, le, ffm, opts.max_index, &fld, &idx, &v);
            if (!p) {
                /* Not the common shape: find the token's end and say what
                 * is wrong with it (or accept what the fast path would
                 * not, such as a 20-digit index). */
                p = t;
                while (p < le && !s_is_blank(*p))
                    p++;
                if (s_pair(t, (size_t)(p - t), ffm, opts.max_index, &fld, &idx, &v, why,
                           sizeof why))
                    goto bad;
            }
            if (ffm && n_fields && fld >= n_fields) {
                if (fields_line)
                    snprintf(why, sizeof why,
                             "field %u in '%.*s' but line %zu set %u fields (0..%u); the field "
                             "count must not change between lines",
                             fld, s_show((size_t)(p - t)), t, fields_line, n_fields,
                             n_fields - 1);
                else
                    snprintf(why, sizeof why, "field %u in '%.*s' out of range (n_fields = %u)",
                             fld, s_show((size_t)(p - t)), t, n_fields);
                goto bad;
            }
            max_field = fld > max_field ? fld : max_field;
            any = 1;
            if (s_push(&b, idx, v, fld) != 0)
                goto nomem;
        }
        if (ffm && !n_fields && any) {
            n_fields = max_field + 1;
            fields_line = it.line;
        }
        if (s_end_row(&b, label) != 0)
            goto nomem;
        continue;
    bad:
        s_drop_row(&b);
        if (cm_badlines_add(&c, it.line, "%s", why)) {
            rc = cm_badlines_toomany(&c, it.line, err);
            goto out;
        }
    }
    rc = s_finish(&b, &c, it.line, n_fields, out, err);
    goto out;

nomem:
    rc = cm_error_set(err, CM_ENOMEM, "%s:%zu: out of memory", path, it.line);
out:
    s_owner_free(b.o);
    cm_textfile_close(&f);
    return rc;
}

int cm_examples_load_libsvm(const char *path, const cm_feat_opts *opts, cm_examples *out,
                            cm_error *err)
{
    return s_load_sparse(path, opts, 0, out, err);
}

int cm_examples_load_libffm(const char *path, const cm_feat_opts *opts, cm_examples *out,
                            cm_error *err)
{
    return s_load_sparse(path, opts, 1, out, err);
}

/* ------------------------------------------------------------------------
 * CSV
 * ------------------------------------------------------------------------ */

uint64_t cm_feat_key_numeric(const char *column)
{
    return cm_hash_bytes(column, strlen(column), 0);
}

uint64_t cm_feat_key_categorical(const char *column, const char *s, size_t n)
{
    return cm_hash_bytes(s, n, cm_hash_bytes(column, strlen(column), 0));
}

typedef struct {
    const char *p;   /* content (unquoted) */
    size_t n;
} s_cell;

typedef struct {
    s_cell *cells;
    size_t cap;
    char *scratch;   /* unescaped quoted cells of the current line */
    size_t scap;
} s_row;

/* Splits [p, e) on sep into row->cells, trimming blanks; a cell starting
 * with '"' runs to its closing quote ("" is a quote). Returns the cell
 * count, -1 for an unterminated quote, CM_ENOMEM (< -1) on allocation. */
static long s_split_csv(s_row *r, char sep, const char *p, const char *e)
{
    size_t n = 0, used = 0;
    if ((size_t)(e - p) + 1 > r->scap) {
        size_t cap = (size_t)(e - p) + 1;
        char *s = realloc(r->scratch, cap);
        if (!s)
            return CM_ENOMEM;
        r->scratch = s;
        r->scap = cap;
    }
    for (;;) {
        if (n == r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 64;
            s_cell *c = realloc(r->cells, cap * sizeof *c);
            if (!c)
                return CM_ENOMEM;
            r->cells = c;
            r->cap = cap;
        }
        while (p < e && s_is_blank(*p) && *p != sep)
            p++;
        const char *s, *fe, *q;
        if (p < e && *p == '"') {
            char *dst = r->scratch + used;
            size_t k = 0;
            q = p + 1;
            for (;;) {
                if (q >= e)
                    return -1;
                if (*q == '"') {
                    if (q + 1 < e && q[1] == '"') {
                        dst[k++] = '"';
                        q += 2;
                        continue;
                    }
                    q++;
                    break;
                }
                dst[k++] = *q++;
            }
            while (q < e && *q != sep)
                q++; /* anything after the closing quote is ignored */
            s = dst;
            fe = dst + k;
            used += k;
        } else {
            q = memchr(p, sep, (size_t)(e - p));
            if (!q)
                q = e;
            s = p;
            fe = q;
            while (fe > s && s_is_blank(fe[-1]) && fe[-1] != sep)
                fe--;
        }
        r->cells[n++] = (s_cell){s, (size_t)(fe - s)};
        if (q >= e)
            return (long)n;
        p = q + 1;
    }
}

/* Role of a CSV column. */
#define S_ROLE_SKIP (-1)
#define S_ROLE_LABEL (-2)

/* Name of feature j of the spec: the numeric columns, then the categorical. */
static const char *s_spec_col(const cm_csv_spec *spec, size_t j)
{
    return j < spec->n_numeric ? spec->numeric[j] : spec->categorical[j - spec->n_numeric];
}

/* The spec itself, before the file is opened: every feature named once,
 * none of them the label. */
static int s_csv_check_spec(const char *path, const cm_csv_spec *spec, const cm_feat_opts *opts,
                            cm_error *err)
{
    if (opts->task != CM_TASK_REGRESSION && opts->task != CM_TASK_BINARY)
        return cm_error_set(err, CM_EINVAL, "%s: unknown task %d", path, opts->task);
    if (spec->sep != 0 && spec->sep != ',' && spec->sep != '\t')
        return cm_error_set(err, CM_EINVAL, "%s: CSV separator must be ',' or tab", path);
    size_t nfeat = spec->n_numeric + spec->n_categorical;
    if (nfeat > UINT32_MAX)
        return cm_error_set(err, CM_EINVAL, "%s: too many feature columns", path);
    for (size_t j = 0; j < nfeat; j++) {
        const char *a = s_spec_col(spec, j);
        if (!a)
            return cm_error_set(err, CM_EINVAL, "%s: CSV spec column %zu has no name", path, j);
        if (spec->label_column && strcmp(a, spec->label_column) == 0)
            return cm_error_set(err, CM_EINVAL, "%s: column '%s' is both the label and a feature",
                                path, a);
        for (size_t i = 0; i < j; i++)
            if (strcmp(a, s_spec_col(spec, i)) == 0)
                return cm_error_set(err, CM_EINVAL, "%s: column '%s' is named twice in the spec",
                                    path, a);
    }
    return 0;
}

/* Gives each of the header's ncols cells (in row) its role: the label, a
 * feature of the spec (its index; seed[j] gets the column's key seed), or
 * skipped. CM_EPARSE naming the header line when a spec column is absent. */
static int s_csv_roles(const char *path, size_t header_line, const cm_csv_spec *spec,
                       const s_row *row, size_t ncols, int *role, uint64_t *seed, uint8_t *seen,
                       cm_error *err)
{
    const size_t nfeat = spec->n_numeric + spec->n_categorical;
    int label_col = -1;
    for (size_t i = 0; i < ncols; i++) {
        const s_cell *h = &row->cells[i];
        role[i] = S_ROLE_SKIP;
        if (spec->label_column && strlen(spec->label_column) == h->n &&
            memcmp(spec->label_column, h->p, h->n) == 0) {
            role[i] = S_ROLE_LABEL;
            label_col = (int)i;
            continue;
        }
        for (size_t j = 0; j < nfeat; j++) {
            const char *name = s_spec_col(spec, j);
            if (!seen[j] && strlen(name) == h->n && memcmp(name, h->p, h->n) == 0) {
                role[i] = (int)j;
                seen[j] = 1;
                seed[j] = cm_hash_bytes(name, h->n, 0);
                break;
            }
        }
    }
    if (spec->label_column && label_col < 0)
        return cm_error_set(err, CM_EPARSE, "%s:%zu: no label column '%s' in the header", path,
                            header_line, spec->label_column);
    for (size_t j = 0; j < nfeat; j++)
        if (!seen[j])
            return cm_error_set(err, CM_EPARSE, "%s:%zu: no %s column '%s' in the header", path,
                                header_line, j < spec->n_numeric ? "numeric" : "categorical",
                                s_spec_col(spec, j));
    return 0;
}

/* One data row's cells into the builder (the row is left open: the caller
 * ends or drops it). 0; 1 for a malformed row, with why; CM_ENOMEM. */
static int s_csv_row(s_build *b, const s_row *row, size_t ncols, const int *role,
                     const uint64_t *seed, const cm_csv_spec *spec, const cm_feat_opts *opts,
                     float *label, char *why, size_t why_n)
{
    for (size_t i = 0; i < ncols; i++) {
        int r = role[i];
        if (r == S_ROLE_SKIP)
            continue;
        const s_cell *v = &row->cells[i];
        if (r == S_ROLE_LABEL) {
            if (v->n == 0) {
                snprintf(why, why_n, "empty label (column %s)", spec->label_column);
                return 1;
            }
            if (s_label(opts->task, v->p, v->n, label, why, why_n) != 0)
                return 1;
            continue;
        }
        if (v->n == 0)
            continue; /* empty: the feature is absent */
        size_t j = (size_t)r;
        uint64_t key;
        float x = 1.0f;
        if (j < spec->n_numeric) {
            int pr = s_parse_f32(v->p, v->n, &x);
            if (pr != 0) {
                snprintf(why, why_n, "column %s: expected a %snumber, got '%.*s'",
                         spec->numeric[j], pr == -2 ? "finite " : "", s_show(v->n), v->p);
                return 1;
            }
            if (spec->numeric_log)
                x = copysignf(log1pf(fabsf(x)), x);
            key = seed[j];
        } else {
            key = cm_hash_bytes(v->p, v->n, seed[j]);
        }
        if (opts->max_index)
            key %= opts->max_index;
        if (s_push(b, key, x, (uint32_t)j) != 0)
            return CM_ENOMEM;
    }
    return 0;
}

/* What a CSV file's header says: the separator and, per file column, its
 * role; per feature its key or seed and whether the header named it. */
typedef struct {
    char sep;
    size_t ncols;
    int *role;          /* per file column */
    uint64_t *seed;     /* per feature: numeric key / categorical seed */
    uint8_t *seen;      /* per feature: matched in the header */
} s_csv_cols;

static void s_csv_cols_free(s_csv_cols *h)
{
    free(h->role);
    free(h->seed);
    free(h->seen);
}

/* Reads the header (the first line that is not blank) into *h; row is the
 * split scratch. */
static int s_csv_header(const char *path, const cm_csv_spec *spec, size_t nfeat, cm_lines *it,
                        s_row *row, s_csv_cols *h, cm_error *err)
{
    const char *ls, *le;
    int have = 0;
    while ((have = s_next_line(it, &ls, &le)) && ls == le)
        ;
    if (!have)
        return cm_error_set(err, CM_EPARSE, "%s: no header line (a CSV file needs one)", path);
    h->sep = spec->sep ? spec->sep : memchr(ls, '\t', (size_t)(le - ls)) ? '\t' : ',';
    long nc = s_split_csv(row, h->sep, ls, le);
    if (nc < -1)
        return cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
    if (nc < 0)
        return cm_error_set(err, CM_EPARSE, "%s:%zu: unterminated quote in the header", path,
                            it->line);
    h->ncols = (size_t)nc;
    h->role = malloc(h->ncols * sizeof *h->role);
    h->seed = malloc((nfeat ? nfeat : 1) * sizeof *h->seed);
    h->seen = calloc(nfeat ? nfeat : 1, 1);
    if (!h->role || !h->seed || !h->seen)
        return cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
    return s_csv_roles(path, it->line, spec, row, h->ncols, h->role, h->seed, h->seen, err);
}

int cm_examples_load_csv(const char *path, const cm_csv_spec *spec, const cm_feat_opts *opts_in,
                         cm_examples *out, cm_error *err)
{
    memset(out, 0, sizeof *out);
    if (!spec)
        return cm_error_set(err, CM_EINVAL, "%s: no CSV column spec", path);
    cm_feat_opts opts = opts_in ? *opts_in : cm_feat_opts_default();
    int rc = s_csv_check_spec(path, spec, &opts, err);
    if (rc != 0)
        return rc;
    const size_t nfeat = spec->n_numeric + spec->n_categorical;

    cm_textfile f;
    rc = cm_textfile_open(&f, path, err);
    if (rc != 0)
        return rc;
    cm_lines it;
    s_build b = {0};
    s_row row = {0};
    s_csv_cols h = {0};
    const char *ls, *le;
    char why[320];
    cm_badlines c;
    cm_badlines_init(&c, path, opts.max_bad_lines, opts.log_bad_lines);

    if ((rc = s_lines_init(&it, path, &f, err)) != 0 ||
        (rc = s_csv_header(path, spec, nfeat, &it, &row, &h, err)) != 0)
        goto out;

    size_t rows = cm_lines_count(&it);
    /* A feature takes at least a byte and a separator. */
    size_t est = rows * (nfeat ? nfeat : 1);
    if (est > f.len / 2)
        est = f.len / 2;
    if (s_build_init(&b, rows, est, 1) != 0) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: cannot allocate %zu rows", path, rows);
        goto out;
    }
    while (s_next_line(&it, &ls, &le)) {
        if (ls == le)
            continue;
        long k = s_split_csv(&row, h.sep, ls, le);
        float label = 0.0f;
        int r = 0;
        if (k < -1)
            r = CM_ENOMEM;
        else if (k < 0)
            r = 1, snprintf(why, sizeof why, "unterminated quote");
        else if ((size_t)k != h.ncols)
            r = 1, snprintf(why, sizeof why, "expected %zu fields (as in the header), got %ld",
                            h.ncols, k);
        else
            r = s_csv_row(&b, &row, h.ncols, h.role, h.seed, spec, &opts, &label, why,
                          sizeof why);
        if (r == 0 && s_end_row(&b, label) != 0)
            r = CM_ENOMEM;
        if (r < 0) {
            rc = cm_error_set(err, CM_ENOMEM, "%s:%zu: out of memory", path, it.line);
            goto out;
        }
        if (r == 0)
            continue;
        s_drop_row(&b);
        if (cm_badlines_add(&c, it.line, "%s", why)) {
            rc = cm_badlines_toomany(&c, it.line, err);
            goto out;
        }
    }
    rc = s_finish(&b, &c, it.line, (uint32_t)nfeat, out, err);

out:
    s_owner_free(b.o);
    free(row.cells);
    free(row.scratch);
    s_csv_cols_free(&h);
    cm_textfile_close(&f);
    return rc;
}

/* ------------------------------------------------------------------------
 * Side features
 * ------------------------------------------------------------------------ */

struct cm_side {
    cm_side_spec spec;    /* copy; spec.name points at name_ */
    char *name_;          /* owned copy of the namespace */
    cm_hashmap *by_id;    /* id -> row */
    size_t n;             /* ids */
    uint64_t *row_at;     /* n + 1 offsets into key */
    uint64_t *key;        /* all keys, row by row */
    size_t nkeys, cap;    /* keys used / room */
    size_t max_keys;      /* longest row */
    size_t bad_lines;
};

static uint64_t s_col_seed(const cm_side_spec *spec, uint32_t column)
{
    const char *name = spec->name ? spec->name : "";
    return cm_hash_key(column, cm_hash_bytes(name, strlen(name), 0));
}

uint64_t cm_side_key_cat(const cm_side_spec *spec, uint32_t column, const char *s, size_t n)
{
    return cm_hash_bytes(s, n, s_col_seed(spec, column));
}

uint64_t cm_side_key_flag(const cm_side_spec *spec, uint32_t column)
{
    return s_col_seed(spec, column);
}

uint64_t cm_side_key_bucket(const cm_side_spec *spec, uint32_t column, int64_t bucket)
{
    return cm_hash_key((uint64_t)bucket, s_col_seed(spec, column));
}

cm_side_spec cm_side_spec_ml100k_user(void)
{
    cm_side_spec s;
    memset(&s, 0, sizeof s);
    s.name = "ml100k.user";
    s.sep = '|';
    s.n_columns = 5;
    s.n_cols = 3;
    s.cols[0] = (cm_side_col){.first = 1, .last = 1, .kind = CM_SIDE_BUCKET, .width = 10};
    s.cols[1] = (cm_side_col){.first = 2, .last = 2, .kind = CM_SIDE_CAT};
    s.cols[2] = (cm_side_col){.first = 3, .last = 3, .kind = CM_SIDE_CAT};
    return s;
}

cm_side_spec cm_side_spec_ml100k_item(void)
{
    cm_side_spec s;
    memset(&s, 0, sizeof s);
    s.name = "ml100k.item";
    s.sep = '|';
    s.n_columns = 24;
    s.n_cols = 1;
    s.cols[0] = (cm_side_col){.first = 5, .last = 23, .kind = CM_SIDE_FLAGS};
    return s;
}

/* Same rule as dataset.c: a plain decimal that fits u64 is kept, any other
 * string hashes (seed 0), so side ids join with rating keys. */
static uint64_t s_side_id(const char *p, size_t n)
{
    uint64_t v;
    if (n <= 20 && s_parse_u64(p, n, &v) == 0)
        return v;
    return cm_hash_bytes(p, n, 0);
}

void cm_side_destroy(cm_side **ps)
{
    if (!ps || !*ps)
        return;
    cm_side *s = *ps;
    cm_hashmap_destroy(&s->by_id);
    free(s->row_at);
    free(s->key);
    free(s->name_);
    free(s);
    *ps = NULL;
}

static int s_side_push(cm_side *s, uint64_t key)
{
    if (s->nkeys == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        uint64_t *k = realloc(s->key, cap * sizeof *k);
        if (!k)
            return CM_ENOMEM;
        s->key = k;
        s->cap = cap;
    }
    s->key[s->nkeys++] = key;
    return 0;
}

static int s_side_check_spec(const char *path, const cm_side_spec *spec, uint32_t *need,
                             cm_error *err)
{
    if (!spec->sep || spec->sep == '\n' || spec->sep == '\r')
        return cm_error_set(err, CM_EINVAL, "%s: side spec needs a separator", path);
    if (spec->n_cols > CM_SIDE_MAX_COLS)
        return cm_error_set(err, CM_EINVAL, "%s: side spec has %zu column runs (at most %d)",
                            path, spec->n_cols, CM_SIDE_MAX_COLS);
    uint32_t hi = 0;
    for (size_t i = 0; i < spec->n_cols; i++) {
        const cm_side_col *c = &spec->cols[i];
        if (c->first == 0 || c->first > c->last || c->last >= 65536)
            return cm_error_set(err, CM_EINVAL,
                                "%s: side spec run %zu: columns %u..%u (column 0 is the id; "
                                "first <= last < 65536)",
                                path, i, c->first, c->last);
        if (c->kind != CM_SIDE_CAT && c->kind != CM_SIDE_FLAGS && c->kind != CM_SIDE_BUCKET)
            return cm_error_set(err, CM_EINVAL, "%s: side spec run %zu: unknown kind %d", path,
                                i, c->kind);
        if (c->kind == CM_SIDE_BUCKET && !(c->width > 0 && isfinite(c->width)))
            return cm_error_set(err, CM_EINVAL, "%s: side spec run %zu: bucket width %g", path,
                                i, c->width);
        hi = c->last > hi ? c->last : hi;
    }
    if (spec->n_columns && spec->n_columns <= hi)
        return cm_error_set(err, CM_EINVAL,
                            "%s: side spec uses column %u but lines have %u columns", path, hi,
                            spec->n_columns);
    *need = hi + 1;
    return 0;
}

/* One value of a side row's column `col` as a feature key in *key: 0, 1
 * when the value adds no feature (empty, or a 0 flag), -1 with `why` set
 * when it is not the column's kind. */
static int s_side_value_key(const cm_side_col *sc, uint32_t col, const s_cell *v,
                            uint64_t seed, uint64_t *key, char *why, size_t cap)
{
    if (v->n == 0)
        return 1; /* empty: absent */
    if (sc->kind == CM_SIDE_CAT) {
        *key = cm_hash_bytes(v->p, v->n, seed);
        return 0;
    }
    if (sc->kind == CM_SIDE_FLAGS) {
        if (v->n != 1 || (v->p[0] != '0' && v->p[0] != '1')) {
            snprintf(why, cap, "column %u: expected a 0/1 flag, got '%.*s'", col, s_show(v->n),
                     v->p);
            return -1;
        }
        if (v->p[0] == '0')
            return 1;
        *key = seed;
        return 0;
    }
    float x;
    int pr = s_parse_f32(v->p, v->n, &x);
    if (pr != 0) {
        snprintf(why, cap, "column %u: expected a %snumber, got '%.*s'", col,
                 pr == -2 ? "finite " : "", s_show(v->n), v->p);
        return -1;
    }
    double bk = floor((double)x / sc->width);
    if (!(fabs(bk) < 9.2e18)) {
        snprintf(why, cap, "column %u: bucket of '%.*s' out of range", col, s_show(v->n), v->p);
        return -1;
    }
    *key = cm_hash_key((uint64_t)(int64_t)bk, seed);
    return 0;
}

/* One split line of a side file: its id and feature keys added to s. 0,
 * 1 with `why` set for a bad line (s unchanged), -1 out of memory. */
static int s_side_add_row(cm_side *s, const s_row *row, long k, uint32_t need,
                          const uint64_t *seed, uint64_t max_index, char *why, size_t cap)
{
    const cm_side_spec *spec = &s->spec;
    if (spec->n_columns ? (size_t)k != spec->n_columns : (size_t)k < need) {
        snprintf(why, cap, "expected %s%u fields, got %ld", spec->n_columns ? "" : "at least ",
                 spec->n_columns ? spec->n_columns : need, k);
        return 1;
    }
    if (row->cells[0].n == 0) {
        snprintf(why, cap, "empty id");
        return 1;
    }
    uint64_t id = s_side_id(row->cells[0].p, row->cells[0].n);
    uint32_t prev;
    if (cm_hashmap_get(s->by_id, id, &prev)) {
        snprintf(why, cap, "duplicate id '%.*s' (first on an earlier line)",
                 s_show(row->cells[0].n), row->cells[0].p);
        return 1;
    }
    size_t start = s->nkeys;
    for (size_t r = 0; r < spec->n_cols; r++) {
        const cm_side_col *sc = &spec->cols[r];
        for (uint32_t col = sc->first; col <= sc->last; col++) {
            uint64_t key;
            int vr = s_side_value_key(sc, col, &row->cells[col], seed[col], &key, why, cap);
            if (vr > 0)
                continue;
            if (vr < 0) {
                s->nkeys = start;
                return 1;
            }
            if (max_index)
                key %= max_index;
            if (s_side_push(s, key) != 0)
                return -1;
        }
    }
    if (s->n >= UINT32_MAX || cm_hashmap_put(s->by_id, id, (uint32_t)s->n) != 0)
        return -1;
    s->n++;
    s->row_at[s->n] = s->nkeys;
    if (s->nkeys - start > s->max_keys)
        s->max_keys = s->nkeys - start;
    return 0;
}

int cm_side_load(const char *path, const cm_side_spec *spec, const cm_feat_opts *opts_in,
                 cm_side **out, cm_error *err)
{
    *out = NULL;
    if (!spec)
        return cm_error_set(err, CM_EINVAL, "%s: no side spec", path);
    cm_feat_opts opts = opts_in ? *opts_in : cm_feat_opts_default();
    uint32_t need = 0;
    int rc = s_side_check_spec(path, spec, &need, err);
    if (rc != 0)
        return rc;
    cm_textfile f;
    if ((rc = cm_textfile_open(&f, path, err)) != 0)
        return rc;
    cm_lines it;
    s_row row = {0};
    uint64_t *seed = NULL;
    cm_side *s = calloc(1, sizeof *s);
    size_t rows = 0;
    if (!s)
        goto nomem0;
    s->spec = *spec;
    const char *nm = spec->name ? spec->name : "";
    s->name_ = strdup(nm);
    if (!s->name_)
        goto nomem0;
    s->spec.name = s->name_;
    if ((rc = s_lines_init(&it, path, &f, err)) != 0)
        goto out;
    rows = cm_lines_count(&it);
    s->by_id = cm_hashmap_new(rows);
    s->row_at = malloc((rows + 1) * sizeof *s->row_at);
    seed = malloc(need * sizeof *seed);
    if (!s->by_id || !s->row_at || !seed)
        goto nomem0;
    for (uint32_t col = 0; col < need; col++)
        seed[col] = s_col_seed(spec, col);
    s->row_at[0] = 0;

    cm_badlines c;
    cm_badlines_init(&c, path, opts.max_bad_lines, opts.log_bad_lines);
    const char *ls, *le;
    char why[320];
    while (s_next_line(&it, &ls, &le)) {
        if (ls == le)
            continue;
        long k = s_split_csv(&row, spec->sep, ls, le);
        if (k < -1)
            goto nomem;
        int ar = 1;
        if (k < 0)
            snprintf(why, sizeof why, "unterminated quote");
        else
            ar = s_side_add_row(s, &row, k, need, seed, opts.max_index, why, sizeof why);
        if (ar < 0)
            goto nomem;
        if (ar > 0 && cm_badlines_add(&c, it.line, "%s", why)) {
            rc = cm_badlines_toomany(&c, it.line, err);
            goto out;
        }
    }
    if ((rc = cm_badlines_finish(&c, s->n, it.line, err)) != 0)
        goto out;
    s->bad_lines = c.bad;
    *out = s;
    s = NULL;
    rc = 0;
    goto out;

nomem0:
    rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
    goto out;
nomem:
    rc = cm_error_set(err, CM_ENOMEM, "%s:%zu: out of memory", path, it.line);
out:
    cm_side_destroy(&s);
    free(row.cells);
    free(row.scratch);
    free(seed);
    cm_textfile_close(&f);
    return rc;
}

int cm_side_features(const cm_side *side, uint64_t id, const uint64_t **keys, size_t *n)
{
    uint32_t r;
    if (!side || !cm_hashmap_get(side->by_id, id, &r)) {
        *keys = NULL;
        *n = 0;
        return 0;
    }
    *keys = side->key + side->row_at[r];
    *n = (size_t)(side->row_at[r + 1] - side->row_at[r]);
    return 1;
}

size_t cm_side_size(const cm_side *side)
{
    return side ? side->n : 0;
}

size_t cm_side_max_keys(const cm_side *side)
{
    return side ? side->max_keys : 0;
}

size_t cm_side_bad_lines(const cm_side *side)
{
    return side ? side->bad_lines : 0;
}
