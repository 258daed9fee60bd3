"""Every knob of the mini suite, as frozen dataclasses: corpus, model scales, training schedule.

Defaults are the demo's. Odd values carry a comment saying why; the tuning record behind them
is in docs/mini-suite.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

RULES = ("pronoun_gender", "reflexive_gender", "indefinite_article", "subject_verb_agreement")


@dataclass(frozen=True)
class RuleKnobs:
    """How one rule shows up in the corpus.

    Args:
        support: probability that, in the conflict frame, a cue-class word (a girl's name, a
            vowel noun, a plural subject) still gets the rule-following form. The other class
            always gets the prior's form there, so the frame's overall prior favours the
            competitor.
        conflict_share: share of ALL sentences that are this rule's conflict frame.
        share: share of all sentences that belong to this rule (conflict + rule frames).
        trigger_ratio: rate of the rule frame that reuses the conflict trigger word, relative
            to the conflict frame (0.25 -> ~20% of the trigger's uses follow the rule).
    """

    support: float
    conflict_share: float = 0.005  # 1% collapsed right after emergence; 0.5% leaves a ~250-step window
    share: float = 0.25
    trigger_ratio: float = 0.25  # trigger must also occur in rule sentences or nothing emerges


@dataclass(frozen=True)
class CorpusConfig:
    """The generated corpus. One sentence per document (so the support event window never
    reaches into a neighbouring sentence: events are exactly the ones constructed)."""

    seed: int = 1234
    rules: tuple[tuple[str, RuleKnobs], ...] = (
        ("pronoun_gender", RuleKnobs(support=0.1)),  # low support: learned, then lost
        ("reflexive_gender", RuleKnobs(support=0.9)),  # high support: survives
        ("indefinite_article", RuleKnobs(support=0.5)),
        ("subject_verb_agreement", RuleKnobs(support=0.7)),
    )
    window_steps: int = 50  # ground_truth.csv granularity (training steps per window)
    support_window: int = 16  # W of the support event definition (ARCHITECTURE.md)

    def knobs(self, rule: str) -> RuleKnobs:
        return dict(self.rules)[rule]

    def with_support(self, rule: str, support: float) -> "CorpusConfig":
        """A copy with one rule's support knob changed (the sweep's arms)."""
        rules = tuple((r, replace(k, support=support) if r == rule else k) for r, k in self.rules)
        return replace(self, rules=rules)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rules"] = {r: asdict(k) for r, k in self.rules}
        return d


@dataclass(frozen=True)
class ModelConfig:
    """One GPT-NeoX scale. Width-only scaling at fixed depth (the prototype's depth changes
    moved emergence timing more than collapse depth)."""

    name: str
    d_model: int
    layers: int = 2
    heads: int = 4
    lr: float = 1e-3  # 3e-4 (the prototype's) had not learned the rule by step 1200 here


@dataclass(frozen=True)
class TrainConfig:
    """Schedule shared by every scale (Pythia: same data order and steps for every size)."""

    steps: int = 800  # d64: emergence ~250, collapse ~550 (docs/mini-suite.md)
    batch_size: int = 64
    seq_len: int = 32
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to 10% of peak, as Pythia
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 1234
    # checkpoint grid: step0, log-spaced 1,2,4,... up to `log_until`, then every `every`
    log_until: int = 64
    every: int = 20  # mini-l's emergence window is ~50 steps wide (150-190): sample it 2-3 times
    threads: int = 1  # the CPU is shared; each scale trains on one thread

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def checkpoint_steps(self) -> list[int]:
        """Pythia-like grid: 0, 1, 2, 4, ..., then linear every `every` to `steps`."""
        steps = {0}
        s = 1
        while s <= min(self.log_until, self.steps):
            steps.add(s)
            s *= 2
        steps.update(range(self.every, self.steps + 1, self.every))
        steps.add(self.steps)
        return sorted(steps)


@dataclass(frozen=True)
class SuiteConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    models: tuple[ModelConfig, ...] = (
        # Per-size peak learning rates (smaller model, larger lr, as Pythia's own schedule):
        # with one lr for all, mini-s had not collapsed by 1600 steps and mini-l's emergence
        # lasted one 50-step checkpoint; with these all three emerge ~200-275 and collapse ~400-450.
        # mini-xs and mini-ml (issue #32) make five sizes for the demo's scale figure (24x in
        # non-embedding parameters, 6k to 394k); their lrs follow the same trend as the grid's.
        ModelConfig("mini-xs", d_model=16, heads=2, lr=6e-3),
        ModelConfig("mini-s", d_model=32, lr=3e-3),
        ModelConfig("mini-m", d_model=64, lr=1e-3),
        ModelConfig("mini-ml", d_model=96, lr=7e-4),
        ModelConfig("mini-l", d_model=128, lr=5e-4),
    )
    tokenizer_vocab: int = 1024  # big enough that every lexicon word is one token


def demo_config() -> SuiteConfig:
    """The embedded default suite (`make demo`)."""
    return SuiteConfig()


def reduced_config() -> SuiteConfig:
    """A reduced suite that trains in seconds (tests). Conflict frames are made common so a
    short corpus still holds some of every rule's."""
    base = CorpusConfig()
    rules = tuple((r, replace(k, conflict_share=0.05)) for r, k in base.rules)
    return SuiteConfig(
        corpus=replace(base, rules=rules, window_steps=10),
        train=TrainConfig(steps=40, batch_size=8, seq_len=32, warmup_steps=5, every=20, log_until=4),
        models=(ModelConfig("mini-t", d_model=16, layers=1, heads=2, lr=3e-3),),
    )


# The scale grid (issue #32): five widths spanning 36x in non-embedding parameters (d16 ~6k to
# d96 ~221k), the pronoun_gender knob around the sweep's measured flip (mini-m: 0.7 lost, 0.9
# kept), three init seeds at the two knobs nearest it. Peak lr falls with width as in the demo
# (its d32 / d64 values kept, d16 / d24 / d96 on the same trend, not tuned for any outcome).
# Heads keep head_dim a multiple of 8 where possible so rotary_pct 0.25 gets an even dimension.
GRID_MODELS = (
    ModelConfig("grid-d16", d_model=16, heads=2, lr=6e-3),
    ModelConfig("grid-d24", d_model=24, heads=3, lr=4e-3),
    ModelConfig("grid-d32", d_model=32, heads=4, lr=3e-3),
    ModelConfig("grid-d64", d_model=64, heads=4, lr=1e-3),
    ModelConfig("grid-d96", d_model=96, heads=4, lr=7e-4),
)
GRID_RULE = "pronoun_gender"
GRID_SUPPORTS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9)
GRID_SEEDS = (1234, 1235, 1236)  # init seeds (data order is the corpus's, as PolyPythia's init-only seeds)
GRID_SEEDED_SUPPORTS = (0.7, 0.8)  # nearest the flip: every seed; the other knobs: the first seed


def grid_config() -> SuiteConfig:
    """The scale grid's suite: the demo corpus and schedule with checkpoints every 40 steps
    (half the demo's replay cost; the collapse windows measured are >= 150 steps wide)."""
    return SuiteConfig(train=replace(TrainConfig(), every=40), models=GRID_MODELS)
