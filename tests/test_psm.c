/* The .psm model file: writer round trip, the standalone reader's API, and
 * the reader against damaged files (bad magic, truncation at every byte,
 * wrong sizes and offsets, flipped bits): a clear error, never a crash. */
#include <criterion/criterion.h>
#include <math.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "serve/psm.h"
#include "serve/psm_write.h"

static char s_dir[] = "/tmp/psrec-psm-XXXXXX";
static char s_path[512];

static void s_setup(void)
{
    cr_assert_not_null(mkdtemp(s_dir));
    snprintf(s_path, sizeof s_path, "%s/model.psm", s_dir);
}

static void s_teardown(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s_dir);
}

TestSuite(psm, .init = s_setup, .fini = s_teardown, .timeout = 120);

/* A small model: users 5 x 3, items 7 x 3, an empty table of dim 1. */
static uint64_t s_uids[] = {1, 4, 9, 16, 1ull << 63};
static uint64_t s_iids[] = {0, 2, 3, 5, 8, 13, 21};
static float s_urows[5 * 3], s_irows[7 * 3];

static sv_psm_model s_model(sv_psm_table *t)
{
    for (int i = 0; i < 15; i++)
        s_urows[i] = 0.25f * (float)i - 1.f;
    for (int i = 0; i < 21; i++)
        s_irows[i] = 0.5f - 0.125f * (float)i;
    t[0] = (sv_psm_table){"user", 3, 5, s_uids, s_urows};
    t[1] = (sv_psm_table){"item", 3, 7, s_iids, s_irows};
    t[2] = (sv_psm_table){"empty", 1, 0, NULL, NULL};
    return (sv_psm_model){"mf", "score = x", 3.5, 1.f, 5.f, 3, t};
}

static void s_write_model(void)
{
    sv_psm_table t[3];
    sv_psm_model m = s_model(t);
    cm_error err = {0};
    cr_assert_eq(sv_psm_write(s_path, &m, &err), 0, "%s", err.msg);
}

/* The file's bytes, 64-byte aligned; *n its size. */
static unsigned char *s_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = aligned_alloc(64, (*n + 63) / 64 * 64 + 64);
    cr_assert_not_null(b);
    cr_assert_eq(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void s_dump(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

static uint64_t s_get64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void s_put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static void s_put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }

/* Recomputes the checksum so that a structural check, not the checksum,
 * has to catch the damage. */
static void s_fix_checksum(unsigned char *b, size_t n)
{
    uint64_t h = psm_checksum_update(PSM_CHECKSUM_SEED, b, PSM_CHECKSUM_OFFSET);
    h = psm_checksum_update(h, b + PSM_HEADER_SIZE, n - PSM_HEADER_SIZE);
    s_put64(b + PSM_CHECKSUM_OFFSET, h);
}

/* Expects b (n bytes) to be refused with a message containing `want`. */
static void s_expect_refused(const unsigned char *b, size_t n, unsigned flags, const char *want)
{
    char err[PSM_ERR_MAX] = "";
    psm_file *f = psm_open_memory(b, n, flags | PSM_OPEN_COPY, err, sizeof err);
    cr_assert_null(f, "damaged file accepted (want '%s')", want);
    cr_expect(strstr(err, want) != NULL, "message '%s' lacks '%s'", err, want);
}

Test(psm, round_trip_every_field)
{
    s_write_model();
    unsigned modes[] = {0, PSM_OPEN_COPY};
    for (size_t mo = 0; mo < 2; mo++) {
        char err[PSM_ERR_MAX] = "";
        psm_file *f = psm_open(s_path, modes[mo], err, sizeof err);
        cr_assert_not_null(f, "%s", err);
        cr_expect_str_eq(psm_model(f), "mf");
        cr_expect_str_eq(psm_formula(f), "score = x");
        cr_expect_eq(psm_global_mean(f), 3.5);
        cr_expect_eq(psm_clip_lo(f), 1.f);
        cr_expect_eq(psm_clip_hi(f), 5.f);
        cr_expect_eq(psm_file_size(f) % PSM_ALIGN, 0);
        cr_assert_eq(psm_n_tables(f), 3);
        psm_table u, it, e, x;
        cr_assert_eq(psm_table_find(f, "user", &u), 0);
        cr_assert_eq(psm_table_find(f, "item", &it), 0);
        cr_assert_eq(psm_table_at(f, 2, &e), 0);
        cr_expect_eq(psm_table_at(f, 3, &x), -1);
        cr_expect_eq(psm_table_find(f, "nope", &x), -1);
        cr_expect_str_eq(e.name, "empty");
        cr_expect_eq(e.n_rows, 0);
        cr_expect_eq(psm_find(&e, 3), -1);
        cr_expect_eq(u.dim, 3);
        cr_expect_eq(u.n_rows, 5);
        cr_expect_eq(it.n_rows, 7);
        cr_expect_eq((uintptr_t)u.ids % PSM_ALIGN, 0);
        cr_expect_eq((uintptr_t)it.rows % PSM_ALIGN, 0);
        cr_expect_eq(memcmp(u.ids, s_uids, sizeof s_uids), 0);
        cr_expect_eq(memcmp(u.rows, s_urows, sizeof s_urows), 0);
        cr_expect_eq(memcmp(it.ids, s_iids, sizeof s_iids), 0);
        cr_expect_eq(memcmp(it.rows, s_irows, sizeof s_irows), 0);
        for (int i = 0; i < 7; i++) {
            cr_expect_eq(psm_find(&it, s_iids[i]), i);
            cr_expect_eq(psm_row(&it, s_iids[i]), it.rows + 3 * i);
        }
        uint64_t absent[] = {1, 4, 6, 22, UINT64_MAX};
        for (int i = 0; i < 5; i++) {
            cr_expect_eq(psm_find(&it, absent[i]), -1, "%llu", (unsigned long long)absent[i]);
            cr_expect_null(psm_row(&it, absent[i]));
        }
        cr_expect_eq(psm_find(&u, 1ull << 63), 4);
        psm_close(&f);
        cr_expect_null(f);
        psm_close(&f); /* no-op on NULL */
    }
}

Test(psm, open_memory_borrows_or_copies)
{
    s_write_model();
    size_t n;
    unsigned char *b = s_slurp(s_path, &n);
    char err[PSM_ERR_MAX];
    psm_file *f = psm_open_memory(b, n, 0, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    psm_table it;
    cr_assert_eq(psm_table_find(f, "item", &it), 0);
    cr_expect_eq((const void *)it.ids, (const void *)(b + s_get64(b + s_get64(b + 48) + 128 + 80)));
    psm_close(&f);
    f = psm_open_memory(b + 4, n - 4, 0, err, sizeof err);
    cr_expect_null(f);
    cr_expect(strstr(err, "aligned") != NULL, "%s", err);
    free(b);
}

Test(psm, layout_matches_the_documented_bytes)
{
    s_write_model();
    size_t n;
    unsigned char *b = s_slurp(s_path, &n);
    cr_expect_eq(memcmp(b, "PSRECPSM", 8), 0);
    uint32_t version, n_tables, strings;
    memcpy(&version, b + 8, 4);
    memcpy(&n_tables, b + 12, 4);
    memcpy(&strings, b + 40, 4);
    cr_expect_eq(version, 1);
    cr_expect_eq(n_tables, 3);
    cr_expect_eq(s_get64(b + 16), n);
    double gm;
    memcpy(&gm, b + 24, 8);
    cr_expect_eq(gm, 3.5);
    cr_expect_str_eq((const char *)b + 64, "mf");
    cr_expect_str_eq((const char *)b + 64 + 3, "score = x");
    cr_expect_eq(strings % 8, 0);
    uint64_t dir = s_get64(b + 48);
    cr_expect_eq(dir, 64 + strings);
    const unsigned char *e = b + dir + 128; /* the item entry */
    cr_expect_str_eq((const char *)e, "item");
    uint32_t dim;
    memcpy(&dim, e + 64, 4);
    cr_expect_eq(dim, 3);
    cr_expect_eq(s_get64(e + 72), 7);
    uint64_t ids = s_get64(e + 80), rows = s_get64(e + 88);
    cr_expect_eq(ids % 64, 0);
    cr_expect_eq(rows % 64, 0);
    cr_expect_eq(memcmp(b + ids, s_iids, sizeof s_iids), 0);
    cr_expect_eq(memcmp(b + rows, s_irows, sizeof s_irows), 0);
    /* checksum: FNV-1a style over words, the checksum word skipped */
    uint64_t h = PSM_CHECKSUM_SEED;
    for (size_t i = 0; i < n; i += 8) {
        if (i == 56)
            continue;
        h ^= s_get64(b + i);
        h *= 0x100000001b3ull;
        h ^= h >> 32;
    }
    cr_expect_eq(h, s_get64(b + 56));
    free(b);
}

Test(psm, writer_refuses_what_the_format_cannot_hold)
{
    sv_psm_table t[3];
    sv_psm_model m = s_model(t);
    cm_error err = {0};
    uint64_t bad_ids[] = {0, 2, 2, 5, 8, 13, 21};
    t[1].ids = bad_ids;
    cr_expect_eq(sv_psm_write(s_path, &m, &err), CM_EINVAL);
    cr_expect(strstr(err.msg, "ascending") != NULL, "%s", err.msg);
    m = s_model(t);
    t[2].name = "user";
    cr_expect_eq(sv_psm_write(s_path, &m, &err), CM_EINVAL);
    cr_expect(strstr(err.msg, "twice") != NULL, "%s", err.msg);
    m = s_model(t);
    t[0].name = "";
    cr_expect_eq(sv_psm_write(s_path, &m, &err), CM_EINVAL);
    m = s_model(t);
    t[0].name = "a_name_that_is_far_too_long_for_the_sixty_four_byte_name_field_x";
    cr_expect_eq(sv_psm_write(s_path, &m, &err), CM_EINVAL);
    m = s_model(t);
    t[0].dim = 0;
    cr_expect_eq(sv_psm_write(s_path, &m, &err), CM_EINVAL);
    cr_expect(strstr(err.msg, "dim") != NULL, "%s", err.msg);
    struct stat st;
    cr_expect_neq(stat(s_path, &st), 0, "no file after refusals");
    cr_expect_neq(sv_psm_write("/nonexistent-dir/x.psm", &m, &err), 0);
    cr_expect(strstr(err.msg, "/nonexistent-dir/x.psm") != NULL, "%s", err.msg);
}

Test(psm, write_replaces_by_rename)
{
    s_write_model();
    struct stat a, b;
    cr_assert_eq(stat(s_path, &a), 0);
    s_write_model();
    cr_assert_eq(stat(s_path, &b), 0);
    cr_expect_neq(a.st_ino, b.st_ino, "a new file, renamed over the old one");
    char cmd[700], out[256] = "";
    snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp", s_dir);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    cr_expect_not_null(fgets(out, sizeof out, p));
    pclose(p);
    cr_expect_eq(atoi(out), 0, "no temporary file left");
}

Test(psm, missing_empty_and_odd_files)
{
    char err[PSM_ERR_MAX] = "";
    cr_expect_null(psm_open("/nonexistent/model.psm", 0, err, sizeof err));
    cr_expect(strstr(err, "/nonexistent/model.psm") && strstr(err, "No such file"), "%s", err);
    cr_expect_null(psm_open(s_dir, 0, err, sizeof err));
    cr_expect(strstr(err, "not a regular file") != NULL, "%s", err);
    s_dump(s_path, "", 0);
    cr_expect_null(psm_open(s_path, 0, err, sizeof err));
    cr_expect(strstr(err, "truncated") && strstr(err, s_path), "%s", err);
    s_dump(s_path, "# just some text, not a model\n", 30);
    cr_expect_null(psm_open(s_path, 0, err, sizeof err));
    cr_expect(strstr(err, "bad magic") != NULL, "%s", err);
    /* NULL error buffer is fine */
    cr_expect_null(psm_open(s_path, 0, NULL, 0));
}

Test(psm, bad_magic_and_version)
{
    s_write_model();
    size_t n;
    unsigned char *b = s_slurp(s_path, &n);
    b[0] = 'X';
    s_expect_refused(b, n, 0, "bad magic");
    s_dump(s_path, b, n);
    char err[PSM_ERR_MAX];
    cr_expect_null(psm_open(s_path, 0, err, sizeof err));
    cr_expect(strstr(err, s_path) && strstr(err, "bad magic"), "names the file: %s", err);
    b[0] = 'P';
    s_put32(b + 8, 2);
    s_fix_checksum(b, n);
    s_expect_refused(b, n, 0, "unsupported version 2");
    free(b);
}

Test(psm, truncated_at_every_byte)
{
    s_write_model();
    size_t n;
    unsigned char *b = s_slurp(s_path, &n);
    for (size_t cut = 0; cut < n; cut++) {
        char err[PSM_ERR_MAX] = "";
        psm_file *f = psm_open_memory(b, cut, PSM_OPEN_COPY, err, sizeof err);
        cr_assert_null(f, "accepted a file cut at %zu of %zu", cut, n);
        cr_assert(strstr(err, "truncated") != NULL, "cut %zu: %s", cut, err);
    }
    /* and from disk, at a few points */
    size_t cuts[] = {1, 63, 64, 200, n / 2, n - 8, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        s_dump(s_path, b, cuts[i]);
        char err[PSM_ERR_MAX] = "";
        for (unsigned fl = 0; fl <= PSM_OPEN_COPY; fl += PSM_OPEN_COPY) {
            cr_expect_null(psm_open(s_path, fl, err, sizeof err), "cut %zu", cuts[i]);
            cr_expect(strstr(err, "truncated") && strstr(err, s_path), "%s", err);
        }
    }
    free(b);
}

Test(psm, wrong_sizes)
{
    s_write_model();
    size_t n;
    unsigned char *b = s_slurp(s_path, &n);
    /* trailing bytes */
    unsigned char *big = aligned_alloc(64, n + 64);
    memcpy(big, b, n);
    memset(big + n, 0, 64);
    s_expect_refused(big, n + 64, 0, "wrong size");
    free(big);
    /* header says larger / smaller */
    s_put64(b + 16, n + 64);
    s_expect_refused(b, n, 0, "truncated");
    s_put64(b + 16, n - 64);
    s_expect_refused(b, n, 0, "wrong size");
    s_put64(b + 16, n);
    free(b);
}

/* Applies `edit` to a fresh copy, fixes the checksum, expects `want`. */
typedef void (*s_edit_fn)(unsigned char *b, size_t n);
static void s_expect_edit_refused(s_edit_fn edit, const char *want)
{
    size_t n;
    unsigned char *b = s_slurp(s_path, &n);
    edit(b, n);
    s_fix_checksum(b, n);
    s_expect_refused(b, n, 0, want);
    free(b);
}

static uint64_t s_dir_of(const unsigned char *b) { return s_get64(b + 48); }
static void s_e_ids_far(unsigned char *b, size_t n) { s_put64(b + s_dir_of(b) + 128 + 80, (uint64_t)n); }
static void s_e_ids_huge(unsigned char *b, size_t n) { s_put64(b + s_dir_of(b) + 128 + 80, UINT64_MAX - 63); }
static void s_e_rows_misaligned(unsigned char *b, size_t n) { b[s_dir_of(b) + 128 + 88] += 8; }
static void s_e_rows_over_header(unsigned char *b, size_t n) { s_put64(b + s_dir_of(b) + 128 + 88, 0); }
static void s_e_nrows_huge(unsigned char *b, size_t n) { s_put64(b + s_dir_of(b) + 128 + 72, 1ull << 61); }
static void s_e_nrows_plus(unsigned char *b, size_t n)
{
    uint64_t r = s_get64(b + s_dir_of(b) + 128 + 72);
    s_put64(b + s_dir_of(b) + 128 + 72, r + 1000);
}
static void s_e_dim_zero(unsigned char *b, size_t n) { s_put32(b + s_dir_of(b) + 128 + 64, 0); }
static void s_e_dim_huge(unsigned char *b, size_t n) { s_put32(b + s_dir_of(b) + 128 + 64, 1u << 30); }
static void s_e_dim_big(unsigned char *b, size_t n) { s_put32(b + s_dir_of(b) + 128 + 64, 4000); }
static void s_e_tables_many(unsigned char *b, size_t n) { s_put32(b + 12, 100000); }
static void s_e_tables_more(unsigned char *b, size_t n) { s_put32(b + 12, 200); }
static void s_e_strings_odd(unsigned char *b, size_t n) { s_put32(b + 40, 12); }
static void s_e_dir_moved(unsigned char *b, size_t n) { s_put64(b + 48, 1u << 20); }
static void s_e_strings_unterminated(unsigned char *b, size_t n)
{
    uint32_t sz;
    memcpy(&sz, b + 40, 4);
    memset(b + 64, 'x', sz);
}
static void s_e_name_unterminated(unsigned char *b, size_t n) { memset(b + s_dir_of(b), 'u', 64); }
static void s_e_name_empty(unsigned char *b, size_t n) { b[s_dir_of(b)] = 0; }
static void s_e_name_dup(unsigned char *b, size_t n) { memcpy(b + s_dir_of(b) + 128, "user", 5); }
static void s_e_ids_unsorted(unsigned char *b, size_t n)
{
    unsigned char *ids = b + s_get64(b + s_dir_of(b) + 128 + 80);
    unsigned char t[8];
    memcpy(t, ids, 8);
    memcpy(ids, ids + 8, 8);
    memcpy(ids + 8, t, 8);
}
static void s_e_mean_nan(unsigned char *b, size_t n) { s_put64(b + 24, 0x7ff8000000000000ull); }

Test(psm, wrong_offsets_and_fields)
{
    s_write_model();
    s_expect_edit_refused(s_e_ids_far, "do not fit");
    s_expect_edit_refused(s_e_ids_huge, "do not fit");
    s_expect_edit_refused(s_e_rows_misaligned, "aligned");
    s_expect_edit_refused(s_e_rows_over_header, "do not fit");
    s_expect_edit_refused(s_e_nrows_huge, "do not fit");
    s_expect_edit_refused(s_e_nrows_plus, "do not fit");
    s_expect_edit_refused(s_e_dim_zero, "dim 0");
    s_expect_edit_refused(s_e_dim_huge, "dim");
    s_expect_edit_refused(s_e_dim_big, "do not fit");
    s_expect_edit_refused(s_e_tables_many, "tables");
    s_expect_edit_refused(s_e_tables_more, "truncated");
    s_expect_edit_refused(s_e_strings_odd, "string block");
    s_expect_edit_refused(s_e_dir_moved, "directory");
    s_expect_edit_refused(s_e_strings_unterminated, "NUL");
    s_expect_edit_refused(s_e_name_unterminated, "name");
    s_expect_edit_refused(s_e_name_empty, "name");
    s_expect_edit_refused(s_e_name_dup, "twice");
    s_expect_edit_refused(s_e_ids_unsorted, "ascending");
    s_expect_edit_refused(s_e_mean_nan, "not a number");
}

Test(psm, checksum_catches_flipped_bits)
{
    s_write_model();
    size_t n;
    unsigned char *b = s_slurp(s_path, &n);
    psm_file *f;
    char err[PSM_ERR_MAX];
    /* a row value: only the checksum can tell */
    uint64_t rows = s_get64(b + s_dir_of(b) + 128 + 88);
    b[rows + 5] ^= 0x10;
    s_expect_refused(b, n, 0, "checksum mismatch");
    f = psm_open_memory(b, n, PSM_OPEN_NO_CHECKSUM, err, sizeof err);
    cr_expect_not_null(f, "structurally fine: %s", err);
    psm_close(&f);
    b[rows + 5] ^= 0x10;
    /* every single-bit flip anywhere is refused */
    for (size_t i = 0; i < n; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            b[i] ^= (unsigned char)(1u << bit);
            f = psm_open_memory(b, n, 0, err, sizeof err);
            cr_assert_null(f, "flip at byte %zu bit %d accepted", i, bit);
            b[i] ^= (unsigned char)(1u << bit);
        }
    }
    f = psm_open_memory(b, n, 0, err, sizeof err);
    cr_expect_not_null(f, "%s", err);
    psm_close(&f);
    free(b);
}

Test(psm, random_damage_never_crashes)
{
    s_write_model();
    size_t n;
    unsigned char *orig = s_slurp(s_path, &n);
    unsigned char *b = aligned_alloc(64, (n + 63) / 64 * 64);
    uint64_t x = 88172645463325252ull;
    for (int it = 0; it < 3000; it++) {
        memcpy(b, orig, n);
        int flips = 1 + it % 4;
        for (int k = 0; k < flips; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            /* bias damage toward the header and directory */
            size_t at = (it % 2 ? x % n : x % 400 % n);
            b[at] = (unsigned char)(x >> 40);
        }
        size_t len = it % 5 == 0 ? (size_t)(x >> 20) % (n + 1) : n;
        unsigned flags = it % 3 == 0 ? 0 : PSM_OPEN_NO_CHECKSUM;
        if (flags)
            s_fix_checksum(b, n);
        char err[PSM_ERR_MAX] = "";
        psm_file *f = psm_open_memory(b, len, flags, err, sizeof err);
        if (f) {
            /* whatever was accepted must be safe to walk */
            for (uint32_t t = 0; t < psm_n_tables(f); t++) {
                psm_table tb;
                cr_assert_eq(psm_table_at(f, t, &tb), 0);
                volatile float sink = 0;
                for (uint64_t r = 0; r < tb.n_rows; r++) {
                    cr_assert_eq(psm_find(&tb, tb.ids[r]), (int64_t)r);
                    sink += tb.rows[r * tb.dim + tb.dim - 1];
                }
                (void)sink;
            }
            (void)strlen(psm_model(f));
            (void)strlen(psm_formula(f));
            psm_close(&f);
        } else {
            cr_assert(err[0] != '\0', "refused without a message");
        }
    }
    free(b);
    free(orig);
}

Test(psm, non_finite_weights_are_refused)
{
    sv_psm_table t[3];
    sv_psm_model m = s_model(t);
    cm_error err = {0};
    /* item id 2 (row 1), weight 1: a diverged model */
    s_irows[1 * 3 + 1] = NAN;
    cr_assert_eq(sv_psm_write(s_path, &m, &err), 0, "%s", err.msg);
    size_t n;
    unsigned char *b = s_slurp(s_path, &n);
    s_expect_refused(b, n, 0, "table 'item' id 2: weight 1 is nan");
    s_expect_refused(b, n, PSM_OPEN_NO_CHECKSUM, "diverged");
    char msg[PSM_ERR_MAX] = "";
    cr_expect_null(psm_open(s_path, 0, msg, sizeof msg));
    cr_expect(strstr(msg, s_path) != NULL, "the file is named: %s", msg);
    free(b);
    m = s_model(t);
    s_urows[4 * 3 + 2] = -INFINITY;
    cr_assert_eq(sv_psm_write(s_path, &m, &err), 0, "%s", err.msg);
    b = s_slurp(s_path, &n);
    s_expect_refused(b, n, 0, "table 'user' id 9223372036854775808: weight 2 is infinite");
    free(b);
    /* finite again: accepted (the check is not refusing everything) */
    s_write_model();
    b = s_slurp(s_path, &n);
    psm_file *f = psm_open_memory(b, n, PSM_OPEN_COPY, msg, sizeof msg);
    cr_expect_not_null(f, "%s", msg);
    psm_close(&f);
    free(b);
}
