/* wfile: an output file that appears whole or not at all.
 *
 * Bytes go to "<path>.tmp.<pid>" through a buffer; commit flushes, fsyncs,
 * renames over path and fsyncs the directory, so readers (a serving
 * process polling the export) see the old file or the complete new one.
 * Abort (or a failed commit) removes the temporary file. */
#ifndef PSREC_SERVE_WFILE_H
#define PSREC_SERVE_WFILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct sv_wfile sv_wfile;

/* Creates the temporary file. NULL on failure (err names the file). */
sv_wfile *sv_wfile_open(const char *path, cm_error *err);

/* Appends n bytes (buffered). 0 or CM_EIO naming the file. */
int sv_wfile_write(sv_wfile *w, const void *data, size_t n, cm_error *err);

/* Appends zeros up to the next multiple of align (a power of two). */
int sv_wfile_pad(sv_wfile *w, size_t align, cm_error *err);

/* printf to the file (buffered). */
int sv_wfile_printf(sv_wfile *w, cm_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Bytes appended so far. */
uint64_t sv_wfile_tell(const sv_wfile *w);

/* Overwrites n bytes at offset (which must already be written). */
int sv_wfile_pwrite(sv_wfile *w, uint64_t offset, const void *data, size_t n, cm_error *err);

/* Flushes, fsyncs, renames into place, fsyncs the directory; frees w
 * whatever happens (like fclose). */
int sv_wfile_commit(sv_wfile *w, cm_error *err);

/* Removes the temporary file and frees; no-op on NULL. */
void sv_wfile_abort(sv_wfile **pw);

#endif
