/* ckpt: row shard files, the MANIFEST, and the checkpoint root (LATEST,
 * pruning, choosing what to resume from). The byte layouts and the
 * publish protocol are in docs/checkpoints.md.
 *
 * Writers never let a reader see a half-written file under its final name:
 * every file goes through common/atomic.h to "name.tmp.<pid>.<counter>", is
 * fsynced, renamed, and the directory fsynced. Readers trust nothing:
 * sizes and checksums come from the manifest, every offset is checked
 * against the file size before it is touched, and each failure names the
 * file. */
#include "common/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/atomic.h"
#include "common/codec.h"
#include "common/log.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint arrays are little-endian; this host is not"
#endif

#define S_SHARD_VERSION 1u
#define S_MANIFEST_VERSION 1u
#define S_SHARD_PREAMBLE 16u          /* magic, header length, reserved */
#define S_MANIFEST_PREAMBLE 20u       /* magic, length, xxh64 */
#define S_ALIGN 64u
#define S_SHARD_HDR_MAX 4096u         /* a ShardHeader is ~40 bytes */
#define S_MANIFEST_MAX (256u << 20)   /* refuse absurd lengths before allocating */
#define S_IO_CHUNK (1u << 20)
#define S_LATEST "LATEST"
#define S_BEST "BEST"
#define S_MANIFEST "MANIFEST"
#define S_DIR_PREFIX "ckpt-"

/* ------------------------------------------------------------------------
 * Small file helpers
 * ------------------------------------------------------------------------ */

static void s_put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void s_put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t s_get_le32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t s_get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint64_t s_align_up(uint64_t x)
{
    return (x + S_ALIGN - 1) / S_ALIGN * S_ALIGN;
}

/* "a/b" into out; CM_ERANGE when it does not fit. */
static int s_join(char *out, size_t n, const char *dir, const char *name, cm_error *err)
{
    int k = snprintf(out, n, "%s/%s", dir, name);
    if (k < 0 || (size_t)k >= n)
        return cm_error_set(err, CM_ERANGE, "%s/%s: path too long", dir, name);
    return 0;
}

/* open() failures: a missing file is CM_ENOTFOUND, anything else CM_EIO. */
static int s_errno_code(int e)
{
    return e == ENOENT || e == ENOTDIR ? CM_ENOTFOUND : CM_EIO;
}

/* A file name stored in a manifest or LATEST: one path component. */
static int s_name_ok(const char *name)
{
    return name[0] != '\0' && strcmp(name, ".") != 0 && !strchr(name, '/') &&
           !strstr(name, "..");
}

/* Best effort: makes renames and creations in dir durable. */
static void s_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Writes all of buf and feeds it to the running checksum, if any. */
static int s_write_all(int fd, const void *buf, size_t n, XXH64_state_t *xs)
{
    if (xs && n)
        XXH64_update(xs, buf, n);
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* xxh64 (seed 0) of a whole open file, read in chunks. */
static int s_checksum_fd(int fd, const char *path, uint64_t *out, cm_error *err)
{
    XXH64_state_t *xs = XXH64_createState();
    char *buf = malloc(S_IO_CHUNK);
    int rc = 0;
    if (!xs || !buf) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    XXH64_reset(xs, 0);
    for (;;) {
        ssize_t k = read(fd, buf, S_IO_CHUNK);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            rc = cm_error_set(err, CM_EIO, "%s: read failed: %s", path, strerror(errno));
            goto out;
        }
        if (k == 0)
            break;
        XXH64_update(xs, buf, (size_t)k);
    }
    *out = XXH64_digest(xs);
out:
    if (xs)
        XXH64_freeState(xs);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------------
 * Row shards
 * ------------------------------------------------------------------------ */

/* What a cm_shard's owner_ points at. */
typedef struct {
    void *map;        /* mmap of the file, or NULL */
    size_t map_len;
    void *heap;       /* the file read into memory when it could not be mapped */
} s_shard_owner;

/* Writes rows [0, n) of row_floats floats, row i at rowp[i], through a
 * small buffer. */
static int s_write_gathered(int fd, const float *const *rowp, size_t n, int row_floats,
                            XXH64_state_t *xs)
{
    enum { S_GATHER = 1 << 20 }; /* floats per write */
    const size_t rf = (size_t)row_floats, per = S_GATHER / rf ? S_GATHER / rf : 1;
    float *buf = malloc(per * rf * sizeof *buf);
    if (!buf) {
        errno = ENOMEM;
        return -1;
    }
    int rc = 0;
    for (size_t first = 0; first < n && rc == 0; first += per) {
        size_t m = n - first < per ? n - first : per;
        for (size_t i = 0; i < m; i++)
            memcpy(buf + i * rf, rowp[first + i], rf * sizeof *buf);
        rc = s_write_all(fd, buf, m * rf * sizeof *buf, xs);
    }
    free(buf);
    return rc;
}

/* Index of the first row holding a non-finite float (its column in *col),
 * or n when every float is finite. */
static size_t s_first_nonfinite(const float *rows, const float *const *rowp, size_t n,
                                int row_floats, int *col)
{
    for (size_t i = 0; i < n; i++) {
        const float *r = rowp ? rowp[i] : rows + i * (size_t)row_floats;
        for (int j = 0; j < row_floats; j++)
            if (!isfinite(r[j])) {
                *col = j;
                return i;
            }
    }
    return n;
}

/* The rows a shard file holds: n keys, each with row_floats floats (the
 * first dim of them weights), either contiguous (rows) or gathered from
 * one pointer per row (rowp). */
typedef struct {
    uint32_t table;
    int dim, row_floats;
    const uint64_t *keys;
    const float *rows;
    const float *const *rowp;
    size_t n;
} s_shard_rows;

static int s_shard_write(const char *path, const s_shard_rows *src, uint64_t *size,
                         uint64_t *checksum, cm_error *err)
{
    const uint32_t table = src->table;
    const int dim = src->dim, row_floats = src->row_floats;
    const uint64_t *keys = src->keys;
    const float *rows = src->rows;
    const float *const *rowp = src->rowp;
    const size_t n = src->n;
    if (!path)
        return cm_error_set(err, CM_EINVAL, "shard_write: NULL path");
    if (dim <= 0 || row_floats < dim)
        return cm_error_set(err, CM_EINVAL, "%s: rows of %d floats with dim %d", path,
                            row_floats, dim);
    if (n > 0 && (!keys || (!rows && !rowp)))
        return cm_error_set(err, CM_EINVAL, "%s: NULL keys or rows with %zu rows", path, n);
    if (n > (UINT64_MAX / 8 - 2 * S_ALIGN) / ((uint64_t)row_floats + 2) || n > SIZE_MAX / 8 ||
        n > SIZE_MAX / sizeof(float) / (size_t)row_floats)
        return cm_error_set(err, CM_ERANGE, "%s: %zu rows of %d floats is too many", path, n,
                            row_floats);
    for (size_t i = 1; i < n; i++)
        if (keys[i] <= keys[i - 1])
            return cm_error_set(err, CM_EINVAL,
                                "%s: keys must be strictly ascending; key %zu (%llu) follows "
                                "%llu", path, i, (unsigned long long)keys[i],
                                (unsigned long long)keys[i - 1]);
    /* a diverged model is refused here, so no checkpoint of it is ever
     * published (and a resume or export never meets it) */
    int col = 0;
    size_t bad = s_first_nonfinite(rows, rowp, n, row_floats, &col);
    if (bad < n) {
        const float *r = rowp ? rowp[bad] : rows + bad * (size_t)row_floats;
        return cm_error_set(err, CM_ERANGE, "%s: table %u key %llu: %s %d is %s (the model "
                            "diverged); not written", path, table,
                            (unsigned long long)keys[bad],
                            col < dim ? "weight" : "optimizer state float", col,
                            isnan(r[col]) ? "nan" : "infinite");
    }

    /* The header holds the offsets and the offsets follow the header: a
     * varint can only grow, so this settles in two or three rounds. */
    cm_shard_hdr h = {.version = S_SHARD_VERSION, .table = table, .dim = (uint32_t)dim,
                      .row_floats = (uint32_t)row_floats, .n_rows = n};
    uint8_t *pb = NULL;
    size_t plen = 0;
    for (int round = 0; round < 8; round++) {
        free(pb);
        pb = NULL;
        if (cm_codec_shard_pack(&h, &pb, &plen) != 0)
            return cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        uint64_t ko = s_align_up(S_SHARD_PREAMBLE + plen);
        uint64_t ro = s_align_up(ko + (uint64_t)n * 8);
        if (ko == h.key_offset && ro == h.row_offset)
            break;
        h.key_offset = ko;
        h.row_offset = ro;
    }
    uint64_t total = h.row_offset + (uint64_t)n * (uint64_t)row_floats * 4;

    XXH64_state_t *xs = XXH64_createState();
    cm_atomic t = CM_ATOMIC_INIT;
    int rc = 0;
    if (!xs) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    XXH64_reset(xs, 0);
    if ((rc = cm_atomic_open(&t, path, CM_ATOMIC_UNIQUE | CM_ATOMIC_NOTFOUND, err)) != 0)
        goto out;
    unsigned char pre[S_SHARD_PREAMBLE];
    static const unsigned char zeros[S_ALIGN];
    memcpy(pre, CM_SHARD_MAGIC, 8);
    s_put_le32(pre + 8, (uint32_t)plen);
    s_put_le32(pre + 12, 0);
    uint64_t key_pad = h.key_offset - S_SHARD_PREAMBLE - plen;
    uint64_t row_pad = h.row_offset - h.key_offset - (uint64_t)n * 8;
    if (s_write_all(t.fd, pre, sizeof pre, xs) != 0 || s_write_all(t.fd, pb, plen, xs) != 0 ||
        s_write_all(t.fd, zeros, (size_t)key_pad, xs) != 0 ||
        s_write_all(t.fd, keys, n * 8, xs) != 0 ||
        s_write_all(t.fd, zeros, (size_t)row_pad, xs) != 0 ||
        (rowp ? s_write_gathered(t.fd, rowp, n, row_floats, xs)
              : s_write_all(t.fd, rows, n * (size_t)row_floats * sizeof(float), xs)) != 0) {
        rc = cm_error_set(err, CM_EIO, "%s: write failed: %s", t.tmp, strerror(errno));
        cm_atomic_abort(&t);
        goto out;
    }
    if ((rc = cm_atomic_commit(&t, err)) != 0)
        goto out;
    if (size)
        *size = total;
    if (checksum)
        *checksum = XXH64_digest(xs);
out:
    if (xs)
        XXH64_freeState(xs);
    free(pb);
    return rc;
}

int cm_shard_write(const char *path, uint32_t table, int dim, int row_floats,
                   const uint64_t *keys, const float *rows, size_t n, uint64_t *size,
                   uint64_t *checksum, cm_error *err)
{
    const s_shard_rows src = {table, dim, row_floats, keys, rows, NULL, n};
    return s_shard_write(path, &src, size, checksum, err);
}

int cm_shard_write_rows(const char *path, uint32_t table, int dim, int row_floats,
                        const uint64_t *keys, const float *const *rows, size_t n,
                        uint64_t *size, uint64_t *checksum, cm_error *err)
{
    const s_shard_rows src = {table, dim, row_floats, keys, NULL, rows, n};
    return s_shard_write(path, &src, size, checksum, err);
}

void cm_shard_free(cm_shard *s)
{
    if (!s)
        return;
    s_shard_owner *o = s->owner_;
    if (o) {
        if (o->map)
            munmap(o->map, o->map_len);
        free(o->heap);
        free(o);
    }
    memset(s, 0, sizeof *s);
}

/* Reads a whole regular file into a 64-byte aligned buffer. */
static int s_read_whole(int fd, const char *path, size_t len, void **out, cm_error *err)
{
    void *buf = NULL;
    if (posix_memalign(&buf, S_ALIGN, len ? len : 1) != 0)
        return cm_error_set(err, CM_ENOMEM, "%s: out of memory for %zu bytes", path, len);
    size_t got = 0;
    while (got < len) {
        ssize_t k = pread(fd, (char *)buf + got, len - got, (off_t)got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            int e = k < 0 ? errno : EIO;
            free(buf);
            return cm_error_set(err, CM_EIO, "%s: read failed: %s", path,
                                k < 0 ? strerror(e) : "file shrank while reading");
        }
        got += (size_t)k;
    }
    *out = buf;
    return 0;
}

/* Checks the bytes of a shard file; fills out on success (keys and rows
 * point into data). */
static int s_shard_parse(const char *path, const unsigned char *data, uint64_t len,
                         cm_shard *out, cm_error *err)
{
    if (len < S_SHARD_PREAMBLE)
        return cm_error_set(err, CM_EPARSE, "%s: file is %llu bytes, too short for a shard "
                            "(torn write?)", path, (unsigned long long)len);
    if (memcmp(data, CM_SHARD_MAGIC, 8) != 0)
        return cm_error_set(err, CM_EPARSE, "%s: not a psrec row shard (bad magic)", path);
    uint32_t hlen = s_get_le32(data + 8);
    if (hlen > S_SHARD_HDR_MAX || hlen > len - S_SHARD_PREAMBLE)
        return cm_error_set(err, CM_EPARSE, "%s: header length %u does not fit a file of %llu "
                            "bytes", path, hlen, (unsigned long long)len);
    cm_shard_hdr h;
    cm_error e = {0};
    if (cm_codec_shard_unpack(data + S_SHARD_PREAMBLE, hlen, &h, &e) != 0)
        return cm_error_set(err, CM_EPARSE, "%s: %s", path, e.msg);
    if (h.version != S_SHARD_VERSION)
        return cm_error_set(err, CM_EPARSE, "%s: shard version %u, this build reads %u", path,
                            h.version, S_SHARD_VERSION);
    if (h.dim == 0 || h.dim > INT_MAX || h.row_floats < h.dim || h.row_floats > INT_MAX)
        return cm_error_set(err, CM_EPARSE, "%s: rows of %u floats with dim %u", path,
                            h.row_floats, h.dim);
    if (h.key_offset % S_ALIGN || h.row_offset % S_ALIGN)
        return cm_error_set(err, CM_EPARSE, "%s: offsets %llu/%llu are not %u-byte aligned",
                            path, (unsigned long long)h.key_offset,
                            (unsigned long long)h.row_offset, S_ALIGN);
    if (h.key_offset < S_SHARD_PREAMBLE + hlen)
        return cm_error_set(err, CM_EPARSE, "%s: keys at %llu overlap the header", path,
                            (unsigned long long)h.key_offset);
    /* every product below is checked against len first, so nothing wraps */
    if (h.n_rows > len / 8 || h.key_offset > len - h.n_rows * 8)
        return cm_error_set(err, CM_EPARSE, "%s: %llu keys at %llu do not fit a file of %llu "
                            "bytes (torn write?)", path, (unsigned long long)h.n_rows,
                            (unsigned long long)h.key_offset, (unsigned long long)len);
    if (h.row_offset < h.key_offset + h.n_rows * 8)
        return cm_error_set(err, CM_EPARSE, "%s: rows at %llu overlap the keys", path,
                            (unsigned long long)h.row_offset);
    uint64_t row_bytes_max = (len - (h.row_offset < len ? h.row_offset : len)) / 4;
    if (h.row_offset > len ||
        (h.n_rows > 0 && h.row_floats > row_bytes_max / h.n_rows) ||
        h.row_offset + h.n_rows * h.row_floats * 4 != len)
        return cm_error_set(err, CM_EPARSE, "%s: %llu rows of %u floats at %llu do not match "
                            "a file of %llu bytes (torn write?)", path,
                            (unsigned long long)h.n_rows, h.row_floats,
                            (unsigned long long)h.row_offset, (unsigned long long)len);
    if (h.n_rows > SIZE_MAX)
        return cm_error_set(err, CM_ERANGE, "%s: %llu rows do not fit this host", path,
                            (unsigned long long)h.n_rows);
    const uint64_t *keys = (const uint64_t *)(const void *)(data + h.key_offset);
    for (uint64_t i = 1; i < h.n_rows; i++)
        if (keys[i] <= keys[i - 1])
            return cm_error_set(err, CM_EPARSE, "%s: keys out of order at row %llu", path,
                                (unsigned long long)i);
    out->table = h.table;
    out->dim = (int)h.dim;
    out->row_floats = (int)h.row_floats;
    out->n = (size_t)h.n_rows;
    out->keys = keys;
    out->rows = (const float *)(const void *)(data + h.row_offset);
    return 0;
}

int cm_shard_read(const char *path, uint64_t want_size, uint64_t want_checksum,
                  cm_shard *out, cm_error *err)
{
    memset(out, 0, sizeof *out);
    if (!path)
        return cm_error_set(err, CM_EINVAL, "shard_read: NULL path");
    s_shard_owner *o = NULL;
    const unsigned char *data = NULL;
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cm_error_set(err, s_errno_code(errno), "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = cm_error_set(err, CM_EIO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = cm_error_set(err, CM_EIO, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t len = (uint64_t)st.st_size;
    if (want_size && len != want_size) {
        rc = cm_error_set(err, CM_ECHECKSUM, "%s: file is %llu bytes, manifest says %llu (torn "
                          "write?)", path, (unsigned long long)len,
                          (unsigned long long)want_size);
        goto fail;
    }
    if (len < S_SHARD_PREAMBLE) {
        rc = cm_error_set(err, CM_EPARSE, "%s: file is %llu bytes, too short for a shard (torn "
                          "write?)", path, (unsigned long long)len);
        goto fail;
    }
    if (len > SIZE_MAX) {
        rc = cm_error_set(err, CM_ERANGE, "%s: file too large for this host", path);
        goto fail;
    }
    o = calloc(1, sizeof *o);
    if (!o) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    void *p = mmap(NULL, (size_t)len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) {
        o->map = p;
        o->map_len = (size_t)len;
        data = p;
    } else {
        if ((rc = s_read_whole(fd, path, (size_t)len, &o->heap, err)) != 0)
            goto fail;
        data = o->heap;
    }
    close(fd);
    fd = -1;
    if (want_checksum) {
        uint64_t sum = XXH64(data, (size_t)len, 0);
        if (sum != want_checksum) {
            rc = cm_error_set(err, CM_ECHECKSUM, "%s: checksum mismatch (xxh64 %016llx, "
                              "manifest says %016llx)", path, (unsigned long long)sum,
                              (unsigned long long)want_checksum);
            goto fail;
        }
    }
    if ((rc = s_shard_parse(path, data, len, out, err)) != 0)
        goto fail;
    out->owner_ = o;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    if (o) {
        if (o->map)
            munmap(o->map, o->map_len);
        free(o->heap);
        free(o);
    }
    memset(out, 0, sizeof *out);
    return rc;
}

/* ------------------------------------------------------------------------
 * Manifest
 * ------------------------------------------------------------------------ */

void cm_manifest_free(cm_manifest *m)
{
    if (!m)
        return;
    free(m->job);
    free(m->tables);
    free(m->slot_map);
    for (size_t i = 0; m->files && i < m->n_files; i++)
        free(m->files[i].slots);
    free(m->files);
    memset(m, 0, sizeof *m);
}

/* What a reader relies on; checked before writing and after reading so a
 * manifest that would be refused is never written. */
static int s_manifest_check(const char *path, const cm_manifest *m, int code, cm_error *err)
{
    if (m->version != S_MANIFEST_VERSION)
        return cm_error_set(err, code, "%s: manifest version %u, this build reads %u", path,
                            m->version, S_MANIFEST_VERSION);
    if (m->n_tables == 0 || !m->tables)
        return cm_error_set(err, code, "%s: no tables", path);
    for (size_t t = 0; t < m->n_tables; t++) {
        const cm_ckpt_table *tb = &m->tables[t];
        if (tb->dim <= 0 || tb->row_floats < tb->dim)
            return cm_error_set(err, code, "%s: table %zu has rows of %d floats with dim %d",
                                path, t, tb->row_floats, tb->dim);
    }
    if (m->n_slots && !m->slot_map)
        return cm_error_set(err, code, "%s: %u slots but no slot map", path, m->n_slots);
    for (uint32_t k = 0; m->n_servers > 0 && k < m->n_slots; k++)
        if (m->slot_map[k] >= m->n_servers)
            return cm_error_set(err, code, "%s: slot %u maps to server %u of %u", path, k,
                                m->slot_map[k], m->n_servers);
    if (m->n_files && !m->files)
        return cm_error_set(err, code, "%s: %zu files but no file list", path, m->n_files);
    for (size_t f = 0; f < m->n_files; f++) {
        const cm_ckpt_file *cf = &m->files[f];
        if (!memchr(cf->name, '\0', sizeof cf->name) || !s_name_ok(cf->name))
            return cm_error_set(err, code, "%s: file %zu has the name '%.*s', not a plain file "
                                "name", path, f, (int)strnlen(cf->name, sizeof cf->name),
                                cf->name);
        if (cf->table >= m->n_tables)
            return cm_error_set(err, code, "%s: %s holds table %u of %zu", path, cf->name,
                                cf->table, m->n_tables);
        if (cf->n_slots && !cf->slots)
            return cm_error_set(err, code, "%s: %s lists %zu slots but no slot array", path,
                                cf->name, cf->n_slots);
        for (size_t k = 0; m->n_slots > 0 && k < cf->n_slots; k++)
            if (cf->slots[k] >= m->n_slots)
                return cm_error_set(err, code, "%s: %s holds slot %u of %u", path, cf->name,
                                    cf->slots[k], m->n_slots);
    }
    return 0;
}

int cm_manifest_write(const char *dir, const cm_manifest *m, cm_error *err)
{
    if (!dir || !m)
        return cm_error_set(err, CM_EINVAL, "manifest_write: NULL argument");
    char path[PATH_MAX];
    int rc = s_join(path, sizeof path, dir, S_MANIFEST, err);
    if (rc != 0)
        return rc;
    if ((rc = s_manifest_check(path, m, CM_EINVAL, err)) != 0)
        return rc;
    uint8_t *pb = NULL;
    size_t plen = 0;
    cm_atomic t = CM_ATOMIC_INIT;
    if (cm_codec_manifest_pack(m, &pb, &plen) != 0)
        return cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
    if (plen > S_MANIFEST_MAX) {
        rc = cm_error_set(err, CM_ERANGE, "%s: manifest of %zu bytes is too large", path, plen);
        goto out;
    }
    unsigned char pre[S_MANIFEST_PREAMBLE];
    memcpy(pre, CM_MANIFEST_MAGIC, 8);
    s_put_le32(pre + 8, (uint32_t)plen);
    s_put_le64(pre + 12, XXH64(pb, plen, 0));
    if ((rc = cm_atomic_open(&t, path, CM_ATOMIC_UNIQUE | CM_ATOMIC_NOTFOUND, err)) != 0)
        goto out;
    if (s_write_all(t.fd, pre, sizeof pre, NULL) != 0 ||
        s_write_all(t.fd, pb, plen, NULL) != 0) {
        rc = cm_error_set(err, CM_EIO, "%s: write failed: %s", t.tmp, strerror(errno));
        cm_atomic_abort(&t);
        goto out;
    }
    rc = cm_atomic_commit(&t, err);
out:
    free(pb);
    return rc;
}

int cm_manifest_read(const char *dir, cm_manifest *m, cm_error *err)
{
    memset(m, 0, sizeof *m);
    if (!dir)
        return cm_error_set(err, CM_EINVAL, "manifest_read: NULL directory");
    char path[PATH_MAX];
    int rc = s_join(path, sizeof path, dir, S_MANIFEST, err);
    if (rc != 0)
        return rc;
    unsigned char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cm_error_set(err, s_errno_code(errno), "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = cm_error_set(err, CM_EIO, "%s: not a regular file", path);
        goto out;
    }
    uint64_t len = (uint64_t)st.st_size;
    if (len < S_MANIFEST_PREAMBLE) {
        rc = cm_error_set(err, CM_EPARSE, "%s: file is %llu bytes, too short for a manifest "
                          "(torn write?)", path, (unsigned long long)len);
        goto out;
    }
    if (len > S_MANIFEST_PREAMBLE + (uint64_t)S_MANIFEST_MAX) {
        rc = cm_error_set(err, CM_EPARSE, "%s: file is %llu bytes, too large for a manifest",
                          path, (unsigned long long)len);
        goto out;
    }
    if ((rc = s_read_whole(fd, path, (size_t)len, (void **)&buf, err)) != 0)
        goto out;
    if (memcmp(buf, CM_MANIFEST_MAGIC, 8) != 0) {
        rc = cm_error_set(err, CM_EPARSE, "%s: not a psrec manifest (bad magic)", path);
        goto out;
    }
    uint32_t plen = s_get_le32(buf + 8);
    if ((uint64_t)plen != len - S_MANIFEST_PREAMBLE) {
        rc = cm_error_set(err, CM_EPARSE, "%s: file is %llu bytes, its header says %llu (torn "
                          "write?)", path, (unsigned long long)len,
                          (unsigned long long)plen + S_MANIFEST_PREAMBLE);
        goto out;
    }
    uint64_t want = s_get_le64(buf + 12), sum = XXH64(buf + S_MANIFEST_PREAMBLE, plen, 0);
    if (sum != want) {
        rc = cm_error_set(err, CM_ECHECKSUM, "%s: checksum mismatch (xxh64 %016llx, header "
                          "says %016llx)", path, (unsigned long long)sum,
                          (unsigned long long)want);
        goto out;
    }
    cm_error e = {0};
    if (cm_codec_manifest_unpack(buf + S_MANIFEST_PREAMBLE, plen, m, &e) != 0) {
        rc = cm_error_set(err, e.code == CM_ENOMEM ? CM_ENOMEM : CM_EPARSE, "%s: %s", path,
                          e.msg);
        goto out;
    }
    rc = s_manifest_check(path, m, CM_EPARSE, err);
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    if (rc != 0)
        cm_manifest_free(m);
    return rc;
}

/* One listed file: present, the recorded size, the recorded checksum. */
static int s_verify_file(const char *dir, const cm_ckpt_file *cf, cm_error *err)
{
    char path[PATH_MAX];
    int rc = s_join(path, sizeof path, dir, cf->name, err);
    if (rc != 0)
        return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cm_error_set(err, s_errno_code(errno), "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = cm_error_set(err, CM_EIO, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size != cf->size) {
        rc = cm_error_set(err, CM_ECHECKSUM, "%s: file is %llu bytes, manifest says %llu (torn "
                          "write?)", path, (unsigned long long)st.st_size,
                          (unsigned long long)cf->size);
        goto out;
    }
    uint64_t sum = 0;
    if ((rc = s_checksum_fd(fd, path, &sum, err)) != 0)
        goto out;
    if (sum != cf->checksum)
        rc = cm_error_set(err, CM_ECHECKSUM, "%s: checksum mismatch (xxh64 %016llx, manifest "
                          "says %016llx)", path, (unsigned long long)sum,
                          (unsigned long long)cf->checksum);
out:
    close(fd);
    return rc;
}

int cm_ckpt_verify(const char *dir, cm_error *err)
{
    cm_manifest m;
    int rc = cm_manifest_read(dir, &m, err);
    if (rc != 0)
        return rc;
    for (size_t f = 0; f < m.n_files && rc == 0; f++)
        rc = s_verify_file(dir, &m.files[f], err);
    cm_manifest_free(&m);
    return rc;
}

/* ------------------------------------------------------------------------
 * The checkpoint root
 * ------------------------------------------------------------------------ */

void cm_ckpt_dirname(uint32_t epoch, char *out, size_t n)
{
    snprintf(out, n, S_DIR_PREFIX "%06u", epoch);
}

/* mkdir that accepts an existing directory. */
static int s_mkdir1(const char *path, cm_error *err)
{
    if (mkdir(path, 0755) == 0)
        return 0;
    int e = errno;
    struct stat st;
    if (e == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    if (e == EEXIST)
        return cm_error_set(err, CM_EIO, "%s: exists and is not a directory", path);
    return cm_error_set(err, CM_EIO, "%s: cannot create: %s", path, strerror(e));
}

/* mkdir -p. */
static int s_mkdirs(const char *path, cm_error *err)
{
    char *dup = strdup(path);
    if (!dup)
        return cm_error_set(err, CM_ENOMEM, "%s: out of memory", path);
    int rc = 0;
    for (char *p = dup + 1; *p; p++) {
        if (*p != '/' || p[-1] == '/')
            continue;
        *p = '\0';
        rc = s_mkdir1(dup, err);
        *p = '/';
        if (rc != 0)
            goto out;
    }
    rc = s_mkdir1(dup, err);
out:
    free(dup);
    return rc;
}

int cm_ckpt_mkdir(const char *root, const char *name, char *path, size_t n, cm_error *err)
{
    if (!root || !root[0] || !name || !s_name_ok(name))
        return cm_error_set(err, CM_EINVAL, "ckpt_mkdir: need a root and a plain directory "
                            "name, got '%s' and '%s'", root ? root : "", name ? name : "");
    int rc = s_join(path, n, root, name, err);
    if (rc != 0)
        return rc;
    if ((rc = s_mkdirs(root, err)) != 0 || (rc = s_mkdir1(path, err)) != 0)
        return rc;
    s_fsync_dir(root);
    return 0;
}

/* A checkpoint directory's epoch: "ckpt-" and decimal digits only. */
static int s_parse_dirname(const char *name, uint32_t *epoch)
{
    size_t pl = strlen(S_DIR_PREFIX);
    if (strncmp(name, S_DIR_PREFIX, pl) != 0 || !name[pl])
        return 0;
    uint64_t v = 0;
    for (const char *p = name + pl; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX)
            return 0;
    }
    *epoch = (uint32_t)v;
    return 1;
}

typedef struct {
    uint32_t epoch;
    char name[CM_CKPT_NAME_MAX];
} s_entry;

static int s_entry_cmp(const void *a, const void *b)
{
    const s_entry *x = a, *y = b;
    if (x->epoch != y->epoch)
        return x->epoch < y->epoch ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The checkpoint directories under root, oldest first. */
static int s_list(const char *root, s_entry **out, size_t *count, cm_error *err)
{
    *out = NULL;
    *count = 0;
    DIR *d = opendir(root);
    if (!d)
        return cm_error_set(err, s_errno_code(errno), "%s: %s", root, strerror(errno));
    s_entry *v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint32_t epoch;
        if (!s_parse_dirname(de->d_name, &epoch) || strlen(de->d_name) >= CM_CKPT_NAME_MAX)
            continue;
        char path[PATH_MAX];
        struct stat st;
        if (s_join(path, sizeof path, root, de->d_name, NULL) != 0 || stat(path, &st) != 0 ||
            !S_ISDIR(st.st_mode))
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            s_entry *nv = realloc(v, nc * sizeof *nv);
            if (!nv) {
                rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory listing checkpoints", root);
                goto out;
            }
            v = nv;
            cap = nc;
        }
        v[n].epoch = epoch;
        snprintf(v[n].name, sizeof v[n].name, "%s", de->d_name);
        n++;
    }
    if (n)
        qsort(v, n, sizeof *v, s_entry_cmp);
out:
    closedir(d);
    if (rc != 0) {
        free(v);
        return rc;
    }
    *out = v;
    *count = n;
    return 0;
}

/* Whether name is one of our temporary names, "*.tmp.<pid>.<counter>". */
static int s_is_tmp_name(const char *name)
{
    const char *p = strstr(name, ".tmp.");
    if (!p || p == name)
        return 0;
    p += 5;
    for (int part = 0; part < 2; part++) {
        if (*p < '0' || *p > '9')
            return 0;
        while (*p >= '0' && *p <= '9')
            p++;
        if (part == 0 && *p++ != '.')
            return 0;
    }
    return *p == '\0';
}

/* Regular files in dir with temporary names: debris of a writer that died
 * before its rename. */
static void s_remove_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!s_is_tmp_name(de->d_name))
            continue;
        char path[PATH_MAX];
        struct stat st;
        if (s_join(path, sizeof path, dir, de->d_name, NULL) != 0 || lstat(path, &st) != 0 ||
            !S_ISREG(st.st_mode))
            continue;
        if (unlink(path) != 0)
            cm_log(CM_LOG_WARN, "%s: cannot remove stale temporary file: %s", path,
                   strerror(errno));
    }
    closedir(d);
}

/* Removes a checkpoint directory: the plain files in it, then it. Nothing
 * is followed into subdirectories; one left behind makes rmdir fail, which
 * is logged. */
static void s_remove_ckpt(const char *root, const char *name)
{
    char dir[PATH_MAX];
    struct stat lst;
    if (s_join(dir, sizeof dir, root, name, NULL) != 0 || lstat(dir, &lst) != 0)
        return;
    if (!S_ISDIR(lst.st_mode)) {
        cm_log(CM_LOG_WARN, "%s: not pruned: not a plain directory", dir);
        return;
    }
    DIR *d = opendir(dir);
    if (!d) {
        cm_log(CM_LOG_WARN, "%s: cannot prune: %s", dir, strerror(errno));
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char path[PATH_MAX];
        struct stat st;
        if (s_join(path, sizeof path, dir, de->d_name, NULL) != 0 || lstat(path, &st) != 0 ||
            S_ISDIR(st.st_mode))
            continue;
        if (unlink(path) != 0)
            cm_log(CM_LOG_WARN, "%s: cannot remove: %s", path, strerror(errno));
    }
    closedir(d);
    if (rmdir(dir) != 0)
        cm_log(CM_LOG_WARN, "%s: cannot remove: %s", dir, strerror(errno));
    else
        cm_log(CM_LOG_DEBUG, "%s: pruned", dir);
}

/* Whether dir/MANIFEST exists (a finished checkpoint, not a verified one). */
static int s_has_manifest(const char *root, const char *name)
{
    char path[PATH_MAX];
    struct stat st;
    return snprintf(path, sizeof path, "%s/%s/%s", root, name, S_MANIFEST) < (int)sizeof path &&
           stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Keeps the newest `keep` finished checkpoints (the published one always
 * among them) and removes unfinished ones older than the published one:
 * their writer is gone, since a checkpoint is published only after all of
 * its files are in place. */
static int s_read_pointer(const char *root, const char *file, char *name, size_t n,
                          cm_error *err);

static int s_prune(const char *root, const char *name, int keep, cm_error *err)
{
    s_entry *v = NULL;
    size_t n = 0;
    int rc = s_list(root, &v, &n, err);
    if (rc != 0)
        return rc;
    uint32_t pub_epoch = 0;
    int pub_is_ckpt = s_parse_dirname(name, &pub_epoch);
    size_t finished = 0;
    unsigned char *done = calloc(n ? n : 1, 1);
    if (!done) {
        free(v);
        return cm_error_set(err, CM_ENOMEM, "%s: out of memory", root);
    }
    /* the chosen epoch's checkpoint (BEST) is kept beside the newest `keep` */
    char best[CM_CKPT_NAME_MAX] = "";
    if (s_read_pointer(root, S_BEST, best, sizeof best, NULL) != 0)
        best[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        done[i] = (unsigned char)s_has_manifest(root, v[i].name);
        finished += done[i] && strcmp(v[i].name, best) != 0;
    }
    size_t excess = keep > 0 && finished > (size_t)keep ? finished - (size_t)keep : 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].name, name) == 0 || strcmp(v[i].name, best) == 0)
            continue;
        if (done[i] && excess > 0) {
            s_remove_ckpt(root, v[i].name);
            excess--;
        } else if (!done[i] && keep > 0 && pub_is_ckpt && v[i].epoch < pub_epoch)
            s_remove_ckpt(root, v[i].name);
    }
    free(done);
    free(v);
    return 0;
}

/* Points root/file at checkpoint `name` (temporary file, fsync, rename). */
static int s_write_pointer(const char *root, const char *file, const char *name,
                           cm_error *err)
{
    if (!root || !root[0] || !name || !s_name_ok(name) || strlen(name) >= CM_CKPT_NAME_MAX)
        return cm_error_set(err, CM_EINVAL, "ckpt_publish: need a root and a plain directory "
                            "name, got '%s' and '%s'", root ? root : "", name ? name : "");
    if (!s_has_manifest(root, name))
        return cm_error_set(err, CM_ESTATE, "%s/%s: no MANIFEST; write it before publishing",
                            root, name);
    char path[PATH_MAX];
    int rc = s_join(path, sizeof path, root, file, err);
    if (rc != 0)
        return rc;
    cm_atomic t = CM_ATOMIC_INIT;
    if ((rc = cm_atomic_open(&t, path, CM_ATOMIC_UNIQUE | CM_ATOMIC_NOTFOUND, err)) != 0)
        return rc;
    if (s_write_all(t.fd, name, strlen(name), NULL) != 0 || s_write_all(t.fd, "\n", 1, NULL) != 0) {
        rc = cm_error_set(err, CM_EIO, "%s: write failed: %s", t.tmp, strerror(errno));
        cm_atomic_abort(&t);
        return rc;
    }
    return cm_atomic_commit(&t, err);
}

int cm_ckpt_publish_best(const char *root, const char *name, cm_error *err)
{
    return s_write_pointer(root, S_BEST, name, err);
}

int cm_ckpt_forget_best(const char *root, cm_error *err)
{
    char path[PATH_MAX];
    int rc = s_join(path, sizeof path, root, S_BEST, err);
    if (rc != 0)
        return rc;
    if (unlink(path) != 0 && errno != ENOENT)
        return cm_error_set(err, CM_EIO, "%s: cannot remove: %s", path, strerror(errno));
    return 0;
}

int cm_ckpt_publish(const char *root, const char *name, int keep, cm_error *err)
{
    int rc = s_write_pointer(root, S_LATEST, name, err);
    if (rc != 0)
        return rc;
    /* LATEST is durable; what follows is housekeeping and cannot undo it */
    s_remove_tmp(root);
    char dir[PATH_MAX];
    if (s_join(dir, sizeof dir, root, name, NULL) == 0)
        s_remove_tmp(dir);
    cm_error e = {0};
    if (s_prune(root, name, keep, &e) != 0)
        cm_log(CM_LOG_WARN, "%s: pruning old checkpoints failed: %s", root, e.msg);
    return 0;
}

/* Reads root/file (LATEST, BEST) into name. 0, CM_ENOTFOUND when absent,
 * or another error (with its reason in err) when it is unreadable or
 * malformed. */
static int s_read_pointer(const char *root, const char *file, char *name, size_t n,
                          cm_error *err)
{
    char path[PATH_MAX];
    int rc = s_join(path, sizeof path, root, file, err);
    if (rc != 0)
        return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cm_error_set(err, s_errno_code(errno), "%s: %s", path, strerror(errno));
    char buf[CM_CKPT_NAME_MAX + 2];
    size_t got = 0;
    for (;;) {
        ssize_t k = read(fd, buf + got, sizeof buf - 1 - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            close(fd);
            return cm_error_set(err, CM_EIO, "%s: %s", path, strerror(e));
        }
        if (k == 0 || (got += (size_t)k) == sizeof buf - 1)
            break;
    }
    close(fd);
    buf[got] = '\0';
    while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\r' || buf[got - 1] == ' '))
        buf[--got] = '\0';
    if (got == 0 || strlen(buf) != got || got >= n || got >= CM_CKPT_NAME_MAX || !s_name_ok(buf))
        return cm_error_set(err, CM_EPARSE, "%s: does not name a checkpoint directory", path);
    memcpy(name, buf, got + 1);
    return 0;
}

static int s_copy_out(char *out, size_t n, const char *dir, cm_error *err)
{
    size_t l = strlen(dir);
    if (l >= n)
        return cm_error_set(err, CM_ERANGE, "%s: path too long", dir);
    memcpy(out, dir, l + 1);
    return 0;
}

/* An explicit directory: as given, or under root when only a name. */
static int s_resolve_dir(const char *root, const char *spec, char *out, size_t n,
                         cm_error *err)
{
    char dir[PATH_MAX];
    struct stat st;
    int rc;
    if (stat(spec, &st) != 0 && root && root[0] && s_name_ok(spec) &&
        s_join(dir, sizeof dir, root, spec, NULL) == 0 && stat(dir, &st) == 0)
        spec = dir;
    if ((rc = cm_ckpt_verify(spec, err)) != 0) {
        cm_error_prefix(err, "resume from %s: checkpoint is not intact", spec);
        return rc;
    }
    return s_copy_out(out, n, spec, err);
}

int cm_ckpt_any(const char *root, cm_error *err)
{
    if (!root || !root[0])
        return 0;
    char path[PATH_MAX];
    struct stat st;
    if (s_join(path, sizeof path, root, S_LATEST, err) != 0)
        return err ? err->code : CM_ERANGE;
    if (lstat(path, &st) == 0)
        return 1;
    s_entry *v = NULL;
    size_t count = 0;
    cm_error e = {0};
    int rc = s_list(root, &v, &count, &e);
    if (rc == CM_ENOTFOUND)
        return 0;
    if (rc != 0)
        return cm_error_set(err, rc, "%s", e.msg);
    int any = 0;
    for (size_t i = 0; i < count && !any; i++) {
        char mf[PATH_MAX];
        if (snprintf(mf, sizeof mf, "%s/%s/" S_MANIFEST, root, v[i].name) < (int)sizeof mf &&
            lstat(mf, &st) == 0)
            any = 1;
    }
    free(v);
    return any;
}

int cm_ckpt_resolve(const char *root, const char *spec, char *out, size_t n, cm_error *err)
{
    if (!spec || !spec[0] || !out || n == 0)
        return cm_error_set(err, CM_EINVAL, "ckpt_resolve: need a checkpoint directory or "
                            "'auto'");
    if (strcmp(spec, "auto") != 0 && strcmp(spec, "best") != 0)
        return s_resolve_dir(root, spec, out, n, err);
    if (!root || !root[0])
        return cm_error_set(err, CM_EINVAL, "resume = auto needs a checkpoint root");
    if (strcmp(spec, "best") == 0) {
        /* the chosen epoch's checkpoint when it is intact, else as auto */
        char best[CM_CKPT_NAME_MAX], bdir[PATH_MAX];
        cm_error be = {0};
        int brc = s_read_pointer(root, S_BEST, best, sizeof best, &be);
        if (brc == 0 && s_join(bdir, sizeof bdir, root, best, &be) == 0 &&
            cm_ckpt_verify(bdir, &be) == 0)
            return s_copy_out(out, n, bdir, err);
        if (brc != CM_ENOTFOUND)
            cm_log(CM_LOG_WARN, "%s/" S_BEST ": ignored: %s", root, be.msg);
    }

    s_entry *v = NULL;
    size_t count = 0, refused = 0;
    char latest[CM_CKPT_NAME_MAX] = "";
    char dir[PATH_MAX];
    cm_error e = {0};
    int rc = s_list(root, &v, &count, &e);
    if (rc == CM_ENOTFOUND)
        return cm_error_set(err, CM_ENOTFOUND, "resume = auto: no checkpoint under %s: %s",
                            root, e.msg);
    if (rc != 0)
        return cm_error_set(err, rc, "resume = auto: %s", e.msg);

    /* LATEST first: it may name a directory outside the ckpt-N pattern */
    int lrc = s_read_pointer(root, S_LATEST, latest, sizeof latest, &e);
    if (lrc == 0) {
        if (s_join(dir, sizeof dir, root, latest, &e) == 0 && cm_ckpt_verify(dir, &e) == 0) {
            rc = s_copy_out(out, n, dir, err);
            goto out;
        }
        cm_log(CM_LOG_WARN, "%s: skipped: %s", dir, e.msg);
        refused++;
    } else if (lrc != CM_ENOTFOUND)
        cm_log(CM_LOG_WARN, "%s/" S_LATEST ": ignored: %s", root, e.msg);

    for (size_t i = count; i-- > 0;) {
        if (lrc == 0 && strcmp(v[i].name, latest) == 0)
            continue;
        if (s_join(dir, sizeof dir, root, v[i].name, &e) == 0 && cm_ckpt_verify(dir, &e) == 0) {
            rc = s_copy_out(out, n, dir, err);
            goto out;
        }
        cm_log(CM_LOG_WARN, "%s: skipped: %s", dir, e.msg);
        refused++;
    }
    if (refused == 0)
        rc = cm_error_set(err, CM_ENOTFOUND, "resume = auto: no checkpoint under %s", root);
    else
        rc = cm_error_set(err, CM_ENOTFOUND, "resume = auto: none of the %zu checkpoint%s under "
                          "%s is intact (reasons logged above)", refused,
                          refused == 1 ? "" : "s", root);
out:
    free(v);
    return rc;
}

/* ------------------------------------------------------------------------
 * On a cluster: one filesystem for every writer, and files checked before
 * they are published (docs/checkpoints.md, "On a cluster")
 * ------------------------------------------------------------------------ */

int cm_ckpt_check_files(const char *dir, const cm_ckpt_file *files, size_t n, cm_error *err)
{
    for (size_t f = 0; f < n; f++) {
        if (!s_name_ok(files[f].name))
            return cm_error_set(err, CM_EINVAL, "%s: bad file name '%.64s'", dir,
                                files[f].name);
        int rc = s_verify_file(dir, &files[f], err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

#define S_TOKEN_PREFIX ".psrec-token-"
#define S_TOKEN_MAX 512

static int s_token_path(const char *root, int writer, char *out, size_t n, cm_error *err)
{
    int k = snprintf(out, n, "%s/" S_TOKEN_PREFIX "%d", root, writer);
    if (k < 0 || (size_t)k >= n)
        return cm_error_set(err, CM_ERANGE, "%s: path too long", root);
    return 0;
}

int cm_ckpt_token_write(const char *root, int writer, const char *token, cm_error *err)
{
    char path[PATH_MAX];
    size_t len = strlen(token);
    if (len == 0 || len >= S_TOKEN_MAX || strchr(token, '\n'))
        return cm_error_set(err, CM_EINVAL, "checkpoint token: %zu bytes or a newline", len);
    int rc = s_mkdirs(root, err);
    if (rc == 0)
        rc = s_token_path(root, writer, path, sizeof path, err);
    if (rc != 0)
        return rc;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return cm_error_set(err, CM_EIO, "%s: cannot write: %s", path, strerror(errno));
    /* durable and whole before the scheduler looks (after the bootstrap's
     * allgather, which every writer reaches only after this) */
    if (s_write_all(fd, token, len, NULL) != 0 || s_write_all(fd, "\n", 1, NULL) != 0 ||
        fsync(fd) != 0) {
        rc = cm_error_set(err, CM_EIO, "%s: cannot write: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return rc;
    }
    if (close(fd) != 0)
        return cm_error_set(err, CM_EIO, "%s: cannot write: %s", path, strerror(errno));
    s_fsync_dir(root);
    return 0;
}

/* The token in writer's file: 0, or CM_ENOTFOUND / CM_EIO. */
static int s_token_read(const char *root, int writer, char *got, size_t n, cm_error *err)
{
    char path[PATH_MAX];
    int rc = s_token_path(root, writer, path, sizeof path, err);
    if (rc != 0)
        return rc;
    FILE *f = fopen(path, "r");
    if (!f)
        return cm_error_set(err, s_errno_code(errno), "%s: %s", path, strerror(errno));
    if (!fgets(got, (int)n, f))
        got[0] = '\0';
    fclose(f);
    got[strcspn(got, "\n")] = '\0';
    return 0;
}

int cm_ckpt_token_check(const char *root, int writer, const char *token, cm_error *err)
{
    char got[S_TOKEN_MAX + 2];
    int rc = s_token_read(root, writer, got, sizeof got, err);
    if (rc != 0)
        return rc;
    if (strcmp(got, token) != 0)
        return cm_error_set(err, CM_ESTATE, "%s/" S_TOKEN_PREFIX "%d holds '%.80s', not "
                                            "'%.80s' (another job writing there?)",
                            root, writer, got, token);
    return 0;
}

void cm_ckpt_token_remove(const char *root, int writer, const char *token)
{
    char got[S_TOKEN_MAX + 2], path[PATH_MAX];
    if (s_token_read(root, writer, got, sizeof got, NULL) != 0 || strcmp(got, token) != 0 ||
        s_token_path(root, writer, path, sizeof path, NULL) != 0)
        return;
    unlink(path);
}
