/* codec: the one module that includes the generated protobuf-c code.
 * Converts psrec.pb messages to and from psrec's plain structs; an
 * unpackable buffer is CM_EPROTO, never a crash. */
#ifndef PSREC_COMMON_CODEC_H
#define PSREC_COMMON_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/msg.h"

/* Packs *h into a malloc'ed buffer (*out, *len). 0 or CM_ENOMEM. */
int cm_codec_hdr_pack(const cm_hdr *h, uint8_t **out, size_t *len);

/* Unpacks into *h. On success h->slots (if any) is malloc'ed and owned by
 * the caller. CM_EPROTO with a message on malformed bytes. */
int cm_codec_hdr_unpack(const void *buf, size_t len, cm_hdr *h, cm_error *err);

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

#endif
