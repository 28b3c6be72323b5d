/* Single-process baseline for the MF benchmark: per-rating SGD on a grid of
 * blocks with several threads, the way LIBMF's FPSG does it, with no
 * cluster around it.
 *
 * Reads the same .psrd files psrec trains on, numbers users and items
 * densely, cuts the rating matrix into bins x bins blocks (bins > 2 x
 * threads) and lets each thread take a free block (no other thread in its
 * user range or item range) that has not run this epoch, choosing at random
 * among the free ones. Rows are renumbered by a random permutation and
 * bins are ranges of the new numbers; inside a block the ratings are
 * grouped by ranges of users (about 256 KiB of rows, as psrec's worker
 * groups them), each group shuffled once and walked in order every epoch. The step is psrec's own kernel
 * (wk_model_mf.train_local: biased MF, the same optimizer rules, lr, l2 and
 * initial spread as `psrec train`), so the ratio of psrec's figure to this
 * one is the cost of the parameter-server machinery alone. Prints, per
 * epoch, updates/s of wall time and of process CPU time, and the test RMSE
 * (predictions clipped to the rating range, as psrec reports it); then one
 * summary line (means over epochs after the first) that bench/run.sh reads.
 *
 *   build/sgd_baseline TRAIN.psrd TEST.psrd [--threads T] [--bins B]
 *       [--epochs E] [--dim K] [--lr X] [--l2 X] [--init_std X]
 *       [--optimizer adagrad|rowwise_adagrad|sgd] [--seed S] */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "common/config.h"
#include "common/dataset.h"
#include "common/hash.h"
#include "common/rng.h"
#include "common/optim.h"
#include "worker/blocks.h"
#include "worker/models/model.h"

static double s_clock(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Row arrays on transparent huge pages where the kernel allows it, as
 * psrec's worker holds them (fewer TLB misses on large shapes). */
static void *s_alloc_rows(size_t bytes)
{
    const size_t huge = 2u << 20;
    bytes = (bytes + huge - 1) / huge * huge;
    void *p = aligned_alloc(huge, bytes);
#ifdef MADV_HUGEPAGE
    if (p)
        (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

typedef struct {
    /* fixed after setup */
    int bins, dim, threads;
    const cm_optim *opt;
    wk_model_ctx ctx;
    wk_rows users, items;
    wk_rating *ratings;     /* grouped by block, shuffled within each */
    size_t *block_at;       /* bins * bins + 1 offsets */
    /* the block scheduler, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *row_busy, *col_busy, *done;
    int left;               /* blocks not yet handed out this epoch */
    int running;            /* blocks being trained */
    cm_rng rng;
    double sq;              /* squared errors of the epoch */
} s_grid;

/* Takes a free block that has not run this epoch, or -1 once none is left. */
static int s_take(s_grid *g)
{
    pthread_mutex_lock(&g->mu);
    for (;;) {
        if (g->left == 0) {
            pthread_mutex_unlock(&g->mu);
            return -1;
        }
        int cand[4096], nc = 0, nb = g->bins * g->bins;
        for (int b = 0; b < nb && nc < 4096; b++)
            if (!g->done[b] && !g->row_busy[b / g->bins] && !g->col_busy[b % g->bins])
                cand[nc++] = b;
        if (nc > 0) {
            int b = cand[cm_rng_below(&g->rng, (uint64_t)nc)];
            g->done[b] = 1;
            g->row_busy[b / g->bins] = g->col_busy[b % g->bins] = 1;
            g->left--;
            g->running++;
            pthread_mutex_unlock(&g->mu);
            return b;
        }
        pthread_cond_wait(&g->cv, &g->mu);
    }
}

static void s_give_back(s_grid *g, int b, double sq)
{
    pthread_mutex_lock(&g->mu);
    g->row_busy[b / g->bins] = g->col_busy[b % g->bins] = 0;
    g->running--;
    g->sq += sq;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void *s_thread(void *arg)
{
    s_grid *g = arg;
    int b;
    while ((b = s_take(g)) >= 0) {
        size_t at = g->block_at[b], m = g->block_at[b + 1] - at;
        double sq = wk_model_mf.train_local(&g->ctx, g->opt, g->ratings + at, m, g->dim + 1,
                                            g->users, g->items);
        s_give_back(g, b, sq);
    }
    return NULL;
}

static int s_usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s TRAIN.psrd TEST.psrd [--threads T] [--bins B] [--epochs E] [--dim K]\n"
            "       [--lr X] [--l2 X] [--init_std X] [--optimizer adagrad|rowwise_adagrad|sgd]\n"
            "       [--seed S]\n",
            prog);
    return 2;
}

int main(int argc, char **argv)
{
    const char *train_path = NULL, *test_path = NULL;
    int threads = 2, bins = 0, epochs = 5, dim = 32, kind = CM_OPT_ADAGRAD;
    double lr = 0.07, l2 = 0.05, init_std = 0.05;
    uint64_t seed = 1;
    for (int a = 1; a < argc; a++) {
        const char *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (!strcmp(argv[a], "--threads") && v)
            threads = atoi(v), a++;
        else if (!strcmp(argv[a], "--bins") && v)
            bins = atoi(v), a++;
        else if (!strcmp(argv[a], "--epochs") && v)
            epochs = atoi(v), a++;
        else if (!strcmp(argv[a], "--dim") && v)
            dim = atoi(v), a++;
        else if (!strcmp(argv[a], "--lr") && v)
            lr = atof(v), a++;
        else if (!strcmp(argv[a], "--l2") && v)
            l2 = atof(v), a++;
        else if (!strcmp(argv[a], "--init_std") && v)
            init_std = atof(v), a++;
        else if (!strcmp(argv[a], "--seed") && v)
            seed = strtoull(v, NULL, 10), a++;
        else if (!strcmp(argv[a], "--optimizer") && v) {
            kind = !strcmp(v, "sgd")               ? CM_OPT_SGD
                   : !strcmp(v, "rowwise_adagrad") ? CM_OPT_ROWWISE
                   : !strcmp(v, "adagrad")         ? CM_OPT_ADAGRAD
                                                   : -1;
            a++;
        } else if (argv[a][0] != '-' && !train_path)
            train_path = argv[a];
        else if (argv[a][0] != '-' && !test_path)
            test_path = argv[a];
        else
            return s_usage(argv[0]);
    }
    if (bins == 0)
        bins = 2 * threads + 1 > 20 ? 2 * threads + 1 : 20;
    if (!train_path || !test_path || kind < 0 || threads < 1 || threads > 256 || epochs < 1 ||
        dim < 1 || dim > 1024 || bins <= 2 * threads - 1 || bins > 64 || !(lr > 0))
        return s_usage(argv[0]);

    cm_error err = {0};
    cm_ratings tr = {0}, te = {0};
    if (cm_ratings_load(train_path, NULL, &tr, &err) != 0 ||
        cm_ratings_load(test_path, NULL, &te, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int rc = 1;
    double t_setup = s_clock(CLOCK_MONOTONIC);
    uint32_t *uloc = malloc((tr.n + 1) * sizeof *uloc), *iloc = malloc((tr.n + 1) * sizeof *iloc);
    uint64_t *ukeys = NULL, *ikeys = NULL;
    size_t nu = 0, ni = 0;
    float *U = NULL, *I = NULL;
    wk_rating *rat = NULL, *tmp = NULL;
    size_t *at = NULL, *gat = NULL;
    uint32_t *pu = NULL, *pi = NULL;
    s_grid g = {0};
    pthread_t *th = NULL;
    if (!uloc || !iloc || wk_blocks_index_keys(tr.user, tr.n, uloc, &ukeys, &nu) != 0 ||
        wk_blocks_index_keys(tr.item, tr.n, iloc, &ikeys, &ni) != 0)
        goto oom;
    double mean = 0;
    for (size_t j = 0; j < tr.n; j++)
        mean += tr.rating[j];
    mean /= tr.n ? (double)tr.n : 1.0;

    cm_optim o = cm_optim_default(kind, (float)lr);
    const int rdim = dim + 1;
    const size_t stride = wk_blocks_stride(rdim + cm_optim_state_floats(kind, rdim));
    U = s_alloc_rows((nu + 1) * stride * sizeof(float));
    I = s_alloc_rows((ni + 1) * stride * sizeof(float));
    rat = malloc((tr.n + 1) * sizeof *rat);
    at = calloc((size_t)bins * bins + 2, sizeof *at);
    if (!U || !I || !rat || !at)
        goto oom;
    /* bias 0, factors of spread init_std (a sum of four uniforms: close
     * enough to normal for a start, and cheap for millions of rows),
     * optimizer state as the server makes it */
    cm_rng rng;
    cm_rng_seed(&rng, seed);
    for (size_t r = 0; r < nu + ni; r++) {
        float *row = r < nu ? U + r * stride : I + (r - nu) * stride;
        memset(row, 0, stride * sizeof(float));
        for (int k = 1; k < rdim; k++) {
            uint64_t x = cm_rng_next(&rng);
            double sum = (double)(x & 0xFFFF) + (double)(x >> 16 & 0xFFFF) +
                         (double)(x >> 32 & 0xFFFF) + (double)(x >> 48);
            row[k] = (float)(init_std * (sum / 65536.0 - 2.0) * 1.7320508075688772);
        }
        cm_optim_init_state(&o, row, rdim);
    }
    /* LIBMF's layout: rows renumbered by a random permutation (so that any
     * order of ids gives even bins) and bins as ranges of the new numbers.
     * Inside a block the ratings are grouped by ranges of users whose rows
     * take about 256 KiB, as psrec's worker groups them, and each group is
     * shuffled once: two stable counting sorts, by group then by block. */
    pu = malloc((nu + 1) * sizeof *pu);
    pi = malloc((ni + 1) * sizeof *pi);
    tmp = malloc((tr.n + 1) * sizeof *tmp);
    const size_t gu = 256 * 1024 / (stride * sizeof(float)) + 1, ng = (nu + gu - 1) / gu;
    gat = calloc(ng + 2, sizeof *gat);
    if (!pu || !pi || !tmp || !gat)
        goto oom;
    for (size_t x = 0; x < nu; x++)
        pu[x] = (uint32_t)x;
    for (size_t x = 0; x < ni; x++)
        pi[x] = (uint32_t)x;
    cm_rng_shuffle_u32(&rng, pu, nu);
    cm_rng_shuffle_u32(&rng, pi, ni);
    for (size_t j = 0; j < tr.n; j++)
        gat[pu[uloc[j]] / gu + 2]++;
    for (size_t x = 0; x < ng; x++)
        gat[x + 2] += gat[x + 1];
    for (size_t j = 0; j < tr.n; j++) {
        uint32_t u = pu[uloc[j]];
        tmp[gat[u / gu + 1]++] = (wk_rating){u, pi[iloc[j]], tr.rating[j]};
    }
    free(uloc);
    free(iloc);
    uloc = iloc = NULL;
#define S_BLOCK(r) ((size_t)((uint64_t)(r).u * bins / nu) * bins + (size_t)((uint64_t)(r).i * bins / ni))
    for (size_t j = 0; j < tr.n; j++)
        at[S_BLOCK(tmp[j]) + 2]++;
    for (int b = 0; b < bins * bins; b++)
        at[b + 2] += at[b + 1];
    for (size_t j = 0; j < tr.n; j++)
        rat[at[S_BLOCK(tmp[j]) + 1]++] = tmp[j];
#undef S_BLOCK
    free(tmp);
    tmp = NULL;
    for (int b = 0; b < bins * bins; b++)
        for (size_t j = at[b]; j < at[b + 1];) {
            size_t e = j + 1;
            while (e < at[b + 1] && rat[e].u / gu == rat[j].u / gu)
                e++;
            for (size_t m = e - j; m > 1; m--) {
                size_t k = (size_t)cm_rng_below(&rng, m);
                wk_rating t = rat[j + m - 1];
                rat[j + m - 1] = rat[j + k];
                rat[j + k] = t;
            }
            j = e;
        }
    /* test rows by the same numbering; unseen users or items count with
     * what is known (mean and the other bias), as psrec scores them */
    wk_rating *test = malloc((te.n + 1) * sizeof *test);
    if (!test)
        goto oom;
    for (size_t j = 0; j < te.n; j++) {
        test[j].r = te.rating[j];
        size_t lo = 0, hi = nu;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (ukeys[mid] < te.user[j])
                lo = mid + 1;
            else
                hi = mid;
        }
        test[j].u = lo < nu && ukeys[lo] == te.user[j] ? pu[lo] : UINT32_MAX;
        lo = 0, hi = ni;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (ikeys[mid] < te.item[j])
                lo = mid + 1;
            else
                hi = mid;
        }
        test[j].i = lo < ni && ikeys[lo] == te.item[j] ? pi[lo] : UINT32_MAX;
    }
    t_setup = s_clock(CLOCK_MONOTONIC) - t_setup;

    g.bins = bins;
    g.dim = dim;
    g.threads = threads;
    g.opt = &o;
    g.ctx = (wk_model_ctx){.mean = (float)mean, .l2 = (float)l2, .clip_lo = 1, .clip_hi = 5};
    g.users = (wk_rows){U, stride};
    g.items = (wk_rows){I, stride};
    g.ratings = rat;
    g.block_at = at;
    g.row_busy = calloc((size_t)bins, 1);
    g.col_busy = calloc((size_t)bins, 1);
    g.done = calloc((size_t)bins * bins, 1);
    th = calloc((size_t)threads, sizeof *th);
    if (!g.row_busy || !g.col_busy || !g.done || !th) {
        free(test);
        goto oom;
    }
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    cm_rng_seed(&g.rng, seed ^ 0x5eedULL);
    /* rating range for clipping, as psrec's evaluation does */
    float rlo = INFINITY, rhi = -INFINITY;
    for (size_t j = 0; j < tr.n; j++) {
        rlo = tr.rating[j] < rlo ? tr.rating[j] : rlo;
        rhi = tr.rating[j] > rhi ? tr.rating[j] : rhi;
    }
    printf("sgd_baseline: %zu ratings, %zu users x %zu items, dim %d, %s, %d threads, "
           "%dx%d blocks, setup %.2f s\n",
           tr.n, nu, ni, dim, cm_optimizer_name(kind), threads, bins, bins, t_setup);
    double sum_rate = 0, sum_cpu_rate = 0, sum_s = 0, rmse = NAN;
    int counted = 0;
    for (int e = 1; e <= epochs; e++) {
        memset(g.done, 0, (size_t)bins * bins);
        g.left = bins * bins;
        g.sq = 0;
        double w0 = s_clock(CLOCK_MONOTONIC), c0 = s_clock(CLOCK_PROCESS_CPUTIME_ID);
        int started = 0;
        for (int t = 0; t < threads; t++)
            if (pthread_create(&th[t], NULL, s_thread, &g) == 0)
                started++;
        for (int t = 0; t < started; t++)
            pthread_join(th[t], NULL);
        double secs = s_clock(CLOCK_MONOTONIC) - w0;
        double cpu = s_clock(CLOCK_PROCESS_CPUTIME_ID) - c0;
        if (started == 0) {
            fprintf(stderr, "sgd_baseline: could not start threads\n");
            free(test);
            goto out;
        }
        double tsq = 0;
        for (size_t j = 0; j < te.n; j++) {
            const float *p = test[j].u != UINT32_MAX ? U + (size_t)test[j].u * stride : NULL;
            const float *q = test[j].i != UINT32_MAX ? I + (size_t)test[j].i * stride : NULL;
            double pr = mean + (p ? p[0] : 0) + (q ? q[0] : 0);
            if (p && q)
                for (int k = 1; k < rdim; k++)
                    pr += (double)p[k] * q[k];
            pr = pr < rlo ? rlo : pr > rhi ? rhi : pr;
            tsq += (pr - test[j].r) * (pr - test[j].r);
        }
        rmse = te.n ? sqrt(tsq / (double)te.n) : NAN;
        printf("epoch %3d  train_rmse %.4f  test_rmse %.4f  %.2fM updates/s  "
               "%.2fM updates/cpu-s  %.3f s\n",
               e, sqrt(g.sq / (double)(tr.n ? tr.n : 1)), rmse, (double)tr.n / secs / 1e6,
               (double)tr.n / cpu / 1e6, secs);
        fflush(stdout);
        if (e > 1 || epochs == 1) {
            sum_rate += (double)tr.n / secs;
            sum_cpu_rate += (double)tr.n / cpu;
            sum_s += secs;
            counted++;
        }
    }
    printf("summary updates_per_s %.0f cpu_updates_per_s %.0f seconds_per_epoch %.4f "
           "test_rmse %.4f noise_floor %.4f\n",
           sum_rate / counted, sum_cpu_rate / counted, sum_s / counted, rmse, tr.noise_floor);
    free(test);
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&g.cv);
    rc = 0;
    goto out;
oom:
    fprintf(stderr, "sgd_baseline: out of memory\n");
out:
    free(uloc);
    free(iloc);
    free(ukeys);
    free(ikeys);
    free(U);
    free(I);
    free(rat);
    free(tmp);
    free(at);
    free(gat);
    free(pu);
    free(pi);
    free(g.row_busy);
    free(g.col_busy);
    free(g.done);
    free(th);
    cm_ratings_free(&tr);
    cm_ratings_free(&te);
    return rc;
}
