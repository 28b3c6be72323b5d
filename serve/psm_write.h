/* psm_write: writes the .psm serving model file (docs/psm.md).
 *
 * The psrec side of the format; serve/psm.c is the standalone reader.
 * The file is written to "<path>.tmp.<pid>", fsynced, renamed over path and
 * the directory fsynced, so a reader (psrec serve polling for a new model)
 * sees either the old file or the complete new one, never a torn one. */
#ifndef PSREC_SERVE_PSM_WRITE_H
#define PSREC_SERVE_PSM_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* One table to write: ids strictly ascending, rows n_rows * dim floats. */
typedef struct {
    const char *name;          /* 1..63 bytes */
    int dim;                   /* 1..PSM_MAX_DIM */
    size_t n_rows;
    const uint64_t *ids;
    const float *rows;
} sv_psm_table;

/* What goes into the file header. */
typedef struct {
    const char *model;         /* "mf" */
    const char *formula;       /* the scoring formula as text ("" if none) */
    double global_mean;
    float clip_lo, clip_hi;
    size_t n_tables;
    const sv_psm_table *tables;
} sv_psm_model;

/* Writes m to path (temporary name, fsync, rename, fsync directory).
 * CM_EINVAL for a model the format cannot hold (ids out of order, bad
 * names or dims), CM_EIO naming the file on a failed write. On failure
 * the temporary file is removed and path is untouched. */
int sv_psm_write(const char *path, const sv_psm_model *m, cm_error *err);

#endif
