#define _GNU_SOURCE
#include "serve/wfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_BUF (1u << 20)

struct sv_wfile {
    int fd;              /* the temporary file */
    char *path;          /* final name */
    char *tmp;           /* temporary name */
    unsigned char *buf;  /* S_BUF bytes not yet written */
    size_t n_buf;        /* bytes in buf */
    uint64_t written;    /* bytes handed to write(2) */
};

static void s_free(sv_wfile *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    free(w->path);
    free(w->tmp);
    free(w->buf);
    free(w);
}

sv_wfile *sv_wfile_open(const char *path, cm_error *err)
{
    sv_wfile *w = calloc(1, sizeof *w);
    if (!w) {
        cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    w->fd = -1;
    size_t tl = strlen(path) + 32;
    w->path = strdup(path);
    w->tmp = malloc(tl);
    w->buf = malloc(S_BUF);
    if (!w->path || !w->tmp || !w->buf) {
        cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    snprintf(w->tmp, tl, "%s.tmp.%ld", path, (long)getpid());
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        cm_error_set(err, CM_EIO, "%s: cannot create: %s", w->tmp, strerror(errno));
        goto fail;
    }
    return w;
fail:
    s_free(w);
    return NULL;
}

static int s_write_all(sv_wfile *w, const void *data, size_t n, uint64_t offset, int at,
                       cm_error *err)
{
    const char *p = data;
    while (n > 0) {
        ssize_t got = at ? pwrite(w->fd, p, n, (off_t)offset) : write(w->fd, p, n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return cm_error_set(err, CM_EIO, "%s: write failed: %s", w->tmp,
                                got < 0 ? strerror(errno) : "no progress");
        p += got;
        n -= (size_t)got;
        offset += (uint64_t)got;
        if (!at)
            w->written += (uint64_t)got;
    }
    return 0;
}

static int s_flush(sv_wfile *w, cm_error *err)
{
    int rc = s_write_all(w, w->buf, w->n_buf, 0, 0, err);
    w->n_buf = 0;
    return rc;
}

int sv_wfile_write(sv_wfile *w, const void *data, size_t n, cm_error *err)
{
    const unsigned char *p = data;
    while (n > 0) {
        if (w->n_buf == S_BUF) {
            int rc = s_flush(w, err);
            if (rc != 0)
                return rc;
        }
        if (w->n_buf == 0 && n >= S_BUF)
            return s_write_all(w, p, n, 0, 0, err);
        size_t take = S_BUF - w->n_buf < n ? S_BUF - w->n_buf : n;
        memcpy(w->buf + w->n_buf, p, take);
        w->n_buf += take;
        p += take;
        n -= take;
    }
    return 0;
}

int sv_wfile_pad(sv_wfile *w, size_t align, cm_error *err)
{
    static const unsigned char zeros[256];
    uint64_t at = sv_wfile_tell(w);
    size_t need = (size_t)((align - at % align) % align);
    while (need > 0) {
        size_t take = need < sizeof zeros ? need : sizeof zeros;
        int rc = sv_wfile_write(w, zeros, take, err);
        if (rc != 0)
            return rc;
        need -= take;
    }
    return 0;
}

int sv_wfile_printf(sv_wfile *w, cm_error *err, const char *fmt, ...)
{
    char small[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return cm_error_set(err, CM_EINVAL, "%s: bad format", w->path);
    if ((size_t)n < sizeof small)
        return sv_wfile_write(w, small, (size_t)n, err);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return cm_error_set(err, CM_ENOMEM, "%s: out of memory", w->path);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = sv_wfile_write(w, big, (size_t)n, err);
    free(big);
    return rc;
}

uint64_t sv_wfile_tell(const sv_wfile *w) { return w->written + w->n_buf; }

int sv_wfile_pwrite(sv_wfile *w, uint64_t offset, const void *data, size_t n, cm_error *err)
{
    if (offset + n > sv_wfile_tell(w))
        return cm_error_set(err, CM_EINVAL, "%s: pwrite past the end", w->tmp);
    int rc = s_flush(w, err);
    return rc != 0 ? rc : s_write_all(w, data, n, offset, 1, err);
}

/* Makes the rename durable; best effort (some file systems refuse). */
static void s_fsync_dir(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

int sv_wfile_commit(sv_wfile *w, cm_error *err)
{
    int rc = s_flush(w, err);
    if (rc == 0 && fsync(w->fd) != 0)
        rc = cm_error_set(err, CM_EIO, "%s: fsync failed: %s", w->tmp, strerror(errno));
    if (close(w->fd) != 0 && rc == 0)
        rc = cm_error_set(err, CM_EIO, "%s: close failed: %s", w->tmp, strerror(errno));
    w->fd = -1;
    if (rc == 0 && rename(w->tmp, w->path) != 0)
        rc = cm_error_set(err, CM_EIO, "%s: cannot rename to %s: %s", w->tmp, w->path,
                          strerror(errno));
    if (rc == 0)
        s_fsync_dir(w->path);
    else
        unlink(w->tmp);
    s_free(w);
    return rc;
}

void sv_wfile_abort(sv_wfile **pw)
{
    if (!pw || !*pw)
        return;
    unlink((*pw)->tmp);
    s_free(*pw);
    *pw = NULL;
}
