"""A Hugging Face `TrainerCallback` that runs a `Monitor` inside `transformers.Trainer`.

    from pythia_forensics.sweep.monitor import Monitor
    from pythia_forensics.sweep.monitor_hf import MonitorCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.add_callback(MonitorCallback(Monitor("pronoun_gender", every=50, results="results/watch",
                                                 run="my-run"), trainer=trainer))
    trainer.train()

At every monitored step the per-rule metrics (``pf/<rule>/conflict_acc``, ``.../agree_acc``,
``.../contrast_margin``) go through ``trainer.log``, so they land in ``trainer.state.log_history``
and every reporting integration (TensorBoard, Weights & Biases, ...) sees them. Without a
``trainer=`` the callback asks the Trainer to log at that step and adds its metrics to that log
entry (``log_history`` gets them; integrations that run before this callback do not).
"""
from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from pythia_forensics.sweep.monitor import Monitor

__all__ = ["MonitorCallback"]


class MonitorCallback(TrainerCallback):
    """Runs ``monitor.step`` after every optimizer step and logs its metrics via the Trainer.

    Args:
        monitor: the `Monitor` (its ``every`` counts Trainer global steps).
        trainer: the Trainer, so metrics go through ``trainer.log`` (recommended).
    """

    def __init__(self, monitor: Monitor, *, trainer: Any = None) -> None:
        self.monitor = monitor
        self.trainer = trainer
        self._pending: dict[str, float] | None = None

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:  # one rank scores and writes (the ranks share the weights)
            return control
        tokenizer = processing_class if processing_class is not None else kwargs.get("tokenizer")
        metrics = self.monitor.step(model, state.global_step, tokenizer=tokenizer)
        if metrics:
            if self.trainer is not None:
                self.trainer.log(dict(metrics))
            else:
                self._pending = dict(metrics)
                control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None:
            logs.update(self._pending)
            if state.log_history:
                state.log_history[-1].update(self._pending)
            self._pending = None
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.monitor.close()
        return control
