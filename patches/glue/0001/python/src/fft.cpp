  m.def(
      "rfft_conv",
      &mx::fft::rfft_conv,
      "u"_a,
      "k"_a,
      nb::kw_only(),
      "n"_a = nb::none(),
      "bias"_a = nb::none(),
      "precision"_a = "float32",
      "stream"_a = nb::none(),
      nb::sig(
          "def rfft_conv(u: array, k: array, *, n: Optional[int] = None, bias: Optional[array] = None, precision: str = 'float32', stream: Union[None, Stream, Device] = None) -> array"),
      R"pbdoc(
        FFT convolution along the last axis.

        Without ``n``, the causal linear convolution
        ``y[..., t] = sum_{j <= min(t, Lk - 1)} u[..., t - j] * k[..., j]``;
        with ``n``, exactly ``irfft(rfft(u, n) * rfft(k, n), n)[..., :L]``
        (the circular form, ``n >= max(L, Lk)``). The leading dimensions of
        ``u`` and ``k`` broadcast against each other.

        Args:
            u (array): Signal of shape ``(..., L)``, ``float32``.
            k (array): Kernel of shape ``(..., Lk)``, ``float32``.
            n (int, optional): Size of the circular convolution. Default:
              ``None`` (linear convolution).
            bias (array, optional): Adds ``u * bias`` before the rounding;
              broadcastable to the output. Default: ``None``.
            precision (str, optional): ``"float32"`` computes in float32;
              ``"extended"`` keeps every intermediate in at least 48
              significant bits and ``"dd"`` in double-word float pairs; both
              round once, to the nearest float32 of the result (``"dd"``
              gives the same bits on every backend and batch size).
              Default: ``"float32"``.

        Returns:
            array: The ``float32`` convolution, shape ``(..., L)``.
      )pbdoc");
