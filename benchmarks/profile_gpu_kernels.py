"""Where the GPU time goes: per-kernel device time of one call, on CUDA.

    PYTHONPATH=.:models:tests python benchmarks/profile_gpu_kernels.py [case ...]

Cases: conv-<precision>-<L> (B=64, H=768, n=2L), grad-<precision>-<L> (the same
convolution's value and grad u, grad k of sum(y * g), as bench_gpu.py --backward
times it), long-<precision>-<L> (B=1, H=64, causal), m2-<precision>-<L>-b<batch>
(M2-BERT 80M forward, random init), m2-torch-<L>-b<batch> (the PyTorch reference in
float32), and addmm-<precision>-<M>x<K>x<N> / linear-<precision>-<M>x<K>x<N>
(bench_gpu_strict.py's inputs: bias + a (M, K) @ b (K, N) row-major, or x (M, K) @
weight (N, K).T + bias; precision "mlx": MLX's own mx.addmm, TF32 as MLX_ENABLE_TF32
says, the reference for MLX's per-call overhead). Each case runs once to
warm up (JIT compilation, buffers; its wall time is printed first, so a slow first call
shows apart from the profiled one), then --calls times (each call synchronised, as
bench_gpu.py times one) under torch.profiler, whose CUPTI activity trace records every
kernel, copy and memset of the process, MLX's included, and the CUDA runtime and driver
calls it traces. Prints, per kernel name, the launches and the device time per call,
largest first; per call, the host and device timeline: from the call's start to its
first device activity (host work: building and launching the graph), the span from
the first activity's start to the last one's end with the idle gaps inside it, and from
the last activity's end to the call's return (completion and synchronisation); and the
CUDA API calls by total host time (a graph instantiated anew each call shows as
cudaGraphInstantiate once per call).
"""

import argparse
import time
from collections import defaultdict

import mlx.core as mx
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

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
    if precision == "mlx":
        return lambda: mx.eval(mx.addmm(c, a, b))
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
                     "addmm-<precision|mlx>-<M>x<K>x<N> or linear-<precision>-<M>x<K>x<N>")


def is_device(event):
    return event.device_type == torch.autograd.DeviceType.CUDA


def print_timeline(index, call, device_events):
    """The call's device activities on the profiler's one time axis with the call's
    own start and end: host time before the first activity, the span, the idle gaps
    inside it (the largest named by the activity they precede) and the time after."""
    acts = sorted((e for e in device_events if call.time_range.start <= e.time_range.start <= call.time_range.end),
                  key=lambda e: e.time_range.start)
    wall_ms = (call.time_range.end - call.time_range.start) / 1e3
    if not acts:
        print(f"call {index}: {wall_ms:.3f} ms, no device activity")
        return
    first, last_end = acts[0].time_range.start, max(e.time_range.end for e in acts)
    gaps, busy_until = [], first
    for e in acts:
        if e.time_range.start > busy_until:
            gaps.append(((e.time_range.start - busy_until) / 1e3, e.name))
        busy_until = max(busy_until, e.time_range.end)
    idle_ms = sum(g for g, _ in gaps)
    largest = max(gaps, default=(0.0, ""))
    print(f"call {index}: {wall_ms:.3f} ms = host before the first activity "
          f"{(first - call.time_range.start) / 1e3:.3f} + device span {(last_end - first) / 1e3:.3f} "
          f"(busy {(last_end - first) / 1e3 - idle_ms:.3f}, {len(gaps)} gaps {idle_ms:.3f}, largest "
          f"{largest[0]:.3f} before `{largest[1][:60]}`) + after the last "
          f"{(call.time_range.end - last_end) / 1e3:.3f}")


def profile_case(name, top, calls):
    run = make_case(name)
    start = time.perf_counter()
    run()
    mx.synchronize()
    print(f"\n{name}: first call (warm-up) {time.perf_counter() - start:.2f} s", flush=True)
    walls = []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
        for i in range(calls):
            with record_function(f"call {i}"):
                start = time.perf_counter()
                run()
                mx.synchronize()
                walls.append((time.perf_counter() - start) * 1e3)
    events = trace.events()
    device_events = [e for e in events if is_device(e)]
    per_kernel = defaultdict(lambda: [0, 0.0])
    for event in device_events:
        per_kernel[event.name][0] += 1
        per_kernel[event.name][1] += event.device_time / 1e3 / calls
    total_ms = sum(ms for _, ms in per_kernel.values())
    print(f"\n## {name}: wall {min(walls):.2f} ms (fastest of {calls}), device {total_ms:.2f} ms per call "
          f"in {len(per_kernel)} kernels")
    print(f"| kernel | launches in {calls} calls | ms per call | share |\n|---|---|---|---|")
    for kernel, (count, ms) in sorted(per_kernel.items(), key=lambda item: -item[1][1])[:top]:
        print(f"| `{kernel[:90]}` | {count} | {ms:.3f} | {ms / max(total_ms, 1e-9):.1%} |",
              flush=True)
    call_events = {e.name: e for e in events if not is_device(e) and e.name.startswith("call ")}
    print()
    for i in range(calls):
        print_timeline(i, call_events[f"call {i}"], device_events)
    api = defaultdict(lambda: [0, 0.0, 0.0])
    for e in events:
        if not is_device(e) and e.name.startswith("cu"):
            ms = (e.time_range.end - e.time_range.start) / 1e3
            api[e.name][0] += 1
            api[e.name][1] += ms
            api[e.name][2] = max(api[e.name][2], ms)
    if api:
        print(f"\nCUDA API calls of the {calls} calls (host time)\n| call | count | total ms | longest ms |\n"
              "|---|---|---|---|")
        for call, (count, ms, longest) in sorted(api.items(), key=lambda item: -item[1][1])[:top]:
            print(f"| `{call}` | {count} | {ms:.3f} | {longest:.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--calls", type=int, default=1, help="synchronised calls profiled per case")
    args = parser.parse_args()
    mx.set_default_device(mx.gpu)
    print(f"{torch.cuda.get_device_name()}, MLX {mx.__version__}, torch {torch.__version__}")
    for name in args.cases:
        profile_case(name, args.top, args.calls)


if __name__ == "__main__":
    main()
