"""Trainer callbacks of the CLI: stop on a non-finite loss, save a checkpoint on Ctrl-C, print each log once.

* :class:`DivergenceCallback` — at every logging step (no extra host synchronisation: the Trainer has just read
  the loss and the gradient norm) a non-finite ``loss``, ``grad_norm`` or ``train_loss`` stops training without
  saving; the CLI then reports it and writes no final model.
* :class:`InterruptCallback` — the first Ctrl-C lets the current optimizer step finish, then the Trainer saves a
  resumable checkpoint and stops; a second Ctrl-C aborts at once. Single-process runs only: under
  ``torchrun`` the processes could see the signal at different steps and save at different ones.
* :class:`LogLineCallback` — one readable line per log (training step, evaluation, end of training), replacing
  the Trainer's ``PrinterCallback``/``ProgressCallback`` dictionaries.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

__all__ = ["DivergenceCallback", "InterruptCallback", "LogLineCallback", "QuietProgressCallback", "format_log",
           "use_log_lines"]


class DivergenceCallback(TrainerCallback):
    """Stops training at the first logging step whose loss or gradient norm is NaN/inf; ``problem`` says which."""

    KEYS = ("loss", "grad_norm", "train_loss")

    def __init__(self):
        self.problem: str | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self.KEYS:
            value = (logs or {}).get(key)
            if self.problem is None and isinstance(value, float) and not math.isfinite(value):
                self.problem = f"{key} is {value} at step {state.global_step}"
        if self.problem is not None:
            # on_log runs before the Trainer saves at this step: a diverged model is never checkpointed.
            control.should_training_stop = True
            control.should_save = control.should_evaluate = False
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.problem is not None:
            control.should_save = control.should_evaluate = False
        return control


class InterruptCallback(TrainerCallback):
    """Ctrl-C (SIGINT) during :meth:`installed`: the step in progress finishes, a checkpoint is saved, training
    stops and ``interrupted`` is True. A second Ctrl-C raises ``KeyboardInterrupt`` at once."""

    def __init__(self):
        self.interrupted = False

    def _handler(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print("\ninterrupted: saving a checkpoint at the end of this step (Ctrl-C again aborts without saving)",
              file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def installed(self, enabled: bool = True):
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = control.should_training_stop = True
        return control


_SHORT = {"learning_rate": "lr", "num_input_tokens_seen": "tokens"}
_FIRST = ("loss", "eval_loss", "grad_norm", "learning_rate")
_HIDDEN = {"epoch", "total_flos", "step"}


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_log(logs: dict, step: int, max_steps: int) -> str:
    """One line: ``step 5/40 (epoch 0.25): loss 0.6931 | grad_norm 1.09 | lr 5e-06 | rewards/chosen 0 | ...``."""
    epoch = logs.get("epoch")
    where = f"{step:>5}/{max_steps}" + (f" (epoch {epoch:.2f})" if isinstance(epoch, float) else "")
    if "loss" in logs:
        head = f"step {where}"
    elif "eval_loss" in logs:
        head = f"eval {where}"
    else:
        head = f"done {where}"
    keys = [k for k in _FIRST if k in logs] + sorted(k for k in logs if k not in _FIRST and k not in _HIDDEN)
    return head + ": " + " | ".join(f"{_SHORT.get(k, k)} {_number(logs[k])}" for k in keys)


class LogLineCallback(TrainerCallback):
    """Prints every log once, as :func:`format_log`'s line (through tqdm when a progress bar is shown)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            line = format_log(logs, state.global_step, state.max_steps)
            if args.disable_tqdm:
                print(line, flush=True)
            else:
                from tqdm.auto import tqdm

                tqdm.write(line)
        return control


class QuietProgressCallback(ProgressCallback):
    """The Trainer's progress bar without its printed log dictionaries (:class:`LogLineCallback` prints them)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return control


def use_log_lines(trainer) -> None:
    """Swap the Trainer's log printing (a dictionary of strings per log) for :class:`LogLineCallback`."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not trainer.args.disable_tqdm:
        trainer.add_callback(QuietProgressCallback)
    trainer.add_callback(LogLineCallback)
