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
