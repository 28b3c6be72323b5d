/* The subcommands' option parser: forms, types, and each usage error. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "common/opts.h"

static const char *s_str;
static uint64_t s_u64;
static int s_int, s_choice;
static double s_dbl;
static const char *const s_names[] = {"bin", "text", NULL};
static cm_opt_choice s_ch = {&s_choice, s_names};
static const cm_opt s_opts[] = {
    {"out", 'o', CM_OPT_STR, &s_str, "output"},
    {"ratings", 0, CM_OPT_U64, &s_u64, "rows"},
    {"rank", 'r', CM_OPT_INT, &s_int, "rank"},
    {"noise", 0, CM_OPT_DBL, &s_dbl, "noise"},
    {"format", 0, CM_OPT_CHOICE, &s_ch, "format"},
};

static int s_run(int argc, char **argv, const char **pos, int *n_pos, int *help, cm_error *e)
{
    return cm_opts_parse(argc, argv, s_opts, 5, pos, 2, n_pos, help, e);
}

Test(opts, every_form_and_type)
{
    char *argv[] = {"gen", "--out", "x", "--ratings=1e8", "-r", "12", "--noise", "0.25",
                    "--format", "text", "in.tsv", "out.psrd"};
    const char *pos[2];
    int n_pos = 0, help = 0;
    cm_error e = {0};
    cr_assert_eq(s_run(12, argv, pos, &n_pos, &help, &e), 0, "%s", e.msg);
    cr_expect_str_eq(s_str, "x");
    cr_expect_eq(s_u64, 100000000ULL);
    cr_expect_eq(s_int, 12);
    cr_expect_float_eq(s_dbl, 0.25, 1e-12);
    cr_expect_eq(s_choice, 1);
    cr_expect_eq(n_pos, 2);
    cr_expect_str_eq(pos[1], "out.psrd");
    cr_expect_eq(help, 0);
}

Test(opts, usage_errors_say_what)
{
    const char *pos[2];
    int n_pos, help;
    cm_error e = {0};
    struct {
        int argc;
        char *argv[4];
        const char *msg;
    } cases[] = {
        {3, {"gen", "--rank", "-3"}, "--rank: bad value '-3'"},
        {3, {"gen", "--ratings", "1.5"}, "--ratings: bad value '1.5'"},
        {3, {"gen", "--noise", "abc"}, "--noise: bad value 'abc'"},
        {3, {"gen", "--format", "csv"}, "--format: bad value 'csv'"},
        {2, {"gen", "--bogus"}, "--bogus: unknown option (see --help)"},
        {2, {"gen", "--out"}, "--out needs a value"},
        {4, {"gen", "a", "b", "c"}, "unexpected argument 'c' (see --help)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_expect_eq(s_run(cases[i].argc, cases[i].argv, pos, &n_pos, &help, &e), CM_EINVAL);
        cr_expect_str_eq(e.msg, cases[i].msg);
    }
    char *h[] = {"gen", "-h", "--bogus"};
    cr_expect_eq(s_run(3, h, pos, &n_pos, &help, &e), 0, "help wins");
    cr_expect_eq(help, 1);
}
