/* psrec export: a checkpoint (several shards per table, optimizer state
 * in the rows) turned into npy, fvecs, psm and manifest.json, each checked
 * byte by byte here; and the errors a broken checkpoint gets. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "serve/export.h"
#include "serve/psm.h"
#include "serve_helpers.h"

static char s_dir[] = "/tmp/psrec-export-XXXXXX";
static char s_ckpt[512], s_out[512];

static void s_setup(void)
{
    cr_assert_not_null(mkdtemp(s_dir));
    snprintf(s_ckpt, sizeof s_ckpt, "%s/ckpt", s_dir);
    snprintf(s_out, sizeof s_out, "%s/export", s_dir);
    cr_assert_eq(mkdir(s_ckpt, 0755), 0);
}

static void s_teardown(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s_dir);
}

TestSuite(export, .init = s_setup, .fini = s_teardown, .timeout = 120);

enum { NU = 37, NI = 53, DIM = 5, RF = 9, SEED = 7 };

static unsigned char *s_slurp(const char *dir, const char *name, size_t *n)
{
    char path[4096];
    cr_assert_lt(snprintf(path, sizeof path, "%s/%s", dir, name), (int)sizeof path);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s missing", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*n + 1);
    cr_assert_eq(fread(b, 1, *n, f), *n);
    b[*n] = 0;
    fclose(f);
    return b;
}

static int s_exists(const char *dir, const char *name)
{
    char path[4096];
    cr_assert_lt(snprintf(path, sizeof path, "%s/%s", dir, name), (int)sizeof path);
    struct stat st;
    return stat(path, &st) == 0;
}

/* Parses a .npy v1.0 header as numpy would; returns the data offset. */
static size_t s_npy(const unsigned char *b, size_t n, const char *descr, const char *shape)
{
    cr_assert_geq(n, 10);
    cr_assert_eq(memcmp(b, "\x93NUMPY", 6), 0, "npy magic");
    cr_expect_eq(b[6], 1);
    cr_expect_eq(b[7], 0);
    size_t hlen = (size_t)b[8] | (size_t)b[9] << 8;
    cr_assert_leq(10 + hlen, n);
    cr_expect_eq((10 + hlen) % 64, 0, "data aligned to 64 bytes");
    char *h = strndup((const char *)b + 10, hlen);
    cr_expect_eq(h[hlen - 1], '\n', "header ends with a newline");
    char want[128];
    snprintf(want, sizeof want, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
             descr, shape);
    cr_expect_eq(strncmp(h, want, strlen(want)), 0, "header '%s', want '%s'", h, want);
    for (size_t i = strlen(want); i + 1 < hlen; i++)
        cr_expect_eq(h[i], ' ', "padding is spaces");
    free(h);
    return 10 + hlen;
}

static void s_check_table_npy(const char *name, uint32_t t, size_t rows)
{
    char fn[64], shape[64];
    size_t n;
    snprintf(fn, sizeof fn, "%s.npy", name);
    unsigned char *b = s_slurp(s_out, fn, &n);
    snprintf(shape, sizeof shape, "(%zu, %d)", rows, DIM);
    size_t off = s_npy(b, n, "<f4", shape);
    cr_assert_eq(n - off, rows * DIM * sizeof(float), "%s: data size", fn);
    const float *v = (const float *)(b + off);
    for (size_t i = 0; i < rows; i++)
        for (int j = 0; j < DIM; j++)
            cr_assert_eq(v[i * DIM + (size_t)j], sh_val(SEED, t, sh_id(t, i), j),
                         "%s[%zu][%d]: optimizer state must be dropped", fn, i, j);
    free(b);
    snprintf(fn, sizeof fn, "%s.ids.npy", name);
    b = s_slurp(s_out, fn, &n);
    snprintf(shape, sizeof shape, "(%zu,)", rows);
    off = s_npy(b, n, "<i8", shape);
    cr_assert_eq(n - off, rows * 8);
    for (size_t i = 0; i < rows; i++) {
        int64_t id;
        memcpy(&id, b + off + 8 * i, 8);
        cr_assert_eq((uint64_t)id, sh_id(t, i), "%s[%zu]: shards merged in id order", fn, i);
    }
    free(b);
}

Test(export, every_format_from_a_sharded_checkpoint)
{
    cm_error err = {0};
    cr_assert_eq(sh_make_ckpt(s_ckpt, NU, NI, DIM, RF, 3, SEED, 3.25, &err), 0, "%s", err.msg);
    cr_assert_eq(sv_export(s_ckpt, s_out, SV_FMT_ALL, &err), 0, "%s", err.msg);
    s_check_table_npy("user", 0, NU);
    s_check_table_npy("item", 1, NI);

    /* fvecs: per item, int32 dim then the row [b_i, q_i] */
    size_t n;
    unsigned char *b = s_slurp(s_out, "item.fvecs", &n);
    cr_assert_eq(n, (size_t)NI * (4 + 4 * DIM));
    for (size_t i = 0; i < NI; i++) {
        const unsigned char *rec = b + i * (4 + 4 * DIM);
        int32_t d;
        memcpy(&d, rec, 4);
        cr_assert_eq(d, DIM);
        for (int j = 0; j < DIM; j++) {
            float x;
            memcpy(&x, rec + 4 + 4 * j, 4);
            cr_assert_eq(x, sh_val(SEED, 1, sh_id(1, i), j));
        }
    }
    free(b);

    /* psm */
    char path[700], msg[PSM_ERR_MAX];
    snprintf(path, sizeof path, "%s/model.psm", s_out);
    psm_file *f = psm_open(path, 0, msg, sizeof msg);
    cr_assert_not_null(f, "%s", msg);
    cr_expect_str_eq(psm_model(f), "mf");
    cr_expect_str_eq(psm_formula(f), sv_export_formula("mf"));
    cr_expect(strstr(psm_formula(f), "global_mean") && strstr(psm_formula(f), "dot"));
    cr_expect_eq(psm_global_mean(f), 3.25);
    cr_expect_eq(psm_clip_lo(f), 1.f);
    cr_expect_eq(psm_clip_hi(f), 5.f);
    psm_table it;
    cr_assert_eq(psm_table_find(f, "item", &it), 0);
    cr_expect_eq(it.n_rows, NI);
    cr_expect_eq(it.dim, DIM);
    const float *r = psm_row(&it, sh_id(1, 17));
    cr_assert_not_null(r);
    cr_expect_eq(r[2], sh_val(SEED, 1, sh_id(1, 17), 2));
    psm_close(&f);

    /* manifest.json: the model, the formula, the files */
    char *j = (char *)s_slurp(s_out, "manifest.json", &n);
    const char *want[] = {"\"model\": \"mf\"", "\"formula\": \"score(u,i) = global_mean",
                          "\"global_mean\": 3.25", "\"clip\": [1, 5]",
                          "\"user\": {\"rows\": 37, \"dim\": 5, \"file\": \"user.npy\"",
                          "\"ids\": \"item.ids.npy\"", "\"columns\": \"0: bias, 1..4: factors\"",
                          "\"fvecs\": {\"file\": \"item.fvecs\"", "\"query\": \"[1, user[u][1:]]",
                          "\"psm\": {\"file\": \"model.psm\"", "\"fallback\""};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_expect(strstr(j, want[i]) != NULL, "manifest.json lacks %s:\n%s", want[i], j);
    free(j);
    cr_expect(!s_exists(s_out, "model.psm.tmp"), "no temporary files");
}

Test(export, formats_are_chosen)
{
    cm_error err = {0};
    unsigned fmt = 0;
    cr_assert_eq(sv_export_parse_formats("psm, fvecs", &fmt, &err), 0, "%s", err.msg);
    cr_expect_eq(fmt, SV_FMT_PSM | SV_FMT_FVECS);
    cr_expect_eq(sv_export_parse_formats("all", &fmt, &err), 0);
    cr_expect_eq(fmt, SV_FMT_ALL);
    cr_expect_eq(sv_export_parse_formats("npy,hdf5", &fmt, &err), CM_EINVAL);
    cr_expect(strstr(err.msg, "hdf5") != NULL, "%s", err.msg);
    cr_expect_eq(sv_export_parse_formats("", &fmt, &err), CM_EINVAL);

    cr_assert_eq(sh_make_ckpt(s_ckpt, NU, NI, DIM, RF, 1, SEED, 3.0, &err), 0, "%s", err.msg);
    cr_assert_eq(sv_export(s_ckpt, s_out, SV_FMT_FVECS, &err), 0, "%s", err.msg);
    cr_expect(s_exists(s_out, "item.fvecs") && s_exists(s_out, "item.ids.npy"),
              "fvecs comes with the item ids");
    cr_expect(!s_exists(s_out, "user.npy") && !s_exists(s_out, "item.npy") &&
              !s_exists(s_out, "model.psm"));
    cr_expect(s_exists(s_out, "manifest.json"));
}

Test(export, from_a_checkpoint_root)
{
    cm_error err = {0};
    char root[600], path[1200];
    snprintf(root, sizeof root, "%s/root", s_dir);
    cr_assert_eq(cm_ckpt_mkdir(root, "ckpt-000001", path, sizeof path, &err), 0, "%s", err.msg);
    cr_assert_eq(sh_make_ckpt(path, 4, 6, 3, 3, 2, 1, 2.0, &err), 0, "%s", err.msg);
    cr_assert_eq(cm_ckpt_publish(root, "ckpt-000001", 0, &err), 0, "%s", err.msg);
    sv_export_model m;
    cr_assert_eq(sv_export_load(root, &m, &err), 0, "%s", err.msg);
    cr_expect_eq(m.n_tables, 2);
    cr_expect_eq(m.tables[1].n, 6);
    cr_expect_eq(m.global_mean, 2.0);
    sv_export_model_free(&m);
    cr_expect_eq(m.tables, NULL);
}

Test(export, duplicate_id_across_shards_is_an_error)
{
    cm_error err = {0};
    cr_assert_eq(sh_make_ckpt(s_ckpt, NU, NI, DIM, RF, 2, SEED, 3.0, &err), 0, "%s", err.msg);
    /* rewrite shard 1 of the items to hold an id of shard 0 */
    cm_manifest m;
    cr_assert_eq(cm_manifest_read(s_ckpt, &m, &err), 0, "%s", err.msg);
    for (size_t f = 0; f < m.n_files; f++) {
        if (strcmp(m.files[f].name, "t1-w1.rows") != 0)
            continue;
        uint64_t keys[2] = {sh_id(1, 0), sh_id(1, 1)};
        float rows[2 * RF] = {0};
        char path[4096];
        cr_assert_lt(snprintf(path, sizeof path, "%s/%s", s_ckpt, m.files[f].name),
                     (int)sizeof path);
        cr_assert_eq(cm_shard_write(path, 1, DIM, RF, keys, rows, 2, &m.files[f].size,
                                    &m.files[f].checksum, &err),
                     0, "%s", err.msg);
        m.files[f].rows = 2;
    }
    cr_assert_eq(cm_manifest_write(s_ckpt, &m, &err), 0, "%s", err.msg);
    cm_manifest_free(&m);
    cr_expect_eq(sv_export(s_ckpt, s_out, SV_FMT_ALL, &err), CM_EPARSE);
    cr_expect(strstr(err.msg, "t1-w0.rows") && strstr(err.msg, "t1-w1.rows") &&
              strstr(err.msg, "10"),
              "names the id and both files: %s", err.msg);
    cr_expect(!s_exists(s_out, "manifest.json"));
}

Test(export, torn_or_missing_checkpoint_is_refused)
{
    cm_error err = {0};
    cr_expect_neq(sv_export(s_ckpt, s_out, SV_FMT_ALL, &err), 0, "empty directory");
    cr_expect(err.msg[0] != '\0');
    cr_assert_eq(sh_make_ckpt(s_ckpt, NU, NI, DIM, RF, 2, SEED, 3.0, &err), 0, "%s", err.msg);
    char path[700];
    snprintf(path, sizeof path, "%s/t1-w0.rows", s_ckpt);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(truncate(path, st.st_size - 9), 0);
    cr_expect_neq(sv_export(s_ckpt, s_out, SV_FMT_ALL, &err), 0);
    cr_expect(strstr(err.msg, "t1-w0.rows") != NULL, "names the torn file: %s", err.msg);
    cr_expect(!s_exists(s_out, "manifest.json") && !s_exists(s_out, "model.psm"));
}

Test(export, synthetic_models_and_edge_cases)
{
    cm_error err = {0};
    sv_table t[2];
    memset(t, 0, sizeof t);
    snprintf(t[0].name, sizeof t[0].name, "user");
    t[0].dim = 3;
    snprintf(t[1].name, sizeof t[1].name, "tags");
    t[1].dim = 2;
    sv_export_model m = {.model = "mf", .global_mean = 1.0, .clip_lo = 0, .clip_hi = 1,
                         .n_tables = 2, .tables = t};
    cr_expect_eq(sv_export_write(&m, s_out, SV_FMT_FVECS, &err), CM_EINVAL);
    cr_expect(strstr(err.msg, "item") != NULL, "%s", err.msg);
    cr_assert_eq(sv_export_write(&m, s_out, SV_FMT_NPY | SV_FMT_PSM, &err), 0, "%s", err.msg);
    size_t n;
    unsigned char *b = s_slurp(s_out, "user.npy", &n);
    cr_expect_eq(s_npy(b, n, "<f4", "(0, 3)"), n, "an empty table is a (0, dim) matrix");
    free(b);
    snprintf(t[1].name, sizeof t[1].name, "../evil");
    cr_expect_eq(sv_export_write(&m, s_out, SV_FMT_NPY, &err), CM_EINVAL);
    char deep[700];
    snprintf(deep, sizeof deep, "%s/a/b/c", s_dir);
    snprintf(t[1].name, sizeof t[1].name, "tags");
    cr_expect_eq(sv_export_write(&m, deep, SV_FMT_PSM, &err), 0, "%s", err.msg);
    cr_expect(s_exists(deep, "model.psm"));
    cr_expect_str_eq(sv_export_formula("wide_deep"), "");
}

/* A checkpoint of an older writer that holds a nan weight: the bytes are
 * patched and the manifest's size and checksum made to match, so only
 * the finite check can refuse it. */
Test(export, non_finite_rows_are_refused_naming_table_and_key)
{
    cm_error err = {0};
    cr_assert_eq(sh_make_ckpt(s_ckpt, NU, NI, DIM, RF, 2, SEED, 3.0, &err), 0, "%s", err.msg);
    cm_manifest m;
    cr_assert_eq(cm_manifest_read(s_ckpt, &m, &err), 0, "%s", err.msg);
    uint64_t key = 0;
    for (size_t f = 0; f < m.n_files; f++) {
        if (strcmp(m.files[f].name, "t1-w1.rows") != 0)
            continue;
        char path[4096];
        cr_assert_lt(snprintf(path, sizeof path, "%s/%s", s_ckpt, m.files[f].name),
                     (int)sizeof path);
        cm_shard sh;
        cr_assert_eq(cm_shard_read(path, 0, 0, &sh, &err), 0, "%s", err.msg);
        cr_assert_gt(sh.n, 0);
        key = sh.keys[sh.n - 1];
        cm_shard_free(&sh);
        /* the file ends with the last row: its weight 0 becomes nan */
        size_t n = 0;
        unsigned char *b = s_slurp(s_ckpt, m.files[f].name, &n);
        const float nan_f = NAN;
        memcpy(b + n - (size_t)RF * sizeof(float), &nan_f, sizeof nan_f);
        FILE *o = fopen(path, "wb");
        cr_assert_not_null(o);
        cr_assert_eq(fwrite(b, 1, n, o), n);
        fclose(o);
        m.files[f].size = n;
        m.files[f].checksum = XXH64(b, n, 0);
        free(b);
    }
    cr_assert_neq(key, 0, "the items' second shard was found");
    cr_assert_eq(cm_manifest_write(s_ckpt, &m, &err), 0, "%s", err.msg);
    cm_manifest_free(&m);
    cr_assert_eq(cm_ckpt_verify(s_ckpt, &err), 0, "the checkpoint is intact: %s", err.msg);
    cr_expect_eq(sv_export(s_ckpt, s_out, SV_FMT_ALL, &err), CM_ERANGE);
    char want[128];
    snprintf(want, sizeof want, "table 'item' key %llu: weight 0 is nan",
             (unsigned long long)key);
    cr_expect(strstr(err.msg, want) != NULL, "'%s' lacks '%s'", err.msg, want);
    cr_expect(strstr(err.msg, "t1-w1.rows") != NULL, "the file is named: %s", err.msg);
    cr_expect(!s_exists(s_out, "manifest.json"), "nothing exported");
}
