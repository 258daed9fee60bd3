"""Reader and writer of the Megatron / GPT-NeoX indexed token format (``.bin`` + ``.idx``).

Pythia's training data ships in this format ("MMapIndexedDataset"), and the mini suite writes
its corpus in it, so one reader serves both. A dataset is a PREFIX with two files:

``PREFIX.bin``
    the raw tokens, every item back to back, in the dtype named by the index (little-endian).
``PREFIX.idx``
    ``b"MMIDIDX\\x00\\x00"`` (9 bytes), version ``<Q`` = 1, dtype code ``<B``, ``<Q`` number of
    items (sequences) L, ``<Q`` length D of the document index, then ``int32 sizes[L]``
    (tokens per item), ``int64 pointers[L]`` (byte offset of each item in ``.bin``) and
    ``int64 doc_idx[D]`` (item index where each document starts; it begins with 0 and ends with
    L, so D = documents + 1). The file is exactly ``34 + 12 L + 8 D`` bytes.

dtype codes (GPT-NeoX ``megatron/data/indexed_dataset.py``): 1 uint8, 2 int8, 3 int16,
4 int32, 5 int64, 8 uint16 (6 and 7 are float codes; no token stream uses them, and the two
code tables in circulation disagree about them, so they are refused). Pythia's files use 8
(uint16, vocabulary < 65,500).

Mapping Pythia training steps to token offsets
-----------------------------------------------
Pythia trained on 1024 sequences x 2048 tokens per step (``constants.PYTHIA_TOKENS_PER_STEP``).
The released ``document.bin/.idx`` of ``EleutherAI/pile-standard-pythia-preshuffled`` and
``EleutherAI/pile-deduped-pythia-preshuffled`` (after ``unshard_memmap.py`` joins the shards)
is already in training order: item ``i`` is the ``i``-th training sequence, and every item holds
2049 tokens (2048 inputs plus the next-token label of the last one), 146,432,000 items =
143,000 steps x 1024. Hence

* step ``s`` trains on items ``[1024 s, 1024 (s + 1))``;
* in the flat ``.bin`` stream those are tokens ``[1024 * 2049 * s, 1024 * 2049 * (s + 1))``,
  so the *stored* tokens per step are ``1024 * 2049`` (``constants.PYTHIA_STORED_TOKENS_PER_STEP``),
  not 1024 x 2048: pass that as ``tokens_per_step`` when counting over the stored stream;
* the checkpoint ``stepN`` has seen items ``[0, 1024 N)``.

``step_token_range`` does this arithmetic. A stream written by `IndexedDatasetWriter` and
read sequentially by a trainer (the mini suite) has no overlap: there ``tokens_per_step`` is
batch x seq_len.

Example::

    with IndexedDatasetWriter("corpus/tokens", dtype=np.uint16) as w:
        w.add_document([5, 6, 7])
    ds = IndexedDataset("corpus/tokens")
    ds[0], ds.tokens[:3], ds.doc_offsets      # array([5, 6, 7]) ... array([0, 3])
"""
from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from pythia_forensics.atomic import atomic_path, atomic_write
from pythia_forensics.errors import CorpusError

__all__ = [
    "INDEX_MAGIC",
    "DTYPE_CODES",
    "IndexedDataset",
    "IndexedDatasetWriter",
    "best_fitting_dtype",
    "step_token_range",
    "dataset_prefix",
    "index_path",
    "data_path",
]

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEADER_BYTES = len(INDEX_MAGIC) + 8 + 1 + 8 + 8  # = 34
# Token dtypes only (integer codes of the GPT-NeoX table).
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    8: np.dtype(np.uint16),
}
_CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}
# GPT-NeoX picks uint16 below this vocabulary size (it leaves head-room under 65,536).
_UINT16_MAX_VOCAB = 65500
# The writer copies its spooled index arrays in chunks of this many entries (bounded memory).
_COPY_CHUNK = 1 << 20


def best_fitting_dtype(vocab_size: int | None) -> np.dtype:
    """The dtype GPT-NeoX's preprocessing picks: uint16 below 65,500 tokens, else int32."""
    if vocab_size is not None and vocab_size < _UINT16_MAX_VOCAB:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def dataset_prefix(path: str | os.PathLike) -> Path:
    """``X``, ``X.bin`` or ``X.idx`` -> the prefix ``X``."""
    p = Path(path)
    if p.suffix in (".bin", ".idx"):
        return p.with_suffix("")
    return p


def index_path(prefix: str | os.PathLike) -> Path:
    """``PREFIX.idx`` (appended, so a prefix with dots such as ``pile.v1`` keeps them)."""
    p = dataset_prefix(prefix)
    return p.with_name(p.name + ".idx")


def data_path(prefix: str | os.PathLike) -> Path:
    """``PREFIX.bin``."""
    p = dataset_prefix(prefix)
    return p.with_name(p.name + ".bin")


def step_token_range(step_start: int, step_end: int, *, tokens_per_step: int) -> tuple[int, int]:
    """Flat token offsets ``[start, end)`` that training steps ``[step_start, step_end)`` read.

    Args:
        step_start: first step (inclusive).
        step_end: last step (exclusive).
        tokens_per_step: stored tokens per step (Pythia's pre-shuffled files:
            ``constants.PYTHIA_STORED_TOKENS_PER_STEP`` = 1024 x 2049; a sequential stream
            without overlap: batch x seq_len).

    Returns:
        ``(step_start * tokens_per_step, step_end * tokens_per_step)``.

    Raises:
        CorpusError: negative or reversed steps, or a non-positive ``tokens_per_step``.
    """
    if tokens_per_step <= 0:
        raise CorpusError(f"tokens_per_step must be positive, got {tokens_per_step}; pass batch x seq_len")
    if step_start < 0 or step_end < step_start:
        raise CorpusError(f"step range must satisfy 0 <= start <= end, got [{step_start}, {step_end})")
    return step_start * tokens_per_step, step_end * tokens_per_step


class IndexedDataset:
    """Memory-mapped reader of a ``PREFIX.bin`` / ``PREFIX.idx`` pair (nothing is loaded eagerly).

    Args:
        prefix: the dataset prefix (``.bin``/``.idx`` suffixes are accepted and stripped).

    Attributes:
        dtype: token dtype from the index.
        sizes: int32 tokens per item (memmap view).
        pointers: int64 byte offset of each item in ``.bin`` (memmap view).
        doc_idx: int64 item index of each document start, ending with ``len(self)``.
        tokens: the whole ``.bin`` as one flat memmap of ``dtype``.

    Raises:
        CorpusError: a missing file, a bad magic/version/dtype code, or sizes that do not match.
    """

    def __init__(self, prefix: str | os.PathLike) -> None:
        self.prefix = dataset_prefix(prefix)
        idx_path, bin_path = index_path(self.prefix), data_path(self.prefix)
        for p in (idx_path, bin_path):
            if not p.is_file():
                raise CorpusError(
                    f"indexed dataset file not found: {p}; pass the prefix X of an X.bin/X.idx pair"
                )
        with open(idx_path, "rb") as f:
            header = f.read(_HEADER_BYTES)
        if len(header) < _HEADER_BYTES or header[: len(INDEX_MAGIC)] != INDEX_MAGIC:
            raise CorpusError(
                f"{idx_path} is not a Megatron MMapIndexedDataset index (magic {header[:9]!r}, "
                f"expected {INDEX_MAGIC!r}); convert it with GPT-NeoX's preprocess_data.py"
            )
        version, code, n_items, n_doc_idx = struct.unpack("<QBQQ", header[len(INDEX_MAGIC):])
        if version != INDEX_VERSION:
            raise CorpusError(f"{idx_path}: index version {version} is not supported (expected 1)")
        if code not in DTYPE_CODES:
            raise CorpusError(
                f"{idx_path}: dtype code {code} is not an integer token dtype "
                f"(known: {sorted(DTYPE_CODES)}); this file does not hold token ids"
            )
        self.dtype = DTYPE_CODES[code]
        expected = _HEADER_BYTES + 12 * n_items + 8 * n_doc_idx
        actual = idx_path.stat().st_size
        if actual != expected:
            raise CorpusError(
                f"{idx_path}: {actual} bytes, but its header ({n_items} items, {n_doc_idx} doc "
                f"entries) implies {expected}; the file is truncated or corrupt, re-download it"
            )
        self._n_items = int(n_items)
        idx_map = np.memmap(idx_path, mode="r", dtype=np.uint8)
        self._idx_map = idx_map
        off = _HEADER_BYTES
        self.sizes = np.frombuffer(idx_map, dtype="<i4", count=n_items, offset=off)
        off += 4 * n_items
        self.pointers = np.frombuffer(idx_map, dtype="<i8", count=n_items, offset=off)
        off += 8 * n_items
        self.doc_idx = np.frombuffer(idx_map, dtype="<i8", count=n_doc_idx, offset=off)
        bin_bytes = bin_path.stat().st_size
        itemsize = self.dtype.itemsize
        if bin_bytes % itemsize:
            raise CorpusError(f"{bin_path}: {bin_bytes} bytes is not a whole number of {self.dtype} tokens")
        self.tokens = (
            np.memmap(bin_path, mode="r", dtype=self.dtype.newbyteorder("<"))
            if bin_bytes
            else np.zeros(0, dtype=self.dtype)
        )
        if n_items:
            last_end = int(self.pointers[-1]) + int(self.sizes[-1]) * itemsize
            if last_end > bin_bytes:
                raise CorpusError(
                    f"{bin_path}: the index points to byte {last_end} but the file has {bin_bytes}; "
                    "the .bin is truncated or belongs to another index"
                )

    # --- items -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n_items

    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.tokens[start : start + int(self.sizes[i])]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    @property
    def n_tokens(self) -> int:
        """Tokens in the flat ``.bin`` stream."""
        return int(self.tokens.shape[0])

    @property
    def n_documents(self) -> int:
        return max(int(self.doc_idx.shape[0]) - 1, 0)

    @property
    def is_contiguous(self) -> bool:
        """True when items lie back to back in index order (every writer we know does this)."""
        if not len(self):
            return True
        # chunked, so a 146M-item Pythia index never needs a full int64 copy in memory
        address = 0
        for a in range(0, len(self), _COPY_CHUNK):
            sizes = np.asarray(self.sizes[a : a + _COPY_CHUNK], dtype=np.int64) * self.dtype.itemsize
            expected = address + np.concatenate(([0], np.cumsum(sizes[:-1])))
            if not np.array_equal(expected, self.pointers[a : a + _COPY_CHUNK]):
                return False
            address += int(sizes.sum())
        return True

    @property
    def item_offsets(self) -> np.ndarray:
        """int64 token offset of each item start in ``tokens``, plus the end: length ``len + 1``.

        Raises:
            CorpusError: when items are not stored back to back (offsets would not be a partition).
        """
        if not self.is_contiguous:
            raise CorpusError(
                f"{self.prefix}.idx: items are not stored back to back in .bin; "
                "rewrite the dataset with IndexedDatasetWriter to get a flat stream"
            )
        return np.concatenate(([0], np.cumsum(self.sizes, dtype=np.int64)))

    @property
    def doc_offsets(self) -> np.ndarray:
        """int64 token offset of each document start in ``tokens``, plus the end (length docs + 1)."""
        items = self.item_offsets
        if self.doc_idx.shape[0] == 0:
            return np.array([0, items[-1]], dtype=np.int64)
        return items[np.asarray(self.doc_idx, dtype=np.int64)]

    def document(self, d: int) -> np.ndarray:
        """The tokens of document ``d`` (all its items, flat)."""
        offs = self.doc_offsets
        return self.tokens[offs[d] : offs[d + 1]]


class IndexedDatasetWriter:
    """Streaming writer of a ``PREFIX.bin`` / ``PREFIX.idx`` pair, bounded memory.

    Tokens go straight to ``PREFIX.bin``; item sizes and the document index are spooled to
    temporary files, so memory does not grow with the corpus. Both files are written under
    temporary names and renamed on a clean `close()`; an exception inside the ``with`` block
    leaves no half-written dataset behind.

    Args:
        prefix: output prefix; ``PREFIX.bin`` and ``PREFIX.idx`` are created (parents too).
        dtype: token dtype (default uint16, as Pythia; use `best_fitting_dtype`).

    Raises:
        CorpusError: a float/unknown dtype, or a token that does not fit ``dtype``.

    Example::

        with IndexedDatasetWriter(out / "tokens", dtype=np.uint16) as w:
            for ids in documents:
                w.add_document(ids)
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype | type | str = np.uint16) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF:
            raise CorpusError(
                f"dtype {self.dtype} cannot hold token ids in this format; use one of "
                f"{sorted(str(d) for d in _CODE_OF)}"
            )
        self.prefix = dataset_prefix(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._info = np.iinfo(self.dtype)
        tmp = dict(dir=self.prefix.parent, prefix=f".{self.prefix.name}.")
        # .bin is written in place under its temporary name for the writer's whole life:
        # close() lets atomic_path move it over PREFIX.bin, abort() lets it remove it
        self._stack = contextlib.ExitStack()
        self._bin_tmp = self._stack.enter_context(atomic_path(data_path(self.prefix)))
        self._sizes_tmp = Path(tempfile.mkstemp(suffix=".sizes.tmp", **tmp)[1])
        self._docs_tmp = Path(tempfile.mkstemp(suffix=".docs.tmp", **tmp)[1])
        self._bin = open(self._bin_tmp, "wb")
        self._sizes = open(self._sizes_tmp, "wb")
        self._docs = open(self._docs_tmp, "wb")
        self._docs.write(np.array([0], dtype="<i8").tobytes())
        self.n_items = 0
        self.n_documents = 0
        self.n_tokens = 0
        self._doc_entries = 1
        self._open_items = 0  # items added since the last end_document
        self._closed = False

    def add_item(self, tokens: Sequence[int] | np.ndarray) -> None:
        """Append one item (a sequence) without ending the document."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise CorpusError(f"an item must be a 1-D sequence of token ids, got shape {arr.shape}")
        if arr.size:
            if not np.issubdtype(arr.dtype, np.integer):
                raise CorpusError(f"token ids must be integers, got dtype {arr.dtype}")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < self._info.min or hi > self._info.max:
                raise CorpusError(
                    f"token id range [{lo}, {hi}] does not fit {self.dtype}; "
                    "pass dtype=best_fitting_dtype(vocab_size)"
                )
        self._bin.write(arr.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self._sizes.write(np.array([arr.size], dtype="<i4").tobytes())
        self.n_items += 1
        self.n_tokens += int(arr.size)
        self._open_items += 1

    def end_document(self) -> None:
        """Close the current document (GPT-NeoX: append the item count to doc_idx)."""
        self._docs.write(np.array([self.n_items], dtype="<i8").tobytes())
        self._doc_entries += 1
        self.n_documents += 1
        self._open_items = 0

    def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
        """Append one item and end the document there (one item per document)."""
        self.add_item(tokens)
        self.end_document()

    def add_documents(self, documents: Iterable[Sequence[int] | np.ndarray]) -> None:
        for doc in documents:
            self.add_document(doc)

    def close(self) -> None:
        """Write the index and move both files into place. Idempotent."""
        if self._closed:
            return
        if self._open_items:
            self.end_document()
        for f in (self._bin, self._sizes, self._docs):
            f.close()
        self._stack.close()  # PREFIX.bin into place first: an index never names a missing .bin
        atomic_write(index_path(self.prefix), self._write_index)
        for p in (self._sizes_tmp, self._docs_tmp):
            p.unlink(missing_ok=True)
        self._closed = True

    def _write_index(self, idx_tmp: Path) -> None:
        itemsize = self.dtype.itemsize
        with open(idx_tmp, "wb") as out:
            out.write(INDEX_MAGIC)
            out.write(struct.pack("<QBQQ", INDEX_VERSION, _CODE_OF[self.dtype], self.n_items, self._doc_entries))
            sizes = np.memmap(self._sizes_tmp, dtype="<i4", mode="r") if self.n_items else np.zeros(0, "<i4")
            for a in range(0, self.n_items, _COPY_CHUNK):
                out.write(np.ascontiguousarray(sizes[a : a + _COPY_CHUNK]).tobytes())
            address = 0
            for a in range(0, self.n_items, _COPY_CHUNK):
                chunk = np.asarray(sizes[a : a + _COPY_CHUNK], dtype=np.int64) * itemsize
                ptrs = address + np.concatenate(([0], np.cumsum(chunk[:-1])))
                address += int(chunk.sum())
                out.write(ptrs.astype("<i8").tobytes())
            del sizes
            with open(self._docs_tmp, "rb") as docs:
                while block := docs.read(8 * _COPY_CHUNK):
                    out.write(block)

    def abort(self) -> None:
        """Discard everything written (no dataset appears)."""
        if self._closed:
            return
        for f in (self._bin, self._sizes, self._docs):
            f.close()
        aborted = CorpusError(f"writing {self.prefix} was aborted")
        self._stack.__exit__(type(aborted), aborted, None)  # atomic_path removes the .bin temp file
        for p in (self._sizes_tmp, self._docs_tmp):
            p.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # a writer dropped without close() leaves no temp files
        try:
            self.abort()
        except Exception:
            pass
