"""GPU benchmark of rfft_conv: M2-BERT's bidirectional long convolution.

B=64, H=768, L in {1024, 4096, 16384}, n = 2L, kernel (H, 2L). Compares
mlx_precise (float32 / extended / dd) with MLX's composed mx.fft float32 and
torch float32 / float64 on the same device. Timing is device-synchronised:
MLX calls are evaluated and followed by mx.synchronize() inside the timed
region; torch uses CUDA events. Each figure is the median over repetitions that
rotate among several input sets (so caches do not hold the inputs), after
warm-up. Achieved bandwidth counts reading u and writing y once, against a
device-to-device copy measured in the same run.

--backward adds forward + backward (grad u and grad k of sum(y * g)) against the
forward alone, per precision (issue #16: at most 3x). --long adds B=1, H=64,
causal (kernel (H, L), n = 2L) at L = 2^16 ... 2^20 with each implementation's
time and MLX peak memory against MLX's composed path.

Usage: python benchmarks/bench_gpu.py [--out results.md] [--lengths 1024 4096 16384]
                                      [--backward] [--long]
"""

import argparse
import statistics
import time

import mlx.core as mx
import numpy as np
import torch

import mlx_precise as mp

B, H = 64, 768
INPUT_SETS = 3
WARMUP = 2
REPEATS = 9


def mlx_time(fn, inputs):
    for i in range(WARMUP):
        mx.eval(fn(*inputs[i % len(inputs)]))
    mx.synchronize()
    times = []
    for i in range(REPEATS):
        args = inputs[i % len(inputs)]
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval(fn(*args))
        mx.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def torch_time(fn, inputs):
    for i in range(WARMUP):
        fn(*inputs[i % len(inputs)])
    torch.cuda.synchronize()
    times = []
    for i in range(REPEATS):
        args = inputs[i % len(inputs)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth():
    x = torch.empty(1 << 29, dtype=torch.float32, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    ms = torch_time(lambda a: y.copy_(a), [(x,)])
    return 2 * x.numel() * 4 / (ms * 1e-3)


def bench_length(L, copy_bw):
    n = 2 * L
    rows = {}
    # Random normal inputs drawn on the device by each framework (timing does
    # not depend on the values, only on their being non-trivial).
    mlx_inputs = [
        (mx.random.normal((B, H, L)), mx.random.normal((H, n)) / np.sqrt(n))
        for _ in range(INPUT_SETS)
    ]
    mx.eval(mlx_inputs)
    for precision in mp.PRECISIONS:
        rows[f"mlx_precise {precision}"] = mlx_time(
            lambda u, k: mp.rfft_conv(u, k, n=n, precision=precision), mlx_inputs
        )

    def mlx_composed(u, k):
        return mx.fft.irfft(mx.fft.rfft(u, n) * mx.fft.rfft(k, n), n)[..., :L]

    try:
        rows["MLX mx.fft float32 (composed)"] = mlx_time(mlx_composed, mlx_inputs)
    except RuntimeError as error:  # MLX's cuFFT plan fails at L = 32768 (CUFFT_NO_WORKSPACE on an H200)
        rows["MLX mx.fft float32 (composed)"] = f"failed: {str(error).splitlines()[0][:80]}"
    del mlx_inputs
    mx.clear_cache()

    def torch_composed(u, k):
        return torch.fft.irfft(torch.fft.rfft(u, n) * torch.fft.rfft(k, n), n)[..., :L]

    for dtype, name in ((torch.float32, "torch float32"), (torch.float64, "torch float64")):
        try:
            t_inputs = [
                (
                    torch.randn(B, H, L, dtype=dtype, device="cuda"),
                    torch.randn(H, n, dtype=dtype, device="cuda") / np.sqrt(n),
                )
                for _ in range(INPUT_SETS)
            ]
            rows[name] = torch_time(torch_composed, t_inputs)
        except torch.OutOfMemoryError as error:
            rows[name] = f"failed: {str(error).splitlines()[0][:80]}"
        t_inputs = None
        torch.cuda.empty_cache()

    io_bytes = 2 * B * H * L * 4  # u read + y written once, float32
    floor_ms = io_bytes / copy_bw * 1e3
    return [
        (L, name, ms, io_bytes / (ms * 1e-3) / 1e12, io_bytes / (ms * 1e-3) / copy_bw, floor_ms)
        if not isinstance(ms, str) else (L, name, ms, None, None, floor_ms)
        for name, ms in rows.items()
    ]


def bench_backward(L):
    """(precision, forward ms, forward + backward ms) at B, H, n = 2L."""
    n = 2 * L
    inputs = [
        (mx.random.normal((B, H, L)), mx.random.normal((H, n)) / np.sqrt(n), mx.random.normal((B, H, L)))
        for _ in range(INPUT_SETS)
    ]
    mx.eval(inputs)
    rows = []
    for precision in mp.PRECISIONS:

        def forward(u, k, g):
            return mp.rfft_conv(u, k, n=n, precision=precision)

        def loss(u, k, g):
            return mx.sum(mp.rfft_conv(u, k, n=n, precision=precision) * g)

        both = mx.value_and_grad(loss, argnums=(0, 1))
        rows.append((precision, mlx_time(forward, inputs), mlx_time(both, inputs)))
    del inputs
    mx.clear_cache()
    return rows


def bench_long(L):
    """(implementation, ms, MLX peak GiB) at B=1, H=64, causal, n = 2L."""
    b, h, n = 1, 64, 2 * L
    inputs = [(mx.random.normal((b, h, L)), mx.random.normal((h, L)) / np.sqrt(L)) for _ in range(INPUT_SETS)]
    mx.eval(inputs)

    def composed(u, k):
        return mx.fft.irfft(mx.fft.rfft(u, n) * mx.fft.rfft(k, n), n)[..., :L]

    variants = [(f"mlx_precise {p}", lambda u, k, p=p: mp.rfft_conv(u, k, n=n, precision=p)) for p in mp.PRECISIONS]
    variants.append(("MLX mx.fft float32 (composed)", composed))
    rows = []
    for name, fn in variants:
        ms = mlx_time(fn, inputs)
        mx.synchronize()
        mx.reset_peak_memory()
        mp._ext.reset_device_peak_memory()
        # mlx_precise's CUDA outputs and workspaces are its own allocations, outside
        # MLX's statistics: the two peaks above what each held before are added (at
        # least the true peak). MLX's reset peak is 0 and grows only at its own
        # allocations, so a call that allocates nothing there leaves it below what is held.
        mlx_base, device_base = mx.get_active_memory(), mp._ext.device_peak_memory()
        mx.eval(fn(*inputs[0]))
        mx.synchronize()
        mlx_above = max(mx.get_peak_memory(), mlx_base) - mlx_base
        rows.append((name, ms, (mlx_above + mp._ext.device_peak_memory() - device_base) / 2**30))
    del inputs
    mx.clear_cache()
    return rows


def tie_rows(h, L):
    """Rows whose every causal output is an exact float32 tie: u = 3, k = (5592407, 2, 2, ...), so
    y_t = 3 (5592407 + 2t) = 2^24 + 5 + 6t, an odd integer in [2^24, 2^25), half-way between two
    float32 values. No error bound certifies a tie, so every output takes the whole recompute,
    exact stage included: issue 15's adversarial worst case."""
    u = mx.full((1, h, L), 3.0)
    k = mx.concatenate([mx.full((h, 1), 5592407.0), mx.full((h, L - 1), 2.0)], axis=1)
    exact = 3 * (5592407 + 2 * np.arange(L, dtype=np.float64))
    return u, k, exact.astype(np.float32)  # numpy rounds the float64 integers half to even


def bench_adversarial(L):
    """(precision, normal ms, all-ties ms) at B=1, H=64, causal, n = 2L."""
    h, n = 64, 2 * L
    normal = [(mx.random.normal((1, h, L)), mx.random.normal((h, L)) / np.sqrt(L)) for _ in range(INPUT_SETS)]
    u, k, expected = tie_rows(h, L)
    ties = [(u, k)]
    mx.eval(normal, ties)
    rows = []
    for precision in mp.PRECISIONS:

        def conv(u, k):
            return mp.rfft_conv(u, k, n=n, precision=precision)

        if precision != "float32":
            y = np.asarray(conv(*ties[0]))
            assert (y == expected).all(), f"{precision}: a tie was not rounded half to even"
        rows.append((precision, mlx_time(conv, normal), mlx_time(conv, ties)))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096, 16384],
                        help="B=64 H=768 lengths; none (--lengths with no value) skips them")
    parser.add_argument("--backward", action="store_true", help="forward + backward vs forward")
    parser.add_argument("--long", action="store_true", help="B=1, H=64, L = 2^16 ... 2^20")
    parser.add_argument("--long-exponents", type=int, nargs="+", default=list(range(16, 21)),
                        help="the exponents e of --long's L = 2^e")
    parser.add_argument("--adversarial", type=int, nargs="*", default=[],
                        help="B=1, H=64 lengths at which to time rows whose every output is a tie")
    args = parser.parse_args()
    copy_bw = copy_bandwidth()
    device = torch.cuda.get_device_name()
    lines = [
        f"# rfft_conv on {device} (MLX {mx.__version__} CUDA backend, torch {torch.__version__})",
        "",
        f"B={B}, H={H}, n=2L, kernel (H, 2L); median of {REPEATS} runs over {INPUT_SETS} input "
        f"sets after {WARMUP} warm-ups. Device-to-device copy bandwidth measured in this run: "
        f"{copy_bw / 1e12:.2f} TB/s (bytes read + written). 'u+y' bandwidth counts reading u and "
        "writing y once in float32; 'floor' is that traffic at the copy bandwidth.",
        "",
        "| L | implementation | time (ms) | u+y bandwidth (TB/s) | share of copy bw | floor (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for L in args.lengths:
        for L_, name, ms, tbs, share, floor in bench_length(L, copy_bw):
            if isinstance(ms, str):
                lines.append(f"| {L_} | {name} | {ms} | - | - | {floor:.2f} |")
            else:
                lines.append(f"| {L_} | {name} | {ms:.2f} | {tbs:.2f} | {share:.0%} | {floor:.2f} |")
            print(lines[-1], flush=True)
    if args.backward:
        lines += [
            "",
            f"Forward + backward (grad u and grad k of sum(y * g)), B={B}, H={H}, n=2L, ms:",
            "",
            "| L | precision | forward | forward + backward | ratio |",
            "|---|---|---|---|---|",
        ]
        for L in args.lengths:
            for precision, fwd, both in bench_backward(L):
                lines.append(f"| {L} | {precision} | {fwd:.2f} | {both:.2f} | {both / fwd:.2f}x |")
                print(lines[-1], flush=True)
    if args.long:
        lines += [
            "",
            "Long sequences: B=1, H=64, causal (kernel (H, L), n=2L); time in ms and MLX peak memory of one "
            "call above what was allocated before it, each against MLX's composed path:",
            "",
            "| L | implementation | time (ms) | x composed | peak (GiB) | x composed |",
            "|---|---|---|---|---|---|",
        ]
        for e in args.long_exponents:
            rows = bench_long(1 << e)
            _, ref_ms, ref_gib = rows[-1]
            for name, ms, gib in rows:
                lines.append(
                    f"| 2^{e} | {name} | {ms:.2f} | {ms / ref_ms:.2f}x | {gib:.3f} | {gib / ref_gib:.2f}x |"
                )
                print(lines[-1], flush=True)
    if args.adversarial:
        lines += [
            "",
            "Adversarial rows (issue 15's worst case): B=1, H=64, causal, n=2L; every output of the tie rows",
            "is an exact float32 tie (checked rounded half to even), so all take the exact recompute; ms:",
            "",
            "| L | precision | normal rows | all ties | ratio |",
            "|---|---|---|---|---|",
        ]
        for L in args.adversarial:
            for precision, normal_ms, ties_ms in bench_adversarial(L):
                lines.append(f"| {L} | {precision} | {normal_ms:.2f} | {ties_ms:.2f} | {ties_ms / normal_ms:.1f}x |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
