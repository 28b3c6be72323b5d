/* textfile: the shared machinery of the text loaders (dataset, features).
 *
 * A whole file in memory (mapped when it is a regular file, read whole when
 * it cannot be: a pipe, a FIFO, /dev/stdin), a line iterator that strips
 * "\n" and "\r\n", and a bad-line reporter that counts, logs the first few
 * as "file:line: reason", keeps the first, and makes the CM_ETOOMANY error
 * once more than max_bad_lines were seen. All plain structs on the caller's
 * stack; one thread. */
#ifndef PSREC_COMMON_TEXTFILE_H
#define PSREC_COMMON_TEXTFILE_H

#include <stddef.h>
#include <string.h>

#include "common/err.h"

/* ------------------------------------------------------------------------
 * A whole file
 * ------------------------------------------------------------------------ */

typedef struct {
    const char *data;   /* file bytes ("" when empty) */
    size_t len;
    void *map;          /* mmap base, or NULL; a caller may take it over */
    char *heap;         /* read buffer, or NULL; a caller may take it over */
    int fd;             /* -1 once closed */
} cm_textfile;

/* Maps a regular file; reads anything else (a pipe, /dev/stdin) whole.
 * 0, CM_EIO ("path: strerror") or CM_ENOMEM; on failure f is closed. */
int cm_textfile_open(cm_textfile *f, const char *path, cm_error *err);

/* Unmaps or frees the bytes (unless taken over: set map/heap to NULL) and
 * closes the descriptor. */
void cm_textfile_close(cm_textfile *f);

/* ------------------------------------------------------------------------
 * Lines
 * ------------------------------------------------------------------------ */

typedef struct {
    const char *p, *end;  /* what is left of the file */
    size_t line;          /* 1-based number of the line last returned */
} cm_lines;

/* Starts at the beginning of f past a UTF-8 byte order mark. Returns 1
 * when the first 4096 bytes hold a NUL (binary data: the caller says what
 * it expected), else 0. */
int cm_lines_init(cm_lines *it, const cm_textfile *f);

/* Lines left (newlines + 1): an upper bound on the rows to come. */
size_t cm_lines_count(const cm_lines *it);

/* Next line in [*ls, *le), without its "\n" or "\r\n" (blanks are kept);
 * 0 at the end of the file. Inline: it runs once per line of the hot
 * loaders. */
static inline int cm_lines_next(cm_lines *it, const char **ls, const char **le)
{
    if (it->p >= it->end)
        return 0;
    const char *s = it->p;
    const char *nl = memchr(s, '\n', (size_t)(it->end - s));
    const char *e = nl ? nl : it->end;
    it->p = nl ? nl + 1 : it->end;
    it->line++;
    if (e > s && e[-1] == '\r')
        e--;
    *ls = s;
    *le = e;
    return 1;
}

/* ------------------------------------------------------------------------
 * Numbers
 * ------------------------------------------------------------------------ */

/* Parses the decimal number [p, p+n) into a float: 0 on success; -1 when
 * it is not a number (or has trailing characters; hex is refused); -2
 * when it is a number but not a finite float; -3 when it spells nan, inf
 * or infinity (optionally signed): callers differ on what that is. Short
 * mantissas are exact without strtod; exponents and long ones use it. */
int cm_text_parse_f32(const char *p, size_t n, float *out);

/* ------------------------------------------------------------------------
 * Bad lines
 * ------------------------------------------------------------------------ */

typedef struct {
    const char *path;                 /* for messages */
    long max_bad_lines;               /* fail beyond this many; negative: never */
    int log_bad_lines;                /* log this many at WARN */
    size_t bad;                       /* bad lines so far */
    char first_bad[CM_ERROR_MSG_MAX]; /* "path:line: reason" of the first */
} cm_badlines;

/* A reporter with no bad lines yet. */
void cm_badlines_init(cm_badlines *b, const char *path, long max_bad_lines, int log_bad_lines);

/* Records one bad line; returns nonzero once more than max_bad_lines were
 * seen (then the caller stops with cm_badlines_toomany). */
int cm_badlines_add(cm_badlines *b, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sets and returns CM_ETOOMANY: "path: too many bad lines (...); first: ...". */
int cm_badlines_toomany(const cm_badlines *b, size_t line, cm_error *err);

/* The end of a load of rows out of lines: CM_EPARSE "no data rows" (with
 * the first bad line, if any) when rows is 0; otherwise logs how many
 * lines were skipped, if any, and returns 0. */
int cm_badlines_finish(const cm_badlines *b, size_t rows, size_t lines, cm_error *err);

#endif
