#define _GNU_SOURCE
#include "serve/score.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/config.h"
#include "common/metrics.h"
#include "serve/psm.h"

struct sv_model {
    psm_file *psm;       /* owns the memory below */
    psm_table user;      /* "user": [b_u, p_u] rows */
    psm_table item;      /* "item": [b_i, q_i] rows */
    int dim;             /* floats per row, the same in both tables */
    double global_mean;
};

struct sv_scorer {
    float *raw;          /* one raw score per item */
    size_t raw_cap;
    float *query;        /* [1, p_u] */
    size_t query_cap;
    cm_scored *heap;     /* the k best so far (cm_topk_offer); key: item row */
    size_t heap_cap;
};

/* ------------------------------------------------------------- models -- */

void sv_model_path(const char *path, char *out, size_t n)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(out, n, "%s/%s", path, SV_MODEL_FILE);
    else
        snprintf(out, n, "%s", path);
}

static sv_model *s_model_from_psm(psm_file *f, const char *name, cm_error *err)
{
    sv_model *m = NULL;
    /* the ratings and implicit families (mf, implicit) share the row
     * layout; implicit scores have no global mean (they rank, they do not
     * predict ratings) */
    const cm_model *md = cm_model_of(psm_model(f));
    const int implicit = md && md->family == CM_FAMILY_IMPLICIT;
    if (!md || (md->family != CM_FAMILY_RATINGS && !implicit)) {
        cm_error_set(err, CM_EINVAL, "%s: model '%s' cannot be served (only mf and implicit)",
                     name, psm_model(f));
        goto fail;
    }
    psm_table user, item;
    if (psm_table_find(f, "user", &user) != 0 || psm_table_find(f, "item", &item) != 0) {
        cm_error_set(err, CM_EINVAL, "%s: an mf model needs tables 'user' and 'item'", name);
        goto fail;
    }
    if (user.dim != item.dim) {
        cm_error_set(err, CM_EINVAL, "%s: user rows have %u floats, item rows %u", name,
                     user.dim, item.dim);
        goto fail;
    }
    m = calloc(1, sizeof *m);
    if (!m) {
        cm_error_set(err, CM_ENOMEM, "%s: out of memory", name);
        goto fail;
    }
    m->psm = f;
    m->user = user;
    m->item = item;
    m->dim = (int)item.dim;
    m->global_mean = implicit ? 0.0 : psm_global_mean(f);
    return m;
fail:
    psm_close(&f);
    return NULL;
}

sv_model *sv_model_open_fd(int fd, const char *name, cm_error *err)
{
    char msg[PSM_ERR_MAX];
    psm_file *f = psm_open_fd(fd, name, PSM_OPEN_COPY, msg, sizeof msg);
    if (!f) {
        cm_error_set(err, CM_EPARSE, "%s", msg);
        return NULL;
    }
    return s_model_from_psm(f, name, err);
}

sv_model *sv_model_open(const char *path, cm_error *err)
{
    char file[4096];
    sv_model_path(path, file, sizeof file);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cm_error_set(err, errno == ENOENT ? CM_ENOTFOUND : CM_EIO, "%s: %s", file,
                     strerror(errno));
        return NULL;
    }
    sv_model *m = sv_model_open_fd(fd, file, err);
    close(fd);
    return m;
}

void sv_model_destroy(sv_model **pm)
{
    if (!pm || !*pm)
        return;
    psm_close(&(*pm)->psm);
    free(*pm);
    *pm = NULL;
}

size_t sv_model_n_users(const sv_model *m) { return (size_t)m->user.n_rows; }
size_t sv_model_n_items(const sv_model *m) { return (size_t)m->item.n_rows; }
int sv_model_dim(const sv_model *m) { return m->dim; }
double sv_model_global_mean(const sv_model *m) { return m->global_mean; }

int sv_model_has_user(const sv_model *m, uint64_t user)
{
    return psm_find(&m->user, user) >= 0;
}

/* ------------------------------------------------------------ scoring -- */

sv_scorer *sv_scorer_new(cm_error *err)
{
    sv_scorer *sc = calloc(1, sizeof *sc);
    if (!sc)
        cm_error_set(err, CM_ENOMEM, "scorer: out of memory");
    return sc;
}

void sv_scorer_destroy(sv_scorer **ps)
{
    if (!ps || !*ps)
        return;
    free((*ps)->raw);
    free((*ps)->query);
    free((*ps)->heap);
    free(*ps);
    *ps = NULL;
}

/* Grows *p (64-byte aligned) to hold n elements of size sz. */
static int s_reserve(void **p, size_t *cap, size_t n, size_t sz)
{
    if (n <= *cap)
        return 0;
    size_t want = n < 64 ? 64 : n;
    if (want > SIZE_MAX / sz - 64)
        return CM_ENOMEM;
    void *q = aligned_alloc(64, (want * sz + 63) / 64 * 64);
    if (!q)
        return CM_ENOMEM;
    free(*p);
    *p = q;
    *cap = want;
    return 0;
}

/* Keeps the k best finite raw scores of raw[0..n) (NaN marks an excluded
 * item); returns how many were kept, sorted best first. The key of a
 * candidate is its row: rows are in ascending id order, so the shared
 * order's tie rule (smaller key first) is the smaller item id. */
static size_t s_select(const float *raw, size_t n, cm_scored *heap, size_t k)
{
    size_t hn = 0, i = 0;
    for (; i < n && hn < k; i++)
        if (raw[i] == raw[i])
            cm_topk_offer(heap, &hn, k, raw[i], (uint64_t)i);
    if (hn == k && k > 0) {
        /* Most items lose to the full list's worst: a tight scan (no call,
         * the floor in a register) finds the next that does not. An equal
         * score loses too, every kept row being smaller than i; so does a
         * NaN. */
        for (float floor = heap[0].score;; i++) {
            while (i < n && !(raw[i] > floor))
                i++;
            if (i == n)
                break;
            cm_topk_offer(heap, &hn, k, raw[i], (uint64_t)i);
            floor = heap[0].score;
        }
    }
    cm_topk_sort(heap, hn);
    return hn;
}

int sv_recommend(sv_scorer *sc, const sv_model *m, uint64_t user, size_t k,
                 const uint64_t *exclude, size_t n_exclude, sv_hit *out, size_t *n_out,
                 int *fallback, cm_error *err)
{
    *n_out = 0;
    if (fallback)
        *fallback = 0;
    if (k == 0)
        return cm_error_set(err, CM_EINVAL, "k must be at least 1");
    const size_t n = (size_t)m->item.n_rows;
    const size_t dim = (size_t)m->dim;
    const float *p = psm_row(&m->user, user);
    if (fallback)
        *fallback = p == NULL;
    if (k > n)
        k = n;
    if (n == 0)
        return 0;
    if (s_reserve((void **)&sc->raw, &sc->raw_cap, n, sizeof(float)) != 0 ||
        s_reserve((void **)&sc->query, &sc->query_cap, dim, sizeof(float)) != 0 ||
        s_reserve((void **)&sc->heap, &sc->heap_cap, k, sizeof(cm_scored)) != 0)
        return cm_error_set(err, CM_ENOMEM, "scoring %zu items: out of memory", n);

    const float *items = m->item.rows;
    double base = m->global_mean;
    if (p) {
        base += p[0];
        sc->query[0] = 1.f;
        memcpy(sc->query + 1, p + 1, (dim - 1) * sizeof(float));
        /* raw[i] = b_i + <p_u, q_i>; OpenBLAS takes int sizes, so chunk. */
        const size_t chunk = (size_t)1 << 30;
        for (size_t at = 0; at < n; at += chunk) {
            size_t rows = n - at < chunk ? n - at : chunk;
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)rows, (blasint)dim, 1.f,
                        items + at * dim, (blasint)dim, sc->query, 1, 0.f, sc->raw + at, 1);
        }
    } else {
        /* a new user's row is all zeros: the score is global_mean + b_i */
        for (size_t i = 0; i < n; i++)
            sc->raw[i] = items[i * dim];
    }
    for (size_t e = 0; e < n_exclude; e++) {
        int64_t r = psm_find(&m->item, exclude[e]);
        if (r >= 0)
            sc->raw[r] = NAN;
    }
    size_t got = s_select(sc->raw, n, sc->heap, k);
    for (size_t j = 0; j < got; j++) {
        out[j].item = m->item.ids[sc->heap[j].key];
        out[j].score = (float)(base + (double)sc->heap[j].score);
    }
    *n_out = got;
    return 0;
}
