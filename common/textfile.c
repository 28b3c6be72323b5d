/* textfile: whole files, lines, and bad-line reports for the text loaders. */
#include "common/textfile.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"

/* ------------------------------------------------------------------------
 * A whole file
 * ------------------------------------------------------------------------ */

int cm_textfile_open(cm_textfile *f, const char *path, cm_error *err)
{
    memset(f, 0, sizeof *f);
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0)
        return cm_error_set(err, CM_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(f->fd, &st) != 0) {
        int e = errno;
        cm_textfile_close(f);
        return cm_error_set(err, CM_EIO, "%s: %s", path, strerror(e));
    }
    if (S_ISDIR(st.st_mode)) {
        cm_textfile_close(f);
        return cm_error_set(err, CM_EIO, "%s: %s", path, strerror(EISDIR));
    }
    if (S_ISREG(st.st_mode)) {
        f->len = (size_t)st.st_size;
        if (f->len == 0) {
            f->data = "";
            return 0;
        }
        void *p = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, f->fd, 0);
        if (p != MAP_FAILED) {
            madvise(p, f->len, MADV_SEQUENTIAL);
            f->map = p;
            f->data = p;
            return 0;
        }
        f->len = 0;
    }
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            cm_textfile_close(f);
            return cm_error_set(err, CM_ENOMEM, "%s: out of memory reading the file", path);
        }
        if (len == cap) {
            char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                continue;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t k = read(f->fd, buf + len, cap - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            free(buf);
            cm_textfile_close(f);
            return cm_error_set(err, CM_EIO, "%s: %s", path, strerror(e));
        }
        if (k == 0)
            break;
        len += (size_t)k;
    }
    f->heap = buf;
    f->data = buf;
    f->len = len;
    return 0;
}

void cm_textfile_close(cm_textfile *f)
{
    if (f->map)
        munmap(f->map, f->len);
    free(f->heap);
    if (f->fd >= 0)
        close(f->fd);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

/* ------------------------------------------------------------------------
 * Lines
 * ------------------------------------------------------------------------ */

int cm_lines_init(cm_lines *it, const cm_textfile *f)
{
    it->p = f->data;
    it->end = f->data + f->len;
    it->line = 0;
    if (f->len >= 3 && memcmp(it->p, "\xEF\xBB\xBF", 3) == 0)
        it->p += 3;
    size_t left = (size_t)(it->end - it->p);
    return memchr(it->p, '\0', left < 4096 ? left : 4096) != NULL;
}

size_t cm_lines_count(const cm_lines *it)
{
    size_t n = 0;
    const char *p = it->p, *e = it->end;
    while (p < e) {
        const char *q = memchr(p, '\n', (size_t)(e - p));
        if (!q)
            break;
        n++;
        p = q + 1;
    }
    return n + 1;
}

/* ------------------------------------------------------------------------
 * Numbers
 * ------------------------------------------------------------------------ */

static const double s_pow10[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

int cm_text_parse_f32(const char *p, size_t n, float *out)
{
    const char *e = p + n, *q = p;
    int neg = 0;
    if (q < e && (*q == '-' || *q == '+'))
        neg = *q++ == '-';
    uint64_t mant = 0;
    int digits = 0, frac = 0;
    while (q < e && (unsigned)(*q - '0') <= 9) {
        mant = mant * 10 + (uint64_t)(*q - '0');
        digits++;
        q++;
    }
    if (q < e && *q == '.') {
        q++;
        while (q < e && (unsigned)(*q - '0') <= 9) {
            mant = mant * 10 + (uint64_t)(*q - '0');
            digits++;
            frac++;
            q++;
        }
    }
    if (q == e && digits > 0 && digits <= 15) {
        /* Both operands are exact doubles, so the quotient is correctly
         * rounded. */
        double v = frac ? (double)mant / s_pow10[frac] : (double)mant;
        *out = (float)(neg ? -v : v);
        return 0;
    }
    if (n == 0 || n >= 64)
        return -1;
    const char *w = p + (p[0] == '-' || p[0] == '+');
    size_t wn = (size_t)(e - w);
    if ((wn == 3 && (strncasecmp(w, "nan", 3) == 0 || strncasecmp(w, "inf", 3) == 0)) ||
        (wn == 8 && strncasecmp(w, "infinity", 8) == 0))
        return -3;
    /* strtod only sees the characters of a decimal number, so hex and
     * "nan(...)" are refused. */
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'))
            return -1;
    }
    char buf[64];
    memcpy(buf, p, n);
    buf[n] = '\0';
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    if (end != buf + n || end == buf)
        return -1;
    if (!isfinite(v) || fabs(v) > FLT_MAX)
        return -2;
    *out = (float)v;
    return 0;
}

/* ------------------------------------------------------------------------
 * Bad lines
 * ------------------------------------------------------------------------ */

void cm_badlines_init(cm_badlines *b, const char *path, long max_bad_lines, int log_bad_lines)
{
    b->path = path;
    b->max_bad_lines = max_bad_lines;
    b->log_bad_lines = log_bad_lines;
    b->bad = 0;
    b->first_bad[0] = '\0';
}

int cm_badlines_add(cm_badlines *b, size_t line, const char *fmt, ...)
{
    b->bad++;
    if (b->bad == 1 || (long)b->bad <= b->log_bad_lines) {
        char reason[320];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reason, sizeof reason, fmt, ap);
        va_end(ap);
        if (b->bad == 1)
            snprintf(b->first_bad, sizeof b->first_bad, "%s:%zu: %s", b->path, line, reason);
        if ((long)b->bad <= b->log_bad_lines)
            cm_log(CM_LOG_WARN, "%s:%zu: %s", b->path, line, reason);
    }
    return b->max_bad_lines >= 0 && (long)b->bad > b->max_bad_lines;
}

int cm_badlines_toomany(const cm_badlines *b, size_t line, cm_error *err)
{
    return cm_error_set(err, CM_ETOOMANY,
                        "%s: too many bad lines (more than max_bad_lines=%ld, stopped at line "
                        "%zu); first: %s",
                        b->path, b->max_bad_lines, line, b->first_bad);
}

int cm_badlines_finish(const cm_badlines *b, size_t rows, size_t lines, cm_error *err)
{
    if (rows == 0) {
        if (b->bad)
            return cm_error_set(err, CM_EPARSE, "%s: no data rows (%zu bad line%s; first: %s)",
                                b->path, b->bad, b->bad == 1 ? "" : "s", b->first_bad);
        return cm_error_set(err, CM_EPARSE, "%s: no data rows", b->path);
    }
    if (b->bad)
        cm_log(CM_LOG_WARN, "%s: skipped %zu bad line%s of %zu", b->path, b->bad,
               b->bad == 1 ? "" : "s", lines);
    return 0;
}
