"""M2-BERT 80M forward on a GPU: MLX float32 / extended / dd / exact vs the PyTorch
reference float32 on CUDA (random init shared by both).

    PYTHONPATH=.:models:tests python benchmarks/bench_m2bert_gpu.py \
        [--lengths 2048 8192] [--batches 1 8] [--precisions float32 extended exact] \
        [--compile] [--fallback]

Issue #11's table: the defaults (L = 2048 and 8192, batch 1 and 8) with
--precisions float32 extended exact.

Each implementation runs one warm-up forward first, timed on its own ("first s": it
includes the kernels' JIT compilation, mlx_precise's NVRTC modules on a fresh process
and MLX's own, and buffer allocation), then --repeats timed forwards (their median);
mx.eval waits for the device, torch is synchronised explicitly.
Time and peak memory are also given as ratios to MLX float32 on the same input
(issue #11's targets for "exact": at most 2.5x the time and 2x the peak memory). Peak
memory: mx.get_peak_memory() plus mlx_precise's own CUDA allocations (its outputs and
workspaces, outside MLX's allocator: _ext.device_peak_memory()), the sum of the two
peaks, so at least the true peak.
precision="float32" products are plain float32 on CUDA (mlx_precise's own GEMM, never
TF32, whatever MLX_ENABLE_TF32 says). --compile also times mx.compile of the forward;
--fallback reports, for the extended forward at the first length, the share of the
linears' outputs that the GPU certification sends to the exact recompute (real
activations of this model).
"""

import argparse
import gc
import os
import time

import mlx.core as mx
import mlx_precise
import numpy as np
import torch
from m2bert import M2BertConfig, M2BertModel, load_state_dict
from m2bert_reference import ReferenceM2Bert, initialize_

PRECISIONS = ("float32", "extended", "dd", "exact")


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def first_and_median_seconds(fn, repeats):
    """The first call's seconds (the warm-up) and the median of ``repeats`` calls after it."""
    first = timed(fn)
    return first, float(np.median([timed(fn) for _ in range(repeats)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fallback", action="store_true")
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    args = parser.parse_args()
    on_gpu = args.device == "gpu"
    mx.set_default_device(mx.gpu if on_gpu else mx.cpu)
    torch_device = "cuda" if on_gpu else "cpu"
    name = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(f"M2-BERT 80M, {name}; MLX {mx.__version__} (MLX_ENABLE_TF32="
          f"{os.environ.get('MLX_ENABLE_TF32', 'default')}), torch {torch.__version__}")
    if args.fallback:
        print(fallback_report(args.lengths[0]), flush=True)
    print("| L | batch | implementation | median s | × torch float32 | × MLX float32 | "
          "peak GiB | peak × MLX float32 | first s |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for L in args.lengths:
        config = M2BertConfig(max_position_embeddings=L, long_conv_l_max=L)
        reference = initialize_(ReferenceM2Bert(config), seed=0).eval()
        state = {n: mx.array((t.float() if t.is_floating_point() else t).numpy())
                 for n, t in reference.state_dict().items()}
        reference = reference.to(torch_device)
        for batch in args.batches:
            token_ids = torch.randint(
                0, config.vocab_size, (batch, L), generator=torch.Generator().manual_seed(1)
            )
            ids_torch = token_ids.to(torch_device)

            def torch_forward():
                with torch.no_grad():
                    reference(ids_torch)
                if on_gpu:
                    torch.cuda.synchronize()

            torch_first, torch_s = first_and_median_seconds(torch_forward, args.repeats)
            print(f"| {L} | {batch} | torch float32 | {torch_s:.3f} | 1.00 | - | - | - | "
                  f"{torch_first:.3f} |", flush=True)
            ids = mx.array(token_ids.numpy())
            float32_s = float32_peak = None
            for precision in args.precisions:
                model = M2BertModel(config, precision=precision)
                load_state_dict(model, state)
                mx.clear_cache()
                mx.reset_peak_memory()
                mlx_precise._ext.reset_device_peak_memory()
                first, seconds = first_and_median_seconds(lambda: mx.eval(model(ids)), args.repeats)
                peak = (mx.get_peak_memory() + mlx_precise._ext.device_peak_memory()) / 2**30
                if precision == "float32":
                    float32_s, float32_peak = seconds, peak
                ratios = ("-", "-") if float32_s is None else (
                    f"{seconds / float32_s:.2f}", f"{peak / float32_peak:.2f}")
                print(f"| {L} | {batch} | MLX {precision} | {seconds:.3f} | "
                      f"{seconds / torch_s:.2f} | {ratios[0]} | {peak:.2f} | {ratios[1]} | "
                      f"{first:.3f} |", flush=True)
                if args.compile:
                    compiled = mx.compile(lambda ids: model(ids))
                    c_first, c_seconds = first_and_median_seconds(
                        lambda: mx.eval(compiled(ids)), args.repeats)
                    print(f"| {L} | {batch} | MLX {precision}, mx.compile | {c_seconds:.3f} | "
                          f"{c_seconds / torch_s:.2f} | {seconds / c_seconds:.2f}x faster than eager "
                          f"| - | - | {c_first:.3f} |", flush=True)
                    # Its cached graph holds the model's arrays until the function goes.
                    del compiled
                del model
                gc.collect()
                mx.clear_cache()
        del reference


def fallback_report(L):
    """Share of extended outputs recomputed exactly, over every linear of one forward
    (batch 1, length L) on this model's real activations."""
    import mlx_precise.nn as precise_nn
    from bench_gpu_strict import uncertified_fraction

    config = M2BertConfig(max_position_embeddings=L, long_conv_l_max=L)
    reference = initialize_(ReferenceM2Bert(config), seed=0).eval()
    state = {n: mx.array((t.float() if t.is_floating_point() else t).numpy())
             for n, t in reference.state_dict().items()}
    ids = mx.array(torch.randint(0, config.vocab_size, (1, L),
                                 generator=torch.Generator().manual_seed(1)).numpy())
    model = M2BertModel(config, precision="extended")
    load_state_dict(model, state)
    seen = []
    linear = precise_nn.linear

    def recording_linear(x, weight, bias, precision):
        y = linear(x, weight, bias, precision=precision)
        rows = x.reshape(-1, x.shape[-1])
        c = bias if bias is not None else mx.zeros((1,), dtype=mx.float32)
        seen.append((rows.shape[0] * weight.shape[0], uncertified_fraction(c, rows, weight.T)))
        return y

    precise_nn.linear = recording_linear
    try:
        mx.eval(model(ids))
    finally:
        precise_nn.linear = linear
    outputs = sum(n for n, _ in seen)
    recomputed = sum(n * f for n, f in seen)
    worst = max(f for _, f in seen)
    return (f"extended linears at L={L}: {len(seen)} products, {outputs} outputs, "
            f"{recomputed / outputs:.2e} recomputed exactly (worst product {worst:.2e})")


if __name__ == "__main__":
    main()
