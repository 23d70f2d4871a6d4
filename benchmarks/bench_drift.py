"""Error growth over long repeated application, against a float64 reference.

Not a test. Two norm-preserving maps are applied again and again to a float32 state,
x <- f(x), until --flops floating-point operations have been spent, in each precision of
mlx_precise (float32, extended, dd); the reference applies the same map, with the same
float32 parameters and start, in float64 (numpy). Norm-preserving maps neither damp nor
amplify the error already made, so the curves show how rounding accumulates:
- linear: x (64, 1024) <- x @ Q.T, Q an orthogonal matrix rounded to float32
  (2 * 64 * 1024^2 flops a step);
- long convolution: x (64, 4096) <- circular convolution (n = 4096) with an all-pass
  kernel (unit-modulus spectrum, random phases) rounded to float32; counted as three
  real FFTs of 2.5 n log2 n flops plus the spectral product, per row.

    python benchmarks/bench_drift.py [--flops 1e10] [--plot benchmarks/drift.png]

Prints a table (relative L2 error of the state at 1e8, 1e9, 1e10 flops, and the exponent
p of error ~ steps^p) and draws error against flops.
"""

from __future__ import annotations

import argparse
import math
import time

import mlx.core as mx
import numpy as np

import mlx_precise as mp

ROWS, WIDTH, LENGTH = 64, 1024, 4096


def orthogonal_linear(rng):
    q, r = np.linalg.qr(rng.standard_normal((WIDTH, WIDTH)))
    q32 = (q * np.sign(np.diag(r))).astype(np.float32)
    q64 = q32.astype(np.float64)
    weight = mx.array(q32)
    flops = 2.0 * ROWS * WIDTH * WIDTH
    return ("linear 64x1024 @ 1024x1024", WIDTH, flops,
            lambda x, p: mp.linear(x, weight, precision=p),
            lambda x: x @ q64.T)


def all_pass_convolution(rng):
    phases = rng.uniform(-np.pi, np.pi, LENGTH // 2 + 1)
    phases[0], phases[-1] = 0.0, 0.0  # real DC and Nyquist bins
    kernel32 = np.fft.irfft(np.exp(1j * phases), LENGTH).astype(np.float32)
    spectrum64 = np.fft.rfft(kernel32.astype(np.float64))
    kernel = mx.array(kernel32)
    flops = ROWS * (3 * 2.5 * LENGTH * math.log2(LENGTH) + 6.0 * (LENGTH // 2 + 1))
    return ("long conv 64 x 4096 (n = 4096)", LENGTH, flops,
            lambda x, p: mp.rfft_conv(x, kernel, n=LENGTH, precision=p),
            lambda x: np.fft.irfft(np.fft.rfft(x, axis=-1) * spectrum64, LENGTH, axis=-1))


def relative_l2(x32: mx.array, x64: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(x32, dtype=np.float64) - x64) / np.linalg.norm(x64))


def run(op, precision, start, total_flops):
    name, width, step_flops, apply_mx, apply_64 = op
    steps = max(1, math.ceil(total_flops / step_flops))
    x, x64 = mx.array(start[:, :width]), start[:, :width].astype(np.float64)
    errors = np.empty(steps)
    seconds = 0.0
    for step in range(steps):
        t0 = time.perf_counter()
        x = apply_mx(x, precision)
        mx.eval(x)
        seconds += time.perf_counter() - t0
        x64 = apply_64(x64)
        errors[step] = relative_l2(x, x64)
    return step_flops * np.arange(1, steps + 1), errors, seconds


def error_at(flops, errors, target):
    index = int(np.searchsorted(flops, target))
    return errors[index] if index < len(errors) else math.nan


def growth_exponent(errors):
    """Least-squares slope of log error against log step, over steps 4 and later."""
    steps = np.arange(1, len(errors) + 1)
    keep = (steps >= 4) & (errors > 0)
    if keep.sum() < 3:
        return math.nan
    return float(np.polyfit(np.log(steps[keep]), np.log(errors[keep]), 1)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flops", type=float, default=1e10, help="flops per run")
    parser.add_argument("--plot", default="benchmarks/drift.png")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed {seed}; CPU ({mx.default_device()}), {args.flops:.0e} flops per run")
    rng = np.random.default_rng(seed)
    start = rng.standard_normal((ROWS, max(WIDTH, LENGTH))).astype(np.float32)
    ops = [orthogonal_linear(rng), all_pass_convolution(rng)]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(ops), figsize=(11, 4.2), sharey=True)
    print("| map | precision | steps | error at 1e8 flops | 1e9 | 1e10 | exponent p (error ~ steps^p) | time s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for axis, op in zip(axes, ops):
        # extended and dd both round once per output: nearly the same bits, the same curve
        styles = (("tab:red", "-"), ("tab:blue", "-"), ("tab:green", ":"))
        for precision, (color, style) in zip(mp.PRECISIONS, styles):
            flops, errors, seconds = run(op, precision, start, args.flops)
            at = [error_at(flops, errors, target) for target in (1e8, 1e9, 1e10)]
            print(f"| {op[0]} | {precision} | {len(errors)} | "
                  + " | ".join(f"{e:.2e}" for e in at)
                  + f" | {growth_exponent(errors):.2f} | {seconds:.1f} |", flush=True)
            axis.loglog(flops, errors, color=color, linestyle=style, linewidth=2, label=precision)
        axis.set_title(op[0])
        axis.set_xlabel("flops applied")
        axis.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("relative L2 error of the state vs float64")
    axes[0].legend()
    figure.suptitle("Error growth under repeated application (float32 state, float64 reference)")
    figure.tight_layout()
    figure.savefig(args.plot, dpi=120)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
