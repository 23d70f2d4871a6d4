"""Cost of certifying extended layer_norm's gradients on the CPU, side by side in one
process: dx, dweight and dbias of an (R, D) row block, each alone and all three,
next to the forward, for this build and optionally an earlier build of
the extension (--before PATH/_ext*.so, loaded next to this one), so that a change
of the bounds is measured against the code it replaces in one run.

Not a test. One thread (MLX_PRECISE_NUM_THREADS=1) unless --threads says otherwise.
Run: PYTHONPATH=. python benchmarks/bench_layer_norm_certify.py --before /tmp/old/_ext...so
"""

import argparse
import importlib.util
import os

import numpy as np
from bench_strict import median_ms


def load_extension(path):
    spec = importlib.util.spec_from_file_location("mlx_precise_before._ext", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--before", help="an earlier build's _ext*.so, timed next to this one")
    args = parser.parse_args()
    os.environ["MLX_PRECISE_NUM_THREADS"] = str(args.threads)
    import mlx.core as mx

    import mlx_precise as mp

    builds = [("this build", mp._ext)]
    if args.before:
        builds.insert(0, ("before", load_extension(args.before)))
    rng = np.random.default_rng(0)
    shape = (args.rows, args.dim)
    x, g = (mx.array(rng.standard_normal(shape).astype(np.float32)) for _ in range(2))
    w, b = (mx.array(rng.standard_normal(args.dim).astype(np.float32)) for _ in range(2))
    mx.eval(x, g, w, b)

    def timings(ext):
        def ln(x_, w_, b_):
            return ext.layer_norm(x_, w_, b_, 1e-5, precision="extended")

        cases = {
            "forward": lambda: mx.eval(ln(x, w, b)),
            "dx": lambda: mx.eval(mx.vjp(lambda x_: ln(x_, w, b), [x], [g])[1]),
            "dweight": lambda: mx.eval(mx.vjp(lambda w_: ln(x, w_, b), [w], [g])[1]),
            "dbias": lambda: mx.eval(mx.vjp(lambda b_: ln(x, w, b_), [b], [g])[1]),
            "dx, dweight, dbias": lambda: mx.eval(mx.vjp(ln, [x, w, b], [g])[1]),
        }
        return {k: median_ms(f, args.repeats) for k, f in cases.items()}

    # Interleaved rounds, so that the shared machine's load hits both builds alike.
    results = {name: {} for name, _ in builds}
    for _ in range(3):
        for name, ext in builds:
            for k, v in timings(ext).items():
                results[name].setdefault(k, []).append(v)
    print(f"extended layer_norm {args.rows} x {args.dim}, {args.threads} thread(s), median ms "
          f"(best of 3 interleaved rounds of {args.repeats})")
    names = [n for n, _ in builds]
    print("| | " + " | ".join(names) + (" | after / before |" if args.before else " |"))
    print("|---|" + "---:|" * (len(names) + (1 if args.before else 0)))
    for k in results[names[0]]:
        best = [min(results[n][k]) for n in names]
        row = f"| {k} | " + " | ".join(f"{v:.2f}" for v in best)
        print(row + (f" | {best[1] / best[0]:.2f} |" if args.before else " |"))


if __name__ == "__main__":
    main()
