/* Tests for common/codec: the control bodies of the message header, the
 * checkpoint and serving messages: round trips (empty, small and large
 * repeated fields), and garbage, truncated and bit-flipped buffers, which
 * must decode to CM_EPROTO or to something harmless, never crash or leak. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/ckpt.h"
#include "common/codec.h"

/* A deterministic byte stream for the garbage tests. */
static uint64_t s_next(uint64_t *s)
{
    uint64_t x = (*s += 0x9e3779b97f4a7c15ULL);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* ------------------------------------------------------------------------
 * Shard header
 * ------------------------------------------------------------------------ */

Test(codec, shard_round_trip)
{
    cm_shard_hdr h = {.version = 1, .table = 3, .dim = 16, .row_floats = 48,
                      .n_rows = 123456789012ULL, .key_offset = 64, .row_offset = 987654321024ULL};
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_shard_pack(&h, &buf, &len), 0);
    cm_shard_hdr g;
    cm_error err = {0};
    cr_assert_eq(cm_codec_shard_unpack(buf, len, &g, &err), 0, "%s", err.msg);
    cr_assert_eq(memcmp(&h, &g, sizeof h), 0);
    free(buf);
}

Test(codec, shard_empty)
{
    cm_shard_hdr h = {0};
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_shard_pack(&h, &buf, &len), 0);
    cr_assert_eq(len, 0);
    cm_shard_hdr g;
    memset(&g, 0xab, sizeof g);
    cr_assert_eq(cm_codec_shard_unpack(buf, len, &g, NULL), 0);
    cr_assert_eq(memcmp(&h, &g, sizeof h), 0);
    free(buf);
}

/* ------------------------------------------------------------------------
 * Manifest
 * ------------------------------------------------------------------------ */

/* A manifest with every field set; n_files files, each with slots. */
static void s_manifest_fill(cm_manifest *m, size_t n_files, uint32_t n_slots)
{
    memset(m, 0, sizeof *m);
    m->version = 1;
    m->job = strdup("[job]\nmodel = mf\nepochs = 10\n");
    snprintf(m->model, sizeof m->model, "mf");
    m->n_tables = 2;
    m->tables = calloc(2, sizeof *m->tables);
    for (size_t t = 0; t < 2; t++) {
        cm_ckpt_table *tb = &m->tables[t];
        snprintf(tb->name, sizeof tb->name, t ? "item" : "user");
        tb->dim = 8 + (int)t;
        tb->row_floats = 2 * tb->dim;
        tb->optimizer = 2;
        tb->zero_prefix = (int)t;
        tb->lr = 0.05f;
        tb->init_std = 0.01f;
        tb->seed = 0x1234567890abcdefULL + t;
    }
    m->n_slots = n_slots;
    m->slot_map = n_slots ? malloc(n_slots * sizeof *m->slot_map) : NULL;
    for (uint32_t k = 0; k < n_slots; k++)
        m->slot_map[k] = k % 3;
    m->epoch = 7;
    m->n_files = n_files;
    m->files = n_files ? calloc(n_files, sizeof *m->files) : NULL;
    for (size_t f = 0; f < n_files; f++) {
        cm_ckpt_file *cf = &m->files[f];
        snprintf(cf->name, sizeof cf->name, "t%zu-s%zu.rows", f % 2, f / 2);
        cf->table = (uint32_t)(f % 2);
        cf->size = 4096 + f;
        cf->checksum = 0xfedcba9876543210ULL ^ f;
        cf->rows = 1000 + f;
        cf->writer = (int)(f / 2) + 1;
        cf->n_slots = f % 3 == 2 ? 0 : n_slots / 3 + 1;
        cf->slots = cf->n_slots ? malloc(cf->n_slots * sizeof *cf->slots) : NULL;
        for (size_t k = 0; k < cf->n_slots; k++)
            cf->slots[k] = (uint32_t)(k * 3 + f % 3) % (n_slots ? n_slots : 1);
    }
    m->global_mean = 3.58;
    m->clip_lo = 1.0f;
    m->clip_hi = 5.0f;
    m->train_rmse = 0.81;
    m->test_rmse = 0.86;
    m->test_mae = 0.67;
    m->created_unix = 1700000000;
    m->n_servers = 3;
    m->n_workers = 4;
}

static void s_manifest_eq(const cm_manifest *a, const cm_manifest *b)
{
    cr_assert_eq(a->version, b->version);
    cr_assert_str_eq(a->job ? a->job : "", b->job);
    cr_assert_str_eq(a->model, b->model);
    cr_assert_eq(a->n_tables, b->n_tables);
    for (size_t t = 0; t < a->n_tables; t++) {
        const cm_ckpt_table *x = &a->tables[t], *y = &b->tables[t];
        cr_assert_str_eq(x->name, y->name);
        cr_assert_eq(x->dim, y->dim);
        cr_assert_eq(x->row_floats, y->row_floats);
        cr_assert_eq(x->optimizer, y->optimizer);
        cr_assert_eq(x->zero_prefix, y->zero_prefix);
        cr_assert_eq(x->lr, y->lr);
        cr_assert_eq(x->init_std, y->init_std);
        cr_assert_eq(x->seed, y->seed);
    }
    cr_assert_eq(a->n_slots, b->n_slots);
    if (a->n_slots)
        cr_assert_eq(memcmp(a->slot_map, b->slot_map, a->n_slots * sizeof *a->slot_map), 0);
    cr_assert_eq(a->epoch, b->epoch);
    cr_assert_eq(a->n_files, b->n_files);
    for (size_t f = 0; f < a->n_files; f++) {
        const cm_ckpt_file *x = &a->files[f], *y = &b->files[f];
        cr_assert_str_eq(x->name, y->name);
        cr_assert_eq(x->table, y->table);
        cr_assert_eq(x->size, y->size);
        cr_assert_eq(x->checksum, y->checksum);
        cr_assert_eq(x->rows, y->rows);
        cr_assert_eq(x->writer, y->writer);
        cr_assert_eq(x->n_slots, y->n_slots);
        if (x->n_slots)
            cr_assert_eq(memcmp(x->slots, y->slots, x->n_slots * sizeof *x->slots), 0);
        else
            cr_assert_null(y->slots);
    }
    cr_assert_eq(a->global_mean, b->global_mean);
    cr_assert_eq(a->clip_lo, b->clip_lo);
    cr_assert_eq(a->clip_hi, b->clip_hi);
    cr_assert_eq(a->train_rmse, b->train_rmse);
    cr_assert_eq(a->test_rmse, b->test_rmse);
    cr_assert_eq(a->test_mae, b->test_mae);
    cr_assert_eq(a->created_unix, b->created_unix);
    cr_assert_eq(a->n_servers, b->n_servers);
    cr_assert_eq(a->n_workers, b->n_workers);
}

static void s_manifest_round_trip(size_t n_files, uint32_t n_slots)
{
    cm_manifest m, g;
    s_manifest_fill(&m, n_files, n_slots);
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_manifest_pack(&m, &buf, &len), 0);
    cm_error err = {0};
    cr_assert_eq(cm_codec_manifest_unpack(buf, len, &g, &err), 0, "%s", err.msg);
    s_manifest_eq(&m, &g);
    free(buf);
    cm_manifest_free(&m);
    cm_manifest_free(&g);
}

Test(codec, manifest_round_trip)
{
    s_manifest_round_trip(6, 256);
}

Test(codec, manifest_round_trip_no_files_no_slots)
{
    s_manifest_round_trip(0, 0);
}

Test(codec, manifest_round_trip_large)
{
    s_manifest_round_trip(2000, 1 << 16);
}

Test(codec, manifest_empty)
{
    cm_manifest m = {0}, g;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_manifest_pack(&m, &buf, &len), 0);
    cr_assert_eq(cm_codec_manifest_unpack(buf, len, &g, NULL), 0);
    cr_assert_str_eq(g.job, "");
    cr_assert_eq(g.n_tables, 0);
    cr_assert_null(g.tables);
    cr_assert_null(g.files);
    cr_assert_null(g.slot_map);
    free(buf);
    cm_manifest_free(&g);
}

Test(codec, manifest_long_job_text)
{
    cm_manifest m;
    s_manifest_fill(&m, 1, 4);
    char *big = malloc(1 << 20);
    memset(big, 'x', (1 << 20) - 1);
    big[(1 << 20) - 1] = '\0';
    free(m.job);
    m.job = big; /* job text has no length limit */
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_manifest_pack(&m, &buf, &len), 0);
    cm_manifest g;
    cr_assert_eq(cm_codec_manifest_unpack(buf, len, &g, NULL), 0);
    cr_assert_str_eq(g.job, big);
    cm_manifest_free(&g);
    free(buf);
    cm_manifest_free(&m);
}

/* A name longer than its fixed buffer is refused, not truncated: a
 * truncated file name would point at another file. Built by hand since the
 * plain structs cannot hold such names. */
Test(codec, manifest_refuses_names_that_do_not_fit)
{
    uint8_t buf[512];
    size_t n = 0;
    cm_manifest g;
    cm_error err = {0};

    /* field 3 (model), 40 bytes: model[] holds 31 */
    buf[n++] = 0x1a;
    buf[n++] = 40;
    memset(buf + n, 'm', 40);
    n += 40;
    cr_assert_eq(cm_codec_manifest_unpack(buf, n, &g, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "model name"), "%s", err.msg);
    cr_assert_null(g.job);

    /* field 4 (tables) holding field 1 (name), 100 bytes: name[] holds 63 */
    n = 0;
    buf[n++] = 0x22;
    buf[n++] = 102;
    buf[n++] = 0x0a;
    buf[n++] = 100;
    memset(buf + n, 't', 100);
    n += 100;
    err = (cm_error){0};
    cr_assert_eq(cm_codec_manifest_unpack(buf, n, &g, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "table name 0"), "%s", err.msg);
    cr_assert_null(g.tables);

    /* field 8 (files) holding field 1 (name), 300 bytes: name[] holds 255 */
    n = 0;
    buf[n++] = 0x42;
    buf[n++] = 0x80 | ((303 - 0) & 0x7f); /* 303 = 3 + 300, as a varint */
    buf[n++] = 303 >> 7;
    buf[n++] = 0x0a;
    buf[n++] = 0x80 | (300 & 0x7f);
    buf[n++] = 300 >> 7;
    memset(buf + n, 'f', 300);
    n += 300;
    err = (cm_error){0};
    cr_assert_eq(cm_codec_manifest_unpack(buf, n, &g, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "file name 0"), "%s", err.msg);
    cr_assert_null(g.files);
}

Test(codec, manifest_refuses_dims_beyond_int)
{
    /* field 4 (tables) holding field 2 (dim) = 2^31 */
    uint8_t buf[] = {0x22, 6, 0x10, 0x80, 0x80, 0x80, 0x80, 0x08};
    cm_manifest g;
    cm_error err = {0};
    cr_assert_eq(cm_codec_manifest_unpack(buf, sizeof buf, &g, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "dim of table 0"), "%s", err.msg);
}

Test(codec, manifest_slot_map_length_mismatch)
{
    /* n_slots = 4 (field 5) but a slot map (field 6, packed) of 2 entries */
    uint8_t buf[] = {0x28, 4, 0x32, 2, 0, 1};
    cm_manifest g;
    cm_error err = {0};
    cr_assert_eq(cm_codec_manifest_unpack(buf, sizeof buf, &g, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "slot map has 2 entries, n_slots is 4"), "%s", err.msg);
    /* no map at all with n_slots set is accepted: the map is optional */
    uint8_t nomap[] = {0x28, 4};
    cr_assert_eq(cm_codec_manifest_unpack(nomap, sizeof nomap, &g, &err), 0);
    cr_assert_eq(g.n_slots, 4);
    cr_assert_null(g.slot_map);
    cm_manifest_free(&g);
}

/* ------------------------------------------------------------------------
 * Recommendation request and reply
 * ------------------------------------------------------------------------ */

static void s_request_round_trip(size_t n)
{
    cm_rec_request r = {.user = 0xdeadbeefcafeULL, .k = 25, .n_exclude = n};
    r.exclude = n ? malloc(n * sizeof *r.exclude) : NULL;
    for (size_t i = 0; i < n; i++)
        r.exclude[i] = i * 0x10001ULL + (i & 1 ? UINT64_MAX / 3 : 0);
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_rec_request_pack(&r, &buf, &len), 0);
    cm_rec_request g;
    cm_error err = {0};
    cr_assert_eq(cm_codec_rec_request_unpack(buf, len, &g, &err), 0, "%s", err.msg);
    cr_assert_eq(g.user, r.user);
    cr_assert_eq(g.k, r.k);
    cr_assert_eq(g.n_exclude, n);
    if (n)
        cr_assert_eq(memcmp(g.exclude, r.exclude, n * sizeof *r.exclude), 0);
    else
        cr_assert_null(g.exclude);
    free(g.exclude);
    free(r.exclude);
    free(buf);
}

Test(codec, rec_request_round_trip)
{
    s_request_round_trip(0);
    s_request_round_trip(1);
    s_request_round_trip(17);
    s_request_round_trip(200000);
}

Test(codec, rec_request_zero)
{
    cm_rec_request r = {0}, g;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_rec_request_pack(&r, &buf, &len), 0);
    cr_assert_eq(len, 0);
    cr_assert_eq(cm_codec_rec_request_unpack(buf, len, &g, NULL), 0);
    cr_assert_eq(g.user, 0);
    cr_assert_eq(g.k, 0);
    cr_assert_eq(g.n_exclude, 0);
    free(buf);
}

static void s_reply_round_trip(size_t n, int status, const char *error, int fallback)
{
    cm_rec_reply r = {.status = status, .n = n, .fallback = fallback, .model_version = 42 + n};
    snprintf(r.error, sizeof r.error, "%s", error);
    r.items = n ? malloc(n * sizeof *r.items) : NULL;
    r.scores = n ? malloc(n * sizeof *r.scores) : NULL;
    for (size_t i = 0; i < n; i++) {
        r.items[i] = UINT64_MAX - i * 7919;
        r.scores[i] = 5.0f - (float)i * 0.001f;
    }
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_rec_reply_pack(&r, &buf, &len), 0);
    cm_rec_reply g;
    cm_error err = {0};
    cr_assert_eq(cm_codec_rec_reply_unpack(buf, len, &g, &err), 0, "%s", err.msg);
    cr_assert_eq(g.status, status);
    cr_assert_str_eq(g.error, error);
    cr_assert_eq(g.n, n);
    cr_assert_eq(g.fallback, fallback);
    cr_assert_eq(g.model_version, r.model_version);
    if (n) {
        cr_assert_eq(memcmp(g.items, r.items, n * sizeof *r.items), 0);
        cr_assert_eq(memcmp(g.scores, r.scores, n * sizeof *r.scores), 0);
    } else {
        cr_assert_null(g.items);
        cr_assert_null(g.scores);
    }
    free(g.items);
    free(g.scores);
    free(r.items);
    free(r.scores);
    free(buf);
}

Test(codec, rec_reply_round_trip)
{
    s_reply_round_trip(0, 0, "", 0);
    s_reply_round_trip(1, 0, "", 1);
    s_reply_round_trip(10, 0, "", 0);
    s_reply_round_trip(100000, 0, "", 1);
    s_reply_round_trip(0, CM_ENOTFOUND, "user 17 is not in the model", 0);
}

Test(codec, rec_reply_long_error_is_truncated_not_overflowed)
{
    cm_rec_reply r = {.status = CM_EINVAL};
    memset(r.error, 'e', sizeof r.error - 1);
    r.error[sizeof r.error - 1] = '\0';
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_rec_reply_pack(&r, &buf, &len), 0);
    cm_rec_reply g;
    cr_assert_eq(cm_codec_rec_reply_unpack(buf, len, &g, NULL), 0);
    cr_assert_str_eq(g.error, r.error);
    free(buf);
}

Test(codec, rec_reply_items_without_scores_is_eproto)
{
    /* a request with exclusions has field 3 as packed u64s, like a reply's
     * items: decoded as a reply it has items but no scores */
    uint64_t ex[3] = {1, 2, 3};
    cm_rec_request q = {.user = 0, .k = 0, .n_exclude = 3, .exclude = ex};
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_rec_request_pack(&q, &buf, &len), 0);
    cm_rec_reply g;
    cm_error err = {0};
    cr_assert_eq(cm_codec_rec_reply_unpack(buf, len, &g, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "3 items but 0 scores"), "%s", err.msg);
    cr_assert_null(g.items);
    cr_assert_null(g.scores);
    free(buf);
}

/* ------------------------------------------------------------------------
 * Garbage in: CM_EPROTO or a harmless decode, never a crash
 * ------------------------------------------------------------------------ */

/* Decodes buf as every new message type; each either fails with CM_EPROTO
 * and a message or succeeds, and whatever it returns is freed. Returns how
 * many decoders refused. */
static int s_decode_all(const uint8_t *buf, size_t len)
{
    int refused = 0, rc;
    cm_error err;

    cm_shard_hdr sh;
    err = (cm_error){0};
    rc = cm_codec_shard_unpack(buf, len, &sh, &err);
    cr_assert(rc == 0 || (rc == CM_EPROTO && err.msg[0]), "rc %d", rc);
    refused += rc != 0;

    cm_manifest m;
    err = (cm_error){0};
    rc = cm_codec_manifest_unpack(buf, len, &m, &err);
    cr_assert(rc == 0 || (rc == CM_EPROTO && err.msg[0]), "rc %d", rc);
    if (rc != 0)
        cr_assert(m.job == NULL && m.tables == NULL && m.files == NULL && m.slot_map == NULL);
    refused += rc != 0;
    cm_manifest_free(&m);

    cm_rec_request q;
    err = (cm_error){0};
    rc = cm_codec_rec_request_unpack(buf, len, &q, &err);
    cr_assert(rc == 0 || (rc == CM_EPROTO && err.msg[0]), "rc %d", rc);
    refused += rc != 0;
    free(q.exclude);

    cm_rec_reply r;
    err = (cm_error){0};
    rc = cm_codec_rec_reply_unpack(buf, len, &r, &err);
    cr_assert(rc == 0 || (rc == CM_EPROTO && err.msg[0]), "rc %d", rc);
    refused += rc != 0;
    free(r.items);
    free(r.scores);
    return refused;
}

Test(codec, garbage_is_eproto)
{
    /* 0xff...: a varint that never ends */
    uint8_t ff[64];
    memset(ff, 0xff, sizeof ff);
    cr_assert_eq(s_decode_all(ff, sizeof ff), 4);
    /* a length-delimited field longer than the buffer */
    uint8_t longer[] = {0x12, 0x7f, 'a', 'b'};
    cr_assert_eq(s_decode_all(longer, sizeof longer), 4);
    /* wire type 7 does not exist */
    uint8_t badwire[] = {0x0f, 0x01};
    cr_assert_eq(s_decode_all(badwire, sizeof badwire), 4);
}

Test(codec, random_garbage_never_crashes)
{
    uint64_t seed = 12345;
    uint8_t buf[512];
    int refused = 0;
    for (int i = 0; i < 20000; i++) {
        size_t len = s_next(&seed) % sizeof buf;
        for (size_t j = 0; j < len; j++)
            buf[j] = (uint8_t)s_next(&seed);
        refused += s_decode_all(buf, len);
    }
    cr_assert_gt(refused, 0);
}

/* Every truncation and single-byte corruption of real messages. */
Test(codec, truncated_and_flipped_messages_never_crash)
{
    uint8_t *bufs[4];
    size_t lens[4];
    cm_manifest m;
    s_manifest_fill(&m, 5, 16);
    cr_assert_eq(cm_codec_manifest_pack(&m, &bufs[0], &lens[0]), 0);
    cm_manifest_free(&m);
    cm_shard_hdr h = {1, 2, 8, 16, 1000, 64, 8064};
    cr_assert_eq(cm_codec_shard_pack(&h, &bufs[1], &lens[1]), 0);
    uint64_t ex[5] = {5, 4, 3, 2, 1};
    cm_rec_request q = {.user = 77, .k = 10, .n_exclude = 5, .exclude = ex};
    cr_assert_eq(cm_codec_rec_request_pack(&q, &bufs[2], &lens[2]), 0);
    uint64_t items[3] = {9, 8, 7};
    float scores[3] = {3, 2, 1};
    cm_rec_reply r = {.status = 0, .n = 3, .items = items, .scores = scores, .fallback = 1};
    snprintf(r.error, sizeof r.error, "fine");
    cr_assert_eq(cm_codec_rec_reply_pack(&r, &bufs[3], &lens[3]), 0);

    uint64_t seed = 99;
    for (int b = 0; b < 4; b++) {
        uint8_t *copy = malloc(lens[b] + 1);
        for (size_t cut = 0; cut < lens[b]; cut++) {
            memcpy(copy, bufs[b], cut);
            s_decode_all(copy, cut);
        }
        for (size_t pos = 0; pos < lens[b]; pos++) {
            for (int k = 0; k < 4; k++) {
                memcpy(copy, bufs[b], lens[b]);
                copy[pos] ^= (uint8_t)(k == 0 ? 0xff : (1u << (s_next(&seed) % 8)));
                s_decode_all(copy, lens[b]);
            }
        }
        free(copy);
        free(bufs[b]);
    }
}

/* ------------------------------------------------------------------------
 * Control bodies (common/ctl.h): every one packs and unpacks to itself
 * ------------------------------------------------------------------------ */

static float s_load[5] = {0.5f, 0.f, 3.25f, 1e30f, 7.f};
static uint64_t s_pos[4] = {0, 1, UINT64_MAX, 12345678901234ULL};
static uint64_t s_neg[4] = {9, 0, 0, 1ULL << 60};

/* A header of op with a body of kind, every field set to something that
 * does not survive a wrong conversion (distinct values, large integers,
 * negative and fractional doubles). */
static cm_hdr s_body_hdr(int kind)
{
    cm_hdr h = cm_hdr_make(CM_OP_REPLY);
    h.epoch = 7;
    h.sender = 3;
    h.body = kind;
    switch (kind) {
    case CM_BODY_HELLO:
        h.op = CM_OP_HELLO;
        h.hello = (cm_hello){.n_train = (1ULL << 53) + 1, .label_sum = -12.5,
                             .label_min = -0.25, .label_max = 4.75, .n_test = 11,
                             .bad_train = 2, .bad_test = 3, .noise_floor = 0.8125,
                             .task = -1, .raw_train = 17, .raw_test = 19, .n_valid = 23,
                             .n_slot_load = 5, .slot_load = s_load};
        break;
    case CM_BODY_PLAN:
        h.op = CM_OP_PLAN;
        h.plan = (cm_plan){3.5807, 1.f, 5.f, 4};
        break;
    case CM_BODY_PROGRESS:
        h.op = CM_OP_PROGRESS;
        h.progress = (cm_progress){123456789, 98.765};
        break;
    case CM_BODY_EPOCH:
        h.op = CM_OP_EPOCH_DONE;
        h.epoch_done = (cm_epoch_done){1234.5, 1ULL << 40, 0.125, -1};
        break;
    case CM_BODY_EVAL:
        h.op = CM_OP_EVAL_DONE;
        h.eval_done = (cm_eval_done){.test_sq = 1.5, .test_abs = 2.5, .test_n = 3,
                                     .unseen = 4, .test_logloss = 5.5, .valid_sq = 6.5,
                                     .valid_abs = 7.5, .valid_n = 8, .valid_logloss = 9.5,
                                     .n_auc = 4, .auc_pos = s_pos, .auc_neg = s_neg};
        break;
    case CM_BODY_RANKING:
        h.op = CM_OP_EVAL_DONE;
        h.ranking = (cm_ranking_done){0.5, 0.25, 2, 4, -0.5, 0.125, 3, 5, 6, 7, 8};
        break;
    case CM_BODY_PLACE:
        h.place = (cm_place_reply){.pid = 4321, .fd = 17, .token = 0xfedcba9876543211ULL,
                                   .header = 4096, .stride = 48, .bytes = 1ULL << 33};
        break;
    case CM_BODY_PULLED:
        h.pulled.missing = 99;
        break;
    case CM_BODY_CKPT:
        h.ckpt.n = 3;
        for (size_t i = 0; i < 3; i++) {
            h.ckpt.shard[i].size = 1000 + i;
            h.ckpt.shard[i].checksum = UINT64_MAX - i;
            h.ckpt.shard[i].rows = 10 * i;
        }
        break;
    case CM_BODY_LOADED:
        h.loaded.rows = 5555;
        break;
    case CM_BODY_TABLES:
        h.tables.n = CM_CTL_MAX_TABLES;
        for (size_t i = 0; i < CM_CTL_MAX_TABLES; i++)
            h.tables.table[i] = (cm_table_stat){i, 2 * i + 1, 3 * i, 4 * i + 7, 5 * i,
                                                (uint64_t)1 << (40 + i % 8)};
        break;
    }
    return h;
}

/* The body of a and b hold the same values (arrays compared by content). */
static void s_body_expect_eq(const cm_hdr *a, const cm_hdr *b)
{
    cr_assert_eq(b->body, a->body);
    switch (a->body) {
    case CM_BODY_HELLO: {
        const cm_hello *x = &a->hello, *y = &b->hello;
        cr_assert_eq(y->n_slot_load, x->n_slot_load);
        if (x->n_slot_load)
            cr_assert_arr_eq(y->slot_load, x->slot_load, x->n_slot_load * sizeof(float));
        cr_assert(y->n_train == x->n_train && y->label_sum == x->label_sum &&
                  y->label_min == x->label_min && y->label_max == x->label_max &&
                  y->n_test == x->n_test && y->bad_train == x->bad_train &&
                  y->bad_test == x->bad_test && y->noise_floor == x->noise_floor &&
                  y->task == x->task && y->raw_train == x->raw_train &&
                  y->raw_test == x->raw_test && y->n_valid == x->n_valid);
        break;
    }
    case CM_BODY_EVAL: {
        cm_eval_done x = a->eval_done, y = b->eval_done;
        cr_assert_eq(y.n_auc, x.n_auc);
        if (x.n_auc) {
            cr_assert_arr_eq(y.auc_pos, x.auc_pos, x.n_auc * sizeof(uint64_t));
            cr_assert_arr_eq(y.auc_neg, x.auc_neg, x.n_auc * sizeof(uint64_t));
        }
        x.auc_pos = x.auc_neg = y.auc_pos = y.auc_neg = NULL;
        cr_assert_eq(memcmp(&x, &y, sizeof x), 0);
        break;
    }
    case CM_BODY_PLAN:
        cr_assert(b->plan.mean == a->plan.mean && b->plan.clip_lo == a->plan.clip_lo &&
                  b->plan.clip_hi == a->plan.clip_hi &&
                  b->plan.blocks_per_worker == a->plan.blocks_per_worker);
        break;
    case CM_BODY_PROGRESS:
        cr_assert_eq(memcmp(&a->progress, &b->progress, sizeof a->progress), 0);
        break;
    case CM_BODY_EPOCH:
        cr_assert_eq(memcmp(&a->epoch_done, &b->epoch_done, sizeof a->epoch_done), 0);
        break;
    case CM_BODY_RANKING:
        cr_assert_eq(memcmp(&a->ranking, &b->ranking, sizeof a->ranking), 0);
        break;
    case CM_BODY_PLACE:
        cr_assert(b->place.pid == a->place.pid && b->place.fd == a->place.fd &&
                  b->place.token == a->place.token && b->place.header == a->place.header &&
                  b->place.stride == a->place.stride && b->place.bytes == a->place.bytes);
        break;
    case CM_BODY_PULLED:
        cr_assert_eq(b->pulled.missing, a->pulled.missing);
        break;
    case CM_BODY_CKPT:
        cr_assert_eq(b->ckpt.n, a->ckpt.n);
        cr_assert_eq(memcmp(a->ckpt.shard, b->ckpt.shard, a->ckpt.n * sizeof a->ckpt.shard[0]),
                     0);
        break;
    case CM_BODY_LOADED:
        cr_assert_eq(b->loaded.rows, a->loaded.rows);
        break;
    case CM_BODY_TABLES:
        cr_assert_eq(b->tables.n, a->tables.n);
        cr_assert_eq(memcmp(a->tables.table, b->tables.table,
                            a->tables.n * sizeof a->tables.table[0]), 0);
        break;
    }
}

Test(codec, every_control_body_round_trips)
{
    for (int kind = CM_BODY_NONE; kind <= CM_BODY_TABLES; kind++) {
        cm_hdr h = s_body_hdr(kind);
        uint8_t *buf;
        size_t len;
        cr_assert_eq(cm_codec_hdr_pack(&h, &buf, &len), 0, "body %d", kind);
        cm_hdr g;
        cm_error err = {0};
        cr_assert_eq(cm_codec_hdr_unpack(buf, len, &g, &err), 0, "body %d: %s", kind, err.msg);
        cr_assert_eq(g.op, h.op);
        cr_assert_eq(g.epoch, 7);
        cr_assert_eq(g.sender, 3);
        s_body_expect_eq(&h, &g);
        cm_codec_hdr_free(&g);
        cm_codec_hdr_free(&g); /* twice: nothing left to free */
        free(buf);
    }
}

/* Zero bodies travel as their kind with zero fields (proto3 writes no
 * field), and bodies without arrays come back without them. */
Test(codec, zero_bodies_keep_their_kind)
{
    for (int kind = CM_BODY_HELLO; kind <= CM_BODY_TABLES; kind++) {
        cm_hdr h = cm_hdr_make(CM_OP_REPLY);
        h.body = kind;
        uint8_t *buf;
        size_t len;
        cr_assert_eq(cm_codec_hdr_pack(&h, &buf, &len), 0);
        cm_hdr g;
        cr_assert_eq(cm_codec_hdr_unpack(buf, len, &g, NULL), 0, "body %d", kind);
        s_body_expect_eq(&h, &g);
        if (kind == CM_BODY_HELLO)
            cr_assert_null(g.hello.slot_load);
        if (kind == CM_BODY_EVAL)
            cr_assert(g.eval_done.auc_pos == NULL && g.eval_done.auc_neg == NULL);
        cm_codec_hdr_free(&g);
        free(buf);
    }
}

/* What the double-valued stats could not carry: a whole 64-bit token, a
 * NaN popularity recall, counts past 2^53. */
Test(codec, control_bodies_keep_what_doubles_lost)
{
    cm_hdr h = s_body_hdr(CM_BODY_PLACE);
    h.place.token = UINT64_MAX;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(cm_codec_hdr_pack(&h, &buf, &len), 0);
    cm_hdr g;
    cr_assert_eq(cm_codec_hdr_unpack(buf, len, &g, NULL), 0);
    cr_assert_eq(g.place.token, UINT64_MAX);
    free(buf);

    h = s_body_hdr(CM_BODY_RANKING);
    h.ranking.pop_recall = NAN;
    h.ranking.positives = (1ULL << 53) + 1;
    cr_assert_eq(cm_codec_hdr_pack(&h, &buf, &len), 0);
    cr_assert_eq(cm_codec_hdr_unpack(buf, len, &g, NULL), 0);
    cr_assert(isnan(g.ranking.pop_recall));
    cr_assert_eq(g.ranking.positives, (1ULL << 53) + 1);
    free(buf);
}

Test(codec, pack_refuses_unknown_bodies_and_too_many_tables)
{
    uint8_t *buf = NULL;
    size_t len;
    cm_hdr h = s_body_hdr(CM_BODY_TABLES);
    h.tables.n = CM_CTL_MAX_TABLES + 1;
    cr_assert_eq(cm_codec_hdr_pack(&h, &buf, &len), CM_EINVAL);
    h = s_body_hdr(CM_BODY_CKPT);
    h.ckpt.n = CM_CTL_MAX_TABLES + 1;
    cr_assert_eq(cm_codec_hdr_pack(&h, &buf, &len), CM_EINVAL);
    h.body = CM_BODY_TABLES + 1;
    cr_assert_eq(cm_codec_hdr_pack(&h, &buf, &len), CM_EINVAL);
    cr_assert_null(buf);
}

/* Bodies a sender of this build cannot make, written by hand. */
Test(codec, unpack_refuses_bodies_that_do_not_fit)
{
    /* Header.tables (field 30) with 17 empty TableStat entries */
    uint8_t many[3 + 2 * (CM_CTL_MAX_TABLES + 1)] = {0xf2, 0x01, 2 * (CM_CTL_MAX_TABLES + 1)};
    for (size_t i = 0; i < CM_CTL_MAX_TABLES + 1; i++) {
        many[3 + 2 * i] = 0x0a;
        many[4 + 2 * i] = 0x00;
    }
    cm_hdr g;
    cm_error err = {0};
    cr_assert_eq(cm_codec_hdr_unpack(many, sizeof many, &g, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "17 tables"), "%s", err.msg);
    /* the same as Header.ckpt (field 28) */
    many[0] = 0xe2;
    err = (cm_error){0};
    cr_assert_eq(cm_codec_hdr_unpack(many, sizeof many, &g, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "checkpoint reply of 17 tables"), "%s", err.msg);
    /* Header.eval_done (field 24) with a positives histogram of one bin
     * and no negatives one */
    uint8_t lopsided[] = {0xc2, 0x01, 3, 0x52, 0x01, 0x05};
    err = (cm_error){0};
    cr_assert_eq(cm_codec_hdr_unpack(lopsided, sizeof lopsided, &g, &err), CM_EPROTO);
    cr_assert(strstr(err.msg, "AUC histograms of 1 and 0 bins"), "%s", err.msg);
    cr_assert_null(g.eval_done.auc_pos, "nothing is left allocated");
}

/* Every truncation and single-byte corruption of every body: 0 or
 * CM_EPROTO with a reason, never a crash, and nothing leaked (the
 * sanitizer build checks). */
Test(codec, truncated_and_flipped_bodies_never_crash)
{
    uint64_t seed = 7;
    for (int kind = CM_BODY_HELLO; kind <= CM_BODY_TABLES; kind++) {
        cm_hdr h = s_body_hdr(kind);
        uint8_t *buf;
        size_t len;
        cr_assert_eq(cm_codec_hdr_pack(&h, &buf, &len), 0);
        uint8_t *copy = malloc(len + 1);
        int refused = 0;
        for (size_t cut = 0; cut <= len; cut++) {
            for (int k = 0; k < 5; k++) {
                memcpy(copy, buf, len);
                if (k > 0 && cut < len)
                    copy[cut] ^= (uint8_t)(k == 1 ? 0xff : (1u << (s_next(&seed) % 8)));
                size_t n = k == 0 ? cut : len;
                cm_hdr g;
                cm_error err = {0};
                int rc = cm_codec_hdr_unpack(copy, n, &g, &err);
                cr_assert(rc == 0 || (rc == CM_EPROTO && err.msg[0]), "body %d: rc %d", kind,
                          rc);
                if (rc != 0)
                    cr_assert(g.slots == NULL && (g.body != CM_BODY_HELLO ||
                                                  g.hello.slot_load == NULL));
                refused += rc != 0;
                cm_codec_hdr_free(&g);
            }
        }
        cr_assert_gt(refused, 0, "body %d: some cut is refused", kind);
        free(copy);
        free(buf);
    }
}
