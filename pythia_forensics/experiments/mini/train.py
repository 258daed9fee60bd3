"""Train one mini GPT-NeoX (Pythia's architecture) on the generated corpus, nanoGPT style.

Top to bottom: build the model from a `ModelConfig`, read the token stream sequentially
(step s trains on tokens [s*T, (s+1)*T), T = batch x seq_len, no shuffling, as Pythia's
pre-shuffled stream), AdamW with linear warmup then cosine decay, and save a `save_pretrained`
checkpoint (safetensors + tokenizer) at every step of the Pythia-like grid. The manifest is
written last: its presence marks a finished model.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from pythia_forensics.atomic import TMP_PREFIX, atomic_path
from pythia_forensics.constants import MANIFEST_FILE, STEP_DIR_PREFIX
from pythia_forensics.checkpoints.manifest import Manifest, remove_manifest, write_manifest
from pythia_forensics.experiments.mini.config import CorpusConfig, ModelConfig, TrainConfig
from pythia_forensics.experiments.mini.corpus import CORPUS_META_FILE, TOKENS_FILE

# Worker processes (mini train) poll their parent this often and exit when it is gone.
WORKER_WATCHDOG_S = 0.5

TRAIN_LOG_FILE = "train_log.csv"


def build_model(model_cfg: ModelConfig, *, vocab_size: int, seq_len: int, seed: int):
    """A freshly initialised GPTNeoXForCausalLM (fp32), seeded."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=model_cfg.d_model,
        num_hidden_layers=model_cfg.layers,
        num_attention_heads=model_cfg.heads,
        intermediate_size=4 * model_cfg.d_model,
        max_position_embeddings=max(seq_len, 64),
        rotary_pct=0.25,  # Pythia's value
        use_parallel_residual=True,
        tie_word_embeddings=False,  # Pythia does not tie
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    return GPTNeoXForCausalLM(config)


def get_lr(step: int, *, peak: float, train: TrainConfig) -> float:
    """Learning rate at `step` (0-based update index)."""
    # 1) linear warmup
    if step < train.warmup_steps:
        return peak * (step + 1) / train.warmup_steps
    # 2) cosine decay from peak to min_lr_ratio * peak at the last step
    progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
    min_lr = peak * train.min_lr_ratio
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def count_params(model) -> tuple[int, int]:
    """(total, non-embedding) parameters; non-embedding excludes the input embedding and the
    unembedding, as Pythia's model card counts."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    return total, total - emb


def _save(model, tokenizer, directory: Path) -> None:
    """save_pretrained into a temporary folder, then rename: a kill never leaves a half checkpoint."""
    with atomic_path(directory) as tmp:
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # atomic_path removes files, not folders
            raise
        shutil.rmtree(directory, ignore_errors=True)  # a rename cannot replace a non-empty folder


def make_optimizer(model, model_cfg: ModelConfig, train: TrainConfig):
    """Pythia's AdamW: betas (0.9, 0.95), eps 1e-8; no weight decay on biases and LayerNorm weights."""
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=model_cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def train_step(model, opt, x, *, lr: float, grad_clip: float) -> float:
    """One update on input ids `x` (batch x seq_len) at learning rate `lr`; returns the loss."""
    import torch

    for group in opt.param_groups:
        group["lr"] = lr
    loss = model(input_ids=x, labels=x).loss  # HF shifts the labels inside
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item()


def _batch(stream, step: int, train: TrainConfig):
    """Step `step`'s input ids: tokens [step*T, (step+1)*T) of the stream, batch x seq_len."""
    import numpy as np
    import torch

    T = train.tokens_per_step
    x = torch.from_numpy(np.asarray(stream[step * T:(step + 1) * T], dtype=np.int64))
    return x.view(train.batch_size, train.seq_len)


def train_model(model_cfg: ModelConfig, *, corpus_dir: Path, out_dir: Path, train: TrainConfig,
                corpus: CorpusConfig, progress: bool = True, position: int = 0,
                resume: bool = True, on_step=None) -> Path:
    """Train one scale and write DIR/<model>/step<N>/, train_log.csv and manifest.json.

    Args:
        model_cfg: the scale.
        corpus_dir: folder written by `corpus.write_corpus` (tokens.bin/.idx, tokenizer).
        out_dir: suite folder; the model goes to out_dir/<model_cfg.name>.
        train: schedule (steps, batch, seq_len, grid).
        corpus: knobs, recorded in the manifest.
        progress: show a tqdm bar.
        position: the bar's line (models trained in parallel each get one).
        resume: continue an interrupted run from its last checkpoint (weights + AdamW state),
            which gives the same weights as an uninterrupted run; False starts at step 0.
        on_step: optional ``on_step(model, step, batch)`` called after every update (step =
            updates done, as checkpoint folders count; batch = that update's input ids), e.g.
            a `pythia_forensics.monitor.live.Monitor`'s ``step``. What it raises stops
            training; the checkpoints and resume state written so far stay.

    Returns:
        The model folder.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    from pythia_forensics.corpus.indexed import IndexedDataset

    torch.set_num_threads(train.threads)
    hf_logging.disable_progress_bar()  # one bar per checkpoint write would drown our own
    model_dir = Path(out_dir) / model_cfg.name
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_manifest(model_dir)  # unfinished until written again
    # A killed run's half-written checkpoint folders (one trainer per model folder at a time).
    for left in model_dir.glob(f"{TMP_PREFIX}*"):
        if left.is_dir():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(corpus_dir)
    stream = IndexedDataset(Path(corpus_dir) / TOKENS_FILE).tokens
    model = build_model(model_cfg, vocab_size=len(tokenizer), seq_len=train.seq_len, seed=train.seed)
    model.train()
    opt = make_optimizer(model, model_cfg, train)
    grid = set(train.checkpoint_steps())
    log_rows: list[tuple] = []  # (step, loss, lr, tokens seen)
    start = _resume(model, opt, model_dir, log_rows) if resume else 0
    if start == 0:
        _clear_resume(model_dir)
        if 0 in grid:
            _save(model, tokenizer, model_dir / f"{STEP_DIR_PREFIX}0")
    for step in tqdm(range(start, train.steps), desc=model_cfg.name, disable=not progress, mininterval=2,
                     position=position, initial=start, total=train.steps):
        lr = get_lr(step, peak=model_cfg.lr, train=train)
        x = _batch(stream, step, train)
        loss = train_step(model, opt, x, lr=lr, grad_clip=train.grad_clip)
        log_rows.append((step + 1, loss, lr, (step + 1) * train.tokens_per_step))
        if on_step is not None:
            on_step(model, step + 1, x)
        if step + 1 in grid:
            _save(model, tokenizer, model_dir / f"{STEP_DIR_PREFIX}{step + 1}")
            _write_log(model_dir / TRAIN_LOG_FILE, log_rows)
            _save_resume(model, opt, model_dir, step + 1)
    _write_log(model_dir / TRAIN_LOG_FILE, log_rows)
    _clear_resume(model_dir)
    _write_final_manifest(model, model_dir, model_cfg, corpus_dir=Path(corpus_dir), train=train, corpus=corpus,
                          vocab_size=len(tokenizer), steps=tuple(sorted(grid)))
    return model_dir


def _write_final_manifest(model, model_dir: Path, model_cfg: ModelConfig, *, corpus_dir: Path,
                          train: TrainConfig, corpus: CorpusConfig, vocab_size: int, steps: tuple[int, ...]) -> None:
    """The manifest, written last: its presence marks a finished model (suite readers rely on it)."""
    total, non_emb = count_params(model)
    corpus_meta = json.loads((corpus_dir / CORPUS_META_FILE).read_text())
    T = train.tokens_per_step
    write_manifest(model_dir, Manifest(
        model=model_cfg.name, params_total=total, params_nonembedding=non_emb, tokens_per_step=T,
        layers=model_cfg.layers, d_model=model_cfg.d_model, heads=model_cfg.heads,
        vocab_size=vocab_size, seed=train.seed, steps=steps,
        corpus={**corpus.to_dict(), "path": str(corpus_dir.resolve()), "sha256": corpus_meta["sha256"]},
        train={**train.__dict__, "lr": model_cfg.lr, "tokens_per_step": T},
    ))


RESUME_FILE = "resume.safetensors"  # AdamW state at the last checkpoint; removed when done


def _write_log(path: Path, rows: list[tuple]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "loss", "lr", "tokens"])
        w.writerows(rows)


def _save_resume(model, opt, model_dir: Path, step: int) -> None:
    """AdamW moments per parameter name, as safetensors (never a pickle)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, p in model.named_parameters():
        st = opt.state.get(p)
        if st:
            tensors[f"exp_avg.{name}"] = st["exp_avg"].contiguous()
            tensors[f"exp_avg_sq.{name}"] = st["exp_avg_sq"].contiguous()
            tensors[f"step.{name}"] = st["step"].reshape(1).clone()
    with atomic_path(model_dir / RESUME_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(step)})


def _clear_resume(model_dir: Path) -> None:
    (model_dir / RESUME_FILE).unlink(missing_ok=True)


def _resume(model, opt, model_dir: Path, log_rows: list[tuple]) -> int:
    """Load the last checkpoint's weights and AdamW state; return the step to continue from
    (0 if there is nothing to resume)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = model_dir / RESUME_FILE
    log_path = model_dir / TRAIN_LOG_FILE
    if not path.is_file() or not log_path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as fh:
        step = int(fh.metadata()["step"])
    weights = model_dir / f"{STEP_DIR_PREFIX}{step}" / "model.safetensors"
    if not weights.is_file():
        return 0
    with open(log_path) as fh:
        rows = [(int(r["step"]), float(r["loss"]), float(r["lr"]), int(r["tokens"]))
                for r in csv.DictReader(fh)]
    if len(rows) < step:
        return 0
    # from_pretrained maps stored names (embed_out) to this version's (lm_head); strict copy.
    saved = type(model).from_pretrained(weights.parent, dtype=torch.float32)
    model.load_state_dict(saved.state_dict(), strict=True)
    moments = load_file(str(path))
    for name, p in model.named_parameters():
        if f"exp_avg.{name}" in moments:
            opt.state[p] = {"step": moments[f"step.{name}"].reshape(()).clone(),
                            "exp_avg": moments[f"exp_avg.{name}"].clone(),
                            "exp_avg_sq": moments[f"exp_avg_sq.{name}"].clone()}
    log_rows.extend(rows[:step])
    return step


# --- worker processes: die with the parent, leave Ctrl-C to it --------------------------------
def _parent_gone(parent_pid: int, direct: bool) -> bool:
    if direct:  # a child is re-parented the moment its parent dies, reaped or not
        return os.getppid() != parent_pid
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _watch_parent(parent_pid: int, interval: float) -> None:
    direct = os.getppid() == parent_pid
    while not _parent_gone(parent_pid, direct):
        time.sleep(interval)
    os._exit(1)  # nothing to flush: every file is written through atomic.py, a kill loses no result


def _die_with_parent_linux() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGKILL when the parent exits, at once (the watchdog
    # thread below is the portable fallback, and covers a fork server as the direct parent).
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_init(parent_pid: int, interval: float = WORKER_WATCHDOG_S) -> None:
    """Initializer for training worker processes (`ProcessPoolExecutor(initializer=...)`).

    A worker exits when its parent dies, even by SIGKILL (which no handler in the parent can
    see): the kernel's parent-death signal where there is one, and a watchdog thread polling
    the parent's pid every ``interval`` seconds everywhere. Ctrl-C is left to the parent, which
    reports what was kept and stops the workers, so no worker prints a traceback.

    Args:
        parent_pid: the process that owns the pool (``os.getpid()`` there).
        interval: seconds between watchdog polls.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() == parent_pid:
        _die_with_parent_linux()
    if _parent_gone(parent_pid, os.getppid() == parent_pid):  # died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, interval), name="pf-parent-watchdog",
                     daemon=True).start()


def describe_kept(suite_dir: Path, names: list[str]) -> str:
    """What an interrupted training run leaves, per model: finished, up to step N, or nothing."""
    parts = []
    for name in names:
        model_dir = Path(suite_dir) / name
        steps = sorted(int(p.name[len(STEP_DIR_PREFIX):]) for p in model_dir.glob(f"{STEP_DIR_PREFIX}*")
                       if p.is_dir() and p.name[len(STEP_DIR_PREFIX):].isascii()
                       and p.name[len(STEP_DIR_PREFIX):].isdigit())
        if (model_dir / MANIFEST_FILE).is_file():
            parts.append(f"{name} finished")
        elif steps:
            parts.append(f"{name} up to step {steps[-1]} ({len(steps)} checkpoints)")
        else:
            parts.append(f"{name} nothing yet")
    return ", ".join(parts)
