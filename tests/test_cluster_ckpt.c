/* Checkpoints in a running --local cluster: resume continues exactly
 * where an uninterrupted run would be, on any server count; a torn
 * checkpoint is refused and the one before it used. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/run.h"
#include "helpers.h"
#include "common/ckpt.h"
#include "common/log.h"
#include "common/synth.h"
#include "serve/export.h"

static char s_dir[] = "/tmp/psrec-ckpt-XXXXXX";
static cm_synth_report s_rep;

static void s_setup(void)
{
    cm_log_set_level(CM_LOG_ERROR);
    cr_assert_not_null(mkdtemp(s_dir));
    cm_synth_params p = cm_synth_params_default();
    p.n_ratings = 40000;
    p.n_users = 500;
    p.n_items = 300;
    p.rank = 4;
    p.seed = 21;
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s/syn", s_dir);
    cm_error err = {0};
    cr_assert_eq(cm_synth_write(&p, prefix, &s_rep, &err), 0, "%s", err.msg);
}

static void s_teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s_dir);
}

TestSuite(cluster_ckpt, .init = s_setup, .fini = s_teardown, .timeout = 300);

static cm_job s_job(const char *ckdir, int servers, int epochs)
{
    cm_job job = cm_job_default();
    snprintf(job.train, sizeof job.train, "%.1000s", s_rep.train_path);
    snprintf(job.test, sizeof job.test, "%.1000s", s_rep.test_path);
    snprintf(job.checkpoint_dir, sizeof job.checkpoint_dir, "%s/%s", s_dir, ckdir);
    job.local = 1;
    job.servers = servers;
    job.workers = 1; /* one worker: runs are deterministic bit for bit */
    job.epochs = epochs;
    job.progress = 0;
    job.log_level = CM_LOG_ERROR;
    job.l2 = 0.05;
    job.checkpoint_keep = 0;
    return job;
}

/* All rows of table t of a checkpoint, merged over its shards and sorted
 * by key, as one flat array of (key as 2 floats' bits, row) blobs. */
typedef struct {
    size_t n;
    uint64_t *keys;
    float *rows;
    int rf;
} s_rows;

static int s_cmp_pair(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static s_rows s_load_table(const char *dir, uint32_t t)
{
    cm_manifest m;
    cm_error err = {0};
    cr_assert_eq(cm_manifest_read(dir, &m, &err), 0, "%s", err.msg);
    s_rows r = {0};
    r.rf = m.tables[t].row_floats;
    size_t cap = 0;
    for (size_t f = 0; f < m.n_files; f++)
        if (m.files[f].table == t)
            cap += m.files[f].rows;
    size_t blob = sizeof(uint64_t) + (size_t)r.rf * sizeof(float);
    char *all = malloc(cap * blob + 1);
    for (size_t f = 0; f < m.n_files; f++) {
        if (m.files[f].table != t)
            continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, m.files[f].name);
        cm_shard sh;
        cr_assert_eq(cm_shard_read(path, m.files[f].size, m.files[f].checksum, &sh, &err), 0,
                     "%s", err.msg);
        for (size_t i = 0; i < sh.n; i++) {
            char *b = all + r.n++ * blob;
            memcpy(b, &sh.keys[i], sizeof(uint64_t));
            memcpy(b + sizeof(uint64_t), sh.rows + i * (size_t)r.rf, (size_t)r.rf * sizeof(float));
        }
        cm_shard_free(&sh);
    }
    qsort(all, r.n, blob, s_cmp_pair);
    r.keys = malloc((r.n + 1) * sizeof *r.keys);
    r.rows = malloc((r.n * (size_t)r.rf + 1) * sizeof *r.rows);
    for (size_t i = 0; i < r.n; i++) {
        memcpy(&r.keys[i], all + i * blob, sizeof(uint64_t));
        memcpy(r.rows + i * (size_t)r.rf, all + i * blob + sizeof(uint64_t),
               (size_t)r.rf * sizeof(float));
    }
    free(all);
    cm_manifest_free(&m);
    return r;
}

/* Same keys, same weights and optimizer state, bit for bit. */
static void s_expect_same_model(const char *a, const char *b)
{
    for (uint32_t t = 0; t < 2; t++) {
        s_rows x = s_load_table(a, t), y = s_load_table(b, t);
        cr_expect_eq(x.n, y.n, "table %u: %zu vs %zu rows", t, x.n, y.n);
        if (x.n == y.n) {
            cr_expect(memcmp(x.keys, y.keys, x.n * sizeof *x.keys) == 0, "table %u keys", t);
            cr_expect(memcmp(x.rows, y.rows, x.n * (size_t)x.rf * sizeof(float)) == 0,
                      "table %u rows differ", t);
        }
        free(x.keys);
        free(x.rows);
        free(y.keys);
        free(y.rows);
    }
}

/* Byte-for-byte equality of two files. */
static int s_same_file(const char *a, const char *b)
{
    FILE *x = fopen(a, "rb"), *y = fopen(b, "rb");
    int same = x && y;
    while (same) {
        int c = fgetc(x), d = fgetc(y);
        same = c == d;
        if (c == EOF || d == EOF)
            break;
    }
    if (x)
        fclose(x);
    if (y)
        fclose(y);
    return same;
}

/* Exports both checkpoints and expects identical files. */
static void s_expect_same_export(const char *a, const char *b)
{
    char oa[1300], ob[1300];
    snprintf(oa, sizeof oa, "%s-export", a);
    snprintf(ob, sizeof ob, "%s-export", b);
    cm_error err = {0};
    cr_assert_eq(sv_export(a, oa, SV_FMT_ALL, &err), 0, "%s", err.msg);
    cr_assert_eq(sv_export(b, ob, SV_FMT_ALL, &err), 0, "%s", err.msg);
    const char *files[] = {"user.npy", "user.ids.npy", "item.npy", "item.ids.npy",
                           "item.fvecs", "model.psm"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char fa[1400], fb[1400];
        snprintf(fa, sizeof fa, "%s/%s", oa, files[i]);
        snprintf(fb, sizeof fb, "%s/%s", ob, files[i]);
        cr_expect(s_same_file(fa, fb), "export %s differs: %s vs %s", files[i], fa, fb);
    }
}

static void s_path(char *out, size_t n, const char *ck, uint32_t epoch)
{
    char name[64];
    cm_ckpt_dirname(epoch, name, sizeof name);
    snprintf(out, n, "%s/%s/%s", s_dir, ck, name);
}

Test(cluster_ckpt, resume_equals_uninterrupted_and_reshards)
{
    char a[1200], b[1200];
    /* reference: 6 epochs on 2 servers, no interruption */
    cm_job ref = s_job("ref", 2, 6);
    ref.schedule = CM_SCHED_MINIBATCH;
    sch_result r_ref = th_local_ok(&ref);

    /* interrupted after 3 epochs, then resumed on 2, 3 and 1 servers */
    const int resume_servers[3] = {2, 3, 1};
    for (int k = 0; k < 3; k++) {
        char ck[32];
        snprintf(ck, sizeof ck, "part%d", k);
        cm_job first = s_job(ck, 2, 3);
        first.schedule = CM_SCHED_MINIBATCH;
        th_local_ok(&first);
        cm_job rest = s_job(ck, resume_servers[k], 6);
        rest.schedule = CM_SCHED_MINIBATCH;
        snprintf(rest.resume, sizeof rest.resume, "auto");
        sch_result r = th_local_ok(&rest);
        cr_expect_eq(r.epochs, 6);
        cr_expect(r.test_rmse == r_ref.test_rmse,
                  "resumed on %d servers: test RMSE %.17g, uninterrupted %.17g",
                  resume_servers[k], r.test_rmse, r_ref.test_rmse);
        s_path(a, sizeof a, "ref", 6);
        s_path(b, sizeof b, ck, 6);
        s_expect_same_model(a, b);
        s_expect_same_export(a, b);
    }
}

Test(cluster_ckpt, torn_checkpoint_falls_back_to_the_previous_one)
{
    cm_job job = s_job("torn", 1, 3);
    th_local_ok(&job);
    char dir[1200], latest[1200];
    s_path(dir, sizeof dir, "torn", 3);
    /* tear the newest checkpoint: truncate one of its row files */
    char shard[1300];
    snprintf(shard, sizeof shard, "%s/t1-s0.rows", dir);
    cr_assert_eq(truncate(shard, 100), 0, "%s", shard);
    cm_error err = {0};
    cr_expect_neq(cm_ckpt_verify(dir, &err), 0);
    cr_expect(strstr(err.msg, "t1-s0.rows") != NULL, "names the torn file: %s", err.msg);
    char root[1100];
    snprintf(root, sizeof root, "%s/torn", s_dir);
    cr_assert_eq(cm_ckpt_resolve(root, "auto", latest, sizeof latest, &err), 0, "%s", err.msg);
    cr_expect(strstr(latest, "ckpt-000002") != NULL, "auto picks epoch 2: %s", latest);

    /* and a resumed run goes on from there to the same end */
    cm_job rest = s_job("torn", 1, 4);
    snprintf(rest.resume, sizeof rest.resume, "auto");
    sch_result r = th_local_ok(&rest);
    cm_job ref = s_job("torn-ref", 1, 4);
    sch_result r_ref = th_local_ok(&ref);
    cr_expect(r.test_rmse == r_ref.test_rmse, "%.17g vs %.17g", r.test_rmse, r_ref.test_rmse);
}

Test(cluster_ckpt, keep_prunes_and_mismatch_is_refused)
{
    cm_job job = s_job("keep", 1, 4);
    job.checkpoint_keep = 2;
    /* without validation: no chosen epoch's checkpoint kept beside them
     * (test_cluster_valid checks that one survives pruning) */
    job.validation_fraction = 0;
    th_local_ok(&job);
    char root[1100];
    snprintf(root, sizeof root, "%s/keep", s_dir);
    DIR *d = opendir(root);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strncmp(e->d_name, "ckpt-", 5) == 0;
    closedir(d);
    cr_expect_eq(n, 2, "checkpoint_keep = 2 leaves 2 checkpoints, found %d", n);

    cm_job other = s_job("keep", 1, 6);
    other.dim = 8;
    snprintf(other.resume, sizeof other.resume, "auto");
    sch_result res;
    cm_error err = {0};
    int rc = th_local(&other, &res, &err);
    cr_expect_neq(rc, 0);
    cr_expect(strstr(err.msg, "dim") != NULL, "says why: %s", err.msg);

    /* nothing to resume yet (a first run under a restart loop): fresh */
    cm_job none = s_job("nothing-here", 1, 2);
    snprintf(none.resume, sizeof none.resume, "auto");
    rc = th_local(&none, &res, &err);
    cr_expect_eq(rc, 0, "resume auto with no checkpoint starts fresh: %s", err.msg);
    cr_expect_eq(res.epochs, 2);
    char latest[1200];
    snprintf(latest, sizeof latest, "%s/nothing-here/LATEST", s_dir);
    cr_expect_eq(access(latest, F_OK), 0, "and writes its checkpoints there");
}

static void s_blocks_resume(const char *ref_name, const char *part_name, int bpw)
{
    cm_job ref = s_job(ref_name, 2, 4);
    ref.schedule = CM_SCHED_BLOCKS;
    ref.blocks_per_worker = bpw;
    sch_result r_ref = th_local_ok(&ref);
    cm_job first = s_job(part_name, 2, 2);
    first.schedule = CM_SCHED_BLOCKS;
    first.blocks_per_worker = bpw;
    th_local_ok(&first);
    cm_job rest = s_job(part_name, 1, 4);
    rest.schedule = CM_SCHED_BLOCKS;
    rest.blocks_per_worker = bpw;
    snprintf(rest.resume, sizeof rest.resume, "auto");
    sch_result r = th_local_ok(&rest);
    cr_expect(r.test_rmse == r_ref.test_rmse, "blocks (%d per worker) resumed %.17g vs %.17g",
              bpw, r.test_rmse, r_ref.test_rmse);
    char a[1200], b[1200];
    s_path(a, sizeof a, ref_name, 4);
    s_path(b, sizeof b, part_name, 4);
    s_expect_same_model(a, b);
    s_expect_same_export(a, b);
}

Test(cluster_ckpt, blocks_schedule_resumes_exactly)
{
    s_blocks_resume("bref", "bpart", 1);
}

Test(cluster_ckpt, blocks_with_prefetch_resume_exactly)
{
    s_blocks_resume("bref2", "bpart2", 2);
    s_blocks_resume("bref3", "bpart3", 3);
}
