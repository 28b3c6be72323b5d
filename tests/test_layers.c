/* The role folders meet only in common/ (and cluster/, which starts them
 * all): a file of worker/, ps/, scheduler/ or serve/ that includes
 * another role's header fails here, naming the file and the line. The
 * tree is found from this file's own path, so the test reads the sources
 * it was built from. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static const char *const s_roles[] = {"common", "ps", "worker", "scheduler", "serve"};

/* The checkout's root: this file's path without "tests/test_layers.c". */
static void s_root(char *out, size_t cap)
{
    snprintf(out, cap, "%s", __FILE__);
    char *t = strstr(out, "tests/test_layers.c");
    cr_assert_not_null(t, "cannot find the tree from %s", __FILE__);
    *t = '\0';
}

/* Counts offending includes in dir (recursively) for role `role`; *files
 * counts the sources read, so the test cannot pass by reading nothing. */
static int s_scan(const char *dir, const char *role, int *files)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "cannot open %s", dir);
    int bad = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            bad += s_scan(path, role, files);
            continue;
        }
        size_t n = strlen(e->d_name);
        const char last = n >= 2 && e->d_name[n - 2] == '.' ? e->d_name[n - 1] : '\0';
        if (last != 'c' && last != 'h')
            continue;
        FILE *f = fopen(path, "r");
        cr_assert_not_null(f, "cannot read %s", path);
        (*files)++;
        char line[1024];
        for (int no = 1; fgets(line, sizeof line, f); no++) {
            const char *p = line;
            while (*p == ' ' || *p == '\t')
                p++;
            if (strncmp(p, "#include \"", 10) != 0)
                continue;
            p += 10;
            const char *slash = strchr(p, '/');
            if (!slash)
                continue;   /* a file beside this one */
            const size_t len = (size_t)(slash - p);
            const int own = strlen(role) == len && strncmp(p, role, len) == 0;
            const int common = len == 6 && strncmp(p, "common", 6) == 0;
            if (!own && !common) {
                cr_log_error("%s:%d: %s/ includes %.*s", path, no, role, (int)strcspn(p, "\""),
                             p);
                bad++;
            }
        }
        fclose(f);
    }
    closedir(d);
    return bad;
}

Test(layers, roles_include_only_themselves_and_common)
{
    char root[4096];
    s_root(root, sizeof root);
    int bad = 0, files = 0;
    for (size_t r = 0; r < sizeof s_roles / sizeof s_roles[0]; r++) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s%s", root, s_roles[r]);
        bad += s_scan(dir, s_roles[r], &files);
    }
    cr_expect_gt(files, 50, "read %d source files only", files);
    cr_expect_eq(bad, 0, "%d includes cross a role's boundary (see the log)", bad);
}
