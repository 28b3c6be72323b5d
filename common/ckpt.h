/* ckpt: the checkpoint format on disk (docs/checkpoints.md).
 *
 * A checkpoint is a directory under the job's checkpoint_dir, named
 * "ckpt-NNNNNN" after the epochs it completed, holding a MANIFEST
 * (protobuf psrec.pb.Manifest behind a magic and a checksum) and one row
 * shard file per table per writer: rows sorted by key, each row its
 * weights then its optimizer state. Every file is written to a temporary
 * name, fsynced and renamed; the directory is fsynced; the root's LATEST
 * pointer is switched last. Readers check sizes and xxh64 checksums and
 * refuse a torn or corrupted file with a message naming it. */
#ifndef PSREC_COMMON_CKPT_H
#define PSREC_COMMON_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define CM_SHARD_MAGIC "PSRECCK1"
#define CM_MANIFEST_MAGIC "PSRECMF1"
#define CM_CKPT_NAME_MAX 256

/* ---- row shards ------------------------------------------------------- */

/* A loaded shard; arrays are owned (heap or mapping) until cm_shard_free. */
typedef struct {
    uint32_t table;
    int dim;               /* weights per row */
    int row_floats;        /* floats per row: weights + optimizer state */
    size_t n;              /* rows */
    const uint64_t *keys;  /* n, ascending */
    const float *rows;     /* n * row_floats */
    void *owner_;
} cm_shard;

/* Writes rows (keys strictly ascending) to path via a temporary name,
 * fsync and rename. *size and *checksum (xxh64 of the file) may be NULL. */
int cm_shard_write(const char *path, uint32_t table, int dim, int row_floats,
                   const uint64_t *keys, const float *rows, size_t n, uint64_t *size,
                   uint64_t *checksum, cm_error *err);

/* The same with row i at rows[i] (rows where they live, say in a table's
 * slab: no copy of the whole shard is made). */
int cm_shard_write_rows(const char *path, uint32_t table, int dim, int row_floats,
                        const uint64_t *keys, const float *const *rows, size_t n,
                        uint64_t *size, uint64_t *checksum, cm_error *err);

/* Reads and validates a shard. want_size/want_checksum: 0 skips that
 * check. Truncation, bad magic, bad header, keys out of order and checksum
 * mismatch are CM_ECHECKSUM/CM_EPARSE errors naming the file. */
int cm_shard_read(const char *path, uint64_t want_size, uint64_t want_checksum,
                  cm_shard *out, cm_error *err);

void cm_shard_free(cm_shard *s);

/* ---- manifest --------------------------------------------------------- */

typedef struct {
    char name[64];
    int dim, row_floats, optimizer, zero_prefix;
    float lr, init_std;
    uint64_t seed;
} cm_ckpt_table;

typedef struct {
    char name[CM_CKPT_NAME_MAX];   /* relative to the checkpoint directory */
    uint32_t table;
    uint64_t size, checksum, rows;
    int writer;
    size_t n_slots;
    uint32_t *slots;               /* owned; NULL/0 = rows of any slot */
} cm_ckpt_file;

/* Plain form of psrec.pb.Manifest; cm_manifest_free releases arrays. The
 * struct tag lets codec.h name it without including this header. */
typedef struct cm_manifest {
    uint32_t version;
    char *job;                     /* INI text, owned */
    char model[32];
    size_t n_tables;
    cm_ckpt_table *tables;         /* owned */
    uint32_t n_slots;
    uint32_t *slot_map;            /* n_slots, owned */
    uint32_t epoch;
    size_t n_files;
    cm_ckpt_file *files;           /* owned */
    double global_mean;
    float clip_lo, clip_hi;
    double train_rmse, test_rmse, test_mae;
    uint64_t created_unix;
    uint32_t n_servers, n_workers;
    /* validation (docs/validation.md); best_epoch 0: none */
    double valid_metric;           /* this epoch's */
    uint32_t best_epoch;           /* the chosen epoch so far */
    double best_valid;             /* its validation metric */
    uint32_t stale_evals;          /* evaluations since it without improvement */
    double best_test_rmse, best_test_mae, best_test_auc, best_test_logloss;
} cm_manifest;

/* Writes dir/MANIFEST (temporary name, fsync, rename, fsync dir). */
int cm_manifest_write(const char *dir, const cm_manifest *m, cm_error *err);

/* Reads dir/MANIFEST into *m (zeroed first). */
int cm_manifest_read(const char *dir, cm_manifest *m, cm_error *err);

void cm_manifest_free(cm_manifest *m);

/* Reads the manifest and checks every listed file's size and checksum.
 * 0 when the whole checkpoint is intact; else the first problem, named. */
int cm_ckpt_verify(const char *dir, cm_error *err);

/* ---- the checkpoint root ---------------------------------------------- */

/* "ckpt-000005" for epoch 5. */
void cm_ckpt_dirname(uint32_t epoch, char *out, size_t n);

/* Makes root/name (and root) if missing. */
int cm_ckpt_mkdir(const char *root, const char *name, char *path, size_t n, cm_error *err);

/* Points root/LATEST at name (temporary file, fsync, rename), then removes
 * the oldest complete checkpoints beyond `keep` (keep <= 0: keep all). */
int cm_ckpt_publish(const char *root, const char *name, int keep, cm_error *err);

/* Points root/BEST at name, the checkpoint of the epoch chosen on
 * validation (docs/checkpoints.md); LATEST is left as it is. Pruning
 * (cm_ckpt_publish's keep) never removes the checkpoint BEST names. */
int cm_ckpt_publish_best(const char *root, const char *name, cm_error *err);

/* Removes root/BEST if there is one (a fresh run must not leave an earlier
 * run's choice in place). */
int cm_ckpt_forget_best(const char *root, cm_error *err);

/* 1 when root holds a checkpoint that was published or got as far as its
 * MANIFEST (intact or not), 0 when it holds none (or does not exist): a
 * directory without a MANIFEST is a writer's unfinished work, not a
 * checkpoint. Negative CM_E* when root cannot be read. resume = auto
 * starts fresh on 0 and resolves (and refuses torn ones) on 1. */
int cm_ckpt_any(const char *root, cm_error *err);

/* Resolves what to resume from: `spec` is a checkpoint directory, or
 * "auto" for the newest intact checkpoint under root (LATEST first, then
 * older ones, newest first; each refused one is logged with its reason),
 * or "best" for the one BEST names when it is intact, else as "auto"
 * (what export reads).
 * Writes the chosen directory to out. CM_ENOTFOUND when none is intact. */
int cm_ckpt_resolve(const char *root, const char *spec, char *out, size_t n, cm_error *err);

/* ---- on a cluster (docs/checkpoints.md, "On a cluster") ---------------- */

/* Checks n files as the writers reported them (name, size, checksum)
 * against what is in dir as seen from here, before a checkpoint is
 * published: 0 when every one is there with the reported size and
 * checksum, else the first that is not, named (CM_ENOTFOUND: missing;
 * CM_ECHECKSUM: another size or checksum). */
int cm_ckpt_check_files(const char *dir, const cm_ckpt_file *files, size_t n, cm_error *err);

/* A writer's mark in the checkpoint root (made if missing): the file
 * root/.psrec-token-<writer> holding token (one line, no newline, < 512
 * bytes), fsynced. Written by every server at start-up, so the scheduler
 * can tell whether it sees the same filesystem. */
int cm_ckpt_token_write(const char *root, int writer, const char *token, cm_error *err);

/* 0 when writer's mark under root holds token; CM_ENOTFOUND when there is
 * none (root is another filesystem where the writer runs); CM_ESTATE when
 * it holds another token (another job writing to root at the same time). */
int cm_ckpt_token_check(const char *root, int writer, const char *token, cm_error *err);

/* Removes writer's mark when it holds token (never another job's). */
void cm_ckpt_token_remove(const char *root, int writer, const char *token);

#endif
