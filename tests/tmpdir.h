/* A temporary directory for a test program's files: made at suite or test
 * start (th_tmpdir_make), removed with everything in it at the end
 * (th_tmpdir_remove). Include after defining _GNU_SOURCE (nftw, mkdtemp). */
#ifndef PSREC_TESTS_TMPDIR_H
#define PSREC_TESTS_TMPDIR_H

#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static char th_dir[256];

/* Makes /tmp/psrec_test_<tag>.XXXXXX unless it is made already (suite and
 * test init both run). */
static inline void th_tmpdir_make(const char *tag)
{
    if (th_dir[0])
        return;
    snprintf(th_dir, sizeof th_dir, "/tmp/psrec_test_%s.XXXXXX", tag);
    cr_assert_not_null(mkdtemp(th_dir));
}

static inline int th_rm_entry_(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static inline void th_tmpdir_remove(void)
{
    if (th_dir[0])
        nftw(th_dir, th_rm_entry_, 16, FTW_DEPTH | FTW_PHYS);
    th_dir[0] = '\0';
}

/* th_dir/name; the last 8 results stay valid. */
static inline const char *th_path(const char *name)
{
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", th_dir, name);
    return p;
}

#endif
