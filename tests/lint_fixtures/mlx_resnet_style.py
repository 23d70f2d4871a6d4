"""A small ResNet for CIFAR with its loss and accuracy, in mlx-examples style (lint
fixture, never run). Expected findings: tests/test_lint.py."""

import mlx.core as mx
import mlx.nn as nn


class Block(nn.Module):
    def __init__(self, in_dims, dims, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dims, dims, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm(dims)
        self.conv2 = nn.Conv2d(dims, dims, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm(dims)
        if stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_dims, dims, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm(dims),
            )
        else:
            self.shortcut = None

    def __call__(self, x):
        out = nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is None:
            out += x
        else:
            out += self.shortcut(x)
        return nn.relu(out)


class ResNet(nn.Module):
    def __init__(self, num_blocks=(3, 3, 3), num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm(16)
        self.layers = []
        in_dims = 16
        for i, (dims, blocks) in enumerate(zip((16, 32, 64), num_blocks)):
            for j in range(blocks):
                self.layers.append(Block(in_dims, dims, stride=2 if i > 0 and j == 0 else 1))
                in_dims = dims
        self.linear = nn.Linear(64, num_classes)

    def num_params(self):
        return sum(x.size for k, x in mx.utils.tree_flatten(self.parameters()))

    def __call__(self, x):
        x = nn.relu(self.bn1(self.conv1(x)))
        for layer in self.layers:
            x = layer(x)
        x = mx.mean(x, axis=[1, 2])
        return self.linear(x)


def loss_fn(model, inp, tgt):
    return mx.mean(nn.losses.cross_entropy(model(inp), tgt))


def eval_fn(model, inp, tgt):
    return mx.mean(mx.argmax(model(inp), axis=1) == tgt)


def normalize(x: mx.array) -> mx.array:
    mean = mx.array([0.485, 0.456, 0.406], dtype=mx.float32)
    std = mx.array([0.229, 0.224, 0.225], dtype=mx.float32)
    return (x / 255.0 - mean) / std
