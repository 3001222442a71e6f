"""The ResNet stem of Google's hybrid ViTs (R+ViT-Ti/16, R26+ViT-S/32, R50+ViT-B/16, ...).

Parameter names follow google-research/vision_transformer (models_resnet.py) so the hybrids'
.npz files load as they are: conv_root, gn_root, block{i}/unit{j}/{conv1, gn1, conv2, gn2, conv3,
gn3[, conv_proj, gn_proj]}, all at the top level of the model's tree. `resnet_stem` is called from
inside VisionTransformer's compact __call__, so its modules are the ViT's direct children.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def standardize(kernel, eps: float = 1e-5):
    """Weight standardisation over (H, W, in): zero mean, unit std per output channel (eps on the std)."""
    kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2))
    return kernel / (jnp.std(kernel, axis=(0, 1, 2)) + eps)


class StdConv(nn.Module):
    """Bias-free convolution with a standardised kernel (Big Transfer's StdConv)."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = self.kernel_size + (x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        kernel = standardize(kernel.astype(jnp.float32)).astype(self.dtype)
        x = x.astype(self.dtype)
        if self.kernel_size == (1, 1):  # a matmul: XLA:CPU runs it as a dot ~2x faster than as a conv
            return x[:, ::self.strides[0], ::self.strides[1]] @ kernel[0, 0]
        return jax.lax.conv_general_dilated(x, kernel, self.strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def group_norm(name: str, dtype: Dtype):
    return nn.GroupNorm(num_groups=32, epsilon=1e-6, dtype=dtype, name=name)


class ResidualUnit(nn.Module):
    """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1 to 4x features, projection when shapes change."""

    features: int
    strides: tuple[int, int] = (1, 1)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        residual = x
        if x.shape[-1] != self.features * 4 or self.strides != (1, 1):
            residual = StdConv(self.features * 4, (1, 1), self.strides, self.dtype, name="conv_proj")(x)
            residual = group_norm("gn_proj", self.dtype)(residual)
        y = nn.relu(group_norm("gn1", self.dtype)(StdConv(self.features, (1, 1), dtype=self.dtype, name="conv1")(x)))
        y = StdConv(self.features, (3, 3), self.strides, self.dtype, name="conv2")(y)
        y = nn.relu(group_norm("gn2", self.dtype)(y))
        y = group_norm("gn3", self.dtype)(StdConv(self.features * 4, (1, 1), dtype=self.dtype, name="conv3")(y))
        return nn.relu(residual + y)


class ResNetStage(nn.Module):
    units: int
    features: int
    first_stride: tuple[int, int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j in range(self.units):
            stride = self.first_stride if j == 0 else (1, 1)
            x = ResidualUnit(self.features, stride, self.dtype, name=f"unit{j + 1}")(x)
        return x


def resnet_stem(x, stages: tuple[int, ...], width: int, dtype: Dtype):
    """Root (7x7/2 StdConv, GroupNorm, ReLU, 3x3/2 max-pool) then bottleneck stages; the first stage
    keeps the resolution, every later one halves it in its first unit."""
    x = StdConv(width, (7, 7), (2, 2), dtype, name="conv_root")(x)
    x = nn.relu(group_norm("gn_root", dtype)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for i, units in enumerate(stages):
        x = ResNetStage(units, width * 2 ** i, (1, 1) if i == 0 else (2, 2), dtype, name=f"block{i + 1}")(x)
    return x
