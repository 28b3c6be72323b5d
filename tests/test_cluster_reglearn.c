/* Learned l2 end to end on MovieLens 100K u1 with side features (fm): a
 * start far too small (l2 0.0005, where the fixed run overfits from its
 * second epoch) is moved up by every worker, and the learned run's chosen
 * epoch scores better on the test file than the fixed run's. Patience is
 * large: l2 moves by at most a factor e^0.5 per evaluation, and the model
 * overfitted early takes epochs to recover (docs/validation.md). --local and
 * mpirun -np 4 (two workers, each learning its own l2). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

TestSuite(cluster_reglearn, .timeout = 600);

#define S_START "0.0005"

/* The test RMSE on the final line, or NAN. */
static double s_final_rmse(const char *out)
{
    const char *p = strstr(out, "final test RMSE ");
    return p ? strtod(p + strlen("final test RMSE "), NULL) : NAN;
}

/* Worker w's l2 after its last evaluation ("worker W: epoch E: learned l2
 * A -> B"), or NAN when it logged none; *moves counts its lines. */
static double s_last_l2(const char *out, int w, int *moves)
{
    char pat[64];
    snprintf(pat, sizeof pat, "worker %d: epoch ", w);
    double last = NAN;
    *moves = 0;
    for (const char *p = strstr(out, pat); p; p = strstr(p + 1, pat)) {
        const char *arrow = strstr(p, "-> ");
        const char *eol = strchr(p, '\n');
        if (!strstr(p, "learned l2") || !arrow || (eol && arrow > eol))
            continue;
        last = strtod(arrow + 3, NULL);
        (*moves)++;
    }
    return last;
}

static void s_args(char *buf, size_t cap, const char *data, const char *reg)
{
    snprintf(buf, cap,
             "--train %.900s/ml-100k/u1.base --test %.900s/ml-100k/u1.test --model fm "
             "--user_features %.900s/ml-100k/u.user --item_features %.900s/ml-100k/u.item "
             "--servers 1 --l2 " S_START " --epochs 40 --patience 15 --progress off "
             "--log_level info --regularization %s",
             data, data, data, data, reg);
}

static void s_check(const char *how, const char *fixed_out, const char *learned_out,
                    int workers)
{
    const double fixed = s_final_rmse(fixed_out), learned = s_final_rmse(learned_out);
    cr_assert(isfinite(fixed), "%s fixed: no final line:\n%s", how, fixed_out);
    cr_assert(isfinite(learned), "%s learned: no final line:\n%s", how, learned_out);
    int moves = 0;
    cr_expect_null(strstr(fixed_out, "learned l2"), "%s: a fixed run learned l2", how);
    for (int w = 0; w < workers; w++) {
        const double l2 = s_last_l2(learned_out, w, &moves);
        cr_expect_gt(moves, 1, "%s: worker %d moved l2 %d times:\n%s", how, w, moves,
                     learned_out);
        /* the validation data asks for much more than the start */
        cr_expect_gt(l2, 10 * atof(S_START), "%s: worker %d ends at l2 %g", how, w, l2);
    }
    cr_expect_lt(learned, fixed, "%s: test RMSE at the chosen epoch, learned %.4f, fixed %.4f",
                 how, learned, fixed);
}

Test(cluster_reglearn, local_small_l2_is_raised_and_beats_the_fixed_run)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    if (TH_SANITIZED)
        cr_skip_test("sanitizer build: test_reglearn runs the learned step under the "
                     "sanitizers; the release suite runs these 40-epoch jobs");
    static char args[4096], cmd[8192], fixed[1 << 17], learned[1 << 17];
    s_args(args, sizeof args, data, "fixed");
    snprintf(cmd, sizeof cmd, "%s train --local --workers 2 %s", PSREC_BINARY, args);
    cr_assert_eq(th_run(cmd, fixed, sizeof fixed), 0, "%s", fixed);
    s_args(args, sizeof args, data, "learned");
    snprintf(cmd, sizeof cmd, "%s train --local --workers 2 %s", PSREC_BINARY, args);
    cr_assert_eq(th_run(cmd, learned, sizeof learned), 0, "%s", learned);
    s_check("--local", fixed, learned, 2);
}

Test(cluster_reglearn, mpirun_small_l2_is_raised_and_beats_the_fixed_run)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    if (!th_have_mpirun())
        cr_skip_test("mpirun not found");
    if (TH_SANITIZED)
        cr_skip_test("sanitizer build: test_reglearn runs the learned step under the "
                     "sanitizers; the release suite runs these 40-epoch jobs");
    static char args[4096], cmd[8192], fixed[1 << 17], learned[1 << 17];
    s_args(args, sizeof args, data, "fixed");
    snprintf(cmd, sizeof cmd, TH_MPIRUN "-np 4 %s train %s", PSREC_BINARY, args);
    cr_assert_eq(th_run(cmd, fixed, sizeof fixed), 0, "%s", fixed);
    s_args(args, sizeof args, data, "learned");
    snprintf(cmd, sizeof cmd, TH_MPIRUN "-np 4 %s train %s", PSREC_BINARY, args);
    cr_assert_eq(th_run(cmd, learned, sizeof learned), 0, "%s", learned);
    s_check("mpirun -np 4", fixed, learned, 2);
}

/* A model the learned l2 cannot serve is refused up front, naming the key. */
Test(cluster_reglearn, learned_for_ffm_is_a_config_error)
{
    const char *data = th_data_dir();
    if (!data)
        cr_skip_test("../shared/data not found (set PSREC_DATA)");
    static char cmd[4096], out[1 << 14];
    snprintf(cmd, sizeof cmd,
             "%s train --local --train %.900s/ml-100k/u1.base --model ffm --regularization "
             "learned --progress off",
             PSREC_BINARY, data);
    cr_expect_neq(th_run(cmd, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "regularization = learned") != NULL, "%s", out);
}
