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

static const char *const s_table[] = {"max_bad_lines", "test-fraction", "seed", "dim"};

static const char *s_name_at(const void *t, size_t i)
{
    return ((const char *const *)t)[i];
}

Test(opts, dash_and_underscore_are_one_name)
{
    static const char *str;
    static double d;
    const cm_opt o[] = {{"test-fraction", 0, CM_OPT_DBL, &d, ""},
                        {"log_level", 0, CM_OPT_STR, &str, ""}};
    char *argv[] = {"x", "--test_fraction", "0.5", "--log-level=warn"};
    const char *pos[1];
    int n_pos, help;
    cm_error e = {0};
    cr_assert_eq(cm_opts_parse(4, argv, o, 2, pos, 0, &n_pos, &help, &e), 0, "%s", e.msg);
    cr_expect_float_eq(d, 0.5, 1e-12);
    cr_expect_str_eq(str, "warn");
    cr_expect(cm_opt_name_eq("max-bad-lines", 13, "max_bad_lines"));
    cr_expect(cm_opt_name_eq("max-bad-lines=3", 13, "max_bad_lines"), "only len counts");
    cr_expect(!cm_opt_name_eq("max-bad", 7, "max_bad_lines"), "a prefix is not the name");
    cr_expect(!cm_opt_name_eq("max_bad_linesX", 14, "max_bad_lines"));
}

Test(opts, near_misses_are_suggested_as_typed)
{
    const char *pos[2];
    int n_pos, help;
    cm_error e = {0};
    struct {
        char *arg;
        const char *msg;
    } cases[] = {
        {"--nosie", "--nosie: unknown option (did you mean --noise?)"},
        {"--ratngs=5", "--ratngs: unknown option (did you mean --ratings?)"},
        {"--FORMAT", "--FORMAT: unknown option (did you mean --format?)"},
        {"--form", "--form: unknown option (did you mean --format?)"},
        {"-z", "-z: unknown option (see --help)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *argv[] = {"gen", cases[i].arg, "1"};
        cr_expect_eq(s_run(3, argv, pos, &n_pos, &help, &e), CM_EINVAL);
        cr_expect_str_eq(e.msg, cases[i].msg);
    }
    /* the suggestion is spelled the way the user spells names */
    char out[64];
    cm_opt_as_typed("max-bad-lnes", "max_bad_lines", out, sizeof out);
    cr_expect_str_eq(out, "max-bad-lines");
    cm_opt_as_typed("test_fractoin", "test-fraction", out, sizeof out);
    cr_expect_str_eq(out, "test_fraction");
    cm_opt_as_typed("sed", "test-fraction", out, sizeof out);
    cr_expect_str_eq(out, "test-fraction", "no separator typed: the name as it is");
    cr_expect_str_eq(cm_opt_suggest("max-bad-lnes", s_name_at, s_table, 4), "max_bad_lines");
    cr_expect_str_eq(cm_opt_suggest("TEST_FRACTION", s_name_at, s_table, 4), "test-fraction");
    cr_expect_str_eq(cm_opt_suggest("sede", s_name_at, s_table, 4), "seed");
    cr_expect_str_eq(cm_opt_suggest("test", s_name_at, s_table, 4), "test-fraction",
                     "a stem of a name");
    cr_expect_str_eq(cm_opt_suggest("di", s_name_at, s_table, 4), "dim");
    cr_expect_eq(cm_opt_distance("xm", "dim"), 2);
    cr_expect_null(cm_opt_suggest("xm", s_name_at, s_table, 4),
                   "two edits of a two-letter name could be anything");
    cr_expect_null(cm_opt_suggest("frobnicate", s_name_at, s_table, 4));
    cr_expect_eq(cm_opt_distance("abc", "abd"), 1);
    cr_expect_eq(cm_opt_distance("a-b", "A_B"), 0);
    char long_name[CM_OPT_NAME_MAX + 2];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    cr_expect_eq(cm_opt_distance(long_name, "a"), (size_t)-1);
}

Test(opts, parse_cmd_gives_the_exit_status)
{
    const char *pos[2];
    int n_pos;
    FILE *f = tmpfile();
    cr_assert_not_null(f);
    char *ok[] = {"gen", "--noise", "0.1"};
    cr_expect_eq(cm_opts_parse_cmd(f, 3, ok, s_opts, 5, pos, 2, &n_pos), 0);
    char *bad[] = {"gen", "--nosie", "0.1"};
    cr_expect_eq(cm_opts_parse_cmd(f, 3, bad, s_opts, 5, pos, 2, &n_pos), 2);
    char *help[] = {"gen", "--help"};
    cr_expect_eq(cm_opts_parse_cmd(f, 2, help, s_opts, 5, pos, 2, &n_pos), -1);
    char buf[256] = "";
    rewind(f);
    cr_expect_not_null(fgets(buf, sizeof buf, f));
    cr_expect_str_eq(buf, "psrec gen: --nosie: unknown option (did you mean --noise?)\n");
    fclose(f);
}
