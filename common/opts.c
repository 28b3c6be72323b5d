#include "common/opts.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
                if (strlen(opts[k].name) == len && strncmp(opts[k].name, name, len) == 0)
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
            return cm_error_set(err, CM_EINVAL, "%s: unknown option (see --help)", a);
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
