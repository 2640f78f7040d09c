"""The networks registry: the paper's AlexNet-like layers, and which tile sizes each network can take."""

from __future__ import annotations

import pytest
import torch

from model.networks import NETWORKS, AlexNetLike, build_network, input_size_error


def test_alexnet_like_has_the_papers_layers_and_takes_one_training_step() -> None:
    net = build_network("alexnet_like", 3)
    assert isinstance(net, AlexNetLike)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [
        (96, (11, 11)), (256, (5, 5)), (384, (3, 3)), (384, (3, 3)), (256, (3, 3))
    ]  # fmt: skip
    linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [4096, 4096, 3]
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([0, 2])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    before = net.classifier[-1].weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    optimizer.step()
    assert net(x).shape == (2, 3) and not torch.equal(before, net.classifier[-1].weight)
    with pytest.raises(ValueError, match="unknown network"):
        build_network("resnet", 2)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_takes_the_papers_size_and_refuses_a_tile_too_small(name: str) -> None:
    assert input_size_error(name, 224) is None
    assert input_size_error(name, 96) is None
    net = build_network(name, 2).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 96, 96)).shape == (2, 2)  # any size it accepts gives logits
    error = input_size_error(name, 16)
    assert error is not None and "cannot take 16x16 tiles" in error


def test_alexnet_like_needs_larger_tiles_than_the_compact_network() -> None:
    assert input_size_error("compact", 48) is None
    assert input_size_error("alexnet_like", 48) is not None
