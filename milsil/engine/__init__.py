"""Training: one loop, its settings, losses and validation, and torchrun process groups.

* :mod:`~milsil.engine.config` -- :class:`TrainConfig` (validated), :func:`resolve_device`;
* :mod:`~milsil.engine.loop` -- :func:`train_model`, the one training loop (checkpoints,
  resume, best-epoch selection, progress), data-parallel when given a process group;
* :mod:`~milsil.engine.epoch` -- an epoch's batches and running metrics, the best-epoch rule;
* :mod:`~milsil.engine.losses` -- :func:`bag_loss` (SIL, MIL, MIL-SIL);
* :mod:`~milsil.engine.validation` -- :func:`predict`, :func:`evaluate_model`;
* :mod:`~milsil.engine.metrics` -- accuracy, AUROC, localization scores;
* :mod:`~milsil.engine.seeding`, :mod:`~milsil.engine.provenance` -- RNG states, and what a
  run records about itself (versions, data summary, JSON files, the epoch log);
* :mod:`~milsil.engine.group` -- the process group the loop sees; joining, sharding and
  gathering under ``torchrun`` live in :mod:`milsil.distributed`, beside the engine, because
  folder batches (:mod:`milsil.wsi.batch`) shard slides with the same helpers.

The engine imports models and data, never the experiments or the command line.
"""
