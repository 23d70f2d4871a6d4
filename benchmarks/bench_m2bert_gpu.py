"""M2-BERT 80M forward on a GPU: MLX float32 / extended / dd / exact vs the PyTorch
reference float32 on CUDA (random init shared by both).

    PYTHONPATH=.:models:tests python benchmarks/bench_m2bert_gpu.py --lengths 2048 8192 --batches 1 8

Each MLX precision runs after one warm-up forward (which also compiles the kernels);
mx.eval waits for the device, torch is synchronised explicitly. Median of --repeats.
Time and MLX peak memory are also given as ratios to MLX float32 on the same input
(issue #11's targets for "exact": at most 2.5x the time and 2x the peak memory).
MLX's float32 matmuls use MLX's default (TF32 unless MLX_ENABLE_TF32=0).
"""

import argparse
import os
import time

import mlx.core as mx
import numpy as np
import torch
from m2bert import M2BertConfig, M2BertModel, load_state_dict
from m2bert_reference import ReferenceM2Bert, initialize_

PRECISIONS = ("float32", "extended", "dd", "exact")


def median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    args = parser.parse_args()
    on_gpu = args.device == "gpu"
    mx.set_default_device(mx.gpu if on_gpu else mx.cpu)
    torch_device = "cuda" if on_gpu else "cpu"
    name = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(f"M2-BERT 80M, {name}; MLX {mx.__version__} (MLX_ENABLE_TF32="
          f"{os.environ.get('MLX_ENABLE_TF32', 'default')}), torch {torch.__version__}")
    print("| L | batch | implementation | median s | × torch float32 | × MLX float32 | "
          "MLX peak GiB | peak × MLX float32 |")
    print("|---|---|---|---|---|---|---|---|")
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

            torch_s = median_seconds(torch_forward, args.repeats)
            print(f"| {L} | {batch} | torch float32 | {torch_s:.3f} | 1.00 | - | - | - |",
                  flush=True)
            ids = mx.array(token_ids.numpy())
            float32_s = float32_peak = None
            for precision in args.precisions:
                model = M2BertModel(config, precision=precision)
                load_state_dict(model, state)
                mx.reset_peak_memory()
                seconds = median_seconds(lambda: mx.eval(model(ids)), args.repeats)
                peak = mx.get_peak_memory() / 2**30
                if precision == "float32":
                    float32_s, float32_peak = seconds, peak
                ratios = ("-", "-") if float32_s is None else (
                    f"{seconds / float32_s:.2f}", f"{peak / float32_peak:.2f}")
                print(f"| {L} | {batch} | MLX {precision} | {seconds:.3f} | "
                      f"{seconds / torch_s:.2f} | {ratios[0]} | {peak:.2f} | {ratios[1]} |",
                      flush=True)
                del model
        del reference

if __name__ == "__main__":
    main()
