/* atomic: a file that appears whole under its final name or not at all.
 *
 * Bytes go to a temporary name next to the final one; commit fsyncs,
 * closes, renames over the final name and fsyncs the directory, so a
 * reader sees the old file or the complete new one, never a torn one.
 * Abort (or a failed commit) removes the temporary file.
 *
 * Temporary names are "<path>.tmp.<pid>", or with CM_ATOMIC_UNIQUE
 * "<path>.tmp.<pid>.<counter>" (unique across the threads of a process;
 * common/ckpt.c sweeps stale ones of exactly that shape). */
#ifndef PSREC_COMMON_ATOMIC_H
#define PSREC_COMMON_ATOMIC_H

#include <stddef.h>

#include "common/err.h"

/* Flags for cm_atomic_open. */
enum {
    CM_ATOMIC_UNIQUE = 1 << 0,   /* add a per-process counter to the name */
    CM_ATOMIC_NOTFOUND = 1 << 1, /* a missing directory is CM_ENOTFOUND, not CM_EIO */
};

/* A plain struct: the caller writes to fd directly. */
typedef struct {
    char *path;  /* final name (own copy) */
    char *tmp;   /* temporary name; NULL once committed or aborted */
    int fd;      /* the temporary file, open for writing; -1 when closed */
} cm_atomic;

/* A released cm_atomic, safe to abort. */
#define CM_ATOMIC_INIT {NULL, NULL, -1}

/* Creates the temporary file for path. 0, CM_ENOMEM, or CM_EIO
 * ("<tmp>: <strerror>"); on failure a is left closed (abort is a no-op). */
int cm_atomic_open(cm_atomic *a, const char *path, int flags, cm_error *err);

/* fsync, close, rename onto the final name, fsync the directory. On
 * failure the temporary file is removed. Either way a is released. */
int cm_atomic_commit(cm_atomic *a, cm_error *err);

/* Closes and removes the temporary file and releases a; no-op when a was
 * never opened or is already released. */
void cm_atomic_abort(cm_atomic *a);

/* Best effort: fsyncs the directory holding path ("." when it has no
 * slash), so a rename or creation in it is durable. */
void cm_atomic_fsync_parent(const char *path);

#endif
