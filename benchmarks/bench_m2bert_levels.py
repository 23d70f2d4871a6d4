"""M2-BERT's three precision levels side by side on the same inputs: the share of outputs
equal to float32(torch float64 output), the relative L2 error against torch float64, and
the forward time (median of --repeats after one warm-up forward), on the CPU.

    PYTHONPATH=.:models:tests python benchmarks/bench_m2bert_levels.py

- float32:  rounds at every op;
- extended: each op correctly rounded (rounds between ops);
- exact:    activations carried as pairs (mlx_precise.pair), one rounding at the end.
The configurations are the tests' (tests/test_m2bert.py: 2 layers, random init of the
published model; batch 2).
"""

import argparse
import time

import mlx.core as mx
import numpy as np
import torch
from test_m2bert import Case

PRECISIONS = ("float32", "extended", "dd", "exact")


def median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def scores(output, reference):
    output = np.asarray(output, dtype=np.float64)
    reference = reference.numpy()
    equal = np.mean(output.astype(np.float32) == reference.astype(np.float32))
    error = np.linalg.norm(output - reference) / np.linalg.norm(reference)
    return equal, error


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["64x256", "768x128"],
                        help="hidden x sequence length")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    mx.set_default_device(mx.cpu)
    print(f"CPU, torch {torch.get_num_threads()} threads; MLX {mx.__version__}")
    print("| hidden × L | implementation | hidden = f32(torch f64) | pooled = f32(torch f64) "
          "| rel. L2 hidden | rel. L2 pooled | forward s |")
    print("|---|---|---|---|---|---|---|")
    for config in args.configs:
        hidden_size, length = (int(v) for v in config.split("x"))
        case = Case(hidden_size, length)
        ids = mx.array(case.token_ids.numpy())
        types = mx.array(case.token_type_ids.numpy())

        def torch_forward():
            with torch.no_grad():
                case.reference(case.token_ids, case.token_type_ids)

        rows = [("torch float32", case.torch32, median_seconds(torch_forward, args.repeats))]
        for precision in args.precisions:
            case.model.set_precision(precision)
            outputs = case.model(ids, types)
            mx.eval(outputs)
            seconds = median_seconds(lambda: mx.eval(case.model(ids, types)), args.repeats)
            rows.append((f"MLX {precision}", outputs, seconds))
        for name, (hidden, pooled), seconds in rows:
            (h_eq, h_err), (p_eq, p_err) = scores(hidden, case.torch64[0]), scores(pooled, case.torch64[1])
            print(f"| {hidden_size} × {length} | {name} | {h_eq:.4%} | {p_eq:.4%} | {h_err:.2e} | "
                  f"{p_err:.2e} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
