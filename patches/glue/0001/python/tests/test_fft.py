
    def test_rfft_conv(self):
        def causal_conv(u, k):
            # Exact in int64: integer-valued inputs.
            L = u.shape[-1]
            out = np.zeros(np.broadcast_shapes(u.shape[:-1], k.shape[:-1]) + (L,))
            out = out.astype(np.int64)
            for j in range(min(L, k.shape[-1])):
                out[..., j:] += u[..., : L - j] * k[..., j : j + 1]
            return out

        rng = np.random.default_rng(0)
        for L, Lk in [(1, 1), (37, 13), (64, 64), (100, 250), (1024, 7)]:
            u = rng.integers(-8, 9, size=(3, 2, L)).astype(np.int64)
            k = rng.integers(-8, 9, size=(2, Lk)).astype(np.int64)
            expected = causal_conv(u, k)
            u_mx = mx.array(u.astype(np.float32))
            k_mx = mx.array(k.astype(np.float32))
            for precision in ["extended", "dd"]:
                out = mx.fft.rfft_conv(u_mx, k_mx, precision=precision)
                self.assertEqual(out.dtype, mx.float32)
                self.assertTrue(np.array_equal(np.array(out), expected))
            out = mx.fft.rfft_conv(u_mx, k_mx)
            np.testing.assert_allclose(out, expected, atol=1e-4 * Lk * 64)

    def test_rfft_conv_circular_and_bias(self):
        rng = np.random.default_rng(1)
        L, Lk, n = 48, 96, 96
        u = rng.integers(-16, 17, size=(4, L)).astype(np.int64)
        k = rng.integers(-16, 17, size=(4, Lk)).astype(np.int64)
        d = rng.integers(-4, 5, size=(4, 1)).astype(np.int64)
        spectrum = np.fft.rfft(u, n) * np.fft.rfft(k, n)
        expected = np.rint(np.fft.irfft(spectrum, n)[..., :L]).astype(np.int64)
        expected += u * d
        args = [mx.array(x.astype(np.float32)) for x in (u, k, d)]
        for precision in ["extended", "dd"]:
            out = mx.fft.rfft_conv(
                args[0], args[1], n=n, bias=args[2], precision=precision
            )
            self.assertTrue(np.array_equal(np.array(out), expected))

    def test_rfft_conv_rounds_once(self):
        # float32 inputs, float64 reference: "extended" and "dd" return the
        # float32 nearest to the exact value (the float64 reference's error,
        # ~1e-16 relative, can only matter within that of a tie).
        rng = np.random.default_rng(2)
        u = rng.standard_normal((8, 512)).astype(np.float32)
        k = rng.standard_normal((8, 512)).astype(np.float32)
        expected = np.zeros((8, 512))
        for row in range(8):
            full = np.convolve(u[row].astype(np.float64), k[row].astype(np.float64))
            expected[row] = full[:512]
        for precision in ["extended", "dd"]:
            out = mx.fft.rfft_conv(mx.array(u), mx.array(k), precision=precision)
            out = np.array(out)
            equal = np.mean(out == expected.astype(np.float32))
            self.assertGreater(equal, 0.999)
            ulp = np.spacing(np.abs(expected).astype(np.float32))
            self.assertTrue(np.all(np.abs(out - expected) <= ulp))
        out = np.array(mx.fft.rfft_conv(mx.array(u), mx.array(k)))
        scale = np.linalg.norm(expected)
        self.assertLess(np.linalg.norm(out - expected) / scale, 1e-6)

    def test_rfft_conv_grad(self):
        rng = np.random.default_rng(3)
        u = rng.integers(-4, 5, size=(2, 3, 20)).astype(np.float32)
        k = rng.integers(-4, 5, size=(3, 20)).astype(np.float32)
        w = rng.integers(-4, 5, size=(2, 3, 20)).astype(np.float32)
        u64, k64, w64 = (x.astype(np.float64) for x in (u, k, w))

        def loss(u, k):
            return (mx.fft.rfft_conv(u, k, precision="dd") * mx.array(w)).sum()

        grad_u, grad_k = mx.grad(loss, argnums=(0, 1))(mx.array(u), mx.array(k))
        # d/du[t-j] of sum_t w[t] sum_j u[t-j] k[j]: correlations of w.
        expected_u = np.zeros_like(u64)
        expected_k = np.zeros_like(k64)
        for j in range(20):
            expected_u[..., : 20 - j] += w64[..., j:] * k64[..., j : j + 1]
            expected_k[..., j] += (w64[..., j:] * u64[..., : 20 - j]).sum(axis=(0, 2))
        self.assertTrue(np.array_equal(np.array(grad_u), expected_u))
        self.assertTrue(np.array_equal(np.array(grad_k), expected_k))

    def test_rfft_conv_errors(self):
        u = mx.zeros((2, 8))
        with self.assertRaises(ValueError):
            mx.fft.rfft_conv(u.astype(mx.float16), u)
        with self.assertRaises(ValueError):
            mx.fft.rfft_conv(u, u, n=4)
        with self.assertRaises(ValueError):
            mx.fft.rfft_conv(u, mx.zeros((3, 8)))
        with self.assertRaises(ValueError):
            mx.fft.rfft_conv(u, u, precision="float64")
