/* dataset: ratings from text or from the binary .psrd format, and back.
 *
 * Text is mapped (or read whole when it cannot be mapped) and parsed in one
 * pass with hand-written field splitting and number parsing; strtod is only
 * the fallback for exponents and very long mantissas. Binary files are
 * mapped read-only and every offset is validated against the file size
 * before a column is touched. The byte layout is in docs/formats.md. */
#include "common/dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/atomic.h"
#include "common/codec.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/textfile.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the .psrd columns are little-endian; this host is not"
#endif

#define S_VERSION 1u
#define S_PREAMBLE 16u            /* magic, header length, reserved */
#define S_HEADER_REGION 4096u     /* where the binwriter puts the first column */
#define S_ALIGN 64u
#define S_CHUNK_ROWS (64u * 1024u) /* binwriter buffer, rows per column */

/* ------------------------------------------------------------------------
 * Ownership of a cm_ratings' arrays
 * ------------------------------------------------------------------------ */

typedef struct {
    void *map;          /* mmap of a binary file, or NULL */
    size_t map_len;     /* its length */
    void *block;        /* read buffer of a binary file that was not mapped */
    uint64_t *user;     /* heap columns (NULL when mapped) */
    uint64_t *item;
    float *rating;
} s_owner;

cm_load_opts cm_load_opts_default(void)
{
    cm_load_opts o;
    o.max_bad_lines = 10;
    o.verify_checksum = CM_VERIFY_ALL;
    o.log_bad_lines = 5;
    o.user_column = o.item_column = o.rating_column = o.timestamp_column = NULL;
    return o;
}

void cm_ratings_free(cm_ratings *r)
{
    if (!r)
        return;
    s_owner *o = r->owner_;
    if (o) {
        if (o->map)
            munmap(o->map, o->map_len);
        free(o->block);
        free(o->user);
        free(o->item);
        free(o->rating);
        free(o);
    }
    memset(r, 0, sizeof *r);
}

/* Heap columns with room for cap rows (at least one, so pointers are never
 * NULL even for an empty set). */
static s_owner *s_owner_heap(size_t cap)
{
    if (cap == 0)
        cap = 1;
    if (cap > SIZE_MAX / sizeof(uint64_t))
        return NULL;
    s_owner *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->user = malloc(cap * sizeof *o->user);
    o->item = malloc(cap * sizeof *o->item);
    o->rating = malloc(cap * sizeof *o->rating);
    if (!o->user || !o->item || !o->rating) {
        free(o->user);
        free(o->item);
        free(o->rating);
        free(o);
        return NULL;
    }
    return o;
}

static void s_attach(cm_ratings *r, s_owner *o, size_t n)
{
    memset(r, 0, sizeof *r);
    r->n = n;
    r->user = o->user;
    r->item = o->item;
    r->rating = o->rating;
    r->noise_floor = -1.0;
    r->owner_ = o;
}

int cm_ratings_from_arrays(const uint64_t *user, const uint64_t *item,
                           const float *rating, size_t n, cm_ratings *out,
                           cm_error *err)
{
    memset(out, 0, sizeof *out);
    if (n > 0 && (!user || !item || !rating))
        return cm_error_set(err, CM_EINVAL, "ratings_from_arrays: NULL column with %zu rows", n);
    s_owner *o = s_owner_heap(n);
    if (!o)
        return cm_error_set(err, CM_ENOMEM, "ratings_from_arrays: cannot allocate %zu rows", n);
    if (n > 0) {
        memcpy(o->user, user, n * sizeof *user);
        memcpy(o->item, item, n * sizeof *item);
        memcpy(o->rating, rating, n * sizeof *rating);
    }
    s_attach(out, o, n);
    return 0;
}

int cm_ratings_adopt(uint64_t *user, uint64_t *item, float *rating, size_t n,
                     cm_ratings *out, cm_error *err)
{
    memset(out, 0, sizeof *out);
    s_owner *o = calloc(1, sizeof *o);
    if (!o || !user || !item || !rating) {
        free(o);
        free(user);
        free(item);
        free(rating);
        return cm_error_set(err, o ? CM_EINVAL : CM_ENOMEM,
                            "ratings_adopt: %s for %zu rows",
                            o ? "NULL column" : "out of memory", n);
    }
    o->user = user;
    o->item = item;
    o->rating = rating;
    s_attach(out, o, n);
    return 0;
}

/* ------------------------------------------------------------------------
 * Sniffing
 * ------------------------------------------------------------------------ */

int cm_dataset_is_binary(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return CM_EIO;
    char buf[8];
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t k = read(fd, buf + got, sizeof buf - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            close(fd);
            return CM_EIO;
        }
        if (k == 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    return got == sizeof buf && memcmp(buf, CM_DATASET_MAGIC, 8) == 0;
}

/* ------------------------------------------------------------------------
 * Text parsing
 * ------------------------------------------------------------------------ */

typedef enum { S_SEP_NONE, S_SEP_COLONS, S_SEP_TAB, S_SEP_COMMA, S_SEP_SPACE } s_sep;

typedef struct {
    const char *p;
    size_t n;
} s_field;

#define S_MAX_FIELDS 4

static inline int s_is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Picks the separator from one data line: "::" wins over tab over comma;
 * otherwise fields are runs of non-blank characters. */
static s_sep s_detect(const char *p, const char *e)
{
    int tab = 0, comma = 0;
    for (const char *q = p; q < e; q++) {
        if (*q == ':' && q + 1 < e && q[1] == ':')
            return S_SEP_COLONS;
        tab |= *q == '\t';
        comma |= *q == ',';
    }
    return tab ? S_SEP_TAB : comma ? S_SEP_COMMA : S_SEP_SPACE;
}

/* Stores field i of [p, e) in f[i] (i < S_MAX_FIELDS), or with pick, field
 * pick[j] in f[j]: named columns may sit anywhere in a wide line. */
static inline void s_keep(const int *pick, int i, s_field v, s_field *f)
{
    if (!pick) {
        if (i < S_MAX_FIELDS)
            f[i] = v;
        return;
    }
    for (int j = 0; j < S_MAX_FIELDS; j++)
        if (pick[j] == i)
            f[j] = v;
}

/* Splits [p, e) into fields, keeps them as s_keep says, and returns the
 * full count. Fields are trimmed of surrounding blanks. */
static int s_split(s_sep sep, const char *p, const char *e, const int *pick, s_field *f)
{
    int nf = 0;
    if (sep == S_SEP_SPACE) {
        for (;;) {
            while (p < e && s_is_blank(*p))
                p++;
            if (p == e)
                return nf;
            const char *s = p;
            while (p < e && !s_is_blank(*p))
                p++;
            s_keep(pick, nf, (s_field){s, (size_t)(p - s)}, f);
            nf++;
        }
    }
    for (;;) {
        const char *s = p, *q;
        if (sep == S_SEP_COLONS) {
            q = p;
            while (q < e && !(q[0] == ':' && q + 1 < e && q[1] == ':'))
                q++;
        } else {
            q = memchr(p, sep == S_SEP_TAB ? '\t' : ',', (size_t)(e - p));
            if (!q)
                q = e;
        }
        const char *fe = q;
        while (s < fe && s_is_blank(*s))
            s++;
        while (fe > s && s_is_blank(fe[-1]))
            fe--;
        s_keep(pick, nf, (s_field){s, (size_t)(fe - s)}, f);
        nf++;
        if (q == e)
            return nf;
        p = q + (sep == S_SEP_COLONS ? 2 : 1);
    }
}

/* A plain non-negative decimal that fits u64 is kept; anything else hashes. */
static inline uint64_t s_parse_id(const char *p, size_t n)
{
    if (n > 0 && n <= 20) {
        uint64_t v = 0;
        size_t i = 0;
        for (; i < n; i++) {
            unsigned d = (unsigned char)p[i] - '0';
            if (d > 9)
                break;
            if (v > (UINT64_MAX - d) / 10)
                break;
            v = v * 10 + d;
        }
        if (i == n)
            return v;
    }
    return cm_hash_bytes(p, n, 0);
}

/* Parses a rating. 0 on success; -1 when the field is not a number (or has
 * trailing characters; "nan" and "inf" are refused as such); -2 when it is
 * a number but not a finite float. */
static inline int s_parse_rating(const char *p, size_t n, float *out)
{
    int rc = cm_text_parse_f32(p, n, out);
    return rc == -3 ? -1 : rc;
}

/* A short printable excerpt of a field for messages. */
static int s_show_len(size_t n)
{
    return n > 40 ? 40 : (int)n;
}

/* "#psrec noise_floor=<x>" comment lines (written by psrec gen --text)
 * carry the noise floor of a synthetic set. */
static void s_comment(const char *p, const char *e, double *noise_floor)
{
    static const char key[] = "#psrec noise_floor=";
    size_t kl = sizeof key - 1;
    if ((size_t)(e - p) <= kl || (size_t)(e - p) >= kl + 60 || memcmp(p, key, kl) != 0)
        return;
    char buf[64];
    size_t n = (size_t)(e - p) - kl;
    memcpy(buf, p + kl, n);
    buf[n] = '\0';
    char *end;
    double v = strtod(buf, &end);
    while (*end == ' ' || *end == '\t')
        end++;
    if (end != buf && *end == '\0' && isfinite(v) && v >= 0)
        *noise_floor = v;
}

/* Columns picked by name (cm_load_opts.*_column) rather than position. */
typedef struct {
    int named;               /* 1 when any column is named */
    int pick[S_MAX_FIELDS];  /* column of the user, item, rating, timestamp; -1: none */
    int n_columns;           /* fields per row: the header's */
} s_columns;

#define S_MAX_COLUMNS 1024   /* header columns, at most, when picking by name */

static int s_is_named(const char *c)
{
    return c && *c;
}

static void s_columns_init(const cm_load_opts *opts, s_columns *c)
{
    c->named = s_is_named(opts->user_column) || s_is_named(opts->item_column) ||
               s_is_named(opts->rating_column) || s_is_named(opts->timestamp_column);
    /* unnamed roles keep their place in the user item rating layout */
    c->pick[0] = 0;
    c->pick[1] = 1;
    c->pick[2] = 2;
    c->pick[3] = -1;
    c->n_columns = 0;
}

/* Finds the named columns in the header line [p, e); unnamed ones keep
 * their position. Errors name the file, the line, the key and the header. */
static int s_columns_resolve(const char *path, size_t line, s_sep sep, const char *p,
                             const char *e, const cm_load_opts *opts, s_columns *c,
                             cm_error *err)
{
    static const char *const keys[S_MAX_FIELDS] = {"user_column", "item_column",
                                                   "rating_column", "timestamp_column"};
    static const char *const roles[3] = {"user id", "item id", "rating"};
    const char *names[S_MAX_FIELDS] = {opts->user_column, opts->item_column,
                                       opts->rating_column, opts->timestamp_column};
    const int none[S_MAX_FIELDS] = {-1, -1, -1, -1};
    s_field f[S_MAX_FIELDS];
    const int shown = e - p > 160 ? 160 : (int)(e - p);
    int n = s_split(sep, p, e, none, f);
    if (n > S_MAX_COLUMNS)
        return cm_error_set(err, CM_EPARSE, "%s:%zu: %d columns in the header; at most %d "
                            "when columns are picked by name", path, line, n, S_MAX_COLUMNS);
    c->n_columns = n;
    for (int r = 0; r < S_MAX_FIELDS; r++) {
        if (!s_is_named(names[r]))
            continue;
        c->pick[r] = -1;
        for (int i = 0; i < n && c->pick[r] < 0; i++) {
            const int one[S_MAX_FIELDS] = {i, -1, -1, -1};
            s_split(sep, p, e, one, f);
            if (f[0].n == strlen(names[r]) && memcmp(f[0].p, names[r], f[0].n) == 0)
                c->pick[r] = i;
        }
        if (c->pick[r] < 0)
            return cm_error_set(err, CM_EPARSE,
                                "%s:%zu: %s = %.64s: no such column in the header '%.*s'", path,
                                line, keys[r], names[r], shown, p);
    }
    for (int r = 0; r < 3; r++) {
        if (c->pick[r] >= n)
            return cm_error_set(err, CM_EPARSE,
                                "%s:%zu: the header '%.*s' has %d columns, so no column %d for "
                                "the %s; set %s",
                                path, line, shown, p, n, c->pick[r] + 1, roles[r], keys[r]);
        for (int q = r + 1; q < S_MAX_FIELDS; q++)
            if (c->pick[q] == c->pick[r])
                return cm_error_set(err, CM_EPARSE,
                                    "%s:%zu: %s and %s are both column %d of '%.*s'; name "
                                    "each column",
                                    path, line, keys[r], keys[q], c->pick[r] + 1, shown, p);
    }
    return 0;
}

/* One split line of a ratings file (nf fields in fl): 0 with its rating
 * in *r, 1 for a header to skip (the first line, maybe_header, whose
 * rating is not a number), 2 for a bad line (why says what). */
static int s_rating_fields(const s_columns *cols, int nf, const s_field *fl, int maybe_header,
                           float *r, char *why, size_t cap)
{
    if (cols->named && nf != cols->n_columns) {
        snprintf(why, cap, "expected %d fields (as the header), got %d", cols->n_columns, nf);
        return 2;
    }
    if (!cols->named && (nf < 3 || nf > 4)) {
        /* a wider file is usually a csv export with more columns */
        snprintf(why, cap, "expected 3 or 4 fields (user item rating [timestamp]%s), got %d",
                 nf > 4 ? "; name the columns of a wider file with user_column, "
                          "item_column, rating_column"
                        : "",
                 nf);
        return 2;
    }
    int pr = s_parse_rating(fl[2].p, fl[2].n, r);
    if (pr != 0 && maybe_header)
        return 1;
    if (fl[0].n == 0 || fl[1].n == 0) {
        snprintf(why, cap, "expected a non-empty %s id, got an empty field",
                 fl[0].n == 0 ? "user" : "item");
        return 2;
    }
    if (pr == -1 || pr == -2) {
        snprintf(why, cap, "expected a %s rating, got '%.*s'", pr == -1 ? "numeric" : "finite",
                 s_show_len(fl[2].n), fl[2].p);
        return 2;
    }
    return 0;
}

/* Gives back the slack of blank, comment and bad lines: o keeps n rows. */
static void s_owner_shrink(s_owner *o, size_t n)
{
    uint64_t *u = realloc(o->user, n * sizeof *u);
    if (u)
        o->user = u;
    uint64_t *it = realloc(o->item, n * sizeof *it);
    if (it)
        o->item = it;
    float *ra = realloc(o->rating, n * sizeof *ra);
    if (ra)
        o->rating = ra;
}

static int s_load_text(const char *path, const cm_load_opts *opts, const cm_textfile *f,
                       cm_ratings *out, cm_error *err)
{
    cm_lines it;
    /* NUL bytes near the start mean binary data (a .psrd with a damaged
     * magic, a compressed file): say so instead of counting bad lines. */
    if (cm_lines_init(&it, f))
        return cm_error_set(err, CM_EPARSE,
                            "%s: binary data in a text file (bad magic? a psrec binary dataset "
                            "starts with %s)", path, CM_DATASET_MAGIC);

    size_t cap = cm_lines_count(&it);
    s_owner *o = s_owner_heap(cap);
    if (!o)
        return cm_error_set(err, CM_ENOMEM, "%s: cannot allocate %zu rows", path, cap);

    cm_badlines c;
    cm_badlines_init(&c, path, opts->max_bad_lines, opts->log_bad_lines);
    s_sep sep = S_SEP_NONE;
    size_t n = 0;
    double noise_floor = -1.0;
    int rc = 0;
    s_field fl[S_MAX_FIELDS];
    char why[320];
    const char *ls, *le;
    s_columns cols;
    s_columns_init(opts, &cols);

    /* Trailing blanks stay: s_detect sees them and s_split trims fields. */
    while (cm_lines_next(&it, &ls, &le)) {
        const size_t line = it.line;
        while (ls < le && s_is_blank(*ls))
            ls++;
        if (ls == le)
            continue;
        if (*ls == '#') {
            s_comment(ls, le, &noise_floor);
            continue;
        }
        int first = sep == S_SEP_NONE;
        if (first)
            sep = s_detect(ls, le);
        if (first && cols.named) {
            /* the header: named columns need one, wherever comments end */
            if ((rc = s_columns_resolve(path, line, sep, ls, le, opts, &cols, err)) != 0)
                goto fail;
            continue;
        }

        int nf = s_split(sep, ls, le, cols.named ? cols.pick : NULL, fl);
        float r;
        int lr = s_rating_fields(&cols, nf, fl, first && line == 1, &r, why, sizeof why);
        if (lr == 1) {
            cm_log(CM_LOG_DEBUG, "%s:1: header line skipped", path);
            continue;
        }
        if (lr == 2) {
            if (cm_badlines_add(&c, line, "%s", why))
                goto toomany;
            continue;
        }
        o->user[n] = s_parse_id(fl[0].p, fl[0].n);
        o->item[n] = s_parse_id(fl[1].p, fl[1].n);
        o->rating[n] = r;
        n++;
    }

    if ((rc = cm_badlines_finish(&c, n, it.line, err)) != 0)
        goto fail;

    if (n < cap)
        s_owner_shrink(o, n);
    s_attach(out, o, n);
    out->bad_lines = c.bad;
    out->noise_floor = noise_floor;
    return 0;

toomany:
    rc = cm_badlines_toomany(&c, it.line, err);
fail:
    free(o->user);
    free(o->item);
    free(o->rating);
    free(o);
    return rc;
}

/* ------------------------------------------------------------------------
 * Binary reading
 * ------------------------------------------------------------------------ */

static inline uint32_t s_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void s_put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* Checks that column [off, off + n*width) lies after the header inside the
 * file and is aligned. */
static int s_check_column(const char *path, const char *name, uint64_t off, uint64_t n,
                          uint64_t width, uint64_t data_start, uint64_t size, cm_error *err)
{
    if (off % S_ALIGN != 0)
        return cm_error_set(err, CM_EPARSE,
                            "%s: %s column offset %llu is not %u-byte aligned (file is corrupted)",
                            path, name, (unsigned long long)off, S_ALIGN);
    if (off < data_start)
        return cm_error_set(err, CM_EPARSE,
                            "%s: %s column offset %llu overlaps the header (file is corrupted)",
                            path, name, (unsigned long long)off);
    if (off > size || n > (size - off) / width)
        return cm_error_set(err, CM_EPARSE,
                            "%s: %s column (offset %llu, %llu rows) lies outside the file of %llu bytes "
                            "(file is corrupted or truncated)",
                            path, name, (unsigned long long)off, (unsigned long long)n,
                            (unsigned long long)size);
    return 0;
}

static int s_load_bin(const char *path, const cm_load_opts *opts, cm_textfile *f,
                      cm_ratings *out, cm_error *err)
{
    const unsigned char *b = (const unsigned char *)f->data;
    uint64_t size = f->len;
    if (size < S_PREAMBLE || memcmp(b, CM_DATASET_MAGIC, 8) != 0)
        return cm_error_set(err, CM_EPARSE,
                            "%s: bad magic (expected %s at byte 0): not a psrec binary dataset "
                            "of this version, or a truncated one", path, CM_DATASET_MAGIC);
    uint32_t hlen = s_le32(b + 8);
    if ((uint64_t)hlen > size - S_PREAMBLE)
        return cm_error_set(err, CM_EPARSE,
                            "%s: header length %u exceeds the file size %llu (file is corrupted or truncated)",
                            path, hlen, (unsigned long long)size);
    cm_dataset_hdr h;
    int rc = cm_codec_dataset_unpack(b + S_PREAMBLE, hlen, &h, err);
    if (rc != 0) {
        cm_error_prefix(err, "%s", path);
        return rc;
    }
    if (h.version != S_VERSION)
        return cm_error_set(err, CM_EPARSE, "%s: dataset format version %u is not supported (expected %u)",
                            path, h.version, S_VERSION);
    uint64_t data_start = S_PREAMBLE + (uint64_t)hlen, n = h.n_rows;
    if ((rc = s_check_column(path, "user", h.user_offset, n, 8, data_start, size, err)) ||
        (rc = s_check_column(path, "item", h.item_offset, n, 8, data_start, size, err)) ||
        (rc = s_check_column(path, "rating", h.rating_offset, n, 4, data_start, size, err)))
        return rc;
    if (n > SIZE_MAX / 8)
        return cm_error_set(err, CM_ERANGE, "%s: %llu rows do not fit in memory", path,
                            (unsigned long long)n);
    const void *cu = b + h.user_offset, *ci = b + h.item_offset, *cr = b + h.rating_offset;
    if (opts->verify_checksum) {
        struct {
            const char *name;
            const void *p;
            size_t bytes;
            uint64_t want;
        } cols[3] = {
            {"user", cu, (size_t)n * 8, h.user_checksum},
            {"item", ci, (size_t)n * 8, h.item_checksum},
            {"rating", cr, (size_t)n * 4, h.rating_checksum},
        };
        for (int i = 0; i < 3; i++)
            if ((opts->verify_checksum & (1 << i)) &&
                cm_hash_bytes(cols[i].p, cols[i].bytes, 0) != cols[i].want)
                return cm_error_set(err, CM_ECHECKSUM,
                                    "%s: %s column checksum mismatch (file is corrupted or truncated)",
                                    path, cols[i].name);
    }
    s_owner *o = calloc(1, sizeof *o);
    if (!o)
        return cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
    /* The ratings take over the mapping (or the read buffer). */
    if (f->map) {
        o->map = f->map;
        o->map_len = f->len;
        f->map = NULL;
    } else {
        o->block = f->heap;
        f->heap = NULL;
    }
    memset(out, 0, sizeof *out);
    out->n = (size_t)n;
    out->user = cu;
    out->item = ci;
    out->rating = cr;
    out->noise_floor = h.noise_floor;
    out->owner_ = o;
    if (o->map)
        madvise(o->map, o->map_len, MADV_WILLNEED);
    return 0;
}

int cm_ratings_load(const char *path, const cm_load_opts *opts, cm_ratings *out,
                    cm_error *err)
{
    memset(out, 0, sizeof *out);
    cm_load_opts def = cm_load_opts_default();
    if (!opts)
        opts = &def;
    cm_textfile f;
    int rc = cm_textfile_open(&f, path, err);
    if (rc != 0)
        return rc;
    /* "PSRECDS" with another version byte, or a file too short for the
     * preamble, is still a binary file: it gets the binary error. */
    if (f.len >= 7 && memcmp(f.data, CM_DATASET_MAGIC, 7) == 0) {
        s_columns cols;
        s_columns_init(opts, &cols);
        if (cols.named)
            rc = cm_error_set(err, CM_ECONFIG,
                              "%s: a .psrd dataset has fixed columns (user, item, rating); "
                              "user_column, item_column, rating_column and timestamp_column "
                              "are for text with a header line",
                              path);
        else
            rc = s_load_bin(path, opts, &f, out, err);
    } else {
        rc = s_load_text(path, opts, &f, out, err);
    }
    cm_textfile_close(&f);
    if (rc != 0)
        memset(out, 0, sizeof *out);
    return rc;
}

/* ------------------------------------------------------------------------
 * Split
 * ------------------------------------------------------------------------ */

int cm_ratings_split(const cm_ratings *all, double test_fraction, uint64_t seed,
                     cm_ratings *train, cm_ratings *test, cm_error *err)
{
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    if (!(test_fraction >= 0.0 && test_fraction <= 1.0))
        return cm_error_set(err, CM_EINVAL, "test fraction %g is not within [0, 1]", test_fraction);
    cm_rng r;
    cm_rng_seed(&r, seed);
    size_t n_test = 0;
    for (size_t i = 0; i < all->n; i++)
        n_test += cm_rng_uniform(&r) < test_fraction;
    s_owner *otr = s_owner_heap(all->n - n_test);
    s_owner *ote = s_owner_heap(n_test);
    if (!otr || !ote) {
        cm_ratings tmp;
        if (otr) {
            s_attach(&tmp, otr, 0);
            cm_ratings_free(&tmp);
        }
        if (ote) {
            s_attach(&tmp, ote, 0);
            cm_ratings_free(&tmp);
        }
        return cm_error_set(err, CM_ENOMEM, "split: cannot allocate %zu rows", all->n);
    }
    cm_rng_seed(&r, seed);
    size_t a = 0, b = 0;
    for (size_t i = 0; i < all->n; i++) {
        s_owner *o = cm_rng_uniform(&r) < test_fraction ? ote : otr;
        size_t *k = o == ote ? &b : &a;
        o->user[*k] = all->user[i];
        o->item[*k] = all->item[i];
        o->rating[*k] = all->rating[i];
        (*k)++;
    }
    s_attach(train, otr, a);
    s_attach(test, ote, b);
    train->noise_floor = test->noise_floor = all->noise_floor;
    return 0;
}

/* ------------------------------------------------------------------------
 * Validation carving
 * ------------------------------------------------------------------------ */

/* Distinct seeds for the two identities, so that a pair (0, k) and the
 * position k never share a fate by construction. */
#define S_CARVE_PAIR 0x7c3f5a1d29b6e48bULL
#define S_CARVE_POS 0x1e8d6b4a93f07c25ULL

/* The top 53 bits of h as a uniform number in [0, 1). */
static int s_carve_pick(uint64_t h, double fraction)
{
    return (double)(h >> 11) * 0x1p-53 < fraction;
}

int cm_carve_pair(uint64_t user, uint64_t item, uint64_t seed, double fraction)
{
    if (!(fraction > 0))
        return 0;
    return s_carve_pick(cm_hash_key(item, cm_hash_key(user, seed ^ S_CARVE_PAIR)), fraction);
}

int cm_carve_position(uint64_t position, uint64_t seed, double fraction)
{
    if (!(fraction > 0))
        return 0;
    return s_carve_pick(cm_hash_key(position, seed ^ S_CARVE_POS), fraction);
}

int cm_ratings_carve(const cm_ratings *all, double fraction, uint64_t seed, cm_ratings *train,
                     cm_ratings *valid, cm_error *err)
{
    memset(train, 0, sizeof *train);
    memset(valid, 0, sizeof *valid);
    if (!(fraction >= 0.0 && fraction < 1.0))
        return cm_error_set(err, CM_EINVAL, "validation_fraction %g is not within [0, 1)",
                            fraction);
    size_t n_valid = 0;
    for (size_t i = 0; i < all->n; i++)
        n_valid += (size_t)cm_carve_pair(all->user[i], all->item[i], seed, fraction);
    s_owner *otr = s_owner_heap(all->n - n_valid);
    s_owner *ova = s_owner_heap(n_valid);
    if (!otr || !ova) {
        cm_ratings tmp;
        if (otr) {
            s_attach(&tmp, otr, 0);
            cm_ratings_free(&tmp);
        }
        if (ova) {
            s_attach(&tmp, ova, 0);
            cm_ratings_free(&tmp);
        }
        return cm_error_set(err, CM_ENOMEM, "validation carve: cannot allocate %zu rows",
                            all->n);
    }
    size_t a = 0, b = 0;
    for (size_t i = 0; i < all->n; i++) {
        int v = cm_carve_pair(all->user[i], all->item[i], seed, fraction);
        s_owner *o = v ? ova : otr;
        size_t *k = v ? &b : &a;
        o->user[*k] = all->user[i];
        o->item[*k] = all->item[i];
        o->rating[*k] = all->rating[i];
        (*k)++;
    }
    s_attach(train, otr, a);
    s_attach(valid, ova, b);
    train->noise_floor = all->noise_floor;
    valid->noise_floor = -1;
    train->bad_lines = all->bad_lines;
    return 0;
}

/* ------------------------------------------------------------------------
 * Binary writing
 * ------------------------------------------------------------------------ */

struct cm_binwriter {
    cm_atomic f;              /* path, its "path.tmp.<pid>" and the fd */
    size_t n_rows;            /* promised row count */
    size_t written;           /* rows appended so far */
    size_t buffered;          /* rows in the buffers, not yet written */
    uint64_t off[3];          /* column offsets in the file */
    uint64_t pos[3];          /* next write position per column */
    XXH64_state_t *xs[3];     /* running checksums per column */
    uint64_t *ubuf, *ibuf;    /* S_CHUNK_ROWS-row buffers */
    float *rbuf;
    double sum;               /* rating statistics */
    float rmin, rmax;
};

static uint64_t s_align_up(uint64_t x)
{
    return (x + S_ALIGN - 1) / S_ALIGN * S_ALIGN;
}

static int s_pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

/* Frees w; removes the temporary file unless it was committed. */
static void s_binwriter_free(cm_binwriter *w)
{
    cm_atomic_abort(&w->f);
    for (int i = 0; i < 3; i++)
        if (w->xs[i])
            XXH64_freeState(w->xs[i]);
    free(w->ubuf);
    free(w->ibuf);
    free(w->rbuf);
    free(w);
}

cm_binwriter *cm_binwriter_open(const char *path, size_t n_rows, cm_error *err)
{
    if (n_rows > ((uint64_t)1 << 58)) {
        cm_error_set(err, CM_ERANGE, "%s: %zu rows is too many for one file", path, n_rows);
        return NULL;
    }
    cm_binwriter *w = calloc(1, sizeof *w);
    if (!w) {
        cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    w->f = (cm_atomic)CM_ATOMIC_INIT;
    w->ubuf = malloc(S_CHUNK_ROWS * sizeof *w->ubuf);
    w->ibuf = malloc(S_CHUNK_ROWS * sizeof *w->ibuf);
    w->rbuf = malloc(S_CHUNK_ROWS * sizeof *w->rbuf);
    for (int i = 0; i < 3; i++)
        w->xs[i] = XXH64_createState();
    if (!w->ubuf || !w->ibuf || !w->rbuf || !w->xs[0] || !w->xs[1] || !w->xs[2]) {
        cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        s_binwriter_free(w);
        return NULL;
    }
    for (int i = 0; i < 3; i++)
        XXH64_reset(w->xs[i], 0);
    w->n_rows = n_rows;
    w->off[0] = S_HEADER_REGION;
    w->off[1] = s_align_up(w->off[0] + (uint64_t)n_rows * 8);
    w->off[2] = s_align_up(w->off[1] + (uint64_t)n_rows * 8);
    for (int i = 0; i < 3; i++)
        w->pos[i] = w->off[i];
    w->rmin = INFINITY;
    w->rmax = -INFINITY;
    if (cm_atomic_open(&w->f, path, 0, err) != 0) {
        s_binwriter_free(w);
        return NULL;
    }
    if (ftruncate(w->f.fd, (off_t)(w->off[2] + (uint64_t)n_rows * 4)) != 0) {
        cm_error_set(err, CM_EIO, "%s: %s", w->f.tmp, strerror(errno));
        s_binwriter_free(w);
        return NULL;
    }
    return w;
}

static int s_flush(cm_binwriter *w, cm_error *err)
{
    size_t k = w->buffered;
    if (k == 0)
        return 0;
    const void *bufs[3] = {w->ubuf, w->ibuf, w->rbuf};
    size_t widths[3] = {8, 8, 4};
    for (int i = 0; i < 3; i++) {
        XXH64_update(w->xs[i], bufs[i], k * widths[i]);
        if (s_pwrite_all(w->f.fd, bufs[i], k * widths[i], w->pos[i]) != 0)
            return cm_error_set(err, CM_EIO, "%s: write failed: %s", w->f.tmp, strerror(errno));
        w->pos[i] += k * widths[i];
    }
    w->buffered = 0;
    return 0;
}

int cm_binwriter_append(cm_binwriter *w, const uint64_t *user, const uint64_t *item,
                        const float *rating, size_t n, cm_error *err)
{
    if (n > w->n_rows - w->written)
        return cm_error_set(err, CM_ESTATE, "%s: appending %zu rows would exceed the %zu promised",
                            w->f.path, n, w->n_rows);
    while (n > 0) {
        size_t k = S_CHUNK_ROWS - w->buffered;
        if (k > n)
            k = n;
        memcpy(w->ubuf + w->buffered, user, k * sizeof *user);
        memcpy(w->ibuf + w->buffered, item, k * sizeof *item);
        memcpy(w->rbuf + w->buffered, rating, k * sizeof *rating);
        for (size_t i = 0; i < k; i++) {
            float r = rating[i];
            w->sum += r;
            w->rmin = r < w->rmin ? r : w->rmin;
            w->rmax = r > w->rmax ? r : w->rmax;
        }
        w->buffered += k;
        w->written += k;
        user += k;
        item += k;
        rating += k;
        n -= k;
        if (w->buffered == S_CHUNK_ROWS) {
            int rc = s_flush(w, err);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

int cm_binwriter_close(cm_binwriter *w, double noise_floor, const char *source,
                       cm_error *err)
{
    if (!w)
        return cm_error_set(err, CM_EINVAL, "binwriter_close: NULL writer");
    int rc = 0;
    uint8_t *pb = NULL;
    if (w->written != w->n_rows) {
        rc = cm_error_set(err, CM_ESTATE, "%s: %zu rows appended, %zu promised", w->f.path,
                          w->written, w->n_rows);
        goto out;
    }
    if ((rc = s_flush(w, err)) != 0)
        goto out;

    cm_dataset_hdr h;
    memset(&h, 0, sizeof h);
    h.version = S_VERSION;
    h.n_rows = w->n_rows;
    h.user_offset = w->off[0];
    h.item_offset = w->off[1];
    h.rating_offset = w->off[2];
    h.user_checksum = XXH64_digest(w->xs[0]);
    h.item_checksum = XXH64_digest(w->xs[1]);
    h.rating_checksum = XXH64_digest(w->xs[2]);
    h.noise_floor = noise_floor;
    h.rating_min = w->n_rows ? w->rmin : 0.0f;
    h.rating_max = w->n_rows ? w->rmax : 0.0f;
    h.rating_mean = w->n_rows ? w->sum / (double)w->n_rows : 0.0;
    snprintf(h.source, sizeof h.source, "%s", source ? source : "");
    size_t plen;
    if (cm_codec_dataset_pack(&h, &pb, &plen) != 0) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory", w->f.path);
        goto out;
    }
    if (plen > S_HEADER_REGION - S_PREAMBLE) {
        rc = cm_error_set(err, CM_ERANGE, "%s: header of %zu bytes does not fit", w->f.path,
                          plen);
        goto out;
    }
    unsigned char pre[S_PREAMBLE];
    memcpy(pre, CM_DATASET_MAGIC, 8);
    s_put_le32(pre + 8, (uint32_t)plen);
    s_put_le32(pre + 12, 0);
    if (s_pwrite_all(w->f.fd, pre, sizeof pre, 0) != 0 ||
        s_pwrite_all(w->f.fd, pb, plen, S_PREAMBLE) != 0) {
        rc = cm_error_set(err, CM_EIO, "%s: write failed: %s", w->f.tmp, strerror(errno));
        goto out;
    }
    rc = cm_atomic_commit(&w->f, err);
out:
    free(pb);
    s_binwriter_free(w);
    return rc;
}

void cm_binwriter_destroy(cm_binwriter **pw)
{
    if (!pw || !*pw)
        return;
    s_binwriter_free(*pw);
    *pw = NULL;
}

int cm_ratings_write_bin(const char *path, const cm_ratings *r, const char *source,
                         cm_error *err)
{
    cm_error local;
    if (!err)
        err = &local;
    cm_binwriter *w = cm_binwriter_open(path, r->n, err);
    if (!w)
        return err->code;
    int rc = cm_binwriter_append(w, r->user, r->item, r->rating, r->n, err);
    if (rc != 0) {
        cm_binwriter_destroy(&w);
        return rc;
    }
    return cm_binwriter_close(w, r->noise_floor, source, err);
}

/* ------------------------------------------------------------------------
 * Text writing
 * ------------------------------------------------------------------------ */

/* Writes v in decimal at p; returns the length. */
static size_t s_fmt_u64(char *p, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

static const double s_pow10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8};

/* Writes the shortest fixed-point decimal (at most 8 fractional digits)
 * that reads back as the same float, or %.9g for anything else; p has room
 * for 48 bytes. Returns the length. */
static size_t s_fmt_float(char *p, float x)
{
    double v = x;
    if (isfinite(v) && fabs(v) < 1e9) {
        double a = fabs(v);
        for (int d = 0; d <= 8; d++) {
            double s = nearbyint(a * s_pow10[d]);
            if ((float)(s / s_pow10[d]) != (float)a)
                continue;
            char digits[24];
            size_t nd = s_fmt_u64(digits, (uint64_t)s), k = 0, ud = (size_t)d;
            if (x < 0 && s != 0)
                p[k++] = '-';
            if (ud >= nd) {
                p[k++] = '0';
                if (ud > 0) {
                    p[k++] = '.';
                    for (size_t z = nd; z < ud; z++)
                        p[k++] = '0';
                    memcpy(p + k, digits, nd);
                    k += nd;
                }
            } else {
                memcpy(p + k, digits, nd - ud);
                k += nd - ud;
                if (ud > 0) {
                    p[k++] = '.';
                    memcpy(p + k, digits + nd - ud, ud);
                    k += ud;
                }
            }
            return k;
        }
    }
    int k = snprintf(p, 48, "%.9g", v);
    return k < 0 ? 0 : (size_t)k;
}

#define S_TEXT_BUF (1u << 20)

struct cm_textwriter {
    cm_atomic f;       /* path, its "path.tmp.<pid>" and the fd */
    char *buf;         /* S_TEXT_BUF bytes of pending output */
    size_t len;
};

/* Frees w; removes the temporary file unless it was committed. */
static void s_textwriter_free(cm_textwriter *w)
{
    cm_atomic_abort(&w->f);
    free(w->buf);
    free(w);
}

static int s_text_flush(cm_textwriter *w, cm_error *err)
{
    const char *p = w->buf;
    size_t n = w->len;
    while (n > 0) {
        ssize_t k = write(w->f.fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return cm_error_set(err, CM_EIO, "%s: write failed: %s", w->f.tmp, strerror(errno));
        p += k;
        n -= (size_t)k;
    }
    w->len = 0;
    return 0;
}

cm_textwriter *cm_textwriter_open(const char *path, cm_error *err)
{
    cm_textwriter *w = calloc(1, sizeof *w);
    if (!w) {
        cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    w->f = (cm_atomic)CM_ATOMIC_INIT;
    w->buf = malloc(S_TEXT_BUF);
    if (!w->buf) {
        cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        s_textwriter_free(w);
        return NULL;
    }
    if (cm_atomic_open(&w->f, path, 0, err) != 0) {
        s_textwriter_free(w);
        return NULL;
    }
    return w;
}

int cm_textwriter_append(cm_textwriter *w, const uint64_t *user, const uint64_t *item,
                         const float *rating, size_t n, cm_error *err)
{
    for (size_t i = 0; i < n; i++) {
        if (S_TEXT_BUF - w->len < 128) {
            int rc = s_text_flush(w, err);
            if (rc != 0)
                return rc;
        }
        char *p = w->buf + w->len;
        p += s_fmt_u64(p, user[i]);
        *p++ = '\t';
        p += s_fmt_u64(p, item[i]);
        *p++ = '\t';
        p += s_fmt_float(p, rating[i]);
        *p++ = '\n';
        w->len = (size_t)(p - w->buf);
    }
    return 0;
}

int cm_textwriter_close(cm_textwriter *w, double noise_floor, cm_error *err)
{
    if (!w)
        return cm_error_set(err, CM_EINVAL, "textwriter_close: NULL writer");
    int rc;
    if (noise_floor >= 0) {
        if (S_TEXT_BUF - w->len < 128 && (rc = s_text_flush(w, err)) != 0)
            goto out;
        int k = snprintf(w->buf + w->len, S_TEXT_BUF - w->len, "#psrec noise_floor=%.17g\n",
                         noise_floor);
        if (k > 0)
            w->len += (size_t)k;
    }
    if ((rc = s_text_flush(w, err)) != 0)
        goto out;
    rc = cm_atomic_commit(&w->f, err);
out:
    s_textwriter_free(w);
    return rc;
}

void cm_textwriter_destroy(cm_textwriter **pw)
{
    if (!pw || !*pw)
        return;
    s_textwriter_free(*pw);
    *pw = NULL;
}

int cm_ratings_write_text(const char *path, const cm_ratings *r, cm_error *err)
{
    cm_error local;
    if (!err)
        err = &local;
    cm_textwriter *w = cm_textwriter_open(path, err);
    if (!w)
        return err->code;
    int rc = cm_textwriter_append(w, r->user, r->item, r->rating, r->n, err);
    if (rc != 0) {
        cm_textwriter_destroy(&w);
        return rc;
    }
    return cm_textwriter_close(w, r->noise_floor, err);
}
