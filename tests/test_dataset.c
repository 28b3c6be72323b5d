/* Tests for common/dataset: text formats, bad lines, the binary format and
 * its corruption checks, splitting, writers, and the real MovieLens files. */
#define _GNU_SOURCE /* nftw, mkdtemp */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/codec.h"
#include "common/dataset.h"
#include "common/hash.h"
#include "common/log.h"
#include "tmpdir.h"

/* ------------------------------------------------------------------------
 * Helpers: a temp dir per test, files in it
 * ------------------------------------------------------------------------ */

static void setup(void)
{
    th_tmpdir_make("dataset");
}

static void teardown(void)
{
    th_tmpdir_remove();
}

static void setup_quiet(void)
{
    setup();
    cm_log_set_level(CM_LOG_ERROR);
}

static void setup_capture(void)
{
    setup();
    cm_log_set_level(CM_LOG_INFO);
    cr_redirect_stderr();
}

TestSuite(dataset, .init = setup_quiet, .fini = teardown);

static const char *tpath(const char *name)
{
    return th_path(name);
}

static const char *write_file(const char *name, const void *data, size_t len)
{
    const char *p = tpath(name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
    return p;
}

static const char *write_str(const char *name, const char *s)
{
    return write_file(name, s, strlen(s));
}

static size_t file_size(const char *p)
{
    struct stat st;
    cr_assert_eq(stat(p, &st), 0);
    return (size_t)st.st_size;
}

static unsigned char *read_all(const char *p, size_t *len)
{
    *len = file_size(p);
    unsigned char *b = malloc(*len + 1);
    FILE *f = fopen(p, "rb");
    cr_assert_not_null(f);
    cr_assert_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static int load(const char *p, cm_ratings *r, cm_error *e)
{
    cm_load_opts o = cm_load_opts_default();
    return cm_ratings_load(p, &o, r, e);
}

static void expect_row(const cm_ratings *r, size_t i, uint64_t u, uint64_t it, float rating)
{
    cr_assert_lt(i, r->n);
    cr_assert_eq(r->user[i], u, "row %zu user %llu != %llu", i, (unsigned long long)r->user[i],
                 (unsigned long long)u);
    cr_assert_eq(r->item[i], it, "row %zu item", i);
    cr_assert_float_eq(r->rating[i], rating, 1e-6, "row %zu rating %g != %g", i, r->rating[i],
                       rating);
}

/* ------------------------------------------------------------------------
 * Text formats
 * ------------------------------------------------------------------------ */

Test(dataset, movielens_1m_double_colons)
{
    const char *p = write_str("ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n"
                                             "6040::1097::4::956715648\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 3);
    expect_row(&r, 0, 1, 1193, 5);
    expect_row(&r, 1, 1, 661, 3);
    expect_row(&r, 2, 6040, 1097, 4);
    cr_assert_eq(r.bad_lines, 0);
    cr_assert_lt(r.noise_floor, 0);
    cm_ratings_free(&r);
    cr_assert_eq(r.n, 0);
    cr_assert_null(r.owner_);
    cm_ratings_free(&r); /* no-op on a zeroed struct */
}

Test(dataset, movielens_100k_tabs)
{
    const char *p = write_str("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 3);
    expect_row(&r, 0, 196, 242, 3);
    expect_row(&r, 2, 22, 377, 1);
    cm_ratings_free(&r);
}

Test(dataset, csv_with_header)
{
    const char *p = write_str("ratings.csv", "userId,movieId,rating,timestamp\n"
                                             "1,1,4.0,964982703\n1,3,4.5,964981247\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 2);
    cr_assert_eq(r.bad_lines, 0, "the header is not a bad line");
    expect_row(&r, 0, 1, 1, 4.0f);
    expect_row(&r, 1, 1, 3, 4.5f);
    cm_ratings_free(&r);
}

Test(dataset, csv_without_header_and_spaces_around_commas)
{
    const char *p = write_str("r.csv", "10,20,3.5\n11 , 21 , 2\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 2);
    expect_row(&r, 0, 10, 20, 3.5f);
    expect_row(&r, 1, 11, 21, 2);
    cm_ratings_free(&r);
}

Test(dataset, header_only_on_line_one)
{
    const char *p = write_str("r.csv", "1,2,3\nuserId,movieId,rating\n4,5,1\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 2);
    cr_assert_eq(r.bad_lines, 1, "a header-like line later is a bad line");
    cm_ratings_free(&r);
}

Test(dataset, runs_of_spaces)
{
    const char *p = write_str("r.txt", "1   2  3.5\n   4 5 1   \n7 8 2 1234567\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 3);
    expect_row(&r, 0, 1, 2, 3.5f);
    expect_row(&r, 1, 4, 5, 1);
    expect_row(&r, 2, 7, 8, 2);
    cm_ratings_free(&r);
}

Test(dataset, crlf_blank_lines_comments_no_final_newline)
{
    const char *p = write_str("r.csv", "userId,movieId,rating\r\n# exported\r\n\r\n1,2,5\r\n"
                                       "\r\n   \r\n# note\r\n3,4,1.5");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 2, "n=%zu bad=%zu", r.n, r.bad_lines);
    cr_assert_eq(r.bad_lines, 0);
    expect_row(&r, 0, 1, 2, 5);
    expect_row(&r, 1, 3, 4, 1.5f);
    cm_ratings_free(&r);
}

Test(dataset, header_not_on_line_one_is_bad)
{
    /* the first data line is on line 3: a non-numeric rating there is bad */
    const char *p = write_str("r.csv", "# c\n\nuser,item,rating\n1,2,3\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(r.bad_lines, 1);
    cm_ratings_free(&r);
}

Test(dataset, utf8_bom_is_skipped)
{
    const char *p = write_str("r.csv", "\xEF\xBB\xBFuserId,movieId,rating\n1,2,3\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(r.bad_lines, 0);
    cm_ratings_free(&r);
}

Test(dataset, string_ids_hash_numeric_ids_kept)
{
    const char *p = write_str("r.tsv", "alice\tThe Matrix\t5\n"
                                       "18446744073709551615\t007\t1\n"
                                       "18446744073709551616\t-3\t2\n"
                                       "0\t+4\t3\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 4);
    expect_row(&r, 0, cm_hash_bytes("alice", 5, 0), cm_hash_bytes("The Matrix", 10, 0), 5);
    expect_row(&r, 1, UINT64_MAX, 7, 1);
    expect_row(&r, 2, cm_hash_bytes("18446744073709551616", 20, 0), cm_hash_bytes("-3", 2, 0), 2);
    expect_row(&r, 3, 0, cm_hash_bytes("+4", 2, 0), 3);
    cm_ratings_free(&r);
}

Test(dataset, rating_number_forms)
{
    const char *p = write_str("r.csv", "1,1,3.5\n1,2,-1\n1,3,1e1\n1,4,+2\n1,5,.5\n1,6,5.\n"
                                       "1,7,0.1234567890123456789\n1,8,2.5E-1\n1,9,-0\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 9);
    cr_assert_eq(r.bad_lines, 0);
    float want[] = {3.5f, -1, 10, 2, 0.5f, 5, 0.12345679f, 0.25f, 0};
    for (int i = 0; i < 9; i++)
        cr_assert_eq(r.rating[i], want[i], "row %d: %.9g", i, r.rating[i]);
    cm_ratings_free(&r);
}

/* Each kind of bad line on its own line number: counted, rest loaded. */
Test(dataset, each_kind_of_bad_line_is_counted)
{
    const char *p = write_str("bad.csv", "1,1,5\n"          /* 1 ok */
                                         "1,2\n"            /* 2 too few fields */
                                         "1,2,3,4,5\n"      /* 3 too many fields */
                                         ",2,3\n"           /* 4 empty user */
                                         "1, ,3\n"          /* 5 empty item */
                                         "1,2,nan\n"        /* 6 not a number */
                                         "1,2,1e999\n"      /* 7 not finite */
                                         "1,2,3.5x\n"       /* 8 trailing garbage */
                                         "1,2,\n"           /* 9 empty rating */
                                         "2,3,4\n");        /* 10 ok */
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 2);
    cr_assert_eq(r.bad_lines, 8);
    expect_row(&r, 1, 2, 3, 4);
    cm_ratings_free(&r);
}

/* The message of each kind, checked through max_bad_lines = 0, which makes
 * the first bad line fatal and puts it in the error text. */
static void expect_bad(const char *content, const char *line_tag, const char *words)
{
    const char *p = write_str("one.csv", content);
    cm_load_opts o = cm_load_opts_default();
    o.max_bad_lines = 0;
    cm_ratings r;
    cm_error e;
    cm_error_clear(&e);
    int rc = cm_ratings_load(p, &o, &r, &e);
    cr_assert_eq(rc, CM_ETOOMANY, "%s -> %d %s", content, rc, e.msg);
    char want[600];
    snprintf(want, sizeof want, "%s:%s:", p, line_tag);
    cr_assert_not_null(strstr(e.msg, want), "'%s' lacks '%s'", e.msg, want);
    cr_assert_not_null(strstr(e.msg, words), "'%s' lacks '%s'", e.msg, words);
    cr_assert_eq(r.n, 0);
    cr_assert_null(r.owner_);
}

Test(dataset, bad_line_messages_name_file_and_line)
{
    expect_bad("1,1,5\n1,2\n", "2", "expected 3 or 4 fields");
    expect_bad("1,1,5\n1,2\n", "2", "got 2");
    expect_bad("1,1,5\n1,2,3,4,5\n", "2", "got 5");
    expect_bad("1,1,5\n\n,2,3\n", "3", "empty");
    expect_bad("1,1,5\n1,,3\n", "2", "item id");
    expect_bad("1,1,5\n1,2,abc\n", "2", "got 'abc'");
    expect_bad("1,1,5\n1,2,1e999\n", "2", "finite");
    expect_bad("1,1,5\n1,2,3.5x\n", "2", "got '3.5x'");
    expect_bad("1\t1\t5\n1\t2\t-inf\n", "2", "rating");
}

Test(dataset, too_many_bad_lines_stops)
{
    char buf[4096] = "1,1,5\n";
    for (int i = 0; i < 12; i++)
        strcat(buf, "x,y\n");
    strcat(buf, "2,2,2\n");
    const char *p = write_str("many.csv", buf);
    cm_ratings r;
    cm_error e;
    int rc = load(p, &r, &e);
    cr_assert_eq(rc, CM_ETOOMANY);
    cr_assert_not_null(strstr(e.msg, "too many bad lines"), "%s", e.msg);
    cr_assert_not_null(strstr(e.msg, "10"), "names the limit: %s", e.msg);
    char first[600];
    snprintf(first, sizeof first, "first: %s:2: expected 3 or 4 fields", p);
    cr_assert_not_null(strstr(e.msg, first), "%s", e.msg);
    cr_assert_not_null(strstr(e.msg, "line 12"), "stopped at the 11th bad line: %s", e.msg);

    /* exactly at the limit is fine */
    cm_load_opts o = cm_load_opts_default();
    o.max_bad_lines = 12;
    cr_assert_eq(cm_ratings_load(p, &o, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 2);
    cr_assert_eq(r.bad_lines, 12);
    cm_ratings_free(&r);
    o.max_bad_lines = -1; /* no limit */
    cr_assert_eq(cm_ratings_load(p, &o, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.bad_lines, 12);
    cm_ratings_free(&r);
}

Test(dataset, bad_lines_are_logged_up_to_the_limit, .init = setup_capture)
{
    const char *p = write_str("log.csv", "1,1,5\nbad\n1,2,x\n1,2\n1,2,3\n");
    cm_load_opts o = cm_load_opts_default();
    o.log_bad_lines = 2;
    cm_ratings r;
    cm_error e;
    cr_assert_eq(cm_ratings_load(p, &o, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.bad_lines, 3);
    cm_ratings_free(&r);
    fflush(stderr);
    FILE *f = cr_get_redirected_stderr();
    char all[8192] = "";
    size_t len = fread(all, 1, sizeof all - 1, f);
    all[len] = '\0';
    char l2[600], l3[600], l4[600];
    snprintf(l2, sizeof l2, "%s:2: expected 3 or 4 fields", p);
    snprintf(l3, sizeof l3, "%s:3: expected a numeric rating, got 'x'", p);
    snprintf(l4, sizeof l4, "%s:4:", p);
    cr_assert_not_null(strstr(all, l2), "log: %s", all);
    cr_assert_not_null(strstr(all, l3), "log: %s", all);
    cr_assert_null(strstr(all, l4), "only the first 2 are logged: %s", all);
}

Test(dataset, empty_and_headless_files_fail)
{
    const char *names[] = {"empty.csv", "header.csv", "comments.csv", "blank.csv"};
    const char *bodies[] = {"", "userId,movieId,rating,timestamp\n", "# a\n# b\n", "\n\r\n  \n"};
    for (int i = 0; i < 4; i++) {
        const char *p = write_str(names[i], bodies[i]);
        cm_ratings r;
        cm_error e;
        int rc = load(p, &r, &e);
        cr_assert_eq(rc, CM_EPARSE, "%s: %d", names[i], rc);
        cr_assert_not_null(strstr(e.msg, "no data rows"), "%s", e.msg);
        cr_assert_not_null(strstr(e.msg, p), "%s", e.msg);
    }
    /* all bad but within the limit: still no rows, and the reason shown */
    const char *p = write_str("allbad.csv", "1,2\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "expected 3 or 4 fields"), "%s", e.msg);
}

Test(dataset, unreadable_file)
{
    cm_ratings r;
    cm_error e;
    const char *p = tpath("does-not-exist.csv");
    cr_assert_eq(load(p, &r, &e), CM_EIO);
    cr_assert_not_null(strstr(e.msg, p));
    cr_assert_not_null(strstr(e.msg, strerror(ENOENT)), "%s", e.msg);
    cr_assert_eq(load(th_dir, &r, &e), CM_EIO, "a directory");
    cr_assert_eq(cm_dataset_is_binary(p), CM_EIO);
}

Test(dataset, binary_garbage_in_text_path)
{
    const char data[] = "1,2,3\n\0\0\0\x01\x02garbage";
    const char *p = write_file("bin.csv", data, sizeof data);
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "binary data"), "%s", e.msg);
}

/* ------------------------------------------------------------------------
 * Binary format
 * ------------------------------------------------------------------------ */

static void make_rows(size_t n, uint64_t **u, uint64_t **it, float **ra)
{
    *u = calloc(n + 1, sizeof **u);
    *it = calloc(n + 1, sizeof **it);
    *ra = calloc(n + 1, sizeof **ra);
    for (size_t i = 0; i < n; i++) {
        (*u)[i] = i * 2654435761ULL;
        (*it)[i] = UINT64_MAX - i;
        (*ra)[i] = (float)(i % 10) * 0.5f + 0.25f;
    }
}

static const char *write_sample_bin(const char *name, size_t n)
{
    uint64_t *u, *it;
    float *ra;
    make_rows(n, &u, &it, &ra);
    cm_ratings r;
    cm_error e;
    cr_assert_eq(cm_ratings_from_arrays(u, it, ra, n, &r, &e), 0);
    r.noise_floor = 0.25;
    const char *p = tpath(name);
    cr_assert_eq(cm_ratings_write_bin(p, &r, "unit test", &e), 0, "%s", e.msg);
    cm_ratings_free(&r);
    free(u);
    free(it);
    free(ra);
    return p;
}

Test(dataset, binary_round_trip)
{
    const size_t n = 1000;
    const char *p = write_sample_bin("rt.psrd", n);
    cr_assert_eq(cm_dataset_is_binary(p), 1);
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, n);
    cr_assert_float_eq(r.noise_floor, 0.25, 1e-12);
    uint64_t *u, *it;
    float *ra;
    make_rows(n, &u, &it, &ra);
    cr_assert_arr_eq(r.user, u, n * sizeof *u);
    cr_assert_arr_eq(r.item, it, n * sizeof *it);
    cr_assert_arr_eq(r.rating, ra, n * sizeof *ra);
    /* columns are 64-byte aligned in memory too (the map is page aligned) */
    cr_assert_eq((uintptr_t)r.user % 64, 0);
    cr_assert_eq((uintptr_t)r.item % 64, 0);
    cr_assert_eq((uintptr_t)r.rating % 64, 0);
    cm_ratings_free(&r);
    free(u);
    free(it);
    free(ra);

    /* the header decodes and describes the file */
    size_t len;
    unsigned char *b = read_all(p, &len);
    cr_assert_eq(memcmp(b, CM_DATASET_MAGIC, 8), 0);
    uint32_t hl = b[8] | b[9] << 8 | b[10] << 16 | (uint32_t)b[11] << 24;
    cm_dataset_hdr h;
    cr_assert_eq(cm_codec_dataset_unpack(b + 16, hl, &h, &e), 0);
    cr_assert_eq(h.version, 1);
    cr_assert_eq(h.n_rows, n);
    cr_assert_str_eq(h.source, "unit test");
    cr_assert_eq(h.rating_min, 0.25f);
    cr_assert_eq(h.rating_max, 4.75f);
    cr_assert_float_eq(h.rating_mean, 2.5, 1e-9);
    cr_assert_eq(h.rating_offset + n * 4, len);
    cr_assert_eq(h.user_checksum, cm_hash_bytes(b + h.user_offset, n * 8, 0));
    free(b);

    /* no temporary file is left behind */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
    cr_assert_neq(access(tmp, F_OK), 0);
}

Test(dataset, binary_zero_rows)
{
    const char *p = write_sample_bin("zero.psrd", 0);
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 0);
    cr_assert_not_null(r.owner_);
    cm_ratings_free(&r);
}

Test(dataset, text_file_is_not_binary)
{
    const char *p = write_str("t.csv", "1,2,3\n");
    cr_assert_eq(cm_dataset_is_binary(p), 0);
    const char *q = write_str("short", "PSR");
    cr_assert_eq(cm_dataset_is_binary(q), 0);
}

Test(dataset, truncated_binary_never_crashes)
{
    const char *p = write_sample_bin("full.psrd", 300);
    size_t len;
    unsigned char *b = read_all(p, &len);
    /* every prefix: the preamble, the header, each column, the last byte */
    for (size_t cut = 0; cut < len; cut += (cut < 4200 ? 1 : 37)) {
        const char *q = write_file("cut.psrd", b, cut);
        cm_ratings r;
        cm_error e;
        cm_error_clear(&e);
        int rc = load(q, &r, &e);
        cr_assert_neq(rc, 0, "a file cut at %zu of %zu bytes loaded", cut, len);
        cr_assert_neq(e.msg[0], '\0');
        cr_assert_not_null(strstr(e.msg, q), "cut %zu: %s", cut, e.msg);
        cr_assert_eq(r.n, 0);
    }
    const char *q = write_file("cut.psrd", b, len - 1);
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(q, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "rating column"), "%s", e.msg);
    cr_assert_not_null(strstr(e.msg, "truncated"), "%s", e.msg);
    free(b);
}

Test(dataset, flipped_byte_is_a_checksum_error)
{
    const char *p = write_sample_bin("flip.psrd", 500);
    size_t len;
    unsigned char *b = read_all(p, &len);
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0);
    const char *cols[] = {"user", "item", "rating"};
    size_t offs[3] = {0, (size_t)((const char *)r.item - (const char *)r.user),
                      (size_t)((const char *)r.rating - (const char *)r.user)};
    cm_ratings_free(&r);
    size_t user_off = 4096; /* where the writer puts the first column */
    for (int c = 0; c < 3; c++) {
        size_t at = user_off + offs[c] + 123;
        b[at] ^= 0x10;
        const char *q = write_file("flipped.psrd", b, len);
        cm_error_clear(&e);
        cr_assert_eq(load(q, &r, &e), CM_ECHECKSUM, "column %s: %s", cols[c], e.msg);
        char want[64];
        snprintf(want, sizeof want, "%s column checksum mismatch", cols[c]);
        cr_assert_not_null(strstr(e.msg, want), "%s", e.msg);
        cr_assert_not_null(strstr(e.msg, q), "%s", e.msg);
        /* without verification the (wrong) data loads */
        cm_load_opts o = cm_load_opts_default();
        o.verify_checksum = 0;
        cr_assert_eq(cm_ratings_load(q, &o, &r, &e), 0, "%s", e.msg);
        cr_assert_eq(r.n, 500);
        cm_ratings_free(&r);
        b[at] ^= 0x10;
    }
    free(b);
}

Test(dataset, bad_magic_and_preamble)
{
    const char *p = write_sample_bin("m.psrd", 10);
    size_t len;
    unsigned char *b = read_all(p, &len);
    cm_ratings r;
    cm_error e;

    b[7] = '2'; /* another version of the format */
    const char *q = write_file("v2.psrd", b, len);
    cr_assert_eq(load(q, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "bad magic"), "%s", e.msg);
    cr_assert_eq(cm_dataset_is_binary(q), 0);
    b[7] = '1';

    b[0] = 'X'; /* damaged magic: binary bytes follow, not text */
    q = write_file("x.psrd", b, len);
    cr_assert_eq(load(q, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, q), "%s", e.msg);
    cr_assert_not_null(strstr(e.msg, "magic"), "%s", e.msg);
    b[0] = 'P';

    unsigned char save[4];
    memcpy(save, b + 8, 4);
    memset(b + 8, 0xff, 4); /* header length past the end */
    q = write_file("hl.psrd", b, len);
    cr_assert_eq(load(q, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "header length"), "%s", e.msg);
    b[8] = 3; /* header length too short to decode as the header */
    b[9] = b[10] = b[11] = 0;
    q = write_file("hs.psrd", b, len);
    int rc = load(q, &r, &e);
    cr_assert_neq(rc, 0, "a 3-byte header decoded");
    cr_assert_not_null(strstr(e.msg, q), "%s", e.msg);
    memcpy(b + 8, save, 4);
    free(b);
}

/* Builds a .psrd by hand with the given header to reach each check. */
static const char *craft(const char *name, cm_dataset_hdr *h, size_t n, size_t file_len)
{
    uint8_t *pb;
    size_t plen;
    cr_assert_eq(cm_codec_dataset_pack(h, &pb, &plen), 0);
    unsigned char *b = calloc(1, file_len);
    memcpy(b, CM_DATASET_MAGIC, 8);
    b[8] = (unsigned char)plen;
    b[9] = (unsigned char)(plen >> 8);
    memcpy(b + 16, pb, plen);
    (void)n;
    const char *p = write_file(name, b, file_len);
    free(pb);
    free(b);
    return p;
}

Test(dataset, header_fields_are_validated)
{
    const size_t n = 4, len = 4096 + 3 * 64;
    cm_dataset_hdr h;
    memset(&h, 0, sizeof h);
    h.version = 1;
    h.n_rows = n;
    h.user_offset = 4096;
    h.item_offset = 4096 + 64;
    h.rating_offset = 4096 + 128;
    uint64_t zeros8[4] = {0};
    float zeros4[4] = {0};
    h.user_checksum = h.item_checksum = cm_hash_bytes(zeros8, sizeof zeros8, 0);
    h.rating_checksum = cm_hash_bytes(zeros4, sizeof zeros4, 0);
    cm_ratings r;
    cm_error e;

    const char *p = craft("ok.psrd", &h, n, len);
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, n);
    cm_ratings_free(&r);

    cm_dataset_hdr bad = h;
    bad.version = 2;
    p = craft("ver.psrd", &bad, n, len);
    cr_assert_eq(load(p, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "version 2"), "%s", e.msg);

    bad = h;
    bad.item_offset = 4096 + 65;
    p = craft("align.psrd", &bad, n, len);
    cr_assert_eq(load(p, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "item column offset 4161 is not 64-byte aligned"), "%s", e.msg);

    bad = h;
    bad.rating_offset = 4096 + 192; /* 16 bytes past the end */
    p = craft("past.psrd", &bad, n, len);
    cr_assert_eq(load(p, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "rating column"), "%s", e.msg);

    bad = h;
    bad.n_rows = UINT64_MAX / 4; /* overflow bait */
    p = craft("rows.psrd", &bad, n, len);
    cr_assert_eq(load(p, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "outside the file"), "%s", e.msg);

    bad = h;
    bad.user_offset = 0; /* on top of the preamble */
    p = craft("overlap.psrd", &bad, n, len);
    cr_assert_eq(load(p, &r, &e), CM_EPARSE);
    cr_assert_not_null(strstr(e.msg, "user column"), "%s", e.msg);
}

/* Loading from a pipe exercises the read (not mmap) path. */
static int load_through_fifo(const char *src, cm_ratings *r, cm_error *e)
{
    size_t len;
    unsigned char *b = read_all(src, &len);
    const char *fifo = tpath("fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = open(fifo, O_WRONLY);
        size_t off = 0;
        while (fd >= 0 && off < len) {
            ssize_t k = write(fd, b + off, len - off);
            if (k <= 0)
                break;
            off += (size_t)k;
        }
        _exit(0);
    }
    int rc = load(fifo, r, e);
    int st;
    waitpid(pid, &st, 0);
    unlink(fifo);
    free(b);
    return rc;
}

Test(dataset, loads_from_a_pipe)
{
    const char *p = write_sample_bin("pipe.psrd", 200);
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load_through_fifo(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 200);
    cr_assert_eq(r.item[199], UINT64_MAX - 199);
    cm_ratings_free(&r);
    const char *t = write_str("pipe.csv", "userId,movieId,rating\n1,2,3\n4,5,6\n");
    cr_assert_eq(load_through_fifo(t, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 2);
    expect_row(&r, 1, 4, 5, 6);
    cm_ratings_free(&r);
}

/* ------------------------------------------------------------------------
 * Writers
 * ------------------------------------------------------------------------ */

Test(dataset, binwriter_streams_in_pieces)
{
    const size_t n = 200003; /* several internal chunks, odd tail */
    uint64_t *u, *it;
    float *ra;
    make_rows(n, &u, &it, &ra);
    const char *p = tpath("stream.psrd");
    cm_error e;
    cm_binwriter *w = cm_binwriter_open(p, n, &e);
    cr_assert_not_null(w, "%s", e.msg);
    size_t done = 0, step = 1;
    while (done < n) {
        size_t k = step < n - done ? step : n - done;
        cr_assert_eq(cm_binwriter_append(w, u + done, it + done, ra + done, k, &e), 0, "%s", e.msg);
        done += k;
        step = step * 3 + 1;
    }
    cr_assert_eq(cm_binwriter_append(w, u, it, ra, 1, &e), CM_ESTATE, "past the promised count");
    cr_assert_eq(cm_binwriter_close(w, 0.75, "stream", &e), 0, "%s", e.msg);
    cm_ratings r;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, n);
    cr_assert_arr_eq(r.user, u, n * sizeof *u);
    cr_assert_arr_eq(r.item, it, n * sizeof *it);
    cr_assert_arr_eq(r.rating, ra, n * sizeof *ra);
    cr_assert_float_eq(r.noise_floor, 0.75, 1e-12);
    cm_ratings_free(&r);
    free(u);
    free(it);
    free(ra);
}

static int dir_entries(void)
{
    int n = 0;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "ls -A %s | wc -l", th_dir);
    FILE *f = popen(cmd, "r");
    cr_assert(fscanf(f, "%d", &n) == 1);
    pclose(f);
    return n;
}

Test(dataset, binwriter_short_close_and_destroy_leave_nothing)
{
    uint64_t u[3] = {1, 2, 3};
    float ra[3] = {1, 2, 3};
    cm_error e;
    const char *p = tpath("short.psrd");
    cm_binwriter *w = cm_binwriter_open(p, 3, &e);
    cr_assert_not_null(w);
    cr_assert_eq(dir_entries(), 1, "the temporary file");
    cr_assert_eq(cm_binwriter_append(w, u, u, ra, 2, &e), 0);
    cr_assert_eq(cm_binwriter_close(w, -1, NULL, &e), CM_ESTATE);
    cr_assert_not_null(strstr(e.msg, "2 rows appended, 3 promised"), "%s", e.msg);
    cr_assert_eq(dir_entries(), 0, "no file, no temporary");

    w = cm_binwriter_open(p, 3, &e);
    cr_assert_eq(cm_binwriter_append(w, u, u, ra, 3, &e), 0);
    cm_binwriter_destroy(&w);
    cr_assert_null(w);
    cm_binwriter_destroy(&w);
    cr_assert_eq(dir_entries(), 0);

    w = cm_binwriter_open("/nonexistent-dir/x.psrd", 3, &e);
    cr_assert_null(w);
    cr_assert_eq(e.code, CM_EIO);
    cr_assert_not_null(strstr(e.msg, "/nonexistent-dir/x.psrd"), "%s", e.msg);
}

Test(dataset, text_writer_round_trips_floats)
{
    float vals[] = {3.5f, 0.1f, -2.25f, 1e-9f, 123456.789f, 3.14159265f, 0.0f, 5.0f,
                    -0.000123f, 1e12f, 4.2e-5f, 0.3333333f};
    const size_t n = sizeof vals / sizeof vals[0];
    uint64_t u[sizeof vals / sizeof vals[0]], it[sizeof vals / sizeof vals[0]];
    for (size_t i = 0; i < n; i++) {
        u[i] = i == 0 ? UINT64_MAX : i;
        it[i] = i * 1000;
    }
    cm_ratings r, back;
    cm_error e;
    cr_assert_eq(cm_ratings_from_arrays(u, it, vals, n, &r, &e), 0);
    r.noise_floor = 0.4321;
    const char *p = tpath("out.tsv");
    cr_assert_eq(cm_ratings_write_text(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(load(p, &back, &e), 0, "%s", e.msg);
    cr_assert_eq(back.n, n);
    cr_assert_arr_eq(back.user, u, sizeof u);
    cr_assert_arr_eq(back.item, it, sizeof it);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(back.rating[i], vals[i], "%zu: %.9g != %.9g", i, back.rating[i], vals[i]);
    cr_assert_float_eq(back.noise_floor, 0.4321, 1e-15);
    cm_ratings_free(&back);

    /* short decimals stay short */
    size_t len;
    char *txt = (char *)read_all(p, &len);
    txt[len] = '\0';
    cr_assert_not_null(strstr(txt, "18446744073709551615\t0\t3.5\n"), "%s", txt);
    cr_assert_not_null(strstr(txt, "\t0.1\n"), "%s", txt);
    cr_assert_not_null(strstr(txt, "\t-2.25\n"), "%s", txt);
    free(txt);
    cm_ratings_free(&r);
}

/* ------------------------------------------------------------------------
 * Split and arrays
 * ------------------------------------------------------------------------ */

Test(dataset, from_arrays_copies)
{
    uint64_t u[2] = {1, 2}, it[2] = {3, 4};
    float ra[2] = {5, 6};
    cm_ratings r;
    cm_error e;
    cr_assert_eq(cm_ratings_from_arrays(u, it, ra, 2, &r, &e), 0);
    u[0] = 99;
    cr_assert_eq(r.user[0], 1);
    cr_assert_eq(r.noise_floor, -1);
    cm_ratings_free(&r);
    cr_assert_eq(cm_ratings_from_arrays(NULL, NULL, NULL, 0, &r, &e), 0);
    cr_assert_eq(r.n, 0);
    cm_ratings_free(&r);
    cr_assert_eq(cm_ratings_from_arrays(NULL, it, ra, 2, &r, &e), CM_EINVAL);
}

Test(dataset, split_is_deterministic_and_partitions_in_order)
{
    const size_t n = 20000;
    uint64_t *u = malloc(n * 8), *it = malloc(n * 8);
    float *ra = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        u[i] = i;
        it[i] = i * 7;
        ra[i] = (float)i;
    }
    cm_ratings all, tr, te, tr2, te2, tr3, te3;
    cm_error e;
    cr_assert_eq(cm_ratings_from_arrays(u, it, ra, n, &all, &e), 0);
    cr_assert_eq(cm_ratings_split(&all, 0.2, 7, &tr, &te, &e), 0);
    cr_assert_eq(tr.n + te.n, n);
    cr_assert(fabs((double)te.n / n - 0.2) < 0.02, "test share %zu", te.n);
    /* merge: both halves are increasing subsequences covering 0..n-1 */
    size_t a = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        if (a < tr.n && tr.user[a] == i) {
            cr_assert_eq(tr.item[a], i * 7);
            cr_assert_eq(tr.rating[a], (float)i);
            a++;
        } else {
            cr_assert(b < te.n && te.user[b] == i, "row %zu lost", i);
            cr_assert_eq(te.item[b], i * 7);
            b++;
        }
    }
    cr_assert_eq(cm_ratings_split(&all, 0.2, 7, &tr2, &te2, &e), 0);
    cr_assert_eq(te2.n, te.n);
    cr_assert_arr_eq(te2.user, te.user, te.n * 8);
    cr_assert_eq(cm_ratings_split(&all, 0.2, 8, &tr3, &te3, &e), 0);
    cr_assert(te3.n != te.n || memcmp(te3.user, te.user, te.n * 8) != 0, "another seed, another split");
    cm_ratings_free(&tr);
    cm_ratings_free(&te);
    cm_ratings_free(&tr2);
    cm_ratings_free(&te2);
    cm_ratings_free(&tr3);
    cm_ratings_free(&te3);

    cr_assert_eq(cm_ratings_split(&all, 0.0, 1, &tr, &te, &e), 0);
    cr_assert_eq(tr.n, n);
    cr_assert_eq(te.n, 0);
    cm_ratings_free(&tr);
    cm_ratings_free(&te);
    cr_assert_eq(cm_ratings_split(&all, 1.0, 1, &tr, &te, &e), 0);
    cr_assert_eq(te.n, n);
    cm_ratings_free(&tr);
    cm_ratings_free(&te);
    cr_assert_eq(cm_ratings_split(&all, 1.5, 1, &tr, &te, &e), CM_EINVAL);
    cr_assert_eq(cm_ratings_split(&all, NAN, 1, &tr, &te, &e), CM_EINVAL);
    cm_ratings_free(&all);
    free(u);
    free(it);
    free(ra);
}

/* ------------------------------------------------------------------------
 * Real data (../shared/data)
 * ------------------------------------------------------------------------ */

static const char *data_path(const char *rel)
{
    static char buf[1024];
    const char *env = getenv("PSREC_DATA");
    if (env && *env) {
        snprintf(buf, sizeof buf, "%s/%s", env, rel);
        if (access(buf, R_OK) == 0)
            return buf;
    }
    snprintf(buf, sizeof buf, "%s/../shared/data/%s", PSREC_SOURCE_DIR, rel);
    if (access(buf, R_OK) == 0)
        return buf;
    return NULL;
}

Test(dataset, real_ml100k_u1_base)
{
    const char *p = data_path("ml-100k/u1.base");
    if (!p)
        cr_skip_test("ml-100k/u1.base: ../shared/data not found");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 80000);
    cr_assert_eq(r.bad_lines, 0);
    expect_row(&r, 0, 1, 1, 5);
    for (size_t i = 0; i < r.n; i++) {
        cr_assert(r.user[i] >= 1 && r.user[i] <= 943);
        cr_assert(r.item[i] >= 1 && r.item[i] <= 1682);
        cr_assert(r.rating[i] >= 1 && r.rating[i] <= 5);
    }
    /* and through the binary format */
    const char *b = tpath("u1.psrd");
    cr_assert_eq(cm_ratings_write_bin(b, &r, p, &e), 0, "%s", e.msg);
    cm_ratings rb;
    cr_assert_eq(load(b, &rb, &e), 0, "%s", e.msg);
    cr_assert_eq(rb.n, r.n);
    cr_assert_arr_eq(rb.user, r.user, r.n * 8);
    cr_assert_arr_eq(rb.rating, r.rating, r.n * 4);
    cm_ratings_free(&rb);
    cm_ratings_free(&r);
}

Test(dataset, real_ml_latest_small_csv)
{
    const char *p = data_path("ml-latest-small/ratings.csv");
    if (!p)
        cr_skip_test("ml-latest-small/ratings.csv: ../shared/data not found");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load(p, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 100836);
    cr_assert_eq(r.bad_lines, 0, "the header is skipped, not counted");
    expect_row(&r, 0, 1, 1, 4.0f);
    double sum = 0;
    for (size_t i = 0; i < r.n; i++) {
        cr_assert(r.rating[i] >= 0.5f && r.rating[i] <= 5.0f);
        sum += r.rating[i];
    }
    cr_assert_float_eq(sum / r.n, 3.5016, 1e-3);
    cm_ratings_free(&r);
}

Test(dataset, adopt_takes_the_columns_without_a_copy)
{
    uint64_t *u = malloc(3 * sizeof *u), *i = malloc(3 * sizeof *i);
    float *r = malloc(3 * sizeof *r);
    for (int j = 0; j < 3; j++) {
        u[j] = (uint64_t)j + 1;
        i[j] = (uint64_t)j + 10;
        r[j] = (float)j + 0.5f;
    }
    cm_ratings d;
    cm_error err = {0};
    cr_assert_eq(cm_ratings_adopt(u, i, r, 3, &d, &err), 0, "%s", err.msg);
    cr_expect_eq(d.n, 3);
    cr_expect_eq(d.user, u, "the very arrays given");
    cr_expect_eq(d.item, i);
    cr_expect_eq(d.rating, r);
    cr_expect_eq(d.item[2], 12);
    cm_ratings_free(&d); /* frees them: ASan reports a leak otherwise */
    /* a missing column is refused and the others freed */
    uint64_t *u2 = malloc(sizeof *u2);
    float *r2 = malloc(sizeof *r2);
    cr_expect_eq(cm_ratings_adopt(u2, NULL, r2, 1, &d, &err), CM_EINVAL);
    cr_expect_eq(d.n, 0);
}

/* ------------------------------------------------------------------------
 * Columns picked by name
 * ------------------------------------------------------------------------ */

static int load_cols(const char *p, const char *u, const char *i, const char *r,
                     const char *ts, cm_ratings *out, cm_error *e)
{
    cm_load_opts o = cm_load_opts_default();
    o.user_column = u;
    o.item_column = i;
    o.rating_column = r;
    o.timestamp_column = ts;
    return cm_ratings_load(p, &o, out, e);
}

Test(dataset, named_columns_anywhere_in_a_wide_csv)
{
    const char *p = write_str("wide.csv", "# exported\n"
                                          "ts,y,country,user,item,extra\n"
                                          "100,4.5,de,7,70,a\n"
                                          "101,2,fr,8,80,b\n"
                                          "102,3,fr,alice,90,c\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load_cols(p, "user", "item", "y", "ts", &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 3);
    cr_assert_eq(r.bad_lines, 0);
    expect_row(&r, 0, 7, 70, 4.5f);
    expect_row(&r, 1, 8, 80, 2.0f);
    expect_row(&r, 2, cm_hash_bytes("alice", 5, 0), 90, 3.0f);
    cm_ratings_free(&r);
    /* the same file by position reads nothing sensible: 6 fields per line,
     * and the error says how to read it */
    cr_assert_eq(load(p, &r, &e), CM_EPARSE, "%s", e.msg);
    cr_expect(strstr(e.msg, "got 6") && strstr(e.msg, "user_column"), "%s", e.msg);
}

Test(dataset, unnamed_columns_keep_their_place)
{
    /* only the rating named (mf's label_column): user and item are the
     * first two columns */
    const char *p = write_str("r.tsv", "u\ti\tjunk\ty\n1\t2\tx\t3.5\n4\t5\tz\t1\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load_cols(p, NULL, "", "y", NULL, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 2);
    expect_row(&r, 0, 1, 2, 3.5f);
    expect_row(&r, 1, 4, 5, 1.0f);
    cm_ratings_free(&r);
}

Test(dataset, named_column_errors_say_which)
{
    const char *p = write_str("c.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load_cols(p, NULL, NULL, "stars", NULL, &r, &e), CM_EPARSE);
    cr_expect(strstr(e.msg, "c.csv:1") && strstr(e.msg, "rating_column = stars") &&
                  strstr(e.msg, "userId,movieId,rating,timestamp"),
              "%s", e.msg);
    cr_assert_eq(load_cols(p, NULL, NULL, NULL, "when", &r, &e), CM_EPARSE);
    cr_expect(strstr(e.msg, "timestamp_column = when") != NULL, "%s", e.msg);
    /* the item's place (2nd) is the rating named for the user... */
    cr_assert_eq(load_cols(p, "movieId", NULL, NULL, NULL, &r, &e), CM_EPARSE);
    cr_expect(strstr(e.msg, "user_column and item_column are both column 2") != NULL, "%s",
              e.msg);
    /* names are exact */
    cr_assert_eq(load_cols(p, "userid", NULL, NULL, NULL, &r, &e), CM_EPARSE);
    /* a binary file has no header to pick from */
    cm_ratings two;
    uint64_t u[2] = {1, 2}, it[2] = {3, 4};
    float ra[2] = {1, 2};
    cr_assert_eq(cm_ratings_from_arrays(u, it, ra, 2, &two, &e), 0);
    const char *b = tpath("two.psrd");
    cr_assert_eq(cm_ratings_write_bin(b, &two, "test", &e), 0, "%s", e.msg);
    cm_ratings_free(&two);
    cr_assert_eq(load_cols(b, "user", NULL, NULL, NULL, &r, &e), CM_ECONFIG);
    cr_expect(strstr(e.msg, "two.psrd") && strstr(e.msg, "fixed columns"), "%s", e.msg);
    cr_assert_eq(load_cols(b, NULL, NULL, NULL, NULL, &r, &e), 0, "%s", e.msg);
    cm_ratings_free(&r);
}

Test(dataset, named_columns_rows_must_match_the_header)
{
    const char *p = write_str("short.csv", "a,u,i,y\n1,2,3,4\n1,2,3\n5,6,7,x\n1,2,3,4,5\n"
                                           "9,8,7,2.5\n");
    cm_ratings r;
    cm_error e;
    cr_assert_eq(load_cols(p, "u", "i", "y", NULL, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n, 2);
    cr_assert_eq(r.bad_lines, 3, "short, non-numeric and long rows are bad lines");
    expect_row(&r, 0, 2, 3, 4.0f);
    expect_row(&r, 1, 8, 7, 2.5f);
    cm_ratings_free(&r);
}
