"""A compact, fast CIFAR-10 network in the style of the public CIFAR-10 speed records.

The layout follows the record-setting "airbench" family: a small stem convolution, then
blocks of 3 x 3 convolutions with batch norm and GELU, each block halving the image with a
max-pool, then a global max-pool and one linear layer. Batch norm lets it train with a large
learning rate, so it reaches high accuracy in few epochs. The network is registered as
``"fast"`` in :data:`lightning_modules.networks.NETWORKS`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from lightning_modules.networks import NETWORKS, make_activation


def conv_bn(in_channels: int, out_channels: int, activation: str) -> list[tuple[str, nn.Module]]:
    """A padded 3 x 3 convolution (no bias), batch norm and activation: the size is kept."""
    return [
        # (N, in, H, W) -> (N, out, H, W)
        ("conv", nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)),
        ("bn", nn.BatchNorm2d(out_channels)),
        ("act", make_activation(activation)),
    ]


class ConvBlock(nn.Sequential):
    """``depth`` conv-BN-activation layers with a 2 x 2 max-pool after the first.

    Pooling right after the first convolution, as the speed records do, runs the remaining
    convolutions of the block on a quarter of the pixels.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of every convolution of the block.
        depth: Number of convolutions, at least 1.
        activation: Name of the activation (see ``networks.ACTIVATIONS``).
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int = 2,
                 activation: str = "gelu") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        layers: list[tuple[str, nn.Module]] = []
        channels = in_channels
        for i in range(1, depth + 1):
            for name, layer in conv_bn(channels, out_channels, activation):
                layers.append((f"{name}{i}", layer))
                if name == "conv" and i == 1:
                    # (N, out, H, W) -> (N, out, H / 2, W / 2)
                    layers.append(("pool", nn.MaxPool2d(2)))
            channels = out_channels
        super().__init__(OrderedDict(layers))


class FastNet(nn.Module):
    """A stem convolution, pooled conv-BN blocks, global max-pool and a linear classifier.

    With the defaults (stem 24, widths 64, 256, 256, depth 2) it has about 1.97 million
    weights and is shaped like the 94%-class speed-record networks; smaller widths trade
    accuracy for speed on CPUs.

    Args:
        in_shape: Input (channels, height, width).
        num_classes: Outputs of the final linear layer (logits).
        stem_channels: Channels of the stem convolution.
        widths: Channels of each block; each block halves height and width.
        depth: Convolutions per block.
        activation: Name of the activation after every batch norm.
        logit_scale: Factor applied to the logits; a value below 1 keeps them small early in
            training, which suits the high learning rates this network is trained with.
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        stem_channels: int = 24,
        widths: Sequence[int] = (64, 256, 256),
        depth: int = 2,
        activation: str = "gelu",
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        channels, height, width = in_shape
        if not widths:
            raise ValueError("widths must name at least one block")
        if min(height, width) < 2 ** len(widths):
            raise ValueError(f"{len(widths)} blocks halve a {height}x{width} image below 1 pixel; "
                             "use fewer blocks")
        stem = conv_bn(channels, stem_channels, activation)
        self.stem = nn.Sequential(OrderedDict(stem))
        blocks: list[tuple[str, nn.Module]] = []
        channels = stem_channels
        for i, out_channels in enumerate(widths, start=1):
            blocks.append((f"block{i}", ConvBlock(channels, out_channels, depth, activation)))
            channels = out_channels
        self.blocks = nn.Sequential(OrderedDict(blocks))
        # (N, C, h, w) -> (N, C, 1, 1) -> (N, C)
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.output = nn.Linear(channels, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, images: Tensor) -> Tensor:
        features = self.blocks(self.stem(images))  # (N, widths[-1], H / 2^k, W / 2^k)
        logits: Tensor = self.output(self.pool(features))  # (N, num_classes)
        return logits * self.logit_scale if self.logit_scale != 1.0 else logits


def count_parameters(module: nn.Module) -> int:
    """Number of trainable weights of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


NETWORKS["fast"] = FastNet
