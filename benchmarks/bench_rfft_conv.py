"""CPU benchmark of rfft_conv: time and accuracy, side by side in one run.

    python benchmarks/bench_rfft_conv.py [--repeats 7] [--plot benchmarks/rfft_conv_accuracy.png]
        [--baseline DIR]

Times: B=4, H=64, L in {1024, 4096, 16384}, causal convolution with an L-long
kernel (transform size 2L). Methods run round-robin, so load on a shared
machine hits all of them alike; the median of the repeats is reported, with
ratios to MLX's composed float32 path. Forward+backward is value_and_grad of
sum(y * g) with respect to u and k.
--certification times the cost of certifying extended outputs instead (one thread,
process CPU time, certified and uncertified runs alternating in one process through
mlx_precise._ext.testing.set_rfft_conv_certification): random and Hyena-like
kernels at each L, then adversarial rows whose every output is left open.
--baseline DIR times the extended mode of another build of mlx_precise too (DIR holds
its mlx_precise/ package with the built extension, e.g. a worktree of the commit
before certification), so the cost of certification is measured side by side.
Accuracy plot: relative L2 error and correctly rounded fraction against the
exact result (longdouble FFT) for L = 256 ... 16384.
"""

import argparse
import os
import time

# torch's OpenMP workers spin after every call by default; on 2 cores that steals
# the CPU from whichever method runs next in the round robin. Passive waiting
# keeps the methods independent (it costs torch a little wake-up latency).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numpy's OpenBLAS threads do the same; nothing here calls BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import mlx.core as mx
import numpy as np
import torch

import mlx_precise as mp

B, H = 4, 64


def mlx_composed(u, k, L):
    n = 2 * L
    return mx.fft.irfft(mx.fft.rfft(u, n) * mx.fft.rfft(k, n), n)[..., :L]


def torch_conv(u, k, L):
    n = 2 * L
    return torch.fft.irfft(torch.fft.rfft(u, n) * torch.fft.rfft(k, n), n)[..., :L]


def numpy_conv(u, k, L):
    n = 2 * L
    return np.fft.irfft(np.fft.rfft(u, n) * np.fft.rfft(k, n), n)[..., :L]


def load_baseline(path):
    """mlx_precise from another build, imported under its own name."""
    import importlib.util
    import sys

    init = os.path.join(path, "mlx_precise", "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "mlx_precise_baseline", init, submodule_search_locations=[os.path.dirname(init)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlx_precise_baseline"] = module
    spec.loader.exec_module(module)
    return module


BASELINE = None


def forward_methods(u_np, k_np, L):
    u, k = mx.array(u_np), mx.array(k_np)
    tu32, tk32 = torch.from_numpy(u_np), torch.from_numpy(k_np)
    tu64, tk64 = tu32.double(), tk32.double()
    u64, k64 = u_np.astype(np.float64), k_np.astype(np.float64)
    methods = {
        "MLX composed f32": lambda: mx.eval(mlx_composed(u, k, L)),
        "torch f32": lambda: torch_conv(tu32, tk32, L),
        "torch f64": lambda: torch_conv(tu64, tk64, L),
        "numpy f64": lambda: numpy_conv(u64, k64, L),
    }
    for p in mp.PRECISIONS:
        methods[f"rfft_conv {p}"] = lambda p=p: mx.eval(mp.rfft_conv(u, k, precision=p))
    if BASELINE is not None:
        methods["baseline extended"] = lambda: mx.eval(BASELINE.rfft_conv(u, k, precision="extended"))
    return methods


def backward_methods(u_np, k_np, g_np, L):
    u, k, g = mx.array(u_np), mx.array(k_np), mx.array(g_np)

    def grad_of(conv):
        return mx.value_and_grad(lambda u, k: mx.sum(conv(u, k) * g), argnums=(0, 1))

    methods = {"MLX composed f32": grad_of(lambda u, k: mlx_composed(u, k, L))}
    for p in mp.PRECISIONS:
        methods[f"rfft_conv {p}"] = grad_of(lambda u, k, p=p: mp.rfft_conv(u, k, precision=p))
    tu = torch.from_numpy(u_np).requires_grad_()
    tk = torch.from_numpy(k_np).requires_grad_()
    tg = torch.from_numpy(g_np)

    def torch_step():
        tu.grad = tk.grad = None
        (torch_conv(tu, tk, L) * tg).sum().backward()

    timed = {name: (lambda f=f: mx.eval(f(u, k))) for name, f in methods.items()}
    timed["torch f32"] = torch_step
    return timed


def round_robin(methods, repeats):
    for fn in methods.values():
        fn()  # warm-up: plans, twiddles, allocations
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def hyena_kernel(rng, shape):
    L = shape[-1]
    return (rng.standard_normal(shape) * np.exp(-8.0 * np.arange(L) / L)).astype(np.float32)


def certification_cost(rng, lengths, repeats):
    """Certified / uncertified extended rfft_conv, one thread, median process CPU time."""
    from mlx_precise import _ext

    def timed(u, k, certify):
        _ext.testing.set_rfft_conv_certification(certify)
        try:
            start = time.process_time()
            mx.eval(mp.rfft_conv(u, k, precision="extended"))
            return time.process_time() - start
        finally:
            _ext.testing.set_rfft_conv_certification(True)

    def ratio(u, k):
        u, k = mx.array(u), mx.array(k)
        timed(u, k, True), timed(u, k, False)  # warm-up: plans, buffers
        times = {True: [], False: []}
        for _ in range(repeats):
            for certify in (True, False):
                times[certify].append(timed(u, k, certify))
        return float(np.median(times[False])), float(np.median(times[True]) / np.median(times[False]))

    print(f"\n### Cost of certification (extended, B={B} H={H}, one thread, median of {repeats}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)\n")
    print("| rows | " + " | ".join(f"L={L}: uncertified ms, certified/uncertified" for L in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    cases = {
        "random u, random k": lambda L: (rng.standard_normal((B, H, L)), rng.standard_normal((H, L))),
        "random u, Hyena k": lambda L: (rng.standard_normal((B, H, L)), hyena_kernel(rng, (H, L))),
        # Adversarial: one huge sample at the end of each row puts every earlier output
        # far below the row's error bound, so every output is recomputed: O(L^2) (8 rows).
        "adversarial (8 rows): every output open": lambda L: (
            np.concatenate([rng.standard_normal((8, L - 1)), np.full((8, 1), 1e30)], axis=-1),
            rng.standard_normal((8, L)),
        ),
    }
    for name, make in cases.items():
        cells = []
        for L in lengths:
            u, k = make(L)
            base, r = ratio(u.astype(np.float32), k.astype(np.float32))
            cells.append(f"{1e3 * base:.1f}, {r:.3f}x")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def print_table(title, results, lengths):
    names = list(results[lengths[0]])
    print(f"\n### {title}\n")
    print("| method | " + " | ".join(f"L={L} ms (vs MLX)" for L in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for name in names:
        cells = []
        for L in lengths:
            t, base = results[L][name], results[L]["MLX composed f32"]
            cells.append(f"{t:.1f} ({base / t:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")


def exact(u, k, L):
    n = 2 * L
    uL, kL = u.astype(np.longdouble), k.astype(np.longdouble)
    return np.fft.irfft(np.fft.rfft(uL, n) * np.fft.rfft(kL, n), n)[..., :L]


def accuracy_sweep(rng, lengths):
    curves = {}
    for L in lengths:
        u = rng.standard_normal((2, 16, L)).astype(np.float32)
        k = (rng.standard_normal((16, L)) * np.exp(-8.0 * np.arange(L) / L)).astype(np.float32)
        ref = exact(u, k, L)
        outputs = {
            "MLX composed f32": np.array(mlx_composed(mx.array(u), mx.array(k), L)),
            "torch f32": torch_conv(torch.from_numpy(u), torch.from_numpy(k), L).numpy(),
        }
        for p in mp.PRECISIONS:
            outputs[f"rfft_conv {p}"] = np.array(mp.rfft_conv(mx.array(u), mx.array(k), precision=p))
        for name, y in outputs.items():
            correct = float(np.mean(y == ref.astype(np.float32)))
            rel = float(np.linalg.norm((y - ref).astype(np.float64)) / np.linalg.norm(ref.astype(np.float64)))
            curves.setdefault(name, []).append((L, rel, correct))
    return curves


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, pts in curves.items():
        Ls, rel, cr = zip(*pts)
        # dd and extended give the same (correctly rounded) values: dashes keep both visible.
        style = dict(marker="o", label=name, linestyle="--" if name.endswith("dd") else "-")
        ax1.plot(Ls, rel, **style)
        ax2.plot(Ls, [100 * c for c in cr], **style)
    ax1.set(xscale="log", yscale="log", xlabel="L", ylabel="relative L2 error vs exact",
            title="Error (float32 rounding floor ~2.5e-8)")
    ax1.axhline(2.5e-8, color="gray", linestyle=":")
    ax2.set(xscale="log", xlabel="L", ylabel="% outputs correctly rounded", title="Correctly rounded outputs")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot written to {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--plot", default="benchmarks/rfft_conv_accuracy.png")
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--baseline", help="another build of mlx_precise to time extended against")
    parser.add_argument("--certification", action="store_true", help="time the cost of certification only")
    args = parser.parse_args()
    if args.certification:
        os.environ["MLX_PRECISE_NUM_THREADS"] = "1"
        certification_cost(np.random.default_rng(), args.lengths, args.repeats)
        return
    global BASELINE
    if args.baseline:
        BASELINE = load_baseline(args.baseline)
    torch.set_num_threads(2)
    rng = np.random.default_rng()
    print(f"CPU, B={B} H={H}, median of {args.repeats} round-robin repeats; MLX {mx.__version__}, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    fwd, bwd = {}, {}
    for L in args.lengths:
        u = rng.standard_normal((B, H, L)).astype(np.float32)
        k = hyena_kernel(rng, (H, L))
        g = rng.standard_normal((B, H, L)).astype(np.float32)
        fwd[L] = round_robin(forward_methods(u, k, L), args.repeats)
        if not args.no_backward:
            bwd[L] = round_robin(backward_methods(u, k, g, L), args.repeats)
    print_table("Forward", fwd, args.lengths)
    if bwd:
        print_table("Forward + backward (grad u, k)", bwd, args.lengths)
    for L in args.lengths:
        f32 = fwd[L]["rfft_conv float32"]
        print(f"L={L}: dd/float32 forward {fwd[L]['rfft_conv dd'] / f32:.1f}x, "
              f"extended/float32 {fwd[L]['rfft_conv extended'] / f32:.2f}x")
        if BASELINE is not None:
            print(f"L={L}: certification cost: extended / baseline extended "
                  f"{fwd[L]['rfft_conv extended'] / fwd[L]['baseline extended']:.3f}x")
    if args.plot:
        curves = accuracy_sweep(rng, [256, 1024, 4096, 16384])
        print("\n### Accuracy vs exact (relative L2 / correctly rounded)\n")
        print("| method | " + " | ".join(f"L={L}" for L, _, _ in next(iter(curves.values()))) + " |")
        print("|---|" + "---|" * len(next(iter(curves.values()))))
        for name, pts in curves.items():
            print(f"| {name} | " + " | ".join(f"{rel:.2e} / {100 * c:.1f}%" for _, rel, c in pts) + " |")
        plot(curves, args.plot)


if __name__ == "__main__":
    main()
