/* MF kernel micro-benchmark: the blocks schedule's per-rating SGD step
 * (wk_model_mf.train_local) on one thread, without the cluster around it.
 *
 * Loads a .psrd training file, maps users and items to dense rows, groups
 * the ratings by ranges of users the way worker/blocks.c does for one
 * worker (one block holding every item), and runs epochs of train_local
 * over them. Reports updates per second of this thread's CPU time (so other
 * work on the machine does not move the figure much), the ordering cost
 * apart, and with a test file the test RMSE after each epoch, so that
 * kernel changes can be checked for speed and quality at once.
 *
 *   build/mf_kernel_bench TRAIN.psrd [TEST.psrd] [--epochs E] [--dim K]
 *       [--optimizer adagrad|rowwise_adagrad|sgd] [--lr X] [--l2 X]
 *       [--order shuffle|fixed] [--huge]
 * --order fixed shuffles each group once, then starts every later epoch at
 * a random place in it instead of shuffling again. --huge asks for
 * transparent huge pages for the rows (fewer TLB misses on large shapes). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "common/config.h"
#include "common/dataset.h"
#include "common/hashmap.h"
#include "common/rng.h"
#include "common/optim.h"
#include "ps/table.h"
#include "worker/models/model.h"

static double s_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Dense row of key, adding it when new; UINT32_MAX on failure. */
static uint32_t s_index(cm_hashmap *m, uint64_t key)
{
    uint32_t v = 0;
    if (cm_hashmap_upsert(m, key, (uint32_t)cm_hashmap_size(m), &v, NULL) != 0)
        return UINT32_MAX;
    return v;
}

int main(int argc, char **argv)
{
    const char *train_path = NULL, *test_path = NULL;
    int epochs = 3, dim = 32, kind = CM_OPT_ADAGRAD, fixed = 0, huge = 0;
    float lr = 0.07f, l2 = 0.05f;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--epochs") && a + 1 < argc)
            epochs = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--dim") && a + 1 < argc)
            dim = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--lr") && a + 1 < argc)
            lr = strtof(argv[++a], NULL);
        else if (!strcmp(argv[a], "--l2") && a + 1 < argc)
            l2 = strtof(argv[++a], NULL);
        else if (!strcmp(argv[a], "--huge"))
            huge = 1;
        else if (!strcmp(argv[a], "--order") && a + 1 < argc)
            fixed = !strcmp(argv[++a], "fixed");
        else if (!strcmp(argv[a], "--optimizer") && a + 1 < argc) {
            const char *o = argv[++a];
            kind = !strcmp(o, "sgd")               ? CM_OPT_SGD
                   : !strcmp(o, "rowwise_adagrad") ? CM_OPT_ROWWISE
                   : !strcmp(o, "adagrad")         ? CM_OPT_ADAGRAD
                                                   : -1;
        } else if (argv[a][0] != '-' && !train_path)
            train_path = argv[a];
        else if (argv[a][0] != '-' && !test_path)
            test_path = argv[a];
        else {
            fprintf(stderr, "usage: %s TRAIN.psrd [TEST.psrd] [--epochs E] [--dim K] "
                            "[--optimizer adagrad|rowwise_adagrad|sgd] [--lr X] [--l2 X]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!train_path || kind < 0 || epochs < 1 || dim < 1 || dim > 1024) {
        fprintf(stderr, "%s: need a training file, a known optimizer, epochs >= 1, "
                        "1 <= dim <= 1024\n", argv[0]);
        return 2;
    }
    cm_error err = {0};
    cm_ratings tr = {0}, te = {0};
    if (cm_ratings_load(train_path, NULL, &tr, &err) != 0 ||
        (test_path && cm_ratings_load(test_path, NULL, &te, &err) != 0)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    cm_hashmap *um = cm_hashmap_new(1 << 20), *im = cm_hashmap_new(1 << 18);
    uint32_t *uix = malloc((tr.n + 1) * sizeof *uix), *iix = malloc((tr.n + 1) * sizeof *iix);
    if (!um || !im || !uix || !iix) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    double mean = 0;
    for (size_t j = 0; j < tr.n; j++) {
        uix[j] = s_index(um, tr.user[j]);
        iix[j] = s_index(im, tr.item[j]);
        if (uix[j] == UINT32_MAX || iix[j] == UINT32_MAX) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        mean += tr.rating[j];
    }
    mean /= tr.n ? (double)tr.n : 1.0;
    size_t nu = cm_hashmap_size(um), ni = cm_hashmap_size(im);

    /* rows as the worker holds them: weights (bias first) then state */
    cm_optim o = cm_optim_default(kind, lr);
    const int rdim = dim + 1;
    const size_t rf = (size_t)rdim + (size_t)cm_optim_state_floats(kind, rdim);
    const size_t stride = (rf + 15) / 16 * 16;
    const size_t hp = 2u << 20;
    size_t ub = ((nu + 1) * stride * sizeof(float) + hp - 1) / hp * hp;
    size_t ib = ((ni + 1) * stride * sizeof(float) + hp - 1) / hp * hp;
    float *U = aligned_alloc(hp, ub);
    float *I = aligned_alloc(hp, ib);
    if (!U || !I) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    if (huge && (madvise(U, ub, MADV_HUGEPAGE) != 0 || madvise(I, ib, MADV_HUGEPAGE) != 0))
        fprintf(stderr, "madvise(MADV_HUGEPAGE) failed; going on with small pages\n");
    cm_rng rng;
    cm_rng_seed(&rng, 42);
    for (size_t r = 0; r < nu + ni; r++) {
        float *row = r < nu ? U + r * stride : I + (r - nu) * stride;
        memset(row, 0, stride * sizeof(float));
        for (int k = 1; k < rdim; k++)
            row[k] = (float)(0.05 * cm_rng_normal(&rng));
        cm_optim_init_state(&o, row, rdim);
    }

    /* groups of users whose rows take about 256 KiB, as blocks.c does */
    size_t gu = (256 * 1024) / (stride * sizeof(float)) + 1;
    size_t ng = (nu + gu - 1) / gu;
    size_t *at = calloc(ng + 2, sizeof *at);
    wk_rating *canon = malloc((tr.n + 1) * sizeof *canon);
    wk_rating *work = malloc((tr.n + 1) * sizeof *work);
    uint32_t *order = malloc((ng + 1) * sizeof *order);
    if (!at || !canon || !work || !order) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (size_t j = 0; j < tr.n; j++)
        at[uix[j] / gu + 2]++;
    for (size_t g = 0; g < ng; g++)
        at[g + 2] += at[g + 1];
    for (size_t j = 0; j < tr.n; j++)
        canon[at[uix[j] / gu + 1]++] = (wk_rating){uix[j], iix[j], tr.rating[j]};

    wk_model_ctx ctx = {.mean = (float)mean, .l2 = l2, .clip_lo = 1, .clip_hi = 5};
    printf("%zu ratings, %zu users x %zu items, dim %d, %s, row %zu floats (stride %zu)\n",
           tr.n, nu, ni, dim, cm_optimizer_name(kind), rf, stride);

    /* What a blocks worker pays to make its user rows (cm_table_spec_init_row and
     * the optimizer state, as worker/blocks.c does), written to one spare
     * row so that only the arithmetic is timed and the rows trained below
     * stay as they are. */
    float *spare = aligned_alloc(64, stride * sizeof(float));
    if (!spare) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    cm_table_spec up = {.dim = rdim, .zero_prefix = 1, .init_std = 0.05f, .seed = 42, .optim = o};
    double t_init = s_cpu();
    for (size_t u = 0; u < nu; u++) {
        cm_table_spec_init_row(&up, u, spare);
        cm_optim_init_state(&o, spare, rdim);
    }
    t_init = s_cpu() - t_init;
    printf("user row init: %.1f ns per row, %.2f ns per initial weight\n",
           nu ? t_init * 1e9 / (double)nu : 0.0, nu ? t_init * 1e9 / (double)(nu * (size_t)dim) : 0.0);
    free(spare);
    printf("%5s %14s %14s %12s %10s %10s\n", "epoch", "Mupd/cpu-s", "order cpu-s",
           "kernel cpu-s", "train_rmse", "test_rmse");
    double best = 0;
    for (int e = 1; e <= epochs; e++) {
        for (uint32_t g = 0; g < ng; g++)
            order[g] = g;
        cm_rng_shuffle_u32(&rng, order, ng);
        double t_order = 0, t_kernel = 0, sq = 0;
        for (size_t gi = 0; gi < ng; gi++) {
            size_t g = order[gi], m = at[g + 1] - at[g];
            wk_rating *r = work + at[g];
            double c0 = s_cpu();
            size_t rot = 0;
            if (fixed && e > 1)
                rot = (size_t)cm_rng_below(&rng, m ? m : 1);
            else
                memcpy(r, canon + at[g], m * sizeof *r);
            for (size_t j = rot ? 0 : m; j > 1; j--) {
                size_t k = (size_t)cm_rng_below(&rng, j);
                wk_rating t = r[j - 1];
                r[j - 1] = r[k];
                r[k] = t;
            }
            double c1 = s_cpu();
            sq += wk_model_mf.train_local(&ctx, &o, r + rot, m - rot, rdim,
                                          (wk_rows){U, stride}, (wk_rows){I, stride});
            sq += wk_model_mf.train_local(&ctx, &o, r, rot, rdim, (wk_rows){U, stride},
                                          (wk_rows){I, stride});
            t_kernel += s_cpu() - c1;
            t_order += c1 - c0;
        }
        double test_sq = 0;
        size_t test_n = 0;
        for (size_t j = 0; j < te.n; j++) {
            uint32_t u, i;
            if (!cm_hashmap_get(um, te.user[j], &u) || !cm_hashmap_get(im, te.item[j], &i))
                continue;
            const float *p = U + (size_t)u * stride, *q = I + (size_t)i * stride;
            double pr = mean + p[0] + q[0];
            for (int k = 1; k < rdim; k++)
                pr += (double)p[k] * q[k];
            pr = pr < 1 ? 1 : pr > 5 ? 5 : pr;
            test_sq += (pr - te.rating[j]) * (pr - te.rating[j]);
            test_n++;
        }
        double rate = (double)tr.n / t_kernel / 1e6;
        best = rate > best ? rate : best;
        printf("%5d %14.2f %14.3f %12.3f %10.4f %10.4f\n", e, rate, t_order, t_kernel,
               sqrt(sq / (double)tr.n), test_n ? sqrt(test_sq / (double)test_n) : NAN);
        fflush(stdout);
    }
    printf("best %.2f M updates per CPU second (kernel only); noise floor %.4f\n", best,
           tr.noise_floor);
    free(U);
    free(I);
    free(at);
    free(canon);
    free(work);
    free(order);
    free(uix);
    free(iix);
    cm_hashmap_destroy(&um);
    cm_hashmap_destroy(&im);
    cm_ratings_free(&tr);
    cm_ratings_free(&te);
    return 0;
}
