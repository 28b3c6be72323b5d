/* export: a checkpoint turned into what serving systems read.
 *
 *   <table>.npy        float32 C-order matrix, one row per id (only the
 *                      dim weights; optimizer state is dropped)
 *   <table>.ids.npy    int64 ids of those rows, ascending as uint64 (ids of
 *                      2^63 and above read as negative: view as uint64)
 *   item.fvecs         the item rows [b_i, q_i] in the ANN-benchmark .fvecs
 *                      format (int32 d, then d float32, per vector)
 *   model.psm          every table in one mmap-able file (docs/psm.md)
 *   manifest.json      model, scoring formula, constants, files
 *
 * Every file is written to a temporary name, fsynced and renamed;
 * manifest.json is written last. docs/serving.md describes the layout. */
#ifndef PSREC_SERVE_EXPORT_H
#define PSREC_SERVE_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

enum { SV_FMT_NPY = 1u, SV_FMT_FVECS = 2u, SV_FMT_PSM = 4u, SV_FMT_ALL = 7u };

#define SV_TABLE_NAME_MAX 64

/* One table in memory, owned: ids ascending, rows n * dim (64-aligned). */
typedef struct {
    char name[SV_TABLE_NAME_MAX];
    int dim;
    size_t n;
    uint64_t *ids;
    float *rows;
} sv_table;

/* A model read from a checkpoint (or built by hand in tests). */
typedef struct {
    char model[32];
    double global_mean;
    float clip_lo, clip_hi;
    size_t n_tables;
    sv_table *tables;          /* owned */
} sv_export_model;

/* Parses "npy,fvecs,psm" (any subset, any order; "all"). */
int sv_export_parse_formats(const char *s, unsigned *out, cm_error *err);

/* Reads a checkpoint: `ckpt` is a checkpoint directory (holding MANIFEST)
 * or a checkpoint root (the checkpoint BEST names, the epoch chosen on
 * validation, when intact; else its newest intact checkpoint). Each
 * table's shard files are merged into one ascending id list; a duplicate
 * id across shards is CM_EPARSE naming both files. *out is zeroed first;
 * free it with sv_export_model_free. */
int sv_export_load(const char *ckpt, sv_export_model *out, cm_error *err);

void sv_export_model_free(sv_export_model *m);

/* The scoring formula of a model ("" when psrec knows none). */
const char *sv_export_formula(const char *model);

/* Writes the formats chosen to out_dir (created if missing). fvecs needs
 * an "item" table. */
int sv_export_write(const sv_export_model *m, const char *out_dir, unsigned formats,
                    cm_error *err);

/* sv_export_load + sv_export_write. */
int sv_export(const char *ckpt, const char *out_dir, unsigned formats, cm_error *err);

#endif
