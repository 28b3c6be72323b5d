/* table_spec: the row contract every role shares.
 *
 * What a parameter table is, as plain data: the weights per row, how a
 * fresh row's weights are made, the optimizer whose state follows them,
 * admission and eviction. A model fills one spec per table (worker/models);
 * a server builds its table from it (ps/table.c); a worker that trains
 * rows in place makes a fresh row with the same function the server uses,
 * so both agree bit for bit without either calling the other's code.
 *
 * Initial weights are declarative, never a function pointer: a key's row
 * depends on (seed, key) only, through one of two rules:
 * - sparse rows (dense.n == 0): zero_prefix zeros, then N(0, init_std^2)
 *   from a stream seeded by (seed, key);
 * - dense rows (dense.n > 0, an MLP's weights cut into rows): row `key`
 *   is floats [key*dim, (key+1)*dim) of one flat array in which each
 *   segment holds std * N(0, 1) draws taken in order from one stream
 *   seeded by `seed`; floats outside every segment are 0.
 *
 * The shared row file (a server's table that co-located workers map, see
 * ps_table_share) has its layout here too: a header page starting with
 * {CM_SHARE_MAGIC, token}, then row index i at byte
 * CM_SHARE_HEADER + i * stride * 4. */
#ifndef PSREC_COMMON_TABLE_SPEC_H
#define PSREC_COMMON_TABLE_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/optim.h"

/* Segments a dense initialisation may have (an MLP of 4 hidden layers has
 * 5 weight matrices; room for more). */
#define CM_DENSE_MAX_SEGS 16

/* A run of the flat array drawn from the normal stream. */
typedef struct {
    uint64_t off;   /* first float */
    uint64_t n;     /* floats */
    double std;     /* each is (float)(std * N(0, 1)) */
} cm_dense_seg;

/* Segments in increasing, non-overlapping order of off. */
typedef struct {
    int n;                               /* 0: not a dense table */
    cm_dense_seg seg[CM_DENSE_MAX_SEGS];
} cm_dense_init;

typedef struct {
    int dim;             /* weights per row */
    int zero_prefix;     /* sparse rows: leading weights initialised to 0 (a bias) */
    float init_std;      /* sparse rows: the others ~ N(0, init_std^2) from (seed, key) */
    uint64_t seed;       /* table seed */
    cm_optim optim;
    uint32_t min_count;  /* pushes before a key gets a row; 0 or 1: at once */
    uint32_t ttl;        /* evict rows untouched for this many epochs; 0: never */
    size_t max_rows;     /* rows kept, least recently used evicted; 0: unbounded */
    size_t max_pending;  /* admission counters kept before all are cleared;
                          * 0: 1 << 20 */
    cm_dense_init dense; /* dense rows; see the banner */
    /* Rows in a memory file (memfd) that other processes on this host may
     * map (ps_table_share, ps_table_place): a co-located worker then reads
     * and writes rows it alone trains without messages. Ignored (rows stay
     * private) with admission or eviction on, or where the host has no
     * memfd. */
    int shared;
} cm_table_spec;

/* Largest dim a spec may have (guards size arithmetic). */
#define CM_TABLE_MAX_DIM (1 << 20)

/* 0 if s is usable, else CM_EINVAL with the reason in err (may be NULL):
 * dim outside [1, CM_TABLE_MAX_DIM], zero_prefix outside [0, dim],
 * init_std negative or not finite, dense segments out of order,
 * overlapping or with a bad std, or an optimizer cm_optim_check refuses. */
int cm_table_spec_check(const cm_table_spec *s, cm_error *err);

/* Floats a row carries: dim weights, then the optimizer's state. */
int cm_table_spec_row_floats(const cm_table_spec *s);

/* Writes the initial weights of key's row to out[0..dim). */
void cm_table_spec_init_row(const cm_table_spec *s, uint64_t key, float *out);

/* Writes a fresh row of key, out[0..row_floats): the initial weights, then
 * the optimizer's initial state (cm_optim_init_state). What a server
 * stores when it makes a row, and what a worker that holds a row the
 * server never made starts from. */
void cm_table_spec_fresh_row(const cm_table_spec *s, uint64_t key, float *out);

/* Floats [lo, lo + n) of d's flat array, drawn from the stream seeded by
 * `seed` (0 outside every segment): dense rows and whole arrays alike. */
void cm_dense_init_fill(const cm_dense_init *d, uint64_t seed, uint64_t lo, size_t n,
                        float *out);

/* ---------------------------------------------------------------------------
 * The shared row file
 * ------------------------------------------------------------------------- */

#define CM_SHARE_MAGIC 0x6d68732d63657270ULL /* "prec-shm" */
#define CM_SHARE_HEADER ((size_t)4096)       /* bytes before row 0: one page */

/* The file's first bytes (host byte order: only processes on the host
 * that made the file read it). token is random and never 0; a process
 * that opens the file by (pid, fd, the PLACE reply's token) checks both to
 * know it found the right one. */
typedef struct {
    uint64_t magic;  /* CM_SHARE_MAGIC */
    uint64_t token;
} cm_share_head;

#endif
