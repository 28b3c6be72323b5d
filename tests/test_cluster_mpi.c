/* Real multi-process jobs: mpirun with several ranks on this host, over
 * tcp:// on loopback, on MovieLens 100K and on generated data. */
#include <criterion/criterion.h>

#include "helpers.h"

static int s_have_mpirun(void)
{
    return th_run("command -v mpirun", NULL, 0) == 0;
}

TestSuite(cluster_mpi, .timeout = 600);

Test(cluster_mpi, ml100k_u1_two_servers_two_workers)
{
    if (!s_have_mpirun())
        cr_skip_test("mpirun not found");
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA): MovieLens test skipped");
    char dir[] = "/tmp/psrec-mpi-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[4096], out[65536], metrics[512];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-np 5 %s train --train %s/ml-100k/u1.base "
             "--test %s/ml-100k/u1.test --servers 2 --metrics %s --progress off",
             PSREC_BINARY, data, data, metrics);
    int rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "mpirun failed (%d):\n%s", rc, out);
    double rmse = th_last_metric(metrics, "test_rmse");
    cr_expect_gt(rmse, 0, "metrics file has test_rmse:\n%s", out);
    cr_expect_leq(rmse, 0.93, "ml-100k u1 test RMSE %.4f with default settings", rmse);
    cr_expect(strstr(out, "final test RMSE") != NULL, "summary printed:\n%s", out);
    unlink(metrics);
    rmdir(dir);
}

Test(cluster_mpi, too_few_ranks_is_a_clear_error)
{
    if (!s_have_mpirun())
        cr_skip_test("mpirun not found");
    char dir[] = "/tmp/psrec-mpi-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[4096], out[16384], path[512];
    snprintf(path, sizeof path, "%s/r.tsv", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "1\t1\t5\n2\t1\t3\n");
    fclose(f);
    snprintf(cmd, sizeof cmd, TH_MPIRUN "-np 3 %s train --train %s --servers 2", PSREC_BINARY,
             path);
    int rc = th_run(cmd, out, sizeof out);
    cr_expect_neq(rc, 0, "must fail:\n%s", out);
    cr_expect(strstr(out, "at least 4 ranks") != NULL, "says how many ranks:\n%s", out);
    unlink(path);
    rmdir(dir);
}

Test(cluster_mpi, generated_data_one_server_two_workers)
{
    if (!s_have_mpirun())
        cr_skip_test("mpirun not found");
    char dir[] = "/tmp/psrec-mpi-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[4096], out[65536], metrics[512];
    snprintf(cmd, sizeof cmd,
             "%s gen --out %s/syn --ratings 100000 --users 1000 --items 600 --rank 4 "
             "--seed 5",
             PSREC_BINARY, dir);
    cr_assert_eq(th_run(cmd, out, sizeof out), 0, "%s", out);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    snprintf(cmd, sizeof cmd,
             TH_MPIRUN "-np 4 %s train --train %s/syn.train.psrd "
             "--test %s/syn.test.psrd --metrics %s --epochs 10 --l2 0.05 --progress off",
             PSREC_BINARY, dir, dir, metrics);
    int rc = th_run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "mpirun failed (%d):\n%s", rc, out);
    double rmse = th_last_metric(metrics, "test_rmse");
    double floor = th_last_metric(metrics, "noise_floor");
    cr_expect_gt(floor, 0, "noise floor recorded");
    cr_expect_leq(rmse, 1.15 * floor, "RMSE %.4f vs noise floor %.4f", rmse, floor);
    char rmcmd[600];
    snprintf(rmcmd, sizeof rmcmd, "rm -rf %s", dir);
    cr_expect_eq(system(rmcmd), 0);
}
