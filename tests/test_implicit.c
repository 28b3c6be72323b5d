/* Implicit feedback: loss gradients, negative samplers, positives and the
 * popularity ranking (worker/implicit_train.h, worker/models/implicit.c). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"
#include "common/rng.h"
#include "worker/implicit_train.h"
#include "worker/models/model.h"

enum { D = 5 }; /* rows [bias, 4 factors] */

static void s_fill(cm_rng *rng, float *x, int n)
{
    for (int k = 0; k < n; k++)
        x[k] = (float)(cm_rng_uniform(rng) - 0.5);
}

static double s_sq(const float *x, int from, int n)
{
    double s = 0;
    for (int k = from; k < n; k++)
        s += (double)x[k] * x[k];
    return s;
}

/* BPR objective with its regulariser, as the gradient is defined */
static double s_bpr_obj(const float *p, const float *qi, const float *qj, float l2)
{
    float g[3][D] = {{0}};
    double data = wk_bpr_grad(p, qi, qj, D, l2, g[0], g[1], g[2]);
    return data + l2 / 2 * (s_sq(p, 1, D) + s_sq(qi, 0, D) + s_sq(qj, 0, D));
}

static double s_log_obj(const float *p, const float *q, float y, float l2)
{
    float g[2][D] = {{0}};
    double data = wk_logistic_grad(p, q, D, y, l2, g[0], g[1]);
    return data + l2 / 2 * (s_sq(p, 1, D) + s_sq(q, 0, D));
}

Test(implicit, bpr_gradient_matches_finite_differences)
{
    cm_rng rng;
    cm_rng_seed(&rng, 7);
    for (int trial = 0; trial < 20; trial++) {
        float v[3][D], g[3][D] = {{0}};
        for (int r = 0; r < 3; r++)
            s_fill(&rng, v[r], D);
        const float l2 = trial % 2 ? 0.1f : 0.f;
        wk_bpr_grad(v[0], v[1], v[2], D, l2, g[0], g[1], g[2]);
        cr_expect_eq(g[0][0], 0.f, "the user bias is not trained");
        for (int r = 0; r < 3; r++)
            for (int k = 0; k < D; k++) {
                const float h = 1e-2f, x = v[r][k];
                v[r][k] = x + h;
                double up = s_bpr_obj(v[0], v[1], v[2], l2);
                v[r][k] = x - h;
                double down = s_bpr_obj(v[0], v[1], v[2], l2);
                v[r][k] = x;
                double fd = (up - down) / (2 * h);
                cr_assert(fabs(fd - g[r][k]) < 2e-3,
                          "trial %d row %d k %d: gradient %g, finite difference %g", trial, r,
                          k, g[r][k], fd);
            }
    }
}

Test(implicit, logistic_gradient_matches_finite_differences)
{
    cm_rng rng;
    cm_rng_seed(&rng, 8);
    for (int trial = 0; trial < 20; trial++) {
        float v[2][D], g[2][D] = {{0}};
        for (int r = 0; r < 2; r++)
            s_fill(&rng, v[r], D);
        const float y = (float)(trial % 2), l2 = trial % 3 ? 0.05f : 0.f;
        wk_logistic_grad(v[0], v[1], D, y, l2, g[0], g[1]);
        cr_expect_eq(g[0][0], 0.f);
        for (int r = 0; r < 2; r++)
            for (int k = 0; k < D; k++) {
                const float h = 1e-2f, x = v[r][k];
                v[r][k] = x + h;
                double up = s_log_obj(v[0], v[1], y, l2);
                v[r][k] = x - h;
                double down = s_log_obj(v[0], v[1], y, l2);
                v[r][k] = x;
                double fd = (up - down) / (2 * h);
                cr_assert(fabs(fd - g[r][k]) < 2e-3, "trial %d row %d k %d: %g vs %g", trial,
                          r, k, g[r][k], fd);
            }
    }
}

Test(implicit, bpr_update_by_hand)
{
    /* p = (0 | 1, 0), qi = (0.5 | 1, 1), qj = (0 | 0, 1):
     * s(u,i) = 0.5 + 1 = 1.5, s(u,j) = 0, x = 1.5
     * loss = log(1 + e^-1.5) = 0.2014133, g = -sigmoid(-1.5) = -0.1824255
     * gp = g (qi - qj) = (0 | g, 0); gi = (g | g, 0); gj = (-g | -g, 0)
     * one SGD step of lr 0.1 moves p_1 to 1 + 0.01824255 */
    float p[3] = {0, 1, 0}, qi[3] = {0.5f, 1, 1}, qj[3] = {0, 0, 1};
    float gp[3] = {0}, gi[3] = {0}, gj[3] = {0};
    double loss = wk_bpr_grad(p, qi, qj, 3, 0.f, gp, gi, gj);
    const float g = -0.18242552f;
    cr_expect(fabs(loss - 0.20141328) < 1e-6, "loss %g", loss);
    cr_expect(fabsf(gp[0]) == 0 && fabsf(gp[1] - g) < 1e-6f && fabsf(gp[2]) < 1e-7f);
    cr_expect(fabsf(gi[0] - g) < 1e-6f && fabsf(gi[1] - g) < 1e-6f && fabsf(gi[2]) < 1e-7f);
    cr_expect(fabsf(gj[0] + g) < 1e-6f && fabsf(gj[1] + g) < 1e-6f && fabsf(gj[2]) < 1e-7f);
    for (int k = 0; k < 3; k++)
        p[k] -= 0.1f * gp[k];
    cr_expect(fabsf(p[1] - 1.01824255f) < 1e-6f, "p_1 after the step: %g", p[1]);
    /* the step raised the margin */
    cr_expect_gt(wk_implicit_score(p, qi, 3) - wk_implicit_score(p, qj, 3), 1.5f);
    /* gradients add up: a second call doubles them */
    wk_bpr_grad((float[]){0, 1, 0}, qi, qj, 3, 0.f, gp, gi, gj);
    cr_expect(fabsf(gi[0] - 2 * g) < 1e-6f);
    /* l2 adds l2 * weight per occurrence, never to the user bias */
    float gp2[3] = {0}, gi2[3] = {0}, gj2[3] = {0};
    float pb[3] = {7, 1, 0};
    wk_bpr_grad(pb, qi, qj, 3, 0.5f, gp2, gi2, gj2);
    cr_expect_eq(gp2[0], 0.f);
    cr_expect(fabsf(gp2[1] - (g + 0.5f)) < 1e-6f);
    cr_expect(fabsf(gi2[0] - (g + 0.25f)) < 1e-6f);
}

Test(implicit, logistic_by_hand)
{
    /* s = 0.5 + 1 = 1.5; y = 1: loss = log(1 + e^-1.5), g = sigmoid(1.5) - 1 */
    float p[3] = {0, 1, 0}, q[3] = {0.5f, 1, 1}, gp[3] = {0}, gq[3] = {0};
    double loss = wk_logistic_grad(p, q, 3, 1.f, 0.f, gp, gq);
    cr_expect(fabs(loss - 0.20141328) < 1e-6);
    cr_expect(fabsf(gq[0] + 0.18242552f) < 1e-6f);
    /* y = 0: loss = log(1 + e^1.5), g = sigmoid(1.5) */
    float gp0[3] = {0}, gq0[3] = {0};
    loss = wk_logistic_grad(p, q, 3, 0.f, 0.f, gp0, gq0);
    cr_expect(fabs(loss - 1.70141328) < 1e-6, "loss %g", loss);
    cr_expect(fabsf(gq0[0] - 0.81757448f) < 1e-6f);
    cr_expect(fabsf(gp0[2] - 0.81757448f) < 1e-6f, "gp_2 = g q_2");
    /* far from the boundary the loss stays finite */
    float big[3] = {80, 0, 0};
    float g1[3] = {0}, g2[3] = {0};
    cr_expect(isfinite(wk_logistic_grad(p, big, 3, 0.f, 0.f, g1, g2)));
    cr_expect(fabs(wk_logistic_grad(p, big, 3, 1.f, 0.f, g1, g2)) < 1e-12);
}

Test(implicit, model_ops)
{
    const wk_model_ops *m = wk_model_find("implicit");
    cr_assert_not_null(m);
    cr_expect_str_eq(m->name, "implicit");
    cr_assert_eq(m->n_tables, 2);
    cr_expect_str_eq(m->table_names[0], "user");
    cr_expect_str_eq(m->table_names[1], "item");
    cm_job job = cm_job_default();
    job.dim = 8;
    cm_table_spec tp[2];
    for (int t = 0; t < 2; t++) {
        m->table_params(&job, (size_t)t, &tp[t]);
        cr_expect_eq(tp[t].dim, 9, "rows are [bias, 8 factors]");
        cr_expect_eq(tp[t].zero_prefix, 1, "biases start at 0");
    }
    cr_expect_neq(tp[0].seed, tp[1].seed);
    cr_expect_null(m->train_local, "no blocks schedule");
    /* labelled pairs through the ops: logistic loss and scores */
    float urows[2 * 3] = {0, 1, 0, 0, 0, 1};
    float irows[1 * 3] = {0.5f, 1, 1};
    float ug[6] = {0}, ig[3] = {0};
    const uint32_t uidx[2] = {0, 1}, iidx[2] = {0, 0};
    const float label[2] = {1, 0};
    wk_batch b = {2, uidx, iidx, label};
    wk_model_ctx ctx = {0};
    const float *rows[2] = {urows, irows};
    float *grads[2] = {ug, ig};
    double loss = m->train(&ctx, &b, 3, rows, grads);
    /* both pairs score 1.5: log(1 + e^-1.5) + log(1 + e^1.5) */
    cr_expect(fabs(loss - (0.20141328 + 1.70141328)) < 1e-5, "loss %g", loss);
    cr_expect(fabsf(ig[0] - (-0.18242552f + 0.81757448f)) < 1e-5f);
    float pred[2];
    m->predict(&ctx, &b, 3, rows, pred);
    cr_expect(fabsf(pred[0] - 1.5f) < 1e-6f && fabsf(pred[1] - 1.5f) < 1e-6f);
}

/* ---------------------------------------------------------------------
 * Samplers
 * ------------------------------------------------------------------- */

Test(implicit, uniform_sampler_frequencies)
{
    enum { N = 10, DRAWS = 200000 };
    cm_error err = {0};
    wk_sampler *s = wk_sampler_new(CM_SAMPLER_UNIFORM, NULL, N, &err);
    cr_assert_not_null(s, "%s", err.msg);
    cm_rng rng;
    cm_rng_seed(&rng, 1);
    size_t hist[N] = {0};
    for (int d = 0; d < DRAWS; d++) {
        uint32_t i = wk_sampler_draw(s, &rng);
        cr_assert_lt(i, N);
        hist[i]++;
    }
    /* sd of a frequency: sqrt(0.1 * 0.9 / 2e5) = 0.00067; allow 7 sd */
    for (int i = 0; i < N; i++)
        cr_expect(fabs((double)hist[i] / DRAWS - 0.1) < 0.005, "item %d: %zu", i, hist[i]);
    wk_sampler_destroy(&s);
    cr_expect_null(s);
    wk_sampler_destroy(&s); /* no-op on NULL */
}

Test(implicit, popularity_sampler_frequencies)
{
    enum { N = 6, DRAWS = 300000 };
    const float counts[N] = {1, 2, 3, 4, 0, 10};
    cm_error err = {0};
    wk_sampler *s = wk_sampler_new(CM_SAMPLER_POPULARITY, counts, N, &err);
    cr_assert_not_null(s, "%s", err.msg);
    cm_rng rng;
    cm_rng_seed(&rng, 2);
    size_t hist[N] = {0};
    for (int d = 0; d < DRAWS; d++)
        hist[wk_sampler_draw(s, &rng)]++;
    for (int i = 0; i < N; i++)
        cr_expect(fabs((double)hist[i] / DRAWS - counts[i] / 20.0) < 0.005,
                  "item %d: %.4f, want %.4f", i, (double)hist[i] / DRAWS, counts[i] / 20.0);
    cr_expect_eq(hist[4], 0, "an item without positives is never drawn");
    /* excluding items 0 and 5: the rest in proportion 2 : 3 : 4 */
    const uint32_t excl[] = {0, 5};
    size_t h2[N] = {0};
    for (int d = 0; d < DRAWS; d++) {
        uint32_t i = wk_sampler_draw_excluding(s, &rng, excl, 2, 64);
        cr_assert_neq(i, WK_NO_NEGATIVE);
        h2[i]++;
    }
    cr_expect_eq(h2[0] + h2[5] + h2[4], 0, "excluded items never come back");
    for (int i = 1; i <= 3; i++)
        cr_expect(fabs((double)h2[i] / DRAWS - (i + 1) / 9.0) < 0.006, "item %d: %.4f", i,
                  (double)h2[i] / DRAWS);
    /* everything excluded: no negative, after the allowed tries */
    const uint32_t all[] = {0, 1, 2, 3, 4, 5};
    cr_expect_eq(wk_sampler_draw_excluding(s, &rng, all, N, 10), WK_NO_NEGATIVE);
    wk_sampler_destroy(&s);
}

Test(implicit, uniform_sampler_excludes_training_positives)
{
    cm_error err = {0};
    wk_sampler *s = wk_sampler_new(CM_SAMPLER_UNIFORM, NULL, 5, &err);
    cr_assert_not_null(s);
    cm_rng rng;
    cm_rng_seed(&rng, 3);
    const uint32_t excl[] = {1, 2, 4};
    size_t h[5] = {0};
    for (int d = 0; d < 20000; d++)
        h[wk_sampler_draw_excluding(s, &rng, excl, 3, 64)]++;
    cr_expect_eq(h[1] + h[2] + h[4], 0);
    cr_expect(h[0] > 9000 && h[3] > 9000, "%zu %zu", h[0], h[3]);
    wk_sampler_destroy(&s);
}

Test(implicit, sampler_refuses_bad_counts)
{
    cm_error err = {0};
    cr_expect_null(wk_sampler_new(CM_SAMPLER_UNIFORM, NULL, 0, &err));
    cr_expect_eq(err.code, CM_EINVAL);
    const float neg[] = {1, -1};
    cr_expect_null(wk_sampler_new(CM_SAMPLER_POPULARITY, neg, 2, &err));
    cr_expect(strstr(err.msg, "item 1") != NULL, "%s", err.msg);
    const float nan[] = {1, NAN};
    cr_expect_null(wk_sampler_new(CM_SAMPLER_POPULARITY, nan, 2, &err));
    const float zero[] = {0, 0};
    cr_expect_null(wk_sampler_new(CM_SAMPLER_POPULARITY, zero, 2, &err));
    cr_expect(strstr(err.msg, "every item count is 0") != NULL, "%s", err.msg);
    cr_expect_null(wk_sampler_new(CM_SAMPLER_POPULARITY, NULL, 2, &err));
    cr_expect_null(wk_sampler_new(7, NULL, 2, &err));
}

/* ---------------------------------------------------------------------
 * Positives and the popularity ranking
 * ------------------------------------------------------------------- */

Test(implicit, positives_by_threshold)
{
    const uint64_t u[] = {1, 1, 2, 3};
    const uint64_t i[] = {10, 20, 10, 30};
    const float r[] = {5, 3, 4, -1};
    cm_ratings all = {0}, pos = {0};
    cm_error err = {0};
    cr_assert_eq(cm_ratings_from_arrays(u, i, r, 4, &all, &err), 0);
    cr_assert_eq(wk_implicit_positives(&all, 4, &pos, &err), 0, "%s", err.msg);
    cr_expect_eq(pos.n, 2);
    cr_expect(pos.user[0] == 1 && pos.item[0] == 10 && pos.user[1] == 2 && pos.item[1] == 10);
    cm_ratings_free(&pos);
    cr_assert_eq(wk_implicit_positives(&all, 0, &pos, &err), 0);
    cr_expect_eq(pos.n, 4, "threshold 0 keeps every row, a negative rating too");
    cm_ratings_free(&pos);
    cr_assert_eq(wk_implicit_positives(&all, 6, &pos, &err), 0);
    cr_expect_eq(pos.n, 0);
    cm_ratings_free(&pos);
    cm_ratings_free(&all);
}

static void s_ratings(cm_ratings *out, const uint64_t *u, const uint64_t *i, size_t n)
{
    float r[16];
    for (size_t j = 0; j < n; j++)
        r[j] = 1;
    cm_error err = {0};
    cr_assert_eq(cm_ratings_from_arrays(u, i, r, n, out, &err), 0, "%s", err.msg);
}

Test(implicit, popularity_ranking_by_hand)
{
    /* universe 10..50 with positives 5 3 3 1 2: by popularity 10, 20, 30
     * (tie with 20: the smaller key first), 50, 40.
     * user 1 trained on {10}: tops 20, 30; tests {30, 40, 99 (unknown)}
     *   recall 1/min(2, 2), ndcg (1/log2 3) / (1 + 1/log2 3), hit
     * user 2 trained on {20, 40}: tops 10, 30; tests {10, 20 (a repeat)}
     *   recall 1/1, ndcg 1, hit
     * user 3 has no training positive: skipped */
    const uint64_t items[] = {10, 20, 30, 40, 50};
    const float counts[] = {5, 3, 3, 1, 2};
    const uint64_t tu[] = {1, 2, 2}, ti[] = {10, 40, 20};
    const uint64_t eu[] = {2, 1, 1, 1, 2, 3, 1}, ei[] = {10, 30, 40, 99, 20, 10, 30};
    cm_ratings train = {0}, test = {0};
    s_ratings(&train, tu, ti, 3);
    s_ratings(&test, eu, ei, 7);
    cm_job job = cm_job_default();
    job.model[0] = '\0';
    job.top_k = 2;
    job.batch = 4;
    const int dims[2] = {3, 3};
    cm_error err = {0};
    wk_implicit *im = wk_implicit_new(&job, &train, &test, items, counts, 5, dims, &err);
    cr_assert_not_null(im, "%s", err.msg);
    cm_ranking_done st;
    memset(&st, 0x5a, sizeof st); /* every field it reports is set */
    wk_implicit_eval_popularity(im, &st);
    double nd1 = (1 / log2(3.0)) / (1 + 1 / log2(3.0));
    cr_expect(fabs(st.pop_recall - 1.5) < 1e-9, "recall sum %g", st.pop_recall);
    cr_expect(fabs(st.pop_ndcg - (1 + nd1)) < 1e-9, "ndcg sum %g", st.pop_ndcg);
    cr_expect_eq(st.pop_hit, 2);
    cr_expect_eq(st.users, 2);
    cr_expect_eq(st.cold_users, 1);
    cr_expect_eq(st.cold_items, 1);
    cr_expect_eq(st.repeats, 1);
    cr_expect_eq(st.positives, 3, "30 and 40 of user 1, 10 of user 2");
    wk_implicit_destroy(&im);
    cr_expect_null(im);
    wk_implicit_destroy(&im);

    /* a training item missing from the universe: the scheduler's list is
     * wrong, an error and not a crash */
    const uint64_t few[] = {10, 20, 30};
    im = wk_implicit_new(&job, &train, &test, few, counts, 3, dims, &err);
    cr_expect_null(im);
    cr_expect_eq(err.code, CM_EPROTO);
    cr_expect(strstr(err.msg, "40") != NULL, "%s", err.msg);
    /* an unsorted universe */
    const uint64_t unsorted[] = {10, 30, 20, 40, 50};
    cr_expect_null(wk_implicit_new(&job, &train, &test, unsorted, counts, 5, dims, &err));
    cr_expect_eq(err.code, CM_EPROTO);
    /* popularity sampling needs counts that are not all 0 */
    const float zeros[] = {0, 0, 0, 0, 0};
    job.sampler = CM_SAMPLER_POPULARITY;
    cr_expect_null(wk_implicit_new(&job, &train, &test, items, zeros, 5, dims, &err));
    cm_ratings_free(&train);
    cm_ratings_free(&test);
}

Test(implicit, no_test_set_scores_nothing)
{
    const uint64_t items[] = {10, 20};
    const float counts[] = {1, 1};
    const uint64_t tu[] = {1}, ti[] = {10};
    cm_ratings train = {0};
    s_ratings(&train, tu, ti, 1);
    cm_job job = cm_job_default();
    const int dims[2] = {3, 3};
    cm_error err = {0};
    wk_implicit *im = wk_implicit_new(&job, &train, NULL, items, counts, 2, dims, &err);
    cr_assert_not_null(im, "%s", err.msg);
    cm_ranking_done st;
    wk_implicit_eval_popularity(im, &st);
    cr_expect_eq(st.users, 0);
    cr_expect_eq(st.pop_recall, 0);
    wk_implicit_destroy(&im);
    /* mismatched row widths are refused */
    const int bad[2] = {3, 4};
    cr_expect_null(wk_implicit_new(&job, &train, NULL, items, counts, 2, bad, &err));
    cm_ratings_free(&train);
}

Test(implicit, model_defaults_fill_only_unset_keys)
{
    cm_job job = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_set(&job, "model", "implicit", "test", &err), 0, "%s", err.msg);
    cr_assert_eq(cm_job_set(&job, "dim", "16", "test", &err), 0, "%s", err.msg);
    cm_job_model_defaults(&job);
    cr_expect_eq(job.dim, 16, "set by the user: kept");
    cr_expect(fabs(job.l2 - 0.03) < 1e-12, "l2 %g", job.l2);
    cr_expect(fabs(job.lr - 0.05) < 1e-12, "lr %g", job.lr);
    cr_expect_eq(job.epochs, 30);
    cr_expect_eq(job.negatives, 4);
    cr_expect(fabs(job.init_std - 0.1) < 1e-12);
    /* other models keep theirs */
    cm_job mf = cm_job_default();
    cm_job_model_defaults(&mf);
    cr_expect_eq(mf.dim, cm_job_default().dim);
    cr_expect(fabs(mf.l2 - cm_job_default().l2) < 1e-12);
}
