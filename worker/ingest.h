/* ingest: the rows of a ratings file that one worker owns.
 *
 * Two ways, same result (the owner's rows in file order):
 *   scan      every worker reads the whole file and keeps the rows whose
 *             user it owns (cm_worker_of). Any format; --local runs.
 *   exchange  under MPI with a .psrd input and more than one worker:
 *             worker w reads only rows [w n / W, (w+1) n / W) of the mapped
 *             file, and one all-to-all among the workers
 *             (cm_boot_exchange) sends each row to the worker that owns its
 *             user. Each process touches 1/W of the file and hashes 1/W of
 *             the users. Ranges are in worker order, so the received rows
 *             are in file order and the shard equals the scan's bit for
 *             bit. Worker 0 alone verifies the column checksums.
 * Exchange is collective: every worker calls it, and a failure on any one
 * (an unreadable file, a checksum mismatch) fails all of them with that
 * worker's message, instead of leaving the others waiting. */
#ifndef PSREC_WORKER_INGEST_H
#define PSREC_WORKER_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "common/bootstrap.h"
#include "common/dataset.h"
#include "common/err.h"

typedef struct {
    cm_boot *boot;        /* NULL, or a boot without MPI: scan */
    int first_rank;       /* MPI rank of worker 0 (workers are consecutive) */
    uint32_t index;       /* this worker, 0 .. n_workers-1 */
    uint32_t n_workers;
    int force_scan;       /* 1: scan even where exchange is possible */
} wk_ingest;

/* 1 when wk_ingest_ratings would exchange for this file. */
int wk_ingest_exchanges(const wk_ingest *in, const char *path);

/* Loads this worker's rows of path into *out (owned). opts as for
 * cm_ratings_load (log_bad_lines is the caller's: only one worker should
 * log). *noise_floor and *bad_lines describe the whole file. */
int wk_ingest_ratings(const wk_ingest *in, const char *path, const cm_load_opts *opts,
                      cm_ratings *out, double *noise_floor, size_t *bad_lines,
                      cm_error *err);

#endif
