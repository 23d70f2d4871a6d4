"""Strict addmm and layer_norm on the GPU against MLX's float32 ops.

addmm at (M, K, N) = (8192, 768, 2304) (M2-BERT's in_linear at 8192 tokens) and
(8192, 4096, 4096): mlx_precise extended (with its effective TFLOP/s, 2MNK / time),
dd and float32 (never TF32) vs MLX's mx.addmm float32 with TF32 off and on (MLX's
CUDA backend reads MLX_ENABLE_TF32 once per process, so each setting is timed in a
child process), and the share of extended outputs that the certification sends to
the exact recompute (M2-scaled inputs: unit activations, weights ~ N(0, 0.02));
layer_norm 8192 x 768 extended and dd vs mx.fast.layer_norm. Device-synchronised
medians (mx.synchronize inside the timed region) over several input sets after
warm-up: the latency of one call, host work (graph building and launch) and the
wait for completion included. The addmm rows are also timed pipelined: --pipelined
calls evaluated together with one synchronisation, as a model's forward runs its
ops (MLX records them into its graphs and the GPU runs them back to back), in ms per
call; the difference from the single call is the per-call host and completion
overhead that pipelining hides.
Usage: python benchmarks/bench_gpu_strict.py [--out results.md] [--pipelined 16]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np

# The timing loop (warm-up, mx.synchronize inside the timed region, median) of
# the rfft_conv GPU benchmark.
from bench_gpu import INPUT_SETS, REPEATS, WARMUP
from bench_gpu import mlx_time as median_ms

SHAPES = ((8192, 768, 2304), (8192, 4096, 4096))
ROWS, DIM = 8192, 768


def pipelined_ms(fn, inputs, calls):
    """ms per call of `calls` calls evaluated together, one synchronisation (median
    of REPEATS after warm-up)."""
    for i in range(WARMUP):
        mx.eval(fn(*inputs[i % len(inputs)]))
    times = []
    for _ in range(REPEATS):
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval([fn(*inputs[i % len(inputs)]) for i in range(calls)])
        mx.synchronize()
        times.append((time.perf_counter() - t0) * 1e3 / calls)
    return statistics.median(times)


def addmm_inputs(shape):
    m, k, n = shape
    rng = np.random.default_rng(0)
    return [(mx.array(rng.standard_normal(n).astype(np.float32)),
             mx.array(rng.standard_normal((m, k)).astype(np.float32)),
             mx.array((rng.standard_normal((k, n)) * 0.02).astype(np.float32)))
            for _ in range(INPUT_SETS)]


def uncertified_fraction(c, a, b, alpha=1.0, beta=1.0):
    """Share of the outputs of alpha a @ b + beta c that addmm_certify cannot round
    from the float64 product (its test, torch's float64 product standing in for
    cuBLAS's; both sum exact products in double)."""
    import torch

    A, B, C = (torch.from_numpy(np.array(x)).cuda().double() for x in (a, b, c))
    u = 2.0**-53
    k = A.shape[-1]
    gamma = k * u / (1 - k * u)
    scaled = alpha * (A @ B)
    value = scaled + beta * C
    norms = A.norm(dim=-1)[..., :, None] * B.norm(dim=-2)[..., None, :]
    err = (1 + 1 / 1024) * gamma * abs(alpha) * norms + u * (scaled.abs() + value.abs())
    margin = err + 4 * u * value.abs()
    return ((value - margin).float() != (value + margin).float()).double().mean().item()


def mlx_float32_addmm(shape, calls):
    """Run in a child process whose MLX_ENABLE_TF32 is set by the parent: prints the
    single-call and the pipelined ms (0 when calls is 0)."""
    inputs = addmm_inputs(shape)
    with mx.stream(mx.gpu):
        pipelined = pipelined_ms(lambda c, a, b: mx.addmm(c, a, b), inputs, calls) if calls else 0.0
        single = median_ms(lambda c, a, b: mx.addmm(c, a, b), inputs)
    print(single, pipelined)


def child_time(tf32, shape, calls):
    env = dict(os.environ, MLX_ENABLE_TF32="1" if tf32 else "0")
    r = subprocess.run([sys.executable, __file__, "--mlx-float32-child", *map(str, shape),
                        "--pipelined", str(calls)],
                       env=env, capture_output=True, text=True, check=True)
    return tuple(map(float, r.stdout.strip().splitlines()[-1].split()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--mlx-float32-child", type=int, nargs=3, default=None)
    parser.add_argument("--pipelined", type=int, default=16,
                        help="addmm calls per synchronisation in the pipelined table (0: skip it)")
    args = parser.parse_args()
    if args.mlx_float32_child:
        return mlx_float32_addmm(args.mlx_float32_child, args.pipelined)

    import mlx_precise as mp

    rows, pipelined_rows = [], []
    for shape in SHAPES:
        m, k, n = shape
        inputs = addmm_inputs(shape)
        with mx.stream(mx.gpu):
            # Pipelined first: it also warms up the GPU (clocks, memory pool) after the
            # first call's kernel compilation left it idle.
            if args.pipelined:
                ext_p, f32_p = (pipelined_ms(lambda c, a, b, p=p: mp.addmm(c, a, b, precision=p), inputs,
                                             args.pipelined) for p in ("extended", "float32"))
            ext = median_ms(lambda c, a, b: mp.addmm(c, a, b, precision="extended"), inputs)
            f32 = median_ms(lambda c, a, b: mp.addmm(c, a, b, precision="float32"), inputs)
            dd = (median_ms(lambda c, a, b: mp.addmm(c, a, b, precision="dd"), inputs)
                  if shape == SHAPES[0] else None)
        fraction = uncertified_fraction(*inputs[0])
        tflops = 2 * m * n * k / (ext * 1e-3) / 1e12
        (off, off_p), (on, on_p) = (child_time(tf32, shape, args.pipelined) for tf32 in (False, True))
        rows.append((f"addmm {shape}", f"{ext:.3f} ({tflops:.1f} TFLOP/s, {fraction:.1e} recomputed)",
                     dd, f32, off, on))
        print(rows[-1], flush=True)
        if args.pipelined:
            tflops_p = 2 * m * n * k / (ext_p * 1e-3) / 1e12
            pipelined_rows.append((f"addmm {shape}", f"{ext_p:.3f} ({tflops_p:.1f} TFLOP/s)", f32_p, off_p, on_p))
            print(pipelined_rows[-1], flush=True)

    rng = np.random.default_rng(1)
    ln_inputs = [tuple(mx.array(rng.standard_normal(s).astype(np.float32))
                       for s in ((ROWS, DIM), (DIM,), (DIM,))) for _ in range(INPUT_SETS)]
    with mx.stream(mx.gpu):
        ln_ext = median_ms(lambda x, w, b: mp.layer_norm(x, w, b, precision="extended"), ln_inputs)
        ln_dd = median_ms(lambda x, w, b: mp.layer_norm(x, w, b, precision="dd"), ln_inputs)
        ln_f32 = median_ms(lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5), ln_inputs)
    rows.append(("layer_norm 8192 x 768 (weight, bias)", f"{ln_ext:.3f}", ln_dd, None, ln_f32, None))

    device = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Device: {device or 'GPU'}; MLX {mx.__version__}. Medians of {REPEATS} runs over "
        f"{INPUT_SETS} input sets, ms.",
        "",
        "| op | mlx_precise extended | mlx_precise dd | mlx_precise float32 | MLX float32 (TF32 off) "
        "| MLX float32 (TF32 on) |",
        "|---|---|---|---|---|---|",
    ]

    def ms(x):
        return "-" if x is None else f"{x:.3f}"

    for name, e, d, f32, f_off, f_on in rows:
        lines.append(f"| {name} | {e} | {ms(d)} | {ms(f32)} | {ms(f_off)} | {ms(f_on)} |")
    if pipelined_rows:
        lines += [
            "",
            f"Pipelined: {args.pipelined} calls per synchronisation, ms per call (median of {REPEATS}).",
            "",
            "| op | mlx_precise extended | mlx_precise float32 | MLX float32 (TF32 off) | MLX float32 (TF32 on) |",
            "|---|---|---|---|---|",
        ]
        for name, e, f32, f_off, f_on in pipelined_rows:
            lines.append(f"| {name} | {e} | {ms(f32)} | {ms(f_off)} | {ms(f_on)} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
