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

#endif
