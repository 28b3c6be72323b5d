/* mcmc: `train --model fm --method mcmc`, the Bayesian FM of
 * worker/mcmc.h run to the end in this process (docs/mcmc.md). */
#ifndef PSREC_CLUSTER_MCMC_H
#define PSREC_CLUSTER_MCMC_H

#include <stdio.h>

#include "common/config.h"
#include "common/err.h"
#include "scheduler/scheduler.h"

/* Loads the job's training and test data, draws `epochs` sweeps, and after
 * each reports the test metric of the predictions averaged over the sweeps
 * so far (epoch lines on out, the metrics file); fills *res as a training
 * job's. 0, or a CM_E* code with *err. */
int cl_run_mcmc(const cm_job *job, FILE *out, sch_result *res, cm_error *err);

/* The job's data as loaded for the sampler (cl_method_settle loads them
 * to see the task, and hands them on). */
typedef struct cl_mcmc_data cl_mcmc_data;
void cl_mcmc_data_free(cl_mcmc_data **data);

/* cl_run_mcmc from data already loaded (taken over, freed; NULL: load). */
int cl_run_mcmc_loaded(const cm_job *job, cl_mcmc_data *data, FILE *out, sch_result *res,
                       cm_error *err);

/* The most training lines for which method = auto picks mcmc: a sweep
 * costs about what an sgd epoch does, and mcmc wants 100 of them in one
 * process, so beyond this the servers' sgd is the faster way. */
#define CL_AUTO_MCMC_MAX_LINES 1000000

/* Settles method = auto (common/config.h) for a job about to run, with
 * `local` set for --local (one process; under mpirun the job is the
 * cluster's and trains with sgd). mcmc where all of these hold, sgd
 * otherwise: model mf or fm; a regression task (fm: set, or its training
 * labels not all -1, 0 or 1); at most CL_AUTO_MCMC_MAX_LINES training
 * lines of text; no key set that only sgd reads (lr, l2, optimizer,
 * validation, checkpoint_dir, workers, ...). Writes the reason to why.
 * Any other method is left as it is. Reading the data may fail: the job
 * then gets sgd, whose start reports the problem with the file. The train
 * command settles auto before it starts a job; a job started with auto
 * unsettled (cl_run_local, cl_run_mpi) trains with sgd. Where it picks
 * mcmc and read the data to do so (fm, task auto), *data (when data is
 * not NULL) gets them for cl_run_mcmc_loaded, else NULL. */
void cl_method_settle(cm_job *job, int local, char *why, size_t n, cl_mcmc_data **data);

#endif
