#!/usr/bin/env bash
# For a Mac with Apple silicon (macOS >= 14, Python >= 3.10, Xcode command line
# tools, CMake >= 3.27): installs mlx-precise with plain `pip install ".[test]"`
# into a fresh venv (built against MLX's Metal wheel), runs the test suite (the
# GPU tests run on mx.gpu, i.e. Metal), a bitwise CPU == GPU check of
# precision="dd", and one benchmark; then prints a report to paste into an
# issue. Everything it writes goes to build/mac-check/ (logs included).
# Usage: bash scripts/mac_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=build/mac-check
rm -rf "$out" && mkdir -p "$out"
py="$out/venv/bin/python"
step() { echo "== $1" >&2; }

step "installing into $out/venv (pip install \".[test]\", log: $out/install.log)"
install=ok
{ python3 -m venv "$out/venv" && "$py" -m pip install -v ".[test]"; } > "$out/install.log" 2>&1 ||
  install="FAILED (last lines of $out/install.log below)"

tests=skipped dd=skipped
if [ "$install" = ok ]; then
  step "tests (log: $out/tests.log)"
  "$py" -P -m pytest tests -q -rfEs > "$out/tests.log" 2>&1
  tests="exit $? -- $(tail -1 "$out/tests.log")"
  step "bitwise CPU == GPU, precision=dd (log: $out/dd.log)"
  (cd "$out" && "$py" -P - > dd.log 2>&1) <<'PY'
import mlx.core as mx
import numpy as np
import mlx_precise as mp

rng = np.random.default_rng()
seed = int(rng.integers(2**31))
rng = np.random.default_rng(seed)
print(f"seed {seed}")


def bits(x):
    return np.asarray(x).view(np.uint32)


def both(fn, *args):
    outs = []
    for device in (mx.cpu, mx.gpu):
        with mx.stream(device):
            out = fn(*[mx.array(a) for a in args])
            mx.eval(out)
            outs.append(out)
    return outs


def report(name, cpu, gpu):
    if not isinstance(cpu, (list, tuple)):
        cpu, gpu = [cpu], [gpu]
    differ = sum(int((bits(c) != bits(g)).sum()) for c, g in zip(cpu, gpu))
    total = sum(c.size for c in cpu)
    print(f"{name}: {'bitwise equal' if differ == 0 else 'DIFFER'} ({differ} of {total} differ)")


f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
B, H, L = 2, 16, 4096
u, k, D = f32(B, H, L), f32(H, 2 * L) / np.float32(np.sqrt(2 * L)), f32(H, 1)
conv = lambda u, k, D: mp.rfft_conv(u, k, n=2 * L, bias=D, precision="dd")
report(f"rfft_conv dd {B}x{H}x{L}, n=2L, bias", *both(conv, u, k, D))
grads = lambda u, k, D: mx.grad(lambda u, k, D: conv(u, k, D).sum(), argnums=(0, 1, 2))(u, k, D)
report("rfft_conv dd gradients (u, k, bias)", *both(grads, u, k, D))
a, b, c = f32(256, 768), f32(768, 768), f32(256, 768)
report("addmm dd 256x768x768", *both(lambda c, a, b: mp.addmm(c, a, b, precision="dd"), c, a, b))
x, w, beta = f32(512, 768), f32(768), f32(768)
report("layer_norm dd 512x768", *both(lambda x, w, b: mp.layer_norm(x, w, b, precision="dd"), x, w, beta))
PY
  dd="$(grep -c "bitwise equal" "$out/dd.log") of 4 bitwise equal -- see below"
  step "benchmark (log: $out/bench.log)"
  (cd "$out" && "$py" -P - > bench.log 2>&1) <<'PY'
import time

import mlx.core as mx
import numpy as np
import mlx_precise as mp

# M2-BERT's long convolution (n = 2L, kernel 2L, skip D) on mx.gpu; the
# reference is MLX's composed float32 FFT path; ratios measured in this run.
B, H, L = 8, 768, 4096
u = mx.random.normal((B, H, L))
k = mx.random.normal((H, 2 * L)) / (2 * L) ** 0.5
D = mx.random.normal((H, 1))


def composed(u, k, D):
    n = 2 * L
    y = mx.fft.irfft(mx.fft.rfft(u, n=n) * mx.fft.rfft(k, n=n), n=n)[..., :L]
    return y + u * D


methods = {"MLX composed mx.fft float32": composed}
for p in mp.PRECISIONS:
    methods[f"mlx_precise {p}"] = lambda u, k, D, p=p: mp.rfft_conv(u, k, n=2 * L, bias=D, precision=p)
times = {name: [] for name in methods}
with mx.stream(mx.gpu):
    for fn in methods.values():
        mx.eval(fn(u, k, D))
    for _ in range(7):  # round robin, median
        for name, fn in methods.items():
            t = time.perf_counter()
            mx.eval(fn(u, k, D))
            times[name].append(time.perf_counter() - t)
ref = np.median(times["MLX composed mx.fft float32"])
print(f"rfft_conv on mx.gpu, B={B} H={H} L={L} n=2L; median of 7, ms (speed vs MLX composed)")
for name, ts in times.items():
    print(f"| {name} | {np.median(ts) * 1e3:.2f} | {ref / np.median(ts):.2f}x |")
PY
fi

echo
echo "### mlx-precise mac_check report"
echo '```'
echo "commit:   $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (modified)')"
echo "macOS:    $(sw_vers -productVersion 2>/dev/null) on $(sysctl -n machdep.cpu.brand_string 2>/dev/null)"
echo "tools:    $(xcrun -sdk macosx metal --version 2>/dev/null | head -1) / $(cmake --version 2>/dev/null | head -1)"
[ "$install" = ok ] && "$py" -c 'import platform, mlx.core as mx; print("python:  ", platform.python_version(), "| MLX", mx.__version__, "| GPU:", mx.metal.is_available() and mx.metal.device_info().get("architecture"))'
echo "install:  $install"
[ "$install" = ok ] || tail -30 "$out/install.log"
echo "tests:    $tests"
[ "$install" = ok ] && grep -E "^(FAILED|ERROR)" "$out/tests.log" | head -40
echo "dd CPU==GPU: $dd"
[ -f "$out/dd.log" ] && cat "$out/dd.log"
[ -f "$out/bench.log" ] && cat "$out/bench.log"
echo '```'
