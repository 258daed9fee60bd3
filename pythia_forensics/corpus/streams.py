"""Opening the input: where a corpus's tokens come from, as blocks the counters consume.

`locate_corpus` says what a corpus path is (a mini-suite corpus folder with ``tokens.bin/.idx``,
``tokenizer.json`` and ``corpus.json``; a Megatron ``.bin``/``.idx`` prefix; plain text, one
document per line; JSONL with a text field; Parquet with a text column; a ``datasets``
``save_to_disk`` folder). `open_stream` turns it into a `TokenSource`: an `IndexedSource` reads a
flat token stream (memmap, bounded memory) with a halo of context around each block; a
`TextSource` tokenizes documents in batches and packs whole documents into blocks.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from pythia_forensics.constants import CORPUS_META_FILE, CORPUS_TOKENIZER_FILE, CORPUS_TOKENS_FILE
from pythia_forensics.corpus.indexed import IndexedDataset, data_path, dataset_prefix, index_path
from pythia_forensics.errors import CorpusError, TokenizationError

__all__ = ["SUPPORT_BLOCK_TOKENS", "SUPPORT_TEXT_BATCH", "Block", "TokenSource", "IndexedSource", "TextSource",
           "CorpusInput", "locate_corpus", "open_stream"]

# Tokens per processing block (memory: ~20 bytes per token of scratch at this size).
SUPPORT_BLOCK_TOKENS = 1 << 22
SUPPORT_TEXT_BATCH = 1024  # documents tokenized per encode_batch call


@dataclass(frozen=True)
class Block:
    """A slice of the stream: the tokens of a block and the context it needs.

    Attributes:
        ids: token ids (the core plus its halo).
        seg_starts: local document starts (sorted, 0 included when a doc starts there).
        offset: global stream offset of ``ids[0]``.
        core: the local range whose cues this block owns.
        resume: where a resumed run continues: token offset (streams) or documents read (text).
        end: global stream offset just past the core (the tokens read so far).
    """

    ids: np.ndarray
    seg_starts: np.ndarray
    offset: int
    core: tuple[int, int]
    resume: int = 0
    end: int = 0


class TokenSource(Protocol):
    """What the counting loop reads: blocks from a saved position, and how to report progress.

    ``identity`` names the input and every option that changes the blocks (a changed input
    never resumes an old count); ``unit``/``total`` size the progress bar in units of
    ``Block.resume`` (tokens or documents).
    """

    identity: str
    unit: str
    total: int | None

    def blocks(self, *, position: int, offset: int, halo: int) -> Iterator[Block]:
        """Blocks from ``position`` (a `Block.resume` value), the stream at ``offset`` tokens."""
        ...

def _indexed_blocks(tokens: np.ndarray, doc_offsets: np.ndarray, *, halo: int, block_tokens: int,
                    end: int | None = None, begin: int = 0, offset_unit: int = 1,
                    eod_id: int | None = None) -> Iterator[Block]:
    """Blocks of a flat token stream with ``halo`` tokens of context on both sides; cores tile
    ``[begin, end)``. ``doc_offsets`` may be a memmap in units of ``offset_unit`` (an index's
    byte pointers): only the slice near each block is read. With ``eod_id``, a document also
    starts after every such token (Pythia's 2049-token items pack several documents)."""
    n = int(tokens.shape[0])
    end = n if end is None else min(end, n)
    for a in range(begin, end, block_tokens):
        b = min(a + block_tokens, end)
        lo, hi = max(a - halo, 0), min(b + halo, n)
        i0 = np.searchsorted(doc_offsets, lo * offset_unit, side="right") - 1
        i1 = np.searchsorted(doc_offsets, hi * offset_unit, side="left")
        starts = np.asarray(doc_offsets[max(i0, 0) : i1], dtype=np.int64) // offset_unit - lo
        starts = np.maximum(starts, 0)
        # the block's first token lies inside some document: mark position 0 as its start so
        # searchsorted never returns segment 0 for in-document tokens
        ids = np.asarray(tokens[lo:hi])
        extra = np.flatnonzero(ids[:-1] == eod_id) + 1 if eod_id is not None and ids.size else np.zeros(0, np.int64)
        starts = np.sort(np.concatenate(([0], starts, extra)))  # np.unique's hashing is ~10x slower here
        starts = starts[np.concatenate(([True], starts[1:] != starts[:-1]))]
        yield Block(ids, starts, lo, (a - lo, b - lo), resume=b, end=b)


def _text_documents(path: Path, *, text_field: str) -> tuple[Callable[[], Iterator[str]], int | None]:
    """A generator function over the documents of a text-like input, and their number when the
    format knows it (the progress bar's total)."""
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise CorpusError(
                f"{path} is neither a mini corpus (tokens.bin/.idx) nor a `datasets` save_to_disk folder "
                f"({type(exc).__name__}: {exc})"
            ) from None
        splits = [ds[k] for k in ds] if isinstance(ds, datasets.DatasetDict) else [ds]
        for split in splits:
            if text_field not in split.column_names:
                raise CorpusError(f"{path}: no column {text_field!r} (columns: {split.column_names})",
                                  param="text_field")

        def gen_ds() -> Iterator[str]:
            for split in splits:
                for batch in split.iter(batch_size=SUPPORT_TEXT_BATCH):
                    yield from batch[text_field]

        return gen_ds, sum(len(s) for s in splits)
    if suffixes.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise CorpusError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names})",
                              param="text_field")

        def gen_pq() -> Iterator[str]:
            for batch in pf.iter_batches(columns=[text_field], batch_size=SUPPORT_TEXT_BATCH):
                yield from batch.column(0).to_pylist()

        return gen_pq, pf.metadata.num_rows
    if suffixes.endswith((".jsonl", ".json", ".ndjson")):

        def gen_jsonl() -> Iterator[str]:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise CorpusError(f"{path}:{lineno}: not valid JSON ({exc.msg}); one JSON object per line") from None
                    if not isinstance(rec, dict) or text_field not in rec:
                        raise CorpusError(f"{path}:{lineno}: no field {text_field!r}", param="text_field")
                    yield rec[text_field]

        return gen_jsonl, None

    def gen_txt() -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if line.strip():
                    yield line

    return gen_txt, None


def _text_blocks(docs: Iterable[str], tok, *, block_tokens: int, offset: int = 0,
                 docs_done: int = 0) -> Iterator[Block]:
    """Tokenize documents in batches and pack whole documents into blocks (no halo needed:
    events never cross a document, and blocks end at document ends). ``offset``/``docs_done``:
    where a resumed run stands (the first ``docs_done`` documents are skipped untokenized)."""
    pending: list[np.ndarray] = []
    pending_n = 0
    n_docs = docs_done
    docs = itertools.islice(docs, docs_done, None)

    def flush() -> Block:
        nonlocal offset, pending, pending_n
        lengths = np.array([a.size for a in pending], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if lengths.size else np.zeros(1, np.int64)
        ids = np.concatenate(pending) if pending else np.zeros(0, np.int64)
        block = Block(ids, starts, offset, (0, ids.size), resume=n_docs, end=offset + ids.size)
        offset += ids.size
        pending, pending_n = [], 0
        return block

    batch: list[str] = []

    def encode(batch: list[str]) -> None:
        nonlocal pending_n, n_docs
        n_docs += len(batch)
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            arr = np.asarray(enc.ids, dtype=np.int64)
            pending.append(arr)
            pending_n += arr.size

    for doc in docs:
        if not isinstance(doc, str):
            raise CorpusError(f"document is not text: {doc!r:.80}; the text field must name a string column",
                              param="text_field")
        batch.append(doc)
        if len(batch) >= SUPPORT_TEXT_BATCH:
            encode(batch)
            batch = []
            if pending_n >= block_tokens:
                yield flush()
    if batch:
        encode(batch)
    if pending:
        yield flush()


def _path_identity(path: Path) -> list[Any]:
    """Path, size and modification time: a changed input never resumes an old count."""
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    return [str(p.resolve())] + [[q.name, q.stat().st_size, q.stat().st_mtime_ns] for q in files]


def _read_corpus_meta(path: Path) -> dict[str, Any]:
    meta = path / CORPUS_META_FILE
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{meta}: not valid JSON ({exc.msg})") from None


def _open_indexed(prefix: Path) -> IndexedDataset:
    ds = IndexedDataset(prefix)
    if not ds.is_contiguous:
        raise CorpusError(f"{prefix}.idx: items are not stored back to back in .bin; rewrite the "
                          "dataset with IndexedDatasetWriter to get a flat stream")
    return ds




@dataclass(frozen=True)
class IndexedSource:
    """A flat token stream (memmap welcome): tokens ``[0, end)`` in blocks with a halo.

    Attributes:
        tokens: flat token ids.
        doc_offsets: sorted document starts in units of ``offset_unit`` (an index's byte
            pointers work with ``offset_unit`` = the token size; a trailing end offset is fine).
        block_tokens: core tokens per block.
        end: the stream is read up to here (the token limit, capped at the stream's length).
        offset_unit: see ``doc_offsets``.
        eod_id: a token that ends a document inside an item (events never cross it).
        identity: the input and options, for the state key.
    """

    tokens: np.ndarray
    doc_offsets: np.ndarray
    block_tokens: int
    end: int
    offset_unit: int = 1
    eod_id: int | None = None
    identity: str = ""
    unit: str = "tok"

    @property
    def total(self) -> int:
        return self.end

    def blocks(self, *, position: int, offset: int, halo: int) -> Iterator[Block]:
        return _indexed_blocks(self.tokens, self.doc_offsets, halo=halo, block_tokens=self.block_tokens,
                               end=self.end, begin=position, offset_unit=self.offset_unit, eod_id=self.eod_id)


@dataclass(frozen=True)
class TextSource:
    """Documents tokenized here, packed whole into blocks (no halo: events never cross a
    document, and blocks end at document ends)."""

    documents: Callable[[], Iterator[str]]
    tokenizer: Any  # a loaded `tokenizers.Tokenizer`
    block_tokens: int
    total: int | None  # documents, when the format knows
    identity: str = ""
    unit: str = "doc"

    def blocks(self, *, position: int, offset: int, halo: int) -> Iterator[Block]:
        return _text_blocks(self.documents(), self.tokenizer, block_tokens=self.block_tokens, offset=offset,
                            docs_done=position)


@dataclass(frozen=True)
class CorpusInput:
    """A located corpus: which kind it is, the tokenizer it needs, and its corpus.json.

    Attributes:
        path: the corpus as given.
        indexed_prefix: a ``.bin``/``.idx`` stream's prefix; None for a text-like input.
        tokenizer: the tokenizer spec (the mini corpus's tokenizer.json when none was given).
        meta: the mini corpus's ``corpus.json`` (``tokens_per_step``, ``window_steps``,
            ``train_tokens``); empty for other inputs.
    """

    path: Path
    indexed_prefix: Path | None
    tokenizer: Any
    meta: dict[str, Any]


def locate_corpus(corpus: str | os.PathLike, tokenizer: Any = None) -> CorpusInput:
    """Which kind of input ``corpus`` is, and which tokenizer reads it.

    Raises:
        CorpusError: no such file or folder; an unreadable corpus.json.
        TokenizationError: no tokenizer given and none ships with the corpus.
    """
    path = Path(corpus)
    indexed_prefix = None
    meta: dict[str, Any] = {}
    if path.is_dir() and path.joinpath(CORPUS_TOKENS_FILE + ".idx").is_file():
        indexed_prefix = path / CORPUS_TOKENS_FILE
        meta = _read_corpus_meta(path)
        if tokenizer is None and (path / CORPUS_TOKENIZER_FILE).is_file():
            tokenizer = path / CORPUS_TOKENIZER_FILE
    elif path.suffix in (".bin", ".idx") or (not path.exists() and index_path(path).is_file()):
        indexed_prefix = dataset_prefix(path)
    elif not path.exists():
        # no param="corpus": cli._flag_of cannot spell a positional argument yet (reported)
        raise CorpusError(f"corpus not found: {path}; give a text/JSONL/Parquet file, a .bin/.idx prefix or a folder")
    if tokenizer is None:
        raise TokenizationError(f"a tokenizer is needed to find the rule words in {path}; give a tokenizer.json, "
                                "a model folder, or a model name", param="tokenizer")
    return CorpusInput(path, indexed_prefix, tokenizer, meta)


def open_stream(inp: CorpusInput, *, tokenizer: Any, text_field: str = "text", block_tokens: int = SUPPORT_BLOCK_TOKENS,
                token_limit: int | None = None, eod_id: int | None = None) -> TokenSource:
    """The blocks of a located corpus.

    Args:
        inp: from `locate_corpus`.
        tokenizer: a loaded tokenizer (`vocab.load_tokenizer`); text-like inputs only.
        text_field: the text field/column of JSONL, Parquet and `datasets` inputs.
        block_tokens: tokens per block (bounds memory).
        token_limit: read only the first this many stream tokens.
        eod_id: in a ``.bin``/``.idx`` stream, a token id that ends a document inside an item.

    Returns:
        An `IndexedSource` (documents = idx items; their byte pointers are read lazily near
        each block) or a `TextSource`.

    Raises:
        CorpusError: unreadable input, a missing text field, a non-contiguous ``.idx``.
    """
    if inp.indexed_prefix is not None:
        ds = _open_indexed(inp.indexed_prefix)
        end = ds.n_tokens if token_limit is None else min(ds.n_tokens, token_limit)
        identity = json.dumps([_path_identity(data_path(inp.indexed_prefix)), ds.n_tokens, end, block_tokens, eod_id])
        return IndexedSource(ds.tokens, ds.pointers, block_tokens, end, offset_unit=ds.dtype.itemsize,
                             eod_id=eod_id, identity=identity)
    documents, total = _text_documents(inp.path, text_field=text_field)
    identity = json.dumps([_path_identity(inp.path), text_field, token_limit, block_tokens])
    return TextSource(documents, tokenizer, block_tokens, total, identity=identity)
