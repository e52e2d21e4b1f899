"""Training in the background: start_train_dl_model → TrainingJob, and TrainingQueue.

A job runs train_dl_model's loop (:func:`halcdl.workflow.train.run_training`) in a thread,
with one more hook that publishes progress under a :class:`threading.Condition` (every wait
is a ``Condition.wait``, never a polling loop) and turns ``stop_training`` into
``ctx.stop`` at the next batch boundary.  While a job runs, its model is reserved for it:
train_dl_model_batch (and so train_dl_model) on that model from any other thread raises
HOperatorError 7913; apply_dl_model and get_dl_model_param still work (they take the
model's lock, which training holds only during one batch).  The job's arithmetic is the
foreground loop's, so a background run gives the same model bit for bit.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..errors import H_ERR_DL_MODEL_RUNTIME, HOperatorError
from ..operators._tuple import is_number, operator, to_tuple, wrong_num, wrong_type, \
    wrong_value
from .hooks import TrainContext, TrainHook

__all__ = ["start_train_dl_model", "TrainingJob", "TrainingQueue"]

_registry_lock = threading.Lock()  # guards DLModel.training_job


def _reserve(m: Any, job: "TrainingJob") -> None:
    with _registry_lock:
        other = getattr(m, "training_job", None)
        if other is not None and other is not job:
            raise HOperatorError(H_ERR_DL_MODEL_RUNTIME,
                                 "the model is being trained by a background job "
                                 "(stop_training or wait for it first)")
        m.training_job = job


def _release(m: Any, job: "TrainingJob") -> None:
    with _registry_lock:
        if getattr(m, "training_job", None) is job:
            m.training_job = None


class _JobHook(TrainHook):
    def __init__(self, job: "TrainingJob") -> None:
        self.job = job

    def on_train_begin(self, ctx: TrainContext) -> None:
        j = self.job
        with j._cond:
            j.num_epochs = float(ctx.num_epochs)
            j.finished_epochs = float(ctx.epoch)
            j._start_iteration = ctx.iteration
            j._num_iterations = ctx.num_iterations
            j._cond.notify_all()

    def on_batch_end(self, ctx: TrainContext) -> None:
        j = self.job
        with j._cond:
            j.iteration = ctx.iteration
            if j._num_iterations > 0:  # < 1 while running: 1.0 only when finished
                j.progress = max(j.progress, min(ctx.iteration / j._num_iterations,
                                                 float.fromhex("0x1.fffffffffffffp-1")))
            if j._stop_requested:
                ctx.stop = True
                ctx.stop_reason = "stop_training"
            j._cond.notify_all()

    def on_evaluation(self, ctx: TrainContext) -> None:
        self.job._last_eval = {"epoch": ctx.epoch, "iteration": ctx.iteration,
                               "comparison_value": ctx.comparison_value,
                               "result": ctx.evaluation_result}

    def on_train_end(self, ctx: TrainContext) -> None:
        with self.job._cond:  # a stop inside an epoch: the fractional epoch reached
            self.job.finished_epochs = float(ctx.epoch)
            self.job._cond.notify_all()

    def on_epoch_end(self, ctx: TrainContext) -> None:
        j = self.job
        with j._cond:
            j.finished_epochs = float(ctx.epoch)
            j._epoch_ends += 1
            j.history.append({"epoch": float(ctx.epoch), "iteration": int(ctx.iteration),
                              "mean_loss": float(ctx.mean_loss),
                              "evaluation": j._last_eval})
            j._last_eval = None
            j._cond.notify_all()


class TrainingJob:
    """One background training (returned by start_train_dl_model / TrainingQueue.submit).

    Attributes: ``progress`` (0…1: iterations done / iterations of the run; below 1 while
    running, 1.0 once finished), ``finished_epochs`` (the epoch reached, as train_infos
    count it: whole epochs while running, the fractional epoch reached after a stop),
    ``num_epochs``, ``iteration``, ``started_at`` / ``finished_at``
    (time.time() or None), ``history`` (per epoch: epoch, iteration, mean_loss and the
    evaluation of that epoch or None), ``state`` ('queued', 'running', 'finished',
    'failed', 'cancelled')."""

    def __init__(self, dldataset: dict, dlmodel: Any, train_param: dict, start_epoch: Any,
                 hooks: tuple = ()) -> None:
        self._args = (dldataset, dlmodel, train_param, start_epoch)
        self._hooks = tuple(hooks)
        self.model = dlmodel
        self._cond = threading.Condition()
        self.progress = 0.0
        self.finished_epochs = 0.0
        self.num_epochs = float(train_param["num_epochs"])
        self.iteration = 0
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.history: list[dict] = []
        self.state = "queued"
        self._stop_requested = False
        self._epoch_ends = 0
        self._start_iteration = 0
        self._num_iterations = 0
        self._last_eval: dict | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------------
    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="halcdl-training", daemon=True)
        _reserve(self.model, self)
        with self._cond:
            self.state = "running"
            self.started_at = time.time()
        self._thread.start()

    def _run(self) -> None:
        from .train import run_training  # noqa: PLC0415

        try:
            dldataset, m, tp, start_epoch = self._args
            out = run_training(dldataset, m, tp, start_epoch, (_JobHook(self),) + self._hooks,
                               _validated=True)
            with self._cond:
                self._result, self.state = out, "finished"
        except BaseException as err:  # noqa: BLE001  (reaches result())
            with self._cond:
                self._error, self.state = err, "failed"
        finally:
            _release(self.model, self)
            with self._cond:
                if self.state == "finished":
                    self.progress = 1.0
                self.finished_at = time.time()
                self._cond.notify_all()

    def _cancel(self) -> bool:
        with self._cond:
            if self.state != "queued":
                return False
            self.state = "cancelled"
            self.finished_at = time.time()
            self._cond.notify_all()
            return True

    @property
    def done(self) -> bool:
        with self._cond:
            return self.state in ("finished", "failed", "cancelled")

    def owns_current_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # -- waiting -----------------------------------------------------------------------------
    def wait_for_iteration_completion(self) -> float:
        """Block until the next epoch ends (or the job ends); the finished epochs."""
        with self._cond:
            n = self._epoch_ends
            self._cond.wait_for(lambda: self._epoch_ends > n or self.state not in
                                ("queued", "running"))
            return self.finished_epochs

    def wait_for_training_completion(self, timeout: Any = -1) -> float:
        """Block until the job ends or ``timeout`` seconds passed (−1: no limit); the
        finished epochs."""
        t = to_tuple(timeout)
        if len(t) != 1:
            raise wrong_num(1, f"timeout takes one value, got {len(t)}")
        if not is_number(t[0]):
            raise wrong_type(1, f"timeout must be a number of seconds or -1, got {t[0]!r}")
        secs = float(t[0])
        if secs < 0 and secs != -1:
            raise wrong_value(1, f"timeout must be >= 0 or -1, got {secs}")
        with self._cond:
            self._cond.wait_for(lambda: self.state in ("finished", "failed", "cancelled"),
                                None if secs == -1 else secs)
            return self.finished_epochs

    def stop_training(self, wait: Any = True) -> float:
        """Stop at the next batch boundary (the model keeps the weights of the last
        completed iteration, 'final' serialization runs); a queued job is cancelled.  With
        ``wait`` 'true' block until it has stopped.  Returns the finished epochs."""
        w = to_tuple(wait)
        x = w[0] if len(w) == 1 else None
        if x not in (True, False, "true", "false", 1, 0):
            raise wrong_value(1, f"wait must be 'true' or 'false', got {wait!r}")
        with self._cond:
            self._stop_requested = True
        self._cancel()
        if x in (True, "true", 1):
            return self.wait_for_training_completion(-1)
        with self._cond:
            return self.finished_epochs

    def result(self, timeout: Any = -1) -> tuple:
        """train_dl_model's outputs (train_results, train_infos, evaluation_infos); blocks
        until the job ends; raises the exception the training raised (HOperatorError 7913
        for a cancelled job or a timeout)."""
        self.wait_for_training_completion(timeout)
        with self._cond:
            if self.state == "failed":
                raise self._error
            if self.state == "cancelled":
                raise HOperatorError(H_ERR_DL_MODEL_RUNTIME, "the training job was cancelled")
            if self.state != "finished":
                raise HOperatorError(H_ERR_DL_MODEL_RUNTIME,
                                     "the training job is still running (timeout)")
            return self._result

    def __repr__(self) -> str:
        return (f"TrainingJob(state={self.state!r}, progress={self.progress:.3f}, "
                f"finished_epochs={self.finished_epochs:g}/{self.num_epochs:g})")


def _prepare(dldataset: Any, dlmodel_handle: Any, train_param: Any, start_epoch: Any) -> tuple:
    """train_dl_model's argument checks, done before a job is created."""
    from ..operators.dl_model import check_model  # noqa: PLC0415
    from . import evaluate as _evaluate  # noqa: PLC0415
    from .train import _check_train_param  # noqa: PLC0415

    samples = _evaluate.check_dataset(dldataset, 1)
    m = check_model(dlmodel_handle, 2)
    tp = _check_train_param(train_param, 3)
    se = to_tuple(start_epoch)
    if len(se) != 1:
        raise wrong_num(4, f"start_epoch takes one value, got {len(se)}")
    if se[0] != "resume":
        if not is_number(se[0]):
            raise wrong_type(4, f"start_epoch must be a number or 'resume', got {se[0]!r}")
        if float(se[0]) < 0 or float(se[0]) != int(se[0]):
            raise wrong_value(4, f"start_epoch must be an integer >= 0, got {se[0]!r}")
    if not any(str(s.get("split")) == "train" for s in samples):
        from ..errors import H_ERR_DL_INVALID_DATASET  # noqa: PLC0415

        raise HOperatorError(H_ERR_DL_INVALID_DATASET, "the dataset has no 'train' samples")
    return dldataset, m, tp, se[0]


@operator
def start_train_dl_model(dldataset: Any, dlmodel_handle: Any, train_param: Any,
                         start_epoch: Any) -> TrainingJob:
    """train_dl_model in a background thread; returns its :class:`TrainingJob` at once.
    Arguments as train_dl_model (checked here, before the thread starts); a model that
    another job trains raises 7913."""
    args = _prepare(dldataset, dlmodel_handle, train_param, start_epoch)
    job = TrainingJob(*args)
    job._start_thread()
    return job


class TrainingQueue:
    """Jobs run one after another in submission order (``move`` reorders waiting ones).

    ``submit(dldataset, dlmodel_handle, train_param, start_epoch)`` → TrainingJob (queued);
    ``jobs`` (all, in order: finished, running, then waiting), ``move(job, position)``
    (position among the waiting jobs, 0 = next), ``cancel(job)`` (a waiting job is dropped,
    the running one is stopped at the next batch), ``wait_all(timeout=-1)``.  One worker
    thread, started on the first submit and ended when the queue is empty."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._done: list[TrainingJob] = []
        self._running: TrainingJob | None = None
        self._waiting: list[TrainingJob] = []
        self._worker: threading.Thread | None = None

    @property
    def jobs(self) -> list[TrainingJob]:
        with self._cond:
            return self._done + ([self._running] if self._running else []) + self._waiting

    def submit(self, dldataset: Any, dlmodel_handle: Any, train_param: Any,
               start_epoch: Any) -> TrainingJob:
        args = _prepare(dldataset, dlmodel_handle, train_param, start_epoch)
        job = TrainingJob(*args)
        with self._cond:
            self._waiting.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="halcdl-queue",
                                                daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return job

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._waiting:
                    self._worker = None
                    self._cond.notify_all()
                    return
                job = self._waiting.pop(0)
                self._running = job
            try:
                job._start_thread()
            except HOperatorError as err:  # its model is busy with a job elsewhere
                with job._cond:
                    job._error, job.state = err, "failed"
                    job.finished_at = time.time()
                    job._cond.notify_all()
            job.wait_for_training_completion(-1)
            with self._cond:
                self._running = None
                self._done.append(job)
                self._cond.notify_all()

    def _find(self, job: Any) -> int:
        if not isinstance(job, TrainingJob):
            raise wrong_type(1, f"job must be a TrainingJob, got {type(job).__name__}")
        for i, j in enumerate(self._waiting):
            if j is job:
                return i
        return -1

    def move(self, job: Any, position: Any) -> None:
        """Move a waiting job to ``position`` among the waiting jobs (clipped to the end)."""
        p = to_tuple(position)
        if len(p) != 1 or not isinstance(p[0], int) or isinstance(p[0], bool) or p[0] < 0:
            raise wrong_value(2, f"position must be an integer >= 0, got {position!r}")
        with self._cond:
            i = self._find(job)
            if i < 0:
                raise wrong_value(1, "the job is not waiting in this queue (running, done or "
                                     "from another queue)")
            self._waiting.insert(min(int(p[0]), len(self._waiting) - 1),
                                 self._waiting.pop(i))

    def cancel(self, job: Any) -> None:
        """Drop a waiting job (state 'cancelled') or stop the running one."""
        with self._cond:
            i = self._find(job)
            if i >= 0:
                self._waiting.pop(i)
                self._done.append(job)
                job._cancel()
                self._cond.notify_all()
                return
            if job is not self._running:
                if any(j is job for j in self._done):
                    return  # already over
                raise wrong_value(1, "the job does not belong to this queue")
        job.stop_training(False)

    def wait_all(self, timeout: Any = -1) -> bool:
        """Block until every submitted job ended (or ``timeout`` seconds); True when all
        ended."""
        t = to_tuple(timeout)
        if len(t) != 1 or not is_number(t[0]) or (float(t[0]) < 0 and float(t[0]) != -1):
            raise wrong_value(1, f"timeout must be >= 0 or -1, got {timeout!r}")
        secs = float(t[0])
        with self._cond:
            return self._cond.wait_for(lambda: self._worker is None and not self._waiting,
                                       None if secs == -1 else secs)
