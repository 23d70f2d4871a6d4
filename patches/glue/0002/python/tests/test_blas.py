
    def test_addmm_precision(self):
        rng = np.random.default_rng(0)
        # Integer-valued inputs: the exact value is an integer below 2^24.
        a = rng.integers(-64, 65, size=(3, 17, 40))
        b = rng.integers(-64, 65, size=(40, 9))
        c = rng.integers(-64, 65, size=(9,))
        expected = 2 * (a @ b) + 3 * c
        args = [mx.array(x.astype(np.float32)) for x in (c, a, b)]
        for precision in ["extended", "dd"]:
            out = mx.addmm(*args, 2.0, 3.0, precision=precision)
            self.assertEqual(out.dtype, mx.float32)
            self.assertTrue(np.array_equal(np.array(out), expected))
        out = mx.addmm(*args, 2.0, 3.0, precision="float32")
        self.assertTrue(mx.array_equal(out, mx.addmm(*args, 2.0, 3.0)))

        # float32 inputs, float64 reference: within an ulp everywhere, the
        # correctly rounded value almost everywhere (the float64 sum's own
        # error decides only near ties).
        a = rng.standard_normal((64, 256)).astype(np.float32)
        b = rng.standard_normal((256, 48)).astype(np.float32)
        c = rng.standard_normal((48,)).astype(np.float32)
        ref = a.astype(np.float64) @ b.astype(np.float64) + c
        ulp = np.spacing(np.abs(ref).astype(np.float32))
        for precision in ["extended", "dd"]:
            out = mx.addmm(mx.array(c), mx.array(a), mx.array(b), precision=precision)
            out = np.array(out)
            self.assertTrue(np.all(np.abs(out - ref) <= ulp))
            self.assertGreater(np.mean(out == ref.astype(np.float32)), 0.999)

        with self.assertRaises(ValueError):
            mx.addmm(*args, precision="float64")
        with self.assertRaises(ValueError):
            mx.addmm(args[0], args[1].astype(mx.float16), args[2], precision="dd")
