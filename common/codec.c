#include "common/codec.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/ckpt.h"
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
    pb.dtype = h->dtype == CM_DTYPE_F16 ? PSREC__PB__DTYPE__DTYPE_F16
                                        : PSREC__PB__DTYPE__DTYPE_F32;
    pb.epoch = h->epoch;
    pb.sender = h->sender;
    pb.n_stats = h->n_stats;
    pb.stats = (double *)h->stats;
    pb.n_slots = h->n_slots;
    pb.slots = h->slots;
    pb.path = (char *)h->path;
    pb.key_enc = h->key_enc;
    pb.key_ref = h->key_ref;
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
    if (pb->path)
        snprintf(h->path, sizeof h->path, "%s", pb->path);
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
    if (pb->dtype == PSREC__PB__DTYPE__DTYPE_F16)
        h->dtype = CM_DTYPE_F16;
    else if (pb->dtype != PSREC__PB__DTYPE__DTYPE_F32)
        rc = cm_error_set(err, CM_EPROTO, "value dtype %d is not supported", (int)pb->dtype);
    h->key_enc = pb->key_enc;
    h->key_ref = pb->key_ref;
    if (rc == 0 && h->key_enc != CM_KEYS_RAW && h->key_enc != CM_KEYS_GAPS)
        rc = cm_error_set(err, CM_EPROTO, "key encoding %u is not supported", h->key_enc);
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

/* ---------------------------------------------------------------------------
 * Checkpoints: shard header and manifest
 * ------------------------------------------------------------------------- */

int cm_codec_shard_pack(const cm_shard_hdr *h, uint8_t **out, size_t *len)
{
    Psrec__Pb__ShardHeader pb = PSREC__PB__SHARD_HEADER__INIT;
    pb.version = h->version;
    pb.table = h->table;
    pb.dim = h->dim;
    pb.row_floats = h->row_floats;
    pb.n_rows = h->n_rows;
    pb.key_offset = h->key_offset;
    pb.row_offset = h->row_offset;
    size_t n = psrec__pb__shard_header__get_packed_size(&pb);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return CM_ENOMEM;
    psrec__pb__shard_header__pack(&pb, buf);
    *out = buf;
    *len = n;
    return 0;
}

int cm_codec_shard_unpack(const void *buf, size_t len, cm_shard_hdr *h, cm_error *err)
{
    memset(h, 0, sizeof *h);
    Psrec__Pb__ShardHeader *pb = psrec__pb__shard_header__unpack(NULL, len, buf);
    if (!pb)
        return cm_error_set(err, CM_EPROTO, "shard header of %zu bytes does not decode", len);
    h->version = pb->version;
    h->table = pb->table;
    h->dim = pb->dim;
    h->row_floats = pb->row_floats;
    h->n_rows = pb->n_rows;
    h->key_offset = pb->key_offset;
    h->row_offset = pb->row_offset;
    psrec__pb__shard_header__free_unpacked(pb, NULL);
    return 0;
}

/* protobuf-c wants a non-NULL string for every set string field. */
static char *s_str(const char *s)
{
    return (char *)(s ? s : "");
}

int cm_codec_manifest_pack(const cm_manifest *m, uint8_t **out, size_t *len)
{
    Psrec__Pb__Manifest pb = PSREC__PB__MANIFEST__INIT;
    Psrec__Pb__CkptTable *tabs = NULL, **tabp = NULL;
    Psrec__Pb__CkptFile *files = NULL, **filep = NULL;
    int rc = 0;
    if (m->n_tables) {
        tabs = calloc(m->n_tables, sizeof *tabs);
        tabp = calloc(m->n_tables, sizeof *tabp);
    }
    if (m->n_files) {
        files = calloc(m->n_files, sizeof *files);
        filep = calloc(m->n_files, sizeof *filep);
    }
    if ((m->n_tables && (!tabs || !tabp)) || (m->n_files && (!files || !filep))) {
        rc = CM_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < m->n_tables; i++) {
        const cm_ckpt_table *t = &m->tables[i];
        Psrec__Pb__CkptTable *p = &tabs[i];
        psrec__pb__ckpt_table__init(p);
        p->name = (char *)t->name;
        p->dim = (uint32_t)t->dim;
        p->row_floats = (uint32_t)t->row_floats;
        p->optimizer = t->optimizer;
        p->lr = t->lr;
        p->seed = t->seed;
        p->zero_prefix = (uint32_t)t->zero_prefix;
        p->init_std = t->init_std;
        tabp[i] = p;
    }
    for (size_t i = 0; i < m->n_files; i++) {
        const cm_ckpt_file *f = &m->files[i];
        Psrec__Pb__CkptFile *p = &files[i];
        psrec__pb__ckpt_file__init(p);
        p->name = (char *)f->name;
        p->table = f->table;
        p->size = f->size;
        p->checksum = f->checksum;
        p->rows = f->rows;
        p->writer = f->writer;
        p->n_slots = f->slots ? f->n_slots : 0;
        p->slots = f->slots;
        filep[i] = p;
    }
    pb.version = m->version;
    pb.job = s_str(m->job);
    pb.model = (char *)m->model;
    pb.n_tables = m->n_tables;
    pb.tables = tabp;
    pb.n_slot_map = m->slot_map ? m->n_slots : 0;
    pb.slot_map = m->slot_map;
    pb.n_slots = m->n_slots;
    pb.epoch = m->epoch;
    pb.n_files = m->n_files;
    pb.files = filep;
    pb.global_mean = m->global_mean;
    pb.clip_lo = m->clip_lo;
    pb.clip_hi = m->clip_hi;
    pb.train_rmse = m->train_rmse;
    pb.test_rmse = m->test_rmse;
    pb.test_mae = m->test_mae;
    pb.created_unix = m->created_unix;
    pb.n_servers = m->n_servers;
    pb.n_workers = m->n_workers;
    pb.valid_metric = m->valid_metric;
    pb.best_epoch = m->best_epoch;
    pb.best_valid = m->best_valid;
    pb.stale_evals = m->stale_evals;
    pb.best_test_rmse = m->best_test_rmse;
    pb.best_test_mae = m->best_test_mae;
    pb.best_test_auc = m->best_test_auc;
    pb.best_test_logloss = m->best_test_logloss;
    size_t n = psrec__pb__manifest__get_packed_size(&pb);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        rc = CM_ENOMEM;
        goto out;
    }
    psrec__pb__manifest__pack(&pb, buf);
    *out = buf;
    *len = n;
out:
    free(tabs);
    free(tabp);
    free(files);
    free(filep);
    return rc;
}

/* Copies a decoded string into a fixed buffer; refuses one that does not
 * fit rather than truncating a name that must match a file. */
static int s_copy_name(char *dst, size_t cap, const char *src, const char *what,
                       size_t index, cm_error *err)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap)
        return cm_error_set(err, CM_EPROTO, "manifest: %s %zu is %zu bytes long, at most %zu allowed",
                            what, index, n, cap - 1);
    memcpy(dst, src ? src : "", n);
    dst[n] = '\0';
    return 0;
}

static int s_fits_int(uint32_t v, const char *what, size_t index, cm_error *err)
{
    if (v > INT_MAX)
        return cm_error_set(err, CM_EPROTO, "manifest: %s of table %zu is %u, out of range",
                            what, index, v);
    return 0;
}

int cm_codec_manifest_unpack(const void *buf, size_t len, cm_manifest *m, cm_error *err)
{
    memset(m, 0, sizeof *m);
    Psrec__Pb__Manifest *pb = psrec__pb__manifest__unpack(NULL, len, buf);
    if (!pb)
        return cm_error_set(err, CM_EPROTO, "manifest of %zu bytes does not decode", len);
    int rc = 0;
    if (pb->n_slot_map != 0 && pb->n_slot_map != pb->n_slots) {
        rc = cm_error_set(err, CM_EPROTO, "manifest: slot map has %zu entries, n_slots is %u",
                          pb->n_slot_map, pb->n_slots);
        goto out;
    }
    m->version = pb->version;
    m->job = strdup(pb->job ? pb->job : "");
    if (!m->job) {
        rc = cm_error_set(err, CM_ENOMEM, "manifest: out of memory");
        goto out;
    }
    if ((rc = s_copy_name(m->model, sizeof m->model, pb->model, "model name", 0, err)) != 0)
        goto out;
    if (pb->n_tables) {
        m->tables = calloc(pb->n_tables, sizeof *m->tables);
        if (!m->tables) {
            rc = cm_error_set(err, CM_ENOMEM, "manifest: out of memory for %zu tables",
                              pb->n_tables);
            goto out;
        }
    }
    for (size_t i = 0; i < pb->n_tables; i++) {
        const Psrec__Pb__CkptTable *p = pb->tables[i];
        cm_ckpt_table *t = &m->tables[i];
        m->n_tables = i + 1;
        if ((rc = s_copy_name(t->name, sizeof t->name, p->name, "table name", i, err)) != 0 ||
            (rc = s_fits_int(p->dim, "dim", i, err)) != 0 ||
            (rc = s_fits_int(p->row_floats, "row_floats", i, err)) != 0 ||
            (rc = s_fits_int(p->zero_prefix, "zero_prefix", i, err)) != 0)
            goto out;
        t->dim = (int)p->dim;
        t->row_floats = (int)p->row_floats;
        t->optimizer = p->optimizer;
        t->lr = p->lr;
        t->seed = p->seed;
        t->zero_prefix = (int)p->zero_prefix;
        t->init_std = p->init_std;
    }
    m->n_slots = pb->n_slots;
    if (pb->n_slot_map) {
        m->slot_map = malloc(pb->n_slot_map * sizeof *m->slot_map);
        if (!m->slot_map) {
            rc = cm_error_set(err, CM_ENOMEM, "manifest: out of memory for %zu slots",
                              pb->n_slot_map);
            goto out;
        }
        memcpy(m->slot_map, pb->slot_map, pb->n_slot_map * sizeof *m->slot_map);
    }
    m->epoch = pb->epoch;
    if (pb->n_files) {
        m->files = calloc(pb->n_files, sizeof *m->files);
        if (!m->files) {
            rc = cm_error_set(err, CM_ENOMEM, "manifest: out of memory for %zu files",
                              pb->n_files);
            goto out;
        }
    }
    for (size_t i = 0; i < pb->n_files; i++) {
        const Psrec__Pb__CkptFile *p = pb->files[i];
        cm_ckpt_file *f = &m->files[i];
        m->n_files = i + 1;
        if ((rc = s_copy_name(f->name, sizeof f->name, p->name, "file name", i, err)) != 0)
            goto out;
        f->table = p->table;
        f->size = p->size;
        f->checksum = p->checksum;
        f->rows = p->rows;
        f->writer = p->writer;
        if (p->n_slots) {
            f->slots = malloc(p->n_slots * sizeof *f->slots);
            if (!f->slots) {
                rc = cm_error_set(err, CM_ENOMEM, "manifest: out of memory for %zu slots",
                                  p->n_slots);
                goto out;
            }
            memcpy(f->slots, p->slots, p->n_slots * sizeof *f->slots);
            f->n_slots = p->n_slots;
        }
    }
    m->global_mean = pb->global_mean;
    m->clip_lo = pb->clip_lo;
    m->clip_hi = pb->clip_hi;
    m->train_rmse = pb->train_rmse;
    m->test_rmse = pb->test_rmse;
    m->test_mae = pb->test_mae;
    m->created_unix = pb->created_unix;
    m->n_servers = pb->n_servers;
    m->n_workers = pb->n_workers;
    m->valid_metric = pb->valid_metric;
    m->best_epoch = pb->best_epoch;
    m->best_valid = pb->best_valid;
    m->stale_evals = pb->stale_evals;
    m->best_test_rmse = pb->best_test_rmse;
    m->best_test_mae = pb->best_test_mae;
    m->best_test_auc = pb->best_test_auc;
    m->best_test_logloss = pb->best_test_logloss;
out:
    psrec__pb__manifest__free_unpacked(pb, NULL);
    if (rc != 0)
        cm_manifest_free(m);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Serving: recommendation request and reply
 * ------------------------------------------------------------------------- */

int cm_codec_rec_request_pack(const cm_rec_request *r, uint8_t **out, size_t *len)
{
    Psrec__Pb__RecRequest pb = PSREC__PB__REC_REQUEST__INIT;
    pb.user = r->user;
    pb.k = r->k;
    pb.n_exclude = r->exclude ? r->n_exclude : 0;
    pb.exclude = r->exclude;
    size_t n = psrec__pb__rec_request__get_packed_size(&pb);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return CM_ENOMEM;
    psrec__pb__rec_request__pack(&pb, buf);
    *out = buf;
    *len = n;
    return 0;
}

int cm_codec_rec_request_unpack(const void *buf, size_t len, cm_rec_request *r,
                                cm_error *err)
{
    memset(r, 0, sizeof *r);
    Psrec__Pb__RecRequest *pb = psrec__pb__rec_request__unpack(NULL, len, buf);
    if (!pb)
        return cm_error_set(err, CM_EPROTO, "recommend request of %zu bytes does not decode",
                            len);
    int rc = 0;
    r->user = pb->user;
    r->k = pb->k;
    if (pb->n_exclude) {
        r->exclude = malloc(pb->n_exclude * sizeof *r->exclude);
        if (!r->exclude) {
            rc = cm_error_set(err, CM_ENOMEM, "recommend request: out of memory for %zu "
                              "excluded items", pb->n_exclude);
            goto out;
        }
        memcpy(r->exclude, pb->exclude, pb->n_exclude * sizeof *r->exclude);
        r->n_exclude = pb->n_exclude;
    }
out:
    psrec__pb__rec_request__free_unpacked(pb, NULL);
    return rc;
}

int cm_codec_rec_reply_pack(const cm_rec_reply *r, uint8_t **out, size_t *len)
{
    Psrec__Pb__RecReply pb = PSREC__PB__REC_REPLY__INIT;
    pb.status = r->status;
    pb.error = (char *)r->error;
    pb.n_items = r->items ? r->n : 0;
    pb.items = r->items;
    pb.n_scores = r->scores ? r->n : 0;
    pb.scores = r->scores;
    pb.fallback = r->fallback != 0;
    pb.model_version = r->model_version;
    size_t n = psrec__pb__rec_reply__get_packed_size(&pb);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return CM_ENOMEM;
    psrec__pb__rec_reply__pack(&pb, buf);
    *out = buf;
    *len = n;
    return 0;
}

int cm_codec_rec_reply_unpack(const void *buf, size_t len, cm_rec_reply *r, cm_error *err)
{
    memset(r, 0, sizeof *r);
    Psrec__Pb__RecReply *pb = psrec__pb__rec_reply__unpack(NULL, len, buf);
    if (!pb)
        return cm_error_set(err, CM_EPROTO, "recommend reply of %zu bytes does not decode", len);
    int rc = 0;
    if (pb->n_items != pb->n_scores) {
        rc = cm_error_set(err, CM_EPROTO, "recommend reply has %zu items but %zu scores",
                          pb->n_items, pb->n_scores);
        goto out;
    }
    r->status = pb->status;
    if (pb->error)
        snprintf(r->error, sizeof r->error, "%s", pb->error);
    r->fallback = pb->fallback ? 1 : 0;
    r->model_version = pb->model_version;
    if (pb->n_items) {
        r->items = malloc(pb->n_items * sizeof *r->items);
        r->scores = malloc(pb->n_items * sizeof *r->scores);
        if (!r->items || !r->scores) {
            free(r->items);
            free(r->scores);
            r->items = NULL;
            r->scores = NULL;
            rc = cm_error_set(err, CM_ENOMEM, "recommend reply: out of memory for %zu items",
                              pb->n_items);
            goto out;
        }
        memcpy(r->items, pb->items, pb->n_items * sizeof *r->items);
        memcpy(r->scores, pb->scores, pb->n_items * sizeof *r->scores);
        r->n = pb->n_items;
    }
out:
    psrec__pb__rec_reply__free_unpacked(pb, NULL);
    return rc;
}
