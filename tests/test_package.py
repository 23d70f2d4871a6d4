"""The installed package's public surface (the source-folder ImportError: test_m2bert_checkpoints)."""

import mlx.core as mx

import mlx_precise as mp

API = ["PRECISIONS", "__version__", "addmm", "layer_norm", "linear", "nn", "pair", "rfft_conv"]


def test_namespace_lists_only_the_api():
    assert dir(mp) == API
    assert sorted(mp.__all__ + ["__version__"]) == API
    for helper in ("os", "glob", "ctypes", "scipy_openblas32", "mx", "load_extension"):
        assert not hasattr(mp, helper), helper


def test_import_installs_rfft_conv_into_mlx():
    assert mx.fft.rfft_conv is mp.rfft_conv



def test_own_device_memory_counts_only_cuda_allocations():
    # mlx_precise allocates device memory itself only on CUDA (its outputs and
    # workspaces, _ext.device_peak_memory); CPU work and other backends use MLX's
    # allocator and leave the count alone.
    mp._ext.reset_device_peak_memory()
    held = mp._ext.device_peak_memory()
    if not mx.cuda.is_available():
        assert held == 0
    x = mx.array([1.0, 2.0, 3.0])
    mx.eval(mp.rfft_conv(x, x, stream=mx.cpu), mp.linear(x[None], x[None], stream=mx.cpu))
    assert mp._ext.device_peak_memory() == held
