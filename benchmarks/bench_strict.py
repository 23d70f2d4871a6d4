"""Side-by-side CPU timings of addmm (2048, 768, 2304) and layer_norm 4096 x 768.

Not a test: prints a markdown table (median of --repeats runs, ms, and the ratio
to torch float32). Run: PYTHONPATH=. python benchmarks/bench_strict.py
"""

import argparse
import time

import mlx.core as mx
import numpy as np
import torch

import mlx_precise as mp


def median_ms(fn, repeats):
    fn()  # warm-up: plans, allocations, thread pools
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dd-repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)

    m, k, n = 2048, 768, 2304
    a, b, c = (rng.standard_normal(s).astype(np.float32) for s in ((m, k), (k, n), (n,)))
    ta, tb, tc = map(torch.from_numpy, (a, b, c))
    ta64, tb64, tc64 = ta.double(), tb.double(), tc.double()
    a64, b64, c64 = a.astype(np.float64), b.astype(np.float64), c.astype(np.float64)
    xa, xb, xc = mx.array(a), mx.array(b), mx.array(c)
    mx.eval(xa, xb, xc)
    r = args.repeats
    addmm_rows = [
        ("torch float32 (addmm)", median_ms(lambda: torch.addmm(tc, ta, tb), r)),
        ("torch float64 (addmm)", median_ms(lambda: torch.addmm(tc64, ta64, tb64), r)),
        ("numpy float64 (a @ b + c)", median_ms(lambda: a64 @ b64 + c64, r)),
        ("mx.addmm float32", median_ms(lambda: mx.eval(mx.addmm(xc, xa, xb)), min(r, 5))),
    ]
    for p in mp.PRECISIONS:
        reps = args.dd_repeats if p == "dd" else (min(r, 5) if p == "float32" else r)
        addmm_rows.append((f"mlx_precise.addmm {p}",
                           median_ms(lambda: mx.eval(mp.addmm(xc, xa, xb, precision=p)), reps)))

    rows, dim = 4096, 768
    x, w, bias = (rng.standard_normal(s).astype(np.float32) for s in ((rows, dim), (dim,), (dim,)))
    tx, tw, tbias = map(torch.from_numpy, (x, w, bias))
    xx, xw, xbias = mx.array(x), mx.array(w), mx.array(bias)
    mx.eval(xx, xw, xbias)
    F = torch.nn.functional
    ln_rows = [
        ("torch float32 (F.layer_norm)", median_ms(lambda: F.layer_norm(tx, (dim,), tw, tbias), 5 * r)),
        ("torch float64 (F.layer_norm)",
         median_ms(lambda: F.layer_norm(tx.double(), (dim,), tw.double(), tbias.double()), 5 * r)),
        ("mx.fast.layer_norm float32", median_ms(lambda: mx.eval(mx.fast.layer_norm(xx, xw, xbias, 1e-5)), r)),
    ]
    for p in mp.PRECISIONS:
        ln_rows.append((f"mlx_precise.layer_norm {p}",
                        median_ms(lambda: mx.eval(mp.layer_norm(xx, xw, xbias, precision=p)), 5 * r)))

    for title, table in ((f"addmm (M, K, N) = ({m}, {k}, {n})", addmm_rows),
                         (f"layer_norm {rows} x {dim}", ln_rows)):
        anchor = table[0][1]
        print(f"\n**{title}** (median ms, CPU, 2 threads)\n")
        print("| implementation | ms | x torch float32 |")
        print("|---|---:|---:|")
        for name, ms in table:
            print(f"| {name} | {ms:.2f} | {ms / anchor:.2f} |")


if __name__ == "__main__":
    main()
