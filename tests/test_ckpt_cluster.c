/* Tests for common/ckpt's checks on a cluster: files checked against what
 * their writers reported before a checkpoint is published, and the marks
 * that prove the checkpoint root is one filesystem for every writer. */
#define _GNU_SOURCE /* nftw, mkdtemp */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/ckpt.h"
#include "common/log.h"
#include "tmpdir.h"

static void setup(void)
{
    th_tmpdir_make("ckpt_cluster");
    cm_log_set_level(CM_LOG_ERROR);
}

static void teardown(void)
{
    th_tmpdir_remove();
}

TestSuite(ckpt_cluster, .init = setup, .fini = teardown);

/* A small shard "t0-s0.rows" in the test's dir; f describes it as its
 * writer would report it. */
static void s_shard(cm_ckpt_file *f)
{
    const uint64_t keys[3] = {2, 5, 9};
    const float rows[6] = {1, 2, 3, 4, 5, 6};
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "t0-s0.rows");
    cm_error err = {0};
    int rc = cm_shard_write(th_path(f->name), 0, 2, 2, keys, rows, 3, &f->size, &f->checksum,
                            &err);
    cr_assert_eq(rc, 0, "%s", err.msg);
    f->rows = 3;
    f->writer = 1;
}

Test(ckpt_cluster, check_files_as_reported)
{
    cm_ckpt_file f;
    s_shard(&f);
    cm_error err = {0};
    cr_expect_eq(cm_ckpt_check_files(th_dir, &f, 1, &err), 0, "%s", err.msg);
    cr_expect_eq(cm_ckpt_check_files(th_dir, &f, 0, &err), 0, "no files: nothing to check");

    cm_ckpt_file other = f;
    other.size = f.size + 8;
    cr_expect_eq(cm_ckpt_check_files(th_dir, &other, 1, &err), CM_ECHECKSUM);
    cr_expect(strstr(err.msg, "t0-s0.rows") != NULL, "names the file: %s", err.msg);

    other = f;
    other.checksum = f.checksum ^ 1;
    cr_expect_eq(cm_ckpt_check_files(th_dir, &other, 1, &err), CM_ECHECKSUM);
    cr_expect(strstr(err.msg, "checksum") != NULL, "%s", err.msg);

    other = f;
    snprintf(other.name, sizeof other.name, "t1-s0.rows");
    cr_expect_eq(cm_ckpt_check_files(th_dir, &other, 1, &err), CM_ENOTFOUND, "%s", err.msg);
    cr_expect(strstr(err.msg, "t1-s0.rows") != NULL, "%s", err.msg);

    /* the first bad one of several is reported */
    cm_ckpt_file two[2] = {f, other};
    cr_expect_eq(cm_ckpt_check_files(th_dir, two, 2, &err), CM_ENOTFOUND);

    /* a name from a report never leaves the directory */
    other = f;
    snprintf(other.name, sizeof other.name, "../t0-s0.rows");
    cr_expect_eq(cm_ckpt_check_files(th_dir, &other, 1, &err), CM_EINVAL, "%s", err.msg);
    other.name[0] = '\0';
    cr_expect_eq(cm_ckpt_check_files(th_dir, &other, 1, &err), CM_EINVAL, "%s", err.msg);

    /* a file changed after it was reported (same size) */
    FILE *fp = fopen(th_path("t0-s0.rows"), "r+b");
    cr_assert_not_null(fp);
    fseek(fp, -1, SEEK_END);
    int c = fgetc(fp);
    fseek(fp, -1, SEEK_END);
    fputc(c ^ 0x5a, fp);
    fclose(fp);
    cr_expect_eq(cm_ckpt_check_files(th_dir, &f, 1, &err), CM_ECHECKSUM, "%s", err.msg);
}

Test(ckpt_cluster, token_round_trip)
{
    char root[512];
    snprintf(root, sizeof root, "%s/a/b", th_dir);
    cm_error err = {0};
    /* the root is made where it is missing, as a server would on its host */
    cr_assert_eq(cm_ckpt_token_write(root, 0, "tcp://10.0.0.2:4000", &err), 0, "%s", err.msg);
    cr_expect_eq(cm_ckpt_token_check(root, 0, "tcp://10.0.0.2:4000", &err), 0, "%s", err.msg);
    /* another writer's mark is another file */
    cr_expect_eq(cm_ckpt_token_check(root, 1, "tcp://10.0.0.2:4000", &err), CM_ENOTFOUND);
    /* another job's mark */
    cr_expect_eq(cm_ckpt_token_check(root, 0, "tcp://10.0.0.3:4000", &err), CM_ESTATE);
    cr_expect(strstr(err.msg, "tcp://10.0.0.2:4000") && strstr(err.msg, "another job"), "%s",
              err.msg);
    /* rewritten: the newest mark counts */
    cr_assert_eq(cm_ckpt_token_write(root, 0, "ipc:///tmp/x", &err), 0, "%s", err.msg);
    cr_expect_eq(cm_ckpt_token_check(root, 0, "ipc:///tmp/x", &err), 0, "%s", err.msg);

    /* removal takes only the mark it is given */
    char path[600];
    snprintf(path, sizeof path, "%s/.psrec-token-0", root);
    cm_ckpt_token_remove(root, 0, "tcp://10.0.0.2:4000");
    cr_expect_eq(access(path, F_OK), 0, "another job's mark stays");
    cm_ckpt_token_remove(root, 0, "ipc:///tmp/x");
    cr_expect_neq(access(path, F_OK), 0, "its own mark goes");
    cr_expect_eq(cm_ckpt_token_check(root, 0, "ipc:///tmp/x", &err), CM_ENOTFOUND);
    cm_ckpt_token_remove(root, 0, "ipc:///tmp/x"); /* gone already: no-op */
}

Test(ckpt_cluster, token_refuses_bad_input)
{
    cm_error err = {0};
    cr_expect_eq(cm_ckpt_token_write(th_dir, 0, "", &err), CM_EINVAL);
    cr_expect_eq(cm_ckpt_token_write(th_dir, 0, "a\nb", &err), CM_EINVAL);
    char big[600];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cr_expect_eq(cm_ckpt_token_write(th_dir, 0, big, &err), CM_EINVAL);
    /* a root that cannot be made (a file in the way): the path is named */
    FILE *f = fopen(th_path("plain"), "w");
    cr_assert_not_null(f);
    fclose(f);
    char root[512];
    snprintf(root, sizeof root, "%s/plain/ckpt", th_dir);
    cr_expect_neq(cm_ckpt_token_write(root, 0, "tcp://h:1", &err), 0);
    cr_expect(strstr(err.msg, "plain") != NULL, "%s", err.msg);
    /* a mark that is not one line of text reads as another token */
    snprintf(root, sizeof root, "%s/.psrec-token-3", th_dir);
    f = fopen(root, "w");
    cr_assert_not_null(f);
    fputs("tcp://h:1 and more\n", f);
    fclose(f);
    cr_expect_eq(cm_ckpt_token_check(th_dir, 3, "tcp://h:1", &err), CM_ESTATE);
}
