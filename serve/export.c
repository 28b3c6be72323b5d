#define _GNU_SOURCE
#include "serve/export.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/ckpt.h"
#include "common/config.h"
#include "common/log.h"
#include "common/wfile.h"
#include "serve/psm_write.h"

#define S_PATH_MAX 4096

static const char s_mf_formula[] =
    "score(u,i) = global_mean + user[u][0] + item[i][0] + dot(user[u][1:], item[i][1:])";

static const char s_implicit_formula[] =
    "score(u,i) = item[i][0] + dot(user[u][1:], item[i][1:])  (a ranking score; user[u][0] "
    "is 0)";

const char *sv_export_formula(const char *model)
{
    const cm_model *m = cm_model_of(model);
    if (m && m->family == CM_FAMILY_RATINGS)
        return s_mf_formula;
    return m && m->family == CM_FAMILY_IMPLICIT ? s_implicit_formula : "";
}

int sv_export_parse_formats(const char *s, unsigned *out, cm_error *err)
{
    unsigned f = 0;
    const char *p = s;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && (*p == ' ')) {
            p++;
            n--;
        }
        while (n && p[n - 1] == ' ')
            n--;
        if (n == 3 && strncmp(p, "npy", 3) == 0)
            f |= SV_FMT_NPY;
        else if (n == 5 && strncmp(p, "fvecs", 5) == 0)
            f |= SV_FMT_FVECS;
        else if (n == 3 && strncmp(p, "psm", 3) == 0)
            f |= SV_FMT_PSM;
        else if (n == 3 && strncmp(p, "all", 3) == 0)
            f |= SV_FMT_ALL;
        else
            return cm_error_set(err, CM_EINVAL,
                                "--format: unknown format '%.*s' (npy, fvecs, psm or all)",
                                (int)n, p);
        if (!e)
            break;
        p = e + 1;
    }
    if (!f)
        return cm_error_set(err, CM_EINVAL, "--format: no format given (npy, fvecs, psm)");
    *out = f;
    return 0;
}

void sv_export_model_free(sv_export_model *m)
{
    if (!m)
        return;
    for (size_t t = 0; t < m->n_tables; t++) {
        free(m->tables[t].ids);
        free(m->tables[t].rows);
    }
    free(m->tables);
    memset(m, 0, sizeof *m);
}

/* ----------------------------------------------------------- loading -- */

/* Shard heads in a min-heap by current key, for the k-way merge. */
typedef struct {
    const cm_shard *sh;
    size_t pos;
    size_t file;   /* index into the manifest's files, for messages */
} s_head;

static int s_head_less(const s_head *a, const s_head *b)
{
    return a->sh->keys[a->pos] < b->sh->keys[b->pos];
}

static void s_heap_down(s_head *h, size_t n, size_t at)
{
    for (;;) {
        size_t l = 2 * at + 1, r = l + 1, m = at;
        if (l < n && s_head_less(&h[l], &h[m]))
            m = l;
        if (r < n && s_head_less(&h[r], &h[m]))
            m = r;
        if (m == at)
            return;
        s_head t = h[at];
        h[at] = h[m];
        h[m] = t;
        at = m;
    }
}

/* Loads and merges the shards of table t into *tb. */
static int s_load_table(const char *dir, const cm_manifest *man, uint32_t t, sv_table *tb,
                        cm_error *err)
{
    const cm_ckpt_table *ct = &man->tables[t];
    int rc = 0;
    size_t n_sh = 0, total = 0, n_heads = 0;
    cm_shard *sh = calloc(man->n_files ? man->n_files : 1, sizeof *sh);
    s_head *heap = calloc(man->n_files ? man->n_files : 1, sizeof *heap);
    if (!sh || !heap) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory", dir);
        goto out;
    }
    snprintf(tb->name, sizeof tb->name, "%s", ct->name);
    tb->dim = ct->dim;
    if (ct->dim < 1 || ct->row_floats < ct->dim) {
        rc = cm_error_set(err, CM_EPARSE, "%s/MANIFEST: table '%s': dim %d, row_floats %d",
                          dir, ct->name, ct->dim, ct->row_floats);
        goto out;
    }
    for (size_t f = 0; f < man->n_files; f++) {
        const cm_ckpt_file *cf = &man->files[f];
        if (cf->table != t)
            continue;
        char path[S_PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, cf->name) >= (int)sizeof path) {
            rc = cm_error_set(err, CM_EINVAL, "%s: path too long", dir);
            goto out;
        }
        rc = cm_shard_read(path, cf->size, cf->checksum, &sh[n_sh], err);
        if (rc != 0)
            goto out;
        const cm_shard *s = &sh[n_sh++];
        if (s->table != t || s->dim != ct->dim || s->row_floats != ct->row_floats ||
            (cf->rows && cf->rows != s->n)) {
            rc = cm_error_set(err, CM_EPARSE,
                              "%s: holds table %u, dim %d, %d floats a row, %zu rows; the "
                              "manifest says table %u, dim %d, %d, %llu rows",
                              path, s->table, s->dim, s->row_floats, s->n, t, ct->dim,
                              ct->row_floats, (unsigned long long)cf->rows);
            goto out;
        }
        total += s->n;
        if (s->n)
            heap[n_heads++] = (s_head){s, 0, f};
    }
    tb->ids = aligned_alloc(64, (total * sizeof(uint64_t) + 63) / 64 * 64 + 64);
    tb->rows = aligned_alloc(64, (total * (size_t)ct->dim * sizeof(float) + 63) / 64 * 64 + 64);
    if (!tb->ids || !tb->rows) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: table '%s': out of memory for %zu rows", dir,
                          ct->name, total);
        goto out;
    }
    for (size_t i = n_heads; i-- > 0;)
        s_heap_down(heap, n_heads, i);
    size_t n = 0, last_file = 0;
    while (n_heads) {
        s_head *h = &heap[0];
        uint64_t key = h->sh->keys[h->pos];
        if (n > 0 && key == tb->ids[n - 1]) {
            rc = cm_error_set(err, CM_EPARSE, "%s: table '%s': id %llu is in both %s and %s",
                              dir, ct->name, (unsigned long long)key,
                              man->files[last_file].name, man->files[h->file].name);
            goto out;
        }
        tb->ids[n] = key;
        const float *src = h->sh->rows + h->pos * (size_t)h->sh->row_floats;
        /* a diverged model (a checkpoint of an older psrec, which wrote
         * them) must not reach a serving tier, where it ranks nothing */
        for (int j = 0; j < ct->dim; j++)
            if (!isfinite(src[j])) {
                rc = cm_error_set(err, CM_ERANGE, "%s/%s: table '%s' key %llu: weight %d is %s "
                                  "(the model diverged); refusing to export it", dir,
                                  man->files[h->file].name, ct->name,
                                  (unsigned long long)key, j, isnan(src[j]) ? "nan" : "infinite");
                goto out;
            }
        memcpy(tb->rows + n * (size_t)ct->dim, src, (size_t)ct->dim * sizeof(float));
        n++;
        last_file = h->file;
        if (++h->pos == h->sh->n)
            heap[0] = heap[--n_heads];
        s_heap_down(heap, n_heads, 0);
    }
    tb->n = n;
out:
    for (size_t i = 0; i < n_sh; i++)
        cm_shard_free(&sh[i]);
    free(sh);
    free(heap);
    return rc;
}

int sv_export_load(const char *ckpt, sv_export_model *out, cm_error *err)
{
    memset(out, 0, sizeof *out);
    char dir[S_PATH_MAX], probe[S_PATH_MAX];
    struct stat st;
    snprintf(probe, sizeof probe, "%s/MANIFEST", ckpt);
    if (stat(probe, &st) == 0) {
        snprintf(dir, sizeof dir, "%s", ckpt);
    } else {
        /* a checkpoint root: the epoch chosen on validation (BEST) first */
        int rc = cm_ckpt_resolve(ckpt, "best", dir, sizeof dir, err);
        if (rc != 0)
            return rc;
    }
    cm_manifest man;
    memset(&man, 0, sizeof man);
    int rc = cm_manifest_read(dir, &man, err);
    if (rc != 0)
        goto out;
    snprintf(out->model, sizeof out->model, "%s", man.model);
    out->global_mean = man.global_mean;
    out->clip_lo = man.clip_lo;
    out->clip_hi = man.clip_hi;
    out->tables = calloc(man.n_tables ? man.n_tables : 1, sizeof *out->tables);
    if (!out->tables) {
        rc = cm_error_set(err, CM_ENOMEM, "%s: out of memory", dir);
        goto out;
    }
    for (size_t t = 0; t < man.n_tables; t++) {
        out->n_tables = t + 1;
        rc = s_load_table(dir, &man, (uint32_t)t, &out->tables[t], err);
        if (rc != 0)
            goto out;
    }
    cm_log(CM_LOG_INFO, "export: read %s: model %s, %zu tables", dir, out->model,
           out->n_tables);
out:
    cm_manifest_free(&man);
    if (rc != 0)
        sv_export_model_free(out);
    return rc;
}

/* ----------------------------------------------------------- writing -- */

static int s_mkdirs(const char *dir, cm_error *err)
{
    char p[S_PATH_MAX];
    snprintf(p, sizeof p, "%s", dir);
    for (char *c = p + 1;; c++) {
        if (*c == '/' || *c == '\0') {
            char save = *c;
            *c = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST)
                return cm_error_set(err, CM_EIO, "%s: cannot create: %s", p, strerror(errno));
            *c = save;
            if (save == '\0')
                break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return cm_error_set(err, CM_EIO, "%s: not a directory", dir);
    return 0;
}

/* A .npy file: version 1.0 header padded so the data starts on 64 bytes. */
static int s_write_npy(const char *path, const char *descr, size_t rows, int cols,
                       const void *data, size_t elem, cm_error *err)
{
    char dict[256];
    int dl;
    if (cols < 0)
        dl = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, "
                                         "'shape': (%zu,), }",
                      descr, rows);
    else
        dl = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, "
                                         "'shape': (%zu, %d), }",
                      descr, rows, cols);
    size_t total = 10 + (size_t)dl + 1;   /* magic, version, length, dict, '\n' */
    size_t padded = (total + 63) / 64 * 64;
    size_t hlen = padded - 10;
    unsigned char head[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                              (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
    cm_wfile *w = cm_wfile_open(path, err);
    if (!w)
        return err ? err->code : CM_EIO;
    int rc = cm_wfile_write(w, head, sizeof head, err);
    if (rc == 0)
        rc = cm_wfile_write(w, dict, (size_t)dl, err);
    for (size_t i = 10 + (size_t)dl; rc == 0 && i + 1 < padded; i++)
        rc = cm_wfile_write(w, " ", 1, err);
    if (rc == 0)
        rc = cm_wfile_write(w, "\n", 1, err);
    size_t cells = rows * (size_t)(cols < 0 ? 1 : cols);
    if (rc == 0 && cells)
        rc = cm_wfile_write(w, data, cells * elem, err);
    if (rc != 0) {
        cm_wfile_abort(&w);
        return rc;
    }
    return cm_wfile_commit(w, err);
}

static int s_write_fvecs(const char *path, const sv_table *tb, cm_error *err)
{
    cm_wfile *w = cm_wfile_open(path, err);
    if (!w)
        return err ? err->code : CM_EIO;
    int32_t d = tb->dim;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < tb->n; i++) {
        rc = cm_wfile_write(w, &d, sizeof d, err);
        if (rc == 0)
            rc = cm_wfile_write(w, tb->rows + i * (size_t)tb->dim,
                                (size_t)tb->dim * sizeof(float), err);
    }
    if (rc != 0) {
        cm_wfile_abort(&w);
        return rc;
    }
    return cm_wfile_commit(w, err);
}

static int s_json_str(cm_wfile *w, const char *s, cm_error *err)
{
    int rc = cm_wfile_write(w, "\"", 1, err);
    for (const unsigned char *p = (const unsigned char *)s; rc == 0 && *p; p++) {
        if (*p == '"' || *p == '\\')
            rc = cm_wfile_printf(w, err, "\\%c", *p);
        else if (*p < 0x20)
            rc = cm_wfile_printf(w, err, "\\u%04x", *p);
        else
            rc = cm_wfile_write(w, p, 1, err);
    }
    return rc == 0 ? cm_wfile_write(w, "\"", 1, err) : rc;
}

static int s_json_num(cm_wfile *w, double x, int digits, cm_error *err)
{
    if (!isfinite(x))
        return cm_wfile_printf(w, err, "null");
    return cm_wfile_printf(w, err, "%.*g", digits, x);
}

static int s_write_manifest(const char *path, const sv_export_model *m, unsigned formats,
                            const sv_table *item, cm_error *err)
{
    /* both keep [bias, factors] rows of users and items */
    const cm_model *of = cm_model_of(m->model);
    const int implicit = of && of->family == CM_FAMILY_IMPLICIT;
    const int mf = (of && of->family == CM_FAMILY_RATINGS) || implicit;
    cm_wfile *w = cm_wfile_open(path, err);
    if (!w)
        return err ? err->code : CM_EIO;
    int rc = cm_wfile_printf(w, err, "{\n  \"format\": \"psrec-export\",\n  \"version\": 1,\n"
                                     "  \"model\": ");
    if (rc == 0)
        rc = s_json_str(w, m->model, err);
    if (rc == 0)
        rc = cm_wfile_printf(w, err, ",\n  \"formula\": ");
    if (rc == 0)
        rc = s_json_str(w, sv_export_formula(m->model), err);
    if (rc == 0)
        rc = cm_wfile_printf(w, err, ",\n  \"global_mean\": ");
    if (rc == 0)
        rc = s_json_num(w, m->global_mean, 17, err);
    if (rc == 0)
        rc = cm_wfile_printf(w, err, ",\n  \"clip\": [");
    if (rc == 0)
        rc = s_json_num(w, m->clip_lo, 9, err);
    if (rc == 0)
        rc = cm_wfile_printf(w, err, ", ");
    if (rc == 0)
        rc = s_json_num(w, m->clip_hi, 9, err);
    if (rc == 0)
        rc = cm_wfile_printf(
            w, err,
            "],\n  \"clip_note\": \"clip a score to [lo, hi] to predict a rating; rank by the "
            "unclipped score\",\n");
    if (rc == 0 && mf)
        rc = cm_wfile_printf(w, err,
                             "  \"fallback\": \"unknown users: items ranked by %sitem[i][0], "
                             "the score of a user whose row is all zeros\",\n",
                             implicit ? "" : "global_mean + ");
    if (rc == 0)
        rc = cm_wfile_printf(w, err, "  \"tables\": {");
    for (size_t t = 0; rc == 0 && t < m->n_tables; t++) {
        const sv_table *tb = &m->tables[t];
        rc = cm_wfile_printf(w, err, "%s\n    ", t ? "," : "");
        if (rc == 0)
            rc = s_json_str(w, tb->name, err);
        if (rc == 0)
            rc = cm_wfile_printf(w, err, ": {\"rows\": %zu, \"dim\": %d", tb->n, tb->dim);
        if (rc == 0 && (formats & SV_FMT_NPY))
            rc = cm_wfile_printf(w, err, ", \"file\": \"%s.npy\", \"dtype\": \"float32\"",
                                 tb->name);
        if (rc == 0 && ((formats & SV_FMT_NPY) || (tb == item && (formats & SV_FMT_FVECS))))
            rc = cm_wfile_printf(w, err, ", \"ids\": \"%s.ids.npy\", \"ids_dtype\": \"int64\"",
                                 tb->name);
        if (rc == 0 && mf)
            rc = cm_wfile_printf(w, err, ", \"columns\": \"0: bias, 1..%d: factors\"",
                                 tb->dim - 1);
        if (rc == 0)
            rc = cm_wfile_printf(w, err, "}");
    }
    if (rc == 0)
        rc = cm_wfile_printf(w, err, "\n  },\n  \"ids_note\": \"ids are psrec's 64-bit keys "
                                     "stored as int64; view as uint64 for keys >= 2^63\"");
    if (rc == 0 && (formats & SV_FMT_FVECS) && item)
        rc = cm_wfile_printf(
            w, err,
            ",\n  \"fvecs\": {\"file\": \"item.fvecs\", \"ids\": \"item.ids.npy\", "
            "\"dim\": %d, \"vector\": \"item[i] = [item bias, item factors...]\", "
            "\"query\": \"[1, user[u][1:]]: the inner product is item[i][0] + "
            "dot(user[u][1:], item[i][1:]); add global_mean + user[u][0] for the score\"}",
            item->dim);
    if (rc == 0 && (formats & SV_FMT_PSM))
        rc = cm_wfile_printf(w, err, ",\n  \"psm\": {\"file\": \"model.psm\", \"doc\": "
                                     "\"docs/psm.md\"}");
    if (rc == 0)
        rc = cm_wfile_printf(w, err, "\n}\n");
    if (rc != 0) {
        cm_wfile_abort(&w);
        return rc;
    }
    return cm_wfile_commit(w, err);
}

int sv_export_write(const sv_export_model *m, const char *out_dir, unsigned formats,
                    cm_error *err)
{
    const sv_table *item = NULL;
    for (size_t t = 0; t < m->n_tables; t++) {
        const char *nm = m->tables[t].name;
        if (!nm[0] || nm[0] == '.' || strchr(nm, '/'))
            return cm_error_set(err, CM_EINVAL, "table name '%s' cannot name a file", nm);
        if (strcmp(nm, "item") == 0)
            item = &m->tables[t];
    }
    if ((formats & SV_FMT_FVECS) && !item)
        return cm_error_set(err, CM_EINVAL, "fvecs: model '%s' has no 'item' table",
                            m->model);
    int rc = s_mkdirs(out_dir, err);
    if (rc != 0)
        return rc;
    char path[S_PATH_MAX];
    for (size_t t = 0; rc == 0 && t < m->n_tables; t++) {
        const sv_table *tb = &m->tables[t];
        if (formats & SV_FMT_NPY) {
            snprintf(path, sizeof path, "%s/%s.npy", out_dir, tb->name);
            rc = s_write_npy(path, "<f4", tb->n, tb->dim, tb->rows, sizeof(float), err);
        }
        if (rc == 0 && ((formats & SV_FMT_NPY) || (tb == item && (formats & SV_FMT_FVECS)))) {
            snprintf(path, sizeof path, "%s/%s.ids.npy", out_dir, tb->name);
            rc = s_write_npy(path, "<i8", tb->n, -1, tb->ids, sizeof(uint64_t), err);
        }
    }
    if (rc == 0 && (formats & SV_FMT_FVECS)) {
        snprintf(path, sizeof path, "%s/item.fvecs", out_dir);
        rc = s_write_fvecs(path, item, err);
    }
    if (rc == 0 && (formats & SV_FMT_PSM)) {
        sv_psm_table *pt = calloc(m->n_tables ? m->n_tables : 1, sizeof *pt);
        if (!pt)
            return cm_error_set(err, CM_ENOMEM, "%s: out of memory", out_dir);
        for (size_t t = 0; t < m->n_tables; t++)
            pt[t] = (sv_psm_table){m->tables[t].name, m->tables[t].dim, m->tables[t].n,
                                   m->tables[t].ids, m->tables[t].rows};
        sv_psm_model pm = {m->model,   sv_export_formula(m->model), m->global_mean,
                           m->clip_lo, m->clip_hi,                  m->n_tables,
                           pt};
        snprintf(path, sizeof path, "%s/%s", out_dir, "model.psm");
        rc = sv_psm_write(path, &pm, err);
        free(pt);
    }
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/manifest.json", out_dir);
        rc = s_write_manifest(path, m, formats, item, err);
    }
    return rc;
}

int sv_export(const char *ckpt, const char *out_dir, unsigned formats, cm_error *err)
{
    sv_export_model m;
    int rc = sv_export_load(ckpt, &m, err);
    if (rc == 0)
        rc = sv_export_write(&m, out_dir, formats, err);
    sv_export_model_free(&m);
    return rc;
}
