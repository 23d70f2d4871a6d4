"""A Hyena-style long-convolution block in mlx-examples style (lint fixture, never run):
implicit filter MLP, FFT long convolution, gating. Expected findings: tests/test_lint.py."""

import math

import mlx.core as mx
import mlx.nn as nn


def fft_conv(u: mx.array, k: mx.array, d: mx.array) -> mx.array:
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = mx.fft.rfft(k, n=fft_size)
    u_f = mx.fft.rfft(u, n=fft_size)
    y = mx.fft.irfft(u_f * k_f, n=fft_size)[..., :seqlen]
    return y + u * d[:, None]


class Sin(nn.Module):
    def __init__(self, dim: int, w: float = 10):
        super().__init__()
        self.freq = w * mx.ones((1, dim))

    def __call__(self, x):
        return mx.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    def __init__(self, emb_dim: int, seq_len: int):
        super().__init__()
        t = mx.linspace(0, 1, seq_len)[None, :, None]
        bands = (emb_dim - 1) // 2
        w = 2 * math.pi * mx.arange(seq_len)[None, :, None] / seq_len
        f = mx.linspace(1e-4, bands - 1, bands)[None, None]
        self.z = mx.concatenate([t, mx.cos(f * w), -mx.sin(f * w)], axis=-1)
        self.t = t

    def __call__(self, seq_len: int):
        return self.z[:, :seq_len], self.t[:, :seq_len]


class HyenaFilter(nn.Module):
    def __init__(self, dims: int, order: int = 64, emb_dim: int = 5, seq_len: int = 1024):
        super().__init__()
        self.pos_emb = PositionalEmbedding(emb_dim, seq_len)
        self.mlp = nn.Sequential(
            nn.Linear(emb_dim, order), Sin(order),
            nn.Linear(order, order), Sin(order),
            nn.Linear(order, dims, bias=False),
        )
        self.deltas = mx.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, dims)[None, None]
        self.bias = mx.zeros((dims,))

    def __call__(self, u):
        z, t = self.pos_emb(u.shape[-1])
        k = self.mlp(z) * mx.exp(-t * mx.abs(self.deltas))
        return fft_conv(u, k[0].T, self.bias)


class HyenaBlock(nn.Module):
    def __init__(self, dims: int, seq_len: int):
        super().__init__()
        self.norm = nn.LayerNorm(dims)
        self.in_proj = nn.Linear(dims, 3 * dims)
        self.short_conv = nn.Conv1d(3 * dims, 3 * dims, kernel_size=3, padding=2, groups=3 * dims)
        self.filter = HyenaFilter(dims, seq_len=seq_len)
        self.out_proj = nn.Linear(dims, dims)

    def __call__(self, x):
        L = x.shape[1]
        h = self.short_conv(self.in_proj(self.norm(x)))[:, :L]
        x1, x2, v = mx.split(h, 3, axis=-1)
        y = self.filter((v * x1).swapaxes(1, 2)).swapaxes(1, 2) * x2
        return x + self.out_proj(nn.gelu(y))
