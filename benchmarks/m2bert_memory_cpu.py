"""M2-BERT peak memory per precision on the CPU, at a reduced depth, in units that scale
to other lengths.

    PYTHONPATH=.:models:tests python benchmarks/m2bert_memory_cpu.py \
        [--length 4096] [--layers 2] [--batch 1] [--precisions float32 extended dd exact]

Each precision runs in a fresh process: two forwards (the first also computes and caches
the 2 x layers Hyena kernels, (H, 2L) each), MLX's peak memory of each
(``mx.get_peak_memory``: MLX's allocations only; the CPU kernels' own work buffers are in
the RSS column), once as MLX evaluates by default and once with every operation's
result awaited before the next is scheduled ("serial": ``mx.set_memory_limit`` of one
byte makes ``mx.eval`` wait for the scheduled tasks whenever memory is in use). MLX's
CPU stream runs asynchronously: by default the evaluating thread allocates the outputs
of up to ~50 operations ahead of the worker that computes them, so the default peak holds
many activations that the graph itself no longer needs at once; the serial peak is the
graph's own working set. Peaks are given in A = batch x L x hidden float32 (one hidden
activation) above the memory held before the forward (parameters and cached kernels,
also in A), so that they scale to other lengths; memory ratios to float32 on the right.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PRECISIONS = ("float32", "extended", "dd", "exact")


def measure(length, layers, batch, precision, serial):
    import mlx.core as mx
    import torch
    from m2bert import M2BertConfig, M2BertModel, load_state_dict
    from m2bert_reference import ReferenceM2Bert, initialize_

    mx.set_default_device(mx.cpu)
    config = M2BertConfig(max_position_embeddings=length, long_conv_l_max=length,
                          num_hidden_layers=layers)
    torch.manual_seed(0)
    reference = initialize_(ReferenceM2Bert(config), seed=0).eval()
    state = {n: mx.array((t.float() if t.is_floating_point() else t).numpy())
             for n, t in reference.state_dict().items()}
    del reference
    ids = mx.array(torch.randint(0, config.vocab_size, (batch, length),
                                 generator=torch.Generator().manual_seed(1)).numpy())
    model = M2BertModel(config, precision=precision)
    load_state_dict(model, state)
    mx.eval(model.parameters(), ids)
    del state
    if serial:
        mx.set_memory_limit(1)
    unit = batch * length * config.hidden_size * 4
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {}
    for name in ("first", "second"):
        mx.clear_cache()
        held = mx.get_active_memory()
        mx.reset_peak_memory()
        start = time.perf_counter()
        mx.eval(model(ids))
        result[name] = {"seconds": time.perf_counter() - start, "held_A": held / unit,
                        "peak_above_held_A": (mx.get_peak_memory() - held) / unit}
    result["rss_growth_MiB"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                                - rss_before) / 2**20
    result["A_MiB"] = unit / 2**20
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        precision, serial = args.worker[0], args.worker[1] == "serial"
        print(json.dumps(measure(args.length, args.layers, args.batch, precision, serial)))
        return
    common = ["--length", str(args.length), "--layers", str(args.layers),
              "--batch", str(args.batch)]
    print(f"M2-BERT 80M at {args.layers} layers, L = {args.length}, batch {args.batch}, CPU "
          f"({os.cpu_count()} cores); A = one (batch, L, 768) float32 activation")
    print("| precision | eval | held before, A | first forward: peak above held, A | "
          "second: peak above held, A | second s | RSS growth MiB | peak x float32 (second) |")
    print("|---|---|---|---|---|---|---|---|")
    float32_peak = {}
    for mode in ("default", "serial"):
        for precision in args.precisions:
            done = subprocess.run([sys.executable, __file__, *common, "--worker", precision, mode],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"| {precision} | {mode} | failed: {done.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            first, second = r["first"], r["second"]
            peak = second["held_A"] + second["peak_above_held_A"]
            if precision == "float32":
                float32_peak[mode] = peak
            ratio = f"{peak / float32_peak[mode]:.2f}" if mode in float32_peak else "-"
            print(f"| {precision} | {mode} | {second['held_A']:.1f} | "
                  f"{first['peak_above_held_A']:.1f} | {second['peak_above_held_A']:.1f} | "
                  f"{second['seconds']:.1f} | {r['rss_growth_MiB']:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
