/* table: one sharded parameter table on a server (key -> row).
 *
 * Rows live in a slab of 64-byte-aligned slots: dim weights then optimizer
 * state. A row is created on first touch with a deterministic
 * initialisation seeded by (table seed, key), so values never depend on
 * the order in which keys arrive. What a table holds is described by a
 * cm_table_spec (common/table_spec.h: dim, initialisation, optimizer,
 * admission, eviction, sharing). One owning thread.
 *
 * Optional, off by default (then nothing here costs anything):
 * - admission (min_count > 1): a key gets a row only at its min_count-th
 *   push; before that pulls read it as zeros and its gradients are dropped;
 * - eviction (ttl > 0 or max_rows > 0): rows untouched for ttl epochs go
 *   at ps_table_evict(); beyond max_rows the least recently used go
 *   (sampled LRU), also when a new row would pass max_rows.
 * docs/optimizers.md has the exact rules. */
#ifndef PSREC_PS_TABLE_H
#define PSREC_PS_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/table_spec.h"

typedef struct ps_table ps_table;

/* What ps_table_stats reports. */
typedef struct {
    size_t rows;         /* rows held now (admitted - evicted) */
    size_t bytes;        /* ps_table_bytes() */
    uint64_t evicted;    /* rows evicted since the table was made */
    uint64_t admitted;   /* rows made since the table was made (loads included) */
    size_t pending;      /* keys seen but not admitted yet (counters held) */
    uint64_t dropped;    /* gradients (one per key per push) dropped for keys
                          * not admitted yet */
} ps_table_counters;

ps_table *ps_table_new(const cm_table_spec *p, cm_error *err);
void ps_table_destroy(ps_table **pt);

/* Copies the weights of each key's row to out[i*dim ..]. create=1 makes
 * missing rows; create=0 reads them as zeros and counts them in *n_missing
 * (may be NULL). Keys not admitted yet read as zeros, are not made, and
 * count as missing too. CM_ENOMEM if a row cannot be made. */
int ps_table_pull(ps_table *t, const uint64_t *keys, size_t n, float *out, int create,
                  size_t *n_missing);

/* Applies grads[i*dim ..] to each key's row with the table's optimizer,
 * creating missing rows first. With admission on, a push counts one
 * sighting of each missing key; the gradient of a key below min_count is
 * dropped, the one that reaches it makes the row and is applied. */
int ps_table_push(ps_table *t, const uint64_t *keys, size_t n, const float *grads);

/* Kept keys (a push that names an earlier pull instead of sending keys):
 * ps_table_pull_keep is a creating pull that also leaves each key's row in
 * kept[i]; ps_table_push_kept applies gradients to such rows without any
 * lookup. Rows never move and, without eviction, never change key, so the
 * pointers stay valid for the table's life; tables with admission or
 * eviction refuse both (CM_ENOTSUP) and take keys every time. */
int ps_table_pull_keep(ps_table *t, const uint64_t *keys, size_t n, float *out, float **kept);
int ps_table_push_kept(ps_table *t, float *const *rows, size_t n, const float *grads);

int ps_table_dim(const ps_table *t);
size_t ps_table_rows(const ps_table *t);
/* Bytes held: slab, state, index, and the admission and eviction
 * bookkeeping when on. */
size_t ps_table_bytes(const ps_table *t);

/* What a table of spec s allocates while it holds `rows` rows and
 * `pending` admission counters, by part; total is what ps_table_bytes()
 * then reports. The memory planner (cluster/) composes these. */
typedef struct {
    size_t weights;  /* rows x dim floats */
    size_t state;    /* rows x optimizer state floats */
    size_t pad;      /* slot padding and the unused slots of the last chunk */
    size_t index;    /* key -> row hash map */
    size_t meta;     /* eviction records (eviction on), a slot each */
    size_t pending;  /* admission counters (admission on) */
    size_t fixed;    /* the table's own struct and chunk lists */
    size_t total;    /* the sum */
} ps_table_footprint;

void ps_table_footprint_of(const cm_table_spec *s, size_t rows, size_t pending,
                           ps_table_footprint *out);

/* The most admission counters a table of spec s keeps (max_pending, or its
 * default). */
size_t ps_table_max_pending(const cm_table_spec *s);

/* Floats from one row's slot to the next for spec s: row_floats rounded up
 * to a multiple of 16 (64 bytes). */
size_t ps_table_stride(const cm_table_spec *s);

/* Fills *out with the table's counters (see ps_table_counters). */
void ps_table_stats(const ps_table *t, ps_table_counters *out);

/* Sets the current epoch: rows touched from now on are stamped with it.
 * The server calls it as each epoch starts. */
void ps_table_set_epoch(ps_table *t, uint32_t epoch);

/* Evicts the rows last touched in an epoch e with e + ttl < the current
 * epoch (ttl > 0), then least recently used rows while more than max_rows
 * remain (max_rows > 0). Returns how many rows went; their slots are
 * reused by later rows. 0 when eviction is off. */
size_t ps_table_evict(ps_table *t);

/* The row of `key` (dim weights then optimizer state), or NULL if it does
 * not exist. 64-byte aligned; valid until the table next creates or
 * evicts a row or is destroyed (rows never move today, but an evicted
 * row's slot is reused). Does not count as a touch. */
const float *ps_table_find(const ps_table *t, uint64_t key);

/* Iterates the rows (checkpoints, stats): start with *pos = 0; returns 1
 * and fills key and row while rows remain, 0 at the end. Order is
 * unspecified; the table must not change during the iteration. */
int ps_table_next(const ps_table *t, size_t *pos, uint64_t *key, const float **row);

/* Floats a row stores: the weights, then the optimizer state. */
int ps_table_row_floats(const ps_table *t);

/* Whole rows (weights then optimizer state, row_floats floats each) of
 * keys, made if missing: what a worker takes to train a block locally.
 * A key not admitted yet reads as zero weights with a fresh optimizer
 * state, and is not made. */
int ps_table_pull_full(ps_table *t, const uint64_t *keys, size_t n, float *out);

/* Adds deltas (row_floats per key) to whole rows, made if missing: what a
 * worker sends back after training a block locally. Several workers'
 * deltas to one row add up. Admission counts and drops as for a push. */
int ps_table_push_delta(ps_table *t, const uint64_t *keys, size_t n, const float *deltas);

/* Sets whole rows (row_floats per key), made if missing, to the values
 * given: what a worker sends back for rows that only it trains (the
 * blocks schedule's user rows), so a row the server never held costs no
 * initialisation. Admission does not apply, as for a loaded row. 0 or
 * CM_ENOMEM. */
int ps_table_push_rows(ps_table *t, const uint64_t *keys, size_t n, const float *rows);

/* Sets key's whole row (weights and optimizer state, row_floats floats) as
 * a checkpoint stored it, creating the row if missing (admission does not
 * apply: a stored row was admitted). 0 or CM_ENOMEM. */
int ps_table_load_row(ps_table *t, uint64_t key, const float *row);

/* A shared table's memory file, laid out as common/table_spec.h says: row
 * index i lives at byte header + i * stride * 4 of it; the file starts
 * with a cm_share_head {CM_SHARE_MAGIC, token}. */
typedef struct {
    int fd;              /* the file, open in the table's process */
    uint64_t token;      /* random, never 0 */
    size_t header;       /* bytes before row 0 (one page) */
    size_t stride;       /* floats from one row to the next */
    size_t bytes;        /* the file's size now: header + every chunk */
} ps_table_share_info;

/* 0 and *out when the table's rows are shared, else CM_ENOTSUP. */
int ps_table_share(const ps_table *t, ps_table_share_info *out);

/* Row indexes of keys[0..n) for a shared table: the caller reaches them
 * through the file. create: rows are made (initialised) when missing;
 * else a missing key's index is UINT64_MAX and nothing is made. 0,
 * CM_ENOTSUP (not shared) or CM_ENOMEM (the rows before the failing key
 * stand). */
int ps_table_place(ps_table *t, const uint64_t *keys, size_t n, int create, uint64_t *idx);

/* Confinement: from now on the table makes no row, and reads no missing
 * row, of a key whose slot (cm_slot_of(key, table_id, n_slots)) slot_map
 * gives to a server other than owner: the call that names one fails with
 * CM_EPERM (the rows of the keys before it stand, as after CM_ENOMEM).
 * Only keys without a row are checked, where the table hashes them
 * anyway: the rows it holds were made under the map, or before it was
 * set. slot_map is borrowed: it must stay valid until the next call or
 * the table's end; NULL (or n_slots 0) turns confinement off. */
void ps_table_confine(ps_table *t, const uint32_t *slot_map, uint32_t n_slots,
                      uint32_t table_id, int owner);

#endif
