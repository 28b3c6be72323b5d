/* Tests for common/table_spec.c: the checks, the sparse and dense initial
 * rows (the dense one against draws made here straight from cm_rng), and
 * a fresh row's state. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "common/config.h"
#include "common/rng.h"
#include "common/table_spec.h"

static cm_table_spec s_spec(int dim)
{
    cm_table_spec s;
    memset(&s, 0, sizeof s);
    s.dim = dim;
    s.zero_prefix = 1;
    s.init_std = 0.1f;
    s.seed = 77;
    s.optim = cm_optim_default(CM_OPT_ADAGRAD, 0.05f);
    return s;
}

Test(table_spec, check_accepts_and_refuses)
{
    cm_error e = {0};
    cm_table_spec s = s_spec(8);
    cr_assert_eq(cm_table_spec_check(&s, &e), 0, "%s", e.msg);
    cr_expect_eq(cm_table_spec_check(NULL, &e), CM_EINVAL);

    s.dim = 0;
    cr_expect_eq(cm_table_spec_check(&s, &e), CM_EINVAL);
    cr_expect(strstr(e.msg, "dim") != NULL, "%s", e.msg);
    s = s_spec(8);
    s.zero_prefix = 9;
    cr_expect_eq(cm_table_spec_check(&s, &e), CM_EINVAL);
    cr_expect(strstr(e.msg, "zero_prefix") != NULL, "%s", e.msg);
    s = s_spec(8);
    s.init_std = NAN;
    cr_expect_eq(cm_table_spec_check(&s, &e), CM_EINVAL);
    cr_expect(strstr(e.msg, "init_std") != NULL, "%s", e.msg);
    s = s_spec(8);
    s.optim.lr = -1.0f;
    cr_expect_eq(cm_table_spec_check(&s, &e), CM_EINVAL);
    cr_expect(strstr(e.msg, "lr") != NULL, "%s", e.msg);

    /* dense segments: in order, apart, with a usable std */
    s = s_spec(8);
    s.dense.n = 2;
    s.dense.seg[0] = (cm_dense_seg){0, 10, 1.0};
    s.dense.seg[1] = (cm_dense_seg){10, 5, 0.5};
    cr_expect_eq(cm_table_spec_check(&s, &e), 0, "%s", e.msg);
    s.dense.seg[1].off = 9;
    cr_expect_eq(cm_table_spec_check(&s, &e), CM_EINVAL);
    cr_expect(strstr(e.msg, "segment 1") != NULL, "%s", e.msg);
    s.dense.seg[1].off = 12;
    s.dense.seg[1].std = -0.5;
    cr_expect_eq(cm_table_spec_check(&s, &e), CM_EINVAL);
    cr_expect(strstr(e.msg, "std") != NULL, "%s", e.msg);
    s.dense.seg[1].std = 0.5;
    s.dense.n = CM_DENSE_MAX_SEGS + 1;
    cr_expect_eq(cm_table_spec_check(&s, &e), CM_EINVAL);
}

Test(table_spec, row_floats_are_weights_then_state)
{
    cm_table_spec s = s_spec(8);
    cr_expect_eq(cm_table_spec_row_floats(&s), 16);
    s.optim.kind = CM_OPT_SGD;
    cr_expect_eq(cm_table_spec_row_floats(&s), 8);
    s.optim.kind = CM_OPT_ADAM;
    cr_expect_eq(cm_table_spec_row_floats(&s), 8 + 17);
}

Test(table_spec, sparse_rows_depend_on_seed_and_key_only)
{
    cm_table_spec s = s_spec(33);
    float a[33], b[33], c[33];
    cm_table_spec_init_row(&s, 12345, a);
    cm_table_spec_init_row(&s, 999, c);   /* another key between the two */
    cm_table_spec_init_row(&s, 12345, b);
    cr_assert(memcmp(a, b, sizeof a) == 0, "same key, same row");
    cr_expect(memcmp(a, c, sizeof a) != 0, "another key, another row");
    cr_expect_eq(a[0], 0.0f, "the zero prefix");
    double sq = 0;
    for (int j = 1; j < 33; j++)
        sq += (double)a[j] * a[j];
    cr_expect(sq > 0 && sqrt(sq / 32) < 0.5, "N(0, 0.1^2) entries, rms %g", sqrt(sq / 32));
    s.seed ^= 1;
    cm_table_spec_init_row(&s, 12345, c);
    cr_expect(memcmp(a, c, sizeof a) != 0, "another seed, another row");
    s.init_std = 0.0f;
    cm_table_spec_init_row(&s, 12345, c);
    for (int j = 0; j < 33; j++)
        cr_expect_eq(c[j], 0.0f);
}

/* A flat array of 23 floats: [0, 3) zeros, [3, 10) std 1, [10, 12)
 * zeros, [12, 21) std 0.25, [21, 23) zeros. */
static cm_dense_init s_dense(void)
{
    cm_dense_init d;
    memset(&d, 0, sizeof d);
    d.n = 2;
    d.seg[0] = (cm_dense_seg){3, 7, 1.0};
    d.seg[1] = (cm_dense_seg){12, 9, 0.25};
    return d;
}

Test(table_spec, dense_fill_draws_the_segments_in_order)
{
    const cm_dense_init d = s_dense();
    float w[23];
    cm_dense_init_fill(&d, 5, 0, 23, w);
    /* the reference: the same stream drawn here, one deviate at a time */
    cm_rng r;
    cm_rng_seed(&r, 5);
    float ref[23] = {0};
    for (int k = 3; k < 10; k++)
        ref[k] = (float)(1.0 * cm_rng_normal(&r));
    for (int k = 12; k < 21; k++)
        ref[k] = (float)(0.25 * cm_rng_normal(&r));
    cr_assert(memcmp(w, ref, sizeof w) == 0, "the whole array");
    cr_expect_neq(w[3], 0.0f);
}

Test(table_spec, dense_rows_are_slices_of_the_array)
{
    const cm_dense_init d = s_dense();
    float w[23];
    cm_dense_init_fill(&d, 9, 0, 23, w);
    /* every row size, so rows start on an odd draw (the Box-Muller spare),
     * inside a segment, in a gap and past the end */
    for (int rf = 1; rf <= 12; rf++) {
        cm_table_spec s = s_spec(rf);
        s.seed = 9;
        s.dense = d;
        float row[12];
        for (uint64_t key = 0; key * (uint64_t)rf < 30; key++) {
            cm_table_spec_init_row(&s, key, row);
            for (int i = 0; i < rf; i++) {
                const uint64_t k = key * (uint64_t)rf + (uint64_t)i;
                const float want = k < 23 ? w[k] : 0.0f;
                cr_assert_eq(row[i], want, "rows of %d, key %" PRIu64 ", float %d", rf, key,
                             i);
            }
        }
    }
}

Test(table_spec, fresh_row_is_weights_then_optimizer_state)
{
    cm_table_spec s = s_spec(5);
    s.optim.init_accum = 0.25f;
    float w[5], row[10];
    cm_table_spec_init_row(&s, 4, w);
    cm_table_spec_fresh_row(&s, 4, row);
    cr_expect(memcmp(row, w, sizeof w) == 0);
    for (int j = 5; j < 10; j++)
        cr_expect_eq(row[j], 0.25f);
}

Test(table_spec, share_head_is_two_words)
{
    /* the file's layout is read by processes of other roles: the head is
     * exactly the magic then the token, and row 0 starts a page later */
    cr_expect_eq(sizeof(cm_share_head), 16);
    cm_share_head h = {CM_SHARE_MAGIC, 42};
    uint64_t raw[2];
    memcpy(raw, &h, sizeof raw);
    cr_expect_eq(raw[0], CM_SHARE_MAGIC);
    cr_expect_eq(raw[1], 42u);
    cr_expect_eq(CM_SHARE_HEADER % 4096, 0);
}
