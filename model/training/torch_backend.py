"""The PyTorch backend (``train.backend: torch_distributor``): DDP over Gloo, started by Spark.

:func:`torch_worker` is what every process runs, through :func:`model.distributed.run_torch_workers`
(Spark's ``TorchDistributor(local_mode=False, use_gpu=False)``: barrier tasks on the executors, each
starting ``torchrun`` for one process). It is the same :func:`model.training.worker.train_loop` as the
Horovod backend's, over a :class:`TorchCollective`: ``torch.distributed`` with Gloo, gradients averaged by
``DistributedDataParallel`` while the backward pass runs.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

from model.training.common import TrainPlan
from model.training.worker import run_in_group


class TorchCollective:
    """:class:`model.training.worker.Collective` over ``torch.distributed`` (Gloo)."""

    def __init__(self, timeout_s: int) -> None:
        """``timeout_s``: how long a collective waits for a missing peer before the run fails
        (``train.peer_timeout_seconds``)."""
        import torch.distributed as dist

        # torchrun set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for this process.
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
        self.dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        # Each Spark task runs its own torchrun (one process per "node"), so LOCAL_WORLD_SIZE is 1 even
        # when several land on one machine: count the peers that share this host instead.
        hosts: list[Any] = [None] * self.size
        dist.all_gather_object(hosts, socket.gethostname())
        self.local_size = hosts.count(socket.gethostname())

    def share(self, value: Any, name: str) -> Any:
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def start(self, net: Any, optimizer: Any) -> tuple[Any, Any]:
        from torch.nn.parallel import DistributedDataParallel

        # DDP broadcasts rank 0's parameters and buffers when it wraps the network; the optimizer state
        # (momentum, after a resume) is rank 0's too.
        if self.size == 1:  # nothing to average: DDP's bucketed allreduce with itself only costs time
            return net, optimizer
        state = self.share(optimizer.state_dict() if self.rank == 0 else None, "optimizer_state")
        if self.rank != 0:
            optimizer.load_state_dict(state)
        return DistributedDataParallel(net), optimizer

    def _reduce(self, value: float, op: Any) -> float:
        import torch

        tensor = torch.tensor(float(value), dtype=torch.float64)
        self.dist.all_reduce(tensor, op=op)
        return float(tensor)

    def mean(self, value: float, name: str) -> float:
        return self._reduce(value, self.dist.ReduceOp.SUM) / self.size

    def total(self, value: float, name: str) -> float:
        return self._reduce(value, self.dist.ReduceOp.SUM)

    def gather(self, value: Any, name: str) -> list[Any]:
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        self.dist.destroy_process_group()


def torch_worker(plan: TrainPlan) -> dict[str, Any]:
    """One process's training run (:func:`train_loop` over a :class:`TorchCollective`)."""
    return run_in_group(plan, lambda: TorchCollective(plan.peer_timeout_s))
