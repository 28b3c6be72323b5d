/* atomic: write under a temporary name, fsync, rename, fsync the directory. */
#include "common/atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Makes CM_ATOMIC_UNIQUE names unique across the threads of one process
 * (a --local cluster runs every server as a thread of one pid). */
static atomic_ulong s_counter;

/* Frees the names; leaves fd alone. */
static void s_release(cm_atomic *a)
{
    free(a->path);
    free(a->tmp);
    a->path = NULL;
    a->tmp = NULL;
}

int cm_atomic_open(cm_atomic *a, const char *path, int flags, cm_error *err)
{
    a->fd = -1;
    size_t n = strlen(path) + 64;
    a->path = strdup(path);
    a->tmp = malloc(n);
    if (!a->path || !a->tmp) {
        s_release(a);
        return cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
    }
    if (flags & CM_ATOMIC_UNIQUE)
        snprintf(a->tmp, n, "%s.tmp.%ld.%lu", path, (long)getpid(),
                 atomic_fetch_add(&s_counter, 1));
    else
        snprintf(a->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (a->fd < 0) {
        int e = errno;
        int code = (flags & CM_ATOMIC_NOTFOUND) && (e == ENOENT || e == ENOTDIR) ? CM_ENOTFOUND
                                                                                 : CM_EIO;
        int rc = cm_error_set(err, code, "%s: %s", a->tmp, strerror(e));
        s_release(a);
        return rc;
    }
    return 0;
}

int cm_atomic_commit(cm_atomic *a, cm_error *err)
{
    int rc = 0;
    if (fsync(a->fd) != 0) {
        rc = cm_error_set(err, CM_EIO, "%s: fsync failed: %s", a->tmp, strerror(errno));
        goto fail;
    }
    int fd = a->fd;
    a->fd = -1;
    if (close(fd) != 0) {
        rc = cm_error_set(err, CM_EIO, "%s: close failed: %s", a->tmp, strerror(errno));
        goto fail;
    }
    if (rename(a->tmp, a->path) != 0) {
        rc = cm_error_set(err, CM_EIO, "%s: rename from %s failed: %s", a->path, a->tmp,
                          strerror(errno));
        goto fail;
    }
    cm_atomic_fsync_parent(a->path);
    s_release(a);
    return 0;
fail:
    cm_atomic_abort(a);
    return rc;
}

void cm_atomic_abort(cm_atomic *a)
{
    if (a->fd >= 0)
        close(a->fd);
    a->fd = -1;
    if (a->tmp)
        unlink(a->tmp);
    s_release(a);
}

void cm_atomic_fsync_parent(const char *path)
{
    char *dup = strdup(path);
    if (!dup)
        return;
    char *slash = strrchr(dup, '/');
    const char *dir = ".";
    if (slash == dup)
        dir = "/";
    else if (slash) {
        *slash = '\0';
        dir = dup;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dup);
}
