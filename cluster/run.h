/* run: role dispatch for `psrec train`, under MPI or as local threads.
 *
 * Rank 0 is the scheduler, ranks 1..S the servers, the rest workers. Each
 * rank binds what it serves, the endpoints are exchanged through the
 * bootstrap, then each runs its role to the end. The same role code runs
 * under mpirun (one process per rank, tcp://) and with --local (one
 * thread per rank, inproc://). */
#ifndef PSREC_CLUSTER_RUN_H
#define PSREC_CLUSTER_RUN_H

#include <stdio.h>

#include "common/config.h"
#include "common/err.h"
#include "scheduler/scheduler.h"

/* Runs the whole job in this process: 1 scheduler, job->servers servers
 * and job->workers workers as threads. Epoch lines go to `out`; *res gets
 * the scheduler's figures. */
int cl_run_local(const cm_job *job, FILE *out, sch_result *res, cm_error *err);

/* Whether a job refits (the refit key, docs/validation.md): a carved
 * validation set (no validation file), sgd with fixed regularization, no
 * checkpoints kept or resumed, a test file, not implicit. */
int cl_refits(const cm_job *job);

/* cl_run_local, and where the job refits, again on every training example
 * (the carve too) for the epoch count the first run chose, without
 * validation: the figures in *res and the final line are the refit's (the
 * validation run's final line is renamed "validation run:"), best_epoch
 * and n_valid the first run's; the metrics file gets both runs' records,
 * the refit's marked "refit": 1. What `psrec train --local` runs. */
int cl_run_local_refit(const cm_job *job, FILE *out, sch_result *res, cm_error *err);

/* The memory check of `train` (1: the job does not fit; it has said why). */
typedef int (*cl_refuse_fn)(const cm_job *job);

/* Runs this process's rank of an mpirun job (MPI must not be initialised
 * yet). With refuses (rank 0), the memory check runs on a thread while MPI
 * starts, and a job it refuses stops every rank before any input is read
 * (exit status 2). Returns the process exit status. */
int cl_run_mpi(const cm_job *job, int *argc, char ***argv, cl_refuse_fn refuses);

/* Checks before any rank starts: roles add up, input files readable. */
int cl_preflight(const cm_job *job, int n_ranks, cm_error *err);

#endif
