/* wfile: a buffered writer over a cm_atomic temporary file. */
#include "common/wfile.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/atomic.h"

#define S_BUF (1u << 20)

struct cm_wfile {
    cm_atomic a;         /* the temporary file and the final name */
    unsigned char *buf;  /* S_BUF bytes not yet written */
    size_t n_buf;        /* bytes in buf */
    uint64_t written;    /* bytes handed to write(2) */
};

cm_wfile *cm_wfile_open(const char *path, cm_error *err)
{
    cm_wfile *w = calloc(1, sizeof *w);
    if (!w) {
        cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    w->a = (cm_atomic)CM_ATOMIC_INIT;
    w->buf = malloc(S_BUF);
    if (!w->buf) {
        cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    if (cm_atomic_open(&w->a, path, 0, err) != 0)
        goto fail;
    return w;
fail:
    free(w->buf);
    free(w);
    return NULL;
}

static int s_write_all(cm_wfile *w, const void *data, size_t n, uint64_t offset, int at,
                       cm_error *err)
{
    const char *p = data;
    while (n > 0) {
        ssize_t got = at ? pwrite(w->a.fd, p, n, (off_t)offset) : write(w->a.fd, p, n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return cm_error_set(err, CM_EIO, "%s: write failed: %s", w->a.tmp,
                                got < 0 ? strerror(errno) : "no progress");
        p += got;
        n -= (size_t)got;
        offset += (uint64_t)got;
        if (!at)
            w->written += (uint64_t)got;
    }
    return 0;
}

static int s_flush(cm_wfile *w, cm_error *err)
{
    int rc = s_write_all(w, w->buf, w->n_buf, 0, 0, err);
    w->n_buf = 0;
    return rc;
}

int cm_wfile_write(cm_wfile *w, const void *data, size_t n, cm_error *err)
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

int cm_wfile_pad(cm_wfile *w, size_t align, cm_error *err)
{
    static const unsigned char zeros[256];
    uint64_t at = cm_wfile_tell(w);
    size_t need = (size_t)((align - at % align) % align);
    while (need > 0) {
        size_t take = need < sizeof zeros ? need : sizeof zeros;
        int rc = cm_wfile_write(w, zeros, take, err);
        if (rc != 0)
            return rc;
        need -= take;
    }
    return 0;
}

int cm_wfile_printf(cm_wfile *w, cm_error *err, const char *fmt, ...)
{
    char small[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return cm_error_set(err, CM_EINVAL, "%s: bad format", w->a.path);
    if ((size_t)n < sizeof small)
        return cm_wfile_write(w, small, (size_t)n, err);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return cm_error_set(err, CM_ENOMEM, "%s: out of memory", w->a.path);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = cm_wfile_write(w, big, (size_t)n, err);
    free(big);
    return rc;
}

uint64_t cm_wfile_tell(const cm_wfile *w) { return w->written + w->n_buf; }

int cm_wfile_pwrite(cm_wfile *w, uint64_t offset, const void *data, size_t n, cm_error *err)
{
    if (offset + n > cm_wfile_tell(w))
        return cm_error_set(err, CM_EINVAL, "%s: pwrite past the end", w->a.tmp);
    int rc = s_flush(w, err);
    return rc != 0 ? rc : s_write_all(w, data, n, offset, 1, err);
}

int cm_wfile_commit(cm_wfile *w, cm_error *err)
{
    int rc = s_flush(w, err);
    if (rc == 0)
        rc = cm_atomic_commit(&w->a, err);
    else
        cm_atomic_abort(&w->a);
    free(w->buf);
    free(w);
    return rc;
}

void cm_wfile_abort(cm_wfile **pw)
{
    if (!pw || !*pw)
        return;
    cm_atomic_abort(&(*pw)->a);
    free((*pw)->buf);
    free(*pw);
    *pw = NULL;
}
