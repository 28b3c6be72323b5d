/* dataset: interaction data in and out.
 *
 * Reads ratings from text (`user item rating [timestamp]` separated by
 * "::", tab, comma or spaces, with or without a CSV header line) or from
 * psrec's binary columnar format (.psrd: a protobuf DatasetHeader and three
 * mmap-able, checksummed columns; docs/formats.md). The format is detected
 * from the file's first bytes. Numeric ids are kept as they are; other ids
 * hash (xxh64, seed 0) to 64-bit keys.
 *
 * Bad text lines never crash and never vanish silently: each is counted,
 * the first few are logged as "file:line: reason", and loading fails with
 * CM_ETOOMANY once more than max_bad_lines were seen. */
#ifndef PSREC_COMMON_DATASET_H
#define PSREC_COMMON_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define CM_DATASET_MAGIC "PSRECDS1"

/* A column-oriented set of ratings. The arrays may live in an mmap of a
 * binary file or in heap memory; either way cm_ratings_free releases them. */
typedef struct {
    size_t n;                  /* number of rows */
    const uint64_t *user;      /* n user keys */
    const uint64_t *item;      /* n item keys */
    const float *rating;       /* n ratings */
    double noise_floor;        /* best achievable RMSE if known, else -1 */
    size_t bad_lines;          /* malformed text lines skipped while loading */
    void *owner_;              /* private: the memory or mapping behind it */
} cm_ratings;

/* Columns of a binary file, for cm_load_opts.verify_checksum. */
enum { CM_VERIFY_USER = 1, CM_VERIFY_ITEM = 2, CM_VERIFY_RATING = 4, CM_VERIFY_ALL = 7 };

typedef struct {
    long max_bad_lines;        /* fail when more than this many; default 10;
                                  negative: no limit */
    int verify_checksum;       /* binary: the columns whose checksums are checked,
                                  CM_VERIFY_* bits; default CM_VERIFY_ALL, 0: none */
    int log_bad_lines;         /* how many bad lines to log; default 5 */
    /* Text with a header line: the columns to read, by name (exact match).
     * NULL or "" keeps the position (user 1st, item 2nd, rating 3rd); when
     * any is named, the first data line is the header, every row has the
     * header's field count, and each named column must exist. The
     * timestamp column is only checked to exist. Default: all NULL. */
    const char *user_column;
    const char *item_column;
    const char *rating_column;
    const char *timestamp_column;
} cm_load_opts;

cm_load_opts cm_load_opts_default(void);

/* Loads text or binary `path` into *out (zeroed on failure); opts may be
 * NULL for the defaults. 0 or a CM_E* code with a message naming the file
 * (and line for text). Formats and messages: docs/formats.md. */
int cm_ratings_load(const char *path, const cm_load_opts *opts, cm_ratings *out,
                    cm_error *err);

/* Takes the given heap columns (freed with free(); each with room for at
 * least one row even when n is 0) as the rows of *out, without a copy.
 * On failure they are freed. */
int cm_ratings_adopt(uint64_t *user, uint64_t *item, float *rating, size_t n,
                     cm_ratings *out, cm_error *err);

/* Makes an owned, heap copy of the given rows (arrays are copied). */
int cm_ratings_from_arrays(const uint64_t *user, const uint64_t *item,
                           const float *rating, size_t n, cm_ratings *out,
                           cm_error *err);

/* Releases what *r holds and zeroes it; no-op on a zeroed struct. */
void cm_ratings_free(cm_ratings *r);

/* Splits rows deterministically: each row goes to test with probability
 * test_fraction, decided by a stream seeded with `seed`. Both outputs own
 * their memory. */
int cm_ratings_split(const cm_ratings *all, double test_fraction, uint64_t seed,
                     cm_ratings *train, cm_ratings *test, cm_error *err);

/* Validation carving (docs/validation.md). An example is held out when a
 * hash of what it is, with the job's seed, falls below `fraction`: the
 * same examples whatever the number of workers or the order they are
 * read in. cm_carve_pair hashes a rating's (user, item), so repeated
 * ratings of one pair go the same way; cm_carve_position hashes an
 * example's 0-based position among the file's data rows (feature files,
 * whose examples have no identity of their own). 1: held out. */
int cm_carve_pair(uint64_t user, uint64_t item, uint64_t seed, double fraction);
int cm_carve_position(uint64_t position, uint64_t seed, double fraction);

/* Splits all into train (kept) and valid (held out by cm_carve_pair);
 * both own their memory; noise_floor and bad_lines stay with train. */
int cm_ratings_carve(const cm_ratings *all, double fraction, uint64_t seed, cm_ratings *train,
                     cm_ratings *valid, cm_error *err);

/* Writes rows as a binary .psrd file (temporary name, fsync, rename). */
int cm_ratings_write_bin(const char *path, const cm_ratings *r, const char *source,
                         cm_error *err);

/* Writes rows as tab-separated text "user\titem\trating" (temporary name,
 * fsync, rename). Ratings print as the shortest decimal that reads back as
 * the same float. A noise_floor >= 0 is kept as a trailing comment line. */
int cm_ratings_write_text(const char *path, const cm_ratings *r, cm_error *err);

/* Streaming binary writer for data too large to hold twice (psrec gen at
 * 10^8 rows): the row count is fixed up front, rows are appended in order,
 * close writes the header with checksums and renames into place. */
typedef struct cm_binwriter cm_binwriter;

/* Creates "<path>.tmp.<pid>" sized for n_rows. NULL on failure (err says
 * why). */
cm_binwriter *cm_binwriter_open(const char *path, size_t n_rows, cm_error *err);
/* Appends rows (buffered; written in chunks). CM_ESTATE past n_rows, CM_EIO
 * on a failed write. */
int cm_binwriter_append(cm_binwriter *w, const uint64_t *user, const uint64_t *item,
                        const float *rating, size_t n, cm_error *err);
/* Finishes (fails with CM_ESTATE unless exactly n_rows were appended):
 * writes the header, fsyncs, renames into place. Always frees w, like
 * fclose; on failure the temporary file is removed. Do not call destroy
 * after close. */
int cm_binwriter_close(cm_binwriter *w, double noise_floor, const char *source,
                       cm_error *err);
/* Abandons a writer: removes the temporary file, frees; no-op on NULL. */
void cm_binwriter_destroy(cm_binwriter **pw);

/* Streaming text writer, same lines as cm_ratings_write_text, for output
 * too large to hold (psrec gen --text). Same life cycle as cm_binwriter:
 * close appends "#psrec noise_floor=<x>" when noise_floor >= 0 (the text
 * loader reads it back), fsyncs, renames into place and frees w. */
typedef struct cm_textwriter cm_textwriter;

cm_textwriter *cm_textwriter_open(const char *path, cm_error *err);
int cm_textwriter_append(cm_textwriter *w, const uint64_t *user, const uint64_t *item,
                         const float *rating, size_t n, cm_error *err);
int cm_textwriter_close(cm_textwriter *w, double noise_floor, cm_error *err);
void cm_textwriter_destroy(cm_textwriter **pw);

/* Returns 1 if `path` starts with the binary magic, 0 if not, <0 on error. */
int cm_dataset_is_binary(const char *path);

#endif
