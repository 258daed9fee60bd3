"""How to score: `ScoreOptions` and the vocabularies and defaults of its fields.

Kept free of torch, numpy and pandas so the CLI can build its options and help text cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass

from pythia_forensics.errors import ScoringError

__all__ = ["DEFAULT_VOCAB_ROWS", "DEVICES", "DTYPES", "VOCAB_ROWS", "ScoreOptions", "check_count"]

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
# Log-sum-exp over every row the model emits ("all": the model's own output distribution, as
# minicons, lm-eval and the Pythia paper's scorer compute it) or over the tokenizer's rows only
# ("tokenizer"). Pythia pads its 50277-token vocabulary to 50304 rows; on early checkpoints the
# untrained padding rows move per-item log-probs by ~2e-3 nats, so the default matches peers.
VOCAB_ROWS = ("all", "tokenizer")
DEFAULT_VOCAB_ROWS = "all"


def check_count(value: object, *, what: str, param: str) -> None:
    """Raise ScoringError unless ``value`` is ``auto`` or a positive integer (not a bool)."""
    if not (value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)):
        raise ScoringError(f"{what} must be a positive integer or 'auto', got {value!r}", param=param)


@dataclass(frozen=True)
class ScoreOptions:
    """How to score (every field is recorded with the results).

    Attributes:
        dtype: ``auto`` (fp32 on CPU and for models up to `model.FP32_MAX_PARAMS` on GPU, else bf16),
            ``float32``, ``float16`` or ``bfloat16``.
        device: ``auto`` (cuda if available), ``cpu`` or ``cuda`` (``cuda:N`` accepted).
        batch_size: sequences per forward, or ``auto`` (a token budget per batch, lowered for
            large models by an estimate of the batch's memory: `plan.auto_batch_size`; on out-of-memory
            the unit restarts at half the size until it fits, the size that ran is recorded).
        bos: prepend the tokenizer's BOS token (else EOS) to every prefix. Pythia: no.
        vocab_rows: log-sum-exp over the ``tokenizer``'s rows only or over ``all`` rows of the
            output embedding (see the module docstring).
        threads: CPUs for scoring, or ``auto`` (`resolve_threads`). On CPU they run batches
            side by side on single-threaded kernels (`cpus.split_threads`), so the numbers do
            not depend on it unless a plan has fewer batches than threads (it is recorded).
    """

    dtype: str = "auto"
    device: str = "auto"
    batch_size: int | str = "auto"
    bos: bool = False
    vocab_rows: str = DEFAULT_VOCAB_ROWS
    threads: int | str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ScoringError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}", param="dtype")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ScoringError(f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}", param="device")
        if self.vocab_rows not in VOCAB_ROWS:
            raise ScoringError(f"unknown vocab_rows {self.vocab_rows!r}; use one of {', '.join(VOCAB_ROWS)}",
                               param="vocab_rows")
        check_count(self.batch_size, what="batch size", param="batch_size")
        check_count(self.threads, what="threads", param="threads")
