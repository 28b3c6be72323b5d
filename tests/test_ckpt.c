/* Tests for common/ckpt: row shards (round trips, every kind of damage),
 * the MANIFEST, verification, the checkpoint root (publish, keep-N
 * pruning) and choosing what to resume from. */
#define _GNU_SOURCE /* nftw, mkdtemp */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/ckpt.h"
#include "common/codec.h"
#include "common/log.h"
#include "tmpdir.h"

/* ------------------------------------------------------------------------
 * Helpers: a temp dir per test, files in it
 * ------------------------------------------------------------------------ */

static void setup(void)
{
    th_tmpdir_make("ckpt");
    cm_log_set_level(CM_LOG_ERROR);
}

static void teardown(void)
{
    th_tmpdir_remove();
}

static void setup_capture(void)
{
    setup();
    cm_log_set_level(CM_LOG_WARN);
    cr_redirect_stderr();
}

TestSuite(ckpt, .init = setup, .fini = teardown);

static const char *tpath(const char *name)
{
    return th_path(name);
}

static uint64_t file_size(const char *p)
{
    struct stat st;
    cr_assert_eq(stat(p, &st), 0, "%s: %s", p, strerror(errno));
    return (uint64_t)st.st_size;
}

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static unsigned char *slurp(const char *p, size_t *len)
{
    FILE *f = fopen(p, "rb");
    cr_assert_not_null(f, "%s", p);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void spit(const char *p, const void *data, size_t len)
{
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f, "%s", p);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* Flips one byte of a file in place (size unchanged). */
static void flip_byte(const char *p, uint64_t off)
{
    int fd = open(p, O_RDWR);
    cr_assert_geq(fd, 0);
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, (off_t)off), 1);
    c ^= 0x5a;
    cr_assert_eq(pwrite(fd, &c, 1, (off_t)off), 1);
    close(fd);
}

/* How many entries of dir have names containing needle. */
static int count_names(const char *dir, const char *needle)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "ls -a %s | grep -c -- '%s'", dir, needle);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    int n = 0;
    cr_assert_eq(fscanf(p, "%d", &n), 1);
    pclose(p);
    return n;
}

/* n rows with keys 3, 10, 17, ... and row values derived from key and
 * column, so a reader can check every float. */
typedef struct {
    uint64_t *keys;
    float *rows;
    size_t n;
    int dim, rf;
} rows_t;

static rows_t make_rows(size_t n, int dim, int rf)
{
    rows_t r = {.n = n, .dim = dim, .rf = rf};
    r.keys = malloc((n + 1) * sizeof *r.keys);
    r.rows = malloc((n * (size_t)rf + 1) * sizeof *r.rows);
    for (size_t i = 0; i < n; i++) {
        r.keys[i] = 3 + 7 * (uint64_t)i + (i > n / 2 ? (1ULL << 62) : 0);
        for (int c = 0; c < rf; c++)
            r.rows[i * (size_t)rf + (size_t)c] = (float)(i % 1000) * 0.5f + (float)c * 0.001f;
    }
    return r;
}

static void free_rows(rows_t *r)
{
    free(r->keys);
    free(r->rows);
}

/* Writes a shard of r to path; returns its size and checksum. */
static void write_shard(const char *path, uint32_t table, const rows_t *r, uint64_t *size,
                        uint64_t *sum)
{
    cm_error err = {0};
    cr_assert_eq(cm_shard_write(path, table, r->dim, r->rf, r->keys, r->rows, r->n, size, sum,
                                &err),
                 0, "%s", err.msg);
}

/* ------------------------------------------------------------------------
 * Row shards
 * ------------------------------------------------------------------------ */

static void shard_round_trip(size_t n, int dim, int rf)
{
    rows_t r = make_rows(n, dim, rf);
    const char *p = tpath("t.rows");
    uint64_t size = 0, sum = 0;
    write_shard(p, 5, &r, &size, &sum);
    cr_assert_eq(size, file_size(p));
    size_t len;
    unsigned char *bytes = slurp(p, &len);
    cr_assert_eq(XXH64(bytes, len, 0), sum, "checksum is xxh64 of the whole file");
    cr_assert_eq(memcmp(bytes, CM_SHARD_MAGIC, 8), 0);
    free(bytes);

    cm_shard s;
    cm_error err = {0};
    cr_assert_eq(cm_shard_read(p, size, sum, &s, &err), 0, "%s", err.msg);
    cr_assert_eq(s.table, 5);
    cr_assert_eq(s.dim, dim);
    cr_assert_eq(s.row_floats, rf);
    cr_assert_eq(s.n, n);
    cr_assert_eq((uintptr_t)s.keys % 64, 0, "keys are 64-byte aligned");
    cr_assert_eq((uintptr_t)s.rows % 64, 0, "rows are 64-byte aligned");
    if (n) {
        cr_assert_eq(memcmp(s.keys, r.keys, n * sizeof *r.keys), 0);
        cr_assert_eq(memcmp(s.rows, r.rows, n * (size_t)rf * sizeof *r.rows), 0);
    }
    cm_shard_free(&s);
    cr_assert_null(s.keys);
    cm_shard_free(&s); /* twice is harmless */
    /* the checks are optional */
    cr_assert_eq(cm_shard_read(p, 0, 0, &s, &err), 0, "%s", err.msg);
    cr_assert_eq(s.n, n);
    cm_shard_free(&s);
    cr_assert_eq(count_names(th_dir, ".tmp."), 0, "no temporary file left");
    free_rows(&r);
}

Test(ckpt, shard_round_trip_empty)
{
    shard_round_trip(0, 4, 4);
}

Test(ckpt, shard_round_trip_one_row)
{
    shard_round_trip(1, 1, 1);
}

Test(ckpt, shard_round_trip_many_rows)
{
    shard_round_trip(100000, 16, 16);
}

Test(ckpt, shard_round_trip_optimizer_state)
{
    shard_round_trip(1000, 10, 30);
    shard_round_trip(77, 3, 5); /* rows that are not a multiple of 64 bytes */
}

Test(ckpt, shard_overwrites_existing_file)
{
    rows_t a = make_rows(10, 2, 2), b = make_rows(3, 2, 4);
    const char *p = tpath("t.rows");
    uint64_t size, sum;
    write_shard(p, 0, &a, &size, &sum);
    write_shard(p, 0, &b, &size, &sum);
    cm_shard s;
    cm_error err = {0};
    cr_assert_eq(cm_shard_read(p, size, sum, &s, &err), 0, "%s", err.msg);
    cr_assert_eq(s.n, 3);
    cr_assert_eq(s.row_floats, 4);
    cm_shard_free(&s);
    free_rows(&a);
    free_rows(&b);
}

Test(ckpt, shard_write_refuses_unsorted_keys)
{
    rows_t r = make_rows(5, 2, 2);
    const char *p = tpath("t.rows");
    cm_error err = {0};
    r.keys[3] = r.keys[1];
    cr_assert_eq(cm_shard_write(p, 0, 2, 2, r.keys, r.rows, 5, NULL, NULL, &err), CM_EINVAL);
    cr_assert(strstr(err.msg, "strictly ascending"), "%s", err.msg);
    cr_assert(strstr(err.msg, p), "%s", err.msg);
    r.keys[3] = r.keys[2]; /* a duplicate is not ascending either */
    cr_assert_eq(cm_shard_write(p, 0, 2, 2, r.keys, r.rows, 5, NULL, NULL, &err), CM_EINVAL);
    cr_assert(!exists(p));
    cr_assert_eq(count_names(th_dir, ".tmp."), 0);
    free_rows(&r);
}

Test(ckpt, shard_write_refuses_bad_shapes)
{
    rows_t r = make_rows(5, 2, 2);
    const char *p = tpath("t.rows");
    cm_error err = {0};
    cr_assert_eq(cm_shard_write(p, 0, 0, 2, r.keys, r.rows, 5, NULL, NULL, &err), CM_EINVAL);
    cr_assert_eq(cm_shard_write(p, 0, 3, 2, r.keys, r.rows, 5, NULL, NULL, &err), CM_EINVAL);
    cr_assert_eq(cm_shard_write(p, 0, 2, 2, NULL, r.rows, 5, NULL, NULL, &err), CM_EINVAL);
    cr_assert_eq(cm_shard_write(p, 0, 2, 2, NULL, NULL, 0, NULL, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(cm_shard_write(tpath("no/such/dir.rows"), 0, 2, 2, r.keys, r.rows, 5, NULL,
                                NULL, &err), CM_ENOTFOUND);
    cr_assert(strstr(err.msg, "no/such/dir.rows"), "%s", err.msg);
    free_rows(&r);
}

Test(ckpt, shard_missing_file)
{
    cm_shard s;
    cm_error err = {0};
    cr_assert_eq(cm_shard_read(tpath("nope.rows"), 0, 0, &s, &err), CM_ENOTFOUND);
    cr_assert(strstr(err.msg, "nope.rows"), "%s", err.msg);
    cr_assert_eq(cm_shard_read(th_dir, 0, 0, &s, &err), CM_EIO, "a directory is not a shard");
}

Test(ckpt, shard_size_mismatch_is_torn)
{
    rows_t r = make_rows(100, 4, 8);
    const char *p = tpath("t1-s2.rows");
    uint64_t size, sum;
    write_shard(p, 1, &r, &size, &sum);
    cm_shard s;
    cm_error err = {0};
    cr_assert_eq(cm_shard_read(p, size + 64, sum, &s, &err), CM_ECHECKSUM);
    char want[700];
    snprintf(want, sizeof want, "%s: file is %llu bytes, manifest says %llu (torn write?)", p,
             (unsigned long long)size, (unsigned long long)size + 64);
    cr_assert_str_eq(err.msg, want);
    cr_assert_null(s.keys);
    free_rows(&r);
}

Test(ckpt, shard_truncated_at_every_region)
{
    rows_t r = make_rows(100, 4, 8);
    const char *p = tpath("t.rows");
    uint64_t size, sum;
    write_shard(p, 1, &r, &size, &sum);
    size_t len;
    unsigned char *bytes = slurp(p, &len);
    /* empty, inside the magic, inside the header, in the padding, inside
     * the keys, between keys and rows, inside the rows, one float short */
    size_t cuts[] = {0, 5, 12, 17, 30, 64, 64 + 400, 64 + 800, 900, len - 4, len - 1};
    const char *q = tpath("cut.rows");
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        spit(q, bytes, cuts[i]);
        cm_shard s;
        cm_error err = {0};
        /* without the manifest's numbers the layout check catches it */
        cr_assert_eq(cm_shard_read(q, 0, 0, &s, &err), CM_EPARSE, "cut at %zu: %s", cuts[i],
                     err.msg);
        cr_assert(strstr(err.msg, q), "%s", err.msg);
        /* with them, the size check does, and says so */
        cr_assert_eq(cm_shard_read(q, size, sum, &s, &err), CM_ECHECKSUM);
        cr_assert(strstr(err.msg, "torn write?"), "%s", err.msg);
    }
    /* bytes appended are refused too */
    unsigned char *longer = malloc(len + 8);
    memcpy(longer, bytes, len);
    memset(longer + len, 0, 8);
    spit(q, longer, len + 8);
    cm_shard s;
    cm_error err = {0};
    cr_assert_eq(cm_shard_read(q, 0, 0, &s, &err), CM_EPARSE, "%s", err.msg);
    free(longer);
    free(bytes);
    free_rows(&r);
}

Test(ckpt, shard_flipped_byte_is_checksum_error)
{
    rows_t r = make_rows(1000, 4, 8);
    const char *p = tpath("t.rows");
    uint64_t size, sum;
    write_shard(p, 1, &r, &size, &sum);
    flip_byte(p, size - 100); /* in the rows: the layout is still fine */
    cm_shard s;
    cm_error err = {0};
    cr_assert_eq(cm_shard_read(p, size, sum, &s, &err), CM_ECHECKSUM);
    cr_assert(strstr(err.msg, "checksum mismatch"), "%s", err.msg);
    cr_assert(strstr(err.msg, p), "%s", err.msg);
    /* the checksum is the only thing that can see it */
    cr_assert_eq(cm_shard_read(p, size, 0, &s, &err), 0, "%s", err.msg);
    cm_shard_free(&s);
    free_rows(&r);
}

Test(ckpt, shard_bad_magic)
{
    rows_t r = make_rows(10, 4, 4);
    const char *p = tpath("t.rows");
    uint64_t size, sum;
    write_shard(p, 1, &r, &size, &sum);
    flip_byte(p, 3);
    cm_shard s;
    cm_error err = {0};
    cr_assert_eq(cm_shard_read(p, size, 0, &s, &err), CM_EPARSE);
    cr_assert(strstr(err.msg, "bad magic"), "%s", err.msg);
    free_rows(&r);
}

Test(ckpt, shard_keys_out_of_order_in_file)
{
    rows_t r = make_rows(10, 4, 4);
    const char *p = tpath("t.rows");
    uint64_t size, sum;
    write_shard(p, 1, &r, &size, &sum);
    cm_shard s;
    cm_error err = {0};
    cr_assert_eq(cm_shard_read(p, 0, 0, &s, &err), 0, "%s", err.msg);
    cm_shard_free(&s);
    /* swap the first two keys in the file */
    size_t len;
    unsigned char *bytes = slurp(p, &len);
    uint64_t k0 = r.keys[0], k1 = r.keys[1];
    unsigned char *at = memmem(bytes, len, &k0, 8);
    cr_assert_not_null(at);
    memcpy(at, &k1, 8);
    memcpy(at + 8, &k0, 8);
    spit(p, bytes, len);
    cr_assert_eq(cm_shard_read(p, 0, 0, &s, &err), CM_EPARSE);
    cr_assert(strstr(err.msg, "keys out of order"), "%s", err.msg);
    free(bytes);
    free_rows(&r);
}

/* A shard whose header lies (by hand: a valid preamble and protobuf). */
static int read_with_header(const cm_shard_hdr *h, size_t file_len, cm_error *err)
{
    uint8_t *pb;
    size_t plen;
    cr_assert_eq(cm_codec_shard_pack(h, &pb, &plen), 0);
    unsigned char *buf = calloc(1, file_len < 16 + plen ? 16 + plen : file_len);
    memcpy(buf, CM_SHARD_MAGIC, 8);
    buf[8] = (unsigned char)plen;
    memcpy(buf + 16, pb, plen);
    /* ascending keys where the header says they are, when that is inside */
    for (uint64_t i = 0; h->key_offset >= 16 + plen && h->key_offset < file_len && i < h->n_rows &&
                         i < (file_len - h->key_offset) / 8; i++) {
        uint64_t key = i + 1;
        memcpy(buf + h->key_offset + 8 * i, &key, 8);
    }
    const char *p = tpath("lie.rows");
    spit(p, buf, file_len < 16 + plen ? 16 + plen : file_len);
    free(buf);
    free(pb);
    cm_shard s;
    int rc = cm_shard_read(p, 0, 0, &s, err);
    if (rc == 0)
        cm_shard_free(&s);
    return rc;
}

Test(ckpt, shard_lying_headers)
{
    cm_error err = {0};
    cm_shard_hdr ok = {.version = 1, .dim = 2, .row_floats = 2, .n_rows = 2, .key_offset = 64,
                       .row_offset = 128};
    cr_assert_eq(read_with_header(&ok, 128 + 16, &err), 0, "%s", err.msg);
    cm_shard_hdr h = ok;
    h.version = 2;
    cr_assert_eq(read_with_header(&h, 144, &err), CM_EPARSE);
    cr_assert(strstr(err.msg, "version 2"), "%s", err.msg);
    h = ok;
    h.dim = 0;
    cr_assert_eq(read_with_header(&h, 144, &err), CM_EPARSE);
    h = ok;
    h.row_floats = 1;
    cr_assert_eq(read_with_header(&h, 144, &err), CM_EPARSE);
    h = ok;
    h.key_offset = 32;
    cr_assert_eq(read_with_header(&h, 144, &err), CM_EPARSE, "unaligned keys");
    h = ok;
    h.key_offset = 0;
    cr_assert_eq(read_with_header(&h, 144, &err), CM_EPARSE, "keys over the header");
    cr_assert(strstr(err.msg, "overlap the header"), "%s", err.msg);
    h = ok;
    h.row_offset = 64;
    cr_assert_eq(read_with_header(&h, 144, &err), CM_EPARSE, "rows over the keys");
    cr_assert(strstr(err.msg, "overlap the keys"), "%s", err.msg);
    h = ok;
    h.n_rows = UINT64_MAX / 4;
    cr_assert_eq(read_with_header(&h, 144, &err), CM_EPARSE, "huge n_rows");
    h = ok;
    h.n_rows = 1;
    h.row_floats = UINT32_MAX;
    h.dim = 1;
    cr_assert_eq(read_with_header(&h, 144, &err), CM_EPARSE, "huge row_floats");
    h = ok;
    h.row_offset = UINT64_MAX - 63;
    cr_assert_eq(read_with_header(&h, 144, &err), CM_EPARSE, "rows past the end");
    h = ok;
    h.key_offset = UINT64_MAX - 63;
    cr_assert_eq(read_with_header(&h, 144, &err), CM_EPARSE, "keys past the end");
    /* header length beyond the file */
    const char *p = tpath("hl.rows");
    unsigned char pre[32] = "PSRECCK1";
    pre[8] = 200;
    spit(p, pre, sizeof pre);
    cm_shard s;
    cr_assert_eq(cm_shard_read(p, 0, 0, &s, &err), CM_EPARSE);
    cr_assert(strstr(err.msg, "header length 200"), "%s", err.msg);
    /* a header that does not decode */
    memset(pre + 16, 0xff, 16);
    pre[8] = 16;
    spit(p, pre, sizeof pre);
    cr_assert_eq(cm_shard_read(p, 0, 0, &s, &err), CM_EPARSE);
    cr_assert(strstr(err.msg, "does not decode"), "%s", err.msg);
}

/* Random truncations and byte flips: every result is a clean error or a
 * shard whose arrays lie inside the file. */
Test(ckpt, shard_fuzz_never_crashes)
{
    rows_t r = make_rows(50, 3, 6);
    const char *p = tpath("t.rows");
    uint64_t size, sum;
    write_shard(p, 1, &r, &size, &sum);
    size_t len;
    unsigned char *bytes = slurp(p, &len);
    unsigned char *copy = malloc(len);
    const char *q = tpath("fuzz.rows");
    uint64_t seed = 7;
    int ok = 0, refused = 0;
    for (int it = 0; it < 3000; it++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        memcpy(copy, bytes, len);
        size_t n = len;
        int kind = (int)(seed >> 60) % 3;
        if (kind == 0)
            n = (size_t)((seed >> 16) % len);
        int flips = kind == 0 ? 0 : 1 + (int)((seed >> 8) % 4);
        for (int f = 0; f < flips; f++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            /* mostly in the preamble and header, where it matters most */
            size_t at = (seed >> 33) % (f & 1 ? len : 64);
            copy[at] ^= (unsigned char)(1u << ((seed >> 20) % 8));
        }
        spit(q, copy, n);
        cm_shard s;
        cm_error err = {0};
        int rc = cm_shard_read(q, 0, 0, &s, &err);
        if (rc == 0) {
            cr_assert_leq((const char *)(s.rows + s.n * (size_t)s.row_floats) -
                              (const char *)s.keys, (ptrdiff_t)n);
            cm_shard_free(&s);
            ok++;
        } else {
            cr_assert(rc == CM_EPARSE || rc == CM_ERANGE, "rc %d: %s", rc, err.msg);
            cr_assert(strstr(err.msg, q), "%s", err.msg);
            refused++;
        }
        /* with the manifest's numbers nothing damaged gets through */
        rc = cm_shard_read(q, size, sum, &s, &err);
        if (n != len || memcmp(copy, bytes, len) != 0)
            cr_assert_neq(rc, 0, "damaged file accepted");
        else
            cm_shard_free(&s);
    }
    cr_assert_gt(refused, 0);
    cr_assert_gt(ok, 0);
    free(copy);
    free(bytes);
    free_rows(&r);
}

/* ------------------------------------------------------------------------
 * Manifest
 * ------------------------------------------------------------------------ */

/* A manifest with every field set, listing files f0.rows... (not
 * written). */
static void fill_manifest(cm_manifest *m, size_t n_files)
{
    memset(m, 0, sizeof *m);
    m->version = 1;
    m->job = strdup("[job]\nmodel = mf\n");
    snprintf(m->model, sizeof m->model, "mf");
    m->n_tables = 2;
    m->tables = calloc(2, sizeof *m->tables);
    for (int t = 0; t < 2; t++) {
        snprintf(m->tables[t].name, sizeof m->tables[t].name, t ? "item" : "user");
        m->tables[t].dim = 4;
        m->tables[t].row_floats = 8;
        m->tables[t].optimizer = 1;
        m->tables[t].zero_prefix = t;
        m->tables[t].lr = 0.01f;
        m->tables[t].init_std = 0.1f;
        m->tables[t].seed = 99 + (uint64_t)t;
    }
    m->n_slots = 8;
    m->slot_map = malloc(8 * sizeof *m->slot_map);
    for (uint32_t k = 0; k < 8; k++)
        m->slot_map[k] = k % 2;
    m->epoch = 3;
    m->n_files = n_files;
    m->files = n_files ? calloc(n_files, sizeof *m->files) : NULL;
    for (size_t f = 0; f < n_files; f++) {
        snprintf(m->files[f].name, sizeof m->files[f].name, "f%zu.rows", f);
        m->files[f].table = (uint32_t)(f % 2);
        m->files[f].size = 1000 + f;
        m->files[f].checksum = 0xabcdef00 + f;
        m->files[f].rows = 10 * f;
        m->files[f].writer = (int)f;
        m->files[f].n_slots = 4;
        m->files[f].slots = malloc(4 * sizeof(uint32_t));
        for (uint32_t k = 0; k < 4; k++)
            m->files[f].slots[k] = 2 * k + (uint32_t)(f % 2);
    }
    m->global_mean = 3.5;
    m->clip_lo = 1;
    m->clip_hi = 5;
    m->train_rmse = 0.8;
    m->test_rmse = 0.9;
    m->test_mae = 0.7;
    m->created_unix = 1700000001;
    m->n_servers = 2;
    m->n_workers = 3;
}

Test(ckpt, manifest_round_trip)
{
    cm_manifest m, g;
    fill_manifest(&m, 4);
    cm_error err = {0};
    cr_assert_eq(cm_manifest_write(th_dir, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(count_names(th_dir, ".tmp."), 0);
    cr_assert_eq(cm_manifest_read(th_dir, &g, &err), 0, "%s", err.msg);
    cr_assert_str_eq(g.job, m.job);
    cr_assert_str_eq(g.model, "mf");
    cr_assert_eq(g.version, 1);
    cr_assert_eq(g.n_tables, 2);
    for (int t = 0; t < 2; t++) {
        cr_assert_str_eq(g.tables[t].name, m.tables[t].name);
        cr_assert_eq(g.tables[t].dim, 4);
        cr_assert_eq(g.tables[t].row_floats, 8);
        cr_assert_eq(g.tables[t].optimizer, 1);
        cr_assert_eq(g.tables[t].zero_prefix, t);
        cr_assert_eq(g.tables[t].lr, 0.01f);
        cr_assert_eq(g.tables[t].init_std, 0.1f);
        cr_assert_eq(g.tables[t].seed, 99 + (uint64_t)t);
    }
    cr_assert_eq(g.n_slots, 8);
    cr_assert_eq(memcmp(g.slot_map, m.slot_map, 8 * sizeof *m.slot_map), 0);
    cr_assert_eq(g.epoch, 3);
    cr_assert_eq(g.n_files, 4);
    for (size_t f = 0; f < 4; f++) {
        cr_assert_str_eq(g.files[f].name, m.files[f].name);
        cr_assert_eq(g.files[f].table, m.files[f].table);
        cr_assert_eq(g.files[f].size, m.files[f].size);
        cr_assert_eq(g.files[f].checksum, m.files[f].checksum);
        cr_assert_eq(g.files[f].rows, m.files[f].rows);
        cr_assert_eq(g.files[f].writer, m.files[f].writer);
        cr_assert_eq(g.files[f].n_slots, 4);
        cr_assert_eq(memcmp(g.files[f].slots, m.files[f].slots, 16), 0);
    }
    cr_assert_eq(g.global_mean, 3.5);
    cr_assert_eq(g.clip_lo, 1);
    cr_assert_eq(g.clip_hi, 5);
    cr_assert_eq(g.train_rmse, 0.8);
    cr_assert_eq(g.test_rmse, 0.9);
    cr_assert_eq(g.test_mae, 0.7);
    cr_assert_eq(g.created_unix, 1700000001);
    cr_assert_eq(g.n_servers, 2);
    cr_assert_eq(g.n_workers, 3);
    /* the layout: magic, u32 length, u64 xxh64, protobuf */
    size_t len;
    unsigned char *b = slurp(tpath("MANIFEST"), &len);
    cr_assert_eq(memcmp(b, CM_MANIFEST_MAGIC, 8), 0);
    uint32_t plen = (uint32_t)b[8] | (uint32_t)b[9] << 8 | (uint32_t)b[10] << 16 |
                    (uint32_t)b[11] << 24;
    cr_assert_eq((size_t)plen + 20, len);
    uint64_t sum = 0;
    for (int i = 7; i >= 0; i--)
        sum = sum << 8 | b[12 + i];
    cr_assert_eq(sum, XXH64(b + 20, plen, 0));
    free(b);
    cm_manifest_free(&m);
    cm_manifest_free(&g);
    cm_manifest_free(&g); /* twice is harmless */
}

Test(ckpt, manifest_missing)
{
    cm_manifest g;
    cm_error err = {0};
    cr_assert_eq(cm_manifest_read(th_dir, &g, &err), CM_ENOTFOUND);
    cr_assert(strstr(err.msg, "MANIFEST"), "%s", err.msg);
    cm_manifest_free(&g); /* zeroed even on failure */
}

Test(ckpt, manifest_corrupted)
{
    cm_manifest m, g;
    fill_manifest(&m, 2);
    cm_error err = {0};
    cr_assert_eq(cm_manifest_write(th_dir, &m, &err), 0, "%s", err.msg);
    cm_manifest_free(&m);
    const char *p = tpath("MANIFEST");
    size_t len;
    unsigned char *good = slurp(p, &len);

    flip_byte(p, len - 3);
    cr_assert_eq(cm_manifest_read(th_dir, &g, &err), CM_ECHECKSUM);
    cr_assert(strstr(err.msg, "checksum mismatch"), "%s", err.msg);
    cr_assert(strstr(err.msg, p), "%s", err.msg);
    cr_assert_null(g.job);

    spit(p, good, len);
    flip_byte(p, 0);
    cr_assert_eq(cm_manifest_read(th_dir, &g, &err), CM_EPARSE);
    cr_assert(strstr(err.msg, "bad magic"), "%s", err.msg);

    for (size_t cut = 0; cut < len; cut += 7) {
        spit(p, good, cut);
        cr_assert_eq(cm_manifest_read(th_dir, &g, &err), CM_EPARSE, "cut %zu", cut);
        cr_assert(strstr(err.msg, "torn write?"), "%s", err.msg);
    }

    /* garbage behind a correct checksum: refused by the decoder */
    unsigned char bad[20 + 8];
    memcpy(bad, CM_MANIFEST_MAGIC, 8);
    bad[8] = 8;
    bad[9] = bad[10] = bad[11] = 0;
    memset(bad + 20, 0xff, 8);
    uint64_t sum = XXH64(bad + 20, 8, 0);
    for (int i = 0; i < 8; i++)
        bad[12 + i] = (unsigned char)(sum >> (8 * i));
    spit(p, bad, sizeof bad);
    cr_assert_eq(cm_manifest_read(th_dir, &g, &err), CM_EPARSE);
    cr_assert(strstr(err.msg, "does not decode"), "%s", err.msg);
    free(good);
}

/* Writes m's protobuf behind a correct preamble, bypassing the writer's
 * checks, and reads it back. */
static int read_raw_manifest(const cm_manifest *m, cm_error *err)
{
    uint8_t *pb;
    size_t plen;
    cr_assert_eq(cm_codec_manifest_pack(m, &pb, &plen), 0);
    unsigned char *buf = malloc(20 + plen);
    memcpy(buf, CM_MANIFEST_MAGIC, 8);
    for (int i = 0; i < 4; i++)
        buf[8 + i] = (unsigned char)(plen >> (8 * i));
    uint64_t sum = XXH64(pb, plen, 0);
    for (int i = 0; i < 8; i++)
        buf[12 + i] = (unsigned char)(sum >> (8 * i));
    memcpy(buf + 20, pb, plen);
    spit(tpath("MANIFEST"), buf, 20 + plen);
    free(buf);
    free(pb);
    cm_manifest g;
    int rc = cm_manifest_read(th_dir, &g, err);
    cm_manifest_free(&g);
    return rc;
}

Test(ckpt, manifest_sanity_checks)
{
    cm_manifest m;
    cm_error err = {0};
    fill_manifest(&m, 2);
    cr_assert_eq(read_raw_manifest(&m, &err), 0, "%s", err.msg);

    struct {
        const char *what, *expect;
    } cases[] = {
        {"version", "manifest version 9"},   {"no tables", "no tables"},
        {"dim", "dim 0"},                    {"row_floats", "rows of 2 floats with dim 4"},
        {"slot map", "maps to server 7 of 2"}, {"slash", "not a plain file name"},
        {"dotdot", "not a plain file name"}, {"empty name", "not a plain file name"},
        {"table", "holds table 2 of 2"},      {"file slot", "holds slot 8 of 8"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        cm_manifest_free(&m);
        fill_manifest(&m, 2);
        switch (c) {
        case 0: m.version = 9; break;
        case 1: m.n_tables = 0; break;
        case 2: m.tables[1].dim = 0; break;
        case 3: m.tables[0].row_floats = 2; break;
        case 4: m.slot_map[5] = 7; break;
        case 5: snprintf(m.files[1].name, sizeof m.files[1].name, "../x.rows"); break;
        case 6: snprintf(m.files[1].name, sizeof m.files[1].name, ".."); break;
        case 7: m.files[0].name[0] = '\0'; break;
        case 8: m.files[0].table = 2; break;
        case 9: m.files[1].slots[2] = 8; break;
        }
        /* the writer refuses what the reader would */
        cr_assert_eq(cm_manifest_write(th_dir, &m, &err), CM_EINVAL, "%s", cases[c].what);
        cr_assert(strstr(err.msg, cases[c].expect), "%s: %s", cases[c].what, err.msg);
        cr_assert_eq(read_raw_manifest(&m, &err), CM_EPARSE, "%s", cases[c].what);
        cr_assert(strstr(err.msg, cases[c].expect), "%s: %s", cases[c].what, err.msg);
    }
    /* n_servers 0: the slot map is not checked against it */
    cm_manifest_free(&m);
    fill_manifest(&m, 2);
    m.n_servers = 0;
    m.slot_map[0] = 99;
    cr_assert_eq(read_raw_manifest(&m, &err), 0, "%s", err.msg);
    cm_manifest_free(&m);
}

/* ------------------------------------------------------------------------
 * Whole checkpoints: verify, publish, resolve
 * ------------------------------------------------------------------------ */

/* Writes root/ckpt-<epoch> with 2 tables x 2 servers and its MANIFEST;
 * publishes it when asked. Returns the directory. */
static const char *make_ckpt(const char *root, uint32_t epoch, int publish, int keep)
{
    static char dirs[4][512];
    static int k;
    char *dir = dirs[k++ % 4];
    char name[64];
    cm_error err = {0};
    cm_ckpt_dirname(epoch, name, sizeof name);
    cr_assert_eq(cm_ckpt_mkdir(root, name, dir, 512, &err), 0, "%s", err.msg);
    cm_manifest m;
    fill_manifest(&m, 4);
    m.epoch = epoch;
    for (size_t f = 0; f < 4; f++) {
        cm_ckpt_file *cf = &m.files[f];
        snprintf(cf->name, sizeof cf->name, "t%zu-s%zu.rows", f % 2, f / 2);
        rows_t r = make_rows(50 + f + epoch, 4, 8);
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, cf->name);
        write_shard(path, cf->table, &r, &cf->size, &cf->checksum);
        cf->rows = r.n;
        free_rows(&r);
    }
    cr_assert_eq(cm_manifest_write(dir, &m, &err), 0, "%s", err.msg);
    cm_manifest_free(&m);
    if (publish)
        cr_assert_eq(cm_ckpt_publish(root, name, keep, &err), 0, "%s", err.msg);
    return dir;
}

static void read_latest(const char *root, char *out, size_t n)
{
    char p[600];
    snprintf(p, sizeof p, "%s/LATEST", root);
    FILE *f = fopen(p, "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(out, (int)n, f));
    fclose(f);
}

Test(ckpt, dirname_and_mkdir)
{
    char name[64], path[512];
    cm_ckpt_dirname(5, name, sizeof name);
    cr_assert_str_eq(name, "ckpt-000005");
    cm_ckpt_dirname(1234567, name, sizeof name);
    cr_assert_str_eq(name, "ckpt-1234567");
    cm_error err = {0};
    const char *root = tpath("a/b//c/");
    cr_assert_eq(cm_ckpt_mkdir(root, "ckpt-000001", path, sizeof path, &err), 0, "%s", err.msg);
    cr_assert(exists(tpath("a/b/c/ckpt-000001")));
    cr_assert(strstr(path, "ckpt-000001"));
    /* again: fine */
    cr_assert_eq(cm_ckpt_mkdir(root, "ckpt-000001", path, sizeof path, &err), 0, "%s", err.msg);
    cr_assert_eq(cm_ckpt_mkdir(root, "../x", path, sizeof path, &err), CM_EINVAL);
    cr_assert_eq(cm_ckpt_mkdir(root, "ckpt-000001", path, 8, &err), CM_ERANGE);
    /* a file in the way */
    spit(tpath("file"), "x", 1);
    cr_assert_eq(cm_ckpt_mkdir(tpath("file"), "ckpt-000001", path, sizeof path, &err), CM_EIO);
    cr_assert(strstr(err.msg, "not a directory"), "%s", err.msg);
}

Test(ckpt, verify_intact_and_damaged)
{
    const char *dir = make_ckpt(th_dir, 1, 0, 0);
    cm_error err = {0};
    cr_assert_eq(cm_ckpt_verify(dir, &err), 0, "%s", err.msg);
    char p[1024];

    /* wrong checksum: same size, one byte different */
    snprintf(p, sizeof p, "%s/t1-s0.rows", dir);
    flip_byte(p, file_size(p) - 1);
    cr_assert_eq(cm_ckpt_verify(dir, &err), CM_ECHECKSUM);
    cr_assert(strstr(err.msg, "t1-s0.rows: checksum mismatch"), "%s", err.msg);
    flip_byte(p, file_size(p) - 1);
    cr_assert_eq(cm_ckpt_verify(dir, &err), 0, "%s", err.msg);

    /* wrong size */
    snprintf(p, sizeof p, "%s/t0-s1.rows", dir);
    uint64_t size = file_size(p);
    cr_assert_eq(truncate(p, (off_t)size - 10), 0);
    cr_assert_eq(cm_ckpt_verify(dir, &err), CM_ECHECKSUM);
    char want[1200];
    snprintf(want, sizeof want, "%s: file is %llu bytes, manifest says %llu (torn write?)", p,
             (unsigned long long)size - 10, (unsigned long long)size);
    cr_assert_str_eq(err.msg, want);

    /* missing file: named */
    snprintf(p, sizeof p, "%s/t1-s1.rows", dir);
    unlink(p);
    cr_assert_neq(cm_ckpt_verify(dir, &err), 0);
    cr_assert(strstr(err.msg, "t0-s1.rows"), "the first bad file: %s", err.msg);
    snprintf(p, sizeof p, "%s/t0-s1.rows", dir);
    unlink(p);
    cr_assert_eq(cm_ckpt_verify(dir, &err), CM_ENOTFOUND);
    cr_assert(strstr(err.msg, "t0-s1.rows"), "%s", err.msg);

    /* no manifest */
    cr_assert_eq(cm_ckpt_verify(th_dir, &err), CM_ENOTFOUND);
}

Test(ckpt, publish_points_latest_and_prunes)
{
    char latest[300];
    make_ckpt(th_dir, 1, 1, 2);
    read_latest(th_dir, latest, sizeof latest);
    cr_assert_str_eq(latest, "ckpt-000001\n");
    make_ckpt(th_dir, 2, 1, 2);
    make_ckpt(th_dir, 3, 1, 2);
    read_latest(th_dir, latest, sizeof latest);
    cr_assert_str_eq(latest, "ckpt-000003\n");
    cr_assert(!exists(tpath("ckpt-000001")), "oldest pruned");
    cr_assert(exists(tpath("ckpt-000002")));
    cr_assert(exists(tpath("ckpt-000003")));
    make_ckpt(th_dir, 10, 1, 2);
    cr_assert(!exists(tpath("ckpt-000002")));
    cr_assert(exists(tpath("ckpt-000003")));
    cr_assert(exists(tpath("ckpt-000010")));
    cr_assert_eq(count_names(th_dir, ".tmp."), 0);
    cr_assert_eq(count_names(th_dir, "ckpt-"), 2);
}

Test(ckpt, publish_keep_all_and_keep_one)
{
    for (uint32_t e = 1; e <= 4; e++)
        make_ckpt(th_dir, e, 1, 0);
    cr_assert_eq(count_names(th_dir, "ckpt-"), 4, "keep 0 keeps all");
    make_ckpt(th_dir, 5, 1, 1);
    cr_assert_eq(count_names(th_dir, "ckpt-"), 1);
    cr_assert(exists(tpath("ckpt-000005/MANIFEST")));
}

Test(ckpt, publish_never_removes_the_published_one)
{
    make_ckpt(th_dir, 7, 1, 0);
    make_ckpt(th_dir, 8, 1, 0);
    /* a rerun publishing an older epoch keeps it, even with keep 1 */
    make_ckpt(th_dir, 2, 1, 1);
    char latest[300];
    read_latest(th_dir, latest, sizeof latest);
    cr_assert_str_eq(latest, "ckpt-000002\n");
    cr_assert(exists(tpath("ckpt-000002/MANIFEST")));
    cr_assert_eq(count_names(th_dir, "ckpt-"), 1);
}

Test(ckpt, publish_cleans_debris)
{
    make_ckpt(th_dir, 1, 1, 2);
    /* a dead writer's temporary files, an unfinished older checkpoint, and
     * things that are not ours */
    cm_error err = {0};
    char path[512];
    cr_assert_eq(cm_ckpt_mkdir(th_dir, "ckpt-000002", path, sizeof path, &err), 0);
    spit(tpath("LATEST.tmp.123.4"), "ckpt-000009\n", 12);
    spit(tpath("ckpt-000002/t0-s0.rows.tmp.77.0"), "junk", 4);
    mkdir(tpath("ckpt-000001x"), 0755);
    spit(tpath("notes.tmp.txt"), "keep me", 7);
    mkdir(tpath("ckpt-000000"), 0755); /* unfinished, older */
    make_ckpt(th_dir, 3, 1, 2);
    cr_assert(!exists(tpath("LATEST.tmp.123.4")));
    cr_assert(exists(tpath("notes.tmp.txt")), "not one of our temporary names");
    cr_assert(exists(tpath("ckpt-000001x")), "not a checkpoint name");
    cr_assert(!exists(tpath("ckpt-000000")), "unfinished and older: removed");
    cr_assert(!exists(tpath("ckpt-000002")), "unfinished and older: removed");
    cr_assert(exists(tpath("ckpt-000001/MANIFEST")), "finished; 2 kept");
    cr_assert(exists(tpath("ckpt-000003/MANIFEST")));
}

Test(ckpt, prune_does_not_follow_symlinks)
{
    /* an old checkpoint that is a link to a directory elsewhere */
    const char *other = tpath("elsewhere");
    char root[600];
    snprintf(root, sizeof root, "%s/root", th_dir);
    make_ckpt(other, 1, 1, 0);
    mkdir(root, 0755);
    char link[700], target[700];
    snprintf(link, sizeof link, "%s/ckpt-000001", root);
    snprintf(target, sizeof target, "%s/ckpt-000001", other);
    cr_assert_eq(symlink(target, link), 0);
    make_ckpt(root, 2, 1, 1);
    make_ckpt(root, 3, 1, 1);
    char p[800];
    snprintf(p, sizeof p, "%s/MANIFEST", target);
    cr_assert(exists(p), "files behind the link are not removed");
    snprintf(p, sizeof p, "%s/t0-s0.rows", target);
    cr_assert(exists(p));
    snprintf(p, sizeof p, "%s/ckpt-000002", root);
    cr_assert(!exists(p));
}

Test(ckpt, publish_refuses_unfinished_and_bad_names)
{
    cm_error err = {0};
    char path[512];
    cr_assert_eq(cm_ckpt_mkdir(th_dir, "ckpt-000004", path, sizeof path, &err), 0);
    cr_assert_eq(cm_ckpt_publish(th_dir, "ckpt-000004", 2, &err), CM_ESTATE);
    cr_assert(strstr(err.msg, "no MANIFEST"), "%s", err.msg);
    cr_assert(!exists(tpath("LATEST")));
    cr_assert_eq(cm_ckpt_publish(th_dir, "../ckpt-000004", 2, &err), CM_EINVAL);
    cr_assert_eq(cm_ckpt_publish(th_dir, "", 2, &err), CM_EINVAL);
}

/* Everything logged so far. */
static char *captured(void)
{
    static char all[16384];
    fflush(stderr);
    FILE *f = cr_get_redirected_stderr();
    size_t len = fread(all, 1, sizeof all - 1, f);
    all[len] = '\0';
    return all;
}

Test(ckpt, resolve_auto_takes_latest)
{
    make_ckpt(th_dir, 1, 1, 3);
    const char *d2 = make_ckpt(th_dir, 2, 1, 3);
    char out[512];
    cm_error err = {0};
    cr_assert_eq(cm_ckpt_resolve(th_dir, "auto", out, sizeof out, &err), 0, "%s", err.msg);
    cr_assert_str_eq(out, d2);
}

Test(ckpt, resolve_auto_falls_back_when_latest_is_torn, .init = setup_capture)
{
    const char *d1 = make_ckpt(th_dir, 1, 1, 3);
    const char *d2 = make_ckpt(th_dir, 2, 1, 3);
    char p[1024], out[512];
    snprintf(p, sizeof p, "%s/t1-s1.rows", d2);
    cr_assert_eq(truncate(p, (off_t)file_size(p) / 2), 0);
    cm_error err = {0};
    cr_assert_eq(cm_ckpt_resolve(th_dir, "auto", out, sizeof out, &err), 0, "%s", err.msg);
    cr_assert_str_eq(out, d1);
    char *log = captured();
    char want[1200];
    snprintf(want, sizeof want, "%s: skipped: %s: file is", d2, p);
    cr_assert(strstr(log, want), "log: %s", log);
    cr_assert(strstr(log, "torn write?"), "log: %s", log);
}

Test(ckpt, resolve_auto_prefers_latest_over_newer_dirs)
{
    const char *d1 = make_ckpt(th_dir, 1, 1, 0);
    make_ckpt(th_dir, 2, 0, 0); /* finished but never published */
    char out[512];
    cm_error err = {0};
    cr_assert_eq(cm_ckpt_resolve(th_dir, "auto", out, sizeof out, &err), 0, "%s", err.msg);
    cr_assert_str_eq(out, d1);
    /* without LATEST, the newest intact one */
    unlink(tpath("LATEST"));
    cr_assert_eq(cm_ckpt_resolve(th_dir, "auto", out, sizeof out, &err), 0, "%s", err.msg);
    cr_assert_str_eq(out, tpath("ckpt-000002"));
    /* a LATEST that names nothing sensible is ignored */
    spit(tpath("LATEST"), "../../etc\n", 10);
    cr_assert_eq(cm_ckpt_resolve(th_dir, "auto", out, sizeof out, &err), 0, "%s", err.msg);
    cr_assert_str_eq(out, tpath("ckpt-000002"));
    spit(tpath("LATEST"), "ckpt-000099\n", 12);
    cr_assert_eq(cm_ckpt_resolve(th_dir, "auto", out, sizeof out, &err), 0, "%s", err.msg);
    cr_assert_str_eq(out, tpath("ckpt-000002"));
}

Test(ckpt, resolve_auto_none_intact, .init = setup_capture)
{
    char out[512], p[1024];
    cm_error err = {0};
    cr_assert_eq(cm_ckpt_resolve(tpath("nothing-here"), "auto", out, sizeof out, &err),
                 CM_ENOTFOUND);
    cr_assert(strstr(err.msg, "no checkpoint under"), "%s", err.msg);
    cr_assert_eq(cm_ckpt_resolve(th_dir, "auto", out, sizeof out, &err), CM_ENOTFOUND);
    cr_assert(strstr(err.msg, "no checkpoint under"), "%s", err.msg);

    const char *d1 = make_ckpt(th_dir, 1, 1, 3);
    const char *d2 = make_ckpt(th_dir, 2, 1, 3);
    snprintf(p, sizeof p, "%s/MANIFEST", d1);
    flip_byte(p, 30);
    snprintf(p, sizeof p, "%s/t0-s0.rows", d2);
    unlink(p);
    cr_assert_eq(cm_ckpt_resolve(th_dir, "auto", out, sizeof out, &err), CM_ENOTFOUND);
    cr_assert(strstr(err.msg, "none of the 2 checkpoints"), "%s", err.msg);
    char *log = captured();
    cr_assert(strstr(log, "ckpt-000001: skipped:"), "log: %s", log);
    cr_assert(strstr(log, "ckpt-000002: skipped:"), "log: %s", log);
    cr_assert(strstr(log, "checksum mismatch"), "log: %s", log);
}

Test(ckpt, resolve_explicit_dir)
{
    const char *d1 = make_ckpt(th_dir, 1, 1, 3);
    const char *d2 = make_ckpt(th_dir, 2, 1, 3);
    char out[512], p[1024];
    cm_error err = {0};
    cr_assert_eq(cm_ckpt_resolve(th_dir, d1, out, sizeof out, &err), 0, "%s", err.msg);
    cr_assert_str_eq(out, d1);
    /* no root needed for an explicit directory */
    cr_assert_eq(cm_ckpt_resolve("", d1, out, sizeof out, &err), 0, "%s", err.msg);
    cr_assert_str_eq(out, d1);
    /* a bare name is looked up under the root */
    cr_assert_eq(cm_ckpt_resolve(th_dir, "ckpt-000002", out, sizeof out, &err), 0, "%s",
                 err.msg);
    cr_assert_str_eq(out, d2);
    /* an explicit torn checkpoint is an error, not a fallback */
    snprintf(p, sizeof p, "%s/t0-s1.rows", d2);
    cr_assert_eq(truncate(p, 100), 0);
    cr_assert_eq(cm_ckpt_resolve(th_dir, d2, out, sizeof out, &err), CM_ECHECKSUM);
    cr_assert(strstr(err.msg, "not intact"), "%s", err.msg);
    cr_assert(strstr(err.msg, "t0-s1.rows"), "%s", err.msg);
    cr_assert_eq(cm_ckpt_resolve(th_dir, tpath("ckpt-000077"), out, sizeof out, &err),
                 CM_ENOTFOUND);
    /* bad arguments */
    cr_assert_eq(cm_ckpt_resolve(th_dir, "", out, sizeof out, &err), CM_EINVAL);
    cr_assert_eq(cm_ckpt_resolve("", "auto", out, sizeof out, &err), CM_EINVAL);
    cr_assert_eq(cm_ckpt_resolve(th_dir, d1, out, 4, &err), CM_ERANGE);
}

/* The whole round: write, publish, resolve, read every shard back. */
Test(ckpt, write_resolve_load)
{
    make_ckpt(th_dir, 4, 1, 2);
    char out[512];
    cm_error err = {0};
    cr_assert_eq(cm_ckpt_resolve(th_dir, "auto", out, sizeof out, &err), 0, "%s", err.msg);
    cm_manifest m;
    cr_assert_eq(cm_manifest_read(out, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(m.epoch, 4);
    for (size_t f = 0; f < m.n_files; f++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", out, m.files[f].name);
        cm_shard s;
        cr_assert_eq(cm_shard_read(p, m.files[f].size, m.files[f].checksum, &s, &err), 0, "%s",
                     err.msg);
        cr_assert_eq(s.n, m.files[f].rows);
        cr_assert_eq(s.table, m.files[f].table);
        cm_shard_free(&s);
    }
    cm_manifest_free(&m);
}

/* Rows gathered from where they live make the same file, byte for byte,
 * as the rows in one array; more rows than one gathering write holds. */
Test(ckpt, shard_written_from_row_pointers)
{
    const size_t n = 40000;
    rows_t r = make_rows(n, 32, 33);
    const float **at = malloc(n * sizeof *at);
    /* rows scattered in reverse order, as a slab would hold them */
    float *scattered = malloc(n * 33 * sizeof *scattered);
    for (size_t i = 0; i < n; i++) {
        float *dst = scattered + (n - 1 - i) * 33;
        memcpy(dst, r.rows + i * 33, 33 * sizeof *dst);
        at[i] = dst;
    }
    uint64_t size1, sum1, size2, sum2;
    const char *p1 = tpath("a.rows");
    write_shard(p1, 1, &r, &size1, &sum1);
    const char *p2 = tpath("b.rows");
    cm_error err = {0};
    cr_assert_eq(cm_shard_write_rows(p2, 1, 32, 33, r.keys, at, n, &size2, &sum2, &err), 0,
                 "%s", err.msg);
    cr_expect_eq(size1, size2);
    cr_expect_eq(sum1, sum2, "same bytes, same checksum");
    free(at);
    free(scattered);
    free_rows(&r);
}

Test(ckpt, shard_write_refuses_non_finite_rows)
{
    rows_t r = make_rows(10, 2, 4);
    const char *p = tpath("nan.rows");
    cm_error err = {0};
    r.rows[3 * 4 + 1] = NAN;
    cr_expect_eq(cm_shard_write(p, 1, 2, 4, r.keys, r.rows, r.n, NULL, NULL, &err), CM_ERANGE);
    char want[128];
    snprintf(want, sizeof want, "table 1 key %llu: weight 1 is nan", (unsigned long long)r.keys[3]);
    cr_expect(strstr(err.msg, want) != NULL, "'%s' lacks '%s'", err.msg, want);
    cr_expect(strstr(err.msg, p) != NULL, "the file is named: %s", err.msg);
    cr_expect(!exists(p), "nothing written");
    cr_expect_eq(count_names(th_dir, ".tmp."), 0, "no temporary file left");
    r.rows[3 * 4 + 1] = 1.0f;
    r.rows[9 * 4 + 3] = INFINITY;
    const float *rowp[10];
    for (int i = 0; i < 10; i++)
        rowp[i] = r.rows + i * 4;
    cr_expect_eq(cm_shard_write_rows(p, 0, 2, 4, r.keys, rowp, r.n, NULL, NULL, &err), CM_ERANGE);
    cr_expect(strstr(err.msg, "optimizer state float 3 is infinite") != NULL, "%s", err.msg);
    cr_expect(!exists(p));
    r.rows[9 * 4 + 3] = 2.0f;
    uint64_t size = 0, sum = 0;
    write_shard(p, 0, &r, &size, &sum);
    cr_expect(exists(p), "finite rows are written");
    free_rows(&r);
}

Test(ckpt, any_tells_a_fresh_root_from_one_with_checkpoints)
{
    cm_error err = {0};
    const char *root = tpath("anyroot");
    cr_expect_eq(cm_ckpt_any(root, &err), 0, "a missing root holds none");
    cr_expect_eq(cm_ckpt_any("", &err), 0);
    cr_assert_eq(mkdir(root, 0755), 0);
    cr_expect_eq(cm_ckpt_any(root, &err), 0, "an empty root holds none");
    char p[1024];
    snprintf(p, sizeof p, "%s/ckpt-000001", root);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/ckpt-000001/t0-s0.rows", root);
    spit(p, "x", 1);
    cr_expect_eq(cm_ckpt_any(root, &err), 0, "an unfinished write (no MANIFEST) is none");
    snprintf(p, sizeof p, "%s/notackpt", root);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/notackpt/MANIFEST", root);
    spit(p, "x", 1);
    cr_expect_eq(cm_ckpt_any(root, &err), 0, "other names are not checkpoints");
    snprintf(p, sizeof p, "%s/ckpt-000001/MANIFEST", root);
    spit(p, "torn", 4);
    cr_expect_eq(cm_ckpt_any(root, &err), 1, "a MANIFEST, even a torn one, counts");
    unlink(p);
    snprintf(p, sizeof p, "%s/LATEST", root);
    spit(p, "ckpt-000009\n", 12);
    cr_expect_eq(cm_ckpt_any(root, &err), 1, "a LATEST counts");
}

/* BEST: the chosen epoch's checkpoint, read by "best", kept by pruning,
 * passed over for LATEST by "auto", forgotten on request; a torn or absent
 * one falls back to what "auto" picks. */
Test(ckpt, best_pointer)
{
    char out[1024], latest[300];
    cm_error err = {0};
    make_ckpt(th_dir, 1, 1, 2);
    make_ckpt(th_dir, 2, 1, 2);
    cr_assert_eq(cm_ckpt_resolve(th_dir, "best", out, sizeof out, &err), 0, "%s", err.msg);
    cr_expect(strstr(out, "ckpt-000002") != NULL, "no BEST: as auto, %s", out);
    cr_assert_eq(cm_ckpt_publish_best(th_dir, "ckpt-000002", &err), 0, "%s", err.msg);
    cr_expect_neq(cm_ckpt_publish_best(th_dir, "ckpt-000009", &err), 0, "no such checkpoint");
    cr_expect_neq(cm_ckpt_publish_best(th_dir, "../x", &err), 0);
    for (uint32_t e = 3; e <= 5; e++)
        make_ckpt(th_dir, e, 1, 2);
    cr_expect(exists(tpath("ckpt-000002/MANIFEST")), "pruning kept BEST's checkpoint");
    cr_expect(!exists(tpath("ckpt-000003")), "and pruned the others beyond keep");
    cr_expect_eq(count_names(th_dir, "ckpt-"), 3, "the 2 newest and BEST's");
    read_latest(th_dir, latest, sizeof latest);
    cr_expect_str_eq(latest, "ckpt-000005\n", "LATEST is not moved by BEST");
    cr_assert_eq(cm_ckpt_resolve(th_dir, "best", out, sizeof out, &err), 0, "%s", err.msg);
    cr_expect(strstr(out, "ckpt-000002") != NULL, "%s", out);
    cr_assert_eq(cm_ckpt_resolve(th_dir, "auto", out, sizeof out, &err), 0, "%s", err.msg);
    cr_expect(strstr(out, "ckpt-000005") != NULL, "resume goes by LATEST: %s", out);
    /* a damaged chosen checkpoint is not exported: the newest intact one is */
    flip_byte(tpath("ckpt-000002/t0-s0.rows"), 40);
    cr_assert_eq(cm_ckpt_resolve(th_dir, "best", out, sizeof out, &err), 0, "%s", err.msg);
    cr_expect(strstr(out, "ckpt-000005") != NULL, "%s", out);
    cr_assert_eq(cm_ckpt_forget_best(th_dir, &err), 0, "%s", err.msg);
    cr_expect(!exists(tpath("BEST")));
    cr_expect_eq(cm_ckpt_forget_best(th_dir, &err), 0, "forgetting twice is fine");
}

/* The validation bookkeeping a resumed run takes up survives the MANIFEST. */
Test(ckpt, manifest_keeps_the_choice)
{
    cm_manifest m, g;
    fill_manifest(&m, 2);
    m.valid_metric = 0.91;
    m.best_epoch = 4;
    m.best_valid = 0.9;
    m.stale_evals = 2;
    m.best_test_rmse = 0.93;
    m.best_test_mae = 0.73;
    m.best_test_auc = 0.95;
    m.best_test_logloss = 0.21;
    cm_error err = {0};
    cr_assert_eq(cm_manifest_write(th_dir, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(cm_manifest_read(th_dir, &g, &err), 0, "%s", err.msg);
    cr_expect_eq(g.valid_metric, 0.91);
    cr_expect_eq(g.best_epoch, 4);
    cr_expect_eq(g.best_valid, 0.9);
    cr_expect_eq(g.stale_evals, 2);
    cr_expect_eq(g.best_test_rmse, 0.93);
    cr_expect_eq(g.best_test_mae, 0.73);
    cr_expect_eq(g.best_test_auc, 0.95);
    cr_expect_eq(g.best_test_logloss, 0.21);
    cm_manifest_free(&m);
    cm_manifest_free(&g);
}
