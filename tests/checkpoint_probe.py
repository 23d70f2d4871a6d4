"""Loads each checkpoint named on the command line in this fresh process and prints one
JSON line per file: the error (class and message, or null), the seconds taken and the
peak of Python/numpy allocations (tracemalloc). Run by test_m2bert_checkpoints.py.

torch is made unimportable first, so every file is read without it; the address space is
capped after the imports, so a loader that tried to materialise a crafted size would get
a MemoryError here instead of taking the machine's memory.
"""

import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.modules["torch"] = None  # any `import torch` now raises ImportError

from m2bert import load_model, read_tensors  # noqa: E402

ADDRESS_SPACE_HEADROOM = 2 << 30


def virtual_memory_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def main(paths):
    limit = virtual_memory_bytes() + ADDRESS_SPACE_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for path in map(Path, paths):
        tracemalloc.start()
        start = time.perf_counter()
        try:
            load_model(path) if path.is_dir() else read_tensors(path)
            error = None
        except Exception as caught:  # the test judges every outcome
            error = [type(caught).__name__, str(caught)]
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(json.dumps({"path": path.name, "error": error, "seconds": seconds,
                          "peak_bytes": peak}), flush=True)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"max_rss_growth_bytes": rss_after - rss_before}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
