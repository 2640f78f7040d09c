"""Running PyTorch functions as training processes inside Spark tasks, with either backend.

:func:`run_workers` (Horovod) drives ``horovod.spark.run`` directly: Horovod's Spark Estimator does not
work with the pinned pyarrow. :func:`run_torch_workers` uses Spark's own ``TorchDistributor`` on the
executors (``local_mode=False``: barrier tasks, each starting ``torchrun`` for one process). Gloo is the
transport of both (no MPI on Spark executors); a Gloo timeout turns a worker that died into a failed run
instead of a hang.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from pyspark.sql import SparkSession

T = TypeVar("T")


def run_workers(
    spark: SparkSession,
    fn: Callable[..., T],
    num_proc: int,
    args: tuple[Any, ...] = (),
    gloo_timeout_s: int = 120,
    start_timeout_s: int = 300,
    verbose: int = 0,
) -> list[T]:
    """Run ``fn(*args)`` as ``num_proc`` Horovod workers, one per Spark task, and return their results.

    Args:
        spark: the active session; its executors must offer at least ``num_proc`` task slots at once.
        fn: a picklable function; it calls ``hvd.init()`` itself.
        num_proc: number of Horovod processes.
        args: positional arguments for ``fn`` (pickled once, sent to every worker).
        gloo_timeout_s: how long a collective waits for a missing peer before failing the run.
        start_timeout_s: how long to wait for all Spark tasks to start and register.
        verbose: Horovod's launcher verbosity (0-2).

    Returns:
        One result per worker, in rank order.
    """
    import horovod.spark

    assert spark.sparkContext is not None  # horovod.spark.run uses the active context
    env = {**os.environ, "HOROVOD_GLOO_TIMEOUT_SECONDS": str(gloo_timeout_s)}
    with _quiet_cancelled_job():
        return horovod.spark.run(
            fn,
            args=args,
            num_proc=num_proc,
            start_timeout=start_timeout_s,
            use_gloo=True,
            env=env,
            verbose=verbose,
        )


@contextmanager
def _quiet_cancelled_job() -> Iterator[None]:
    """When a worker fails, Horovod cancels the Spark job holding its tasks, and the thread that waited
    on that job dies printing the cancellation's Java stack trace; the run's own error says what
    happened, so that one thread's trace is not printed (every other thread's still is)."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if "SPARK_JOB_CANCELLED" in str(args.exc_value) and "horovod" in str(args.exc_value):
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def allreduce_probe(seed: int) -> dict[str, Any]:
    """One allreduce and one ``DistributedOptimizer`` step; proves the workers really cooperate.

    Each rank feeds different data to the same tiny linear model; after one synchronised step every
    rank must hold identical weights, and the allreduced rank average must be (size - 1) / 2.
    """
    import horovod.torch as hvd
    import torch

    hvd.init()
    torch.manual_seed(seed)
    average_rank = hvd.allreduce(torch.tensor([float(hvd.rank())]), name="rank").item()
    net = torch.nn.Linear(4, 1)
    optimizer = hvd.DistributedOptimizer(
        torch.optim.SGD(net.parameters(), lr=0.1), named_parameters=net.named_parameters()
    )
    hvd.broadcast_parameters(net.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    x = torch.full((8, 4), float(hvd.rank() + 1))
    loss = (net(x) - 1.0).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    result = {
        "rank": hvd.rank(),
        "size": hvd.size(),
        "average_rank": average_rank,
        "weights": [round(v, 6) for v in net.weight.detach().flatten().tolist()],
        "pid": os.getpid(),
    }
    hvd.shutdown()
    return result


def run_torch_workers(
    spark: SparkSession, fn: Callable[..., T], num_proc: int, args: tuple[Any, ...] = ()
) -> T:
    """Run ``fn(*args)`` in ``num_proc`` processes under Spark's ``TorchDistributor`` on the executors.

    It runs one barrier stage of ``num_proc`` tasks (so it needs that many free task slots at once, and a
    task that dies fails the stage with no retry); each task starts ``torchrun``, which sets ``RANK``,
    ``WORLD_SIZE`` and ``MASTER_ADDR``/``MASTER_PORT`` for ``fn``. The processes' output reaches the
    driver's standard error through the distributor's log stream.

    Returns:
        Rank 0's result (the distributor returns only that one).
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    assert spark.sparkContext is not None
    distributor = TorchDistributor(num_processes=num_proc, local_mode=False, use_gpu=False)
    return cast(T, distributor.run(fn, *args))
