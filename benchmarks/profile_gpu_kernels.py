"""Where the GPU time goes: per-kernel device time of one call, on CUDA.

    PYTHONPATH=.:models:tests python benchmarks/profile_gpu_kernels.py [case ...]

Cases: conv-<precision>-<L> (B=64, H=768, n=2L), grad-<precision>-<L> (the same
convolution's value and grad u, grad k of sum(y * g), as bench_gpu.py --backward
times it), long-<precision>-<L> (B=1, H=64, causal), m2-<precision>-<L>-b<batch>
(M2-BERT 80M forward, random init), m2-torch-<L>-b<batch> (the PyTorch reference in
float32), and addmm-<precision>-<M>x<K>x<N> / linear-<precision>-<M>x<K>x<N>
(bench_gpu_strict.py's inputs: bias + a (M, K) @ b (K, N) row-major, or x (M, K) @
weight (N, K).T + bias). Each case runs once to
warm up (JIT compilation, buffers; its wall time is printed first, so a slow first call
shows apart from the profiled one), then once under torch.profiler, whose CUPTI
activity trace records every kernel of the process, MLX's included. Prints, per
kernel name, the launches and the summed device time, largest first, and the sum
against the call's wall time (the difference is launch and host overhead).
"""

import argparse
import time
from collections import defaultdict

import mlx.core as mx
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import mlx_precise as mp


def conv_case(precision, L, batch, heads, causal):
    rng = np.random.default_rng(0)
    n = 2 * L
    u = mx.array(rng.standard_normal((batch, heads, L), dtype=np.float32))
    k = mx.array(rng.standard_normal((heads, L if causal else n), dtype=np.float32) / np.float32(L))
    mx.eval(u, k)
    return lambda: mx.eval(mp.rfft_conv(u, k, n=n, precision=precision))


def grad_case(precision, L, batch, heads):
    rng = np.random.default_rng(0)
    n = 2 * L
    u, g = (mx.array(rng.standard_normal((batch, heads, L), dtype=np.float32)) for _ in range(2))
    k = mx.array(rng.standard_normal((heads, n), dtype=np.float32) / np.float32(np.sqrt(n)))
    mx.eval(u, k, g)
    both = mx.value_and_grad(lambda u, k: mx.sum(mp.rfft_conv(u, k, n=n, precision=precision) * g), argnums=(0, 1))
    return lambda: mx.eval(both(u, k))


def m2_case(precision, L, batch):
    from m2bert import M2BertConfig, M2BertModel, load_state_dict
    from m2bert_reference import ReferenceM2Bert, initialize_

    config = M2BertConfig(max_position_embeddings=L, long_conv_l_max=L)
    reference = initialize_(ReferenceM2Bert(config), seed=0).eval()
    token_ids = torch.randint(0, config.vocab_size, (batch, L), generator=torch.Generator().manual_seed(1))
    if precision == "torch":
        reference = reference.to("cuda")
        ids = token_ids.to("cuda")

        def forward():
            with torch.no_grad():
                reference(ids)
            torch.cuda.synchronize()

        return forward
    state = {name: mx.array((t.float() if t.is_floating_point() else t).numpy())
             for name, t in reference.state_dict().items()}
    model = M2BertModel(config, precision=precision)
    load_state_dict(model, state)
    ids = mx.array(token_ids.numpy())
    return lambda: mx.eval(model(ids))


def addmm_case(kind, precision, shape):
    m, k, n = map(int, shape.split("x"))
    rng = np.random.default_rng(0)
    c = mx.array(rng.standard_normal(n).astype(np.float32))
    a = mx.array(rng.standard_normal((m, k)).astype(np.float32))
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    if kind == "linear":
        weight = mx.array(w)
        mx.eval(c, a, weight)
        return lambda: mx.eval(mp.linear(a, weight, c, precision=precision))
    b = mx.array(np.ascontiguousarray(w.T))
    mx.eval(c, a, b)
    return lambda: mx.eval(mp.addmm(c, a, b, precision=precision))


def make_case(name):
    kind, precision, *rest = name.split("-")
    if kind == "conv":
        return conv_case(precision, int(rest[0]), 64, 768, causal=False)
    if kind == "grad":
        return grad_case(precision, int(rest[0]), 64, 768)
    if kind == "long":
        return conv_case(precision, int(rest[0]), 1, 64, causal=True)
    if kind == "m2":
        return m2_case(precision, int(rest[0]), int(rest[1].lstrip("b")))
    if kind in ("addmm", "linear"):
        return addmm_case(kind, precision, rest[0])
    raise SystemExit(f"unknown case {name!r}: use conv-<precision>-<L>, grad-<precision>-<L>, "
                     "long-<precision>-<L>, m2-<precision|torch>-<L>-b<batch> or "
                     "addmm|linear-<precision>-<M>x<K>x<N>")


def profile_case(name, top):
    run = make_case(name)
    start = time.perf_counter()
    run()
    mx.synchronize()
    print(f"\n{name}: first call (warm-up) {time.perf_counter() - start:.2f} s", flush=True)
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        start = time.perf_counter()
        run()
        mx.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3
    per_kernel = defaultdict(lambda: [0, 0.0])
    for event in trace.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name][0] += 1
            per_kernel[event.name][1] += event.device_time / 1e3
    total_ms = sum(ms for _, ms in per_kernel.values())
    print(f"\n## {name}: wall {wall_ms:.2f} ms, device {total_ms:.2f} ms in {len(per_kernel)} kernels")
    print("| kernel | launches | ms | share |\n|---|---|---|---|")
    for kernel, (count, ms) in sorted(per_kernel.items(), key=lambda item: -item[1][1])[:top]:
        print(f"| `{kernel[:90]}` | {count} | {ms:.3f} | {ms / max(total_ms, 1e-9):.1%} |",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    mx.set_default_device(mx.gpu)
    print(f"{torch.cuda.get_device_name()}, MLX {mx.__version__}, torch {torch.__version__}")
    for name in args.cases:
        profile_case(name, args.top)


if __name__ == "__main__":
    main()
