/* opts: the option parser of psrec's small subcommands (gen, convert,
 * export, recommend, serve). `train` has its own key table (config.h);
 * these commands take a few flags each, described by a table of cm_opt.
 * Accepts `--name value`, `--name=value`, `-x value` and positionals. */
#ifndef PSREC_COMMON_OPTS_H
#define PSREC_COMMON_OPTS_H

#include <stddef.h>
#include <stdio.h>

#include "common/err.h"

typedef enum {
    CM_OPT_STR,    /* const char *: the argument itself */
    CM_OPT_U64,    /* uint64_t: a non-negative integer, 1e8 style accepted */
    CM_OPT_INT,    /* int in [0, 2^30] */
    CM_OPT_DBL,    /* double in [0, 1e12], finite */
    CM_OPT_CHOICE  /* cm_opt_choice: index of the value in its names */
} cm_opt_type;

/* What a CM_OPT_CHOICE option's ptr points to. */
typedef struct {
    int *value;                    /* receives the index of the name given */
    const char *const *names;      /* NULL-terminated */
} cm_opt_choice;

typedef struct {
    const char *name;              /* long name, without "--" */
    char short_name;               /* 0 or the letter of "-x" */
    cm_opt_type type;
    void *ptr;
    const char *help;
} cm_opt;

/* Parses argv[1..] (argv[0] is the command). Positionals go to pos, at most
 * max_pos. *help is set by --help or -h (parsing stops there). 0, or
 * CM_EINVAL with a message ("--noise: bad value 'x'", "--bogus: unknown
 * option (see --help)", "--out needs a value", "unexpected argument 'x'"). */
int cm_opts_parse(int argc, char **argv, const cm_opt *opts, size_t n, const char **pos,
                  int max_pos, int *n_pos, int *help, cm_error *err);

/* Prints one line per option: "  -x, --name         help". */
void cm_opts_print(FILE *f, const cm_opt *opts, size_t n);

#endif
