/* psm: reader for the .psm serving model file (see psm.h, docs/psm.md).
 * Only the C library is used here, on purpose: this file and psm.h are
 * the whole reader a serving system needs to copy. */
#define _POSIX_C_SOURCE 200809L
#include "psm.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct psm_file {
    const unsigned char *base;  /* the file image (mapping, heap copy or borrowed) */
    size_t size;                /* bytes in the image */
    void *map;                  /* the mapping to munmap, or NULL */
    void *heap;                 /* the heap copy to free, or NULL */
    const char *model;          /* into base */
    const char *formula;        /* into base */
    double global_mean;
    float clip_lo, clip_hi;
    uint32_t n_tables;
    psm_table *tables;          /* n_tables, heap; names point into base */
};

/* ------------------------------------------------------------ helpers -- */

static void s_err(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void s_err(char *err, size_t n, const char *fmt, ...)
{
    if (!err || n == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

static uint32_t s_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t s_u64(const unsigned char *p)
{
    return (uint64_t)s_u32(p) | (uint64_t)s_u32(p + 4) << 32;
}

static double s_f64(const unsigned char *p)
{
    uint64_t u = s_u64(p);
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static float s_f32(const unsigned char *p)
{
    uint32_t u = s_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The id and row arrays are used in place, so the host must be
 * little-endian like the file. */
static int s_host_is_le(void)
{
    const uint32_t one = 1;
    unsigned char c;
    memcpy(&c, &one, 1);
    return c == 1;
}

uint64_t psm_checksum_update(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        h ^= s_u64(p + i);
        h *= 0x100000001b3ull;
        h ^= h >> 32;
    }
    return h;
}

static void s_free(psm_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->size);
    free(f->heap);
    free(f->tables);
    free(f);
}

/* --------------------------------------------------------- validation -- */

/* The fixed header, the strings and the directory's place: fills
 * f->n_tables, global_mean, clip range, model and formula, and *dir_end,
 * where the directory ends (the table data lie after it). */
static int s_validate_header(psm_file *f, const char *name, uint64_t *dir_end, char *err,
                             size_t en)
{
    const unsigned char *b = f->base;
    const size_t size = f->size;
    if (!s_host_is_le()) {
        s_err(err, en, "%s: this reader needs a little-endian host", name);
        return -1;
    }
    if (size < PSM_HEADER_SIZE) {
        if (size >= 8 && memcmp(b, PSM_MAGIC, 8) != 0)
            s_err(err, en, "%s: bad magic (not a psm file)", name);
        else
            s_err(err, en, "%s: truncated: %zu bytes, the header alone is %u", name, size,
                  PSM_HEADER_SIZE);
        return -1;
    }
    if (memcmp(b, PSM_MAGIC, 8) != 0) {
        s_err(err, en, "%s: bad magic (not a psm file)", name);
        return -1;
    }
    const uint32_t version = s_u32(b + 8);
    if (version != PSM_VERSION) {
        s_err(err, en, "%s: unsupported version %u (this reader reads %u)", name, version,
              PSM_VERSION);
        return -1;
    }
    const uint64_t file_size = s_u64(b + 16);
    if (file_size != size) {
        if (file_size > size)
            s_err(err, en, "%s: truncated: the header says %llu bytes, the file has %zu", name,
                  (unsigned long long)file_size, size);
        else
            s_err(err, en, "%s: wrong size: the header says %llu bytes, the file has %zu",
                  name, (unsigned long long)file_size, size);
        return -1;
    }
    if (size % 8 != 0) {
        s_err(err, en, "%s: wrong size: %zu bytes is not a multiple of 8", name, size);
        return -1;
    }
    f->n_tables = s_u32(b + 12);
    f->global_mean = s_f64(b + 24);
    f->clip_lo = s_f32(b + 32);
    f->clip_hi = s_f32(b + 36);
    const uint32_t strings_size = s_u32(b + 40);
    const uint64_t dir_offset = s_u64(b + 48);
    if (f->n_tables > PSM_MAX_TABLES) {
        s_err(err, en, "%s: bad header: %u tables (at most %u)", name, f->n_tables,
              PSM_MAX_TABLES);
        return -1;
    }
    if (!isfinite(f->global_mean) || f->clip_lo != f->clip_lo || f->clip_hi != f->clip_hi) {
        s_err(err, en, "%s: bad header: global mean or clip range is not a number", name);
        return -1;
    }
    if (strings_size < 8 || strings_size > PSM_MAX_STRINGS || strings_size % 8 != 0 ||
        dir_offset != (uint64_t)PSM_HEADER_SIZE + strings_size) {
        s_err(err, en,
              "%s: bad header: string block of %u bytes and directory at %llu (expected "
              "a multiple of 8 up to %u, directory right after it)",
              name, strings_size, (unsigned long long)dir_offset, PSM_MAX_STRINGS);
        return -1;
    }
    *dir_end = dir_offset + (uint64_t)f->n_tables * PSM_DIR_ENTRY_SIZE;
    if (*dir_end > size) {
        s_err(err, en, "%s: truncated: the table directory ends at %llu, the file has %zu",
              name, (unsigned long long)*dir_end, size);
        return -1;
    }
    const char *strs = (const char *)b + PSM_HEADER_SIZE;
    const char *nul = memchr(strs, 0, strings_size);
    const char *nul2 = nul ? memchr(nul + 1, 0, strings_size - (size_t)(nul + 1 - strs)) : NULL;
    if (!nul2) {
        s_err(err, en, "%s: bad header: model name and formula are not NUL-terminated", name);
        return -1;
    }
    f->model = strs;
    f->formula = nul + 1;
    return 0;
}

/* Directory entry t: its name, dim, and rows and ids inside the file
 * (after dir_end, aligned, ids strictly ascending); fills f->tables[t]. */
static int s_validate_table(psm_file *f, uint32_t t, uint64_t dir_end, const char *name,
                            char *err, size_t en)
{
    const unsigned char *b = f->base;
    const size_t size = f->size;
    const uint64_t dir_offset = s_u64(b + 48); /* s_validate_header checked it */
    const unsigned char *e = b + dir_offset + (uint64_t)t * PSM_DIR_ENTRY_SIZE;
    psm_table *tb = &f->tables[t];
    const char *tname = (const char *)e;
    if (!memchr(tname, 0, PSM_NAME_MAX) || tname[0] == '\0') {
        s_err(err, en, "%s: table %u: name is empty or not NUL-terminated", name, t);
        return -1;
    }
    tb->name = tname;
    tb->dim = s_u32(e + 64);
    tb->n_rows = s_u64(e + 72);
    const uint64_t ids_off = s_u64(e + 80), rows_off = s_u64(e + 88);
    if (tb->dim == 0 || tb->dim > PSM_MAX_DIM) {
        s_err(err, en, "%s: table '%s': dim %u out of range 1..%u", name, tname, tb->dim,
              PSM_MAX_DIM);
        return -1;
    }
    for (uint32_t u = 0; u < t; u++)
        if (strcmp(f->tables[u].name, tname) == 0) {
            s_err(err, en, "%s: table '%s' appears twice", name, tname);
            return -1;
        }
    if (ids_off % PSM_ALIGN != 0 || rows_off % PSM_ALIGN != 0) {
        s_err(err, en, "%s: table '%s': offsets %llu and %llu are not %u-byte aligned",
              name, tname, (unsigned long long)ids_off, (unsigned long long)rows_off,
              PSM_ALIGN);
        return -1;
    }
    const uint64_t row_bytes = (uint64_t)tb->dim * sizeof(float);
    if (tb->n_rows > size / 8 || tb->n_rows > size / row_bytes || ids_off < dir_end ||
        ids_off > size || tb->n_rows * 8 > size - ids_off || rows_off < dir_end ||
        rows_off > size || tb->n_rows * row_bytes > size - rows_off) {
        s_err(err, en,
              "%s: table '%s': %llu rows of %u floats at ids %llu / rows %llu do not "
              "fit in the file (%zu bytes, data from %llu)",
              name, tname, (unsigned long long)tb->n_rows, tb->dim,
              (unsigned long long)ids_off, (unsigned long long)rows_off, size,
              (unsigned long long)dir_end);
        return -1;
    }
    tb->ids = (const uint64_t *)(const void *)(b + ids_off);
    tb->rows = (const float *)(const void *)(b + rows_off);
    for (uint64_t i = 1; i < tb->n_rows; i++)
        if (tb->ids[i] <= tb->ids[i - 1]) {
            s_err(err, en,
                  "%s: table '%s': ids not strictly ascending at row %llu (%llu after "
                  "%llu)",
                  name, tname, (unsigned long long)i, (unsigned long long)tb->ids[i],
                  (unsigned long long)tb->ids[i - 1]);
            return -1;
        }
    return 0;
}

/* Checks the image in f->base/f->size and fills the parsed fields.
 * 0, or -1 with a message naming `name`. */
static int s_validate(psm_file *f, const char *name, unsigned flags, char *err, size_t en)
{
    const unsigned char *b = f->base;
    const size_t size = f->size;
    uint64_t dir_end = 0;
    if (s_validate_header(f, name, &dir_end, err, en) != 0)
        return -1;
    f->tables = calloc(f->n_tables ? f->n_tables : 1, sizeof *f->tables);
    if (!f->tables) {
        s_err(err, en, "%s: out of memory", name);
        return -1;
    }
    for (uint32_t t = 0; t < f->n_tables; t++)
        if (s_validate_table(f, t, dir_end, name, err, en) != 0)
            return -1;
    if (!(flags & PSM_OPEN_NO_CHECKSUM)) {
        uint64_t h = psm_checksum_update(PSM_CHECKSUM_SEED, b, PSM_CHECKSUM_OFFSET);
        h = psm_checksum_update(h, b + PSM_HEADER_SIZE, size - PSM_HEADER_SIZE);
        const uint64_t want = s_u64(b + PSM_CHECKSUM_OFFSET);
        if (h != want) {
            s_err(err, en, "%s: checksum mismatch (stored %016llx, computed %016llx): the "
                           "file is corrupted",
                  name, (unsigned long long)want, (unsigned long long)h);
            return -1;
        }
    }
    /* a diverged model scores every item nan and ranks none: refuse it
     * here, whoever wrote the file */
    for (uint32_t t = 0; t < f->n_tables; t++) {
        const psm_table *tb = &f->tables[t];
        for (uint64_t i = 0; i < tb->n_rows; i++)
            for (uint32_t j = 0; j < tb->dim; j++) {
                const float v = tb->rows[i * tb->dim + j];
                if (!isfinite(v)) {
                    s_err(err, en, "%s: table '%s' id %llu: weight %u is %s (a diverged "
                                   "model)",
                          name, tb->name, (unsigned long long)tb->ids[i], j,
                          isnan(v) ? "nan" : "infinite");
                    return -1;
                }
            }
    }
    return 0;
}

/* ------------------------------------------------------------ opening -- */

static void *s_aligned_copy_alloc(size_t size)
{
    size_t cap = (size + PSM_ALIGN - 1) / PSM_ALIGN * PSM_ALIGN;
    return aligned_alloc(PSM_ALIGN, cap ? cap : PSM_ALIGN);
}

psm_file *psm_open_fd(int fd, const char *name, unsigned flags, char *err, size_t err_size)
{
    if (!name)
        name = "psm";
    struct stat st;
    if (fstat(fd, &st) != 0) {
        s_err(err, err_size, "%s: %s", name, strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        s_err(err, err_size, "%s: not a regular file", name);
        return NULL;
    }
    psm_file *f = calloc(1, sizeof *f);
    if (!f) {
        s_err(err, err_size, "%s: out of memory", name);
        return NULL;
    }
    f->size = (size_t)st.st_size;
    if (f->size < PSM_HEADER_SIZE) {
        /* read what there is, for the message */
        unsigned char head[8] = {0};
        ssize_t got = pread(fd, head, sizeof head, 0);
        if (got == 8 && memcmp(head, PSM_MAGIC, 8) != 0)
            s_err(err, err_size, "%s: bad magic (not a psm file)", name);
        else
            s_err(err, err_size, "%s: truncated: %zu bytes, the header alone is %u", name,
                  f->size, PSM_HEADER_SIZE);
        goto fail;
    }
    if (flags & PSM_OPEN_COPY) {
        f->heap = s_aligned_copy_alloc(f->size);
        if (!f->heap) {
            s_err(err, err_size, "%s: out of memory for %zu bytes", name, f->size);
            goto fail;
        }
        size_t done = 0;
        while (done < f->size) {
            ssize_t got = pread(fd, (char *)f->heap + done, f->size - done, (off_t)done);
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0) {
                s_err(err, err_size, "%s: read: %s", name, strerror(errno));
                goto fail;
            }
            if (got == 0) {
                s_err(err, err_size, "%s: truncated while reading (%zu of %zu bytes)", name,
                      done, f->size);
                goto fail;
            }
            done += (size_t)got;
        }
        f->base = f->heap;
    } else {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            s_err(err, err_size, "%s: mmap: %s", name, strerror(errno));
            goto fail;
        }
        f->map = m;
        f->base = m;
    }
    if (s_validate(f, name, flags, err, err_size) != 0)
        goto fail;
    return f;
fail:
    s_free(f);
    return NULL;
}

psm_file *psm_open(const char *path, unsigned flags, char *err, size_t err_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        s_err(err, err_size, "%s: %s", path, strerror(errno));
        return NULL;
    }
    psm_file *f = psm_open_fd(fd, path, flags, err, err_size);
    close(fd);
    return f;
}

psm_file *psm_open_memory(const void *data, size_t size, unsigned flags, char *err,
                          size_t err_size)
{
    if (!data && size) {
        s_err(err, err_size, "psm: NULL buffer");
        return NULL;
    }
    psm_file *f = calloc(1, sizeof *f);
    if (!f) {
        s_err(err, err_size, "psm: out of memory");
        return NULL;
    }
    f->size = size;
    if (flags & PSM_OPEN_COPY) {
        f->heap = s_aligned_copy_alloc(size);
        if (!f->heap) {
            s_err(err, err_size, "psm: out of memory for %zu bytes", size);
            goto fail;
        }
        if (size)
            memcpy(f->heap, data, size);
        f->base = f->heap;
    } else {
        if ((uintptr_t)data % 8 != 0) {
            s_err(err, err_size, "psm: buffer is not 8-byte aligned");
            goto fail;
        }
        f->base = data;
    }
    if (s_validate(f, "psm", flags, err, err_size) != 0)
        goto fail;
    return f;
fail:
    s_free(f);
    return NULL;
}

void psm_close(psm_file **pf)
{
    if (!pf || !*pf)
        return;
    s_free(*pf);
    *pf = NULL;
}

/* ------------------------------------------------------------ queries -- */

const char *psm_model(const psm_file *f) { return f->model; }
const char *psm_formula(const psm_file *f) { return f->formula; }
double psm_global_mean(const psm_file *f) { return f->global_mean; }
float psm_clip_lo(const psm_file *f) { return f->clip_lo; }
float psm_clip_hi(const psm_file *f) { return f->clip_hi; }
uint64_t psm_file_size(const psm_file *f) { return f->size; }
uint32_t psm_n_tables(const psm_file *f) { return f->n_tables; }

int psm_table_at(const psm_file *f, uint32_t i, psm_table *out)
{
    if (i >= f->n_tables)
        return -1;
    *out = f->tables[i];
    return 0;
}

int psm_table_find(const psm_file *f, const char *name, psm_table *out)
{
    for (uint32_t i = 0; i < f->n_tables; i++)
        if (strcmp(f->tables[i].name, name) == 0) {
            *out = f->tables[i];
            return 0;
        }
    return -1;
}

int64_t psm_find(const psm_table *t, uint64_t id)
{
    uint64_t lo = 0, hi = t->n_rows;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (t->ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->n_rows && t->ids[lo] == id ? (int64_t)lo : -1;
}

const float *psm_row(const psm_table *t, uint64_t id)
{
    int64_t i = psm_find(t, id);
    return i < 0 ? NULL : t->rows + (uint64_t)i * t->dim;
}
