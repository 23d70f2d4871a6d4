"""Accuracy and speed of rfft_conv against MLX's composed float32 FFT convolution.

    python -m mlx_precise.demo [--L 4096] [--batch 4] [--channels 64]

The reference is the exact convolution to ~1e-19 (numpy's longdouble FFT of the
float32 inputs); numpy serves only the reference and the printout.
"""

import argparse
import time

import mlx.core as mx
import numpy as np

import mlx_precise as mp


def exact_reference(u, k, n):
    uL, kL = u.astype(np.longdouble), k.astype(np.longdouble)
    return np.fft.irfft(np.fft.rfft(uL, n) * np.fft.rfft(kL, n), n)[..., : u.shape[-1]]


def measure(y, ref):
    y = np.asarray(y, dtype=np.float32)
    correct = float(np.mean(y == ref.astype(np.float32)))
    diff = (y.astype(np.longdouble) - ref).astype(np.float64)
    rel = float(np.linalg.norm(diff) / np.linalg.norm(ref.astype(np.float64)))
    return correct, rel


def median_ms(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--L", type=int, default=4096, help="sequence length")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=64)
    args = parser.parse_args()
    B, H, L = args.batch, args.channels, args.L
    rng = np.random.default_rng()
    u_np = rng.standard_normal((B, H, L)).astype(np.float32)
    # A Hyena-like filter: random taps under an exponential envelope.
    k_np = (rng.standard_normal((H, L)) * np.exp(-8.0 * np.arange(L) / L)).astype(np.float32)
    u, k = mx.array(u_np), mx.array(k_np)
    n = 2 * L
    ref = exact_reference(u_np, k_np, n)

    def composed():
        # The composed float32 FFT convolution is the baseline this demo measures.
        return mx.fft.irfft(mx.fft.rfft(u, n) * mx.fft.rfft(k, n), n)[..., :L]  # mlx-precise: ignore[MP005]

    rows = [("MLX composed mx.fft (float32)", composed)]
    for precision in mp.PRECISIONS:
        rows.append((f"mlx_precise.rfft_conv {precision}", lambda p=precision: mp.rfft_conv(u, k, precision=p)))

    print(f"Causal FFT convolution, B={B} H={H} L={L}, float32 in and out, CPU ({mx.default_device()})")
    print(f"{'method':38s} {'correctly rounded':>18s} {'relative L2':>12s} {'time ms':>9s}")
    for name, fn in rows:
        y = fn()
        mx.eval(y)
        correct, rel = measure(np.array(y), ref)
        ms = median_ms(lambda: mx.eval(fn()))
        print(f"{name:38s} {100 * correct:17.2f}% {rel:12.2e} {ms:9.1f}")


if __name__ == "__main__":
    main()
