"""A Hugging Face `TrainerCallback` that runs a `Monitor` inside `transformers.Trainer`.

    from pythia_forensics.monitor.live import Monitor
    from pythia_forensics.monitor.trainer import MonitorCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.add_callback(MonitorCallback(Monitor("pronoun_gender", every=50, results="results/watch",
                                                 run="my-run"), trainer=trainer))
    trainer.train()

At every monitored step the per-rule metrics (``pf/<rule>/conflict_acc``, ``.../agree_acc``,
``.../contrast_margin``) go through ``trainer.log``, so they land in ``trainer.state.log_history``
and every reporting integration (TensorBoard, Weights & Biases, ...) sees them. Without a
``trainer=`` the callback asks the Trainer to log at that step and adds its metrics to that log
entry (``log_history`` gets them; integrations that run before this callback do not).

Support counting: wrap the Trainer's collator with `MonitorCallback.collator` (pass the
result as ``data_collator=``). The data loader collates ahead of the step that uses a batch
(accelerate fetches one batch early), so the wrapper only queues each batch's ``input_ids``;
at the end of optimizer step k the callback shows the monitor exactly the batches steps
<= k consumed (k x gradient-accumulation batches), so each support window holds its own
steps' tokens.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback, default_data_collator

from pythia_forensics.monitor.live import Monitor

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
        self._queued: deque[Any] = deque()   # collated batches not yet shown to the monitor
        self._shown = 0                      # batches shown so far

    def collator(self, inner: Callable[[list[Any]], Any] | None = None) -> Callable[[list[Any]], Any]:
        """A data collator that queues each batch's ``input_ids`` for support counting.

        Args:
            inner: the collator to wrap (default: transformers' ``default_data_collator``).

        Returns:
            The wrapping collator; it returns what ``inner`` returns.
        """
        inner = inner or default_data_collator

        def collate(examples: list[Any]) -> Any:
            batch = inner(examples)
            self._queued.append(batch["input_ids"])
            return batch

        return collate

    def _show_consumed(self, args: Any, state: Any, tokenizer: Any) -> None:
        """Show the monitor the queued batches optimizer steps <= state.global_step consumed."""
        due = state.global_step * max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))
        while self._queued and self._shown < due:
            self.monitor.observe(self._queued.popleft(), tokenizer=tokenizer)
            self._shown += 1

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:  # one rank scores and writes (the ranks share the weights)
            return control
        tokenizer = processing_class if processing_class is not None else kwargs.get("tokenizer")
        self._show_consumed(args, state, tokenizer)
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
