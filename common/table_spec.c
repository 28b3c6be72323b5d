/* table_spec: checks and initial rows (see table_spec.h). The draws are
 * those ps/table.c and worker/models/deep.c made before the rule moved
 * here, float for float: checkpoints and regression figures depend on
 * them. */
#include "common/table_spec.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "common/hash.h"
#include "common/rng.h"

int cm_table_spec_check(const cm_table_spec *s, cm_error *err)
{
    if (!s)
        return cm_error_set(err, CM_EINVAL, "table: no parameters");
    if (s->dim < 1 || s->dim > CM_TABLE_MAX_DIM)
        return cm_error_set(err, CM_EINVAL, "table: dim %d out of range [1, %d]", s->dim,
                            CM_TABLE_MAX_DIM);
    if (s->zero_prefix < 0 || s->zero_prefix > s->dim)
        return cm_error_set(err, CM_EINVAL, "table: zero_prefix %d out of range [0, %d]",
                            s->zero_prefix, s->dim);
    if (!(s->init_std >= 0.0f) || !isfinite(s->init_std))
        return cm_error_set(err, CM_EINVAL, "table: init_std %g must be finite and >= 0",
                            (double)s->init_std);
    const cm_dense_init *d = &s->dense;
    if (d->n < 0 || d->n > CM_DENSE_MAX_SEGS)
        return cm_error_set(err, CM_EINVAL, "table: %d dense segments, at most %d", d->n,
                            CM_DENSE_MAX_SEGS);
    uint64_t end = 0;
    for (int i = 0; i < d->n; i++) {
        const cm_dense_seg *g = &d->seg[i];
        if (g->off < end || g->n > UINT64_MAX - g->off)
            return cm_error_set(err, CM_EINVAL,
                                "table: dense segment %d (at %" PRIu64 ") overlaps the one "
                                "before or is out of order",
                                i, g->off);
        if (!(g->std >= 0.0) || !isfinite(g->std))
            return cm_error_set(err, CM_EINVAL,
                                "table: dense segment %d std %g must be finite and >= 0", i,
                                g->std);
        end = g->off + g->n;
    }
    return cm_optim_check(&s->optim, err);
}

int cm_table_spec_row_floats(const cm_table_spec *s)
{
    return s->dim + cm_optim_state_floats(s->optim.kind, s->dim);
}

/* Advances r past m normal deviates of cm_rng_normal: Box-Muller takes
 * two uniforms per pair of deviates and hands out the second of a pair
 * from the spare (tests/test_deep.c pins this against the real draws). */
static void s_skip_normals(cm_rng *r, uint64_t m)
{
    if (r->has_spare && m > 0) {
        r->has_spare = 0;
        m--;
    }
    for (uint64_t i = 0; i < m / 2 * 2; i++)
        (void)cm_rng_next(r);
    if (m % 2)
        (void)cm_rng_normal(r);
}

void cm_dense_init_fill(const cm_dense_init *d, uint64_t seed, uint64_t lo, size_t n,
                        float *out)
{
    const uint64_t hi = lo + n;
    memset(out, 0, n * sizeof *out);
    /* draws of the segments before lo: skipped, not made */
    uint64_t before = 0;
    for (int i = 0; i < d->n; i++) {
        const cm_dense_seg *g = &d->seg[i];
        if (g->off + g->n <= lo)
            before += g->n;
        else if (g->off < lo)
            before += lo - g->off;
    }
    cm_rng r;
    cm_rng_seed(&r, seed);
    s_skip_normals(&r, before);
    for (int i = 0; i < d->n; i++) {
        const cm_dense_seg *g = &d->seg[i];
        const uint64_t end = g->off + g->n;
        for (uint64_t k = g->off > lo ? g->off : lo; k < end && k < hi; k++)
            out[k - lo] = (float)(g->std * cm_rng_normal(&r));
    }
}

void cm_table_spec_init_row(const cm_table_spec *s, uint64_t key, float *out)
{
    const int dim = s->dim;
    if (s->dense.n > 0) {
        cm_dense_init_fill(&s->dense, s->seed, key * (uint64_t)dim, (size_t)dim, out);
        return;
    }
    int zp = s->zero_prefix < 0 ? 0 : s->zero_prefix > dim ? dim : s->zero_prefix;
    for (int j = 0; j < zp; j++)
        out[j] = 0.0f;
    if (zp == dim)
        return;
    if (s->init_std == 0.0f) {
        for (int j = zp; j < dim; j++)
            out[j] = 0.0f;
        return;
    }
    /* The stream depends on (seed, key) only: arrival order, server and
     * slot do not change a row's first value. */
    cm_rng r;
    cm_rng_seed(&r, cm_mix64(s->seed ^ cm_mix64(key)));
    cm_rng_normals_f32(&r, out + zp, dim - zp, s->init_std);
}

void cm_table_spec_fresh_row(const cm_table_spec *s, uint64_t key, float *out)
{
    cm_table_spec_init_row(s, key, out);
    cm_optim_init_state(&s->optim, out, s->dim);
}
