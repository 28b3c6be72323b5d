/* blocks: the worker's side of the blocks schedule (DSGD).
 *
 * Items are split into B = kW blocks for W workers (k per worker). In
 * round s of an epoch (B rounds) each worker trains a different block (the
 * DSGD rule, wk_dsgd_block, picks it): it takes the block's item
 * rows whole (weights and optimizer state), runs plain per-rating SGD over
 * its own ratings of that block with its own user rows, which it holds for
 * the whole run, then pushes back the change of each item row. No two
 * workers hold the same block at once, so the updates never conflict, and
 * the messages are per block, not per minibatch. From k = 2 on the block a
 * worker trains next is nobody's during this round, and its rows are
 * pulled while this block trains, once its last pushes are acknowledged
 * (the gate of wk_block_pass). User rows go back to the servers before
 * checkpoints (wk_blocks_writeback). */
#ifndef PSREC_WORKER_BLOCKS_H
#define PSREC_WORKER_BLOCKS_H

#include <stddef.h>
#include <stdint.h>

#include "common/dataset.h"
#include "common/err.h"
#include "common/optim.h"
#include "common/table_spec.h"
#include "worker/kv.h"
#include "worker/models/model.h"

typedef struct wk_blocks wk_blocks;

/* ---- the DSGD rule: which block a worker trains in which round ---------
 *
 * Worker w takes place p(w) and trains, in round r, block
 * q((k p(w) + r) mod kW) for k blocks per worker, where p permutes the
 * workers and q the blocks within each residue class mod k, both drawn
 * afresh each epoch from (seed, epoch): every worker computes the same,
 * each round's blocks are distinct and all in class r mod k (so from k = 2
 * on the next round's blocks are idle during this one), and the order in
 * which a worker meets the blocks changes from epoch to epoch. */
typedef struct wk_dsgd wk_dsgd;

/* For n_workers workers with per_worker blocks each (both >= 1) and the
 * job's seed. NULL when out of memory. */
wk_dsgd *wk_dsgd_new(uint32_t n_workers, uint32_t per_worker, uint64_t seed);
void wk_dsgd_destroy(wk_dsgd **pd);

/* The block worker (0..n_workers) trains in round (0..k n_workers) of
 * epoch. Draws the epoch's permutations when the epoch changes. */
uint32_t wk_dsgd_block(wk_dsgd *d, uint32_t worker, uint32_t epoch, uint32_t round);

/* Block of an item among n_blocks by a fixed hash (independent of slots):
 * for items no balanced map places. */
uint32_t wk_block_of(uint64_t item, uint32_t n_blocks);

/* Every worker's training items (sorted keys) with their ratings summed
 * over all workers, as the scheduler's PLAN carries them. */
typedef struct {
    const uint64_t *keys;
    const float *count;
    size_t n;
} wk_block_map;

/* Places the map's items in n_blocks blocks so that the blocks' ratings
 * are even: largest count first, each into the block with the fewest
 * ratings so far (ties: lower key, lower block). Writes block[i] for
 * keys[i]. Deterministic, so every worker computes the same placement.
 * *before and *after (may be NULL): the largest block's ratings over the
 * mean, placed by hash and placed here. 0 or CM_ENOMEM. */
int wk_blocks_balance(const wk_block_map *map, uint32_t n_blocks, uint32_t *block,
                      double *before, double *after);

/* A column's dense numbering as wk_blocks_index_keys makes it: loc[j] for
 * each rating, the n sorted distinct keys in uniq. */
typedef struct {
    const uint32_t *loc;
    const uint64_t *uniq;
    size_t n;
} wk_key_index;

/* Indexes the shard's ratings by block. row_floats[t]: floats per row of
 * table t (0 users, 1 items). The ratings are copied. With user_init (the
 * user table's parameters; NULL when resuming, where the servers hold the
 * rows), the user rows start from the deterministic initialisation the
 * servers would give them instead of being pulled: the first epoch then
 * moves each user row once (the write-back), not twice. With map (may be
 * NULL or empty) items are placed by wk_blocks_balance, those it lacks by
 * wk_block_of. items (may be NULL): the item column's numbering when the
 * caller has it already (borrowed); else it is made here. */
wk_blocks *wk_blocks_new(const cm_ratings *train, uint32_t n_blocks, int dim,
                         const int *row_floats, const cm_table_spec *user_init,
                         const wk_block_map *map, const wk_key_index *items,
                         cm_error *err);
void wk_blocks_destroy(wk_blocks **pb);

/* Dense local numbering of keys[0..n): writes the sorted distinct keys to
 * a new array *uniq (n_uniq of them; caller frees) and the rank of each
 * key in it to loc[j]. Keys spanning a range of at most 4n (or 2^20) use
 * an array over the range, others a hash map with one lookup per run of
 * equal keys. 0, CM_ENOMEM or CM_EINVAL (n >= 2^32 - 1); *uniq NULL on
 * failure. */
int wk_blocks_index_keys(const uint64_t *keys, size_t n, uint32_t *loc, uint64_t **uniq,
                         size_t *n_uniq);

/* Floats between held rows of row_floats floats: whole 64-byte lines, so
 * that every row starts on a line of the 64-byte aligned row arrays. */
size_t wk_blocks_stride(int row_floats);

/* Rows one pull or push of whole rows carries at most (messages stay
 * bounded); for memory plans. */
size_t wk_blocks_msg_rows(void);

/* Called now and then during training with examples done in the block. */
typedef int (*wk_progress_fn)(void *arg, size_t done);

/* Whether the next block's rows may be pulled yet: 1 yes, 0 not yet, < 0
 * an error. With wait set it returns only once the answer is 1 (or on an
 * error). */
typedef int (*wk_gate_fn)(void *arg, int wait);

/* One pass over a block. */
typedef struct {
    uint32_t block;          /* the block to train */
    uint32_t next;           /* the block to pull meanwhile; UINT32_MAX: none */
    uint64_t seed;           /* this pass's order */
    wk_progress_fn progress; /* NULL, or called every 256k ratings */
    wk_gate_fn gate;         /* NULL: pull `next` at once; else when it opens
                              * (asked at the same points, also once the
                              * pull is out, and with wait set after the
                              * last rating if still closed) */
    void *arg;               /* for progress and gate */
    int async;               /* push without waiting for the acks, and leave
                              * the pull of `next` in flight */
} wk_block_pass;

/* Trains pass->block once: takes its item rows (from the prefetch the
 * previous pass started when that was this block, else pulled now; the
 * first time also the user rows), starts the pull of pass->next (it must
 * be a block nobody trains until this worker's next pass, and whose last
 * pushes have been acknowledged when the gate opens), runs the model's
 * local SGD over its groups of ratings in an order drawn from pass->seed
 * (group order and each group's starting point; within a group the order
 * is fixed when the block is built), and pushes the item deltas. Unless
 * async it then waits for the prefetch and the acks, so that nothing is in
 * flight when it returns. Adds the squared errors and the count of ratings
 * to *sq and *n. */
int wk_blocks_train(wk_blocks *b, wk_kv *kv, const wk_model_ops *model,
                    const wk_model_ctx *ctx, const cm_optim *opt, const wk_block_pass *pass,
                    double *sq, size_t *n, cm_error *err);

/* Sends every held user row, whole (the servers replace their copy; only
 * this worker trains these rows), unless none has been trained or made
 * since the last write-back. */
int wk_blocks_writeback(wk_blocks *b, wk_kv *kv, cm_error *err);

/* The held row of `user` (weights, then optimizer state), or NULL when the
 * worker holds no row for it: not one of its training users, or no user
 * rows held yet (before the first block of a resumed run). */
const float *wk_blocks_user_row(const wk_blocks *b, uint64_t user);

/* Where each of users[0..n) (ascending) is among the users whose rows the
 * worker holds or will hold: at[k] for wk_blocks_user_row_at, UINT32_MAX
 * for one it has no row for. One walk along both lists when n is large,
 * else a binary search per user. */
void wk_blocks_user_places(const wk_blocks *b, const uint64_t *users, size_t n, uint32_t *at);

/* The held row at a place wk_blocks_user_places gave, or NULL (no place,
 * or no user rows held yet). */
const float *wk_blocks_user_row_at(const wk_blocks *b, uint32_t at);

/* The largest block's ratings over the mean, all workers together, placed
 * by hash and as placed (wk_blocks_balance); both -1 without a map. */
void wk_blocks_spread(const wk_blocks *b, double *before, double *after);

/* 1 once the item rows are reached in the servers' memory (workers on the
 * servers' host, shared tables; see wk_kv_place), 0 while they move by
 * messages or before the first pass. */
int wk_blocks_items_shared(const wk_blocks *b);

/* Of the blocks whose item rows are shared, how many train them where they
 * sit in the servers' memory (all of a block's rows in one server's file:
 * nothing copied per round) rather than copying them out and back. */
uint32_t wk_blocks_in_place(const wk_blocks *b);

/* 1 once the worker holds its user rows (pulled or initialised). */
int wk_blocks_holds_users(const wk_blocks *b);

#endif
