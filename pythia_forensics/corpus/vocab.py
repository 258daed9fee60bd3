"""Rules compiled for one tokenizer: every word as the token-id sequences of its forms.

Words are matched on token ids, in every form a tokenizer gives them: ``" Sue"`` and ``"Sue"``
tokenize differently (and ``"Sue"`` may take two tokens at a sequence start), so each word is
compiled to the token sequences of both forms. A word whose forms cannot be matched (it
tokenizes to nothing, to an unknown token, or -- with ``multi_token=False`` -- to several
tokens) is kept as an `UnmatchedCue`, reported by name by the counter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pythia_forensics.constants import CORPUS_TOKENIZER_FILE
from pythia_forensics.corpus.rules import FRAME_CANDIDATE, FRAME_CUE, ROLES, SupportRule, WordClass
from pythia_forensics.errors import TokenizationError

__all__ = ["SupportCueWarning", "TokenForm", "UnmatchedCue", "CompiledRule", "CompiledFrame", "Vocab",
           "load_tokenizer", "encode_form", "compile_rules"]


class SupportCueWarning(UserWarning):
    """A cue/target/competitor word cannot be matched by the tokenizer (named in the message)."""


# --- tokenizers -----------------------------------------------------------------------------
def load_tokenizer(spec: Any):
    """A `tokenizers.Tokenizer` from a tokenizer.json path, a folder holding one, an HF
    tokenizer object, or a model name/folder (through ``transformers.AutoTokenizer``).

    Raises:
        TokenizationError: the tokenizer cannot be loaded (says what to pass instead).
    """
    from tokenizers import Tokenizer

    if isinstance(spec, Tokenizer):
        return _untruncated(spec)
    backend = getattr(spec, "backend_tokenizer", None)
    if backend is not None:
        return _untruncated(backend)
    p = Path(str(spec))
    try:
        if p.is_file():
            return _untruncated(Tokenizer.from_file(str(p)))
        if p.is_dir() and (p / CORPUS_TOKENIZER_FILE).is_file():
            return _untruncated(Tokenizer.from_file(str(p / CORPUS_TOKENIZER_FILE)))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(spec))
    except Exception as exc:  # the library raises many types; the user needs one message
        raise TokenizationError(
            f"cannot load tokenizer {str(spec)!r} ({type(exc).__name__}: {exc}); "
            "give a tokenizer.json file, a model folder, or a cached model name", param="tokenizer"
        ) from None
    if getattr(tok, "backend_tokenizer", None) is None:
        raise TokenizationError(f"tokenizer {str(spec)!r} is not a fast tokenizer; give its tokenizer.json",
                                param="tokenizer")
    return _untruncated(tok.backend_tokenizer)


def _untruncated(tok):
    """The tokenizer without truncation or padding (a saved max_length would silently cut
    long documents); a copy when it had either, so the caller's object is left alone."""
    if tok.truncation is None and tok.padding is None:
        return tok
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tok.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _boundary_tables(tok) -> tuple[np.ndarray, np.ndarray]:
    """Per token id: does its text start / end with a non-alphanumeric character?

    Empty strings (special tokens such as <|endoftext|>) count as boundaries on both sides.
    """
    n = tok.get_vocab_size(with_added_tokens=True)
    texts = tok.decode_batch([[i] for i in range(n)], skip_special_tokens=True)
    starts = np.array([not (t[:1].isalnum()) for t in texts], dtype=bool)
    ends = np.array([not (t[-1:].isalnum()) for t in texts], dtype=bool)
    return starts, ends


# --- compiled rules -------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenForm:
    """One way a word appears in a token stream."""

    word: str
    text: str  # " Sue" or "Sue"
    ids: tuple[int, ...]

    @property
    def leading_space(self) -> bool:
        return self.text[:1].isspace()


@dataclass(frozen=True)
class UnmatchedCue:
    """A word (or whole class) the counter cannot match, with the reason."""

    rule: str
    role: str
    word_class: str
    word: str | None  # None: the whole class matches nothing
    reason: str

    def __str__(self) -> str:
        what = f"word {self.word!r} of" if self.word else "every word of"
        return f"{self.rule}: {what} {self.role[:-1]} class {self.word_class!r} {self.reason}"


@dataclass(frozen=True)
class CompiledRule:
    """A rule's forms as token-id sequences for one tokenizer (or built from ids directly)."""

    name: str
    direction: str
    cues: tuple[TokenForm, ...]
    targets: tuple[TokenForm, ...]
    competitors: tuple[TokenForm, ...]
    unmatched: tuple[UnmatchedCue, ...] = ()
    frames: tuple["CompiledFrame", ...] = ()

    def role(self, role: str) -> tuple[TokenForm, ...]:
        return getattr(self, role)

    @property
    def max_len(self) -> int:
        return max((len(f.ids) for r in ROLES for f in self.role(r)), default=1)


@dataclass(frozen=True)
class CompiledFrame:
    """A `Frame` with each word class compiled to its token forms (placeholders stay strings)."""

    name: str
    elements: tuple[Any, ...]  # "<cue>" | "<candidate>" | "..." | tuple[TokenForm, ...]

    @property
    def outside_tokens(self) -> int:
        """Most tokens the pattern reaches beyond its two anchors (sizes the block halo)."""
        lo, hi = sorted((self.elements.index(FRAME_CUE), self.elements.index(FRAME_CANDIDATE)))
        outside = self.elements[:lo] + self.elements[hi + 1:]
        return sum(max((len(f.ids) for f in e), default=0) for e in outside)


@dataclass(frozen=True)
class Vocab:
    """What the counter needs from a tokenizer: size and word-boundary tables."""

    size: int
    starts_nonword: np.ndarray = field(repr=False)
    ends_nonword: np.ndarray = field(repr=False)


def encode_form(tok, text: str) -> tuple[int, ...]:
    """The token ids of ``text`` alone (no special tokens)."""
    return tuple(tok.encode(text, add_special_tokens=False).ids)


def compile_rules(
    rules: Sequence[SupportRule], tokenizer: Any, *, multi_token: bool = True
) -> tuple[tuple[CompiledRule, ...], Vocab]:
    """Tokenize every word of every rule in both forms (``" w"`` and ``"w"``).

    A form is dropped (and the word reported if no form survives) when it tokenizes to
    nothing, contains the unknown token, does not decode back to its text, or -- with
    ``multi_token=False`` -- needs more than one token.

    Returns:
        ``(compiled_rules, vocab)``.
    """
    tok = load_tokenizer(tokenizer)
    starts, ends = _boundary_tables(tok)
    vocab = Vocab(len(starts), starts, ends)
    unk_token = getattr(tok.model, "unk_token", None)
    unk_id = tok.token_to_id(unk_token) if unk_token else None

    def class_forms(rule_name: str, role: str, wc: WordClass, unmatched: list[UnmatchedCue]) -> list[TokenForm]:
        found: list[TokenForm] = []
        for word in wc.words:
            reasons = []
            word_forms = []
            for text in (" " + word, word):
                ids = encode_form(tok, text)
                if not ids:
                    reasons.append(f"{text!r} tokenizes to nothing")
                elif unk_id is not None and unk_id in ids:
                    reasons.append(f"{text!r} contains the unknown token")
                elif tok.decode(list(ids), skip_special_tokens=False) != text:
                    reasons.append(f"{text!r} does not round-trip through the tokenizer")
                elif not multi_token and len(ids) > 1:
                    reasons.append(f"{text!r} needs {len(ids)} tokens (multi_token=False)")
                else:
                    word_forms.append(TokenForm(word, text, ids))
            if word_forms:
                found.extend(word_forms)
            else:
                unmatched.append(UnmatchedCue(rule_name, role, wc.name, word, "; ".join(reasons)))
        if not found:
            unmatched.append(UnmatchedCue(rule_name, role, wc.name, None, "tokenizes to nothing the counter can match"))
        return found

    compiled = []
    for rule in rules:
        forms: dict[str, list[TokenForm]] = {}
        unmatched: list[UnmatchedCue] = []
        for role in ROLES:
            forms[role] = []
            for wc in rule.role(role):
                forms[role].extend(class_forms(rule.name, role, wc, unmatched))
        frames = tuple(
            CompiledFrame(fr.name, tuple(
                e if isinstance(e, str) else tuple(dict.fromkeys(class_forms(rule.name, "frames", e, unmatched)))
                for e in fr.elements))
            for fr in rule.frames)
        compiled.append(
            CompiledRule(rule.name, rule.direction, *(tuple(dict.fromkeys(forms[r])) for r in ROLES), tuple(unmatched),
                         frames=frames)
        )
    return tuple(compiled), vocab


