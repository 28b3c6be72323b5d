#include "common/codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "psrec.pb-c.h"

int cm_codec_hdr_pack(const cm_hdr *h, uint8_t **out, size_t *len)
{
    Psrec__Pb__Header pb = PSREC__PB__HEADER__INIT;
    pb.op = (Psrec__Pb__Op)h->op;
    pb.table = h->table;
    pb.req_id = h->req_id;
    pb.clock = h->clock;
    pb.n_keys = h->n_keys;
    pb.dim = h->dim;
    pb.status = h->status;
    pb.error = (char *)h->error;
    pb.flags = h->flags;
    pb.epoch = h->epoch;
    pb.sender = h->sender;
    pb.n_stats = h->n_stats;
    pb.stats = (double *)h->stats;
    pb.n_slots = h->n_slots;
    pb.slots = h->slots;
    size_t n = psrec__pb__header__get_packed_size(&pb);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return CM_ENOMEM;
    psrec__pb__header__pack(&pb, buf);
    *out = buf;
    *len = n;
    return 0;
}

int cm_codec_hdr_unpack(const void *buf, size_t len, cm_hdr *h, cm_error *err)
{
    memset(h, 0, sizeof *h);
    Psrec__Pb__Header *pb = psrec__pb__header__unpack(NULL, len, buf);
    if (!pb)
        return cm_error_set(err, CM_EPROTO, "header frame of %zu bytes does not decode", len);
    int rc = 0;
    if (pb->n_stats > CM_HDR_MAX_STATS) {
        rc = cm_error_set(err, CM_EPROTO, "header carries %zu stats, at most %d allowed",
                          pb->n_stats, CM_HDR_MAX_STATS);
        goto out;
    }
    h->op = (int)pb->op;
    h->table = pb->table;
    h->req_id = pb->req_id;
    h->clock = pb->clock;
    h->n_keys = pb->n_keys;
    h->dim = pb->dim;
    h->status = pb->status;
    if (pb->error)
        snprintf(h->error, sizeof h->error, "%s", pb->error);
    h->flags = pb->flags;
    h->epoch = pb->epoch;
    h->sender = pb->sender;
    h->n_stats = pb->n_stats;
    if (pb->n_stats)
        memcpy(h->stats, pb->stats, pb->n_stats * sizeof(double));
    if (pb->n_slots) {
        h->slots = malloc(pb->n_slots * sizeof(uint32_t));
        if (!h->slots) {
            rc = CM_ENOMEM;
            goto out;
        }
        memcpy(h->slots, pb->slots, pb->n_slots * sizeof(uint32_t));
        h->n_slots = pb->n_slots;
    }
    if (pb->dtype != PSREC__PB__DTYPE__DTYPE_F32)
        rc = cm_error_set(err, CM_EPROTO, "value dtype %d is not supported", (int)pb->dtype);
out:
    psrec__pb__header__free_unpacked(pb, NULL);
    return rc;
}

int cm_codec_dataset_pack(const cm_dataset_hdr *h, uint8_t **out, size_t *len)
{
    Psrec__Pb__DatasetHeader pb = PSREC__PB__DATASET_HEADER__INIT;
    pb.version = h->version;
    pb.n_rows = h->n_rows;
    pb.user_offset = h->user_offset;
    pb.item_offset = h->item_offset;
    pb.rating_offset = h->rating_offset;
    pb.user_checksum = h->user_checksum;
    pb.item_checksum = h->item_checksum;
    pb.rating_checksum = h->rating_checksum;
    pb.noise_floor = h->noise_floor;
    pb.rating_min = h->rating_min;
    pb.rating_max = h->rating_max;
    pb.rating_mean = h->rating_mean;
    pb.source = (char *)h->source;
    size_t n = psrec__pb__dataset_header__get_packed_size(&pb);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return CM_ENOMEM;
    psrec__pb__dataset_header__pack(&pb, buf);
    *out = buf;
    *len = n;
    return 0;
}

int cm_codec_dataset_unpack(const void *buf, size_t len, cm_dataset_hdr *h, cm_error *err)
{
    memset(h, 0, sizeof *h);
    Psrec__Pb__DatasetHeader *pb = psrec__pb__dataset_header__unpack(NULL, len, buf);
    if (!pb)
        return cm_error_set(err, CM_EPROTO, "dataset header of %zu bytes does not decode", len);
    h->version = pb->version;
    h->n_rows = pb->n_rows;
    h->user_offset = pb->user_offset;
    h->item_offset = pb->item_offset;
    h->rating_offset = pb->rating_offset;
    h->user_checksum = pb->user_checksum;
    h->item_checksum = pb->item_checksum;
    h->rating_checksum = pb->rating_checksum;
    h->noise_floor = pb->noise_floor;
    h->rating_min = pb->rating_min;
    h->rating_max = pb->rating_max;
    h->rating_mean = pb->rating_mean;
    if (pb->source)
        snprintf(h->source, sizeof h->source, "%s", pb->source);
    psrec__pb__dataset_header__free_unpacked(pb, NULL);
    return 0;
}
