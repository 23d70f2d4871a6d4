"""Strict addmm and layer_norm on the GPU against MLX's float32 ops.

addmm at (M, K, N) = (8192, 768, 2304): mlx_precise extended and dd vs MLX's
mx.addmm float32 with TF32 off and on (MLX's CUDA backend reads MLX_ENABLE_TF32
once per process, so each setting is timed in a child process); layer_norm
8192 x 768 extended and dd vs mx.fast.layer_norm. Device-synchronised medians
(mx.synchronize inside the timed region) over several input sets after warm-up.
Usage: python benchmarks/bench_gpu_strict.py [--out results.md]
"""

import argparse
import os
import subprocess
import sys

import mlx.core as mx
import numpy as np

# The timing loop (warm-up, mx.synchronize inside the timed region, median) of
# the rfft_conv GPU benchmark.
from bench_gpu import INPUT_SETS, REPEATS
from bench_gpu import mlx_time as median_ms

M, K, N = 8192, 768, 2304
ROWS, DIM = 8192, 768


def addmm_inputs():
    rng = np.random.default_rng(0)
    return [tuple(mx.array(rng.standard_normal(s).astype(np.float32)) for s in ((N,), (M, K), (K, N)))
            for _ in range(INPUT_SETS)]


def mlx_float32_addmm():
    """Run in a child process whose MLX_ENABLE_TF32 is set by the parent."""
    with mx.stream(mx.gpu):
        print(median_ms(lambda c, a, b: mx.addmm(c, a, b), addmm_inputs()))


def child_time(tf32):
    env = dict(os.environ, MLX_ENABLE_TF32="1" if tf32 else "0")
    r = subprocess.run([sys.executable, __file__, "--mlx-float32-child"], env=env,
                       capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--mlx-float32-child", action="store_true")
    args = parser.parse_args()
    if args.mlx_float32_child:
        return mlx_float32_addmm()

    import mlx_precise as mp

    rows = []
    inputs = addmm_inputs()
    with mx.stream(mx.gpu):
        ext = median_ms(lambda c, a, b: mp.addmm(c, a, b, precision="extended"), inputs)
        dd = median_ms(lambda c, a, b: mp.addmm(c, a, b, precision="dd"), inputs)
    off, on = child_time(False), child_time(True)
    rows.append(("addmm (8192, 768, 2304)", ext, dd, off, on))

    rng = np.random.default_rng(1)
    ln_inputs = [tuple(mx.array(rng.standard_normal(s).astype(np.float32))
                       for s in ((ROWS, DIM), (DIM,), (DIM,))) for _ in range(INPUT_SETS)]
    with mx.stream(mx.gpu):
        ln_ext = median_ms(lambda x, w, b: mp.layer_norm(x, w, b, precision="extended"), ln_inputs)
        ln_dd = median_ms(lambda x, w, b: mp.layer_norm(x, w, b, precision="dd"), ln_inputs)
        ln_f32 = median_ms(lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5), ln_inputs)
    rows.append(("layer_norm 8192 x 768 (weight, bias)", ln_ext, ln_dd, ln_f32, None))

    device = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Device: {device or 'GPU'}; MLX {mx.__version__}. Medians of {REPEATS} runs over "
        f"{INPUT_SETS} input sets, ms.",
        "",
        "| op | mlx_precise extended | mlx_precise dd | MLX float32 (TF32 off) | MLX float32 (TF32 on) |",
        "|---|---|---|---|---|",
    ]
    for name, e, d, f_off, f_on in rows:
        on_text = f"{f_on:.3f}" if f_on is not None else "n/a (no matmul)"
        lines.append(f"| {name} | {e:.3f} | {d:.3f} | {f_off:.3f} | {on_text} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
