"""Keep the checkpoint an alert names: the monitor's weights of the last check at which a rule
still held, saved with the tokenizer so every command of the tool can read the folder.

By the time an alert fires (conflict accuracy already below the collapse threshold) the live
weights have moved on: saving ``model`` then would save the collapsing model. So, when asked
to (``Monitor(keep=FOLDER)``), the monitor holds CPU copies of the weights of the checks an
alert could still name -- the latest check (the next one may show it held) and, per rule not
yet alerted, the last check at which the rule held -- and drops every other copy. On an alert
it writes the named check to ``FOLDER/<run>/step<N>/`` with ``save_pretrained`` (safetensors)
and the tokenizer's ``save_pretrained``; when it cannot (keep not asked, the copy was not held,
the model or tokenizer cannot save itself), the alert says so instead of naming a folder.

Cost: one CPU copy of the parameters per distinct retained step, usually one or two.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pythia_forensics.constants import STEP_DIR_PREFIX

__all__ = ["CheckpointKeeper", "keep_step", "held_mask"]


def held_mask(conflict_smooth: np.ndarray, agree_smooth: np.ndarray, config: Any) -> np.ndarray:
    """Checks at which a rule holds: smoothed conflict accuracy >= emergence.conflict_min while the
    smoothed agree control is >= emergence.agree_min (analysis.yaml)."""
    tol = config.tolerance
    with np.errstate(invalid="ignore"):
        return (conflict_smooth >= config.emergence_conflict_min - tol) & (agree_smooth >= config.emergence_agree_min - tol)


def keep_step(steps: np.ndarray, conflict_smooth: np.ndarray, agree_smooth: np.ndarray, *, onset: int,
              peak_step: int, config: Any) -> int:
    """The checkpoint to keep: the last check at or before `onset` at which the rule held, else the peak."""
    held = np.flatnonzero(held_mask(conflict_smooth, agree_smooth, config) & (steps <= onset))
    return int(steps[held[-1]]) if held.size else int(peak_step)


def _state_copy(model: Any) -> dict[str, Any]:
    """A CPU copy of the model's state dict; tensors that share storage (tied embeddings) stay shared."""
    import torch

    copies: dict[tuple, Any] = {}
    out = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
            if key not in copies:
                copies[key] = tensor.detach().to("cpu", copy=True)
            out[name] = copies[key]
    return out


class CheckpointKeeper:
    """CPU copies of the weights of recent checks, and the saving of one of them.

    Args:
        folder: where kept checkpoints go (``folder/<run>/step<N>/``).
        run: the monitored run's name.
    """

    def __init__(self, folder: str | Path, run: str) -> None:
        self.root = Path(folder).expanduser() / run.replace("/", "--")
        self._copies: dict[int, dict[str, Any]] = {}

    @property
    def held_steps(self) -> tuple[int, ...]:
        """Steps whose weights are held now."""
        return tuple(sorted(self._copies))

    def remember(self, step: int, model: Any) -> None:
        """Hold a copy of the model's weights as the weights of check `step`."""
        self._copies[int(step)] = _state_copy(model)

    def retain(self, steps: Iterable[int]) -> None:
        """Drop every held copy whose step is not in `steps`."""
        keep = {int(s) for s in steps}
        for step in [s for s in self._copies if s not in keep]:
            del self._copies[step]

    def save(self, step: int, model: Any, tokenizer: Any) -> tuple[Path | None, str]:
        """Write the held copy of `step` as a checkpoint folder (weights, config, tokenizer).

        Args:
            step: the check to save.
            model: the live model (its class and config describe the saved weights).
            tokenizer: the tokenizer, saved beside the weights.

        Returns:
            (folder, what happened): the folder is None when the checkpoint could not be saved,
            and the text says why.
        """
        weights = self._copies.get(int(step))
        name = f"{STEP_DIR_PREFIX}{step}"
        if weights is None:
            return None, (f"checkpoint {name} not saved: its weights were not held (held: "
                          f"{', '.join(f'{STEP_DIR_PREFIX}{s}' for s in self.held_steps) or 'none'})")
        if not hasattr(model, "save_pretrained"):
            return None, f"checkpoint {name} not saved: the model has no save_pretrained (not a transformers model)"
        if not hasattr(tokenizer, "save_pretrained"):
            return None, f"checkpoint {name} not saved: the tokenizer has no save_pretrained"
        out = self.root / name
        # written beside, then renamed: a kill mid-save never leaves a half checkpoint under the name
        tmp = out.with_name(f".{name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        return out, f"kept in {out}"
