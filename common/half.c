#include "common/half.h"

#include <string.h>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define S_F16C 1
#else
#define S_F16C 0
#endif

static uint32_t s_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float s_float(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t cm_half_of(float x)
{
    const uint32_t u = s_bits(x);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN: keep it a quiet NaN */
        return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) /* rounds to 65520 or more (or is inf): clamp */
        return (uint16_t)(sign | 0x7bffu);
    if (a < 0x38800000u) { /* below 2^-14: subnormal half, or zero */
        /* scale so the half's subnormal step 2^-24 is 1, round to even */
        const float f = s_float(a) * 16777216.0f; /* exact: a power of two */
        uint32_t q = (uint32_t)f;
        const float rest = f - (float)q;
        if (rest > 0.5f || (rest == 0.5f && (q & 1u)))
            q++;
        return (uint16_t)(sign | q); /* q == 0x400 is the smallest normal: right */
    }
    /* normal: rebias the exponent, round the 13 dropped mantissa bits */
    uint32_t h = ((a >> 13) - ((127u - 15u) << 10));
    const uint32_t dropped = a & 0x1fffu;
    if (dropped > 0x1000u || (dropped == 0x1000u && (h & 1u)))
        h++; /* a carry into the exponent is still the right value */
    return (uint16_t)(sign | h);
}

float cm_half_value(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) /* zero or subnormal: m * 2^-24 */
        return s_float(sign | s_bits((float)m * (1.0f / 16777216.0f)));
    if (e == 31)
        return s_float(sign | 0x7f800000u | (m << 13));
    return s_float(sign | ((e + 127u - 15u) << 23) | (m << 13));
}

void cm_half_from_f32(const float *in, uint16_t *out, size_t n)
{
    size_t i = 0;
#if S_F16C
    const __m256 hi = _mm256_set1_ps(CM_HALF_MAX), lo = _mm256_set1_ps(-CM_HALF_MAX);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(in + i);
        /* clamp; min/max return the second operand for NaN, so order them
         * to let a NaN through */
        v = _mm256_min_ps(hi, _mm256_max_ps(lo, v));
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
#endif
    for (; i < n; i++)
        out[i] = cm_half_of(in[i]);
}

void cm_half_to_f32(const uint16_t *in, float *out, size_t n)
{
    size_t i = 0;
#if S_F16C
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
#endif
    for (; i < n; i++)
        out[i] = cm_half_value(in[i]);
}
