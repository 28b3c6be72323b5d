/* psm_write: the writer half of the .psm format (docs/psm.md); the layout
 * constants and the checksum come from the standalone reader's header so
 * the two cannot drift apart. */
#include "serve/psm_write.h"

#include <string.h>

#include "common/wfile.h"
#include "serve/psm.h"

/* Streams bytes to the file while hashing them in 8-byte words (sections
 * need not end on a word boundary, so a partial word is carried). */
typedef struct {
    cm_wfile *w;
    uint64_t h;
    unsigned char carry[8];
    size_t n_carry;
} s_out;

static int s_emit(s_out *o, const void *data, size_t n, cm_error *err)
{
    if (n == 0)
        return 0;
    const unsigned char *p = data;
    size_t left = n;
    if (o->n_carry) {
        size_t take = 8 - o->n_carry < left ? 8 - o->n_carry : left;
        memcpy(o->carry + o->n_carry, p, take);
        o->n_carry += take;
        p += take;
        left -= take;
        if (o->n_carry == 8) {
            o->h = psm_checksum_update(o->h, o->carry, 8);
            o->n_carry = 0;
        }
    }
    size_t whole = left & ~(size_t)7;
    o->h = psm_checksum_update(o->h, p, whole);
    memcpy(o->carry, p + whole, left - whole);
    o->n_carry += left - whole;
    return cm_wfile_write(o->w, data, n, err);
}

static int s_emit_pad(s_out *o, uint64_t to, cm_error *err)
{
    static const unsigned char zeros[PSM_ALIGN];
    uint64_t at = cm_wfile_tell(o->w);
    int rc = 0;
    while (rc == 0 && at < to) {
        size_t take = to - at < sizeof zeros ? (size_t)(to - at) : sizeof zeros;
        rc = s_emit(o, zeros, take, err);
        at += take;
    }
    return rc;
}

static uint64_t s_align(uint64_t x) { return (x + PSM_ALIGN - 1) / PSM_ALIGN * PSM_ALIGN; }

static void s_put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void s_put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static int s_check(const char *path, const sv_psm_model *m, cm_error *err)
{
    const uint32_t one = 1;
    unsigned char le;
    memcpy(&le, &one, 1);
    if (le != 1)
        return cm_error_set(err, CM_EINVAL, "%s: psm files are written on little-endian "
                                            "hosts only", path);
    if (m->n_tables > PSM_MAX_TABLES)
        return cm_error_set(err, CM_EINVAL, "%s: %zu tables (at most %u)", path, m->n_tables,
                            PSM_MAX_TABLES);
    for (size_t t = 0; t < m->n_tables; t++) {
        const sv_psm_table *tb = &m->tables[t];
        size_t len = tb->name ? strlen(tb->name) : 0;
        if (len == 0 || len >= PSM_NAME_MAX)
            return cm_error_set(err, CM_EINVAL, "%s: table %zu: name must be 1..%u bytes",
                                path, t, PSM_NAME_MAX - 1);
        for (size_t u = 0; u < t; u++)
            if (strcmp(m->tables[u].name, tb->name) == 0)
                return cm_error_set(err, CM_EINVAL, "%s: table '%s' given twice", path,
                                    tb->name);
        if (tb->dim < 1 || (unsigned)tb->dim > PSM_MAX_DIM)
            return cm_error_set(err, CM_EINVAL, "%s: table '%s': dim %d out of range 1..%u",
                                path, tb->name, tb->dim, PSM_MAX_DIM);
        if (tb->n_rows && (!tb->ids || !tb->rows))
            return cm_error_set(err, CM_EINVAL, "%s: table '%s': no data", path, tb->name);
        for (size_t i = 1; i < tb->n_rows; i++)
            if (tb->ids[i] <= tb->ids[i - 1])
                return cm_error_set(err, CM_EINVAL,
                                    "%s: table '%s': ids not strictly ascending at row %zu",
                                    path, tb->name, i);
    }
    return 0;
}

int sv_psm_write(const char *path, const sv_psm_model *m, cm_error *err)
{
    int rc = s_check(path, m, err);
    if (rc != 0)
        return rc;
    const char *model = m->model ? m->model : "";
    const char *formula = m->formula ? m->formula : "";
    const size_t ml = strlen(model) + 1, fl = strlen(formula) + 1;
    const uint64_t strings_size = (ml + fl + 7) / 8 * 8;
    if (strings_size > PSM_MAX_STRINGS)
        return cm_error_set(err, CM_EINVAL, "%s: model name and formula too long", path);
    const uint64_t dir_offset = PSM_HEADER_SIZE + strings_size;
    const uint64_t dir_end = dir_offset + (uint64_t)m->n_tables * PSM_DIR_ENTRY_SIZE;

    /* Layout: each table's ids then its rows, each section 64-aligned. */
    uint64_t pos = dir_end;
    uint64_t ids_off[PSM_MAX_TABLES], rows_off[PSM_MAX_TABLES];
    for (size_t t = 0; t < m->n_tables; t++) {
        ids_off[t] = s_align(pos);
        pos = ids_off[t] + (uint64_t)m->tables[t].n_rows * 8;
        rows_off[t] = s_align(pos);
        pos = rows_off[t] + (uint64_t)m->tables[t].n_rows * (uint64_t)m->tables[t].dim * 4;
    }
    const uint64_t file_size = s_align(pos);

    unsigned char hdr[PSM_HEADER_SIZE] = {0};
    memcpy(hdr, PSM_MAGIC, 8);
    s_put32(hdr + 8, PSM_VERSION);
    s_put32(hdr + 12, (uint32_t)m->n_tables);
    s_put64(hdr + 16, file_size);
    uint64_t gm;
    memcpy(&gm, &m->global_mean, 8);
    s_put64(hdr + 24, gm);
    uint32_t lo, hi;
    memcpy(&lo, &m->clip_lo, 4);
    memcpy(&hi, &m->clip_hi, 4);
    s_put32(hdr + 32, lo);
    s_put32(hdr + 36, hi);
    s_put32(hdr + 40, (uint32_t)strings_size);
    s_put64(hdr + 48, dir_offset);

    s_out o = {.w = cm_wfile_open(path, err), .h = PSM_CHECKSUM_SEED};
    if (!o.w)
        return err ? err->code : CM_EIO;
    /* the header is hashed up to the checksum word, which is written last */
    o.h = psm_checksum_update(o.h, hdr, PSM_CHECKSUM_OFFSET);
    rc = cm_wfile_write(o.w, hdr, sizeof hdr, err);
    if (rc == 0)
        rc = s_emit(&o, model, ml, err);
    if (rc == 0)
        rc = s_emit(&o, formula, fl, err);
    if (rc == 0)
        rc = s_emit_pad(&o, dir_offset, err);
    for (size_t t = 0; rc == 0 && t < m->n_tables; t++) {
        unsigned char e[PSM_DIR_ENTRY_SIZE] = {0};
        memcpy(e, m->tables[t].name, strlen(m->tables[t].name));
        s_put32(e + 64, (uint32_t)m->tables[t].dim);
        s_put64(e + 72, m->tables[t].n_rows);
        s_put64(e + 80, ids_off[t]);
        s_put64(e + 88, rows_off[t]);
        rc = s_emit(&o, e, sizeof e, err);
    }
    for (size_t t = 0; rc == 0 && t < m->n_tables; t++) {
        const sv_psm_table *tb = &m->tables[t];
        rc = s_emit_pad(&o, ids_off[t], err);
        if (rc == 0)
            rc = s_emit(&o, tb->ids, tb->n_rows * 8, err);
        if (rc == 0)
            rc = s_emit_pad(&o, rows_off[t], err);
        if (rc == 0)
            rc = s_emit(&o, tb->rows, tb->n_rows * (size_t)tb->dim * 4, err);
    }
    if (rc == 0)
        rc = s_emit_pad(&o, file_size, err);
    if (rc == 0) {
        unsigned char sum[8];
        s_put64(sum, o.h);
        rc = cm_wfile_pwrite(o.w, PSM_CHECKSUM_OFFSET, sum, 8, err);
    }
    if (rc != 0) {
        cm_wfile_abort(&o.w);
        return rc;
    }
    return cm_wfile_commit(o.w, err);
}
