/* plan: memory estimate of a job, composed from what each module says of
 * itself: a server table's bytes from ps_table_footprint_of (slots,
 * chunks, index, eviction and admission records), hash maps from
 * cm_hashmap_bytes_for, the server's reply buffer from
 * ps_server_reply_bytes, the blocks schedule's row strides and message
 * size from worker/blocks.h, row sizes from the model's own table_params
 * (ffm's fields, deep's net rows), deep's scratch from
 * wk_deep_scratch_bytes, the minibatch trainer's buffers from
 * wk_trainer_minibatch_bytes. What is still counted here:
 * worker/sparse.c's evaluation batch (S_EVAL_BATCH), and the worker-side
 * lines of docs/planner.md, which explains each line. */
#include "cluster/plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dataset.h"
#include "common/features.h"
#include "common/hashmap.h"
#include "common/hll.h"
#include "common/slots.h"
#include "common/optim.h"
#include "ps/server.h"
#include "ps/table.h"
#include "worker/blocks.h"
#include "worker/models/deep.h"
#include "worker/models/model.h"
#include "worker/sparse.h"
#include "worker/trainer.h"

/* cm_ratings: a user key, an item key and a rating per row (its columns) */
#define S_RATING_BYTES                                                                    \
    (sizeof *((cm_ratings *)0)->user + sizeof *((cm_ratings *)0)->item +                \
     sizeof *((cm_ratings *)0)->rating)
#define S_EVAL_BATCH 4096                 /* worker/sparse.c: deep scratch rows, at least */

/* ------------------------------------------------------------------------
 * Layout arithmetic
 * ------------------------------------------------------------------------ */

static uint64_t s_ceil_div(uint64_t a, uint64_t b)
{
    return b ? (a + b - 1) / b : a;
}

static void s_add(cl_plan_role *r, const char *name, uint64_t bytes, int loading)
{
    if (bytes == 0 || r->n_items == CL_PLAN_MAX_ITEMS)
        return;
    r->items[r->n_items++] = (cl_plan_item){name, bytes, loading};
}

/* Sums the phases: loading items live beside the shard only; the others
 * are what training holds. */
static void s_finish(cl_plan_role *r, uint64_t shard)
{
    r->loading = shard;
    r->training = 0;
    for (size_t k = 0; k < r->n_items; k++) {
        if (r->items[k].loading)
            r->loading += r->items[k].bytes;
        else
            r->training += r->items[k].bytes;
    }
    r->total = r->loading > r->training ? r->loading : r->training;
}

/* ------------------------------------------------------------------------
 * Counting the data
 * ------------------------------------------------------------------------ */

static int s_is_ratings_input(const cm_job *job, const char *path)
{
    if (!cm_job_is_sparse(job))
        return 1;
    return wk_sparse_format(job, path) == CM_FMT_RATINGS;
}

static int s_load_ratings(const cm_job *job, const char *path, cm_ratings *out, cm_error *err)
{
    cm_load_opts lo = cm_load_opts_default();
    lo.max_bad_lines = job->max_bad_lines;
    lo.log_bad_lines = 0;
    lo.verify_checksum = 0; /* train verifies; the plan only counts */
    wk_ratings_columns(job, &lo);
    return cm_ratings_load(path, &lo, out, err);
}

static uint64_t s_max_u64(const uint64_t *a, size_t n)
{
    uint64_t m = 0;
    for (size_t k = 0; k < n; k++)
        if (a[k] > m)
            m = a[k];
    return m;
}

/* Large inputs: distinct users per worker and items per block from
 * HyperLogLog sketches in one streaming pass (no hash sets of millions of
 * keys); each estimate is raised by 2% (about 2.5 standard errors) so the
 * plan errs on the side of more memory. per: 2 * n_workers + 1 zeroed
 * counters. */
static uint64_t s_sketch_count(const cm_hll *h)
{
    return (uint64_t)ceil(cm_hll_estimate(h) * 1.02);
}

static int s_sketch_ratings(const cm_job *job, const cm_ratings *r, int n_workers,
                            uint64_t *per, cl_plan_data *d, cm_error *err)
{
    cm_hll *hu = calloc((size_t)n_workers, sizeof *hu);
    cm_hll *hi = calloc((size_t)n_workers, sizeof *hi);
    if (!hu || !hi) {
        free(hu);
        free(hi);
        return cm_error_set(err, CM_ENOMEM, "plan: out of memory counting %s", job->train);
    }
    for (size_t j = 0; j < r->n; j++) {
        const uint32_t w = cm_worker_of(r->user[j], (uint32_t)n_workers);
        per[w]++;
        cm_hll_add(&hu[w], r->user[j]);
        cm_hll_add(&hi[wk_block_of(r->item[j], (uint32_t)n_workers)], r->item[j]);
    }
    d->n_train = r->n;
    d->w_train = s_max_u64(per, (size_t)n_workers);
    d->train_file_bytes = (uint64_t)r->n * S_RATING_BYTES;
    d->sketched = 1;
    for (int w = 0; w < n_workers; w++) {
        const uint64_t nu = s_sketch_count(&hu[w]), ni = s_sketch_count(&hi[w]);
        d->n_users += nu;
        d->n_items += ni;
        d->w_users = nu > d->w_users ? nu : d->w_users;
        d->block_items = ni > d->block_items ? ni : d->block_items;
    }
    if (cm_job_is_sparse(job)) { /* fm on ratings: user and item keys + the bias */
        d->n_features = d->n_users + d->n_items + 1;
        d->nnz = 2 * d->n_train;
        d->w_nnz = 2 * d->w_train;
    }
    free(hu);
    free(hi);
    return 0;
}

/* Ratings (mf, or fm on ratings): distinct users and items, and the
 * largest worker's share; exact up to exact_rows ratings, sketched above. */
static int s_count_ratings(const cm_job *job, int n_workers, uint64_t exact_rows,
                           cl_plan_data *d, cm_error *err)
{
    cm_ratings r = {0};
    cm_hashmap *users = NULL, *items = NULL;
    uint64_t *per = calloc((size_t)n_workers * 2 + 1, sizeof *per);
    int rc = per ? 0 : cm_error_set(err, CM_ENOMEM, "plan: out of memory");
    if (rc == 0)
        rc = s_load_ratings(job, job->train, &r, err);
    if (rc != 0)
        goto out;
    if (r.n > exact_rows) {
        rc = s_sketch_ratings(job, &r, n_workers, per, d, err);
        goto test;
    }
    users = cm_hashmap_new(1024);
    items = cm_hashmap_new(1024);
    if (!users || !items) {
        rc = cm_error_set(err, CM_ENOMEM, "plan: out of memory");
        goto out;
    }
    for (size_t j = 0; j < r.n; j++) {
        if (cm_hashmap_upsert(users, r.user[j], 0, &(uint32_t){0}, NULL) != 0 ||
            cm_hashmap_upsert(items, r.item[j], 0, &(uint32_t){0}, NULL) != 0) {
            rc = cm_error_set(err, CM_ENOMEM, "plan: out of memory counting %s", job->train);
            goto out;
        }
        per[cm_worker_of(r.user[j], (uint32_t)n_workers)]++;
    }
    d->n_train = r.n;
    d->n_users = cm_hashmap_size(users);
    d->n_items = cm_hashmap_size(items);
    d->w_train = s_max_u64(per, (size_t)n_workers);
    d->train_file_bytes = (uint64_t)r.n * S_RATING_BYTES;
    /* blocks: users per worker, items per block (block = item hash % workers) */
    memset(per, 0, (size_t)n_workers * 2 * sizeof *per);
    size_t pos = 0;
    uint64_t key;
    uint32_t val;
    while (cm_hashmap_next(users, &pos, &key, &val))
        per[cm_worker_of(key, (uint32_t)n_workers)]++;
    pos = 0;
    while (cm_hashmap_next(items, &pos, &key, &val))
        per[n_workers + wk_block_of(key, (uint32_t)n_workers)]++;
    d->w_users = s_max_u64(per, (size_t)n_workers);
    d->block_items = s_max_u64(per + n_workers, (size_t)n_workers);
    if (cm_job_is_sparse(job)) { /* fm on ratings: user and item keys + the bias */
        d->n_features = d->n_users + d->n_items + 1;
        d->nnz = 2 * d->n_train;
        d->w_nnz = 2 * d->w_train;
    }
test:
    cm_ratings_free(&r);
    if (rc == 0 && job->test[0]) {
        if ((rc = s_load_ratings(job, job->test, &r, err)) != 0)
            goto out;
        memset(per, 0, (size_t)n_workers * sizeof *per);
        for (size_t j = 0; j < r.n; j++)
            per[cm_worker_of(r.user[j], (uint32_t)n_workers)]++;
        d->n_test = r.n;
        d->w_test = s_max_u64(per, (size_t)n_workers);
        if ((uint64_t)r.n * S_RATING_BYTES > d->train_file_bytes)
            d->train_file_bytes = (uint64_t)r.n * S_RATING_BYTES;
    }
out:
    cm_ratings_free(&r);
    cm_hashmap_destroy(&users);
    cm_hashmap_destroy(&items);
    free(per);
    return rc;
}

/* Sparse examples (fm): distinct keys, occurrences, the largest share
 * (worker w takes examples i with i % workers == w). */
static int s_count_examples(const cm_job *job, int n_workers, cl_plan_data *d, cm_error *err)
{
    cm_examples ex = {0};
    cm_hashmap *keys = NULL;
    uint64_t *nnz = calloc((size_t)n_workers + 1, sizeof *nnz);
    int rc = nnz ? 0 : cm_error_set(err, CM_ENOMEM, "plan: out of memory");
    if (rc == 0)
        rc = wk_sparse_load_features(job, job->train, 0, &ex, err);
    if (rc != 0)
        goto out;
    if (!(keys = cm_hashmap_new(1024))) {
        rc = cm_error_set(err, CM_ENOMEM, "plan: out of memory");
        goto out;
    }
    for (size_t a = 0; a < ex.nnz; a++)
        if (cm_hashmap_upsert(keys, ex.key[a], 0, &(uint32_t){0}, NULL) != 0) {
            rc = cm_error_set(err, CM_ENOMEM, "plan: out of memory counting %s", job->train);
            goto out;
        }
    for (size_t i = 0; i < ex.n; i++)
        nnz[i % (size_t)n_workers] += ex.row_at[i + 1] - ex.row_at[i];
    d->n_train = ex.n;
    d->nnz = ex.nnz;
    d->n_features = cm_hashmap_size(keys) + 1; /* + the global bias row */
    d->w_train = s_ceil_div(ex.n, (uint64_t)n_workers);
    d->w_nnz = s_max_u64(nnz, (size_t)n_workers);
    d->train_file_bytes = (uint64_t)ex.n * (4 + 8) + 8 +
                          (uint64_t)ex.nnz * (8 + 4 + (ex.field ? 4 : 0));
    cm_examples_free(&ex);
    if (job->test[0]) {
        if ((rc = wk_sparse_load_features(job, job->test, 0, &ex, err)) != 0)
            goto out;
        d->n_test = ex.n;
        d->w_test = s_ceil_div(ex.n, (uint64_t)n_workers);
    }
out:
    cm_examples_free(&ex);
    cm_hashmap_destroy(&keys);
    free(nnz);
    return rc;
}

/* What a sparse model's tables look like: the feature table's row dim
 * (fm and deep: dim + 1; ffm: 1 + fields x dim), and deep's dense table
 * (n_dense rows of dense_dim floats; 0 for the others) and its net, which
 * sizes the worker's scratch. fields = 0 is resolved from the data as
 * the launcher does. */
typedef struct {
    int dim_t;
    uint64_t n_dense;
    int dense_dim;
    wk_mlp_params mlp;
} s_sparse_shape;

static int s_sparse_tables(const cm_job *job, s_sparse_shape *sh, cm_error *err)
{
    memset(sh, 0, sizeof *sh);
    sh->dim_t = job->dim + 1;
    const wk_model_ops *m = wk_model_find(job->model);
    if (!m || !cm_job_is_sparse(job))
        return 0;
    cm_job *rj = malloc(sizeof *rj);
    if (!rj)
        return cm_error_set(err, CM_ENOMEM, "plan: out of memory");
    *rj = *job;
    int rc = 0, f = wk_sparse_fields(job, err);
    if (f < 0) {
        rc = f;
        goto out;
    }
    rj->fields = f;
    cm_table_spec tp;
    m->table_params(rj, 0, &tp);
    sh->dim_t = tp.dim;
    if (m->dense_rows) {
        wk_mlp_params mp;
        if ((rc = wk_deep_params(rj, &mp, err)) != 0)
            goto out;
        m->table_params(rj, 1, &tp);
        sh->n_dense = m->dense_rows(rj);
        sh->dense_dim = tp.dim;
        sh->mlp = mp;
    }
out:
    free(rj);
    return rc;
}

/* ------------------------------------------------------------------------
 * Roles
 * ------------------------------------------------------------------------ */

/* A table of `rows` rows as one server holds it: the table's own
 * footprint for the job's settings (admission counters at their bound). */
static ps_table_footprint s_server_table(const cm_job *job, uint64_t rows, int n_servers,
                                         int dim_t, uint64_t *held)
{
    cm_table_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.dim = dim_t;
    wk_model_table_common(job, &sp);
    uint64_t n = s_ceil_div(rows, (uint64_t)n_servers);
    if (job->max_rows > 0 && (uint64_t)job->max_rows < n)
        n = (uint64_t)job->max_rows;
    const uint64_t most = ps_table_max_pending(&sp);
    ps_table_footprint b;
    ps_table_footprint_of(&sp, (size_t)n, (size_t)(n < most ? n : most), &b);
    *held = n;
    return b;
}

static void s_server(const cm_job *job, cl_plan *p, uint64_t batch_keys,
                     const s_sparse_shape *sh)
{
    cl_plan_role *r = &p->server;
    const uint64_t rf = (uint64_t)p->row_floats;
    uint64_t tables[2];
    int dims[2] = {sh->dim_t, sh->dim_t};
    size_t n_tables = 0;
    if (cm_job_is_sparse(job)) {
        tables[n_tables++] = p->data.n_features;
        if (sh->n_dense) { /* deep: the net, every row in every request */
            dims[n_tables] = sh->dense_dim;
            tables[n_tables++] = sh->n_dense;
        }
    } else {
        tables[n_tables++] = p->data.n_users;
        tables[n_tables++] = p->data.n_items;
    }
    ps_table_footprint sum = {0};
    uint64_t largest = 0, reply = 0, inbound = 0;
    const int blocks = cm_job_uses_blocks(job);
    for (size_t t = 0; t < n_tables; t++) {
        const int dim_t = dims[t];
        uint64_t held;
        ps_table_footprint b = s_server_table(job, tables[t], p->n_servers, dim_t, &held);
        sum.weights += b.weights;
        sum.state += b.state;
        sum.pad += b.pad;
        sum.index += b.index;
        sum.meta += b.meta;
        sum.pending += b.pending;
        sum.fixed += b.fixed;
        if (held > largest)
            largest = held;
        /* one request's keys at one server: a batch's distinct keys, or a
         * blocks message of full rows (weights + state) */
        uint64_t keys = blocks ? wk_blocks_msg_rows() : batch_keys;
        if (keys > held)
            keys = held;
        const uint64_t floats = blocks ? rf : (uint64_t)dim_t;
        /* whole rows, and f32 values, go out as floats from a buffer of their own */
        const int own = blocks || job->wire_dtype == 0;
        const uint64_t rb = ps_server_reply_bytes((size_t)(keys * floats), own);
        if (rb > reply)
            reply = rb;
        if (keys * (8 + floats * 4) > inbound)
            inbound = keys * (8 + floats * 4);
    }
    r->role = "server";
    r->count = p->n_servers;
    s_add(r, "rows: weights", sum.weights, 0);
    s_add(r, "rows: optimizer state", sum.state, 0);
    s_add(r, "rows: slot padding + chunk slack", sum.pad, 0);
    s_add(r, "hash index", sum.index, 0);
    s_add(r, "eviction records", sum.meta, 0);
    s_add(r, "admission counters", sum.pending, 0);
    s_add(r, "table headers + chunk lists", sum.fixed, 0);
    s_add(r, "reply buffer + one request", reply + inbound, 0);
    if (job->checkpoint_dir[0])
        s_add(r, "checkpoint copy of a table", largest * (8 + rf * 4), 0);
    s_finish(r, 0);
}

static void s_worker_mf(const cm_job *job, cl_plan *p)
{
    cl_plan_role *r = &p->worker;
    const cl_plan_data *d = &p->data;
    const uint64_t dim_t = (uint64_t)job->dim + 1;
    const uint64_t shard = (d->w_train + d->w_test) * S_RATING_BYTES;
    s_add(r, "ratings shard (train + test)", shard, 0);
    s_add(r, "input file, mapped or read (loading)", d->train_file_bytes, 1);
    s_add(r, "shard filter scratch (loading)", d->train_file_bytes, 1);
    if (!cm_job_uses_blocks(job)) {
        const int dims[2] = {(int)dim_t, (int)dim_t};
        const uint64_t cap = wk_trainer_minibatch_cap(job->batch);
        s_add(r, "example order", d->w_train * 4, 0);
        s_add(r, "minibatch buffers", wk_trainer_minibatch_bytes(job->batch, dims), 0);
        s_add(r, "pull replies + push requests", 2 * cap * (8 + 2 * dim_t * 4), 0);
    } else {
        const uint64_t rf = (uint64_t)p->row_floats, st = wk_blocks_stride(p->row_floats);
        const uint64_t dcap = (d->w_users > d->block_items ? d->w_users : d->block_items) + 1;
        s_add(r, "blocks: user rows (rows + base)", 2 * (d->w_users + 1) * st * 4, 0);
        s_add(r, "blocks: item rows of a block (x2)", 2 * (d->block_items + 1) * st * 4, 0);
        s_add(r, "blocks: delta buffer + keys", dcap * (rf * 4 + 8), 0);
        uint64_t msg = dcap < wk_blocks_msg_rows() ? dcap : wk_blocks_msg_rows();
        s_add(r, "blocks: row messages (pull + push)", 2 * msg * (8 + rf * 4), 0);
        s_add(r, "blocks: ratings (canon + working)", 2 * d->w_train * sizeof(wk_rating), 0);
        uint64_t item_keys = d->n_items < d->w_train ? d->n_items : d->w_train;
        s_add(r, "blocks: item keys + index build", item_keys * 8 + d->w_train * 16 +
                  cm_hashmap_bytes_for(d->w_users) + cm_hashmap_bytes_for(item_keys), 0);
    }
    s_finish(r, shard);
}

static void s_worker_fm(const cm_job *job, cl_plan *p, const s_sparse_shape *sh)
{
    cl_plan_role *r = &p->worker;
    const cl_plan_data *d = &p->data;
    const uint64_t dim_t = (uint64_t)sh->dim_t;
    const uint64_t avg_nnz = d->n_train ? s_ceil_div(d->nnz, d->n_train) : 0;
    const uint64_t shard = d->w_train * (4 + 8) + d->w_nnz * (8 + 4) +
                           d->w_test * (4 + 8 + avg_nnz * (8 + 4));
    s_add(r, "examples shard (train + test)", shard, 0);
    s_add(r, "input examples (loading)", d->train_file_bytes, 1);
    s_add(r, "example order", d->w_train * 4, 0);
    const uint64_t c = ((uint64_t)job->batch * avg_nnz + 2) * 2;
    const uint64_t c_ex = ((uint64_t)job->batch + 1) * 2;
    s_add(r, "minibatch buffers",
          c * (8 + 8 + 16 + 4 + 4 + 2 * dim_t * 4) + c_ex * (8 + 4 + 4), 0);
    s_add(r, "pull reply + push request", c / 2 * (8 + 2 * dim_t * 4), 0);
    if (sh->n_dense) {
        const uint64_t dense = sh->n_dense * (uint64_t)sh->dense_dim * 4;
        const uint64_t maxb = (uint64_t)job->batch > S_EVAL_BATCH ? (uint64_t)job->batch
                                                                  : S_EVAL_BATCH;
        s_add(r, "dense rows, gradients, messages", 4 * dense + sh->n_dense * 8, 0);
        s_add(r, "MLP scratch (activations)", wk_deep_scratch_bytes(&sh->mlp, (int)maxb), 0);
    }
    s_finish(r, shard);
}

/* ------------------------------------------------------------------------
 * Public
 * ------------------------------------------------------------------------ */

int cl_plan_estimate(const cm_job *job, int n_servers, int n_workers, cl_plan *out,
                     cm_error *err)
{
    return cl_plan_estimate_ex(job, n_servers, n_workers, CL_PLAN_EXACT_ROWS, out, err);
}

int cl_plan_estimate_ex(const cm_job *job, int n_servers, int n_workers, uint64_t exact_rows,
                        cl_plan *out, cm_error *err)
{
    memset(out, 0, sizeof *out);
    if (!job || !job->train[0])
        return cm_error_set(err, CM_EINVAL, "plan: no training data (set train)");
    if (n_servers < 1 || n_workers < 1)
        return cm_error_set(err, CM_EINVAL,
                            "plan: need at least 1 server and 1 worker (got %d and %d)",
                            n_servers, n_workers);
    out->n_servers = n_servers;
    out->n_workers = n_workers;
    out->local = job->local;
    s_sparse_shape sh;
    int rc = s_sparse_tables(job, &sh, err);
    if (rc != 0)
        return rc;
    /* ffm: the row holds fields x dim latent floats; print them as its dim */
    out->dim = sh.dim_t - 1;
    out->optimizer = job->optimizer;
    const int dim_t = sh.dim_t;
    out->row_floats = dim_t + cm_optim_state_floats(job->optimizer, dim_t);
    cm_table_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.dim = dim_t;
    wk_model_table_common(job, &sp);
    out->stride_floats = (int)ps_table_stride(&sp);
    rc = s_is_ratings_input(job, job->train)
                 ? s_count_ratings(job, n_workers, exact_rows, &out->data, err)
                 : s_count_examples(job, n_workers, &out->data, err);
    if (rc != 0)
        return rc;
    uint64_t batch_keys;
    if (cm_job_is_sparse(job)) {
        uint64_t avg = out->data.n_train ? s_ceil_div(out->data.nnz, out->data.n_train) : 0;
        batch_keys = (uint64_t)job->batch * avg + 1;
        s_worker_fm(job, out, &sh);
    } else {
        batch_keys = wk_trainer_minibatch_cap(job->batch);
        s_worker_mf(job, out);
    }
    s_server(job, out, batch_keys, &sh);
    out->worker.role = "worker";
    out->worker.count = n_workers;
    if (job->local)
        out->process_total = (uint64_t)n_servers * out->server.total +
                             (uint64_t)n_workers * out->worker.total;
    else
        out->process_total = out->server.total > out->worker.total ? out->server.total
                                                                   : out->worker.total;
    int ranks = job->local ? 1 : 1 + n_servers + n_workers;
    out->avail = cl_plan_available(job, ranks, out->avail_how, sizeof out->avail_how);
    return 0;
}

const char *cl_plan_bytes_text(uint64_t n, char *buf, size_t size)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%llu B", (unsigned long long)n);
    else
        snprintf(buf, size, "%.1f %s", v, units[u]);
    return buf;
}

static void s_print_role(FILE *f, const cl_plan_role *r)
{
    char b[32];
    for (size_t k = 0; k < r->n_items; k++)
        fprintf(f, "%-8s %5s  %-38s %12s\n", k == 0 ? r->role : "",
                k == 0 ? "" : "", r->items[k].name, cl_plan_bytes_text(r->items[k].bytes, b, sizeof b));
    fprintf(f, "%-8s %5d  %-38s %12s", "", r->count, "total per process (peak)",
            cl_plan_bytes_text(r->total, b, sizeof b));
    char l[32], t[32];
    fprintf(f, "  (loading %s, training %s)\n", cl_plan_bytes_text(r->loading, l, sizeof l),
            cl_plan_bytes_text(r->training, t, sizeof t));
}

void cl_plan_print(FILE *f, const cl_plan *p)
{
    const cl_plan_data *d = &p->data;
    char b[32], a[32];
    const int dim_t = p->dim + 1;
    fprintf(f, "memory plan: dim %d, %s: a row is %d weights + %d state floats, slot %d floats "
               "(%d B)\n",
            p->dim, cm_optimizer_name(p->optimizer), dim_t, p->row_floats - dim_t,
            p->stride_floats, p->stride_floats * 4);
    if (d->n_features)
        fprintf(f, "data: %llu examples, %llu feature occurrences, %llu distinct keys "
                   "(+ bias); %llu test examples\n",
                (unsigned long long)d->n_train, (unsigned long long)d->nnz,
                (unsigned long long)(d->n_features - 1), (unsigned long long)d->n_test);
    else
        fprintf(f, "data: %llu ratings, %s%llu users, %s%llu items%s; %llu test ratings\n",
                (unsigned long long)d->n_train, d->sketched ? "~" : "",
                (unsigned long long)d->n_users, d->sketched ? "~" : "",
                (unsigned long long)d->n_items,
                d->sketched ? " (estimated, +2%)" : "", (unsigned long long)d->n_test);
    fprintf(f, "cluster: %d server%s, %d worker%s%s\n\n", p->n_servers,
            p->n_servers == 1 ? "" : "s", p->n_workers, p->n_workers == 1 ? "" : "s",
            p->local ? " as threads of one --local process" : " (+ 1 scheduler), one process each");
    fprintf(f, "%-8s %5s  %-38s %12s\n", "role", "count", "per process", "bytes");
    s_print_role(f, &p->server);
    s_print_role(f, &p->worker);
    fprintf(f, "%-8s %5s  %-38s %12s\n", "all", "", p->local ? "the --local process"
                                                       : "largest process",
            cl_plan_bytes_text(p->process_total, b, sizeof b));
    if (p->avail == 0)
        fprintf(f, "\nverdict: unknown: available memory cannot be read (set memory_limit)\n");
    else
        fprintf(f, "\nverdict: %s: %s needs %s of %s available (%s)\n",
                p->process_total <= p->avail ? "fits" : "DOES NOT FIT",
                p->local ? "the --local process" : "the largest process",
                cl_plan_bytes_text(p->process_total, b, sizeof b),
                cl_plan_bytes_text(p->avail, a, sizeof a), p->avail_how);
}

uint64_t cl_plan_available(const cm_job *job, int ranks_on_host, char *how, size_t how_n)
{
    char b[32];
    if (job->memory_limit) {
        snprintf(how, how_n, "memory_limit");
        return job->memory_limit;
    }
    FILE *f = fopen("/proc/meminfo", "r");
    unsigned long long kb = 0;
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
                break;
        fclose(f);
    }
    if (kb == 0) {
        snprintf(how, how_n, "unknown");
        return 0;
    }
    if (ranks_on_host < 1)
        ranks_on_host = 1;
    snprintf(how, how_n, "MemAvailable %s / %d rank%s on this host",
             cl_plan_bytes_text((uint64_t)kb * 1024, b, sizeof b), ranks_on_host,
             ranks_on_host == 1 ? "" : "s");
    return (uint64_t)kb * 1024 / (uint64_t)ranks_on_host;
}

/* The largest item of a role. */
static const cl_plan_item *s_largest(const cl_plan_role *r)
{
    const cl_plan_item *m = NULL;
    for (size_t k = 0; k < r->n_items; k++)
        if (!m || r->items[k].bytes > m->bytes)
            m = &r->items[k];
    return m;
}

int cl_plan_check(const cl_plan *p, cm_error *err)
{
    if (p->avail == 0 || p->process_total <= p->avail)
        return 0;
    char need[32], have[32];
    const cl_plan_role *r = p->server.total >= p->worker.total ? &p->server : &p->worker;
    if (!p->local) {
        if (p->server.total <= p->avail)
            r = &p->worker;
        else if (p->worker.total <= p->avail)
            r = &p->server;
    }
    const cl_plan_item *big = s_largest(r);
    const char *what = p->local ? "this --local process (all servers and workers)"
                                : (r == &p->server ? "each server process" : "each worker process");
    return cm_error_set(
        err, CM_ENOMEM,
        "memory plan: %s needs %s but %s is available (%s); the %s's largest part is "
        "%s. To shrink the job: more servers (--servers; splits the tables), a smaller "
        "--dim, --optimizer rowwise_adagrad or sgd (1 or 0 state floats per row, not %d), "
        "more workers (smaller shards), or a correct --memory_limit (bytes). "
        "`psrec plan` prints the whole table.",
        what, cl_plan_bytes_text(p->local ? p->process_total : r->total, need, sizeof need),
        cl_plan_bytes_text(p->avail, have, sizeof have), p->avail_how, r->role,
        big ? big->name : "?", p->row_floats - p->dim - 1);
}
