import os
import sys
import types

import numpy as np
import pytest
from hypothesis import settings

# Property tests (tests/test_properties.py): a bounded run in CI, a long one with
# HYPOTHESIS_PROFILE=dev. No example database: every run draws fresh examples,
# and a failure prints the reproducing example and seed.
settings.register_profile("ci", max_examples=20, deadline=None, database=None, print_blob=True)
settings.register_profile("dev", max_examples=1000, deadline=None, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# MLX_PRECISE_IMPL=mlx runs the accuracy tests against the ops inside an MLX
# built with patches/ applied (mx.fft.rfft_conv, precision= on mx.addmm and
# mx.fast.layer_norm) instead of this extension, which is then not imported.
# The accuracy tests of the ops the series carries (they use nothing but
# rfft_conv, addmm and layer_norm).
IN_TREE_TESTS = (
    "test_rfft_conv.py",
    "test_rfft_conv_transforms.py",
    "test_strict_ops.py",
    "test_certification.py",
    "test_layer_norm_certified.py",
    "test_properties.py",
    "test_value_fuzz.py",
)

if os.environ.get("MLX_PRECISE_IMPL") == "mlx":
    import mlx.core as mx

    _in_tree = types.ModuleType("mlx_precise")
    _in_tree.PRECISIONS = ("float32", "extended", "dd")
    _in_tree.rfft_conv = mx.fft.rfft_conv

    def _addmm(c, a, b, *, alpha=1.0, beta=1.0, precision="float32", stream=None):
        return mx.addmm(c, a, b, alpha, beta, precision=precision, stream=stream)

    def _layer_norm(x, weight=None, bias=None, eps=1e-5, *, precision="float32", stream=None):
        return mx.fast.layer_norm(x, weight, bias, eps, precision=precision, stream=stream)

    _in_tree.addmm, _in_tree.layer_norm = _addmm, _layer_norm
    sys.modules["mlx_precise"] = _in_tree
    collect_ignore = [
        name
        for name in os.listdir(os.path.dirname(__file__))
        if name.startswith("test_")
        and name not in IN_TREE_TESTS
    ]


def pytest_collection_modifyitems(config, items):
    # linear and the mlx_precise.nn layers are this extension's own, not part of
    # the series: their tests are skipped against a patched MLX.
    if os.environ.get("MLX_PRECISE_IMPL") != "mlx":
        return
    import inspect

    skip = pytest.mark.skip(reason="mlx_precise.linear / .nn are not in patches/")
    for item in items:
        source = inspect.getsource(item.function)
        if "mp.linear" in source or "mp.nn." in source:
            item.add_marker(skip)


@pytest.fixture
def rng():
    # Fresh inputs on every run; the seed is printed so a failure can be replayed.
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def poison_own_gpu_allocations(request):
    """In the GPU test modules, mlx_precise's own CUDA allocations (outputs and
    workspaces, outside MLX's buffer cache) start as NaN bytes: an output a kernel
    fails to write shows."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    if not module.startswith("test_gpu") or os.environ.get("MLX_PRECISE_IMPL") == "mlx":
        yield
        return
    import mlx_precise

    mlx_precise._ext.testing.poison_device_memory(True)
    try:
        yield
    finally:
        mlx_precise._ext.testing.poison_device_memory(False)
