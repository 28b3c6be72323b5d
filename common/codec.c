#include "common/codec.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/ckpt.h"
#include "psrec.pb-c.h"

/* ---- control bodies (common/ctl.h) -------------------------------------- */

/* The protobuf form of one body, alive while its header packs. */
typedef struct {
    union {
        Psrec__Pb__Hello hello;
        Psrec__Pb__Plan plan;
        Psrec__Pb__Progress progress;
        Psrec__Pb__EpochDone epoch_done;
        Psrec__Pb__EvalDone eval_done;
        Psrec__Pb__RankingDone ranking;
        Psrec__Pb__PlaceReply place;
        Psrec__Pb__PullReply pulled;
        Psrec__Pb__CkptReply ckpt;
        Psrec__Pb__LoadReply loaded;
        Psrec__Pb__TableStats tables;
    } m;
    Psrec__Pb__CkptShard shard[CM_CTL_MAX_TABLES], *shard_p[CM_CTL_MAX_TABLES];
    Psrec__Pb__TableStat stat[CM_CTL_MAX_TABLES], *stat_p[CM_CTL_MAX_TABLES];
} s_pb_body;

static void s_pack_hello(const cm_hello *x, Psrec__Pb__Hello *o)
{
    psrec__pb__hello__init(o);
    o->n_train = x->n_train;
    o->label_sum = x->label_sum;
    o->label_min = x->label_min;
    o->label_max = x->label_max;
    o->n_test = x->n_test;
    o->bad_train = x->bad_train;
    o->bad_test = x->bad_test;
    o->noise_floor = x->noise_floor;
    o->task = x->task;
    o->raw_train = x->raw_train;
    o->raw_test = x->raw_test;
    o->n_valid = x->n_valid;
    o->n_slot_load = x->slot_load ? x->n_slot_load : 0;
    o->slot_load = x->slot_load;
}

static void s_pack_eval(const cm_eval_done *x, Psrec__Pb__EvalDone *o)
{
    psrec__pb__eval_done__init(o);
    o->test_sq = x->test_sq;
    o->test_abs = x->test_abs;
    o->test_n = x->test_n;
    o->unseen = x->unseen;
    o->test_logloss = x->test_logloss;
    o->valid_sq = x->valid_sq;
    o->valid_abs = x->valid_abs;
    o->valid_n = x->valid_n;
    o->valid_logloss = x->valid_logloss;
    if (x->n_auc && x->auc_pos && x->auc_neg) {
        o->n_auc_pos = o->n_auc_neg = x->n_auc;
        o->auc_pos = x->auc_pos;
        o->auc_neg = x->auc_neg;
    }
}

static void s_pack_ranking(const cm_ranking_done *x, Psrec__Pb__RankingDone *o)
{
    psrec__pb__ranking_done__init(o);
    o->recall = x->recall;
    o->ndcg = x->ndcg;
    o->hit = x->hit;
    o->users = x->users;
    o->pop_recall = x->pop_recall;
    o->pop_ndcg = x->pop_ndcg;
    o->pop_hit = x->pop_hit;
    o->cold_users = x->cold_users;
    o->cold_items = x->cold_items;
    o->positives = x->positives;
    o->repeats = x->repeats;
}

static void s_pack_place(const cm_place_reply *x, Psrec__Pb__PlaceReply *o)
{
    psrec__pb__place_reply__init(o);
    o->pid = x->pid;
    o->fd = x->fd;
    o->token = x->token;
    o->header = x->header;
    o->stride = x->stride;
    o->bytes = x->bytes;
}

static void s_pack_ckpt(const cm_ckpt_reply *x, s_pb_body *b)
{
    psrec__pb__ckpt_reply__init(&b->m.ckpt);
    for (size_t i = 0; i < x->n; i++) {
        psrec__pb__ckpt_shard__init(&b->shard[i]);
        b->shard[i].size = x->shard[i].size;
        b->shard[i].checksum = x->shard[i].checksum;
        b->shard[i].rows = x->shard[i].rows;
        b->shard_p[i] = &b->shard[i];
    }
    b->m.ckpt.n_shards = x->n;
    b->m.ckpt.shards = b->shard_p;
}

static void s_pack_tables(const cm_table_stats *x, s_pb_body *b)
{
    psrec__pb__table_stats__init(&b->m.tables);
    for (size_t i = 0; i < x->n; i++) {
        const cm_table_stat *s = &x->table[i];
        Psrec__Pb__TableStat *t = &b->stat[i];
        psrec__pb__table_stat__init(t);
        t->rows = s->rows;
        t->bytes = s->bytes;
        t->evicted = s->evicted;
        t->admitted = s->admitted;
        t->pending = s->pending;
        t->dropped = s->dropped;
        b->stat_p[i] = t;
    }
    b->m.tables.n_tables = x->n;
    b->m.tables.tables = b->stat_p;
}

/* Points pb's oneof at h's body, converted into *b. CM_EINVAL when the
 * body is not one of cm_body_kind or holds too many tables. */
static int s_body_pack(const cm_hdr *h, Psrec__Pb__Header *pb, s_pb_body *b)
{
    switch (h->body) {
    case CM_BODY_NONE:
        return 0;
    case CM_BODY_HELLO:
        s_pack_hello(&h->hello, &b->m.hello);
        pb->hello = &b->m.hello;
        pb->body_case = PSREC__PB__HEADER__BODY_HELLO;
        return 0;
    case CM_BODY_PLAN:
        psrec__pb__plan__init(&b->m.plan);
        b->m.plan.mean = h->plan.mean;
        b->m.plan.clip_lo = h->plan.clip_lo;
        b->m.plan.clip_hi = h->plan.clip_hi;
        b->m.plan.blocks_per_worker = h->plan.blocks_per_worker;
        pb->plan = &b->m.plan;
        pb->body_case = PSREC__PB__HEADER__BODY_PLAN;
        return 0;
    case CM_BODY_PROGRESS:
        psrec__pb__progress__init(&b->m.progress);
        b->m.progress.done = h->progress.done;
        b->m.progress.loss = h->progress.loss;
        pb->progress = &b->m.progress;
        pb->body_case = PSREC__PB__HEADER__BODY_PROGRESS;
        return 0;
    case CM_BODY_EPOCH:
        psrec__pb__epoch_done__init(&b->m.epoch_done);
        b->m.epoch_done.loss = h->epoch_done.loss;
        b->m.epoch_done.n = h->epoch_done.n;
        b->m.epoch_done.seconds = h->epoch_done.seconds;
        b->m.epoch_done.max_lead = h->epoch_done.max_lead;
        pb->epoch_done = &b->m.epoch_done;
        pb->body_case = PSREC__PB__HEADER__BODY_EPOCH_DONE;
        return 0;
    case CM_BODY_EVAL:
        s_pack_eval(&h->eval_done, &b->m.eval_done);
        pb->eval_done = &b->m.eval_done;
        pb->body_case = PSREC__PB__HEADER__BODY_EVAL_DONE;
        return 0;
    case CM_BODY_RANKING:
        s_pack_ranking(&h->ranking, &b->m.ranking);
        pb->ranking_done = &b->m.ranking;
        pb->body_case = PSREC__PB__HEADER__BODY_RANKING_DONE;
        return 0;
    case CM_BODY_PLACE:
        s_pack_place(&h->place, &b->m.place);
        pb->place = &b->m.place;
        pb->body_case = PSREC__PB__HEADER__BODY_PLACE;
        return 0;
    case CM_BODY_PULLED:
        psrec__pb__pull_reply__init(&b->m.pulled);
        b->m.pulled.missing = h->pulled.missing;
        pb->pulled = &b->m.pulled;
        pb->body_case = PSREC__PB__HEADER__BODY_PULLED;
        return 0;
    case CM_BODY_CKPT:
        if (h->ckpt.n > CM_CTL_MAX_TABLES)
            return CM_EINVAL;
        s_pack_ckpt(&h->ckpt, b);
        pb->ckpt = &b->m.ckpt;
        pb->body_case = PSREC__PB__HEADER__BODY_CKPT;
        return 0;
    case CM_BODY_LOADED:
        psrec__pb__load_reply__init(&b->m.loaded);
        b->m.loaded.rows = h->loaded.rows;
        pb->loaded = &b->m.loaded;
        pb->body_case = PSREC__PB__HEADER__BODY_LOADED;
        return 0;
    case CM_BODY_TABLES:
        if (h->tables.n > CM_CTL_MAX_TABLES)
            return CM_EINVAL;
        s_pack_tables(&h->tables, b);
        pb->tables = &b->m.tables;
        pb->body_case = PSREC__PB__HEADER__BODY_TABLES;
        return 0;
    }
    return CM_EINVAL;
}

/* A malloc'ed copy of n elements of `size` bytes (NULL for none): *out. */
static int s_dup(const void *src, size_t n, size_t size, void **out)
{
    *out = NULL;
    if (n == 0)
        return 0;
    if (!(*out = malloc(n * size)))
        return CM_ENOMEM;
    memcpy(*out, src, n * size);
    return 0;
}

static int s_unpack_hello(const Psrec__Pb__Hello *o, cm_hello *x)
{
    x->n_train = o->n_train;
    x->label_sum = o->label_sum;
    x->label_min = o->label_min;
    x->label_max = o->label_max;
    x->n_test = o->n_test;
    x->bad_train = o->bad_train;
    x->bad_test = o->bad_test;
    x->noise_floor = o->noise_floor;
    x->task = o->task;
    x->raw_train = o->raw_train;
    x->raw_test = o->raw_test;
    x->n_valid = o->n_valid;
    if (s_dup(o->slot_load, o->n_slot_load, sizeof(float), (void **)&x->slot_load) != 0)
        return CM_ENOMEM;
    x->n_slot_load = o->n_slot_load;
    return 0;
}

static int s_unpack_eval(const Psrec__Pb__EvalDone *o, cm_eval_done *x)
{
    x->test_sq = o->test_sq;
    x->test_abs = o->test_abs;
    x->test_n = o->test_n;
    x->unseen = o->unseen;
    x->test_logloss = o->test_logloss;
    x->valid_sq = o->valid_sq;
    x->valid_abs = o->valid_abs;
    x->valid_n = o->valid_n;
    x->valid_logloss = o->valid_logloss;
    if (s_dup(o->auc_pos, o->n_auc_pos, sizeof(uint64_t), (void **)&x->auc_pos) != 0 ||
        s_dup(o->auc_neg, o->n_auc_neg, sizeof(uint64_t), (void **)&x->auc_neg) != 0)
        return CM_ENOMEM;
    x->n_auc = o->n_auc_pos;
    return 0;
}

static void s_unpack_tables(const Psrec__Pb__TableStats *o, cm_table_stats *x)
{
    x->n = o->n_tables;
    for (size_t i = 0; i < o->n_tables; i++) {
        const Psrec__Pb__TableStat *t = o->tables[i];
        x->table[i] = (cm_table_stat){t->rows, t->bytes, t->evicted, t->admitted, t->pending,
                                      t->dropped};
    }
}

/* Fills h's body from pb's oneof. CM_EPROTO when it cannot be one,
 * CM_ENOMEM (without a message) when its arrays cannot be copied; the
 * caller frees what was copied either way. */
static int s_body_unpack(const Psrec__Pb__Header *pb, cm_hdr *h, cm_error *err)
{
    switch (pb->body_case) {
    case PSREC__PB__HEADER__BODY_HELLO:
        h->body = CM_BODY_HELLO;
        return s_unpack_hello(pb->hello, &h->hello);
    case PSREC__PB__HEADER__BODY_PLAN:
        h->body = CM_BODY_PLAN;
        h->plan = (cm_plan){pb->plan->mean, pb->plan->clip_lo, pb->plan->clip_hi,
                            pb->plan->blocks_per_worker};
        return 0;
    case PSREC__PB__HEADER__BODY_PROGRESS:
        h->body = CM_BODY_PROGRESS;
        h->progress = (cm_progress){pb->progress->done, pb->progress->loss};
        return 0;
    case PSREC__PB__HEADER__BODY_EPOCH_DONE: {
        const Psrec__Pb__EpochDone *o = pb->epoch_done;
        h->body = CM_BODY_EPOCH;
        h->epoch_done = (cm_epoch_done){o->loss, o->n, o->seconds, o->max_lead};
        return 0;
    }
    case PSREC__PB__HEADER__BODY_EVAL_DONE:
        if (pb->eval_done->n_auc_pos != pb->eval_done->n_auc_neg)
            return cm_error_set(err, CM_EPROTO, "evaluation with AUC histograms of %zu and "
                                "%zu bins", pb->eval_done->n_auc_pos, pb->eval_done->n_auc_neg);
        h->body = CM_BODY_EVAL;
        return s_unpack_eval(pb->eval_done, &h->eval_done);
    case PSREC__PB__HEADER__BODY_RANKING_DONE: {
        const Psrec__Pb__RankingDone *o = pb->ranking_done;
        h->body = CM_BODY_RANKING;
        h->ranking = (cm_ranking_done){o->recall, o->ndcg, o->hit, o->users, o->pop_recall,
                                       o->pop_ndcg, o->pop_hit, o->cold_users, o->cold_items,
                                       o->positives, o->repeats};
        return 0;
    }
    case PSREC__PB__HEADER__BODY_PLACE: {
        const Psrec__Pb__PlaceReply *o = pb->place;
        h->body = CM_BODY_PLACE;
        h->place = (cm_place_reply){o->pid, o->fd, o->token, o->header, o->stride, o->bytes};
        return 0;
    }
    case PSREC__PB__HEADER__BODY_PULLED:
        h->body = CM_BODY_PULLED;
        h->pulled.missing = pb->pulled->missing;
        return 0;
    case PSREC__PB__HEADER__BODY_CKPT:
        if (pb->ckpt->n_shards > CM_CTL_MAX_TABLES)
            return cm_error_set(err, CM_EPROTO, "checkpoint reply of %zu tables, at most %d",
                                pb->ckpt->n_shards, CM_CTL_MAX_TABLES);
        h->body = CM_BODY_CKPT;
        h->ckpt.n = pb->ckpt->n_shards;
        for (size_t i = 0; i < pb->ckpt->n_shards; i++) {
            const Psrec__Pb__CkptShard *o = pb->ckpt->shards[i];
            h->ckpt.shard[i].size = o->size;
            h->ckpt.shard[i].checksum = o->checksum;
            h->ckpt.shard[i].rows = o->rows;
        }
        return 0;
    case PSREC__PB__HEADER__BODY_LOADED:
        h->body = CM_BODY_LOADED;
        h->loaded.rows = pb->loaded->rows;
        return 0;
    case PSREC__PB__HEADER__BODY_TABLES:
        if (pb->tables->n_tables > CM_CTL_MAX_TABLES)
            return cm_error_set(err, CM_EPROTO, "table stats of %zu tables, at most %d",
                                pb->tables->n_tables, CM_CTL_MAX_TABLES);
        h->body = CM_BODY_TABLES;
        s_unpack_tables(pb->tables, &h->tables);
        return 0;
    default:
        return 0; /* none, or a kind this build does not know: no body */
    }
}

void cm_codec_hdr_free(cm_hdr *h)
{
    if (!h)
        return;
    free(h->slots);
    h->slots = NULL;
    h->n_slots = 0;
    if (h->body == CM_BODY_HELLO) {
        free(h->hello.slot_load);
        h->hello.slot_load = NULL;
        h->hello.n_slot_load = 0;
    } else if (h->body == CM_BODY_EVAL) {
        free(h->eval_done.auc_pos);
        free(h->eval_done.auc_neg);
        h->eval_done.auc_pos = h->eval_done.auc_neg = NULL;
        h->eval_done.n_auc = 0;
    }
}

int cm_codec_hdr_pack(const cm_hdr *h, uint8_t **out, size_t *len)
{
    Psrec__Pb__Header pb = PSREC__PB__HEADER__INIT;
    s_pb_body body;
    if (s_body_pack(h, &pb, &body) != 0)
        return CM_EINVAL;
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
    if (rc == 0 && (rc = s_body_unpack(pb, h, err)) == CM_ENOMEM)
        cm_error_set(err, rc, "out of memory for a %s body", cm_op_name(h->op));
out:
    psrec__pb__header__free_unpacked(pb, NULL);
    if (rc != 0)
        cm_codec_hdr_free(h);
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

/* The tables of a decoded manifest into m->tables (m->n_tables counts the
 * ones filled, for cm_manifest_free). */
static int s_manifest_tables(const Psrec__Pb__Manifest *pb, cm_manifest *m, cm_error *err)
{
    if (pb->n_tables) {
        m->tables = calloc(pb->n_tables, sizeof *m->tables);
        if (!m->tables)
            return cm_error_set(err, CM_ENOMEM, "manifest: out of memory for %zu tables",
                                pb->n_tables);
    }
    for (size_t i = 0; i < pb->n_tables; i++) {
        const Psrec__Pb__CkptTable *p = pb->tables[i];
        cm_ckpt_table *t = &m->tables[i];
        m->n_tables = i + 1;
        int rc;
        if ((rc = s_copy_name(t->name, sizeof t->name, p->name, "table name", i, err)) != 0 ||
            (rc = s_fits_int(p->dim, "dim", i, err)) != 0 ||
            (rc = s_fits_int(p->row_floats, "row_floats", i, err)) != 0 ||
            (rc = s_fits_int(p->zero_prefix, "zero_prefix", i, err)) != 0)
            return rc;
        t->dim = (int)p->dim;
        t->row_floats = (int)p->row_floats;
        t->optimizer = p->optimizer;
        t->lr = p->lr;
        t->seed = p->seed;
        t->zero_prefix = (int)p->zero_prefix;
        t->init_std = p->init_std;
    }
    return 0;
}

/* n slot numbers copied into *dst (malloc'd; NULL when n is 0). */
static int s_copy_slots(uint32_t **dst, const uint32_t *src, size_t n, cm_error *err)
{
    if (s_dup(src, n, sizeof *src, (void **)dst) != 0)
        return cm_error_set(err, CM_ENOMEM, "manifest: out of memory for %zu slots", n);
    return 0;
}

/* The shard files of a decoded manifest into m->files (m->n_files counts
 * the ones filled). */
static int s_manifest_files(const Psrec__Pb__Manifest *pb, cm_manifest *m, cm_error *err)
{
    if (pb->n_files) {
        m->files = calloc(pb->n_files, sizeof *m->files);
        if (!m->files)
            return cm_error_set(err, CM_ENOMEM, "manifest: out of memory for %zu files",
                                pb->n_files);
    }
    for (size_t i = 0; i < pb->n_files; i++) {
        const Psrec__Pb__CkptFile *p = pb->files[i];
        cm_ckpt_file *f = &m->files[i];
        m->n_files = i + 1;
        int rc = s_copy_name(f->name, sizeof f->name, p->name, "file name", i, err);
        if (rc != 0)
            return rc;
        f->table = p->table;
        f->size = p->size;
        f->checksum = p->checksum;
        f->rows = p->rows;
        f->writer = p->writer;
        if ((rc = s_copy_slots(&f->slots, p->slots, p->n_slots, err)) != 0)
            return rc;
        f->n_slots = p->n_slots;
    }
    return 0;
}

/* A decoded manifest's plain numbers: the model's statistics and the
 * validation record. */
static void s_manifest_numbers(const Psrec__Pb__Manifest *pb, cm_manifest *m)
{
    m->version = pb->version;
    m->n_slots = pb->n_slots;
    m->epoch = pb->epoch;
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
}

/* Everything that a manifest owns: the job text, the model name, the
 * tables, the slot map and the files. */
static int s_manifest_owned(const Psrec__Pb__Manifest *pb, cm_manifest *m, cm_error *err)
{
    if (pb->n_slot_map != 0 && pb->n_slot_map != pb->n_slots)
        return cm_error_set(err, CM_EPROTO, "manifest: slot map has %zu entries, n_slots is %u",
                            pb->n_slot_map, pb->n_slots);
    m->job = strdup(pb->job ? pb->job : "");
    if (!m->job)
        return cm_error_set(err, CM_ENOMEM, "manifest: out of memory");
    int rc;
    if ((rc = s_copy_name(m->model, sizeof m->model, pb->model, "model name", 0, err)) != 0 ||
        (rc = s_manifest_tables(pb, m, err)) != 0)
        return rc;
    if ((rc = s_copy_slots(&m->slot_map, pb->slot_map, pb->n_slot_map, err)) != 0)
        return rc;
    return s_manifest_files(pb, m, err);
}

int cm_codec_manifest_unpack(const void *buf, size_t len, cm_manifest *m, cm_error *err)
{
    memset(m, 0, sizeof *m);
    Psrec__Pb__Manifest *pb = psrec__pb__manifest__unpack(NULL, len, buf);
    if (!pb)
        return cm_error_set(err, CM_EPROTO, "manifest of %zu bytes does not decode", len);
    int rc = s_manifest_owned(pb, m, err);
    if (rc == 0)
        s_manifest_numbers(pb, m);
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
