#!/usr/bin/env python3
"""Writes common/rng_zig.h, the ziggurat tables of cm_rng_normals_f32.

    python3 common/rng_zig.py > common/rng_zig.h

Standard library only: every quantity is computed with 70-digit decimals and
rounded once to the nearest double, so the tables are the same wherever this
runs. The ziggurat covers f(x) = exp(-x*x/2), x >= 0, with N layers of equal
area v. Layer 0 is the base: the box [0, r] x [0, f(r)] plus the tail x > r,
drawn as if it were a box of width x_0 = v / f(r). For i >= 1 layer i is the
box [0, x_i] x [f(x_i), f(x_{i+1})] with x_1 = r, x_{i+1} defined by
x_i * (f(x_{i+1}) - f(x_i)) = v, and x_N = 0 (so f(x_N) = 1). r is the value
for which the top layer closes exactly; it is found by bisection.
"""
from decimal import Decimal as D, getcontext, ROUND_CEILING

getcontext().prec = 70
EPS = D(10) ** -68
N = 256


def atan_inv(n):
    """atan(1/n) by its power series."""
    x = D(1) / n
    x2, term, s, k = x * x, x, x, 1
    while True:
        term *= -x2
        k += 2
        t = term / k
        if abs(t) < EPS:
            return s
        s += t


PI = 16 * atan_inv(5) - 4 * atan_inv(239)   # Machin


def f(x):
    return (-x * x / 2).exp()


def tail(r):
    """The integral of f over (r, inf): sqrt(pi/2) less the integral over
    [0, r], which is f(r) * sum r^(2n+1) / (1*3*...*(2n+1)) (no cancellation
    inside the sum)."""
    term, s, n = r, r, 0
    while term > EPS:
        n += 1
        term = term * r * r / (2 * n + 1)
        s += term
    return (PI / 2).sqrt() - f(r) * s


def layers(r):
    """v, x_0..x_{N-1}, and how much the top layer's area exceeds v (None
    when the layers reach the peak early: r is too small)."""
    v = r * f(r) + tail(r)
    xs = [v / f(r), r]
    for i in range(1, N - 1):
        y = f(xs[i]) + v / xs[i]
        if y >= 1:
            return v, xs, None
        xs.append((-2 * y.ln()).sqrt())
    return v, xs, xs[N - 1] * (1 - f(xs[N - 1])) - v


def main():
    lo, hi = D(3), D(4)
    for _ in range(240):
        mid = (lo + hi) / 2
        _, _, excess = layers(mid)
        if excess is None or excess < 0:
            lo = mid
        else:
            hi = mid
    r = lo
    v, xs, excess = layers(r)
    assert excess is not None and abs(excess) < D(10) ** -50
    xs.append(D(0))
    two53 = D(2) ** 53
    k = [int((two53 * xs[i + 1] / xs[i]).to_integral_value(rounding=ROUND_CEILING))
         for i in range(N)]
    w = [float(xs[i] / two53) for i in range(N)]
    y = [0.0] + [float(f(xs[i])) for i in range(1, N)] + [1.0]
    fast = sum(xs[i + 1] / xs[i] for i in range(N)) / N

    def rows(vals, per):
        out = []
        for a in range(0, len(vals), per):
            out.append("    " + " ".join(s + "," for s in vals[a:a + per]))
        return "\n".join(out)

    print(f"""\
/* Ziggurat tables of cm_rng_normals_f32 (common/rng.c), {N} layers of equal
 * area under f(x) = exp(-x*x/2). Written by common/rng_zig.py, which says how
 * the layers are laid out; regenerate rather than edit. Included by rng.c
 * and by the test that checks the layers against libm. */
#ifndef PSREC_COMMON_RNG_ZIG_H
#define PSREC_COMMON_RNG_ZIG_H

#include <stdint.h>

#define S_ZIG_LAYERS {N}
/* r = x_1, where the tail starts: {r:.30f} */
#define S_ZIG_R {float(r).hex()}
/* v, the area of each layer: {v:.30e} */
#define S_ZIG_V {float(v).hex()}
/* {100 * fast:.4f}% of draws take the fast path */

/* Layer i accepts u * w[i] at once when the 53-bit u < k[i]:
 * k[i] = ceil(2^53 x_{{i+1}} / x_i), so u * w[i] < x_{{i+1}}, under the curve. */
static const uint64_t s_zig_k[{N}] = {{
{rows([f"{x:#018x}" for x in k], 4)}
}};

/* w[i] = x_i / 2^53: a 53-bit u times w[i] is uniform on [0, x_i). */
static const double s_zig_w[{N}] = {{
{rows([x.hex() for x in w], 3)}
}};

/* y[i] = f(x_i) for 1 <= i < {N}; y[0] = 0, y[{N}] = 1: layer i >= 1 spans
 * the heights [y[i], y[i+1]]. */
static const double s_zig_y[{N + 1}] = {{
{rows([x.hex() for x in y], 3)}
}};

#endif""")


if __name__ == "__main__":
    main()
