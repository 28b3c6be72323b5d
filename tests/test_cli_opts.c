/* One option parser for every subcommand, as a user meets it through the
 * psrec binary: each command takes `--a_b` for `--a-b` (and the other way
 * round), and answers a near miss with the option it most likely meant. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "helpers.h"
#include "serve_helpers.h"
#include "tmpdir.h"

static char s_out[1 << 16];

/* Runs `psrec ARGS` in the test's directory; its exit status, its output
 * in s_out. */
#define s_psrec(...) th_psrec(th_dir, s_out, sizeof s_out, __VA_ARGS__)

/* The run failed for the reason in want, and not because an option was
 * unknown (what an unaccepted spelling would give). */
#define S_REFUSED_FOR(want)                                                     \
    do {                                                                        \
        cr_expect(strstr(s_out, want) != NULL, "want '%s' in: %s", want, s_out); \
        cr_expect(strstr(s_out, "unknown option") == NULL, "%s", s_out);        \
    } while (0)

/* The two counts of "wrote A (N ratings) and B (M lines)": train, test. */
static void s_split(const char *unit, long *train, long *test)
{
    char pat[32];
    snprintf(pat, sizeof pat, "(%%ld %s)", unit);
    const char *a = strchr(s_out, '(');
    const char *b = a ? strchr(a + 1, '(') : NULL;
    cr_assert(a && b && sscanf(a, pat, train) == 1 && sscanf(b, pat, test) == 1,
              "two counts of %s in: %s", unit, s_out);
}

static void s_init(void) { th_tmpdir_make("cli_opts"); }

TestSuite(cli_opts, .init = s_init, .fini = th_tmpdir_remove, .timeout = 120);

Test(cli_opts, gen_takes_both_spellings_and_suggests)
{
    long train, test;
    /* the default holds out a tenth; half is far from that */
    cr_assert_eq(s_psrec("gen --out a --ratings 2000 --test_fraction 0.5"), 0, "%s", s_out);
    s_split("ratings", &train, &test);
    cr_expect_eq(train + test, 2000);
    cr_expect(test > 700 && test < 1300, "about half held out: %s", s_out);
    cr_expect_eq(s_psrec("gen --out a --ratings 2000 --test-fraction 0.25"), 0, "%s", s_out);
    cr_expect_eq(s_psrec("gen --test-fractoin 0.2"), 2);
    cr_expect(strstr(s_out, "--test-fractoin: unknown option (did you mean --test-fraction?)"),
              "%s", s_out);
    cr_expect_eq(s_psrec("gen --test_fractoin 0.2"), 2);
    cr_expect(strstr(s_out, "(did you mean --test_fraction?)"), "as typed: %s", s_out);
    cr_expect_eq(s_psrec("gen --xyzzy 1"), 2);
    cr_expect(strstr(s_out, "--xyzzy: unknown option (see --help)"), "nothing near: %s", s_out);
}

Test(cli_opts, gen_ctr_takes_both_spellings_and_suggests)
{
    cr_assert_eq(s_psrec("gen --ctr --out c --lines 400 --vocab_min 6 --pair_share 0.3 "
                         "--test_fraction 0.5 --formats libsvm"),
                 0, "%s", s_out);
    long train, test;
    s_split("lines", &train, &test);
    cr_expect_eq(train + test, 400);
    cr_expect(test > 120 && test < 280, "about half held out (default a tenth): %s", s_out);
    cr_expect_eq(s_psrec("gen --ctr --vocab_mni 6"), 2);
    cr_expect(strstr(s_out, "(did you mean --vocab_min?)"), "%s", s_out);
}

Test(cli_opts, convert_takes_both_spellings_and_suggests)
{
    const char *d = th_data_dir();
    cr_assert_not_null(d, "the shared data sets (PSREC_DATA)");
    cr_assert_eq(s_psrec("convert %s/ml-100k/u1.test r.psrd --max_bad_lines 0 "
                         "--test_fraction 0.5 --seed 3",
                         d),
                 0, "%s", s_out);
    long train, test;
    s_split("ratings", &train, &test); /* the default (0) writes one file */
    cr_expect_eq(train + test, 20000, "ml-100k's u1.test: %s", s_out);
    cr_expect(test > 8000 && test < 12000, "about half held out: %s", s_out);
    cr_expect_eq(s_psrec("convert %s/ml-100k/u1.test r.psrd --max-bad-lnies 0", d), 2);
    cr_expect(strstr(s_out, "(did you mean --max-bad-lines?)"), "%s", s_out);
}

Test(cli_opts, export_recommend_serve_take_both_spellings_and_suggest)
{
    cr_assert_eq(mkdir(th_path("ckpt"), 0755), 0);
    cm_error err = {0};
    cr_assert_eq(sh_make_ckpt(th_path("ckpt"), 20, 50, 5, 5, 1, 9, 3.5, &err), 0, "%s",
                 err.msg);
    cr_assert_eq(s_psrec("export ckpt --out exp --log_level error"), 0, "%s", s_out);
    cr_expect_eq(s_psrec("export ckpt --out exp --log_levle error"), 2);
    cr_expect(strstr(s_out, "(did you mean --log_level?)"), "%s", s_out);

    cr_assert_eq(s_psrec("recommend --model exp --user %llu -k 3",
                         (unsigned long long)sh_id(0, 2)),
                 0, "%s", s_out);
    cr_expect_eq(s_psrec("recommend --modle exp --user 1"), 2);
    cr_expect(strstr(s_out, "(did you mean --model?)"), "%s", s_out);

    /* serve checks its limits after parsing: a refusal for a limit shows the
     * underscored name was taken */
    cr_expect_eq(s_psrec("serve --model exp --max_k 0"), 2);
    S_REFUSED_FOR("--max-k");
    cr_expect_eq(s_psrec("serve --model exp --log_level loud"), 2);
    S_REFUSED_FOR("--log-level: bad value 'loud'");
    cr_expect_eq(s_psrec("serve --model exp --max_requets 1"), 2);
    cr_expect(strstr(s_out, "(did you mean --max_requests?)"), "%s", s_out);
}

Test(cli_opts, train_plan_launch_take_both_spellings_and_suggest)
{
    const char *d = th_data_dir();
    cr_assert_not_null(d, "the shared data sets (PSREC_DATA)");
    /* train without --local or mpirun refuses after parsing every option */
    cr_expect_neq(s_psrec("train --train %s/ml-100k/u1.base --max-bad-lines 3", d), 0);
    S_REFUSED_FOR("mpirun");
    cr_expect_neq(s_psrec("train --train %s/ml-100k/u1.base --epcohs 3", d), 0);
    cr_expect(strstr(s_out, "(did you mean --epochs?)"), "%s", s_out);

    cr_assert_eq(s_psrec("plan --train %s/ml-100k/u1.base --max-bad-lines 3 --log-level warn", d),
                 0, "%s", s_out);
    cr_expect_neq(s_psrec("plan --train %s/ml-100k/u1.base --epcohs 3", d), 0);
    cr_expect(strstr(s_out, "(did you mean --epochs?)"), "%s", s_out);
    /* plan's own option, which is no job key */
    cr_expect_neq(s_psrec("plan --train %s/ml-100k/u1.base --rank=5", d), 0);
    cr_expect(strstr(s_out, "--rank: unknown option (did you mean --ranks?)"), "%s", s_out);
    cr_assert_eq(s_psrec("plan --train %s/ml-100k/u1.base --ranks=5", d), 0, "%s", s_out);

    /* launch checks the job before it starts mpirun */
    cr_expect_neq(s_psrec("launch -np 3 -- --train %s/ml-100k/u1.base --max-bad-lines 3 "
                          "--local",
                          d),
                  0);
    S_REFUSED_FOR("--local job restarts by itself");
    cr_expect_neq(s_psrec("launch -np 3 -- --train %s/ml-100k/u1.base --epcohs 3", d), 0);
    cr_expect(strstr(s_out, "(did you mean --epochs?)"), "%s", s_out);
}

Test(cli_opts, unknown_commands_suggest_the_nearest)
{
    cr_expect_eq(s_psrec("covnert a b"), 2);
    cr_expect(strstr(s_out, "unknown command 'covnert' (did you mean 'convert'?)"), "%s", s_out);
    cr_expect_eq(s_psrec("frobnicate"), 2);
    cr_expect(strstr(s_out, "unknown command 'frobnicate'") && !strstr(s_out, "did you mean"),
              "%s", s_out);
}
