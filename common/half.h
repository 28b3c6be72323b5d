/* half: IEEE 754 binary16 ("fp16") conversion for the optional wire format
 * (`wire_dtype = f16`, docs/protocol.md).
 *
 * To half: round to nearest, ties to even; magnitudes beyond the largest
 * finite half (65504) become +-65504 rather than infinity, so a large
 * gradient stays a large finite step; NaN stays NaN; values below the
 * smallest subnormal (2^-24) flush to a signed zero. From half: exact.
 * Uses the F16C instructions where the compiler targets them, else plain C
 * with the same results. */
#ifndef PSREC_COMMON_HALF_H
#define PSREC_COMMON_HALF_H

#include <stddef.h>
#include <stdint.h>

#define CM_HALF_MAX 65504.0f

/* out[i] = half(in[i]) for i < n. */
void cm_half_from_f32(const float *in, uint16_t *out, size_t n);

/* out[i] = float(in[i]) for i < n. */
void cm_half_to_f32(const uint16_t *in, float *out, size_t n);

/* One value each way (the scalar reference the vector paths must match). */
uint16_t cm_half_of(float x);
float cm_half_value(uint16_t h);

#endif
