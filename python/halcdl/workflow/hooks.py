"""The hooks of the training loop (Keras ``Model.fit`` callbacks / Ultralytics' trainer).

:func:`halcdl.workflow.train.run_training` is one loop; everything around it (change
strategies, serialization, the display, and later early stopping, schedules, progress bars,
plots, background jobs) is a :class:`TrainHook` called on a few events.  Every hook gets the
same :class:`TrainContext`, which holds the state of the run.

Events, in the order the loop calls them::

    on_train_begin(ctx)                 once, after the resume state is restored
    for each epoch:
        on_epoch_begin(ctx)             ctx.epoch is the epoch's start (an integer value)
        for each iteration:
            on_batch_begin(ctx)         before the samples are read; change strategies here
            (read → augment → train_dl_model_batch)
            on_batch_end(ctx)           ctx.train_result, ctx.mean_loss are the new ones
            on_evaluation(ctx)          only when an evaluation ran; ctx.evaluation_result,
                                        ctx.comparison_value, ctx.improved, ctx.best_value
        on_epoch_end(ctx)
    on_train_end(ctx)                   also after a stop (ctx.stopped is True then)

A hook ends training by setting ``ctx.stop = True``: the loop stops at the next batch boundary
(after the current iteration's hooks ran), so the model is never left half-updated.  A hook that
needs state that must survive ``start_epoch='resume'`` keeps it in ``ctx.state`` under its own
key (JSON-like values: numbers, strings, lists, dicts); the serialization hook writes
``ctx.state`` into every ``*_info.hdict`` and resume restores it before ``on_train_begin``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainHook", "TrainContext"]


@dataclass
class TrainContext:
    """The state of one train_dl_model run, shared by the loop and its hooks.

    Read-mostly for hooks: ``model`` (the DLModel handle), ``dldataset``, ``train_param``,
    ``epoch`` (float: iterations done / iterations per epoch, e.g. 1.5 in the middle of the
    second epoch), ``iteration`` (iterations done since epoch 0, the resume count included),
    ``iterations_per_epoch``, ``num_epochs``, ``batch_size`` (batch_size × multiplier of the
    current iteration), ``sample_indices`` (dataset indices of the current batch),
    ``train_result`` (last train_dl_model_batch result), ``mean_loss``, ``evaluation_result``
    (last evaluation), ``comparison_value`` (its comparison value, higher is better),
    ``best_value`` / ``best_epoch`` / ``best_iteration`` / ``best_result`` (best so far),
    ``improved`` (the last evaluation improved the best value), ``train_infos`` and
    ``evaluation_infos`` (what train_dl_model returns), ``time_elapsed`` (seconds, this run),
    ``mean_loss_samples``, ``start_epoch``, ``start_time``.

    Writable: ``stop`` (set True to end at the next batch boundary), ``stop_reason`` (a
    string put into the last train info), ``state`` (resumable hook state).
    """

    model: Any
    dldataset: dict
    train_param: dict
    num_epochs: float
    iterations_per_epoch: int = 0
    num_iterations: int = 0
    epoch: float = 0.0
    iteration: int = 0
    start_iteration: int = 0
    batch_size: int = 0
    sample_indices: list = field(default_factory=list)
    train_result: dict | None = None
    mean_loss: float = float("nan")
    mean_loss_samples: int = 0
    start_epoch: float = 0.0
    start_time: float = 0.0
    evaluation_result: dict | None = None
    comparison_value: float | None = None
    best_value: float | None = None
    best_result: dict | None = None
    best_epoch: float | None = None
    best_iteration: int | None = None
    improved: bool = False
    train_infos: list = field(default_factory=list)
    evaluation_infos: list = field(default_factory=list)
    time_elapsed: float = 0.0
    time_remaining: float = float("nan")
    stop: bool = False
    stopped: bool = False
    stop_reason: str = ""
    state: dict = field(default_factory=dict)


class TrainHook:
    """Base class of the hooks: every method is a no-op; override the events you need.

    Hooks are called in the order they were given.  An exception raised by a hook ends the
    training and reaches the caller of train_dl_model (the model keeps the weights of the
    last completed iteration)."""

    def on_train_begin(self, ctx: TrainContext) -> None:
        pass

    def on_epoch_begin(self, ctx: TrainContext) -> None:
        pass

    def on_batch_begin(self, ctx: TrainContext) -> None:
        pass

    def on_batch_end(self, ctx: TrainContext) -> None:
        pass

    def on_evaluation(self, ctx: TrainContext) -> None:
        pass

    def on_epoch_end(self, ctx: TrainContext) -> None:
        pass

    def on_train_end(self, ctx: TrainContext) -> None:
        pass
