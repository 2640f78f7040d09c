"""Distributed training, split as Horovod's Spark integration is (``horovod/spark/{common,torch,runner}``).

- :mod:`model.training.common`: what the driver and the workers share: the plan (:class:`TrainPlan`),
  the task's data at a pinned tiles version (:class:`TaskData`), checkpoints, class weights, validation.
- :mod:`model.training.worker`: what every executor-side worker runs: the Petastorm reader, the step
  loop, validation and the collective decisions (behind :class:`~model.training.worker.Collective`).
- :mod:`model.training.runner`: the driver side: the plan, the MLflow run, lineage and resuming, and
  :func:`~model.training.runner.train_tasks`, the library function behind ``oncolake train``.
- :mod:`model.training.registration`: calibration, the threshold, registering the best epoch, and the
  leakage audit's figures.
"""
