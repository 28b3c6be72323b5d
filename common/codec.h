/* codec: the one module that includes the generated protobuf-c code.
 * Converts psrec.pb messages to and from psrec's plain structs; an
 * unpackable buffer is CM_EPROTO, never a crash. */
#ifndef PSREC_COMMON_CODEC_H
#define PSREC_COMMON_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/msg.h"

/* Packs *h, with its typed body (common/ctl.h), into a malloc'ed buffer
 * (*out, *len). 0, CM_ENOMEM, or CM_EINVAL for a body kind that is not one
 * of cm_body_kind or a body of more than CM_CTL_MAX_TABLES tables. */
int cm_codec_hdr_pack(const cm_hdr *h, uint8_t **out, size_t *len);

/* Unpacks into *h, its body included. On success h->slots and the body's
 * arrays (a HELLO's slot loads, an evaluation's AUC histograms) are
 * malloc'ed and owned by the caller, who frees them with
 * cm_codec_hdr_free. CM_EPROTO with a message on malformed bytes (nothing
 * left allocated then). A body of a kind this build does not know reads
 * as none. */
int cm_codec_hdr_unpack(const void *buf, size_t len, cm_hdr *h, cm_error *err);

/* Frees what cm_codec_hdr_unpack allocated in *h and clears those fields.
 * NULL-safe; only for headers that unpack filled. */
void cm_codec_hdr_free(cm_hdr *h);

/* Plain form of psrec.pb.DatasetHeader. */
typedef struct {
    uint32_t version;
    uint64_t n_rows;
    uint64_t user_offset, item_offset, rating_offset;
    uint64_t user_checksum, item_checksum, rating_checksum;
    double noise_floor;
    float rating_min, rating_max;
    double rating_mean;
    char source[256];
} cm_dataset_hdr;

int cm_codec_dataset_pack(const cm_dataset_hdr *h, uint8_t **out, size_t *len);
int cm_codec_dataset_unpack(const void *buf, size_t len, cm_dataset_hdr *h,
                            cm_error *err);

/* ---- checkpoints (common/ckpt.h holds the plain structs) --------------- */

typedef struct {
    uint32_t version, table, dim, row_floats;
    uint64_t n_rows, key_offset, row_offset;
} cm_shard_hdr;

int cm_codec_shard_pack(const cm_shard_hdr *h, uint8_t **out, size_t *len);
int cm_codec_shard_unpack(const void *buf, size_t len, cm_shard_hdr *h, cm_error *err);

struct cm_manifest;
/* Packs a manifest (ckpt.h); unpack fills *m, whose arrays the caller frees
 * with cm_manifest_free. */
int cm_codec_manifest_pack(const struct cm_manifest *m, uint8_t **out, size_t *len);
int cm_codec_manifest_unpack(const void *buf, size_t len, struct cm_manifest *m,
                             cm_error *err);

/* ---- serving ------------------------------------------------------------ */

typedef struct {
    uint64_t user;
    uint32_t k;
    size_t n_exclude;
    uint64_t *exclude;          /* unpack: malloc'ed, caller frees */
} cm_rec_request;

typedef struct {
    int32_t status;
    char error[256];
    size_t n;
    uint64_t *items;            /* unpack: malloc'ed, caller frees */
    float *scores;              /* unpack: malloc'ed, caller frees */
    int fallback;
    uint64_t model_version;
} cm_rec_reply;

int cm_codec_rec_request_pack(const cm_rec_request *r, uint8_t **out, size_t *len);
int cm_codec_rec_request_unpack(const void *buf, size_t len, cm_rec_request *r,
                                cm_error *err);
int cm_codec_rec_reply_pack(const cm_rec_reply *r, uint8_t **out, size_t *len);
int cm_codec_rec_reply_unpack(const void *buf, size_t len, cm_rec_reply *r, cm_error *err);

#endif
