
    def test_layer_norm_precision(self):
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((16, 768)) * 3 + 1).astype(np.float32)
        w = rng.standard_normal(768).astype(np.float32)
        b = rng.standard_normal(768).astype(np.float32)
        x64 = x.astype(np.float64)
        mean = x64.mean(-1, keepdims=True)
        var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
        ref = (x64 - mean) / np.sqrt(var + 1e-5) * w + b
        ulp = np.spacing(np.abs(ref).astype(np.float32))
        args = [mx.array(v) for v in (x, w, b)]
        for precision in ["extended", "dd"]:
            out = mx.fast.layer_norm(*args, 1e-5, precision=precision)
            out = np.array(out)
            self.assertTrue(np.all(np.abs(out - ref) <= ulp))
            self.assertGreater(np.mean(out == ref.astype(np.float32)), 0.999)
        out = mx.fast.layer_norm(*args, 1e-5, precision="float32")
        self.assertTrue(mx.array_equal(out, mx.fast.layer_norm(*args, 1e-5)))

        def loss(x):
            return mx.fast.layer_norm(x, args[1], args[2], 1e-5, precision="dd").sum()

        grad = mx.grad(loss)(args[0])
        self.assertEqual(grad.shape, args[0].shape)
        self.assertTrue(bool(mx.all(mx.isfinite(grad))))
        with self.assertRaises(ValueError):
            mx.fast.layer_norm(*args, 1e-5, precision="fp64")
