/* The MPI ingest exchange (worker/ingest.h): under mpirun with a .psrd
 * input every worker reads 1/W of the file and an all-to-all routes rows to
 * their owners. The job must end exactly where the whole-file scan ends,
 * and a corrupted file must fail every worker with the reason, not leave
 * some waiting in the collective. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"

static char s_dir[] = "/tmp/psrec-ingest-XXXXXX";

static void s_setup(void)
{
    cr_assert_not_null(mkdtemp(s_dir));
    char cmd[1024], out[8192];
    snprintf(cmd, sizeof cmd,
             "%s gen --out %s/syn --ratings 200000 --users 3000 --items 900 --rank 4 --seed 8",
             PSREC_BINARY, s_dir);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
}

static void s_teardown(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    th_run(cmd, NULL, 0);
}

TestSuite(cluster_ingest, .init = s_setup, .fini = s_teardown, .timeout = 300);

/* Runs 1 scheduler + 1 server + 3 workers with `ingest`; the output in out,
 * the metrics in DIR/<ingest>.jsonl. */
static int s_train(const char *ingest, const char *train, char *out, size_t cap)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "--timeout 120 -np 5 %s train --train %s --test %s/syn.test.psrd "
             "--epochs 3 --l2 0.05 --ingest %s --metrics %s/%s.jsonl --progress off",
             PSREC_BINARY, train, s_dir, ingest, s_dir, ingest);
    return th_run(cmd, out, cap);
}

static void s_last_line(const char *ingest, char *line, size_t cap)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s.jsonl", s_dir, ingest);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    line[0] = '\0';
    /* the last epoch's line (the final record after it has no timings) */
    char buf[2048];
    while (fgets(buf, sizeof buf, f))
        if (strstr(buf, "\"examples_per_s\""))
            snprintf(line, cap, "%s", buf);
    fclose(f);
    /* the timings differ between runs; keep what the model decides */
    char *t = strstr(line, "\"examples_per_s\"");
    cr_assert_not_null(t, "%s", line);
    *t = '\0';
}

Test(cluster_ingest, exchange_equals_scan)
{
    static char out[65536];
    char train[256], a[2048], b[2048];
    snprintf(train, sizeof train, "%s/syn.train.psrd", s_dir);
    cr_assert_eq(s_train("auto", train, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "after the exchange among 3 workers") != NULL,
              "auto under mpirun exchanges:\n%s", out);
    s_last_line("auto", a, sizeof a);
    cr_assert_eq(s_train("scan", train, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "after the exchange") == NULL, "scan does not exchange:\n%s", out);
    s_last_line("scan", b, sizeof b);
    cr_expect_str_eq(a, b, "the same shards give the same model");
    cr_expect(strstr(a, "\"test_rmse\": 0.") != NULL, "%s", a);
}

/* Each column's checksum is verified by one worker (column c by worker c
 * of 3): a flipped byte in any column fails every worker, and the message
 * names the column. */
Test(cluster_ingest, a_corrupt_file_fails_every_worker)
{
    static char out[65536];
    char src[256], bad[256], cmd[1024];
    snprintf(src, sizeof src, "%s/syn.train.psrd", s_dir);
    snprintf(bad, sizeof bad, "%s/bad.psrd", s_dir);
    const char *names[3] = {"user", "item", "rating"};
    for (int c = 0; c < 3; c++) {
        snprintf(cmd, sizeof cmd, "cp %s %s", src, bad);
        cr_assert_eq(th_run(cmd, NULL, 0), 0);
        struct stat st;
        cr_assert_eq(stat(bad, &st), 0);
        /* the columns follow a 4096-byte header: users (8 bytes a row),
         * items (8), ratings (4); a byte well inside column c */
        const long data = (long)st.st_size - 4096;
        const long at[3] = {4096 + data * 4 / 20, 4096 + data * 12 / 20,
                            (long)st.st_size - 1000};
        FILE *f = fopen(bad, "r+b");
        cr_assert_not_null(f);
        cr_assert_eq(fseek(f, at[c], SEEK_SET), 0);
        int ch = fgetc(f);
        cr_assert_eq(fseek(f, at[c], SEEK_SET), 0);
        fputc(ch ^ 0x5a, f);
        fclose(f);
        int rc = s_train("auto", bad, out, sizeof out);
        cr_expect_neq(rc, 0, "%s column: the job fails:\n%s", names[c], out);
        cr_expect(strstr(out, "time limit") == NULL, "the job must not hang:\n%s", out);
        char want[64];
        snprintf(want, sizeof want, "%s column checksum mismatch", names[c]);
        cr_expect(strstr(out, want) != NULL, "the reason is given (%s):\n%s", want, out);
    }
}
