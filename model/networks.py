"""The networks, chosen by name in configuration (``train.network``): the registry :data:`NETWORKS`.

Both take float32 tiles (N, 3, S, S), normalised to about zero mean and unit variance by the data
pipeline (:class:`model.data.TileInput`), and return logits (N, num_classes). S is ``tiles.size``; the
shapes below are for the paper's 224. Each ends in an adaptive pooling, so it takes any size its
convolutions and pools leave at least one pixel of: :func:`input_size_error` says whether one can.

:func:`build_network` lays the weights out channels-last (NHWC) and each network's ``forward`` turns its
input the same way: on CPU, oneDNN's convolutions run on that layout without reordering, which made a
training step of ``compact`` 25% cheaper and its forward pass twice as fast on one core (14.4 -> 10.8 and
6.2 -> 2.8 CPU ms per 224x224 tile, batch 32; docs/benchmarks.md). Values are unchanged: a state dict
loads into either layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class AlexNetLike(nn.Module):
    """The paper's network: five convolutions and two 4,096-wide fully connected layers.

    Shapes: (N,3,224,224) -conv 11x11/4-> (N,96,55,55) -pool-> (N,96,27,27) -conv 5x5-> (N,256,27,27)
    -pool-> (N,256,13,13) -conv 3x3 x3-> (N,256,13,13) -pool-> (N,256,6,6) -> 9,216 -> 4,096 -> 4,096
    -> classes.
    """

    def __init__(self, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class CompactCNN(nn.Module):
    """A small network that trains in minutes on two CPU cores: the demo's default.

    Shapes: (N,3,224,224) -stem 5x5/2-> (N,16,112,112) -pool-> (N,16,56,56) -block-> (N,32,28,28)
    -block-> (N,64,14,14) -block-> (N,96,7,7) -global average and max-> (N,192) -> classes.
    """

    def __init__(self, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            block(16, 32),
            block(32, 64),
            block(64, 96),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.peak = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(p=dropout), nn.Linear(192, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        features = self.features(x)
        # Average and maximum over the 7x7 map: a lesion a few cells wide in a 224 tile (a calcification
        # cluster, a small mass) is diluted by the average alone (docs/models.md: the study).
        return self.classifier(torch.cat([self.pool(features), self.peak(features)], 1))


@dataclass(frozen=True)
class Network:
    """A registry entry: how to build the network, and its convolutional part (what fixes the input size)."""

    factory: Callable[[int], nn.Module]
    features: Callable[[nn.Module], nn.Module]


NETWORKS: dict[str, Network] = {
    "alexnet_like": Network(AlexNetLike, lambda net: net.features),
    "compact": Network(CompactCNN, lambda net: net.features),
}


def _entry(name: str) -> Network:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}: choose one of {sorted(NETWORKS)}")
    return NETWORKS[name]


def build_network(name: str, num_classes: int) -> nn.Module:
    """The network called ``name`` with ``num_classes`` outputs, its weights channels-last."""
    net = _entry(name).factory(num_classes)
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it


def input_size_error(name: str, size: int) -> str | None:
    """Why network ``name`` cannot take ``size`` x ``size`` tiles, or None when it can.

    Found by running a blank tile through the network's convolutions and pools: too small a tile leaves
    them no pixel.
    """
    net = build_network(name, 2)
    try:
        with torch.no_grad():
            out = _entry(name).features(net.eval())(torch.zeros(1, 3, size, size))
    except RuntimeError as error:
        return f"network {name!r} cannot take {size}x{size} tiles (tiles.size): {str(error).splitlines()[0]}"
    if min(out.shape[2:]) < 1:
        return f"network {name!r} cannot take {size}x{size} tiles (tiles.size): no pixel left after pooling"
    return None
