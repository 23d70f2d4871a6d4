"""Compiles every CUDA kernel module of mlx-precise once, in parallel, into the disk cache.

    python scripts/warm_kernels.py

NVRTC takes about a minute a module (the rfft_conv ones 61-65 s on an H200 host), once
per machine and kernel version thanks to the cache (MLX_PRECISE_KERNEL_CACHE_DIR,
docs/gpu.md). Run this before parallel tests or benchmarks so that their processes load
cubins instead of each compiling the same modules. One process per module: NVRTC compiles a
module on one thread.
"""

import subprocess
import sys
import time

MODULES = {
    "float": 'mx.eval(mp.rfft_conv(u, k, precision="float32"))',
    "double": 'mx.eval(mp.rfft_conv(u, k, precision="extended"))',
    "strict": 'mx.eval(mp.addmm(a, a, a, precision="extended"), mp.layer_norm(a, precision="extended"))',
    "pair": "mx.eval(*pair.multiply(pair.as_pair(a), pair.as_pair(a)).astuple())",
}

SETUP = """
import mlx.core as mx
import mlx_precise as mp
from mlx_precise import pair
u = mx.ones((1, 2, 64)); k = mx.ones((2, 64)); a = mx.ones((4, 4))
"""


def main():
    import mlx.core as mx

    if not mx.cuda.is_available():
        sys.exit("warm_kernels: MLX has no CUDA backend here (the kernels are NVRTC's); nothing to compile")
    start = time.perf_counter()
    running = {name: subprocess.Popen([sys.executable, "-c", SETUP + code]) for name, code in MODULES.items()}
    failed = []
    for name, process in running.items():
        if process.wait() != 0:
            failed.append(name)
        print(f"{name}: {'failed' if process.returncode else 'ok'} after {time.perf_counter() - start:.0f} s",
              flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
