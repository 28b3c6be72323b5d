/* plan: how much memory a job needs, per server and per worker process.
 *
 * The estimate reads the training (and test) data once to count what
 * sizes the tables and shards: ratings, distinct users and items (mf), or
 * examples, feature occurrences and distinct feature keys (fm). Then it
 * applies the layouts the code uses: a server row slot is dim weights +
 * optimizer state rounded up to 16 floats, in chunked slabs, indexed by a
 * cm_hashmap of 16-byte entries at load <= 0.7; a worker holds its shard
 * (and, while loading, the whole file twice), its minibatch buffers and,
 * with the blocks schedule, its user rows twice, one block's item rows
 * twice and its ratings twice. `psrec plan` prints it; `psrec train`
 * refuses a job whose largest process does not fit. docs/planner.md. */
#ifndef PSREC_CLUSTER_PLAN_H
#define PSREC_CLUSTER_PLAN_H

#include <stdint.h>
#include <stdio.h>

#include "common/config.h"
#include "common/err.h"

#define CL_PLAN_MAX_ITEMS 16

/* One line of a role's breakdown: bytes per process. */
typedef struct {
    const char *name;   /* static text ("rows: weights") */
    uint64_t bytes;
    int loading;        /* 1: held only while the input is loaded */
} cl_plan_item;

/* The bytes one process of a role needs. */
typedef struct {
    const char *role;   /* "server", "worker" */
    int count;          /* processes of this role */
    size_t n_items;
    cl_plan_item items[CL_PLAN_MAX_ITEMS];
    uint64_t loading;   /* peak while loading the input */
    uint64_t training;  /* peak while training */
    uint64_t total;     /* max(loading, training): what must fit */
} cl_plan_role;

/* What the data holds, as counted by the estimate. */
typedef struct {
    uint64_t n_train;        /* training rows (ratings or examples) */
    uint64_t n_test;         /* test rows; 0 without a test file */
    uint64_t n_users;        /* mf: distinct users in train */
    uint64_t n_items;        /* mf: distinct items in train */
    uint64_t n_features;     /* fm: distinct feature keys (+1 for the bias) */
    uint64_t nnz;            /* fm: feature occurrences in train */
    uint64_t w_train;        /* the largest worker's training rows */
    uint64_t w_test;         /* the largest worker's test rows */
    uint64_t w_nnz;          /* fm: the largest worker's feature occurrences */
    uint64_t w_users;        /* blocks: the largest worker's distinct users */
    uint64_t block_items;    /* blocks: distinct items of the largest block */
    uint64_t train_file_bytes; /* what loading the train file holds (heap or mapping) */
    int sketched;            /* 1: users and items estimated (HyperLogLog, +2%) */
} cl_plan_data;

typedef struct {
    int n_servers, n_workers;
    int local;               /* 1: every role is a thread of one process */
    int dim;                 /* job dim (latent factors) */
    int optimizer;           /* cm_optimizer */
    int row_floats;          /* weights + state floats of a row (dim + 1 weights) */
    int stride_floats;       /* server row slot (multiple of 16) */
    cl_plan_data data;
    cl_plan_role server;
    cl_plan_role worker;
    uint64_t process_total;  /* --local: all roles together; else the larger role */
    uint64_t avail;          /* bytes one process may use; 0: unknown */
    char avail_how[160];     /* where avail comes from */
} cl_plan;

/* Counts the job's data and fills *out for n_servers servers and
 * n_workers workers (job->local decides whether they share a process);
 * out->avail is cl_plan_available() with every rank on this host.
 * Reads the train and test files once (about as long as loading them);
 * counts distinct keys with a hash set (16 bytes / 0.7 per key), or for
 * ratings inputs over CL_PLAN_EXACT_ROWS rows with HyperLogLog sketches.
 * 0, or a CM_E* code with the reason in err. */
int cl_plan_estimate(const cm_job *job, int n_servers, int n_workers, cl_plan *out,
                     cm_error *err);

/* Ratings inputs with more rows than this have their distinct users and
 * items estimated by sketches (common/hll.h) instead of counted. */
#define CL_PLAN_EXACT_ROWS 4000000ULL

/* cl_plan_estimate with the exact-count limit given (0: always sketch). */
int cl_plan_estimate_ex(const cm_job *job, int n_servers, int n_workers, uint64_t exact_rows,
                        cl_plan *out, cm_error *err);

/* Prints the table (role, count, each item per process, totals). */
void cl_plan_print(FILE *f, const cl_plan *p);

/* Bytes one process may use: job->memory_limit when set, else
 * MemAvailable (/proc/meminfo) / ranks_on_host. 0 when unknown. *how gets
 * a short text saying where the figure comes from. */
uint64_t cl_plan_available(const cm_job *job, int ranks_on_host, char *how, size_t how_n);

/* 0 when every process fits in p->avail bytes (or avail is 0: unknown),
 * else CM_ENOMEM with a message naming the role that does not fit and how
 * to shrink the job. */
int cl_plan_check(const cl_plan *p, cm_error *err);

/* Writes "1.5 GiB"-style text of n bytes to buf; returns buf. */
const char *cl_plan_bytes_text(uint64_t n, char *buf, size_t size);

#endif
