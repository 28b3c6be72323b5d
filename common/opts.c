#include "common/opts.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* -------------------------------------------------------------------------
 * Name rules (shared with the key table in config.c)
 * ------------------------------------------------------------------------- */

static int s_fold(char c)
{
    return c == '-' ? '_' : c;
}

int cm_opt_name_eq(const char *typed, size_t len, const char *name)
{
    size_t j = 0;
    for (; j < len; j++)
        if (!name[j] || s_fold(typed[j]) != s_fold(name[j]))
            return 0;
    return name[j] == '\0';
}

size_t cm_opt_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > CM_OPT_NAME_MAX || lb > CM_OPT_NAME_MAX)
        return (size_t)-1;
    size_t row[CM_OPT_NAME_MAX + 1];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            int ca = tolower((unsigned char)s_fold(a[i - 1]));
            int cb = tolower((unsigned char)s_fold(b[j - 1]));
            size_t best = diag + (ca != cb);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            diag = row[j];
            row[j] = best;
        }
    }
    return row[lb];
}

const char *cm_opt_suggest(const char *typed, cm_opt_name_fn name_at, const void *table,
                           size_t n)
{
    size_t len = strlen(typed), best = (size_t)-1;
    const char *pick = NULL;
    for (size_t i = 0; i < n; i++) {
        size_t d = cm_opt_distance(typed, name_at(table, i));
        if (d <= 2 && d < len && d < best) {
            best = d;
            pick = name_at(table, i);
        }
    }
    /* a stem shorter than three letters is a prefix of too much to guess */
    if (pick || len < 3)
        return pick;
    for (size_t i = 0; i < n; i++) {
        const char *k = name_at(table, i);
        size_t j = 0;
        while (j < len && k[j] && s_fold(typed[j]) == s_fold(k[j]))
            j++;
        if (j == len)
            return k;
    }
    return NULL;
}

void cm_opt_as_typed(const char *typed, const char *name, char *out, size_t n)
{
    snprintf(out, n, "%s", name);
    char from = 0, to = 0;
    if (strchr(typed, '-'))
        from = '_', to = '-';
    else if (strchr(typed, '_'))
        from = '-', to = '_';
    for (char *p = out; from && *p; p++)
        if (*p == from)
            *p = to;
}

/* -------------------------------------------------------------------------
 * Parser
 * ------------------------------------------------------------------------- */

static const char *s_opt_name(const void *table, size_t i)
{
    return ((const cm_opt *)table)[i].name;
}

/* "--nmae: unknown option (did you mean --name?)" or "(see --help)". */
static int s_unknown(const char *arg, const cm_opt *opts, size_t n, cm_error *err)
{
    char typed[CM_OPT_NAME_MAX + 1] = "";
    if (strncmp(arg, "--", 2) == 0) {
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        if (len <= CM_OPT_NAME_MAX)
            snprintf(typed, sizeof typed, "%.*s", (int)len, name);
    }
    const char *near = typed[0] ? cm_opt_suggest(typed, s_opt_name, opts, n) : NULL;
    if (!near)
        return cm_error_set(err, CM_EINVAL, "%.*s: unknown option (see --help)",
                            CM_OPT_NAME_MAX + 2, arg);
    char shown[CM_OPT_NAME_MAX + 1];
    cm_opt_as_typed(typed, near, shown, sizeof shown);
    return cm_error_set(err, CM_EINVAL, "--%s: unknown option (did you mean --%s?)", typed,
                        shown);
}

static int s_value(const cm_opt *o, const char *v, cm_error *err)
{
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case CM_OPT_STR:
        *(const char **)o->ptr = v;
        return 0;
    case CM_OPT_U64: {
        if (v[0] == '-' || v[0] == '\0')
            break;
        unsigned long long x = strtoull(v, &end, 10);
        if (!errno && *end == '\0') {
            *(uint64_t *)o->ptr = x;
            return 0;
        }
        errno = 0;
        double d = strtod(v, &end); /* 1e8 */
        if (errno || *end || !(d >= 0) || d > 1.8e19 || d != floor(d))
            break;
        *(uint64_t *)o->ptr = (uint64_t)d;
        return 0;
    }
    case CM_OPT_INT: {
        if (v[0] == '-' || v[0] == '\0')
            break;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || *end || x > 1u << 30)
            break;
        *(int *)o->ptr = (int)x;
        return 0;
    }
    case CM_OPT_DBL: {
        double d = strtod(v, &end);
        if (errno || end == v || *end || !(d >= 0) || d > 1e12)
            break;
        *(double *)o->ptr = d;
        return 0;
    }
    case CM_OPT_CHOICE: {
        const cm_opt_choice *c = o->ptr;
        for (int k = 0; c->names[k]; k++)
            if (strcmp(c->names[k], v) == 0) {
                *c->value = k;
                return 0;
            }
        break;
    }
    }
    return cm_error_set(err, CM_EINVAL, "--%s: bad value '%s'", o->name, v);
}

int cm_opts_parse(int argc, char **argv, const cm_opt *opts, size_t n, const char **pos,
                  int max_pos, int *n_pos, int *help, cm_error *err)
{
    *n_pos = 0;
    *help = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *help = 1;
            return 0;
        }
        const cm_opt *o = NULL;
        const char *v = NULL;
        if (strncmp(a, "--", 2) == 0) {
            const char *name = a + 2, *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            for (size_t k = 0; k < n; k++)
                if (cm_opt_name_eq(name, len, opts[k].name))
                    o = &opts[k];
            if (eq)
                v = eq + 1;
        } else if (a[0] == '-' && a[1] && !a[2]) {
            for (size_t k = 0; k < n; k++)
                if (opts[k].short_name && opts[k].short_name == a[1])
                    o = &opts[k];
        } else {
            if (*n_pos >= max_pos)
                return cm_error_set(err, CM_EINVAL, "unexpected argument '%s' (see --help)", a);
            pos[(*n_pos)++] = a;
            continue;
        }
        if (!o)
            return s_unknown(a, opts, n, err);
        if (!v && i + 1 < argc)
            v = argv[++i];
        if (!v)
            return cm_error_set(err, CM_EINVAL, "--%s needs a value", o->name);
        int rc = s_value(o, v, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int cm_opts_parse_cmd(FILE *errf, int argc, char **argv, const cm_opt *opts, size_t n,
                      const char **pos, int max_pos, int *n_pos)
{
    cm_error err = {0};
    int help = 0;
    if (cm_opts_parse(argc, argv, opts, n, pos, max_pos, n_pos, &help, &err) != 0) {
        fprintf(errf, "psrec %s: %s\n", argv[0], err.msg);
        return 2;
    }
    return help ? -1 : 0;
}

void cm_opts_print(FILE *f, const cm_opt *opts, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        char name[40];
        if (opts[k].short_name)
            snprintf(name, sizeof name, "-%c, --%s", opts[k].short_name, opts[k].name);
        else
            snprintf(name, sizeof name, "    --%s", opts[k].name);
        fprintf(f, "  %-20s %s\n", name, opts[k].help);
    }
}
