/* wfile: a buffered output file that appears whole or not at all.
 *
 * Bytes go through a buffer to the temporary file of a cm_atomic
 * ("<path>.tmp.<pid>"); commit flushes and hands over to cm_atomic_commit,
 * so readers (a serving process polling the export) see the old file or
 * the complete new one. Abort (or a failed commit) removes the temporary
 * file. One owning thread. */
#ifndef PSREC_COMMON_WFILE_H
#define PSREC_COMMON_WFILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct cm_wfile cm_wfile;

/* Creates the temporary file. NULL on failure (err names the file). */
cm_wfile *cm_wfile_open(const char *path, cm_error *err);

/* Appends n bytes (buffered). 0 or CM_EIO naming the file. */
int cm_wfile_write(cm_wfile *w, const void *data, size_t n, cm_error *err);

/* Appends zeros up to the next multiple of align (a power of two). */
int cm_wfile_pad(cm_wfile *w, size_t align, cm_error *err);

/* printf to the file (buffered). */
int cm_wfile_printf(cm_wfile *w, cm_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Bytes appended so far. */
uint64_t cm_wfile_tell(const cm_wfile *w);

/* Overwrites n bytes at offset (which must already be written). */
int cm_wfile_pwrite(cm_wfile *w, uint64_t offset, const void *data, size_t n, cm_error *err);

/* Flushes, fsyncs, renames into place, fsyncs the directory; frees w
 * whatever happens (like fclose). */
int cm_wfile_commit(cm_wfile *w, cm_error *err);

/* Removes the temporary file and frees; NULLs *pw; no-op on NULL. */
void cm_wfile_abort(cm_wfile **pw);

#endif
