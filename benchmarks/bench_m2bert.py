"""M2-BERT 80M forward (random init, batch 1): MLX float32 / extended / dd / exact vs the
PyTorch reference float32. Wall time, peak memory, and where MLX's time goes.

    PYTHONPATH=.:models:tests python benchmarks/bench_m2bert.py --lengths 2048 8192

Each measurement runs in a fresh subprocess so that peak memory is its own: MLX's
``mx.get_peak_memory()`` (MLX allocations) and, for both, the process's peak RSS growth
over the RSS after building the model (``resource.getrusage``). The breakdown run
evaluates every routed op eagerly (ops.py functions wrapped with ``mx.eval``), so its
total is a little above the plain forward; it attributes time to linears, block-diagonal
products, long/short convolutions, layer norms and the rest (elementwise, embeddings).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict

PRECISIONS = ("float32", "extended", "dd", "exact")


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(seq_len: int):
    import torch
    from m2bert import M2BertConfig
    from m2bert_reference import ReferenceM2Bert, initialize_

    config = M2BertConfig(max_position_embeddings=seq_len, long_conv_l_max=seq_len)
    torch.manual_seed(0)
    reference = initialize_(ReferenceM2Bert(config), seed=0).eval()
    token_ids = torch.randint(0, config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(1))
    return config, reference, token_ids


def run_torch(seq_len: int, repeats: int) -> dict:
    import torch

    config, reference, token_ids = build(seq_len)
    baseline = current_rss_mib()
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            reference(token_ids)
            times.append(time.perf_counter() - start)
    return {"seconds": min(times), "rss_growth_mib": rss_peak_mib() - baseline,
            "threads": torch.get_num_threads()}


def mlx_model(seq_len: int, precision: str):
    import mlx.core as mx
    from m2bert import M2BertModel, load_state_dict

    config, reference, token_ids = build(seq_len)
    model = M2BertModel(config, precision=precision)
    load_state_dict(model, {
        name: mx.array((t.float() if t.is_floating_point() else t).numpy())
        for name, t in reference.state_dict().items()
    })
    ids = mx.array(token_ids.numpy())
    del reference
    return model, ids


def run_mlx(seq_len: int, precision: str, repeats: int) -> dict:
    import mlx.core as mx

    model, ids = mlx_model(seq_len, precision)
    baseline = current_rss_mib()
    mx.reset_peak_memory()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(model(ids))
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "mlx_peak_mib": mx.get_peak_memory() / 2**20,
            "rss_growth_mib": rss_peak_mib() - baseline}


def run_mlx_breakdown(seq_len: int, precision: str) -> dict:
    import mlx.core as mx
    from m2bert import ops
    from mlx_precise.nn import LayerNorm, Linear

    model, ids = mlx_model(seq_len, precision)
    spent = defaultdict(float)
    categories = {
        "blockdiag_linear": "Monarch block-diagonal MLP",
        "long_conv": "long convolutions (rfft_conv)",
        "bidirectional_kernel": "long-convolution kernels (concatenate)",
        "short_causal_conv": "short 3-tap convolution",
    }
    # The linears and layer norms are mlx_precise.nn modules: their __call__ is timed.
    module_categories = {
        Linear: "linears (in/out/pooler/filter MLPs)",
        LayerNorm: "layer norms",
    }
    nesting = [0]

    def timed(category, function):
        def wrapper(*args, **kwargs):
            nesting[0] += 1
            start = time.perf_counter()
            result = function(*args, **kwargs)
            mx.eval(result)
            nesting[0] -= 1
            if nesting[0] == 0:  # count the outermost timed call only
                spent[category] += time.perf_counter() - start
            return result
        return wrapper

    originals = {name: getattr(ops, name) for name in categories}
    module_calls = {cls: cls.__call__ for cls in module_categories}
    for name, function in originals.items():
        setattr(ops, name, timed(categories[name], function))
    for cls, call in module_calls.items():
        cls.__call__ = timed(module_categories[cls], call)
    try:
        start = time.perf_counter()
        mx.eval(model(ids))
        total = time.perf_counter() - start
    finally:
        for name, function in originals.items():
            setattr(ops, name, function)
        for cls, call in module_calls.items():
            cls.__call__ = call
    spent["elementwise, embeddings, rest"] = total - sum(spent.values())
    return {"total_seconds": total, "parts": dict(spent)}


def worker(args) -> None:
    if args.framework == "torch":
        result = run_torch(args.length, args.repeats)
    elif args.breakdown:
        result = run_mlx_breakdown(args.length, args.precision)
    else:
        result = run_mlx(args.length, args.precision, args.repeats)
    print(json.dumps(result))


def spawn(*extra: str) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", *extra], capture_output=True, text=True
    )
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": last_line}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards; the best counts")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--framework", choices=("mlx", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    print(f"M2-BERT 80M (hidden 768, 12 layers, intermediate 3072), batch 1, "
          f"{os.cpu_count()} CPU cores, best of {args.repeats}")
    print("| L | implementation | wall s | MLX peak MiB | RSS growth MiB |")
    print("|---|---|---|---|---|")
    for length in args.lengths:
        common = ["--length", str(length), "--repeats", str(args.repeats)]
        torch_result = spawn("--framework", "torch", *common)
        print(f"| {length} | torch float32 ({torch_result.get('threads')} threads) | "
              f"{torch_result.get('seconds', float('nan')):.2f} | - | "
              f"{torch_result.get('rss_growth_mib', float('nan')):.0f} |", flush=True)
        for precision in args.precisions:
            result = spawn("--framework", "mlx", "--precision", precision, *common)
            if "error" in result:
                print(f"| {length} | MLX {precision} | not run: {result['error']} | | |", flush=True)
                continue
            print(f"| {length} | MLX {precision} | {result['seconds']:.2f} | "
                  f"{result['mlx_peak_mib']:.0f} | {result['rss_growth_mib']:.0f} |", flush=True)
    if args.no_breakdown:
        return
    for length in args.lengths:
        for precision in args.precisions:
            result = spawn("--framework", "mlx", "--precision", precision, "--length",
                           str(length), "--breakdown")
            if "error" in result:
                continue
            print(f"\nMLX {precision}, L={length}: eager-evaluated forward "
                  f"{result['total_seconds']:.2f} s")
            for part, seconds in sorted(result["parts"].items(), key=lambda item: -item[1]):
                print(f"  {part:40s} {seconds:7.2f} s  {100 * seconds / result['total_seconds']:5.1f} %")


if __name__ == "__main__":
    main()
