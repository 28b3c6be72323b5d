/* psm: reader for psrec's serving model file (.psm), standalone.
 *
 * This header and psm.c depend on nothing but the C library (C11 + POSIX
 * open/read/mmap): copy the two files into any project and compile them
 * with it, e.g. `cc -std=c11 -I serve serve/examples/psm_example.c
 * serve/psm.c`. No psrec header is included here.
 *
 * A .psm file holds every table of an exported model (ids sorted ascending,
 * rows as dense float32), the scalars the scoring formula needs (global
 * mean, clip range) and the formula as text. docs/psm.md describes it byte
 * by byte. psm_open validates the whole file before returning it: magic,
 * version, sizes, every offset in bounds and aligned, ids strictly
 * ascending, the checksum, and every weight finite; on any problem it returns NULL and writes a
 * message naming the file to the caller's buffer. Lookups are binary
 * searches over the id arrays, which stay in place (mmap or one heap
 * copy): no per-row allocation.
 *
 * Thread safety: an open psm_file is immutable; any number of threads may
 * read it concurrently. Opening and closing are the caller's to order. */
#ifndef PSM_H
#define PSM_H

#include <stddef.h>
#include <stdint.h>

#define PSM_MAGIC "PSRECPSM"     /* 8 bytes, no terminator in the file */
#define PSM_VERSION 1u
#define PSM_HEADER_SIZE 64u      /* fixed header */
#define PSM_DIR_ENTRY_SIZE 128u  /* one table directory entry */
#define PSM_NAME_MAX 64u         /* table name field, NUL included */
#define PSM_ALIGN 64u            /* id and row arrays start on this */
#define PSM_CHECKSUM_OFFSET 56u  /* the checksum word, skipped when hashing */
#define PSM_MAX_TABLES 1024u
#define PSM_MAX_DIM (1u << 20)
#define PSM_MAX_STRINGS (1u << 20)
#define PSM_ERR_MAX 256u         /* a buffer this big holds any message */

typedef struct psm_file psm_file;

/* One table, pointing into the open file (valid until psm_close). */
typedef struct {
    const char *name;            /* NUL-terminated, at most 63 bytes */
    uint32_t dim;                /* floats per row */
    uint64_t n_rows;
    const uint64_t *ids;         /* n_rows ids, strictly ascending */
    const float *rows;           /* n_rows * dim floats, row-major */
} psm_table;

/* psm_open flags. */
#define PSM_OPEN_COPY 1u         /* read the file into memory instead of
                                    mapping it: a later in-place write to
                                    the file cannot touch the open model */
#define PSM_OPEN_NO_CHECKSUM 2u  /* skip the checksum pass (all structural
                                    checks still run) */

/* Opens and validates path. Returns NULL on failure with a message in
 * err (err_size bytes, may be NULL/0). The caller owns the result. */
psm_file *psm_open(const char *path, unsigned flags, char *err, size_t err_size);

/* The same for an already open descriptor (not closed or moved; `name`
 * is only used in messages). */
psm_file *psm_open_fd(int fd, const char *name, unsigned flags, char *err,
                      size_t err_size);

/* Validates a file image in memory; the buffer (8-byte aligned) is
 * borrowed and must outlive the result. PSM_OPEN_COPY copies it instead. */
psm_file *psm_open_memory(const void *data, size_t size, unsigned flags, char *err,
                          size_t err_size);

/* Releases the file and NULLs *pf; no-op on NULL. */
void psm_close(psm_file **pf);

/* Header fields. Strings are NUL-terminated and live as long as f. */
const char *psm_model(const psm_file *f);
const char *psm_formula(const psm_file *f);
double psm_global_mean(const psm_file *f);
float psm_clip_lo(const psm_file *f);
float psm_clip_hi(const psm_file *f);
uint64_t psm_file_size(const psm_file *f);

uint32_t psm_n_tables(const psm_file *f);

/* Table i (0 <= i < psm_n_tables) into *out. 0, or -1 if out of range. */
int psm_table_at(const psm_file *f, uint32_t i, psm_table *out);

/* The table with that name into *out. 0, or -1 if there is none. */
int psm_table_find(const psm_file *f, const char *name, psm_table *out);

/* Row index of id in t (binary search), or -1 when absent. */
int64_t psm_find(const psm_table *t, uint64_t id);

/* The row of id (dim floats), or NULL when absent. */
const float *psm_row(const psm_table *t, uint64_t id);

/* The file checksum (docs/psm.md): FNV-1a 64 over little-endian 64-bit
 * words with an extra xor-shift, continued from h (start with
 * PSM_CHECKSUM_SEED). n must be a multiple of 8. Writers use it too. */
#define PSM_CHECKSUM_SEED 0xcbf29ce484222325ull
uint64_t psm_checksum_update(uint64_t h, const void *data, size_t n);

#endif
