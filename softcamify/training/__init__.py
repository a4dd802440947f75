"""Fine-tuning a SoftCAM model with an ElasticNet penalty on its evidence maps.

The library behind ``softcamify finetune``; notebooks call it directly::

    from softcamify.training import FinetuneConfig, finetune
    result = finetune("resnet50_softcam.safetensors", "data/", "runs/l1", FinetuneConfig(epochs=20, l1=5e-5))
    result.model            # the best SoftCAM model (also RUN_DIR/best.safetensors)
    result.history          # one dict per epoch (also RUN_DIR/metrics.jsonl)

Loss (docs/method.md, "Fine-tuning loss")::

    loss = CE(logits, y) + l1 · mean_{b,k,h,w} |A| / s + l2 · mean_{b,k,h,w} A² / s²

The penalties are means over every sample, class map and evidence cell, relative to ``s``, the logit
scale of the starting model (:func:`logit_scale`, measured once before the first step), so a λ means
the same on any grid, class count and logit scale; ``l1 = l2 = 0`` is plain cross-entropy.

A run folder holds ``last.pt`` (everything needed to continue: model, optimizer, scaler, scheduler,
epoch and step, RNG states, config; written atomically at every epoch end and on Ctrl-C; readable with
``torch.load(weights_only=True)``), ``best.safetensors`` (a softcamify model, chosen by ``monitor``),
``metrics.jsonl`` (one JSON object per epoch) and ``summary.json``. With the same seed, CPU runs are
bit-identical, and a resumed run ends with the same weights as an uninterrupted one: every epoch's
shuffling and every sample's augmentation are seeded from ``(seed, epoch, index)``, so they depend on
neither the worker count nor where a run was interrupted.

The package, in the order of the pipeline::

    config.py    FinetuneConfig, FinetuneResult, FinetuneInterrupted, Reporter, constants, check_config
    loss.py      elasticnet_loss, logit_scale, lambda_from_paper, cosine_with_warmup, map_statistics
    lock.py      RunLock: one run per run folder; a run killed with SIGKILL never blocks its resume
    rundir.py    the run folder: check_run_dir, last.pt (load_state/save_state), metrics.jsonl,
                 best.safetensors, summary.json
    splits.py    the run's data: discovery, class matching (shared with the sweep), image verification
    loaders.py   seeded datasets, samplers and DataLoaders
    loop.py      train_one_epoch, validate, the best epoch and early stopping, Ctrl-C
    run.py       finetune: the run's steps, resume, the result
    sweep*.py    the λ sweep (softcamify.training.sweep.sweep): short fine-tunes over a λ grid
"""

from .config import (
    DEFAULT_L1,
    DEFAULT_LR,
    DEFAULT_SPARSITY_THRESHOLD,
    DEFAULT_WEIGHT_DECAY,
    MONITORS,
    OPTIMIZERS,
    FinetuneConfig,
    FinetuneInterrupted,
    FinetuneResult,
    Reporter,
    check_config,
)
from .loaders import default_workers
from .loss import (
    balanced_class_weights,
    cosine_with_warmup,
    elasticnet_loss,
    lambda_from_paper,
    logit_scale,
    map_statistics,
)
from .run import finetune
from .rundir import RunLock, check_run_dir, load_state
from .splits import class_order, discover_splits

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "FinetuneInterrupted",
    "Reporter",
    "finetune",
    "elasticnet_loss",
    "logit_scale",
    "lambda_from_paper",
    "cosine_with_warmup",
    "map_statistics",
    "balanced_class_weights",
    "load_state",
    "check_run_dir",
    "check_config",
    "RunLock",
    "default_workers",
    "discover_splits",
    "class_order",
    "MONITORS",
    "OPTIMIZERS",
    "DEFAULT_L1",
    "DEFAULT_LR",
    "DEFAULT_WEIGHT_DECAY",
    "DEFAULT_SPARSITY_THRESHOLD",
]
