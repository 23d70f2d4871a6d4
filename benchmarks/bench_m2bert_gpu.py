"""M2-BERT 80M forward on a GPU: MLX float32 / extended / dd vs the PyTorch reference
float32 on CUDA (random init shared by both, batch 1).

    PYTHONPATH=.:models:tests python benchmarks/bench_m2bert_gpu.py --lengths 2048 8192

Each MLX precision runs after one warm-up forward (which also compiles the kernels);
mx.eval waits for the device, torch is synchronised explicitly. Median of --repeats.
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

PRECISIONS = ("float32", "extended", "dd")


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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    args = parser.parse_args()
    on_gpu = args.device == "gpu"
    mx.set_default_device(mx.gpu if on_gpu else mx.cpu)
    torch_device = "cuda" if on_gpu else "cpu"
    name = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(f"M2-BERT 80M, batch 1, {name}; MLX {mx.__version__} (MLX_ENABLE_TF32="
          f"{os.environ.get('MLX_ENABLE_TF32', 'default')}), torch {torch.__version__}")
    print("| L | implementation | median s | × torch float32 | MLX peak GiB |")
    print("|---|---|---|---|---|")
    for L in args.lengths:
        config = M2BertConfig(max_position_embeddings=L, long_conv_l_max=L)
        reference = initialize_(ReferenceM2Bert(config), seed=0).eval()
        token_ids = torch.randint(0, config.vocab_size, (1, L), generator=torch.Generator().manual_seed(1))
        state = {n: mx.array((t.float() if t.is_floating_point() else t).numpy())
                 for n, t in reference.state_dict().items()}
        reference = reference.to(torch_device)
        ids_torch = token_ids.to(torch_device)

        def torch_forward():
            with torch.no_grad():
                reference(ids_torch)
            if on_gpu:
                torch.cuda.synchronize()

        torch_s = median_seconds(torch_forward, args.repeats)
        print(f"| {L} | torch float32 | {torch_s:.3f} | 1.00 | - |", flush=True)
        del reference
        ids = mx.array(token_ids.numpy())
        for precision in args.precisions:
            model = M2BertModel(config, precision=precision)
            load_state_dict(model, state)
            mx.reset_peak_memory()
            seconds = median_seconds(lambda: mx.eval(model(ids)), args.repeats)
            peak = mx.get_peak_memory() / 2**30
            print(f"| {L} | MLX {precision} | {seconds:.3f} | {seconds / torch_s:.2f} | {peak:.2f} |", flush=True)
            del model


if __name__ == "__main__":
    main()
