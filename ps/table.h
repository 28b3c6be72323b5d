/* table: one sharded parameter table on a server (key -> row).
 *
 * Rows live in a slab of 64-byte-aligned slots: dim weights then optimizer
 * state. A row is created on first touch with a deterministic
 * initialisation seeded by (table seed, key), so values never depend on
 * the order in which keys arrive. One owning thread. */
#ifndef PSREC_PS_TABLE_H
#define PSREC_PS_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "ps/optim.h"

typedef struct ps_table ps_table;

typedef struct {
    int dim;             /* weights per row */
    int zero_prefix;     /* leading weights initialised to 0 (e.g. a bias) */
    float init_std;      /* the others ~ N(0, init_std^2) from (seed, key) */
    uint64_t seed;       /* table seed */
    ps_optim optim;
} ps_table_params;

ps_table *ps_table_new(const ps_table_params *p, cm_error *err);
void ps_table_destroy(ps_table **pt);

/* Copies the weights of each key's row to out[i*dim ..]. create=1 makes
 * missing rows; create=0 reads them as zeros and counts them in *n_missing
 * (may be NULL). CM_ENOMEM if a row cannot be made. */
int ps_table_pull(ps_table *t, const uint64_t *keys, size_t n, float *out, int create,
                  size_t *n_missing);

/* Applies grads[i*dim ..] to each key's row with the table's optimizer,
 * creating missing rows first. */
int ps_table_push(ps_table *t, const uint64_t *keys, size_t n, const float *grads);

/* Writes the deterministic initial weights of `key` to out[0..dim). */
void ps_table_init_row(const ps_table_params *p, uint64_t key, float *out);

int ps_table_dim(const ps_table *t);
size_t ps_table_rows(const ps_table *t);
/* Bytes held: slab, state and index. */
size_t ps_table_bytes(const ps_table *t);

/* The row of `key` (dim weights then optimizer state), or NULL if it does
 * not exist. 64-byte aligned; valid until the table next creates a row or
 * is destroyed (rows never move today, but do not rely on it). */
const float *ps_table_find(const ps_table *t, uint64_t key);

/* Iterates the rows (checkpoints, stats): start with *pos = 0; returns 1
 * and fills key and row while rows remain, 0 at the end. Order is
 * unspecified; the table must not change during the iteration. */
int ps_table_next(const ps_table *t, size_t *pos, uint64_t *key, const float **row);

/* Floats a row stores: the weights, then the optimizer state. */
int ps_table_row_floats(const ps_table *t);

/* Whole rows (weights then optimizer state, row_floats floats each) of
 * keys, made if missing: what a worker takes to train a block locally. */
int ps_table_pull_full(ps_table *t, const uint64_t *keys, size_t n, float *out);

/* Adds deltas (row_floats per key) to whole rows, made if missing: what a
 * worker sends back after training a block locally. Several workers'
 * deltas to one row add up. */
int ps_table_push_delta(ps_table *t, const uint64_t *keys, size_t n, const float *deltas);

/* Sets key's whole row (weights and optimizer state, row_floats floats) as
 * a checkpoint stored it, creating the row if missing. 0 or CM_ENOMEM. */
int ps_table_load_row(ps_table *t, uint64_t key, const float *row);

#endif
