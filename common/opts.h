/* opts: the option parser of psrec's subcommands (gen, convert, export,
 * recommend, serve), and the name rules every psrec command line shares
 * with `train`'s key table (config.h): a '-' in a name equals a '_', so
 * `--test-fraction` and `--test_fraction` are one option, and an unknown
 * name is answered with the nearest known one ("did you mean ...?").
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
 * CM_EINVAL with a message ("--noise: bad value 'x'", "--nosie: unknown
 * option (did you mean --noise?)", "--bogus: unknown option (see --help)",
 * "--out needs a value", "unexpected argument 'x'"). */
int cm_opts_parse(int argc, char **argv, const cm_opt *opts, size_t n, const char **pos,
                  int max_pos, int *n_pos, int *help, cm_error *err);

/* cm_opts_parse for a subcommand's main: a usage error is printed to errf
 * as "psrec CMD: reason" (CMD is argv[0]). Returns 0, 2 after a usage
 * error (the exit status), or -1 when --help was asked for. */
int cm_opts_parse_cmd(FILE *errf, int argc, char **argv, const cm_opt *opts, size_t n,
                      const char **pos, int max_pos, int *n_pos);

/* ---- name rules shared with the key table ---- */

/* Names longer than this are never suggested or suggested for. */
#define CM_OPT_NAME_MAX 64

/* 1 when typed[0..len) names name, '-' and '_' counting as equal. */
int cm_opt_name_eq(const char *typed, size_t len, const char *name);

/* Edit distance (insert, delete, substitute), case-insensitive, '-' equal
 * to '_'; (size_t)-1 for names longer than CM_OPT_NAME_MAX. */
size_t cm_opt_distance(const char *a, const char *b);

/* The name of entry i of a caller's table (cm_opt_suggest walks it). */
typedef const char *(*cm_opt_name_fn)(const void *table, size_t i);

/* The name a mistyped one most likely meant, or NULL: the closest of the
 * n names within two edits (and fewer edits than typed is long), else a
 * name typed is a prefix of ("max-bad" -> "max_bad_lines"). */
const char *cm_opt_suggest(const char *typed, cm_opt_name_fn name_at, const void *table,
                           size_t n);

/* name written into out (n bytes) the way the user writes names: with
 * dashes if typed has a dash, with underscores if it has an underscore. */
void cm_opt_as_typed(const char *typed, const char *name, char *out, size_t n);

/* Prints one line per option: "  -x, --name         help". */
void cm_opts_print(FILE *f, const cm_opt *opts, size_t n);

#endif
