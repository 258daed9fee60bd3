"""The Megatron/GPT-NeoX .bin/.idx reader and writer, checked against a byte-level parse
written here from the format description (not through the module under test)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from pythia_forensics.constants import PYTHIA_STORED_TOKENS_PER_STEP
from pythia_forensics.errors import CorpusError, PFError
from pythia_forensics.corpus.indexed import (
    IndexedDataset,
    IndexedDatasetWriter,
    best_fitting_dtype,
    dataset_prefix,
    step_token_range,
)


def parse_idx(path):
    """Independent parse of an MMIDIDX index: header, sizes, pointers, doc_idx."""
    raw = open(path, "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, = struct.unpack("<Q", raw[9:17])
    code, = struct.unpack("<B", raw[17:18])
    n, d = struct.unpack("<QQ", raw[18:34])
    off = 34
    sizes = struct.unpack(f"<{n}i", raw[off : off + 4 * n]); off += 4 * n
    ptrs = struct.unpack(f"<{n}q", raw[off : off + 8 * n]); off += 8 * n
    docs = struct.unpack(f"<{d}q", raw[off : off + 8 * d]); off += 8 * d
    assert off == len(raw)
    return version, code, list(sizes), list(ptrs), list(docs)


def test_roundtrip_bytes_match_format(tmp_path):
    docs = [[5, 6, 7], [], [1000, 2, 65000, 3], [9]]
    with IndexedDatasetWriter(tmp_path / "c" / "tokens", dtype=np.uint16) as w:
        for doc in docs:
            w.add_document(doc)
    version, code, sizes, ptrs, doc_idx = parse_idx(tmp_path / "c" / "tokens.idx")
    assert (version, code) == (1, 8)  # uint16 is code 8 in GPT-NeoX's table
    assert sizes == [3, 0, 4, 1]
    assert ptrs == [0, 6, 6, 14]  # byte offsets, 2 bytes per token
    assert doc_idx == [0, 1, 2, 3, 4]
    raw_bin = open(tmp_path / "c" / "tokens.bin", "rb").read()
    assert list(struct.unpack(f"<{len(raw_bin) // 2}H", raw_bin)) == [t for d in docs for t in d]

    ds = IndexedDataset(tmp_path / "c" / "tokens.idx")  # suffix accepted
    assert len(ds) == 4 and ds.n_documents == 4 and ds.n_tokens == 8
    assert [list(x) for x in ds] == docs
    assert list(ds[-1]) == [9]
    assert [list(x) for x in ds[1:3]] == docs[1:3]
    assert ds.tokens.dtype == np.uint16
    assert list(ds.doc_offsets) == [0, 3, 3, 7, 8]
    assert list(ds.document(2)) == docs[2]
    assert ds.is_contiguous
    with pytest.raises(IndexError):
        ds[4]
    # no temp files left behind
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["tokens.bin", "tokens.idx"]


def test_multi_item_documents_and_int32(tmp_path):
    w = IndexedDatasetWriter(tmp_path / "t", dtype=np.int32)
    w.add_item([1, 2]); w.add_item([3]); w.end_document()
    w.add_item([70000]); w.add_item([4, 5]); w.add_item([6])  # closed by close()
    w.close()
    version, code, sizes, ptrs, doc_idx = parse_idx(tmp_path / "t.idx")
    assert code == 4 and sizes == [2, 1, 1, 2, 1] and ptrs == [0, 8, 12, 16, 24]
    assert doc_idx == [0, 2, 5]
    ds = IndexedDataset(tmp_path / "t")
    assert ds.n_documents == 2
    assert list(ds.doc_offsets) == [0, 3, 7]
    assert list(ds.item_offsets) == [0, 2, 3, 4, 6, 7]
    assert list(ds.document(1)) == [70000, 4, 5, 6]


def test_large_stream_chunked_index(tmp_path, monkeypatch):
    # Force tiny copy chunks so the writer's chunked pointer arithmetic is exercised.
    import pythia_forensics.corpus.indexed as ix

    monkeypatch.setattr(ix, "_COPY_CHUNK", 3)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50000, size=rng.integers(0, 9)) for _ in range(20)]
    with IndexedDatasetWriter(tmp_path / "big") as w:
        w.add_documents(docs)
    _, _, sizes, ptrs, doc_idx = parse_idx(tmp_path / "big.idx")
    assert sizes == [len(d) for d in docs]
    assert ptrs == list(2 * np.concatenate(([0], np.cumsum(sizes[:-1]))))
    ds = IndexedDataset(tmp_path / "big")
    for got, want in zip(ds, docs):
        assert np.array_equal(got, want)


def test_writer_rejects_and_aborts(tmp_path):
    with pytest.raises(CorpusError, match="does not fit uint16"):
        with IndexedDatasetWriter(tmp_path / "x", dtype=np.uint16) as w:
            w.add_document([1, 70000])
    assert list(tmp_path.iterdir()) == []  # aborted: nothing left
    with pytest.raises(CorpusError, match="cannot hold token ids"):
        IndexedDatasetWriter(tmp_path / "y", dtype=np.float32)


def test_reader_errors_are_pf_errors(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        IndexedDataset(tmp_path / "missing")
    with IndexedDatasetWriter(tmp_path / "ok") as w:
        w.add_document([1, 2, 3])
    raw = (tmp_path / "ok.idx").read_bytes()
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 6)
    (tmp_path / "bad.idx").write_bytes(b"TNTIDX\x00\x00" + raw[8:])
    with pytest.raises(PFError, match="not a Megatron"):
        IndexedDataset(tmp_path / "bad")
    (tmp_path / "bad.idx").write_bytes(raw[:-4])
    with pytest.raises(CorpusError, match="truncated"):
        IndexedDataset(tmp_path / "bad")
    (tmp_path / "bad.idx").write_bytes(raw)
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 4)  # index says 6 bytes
    with pytest.raises(CorpusError, match="truncated"):
        IndexedDataset(tmp_path / "bad")
    (tmp_path / "bad.idx").write_bytes(raw[:17] + bytes([6]) + raw[18:])  # float code
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 6)
    with pytest.raises(CorpusError, match="dtype code 6"):
        IndexedDataset(tmp_path / "bad")


def test_dotted_prefix(tmp_path):
    with IndexedDatasetWriter(tmp_path / "pile.v1") as w:
        w.add_document([4, 5])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pile.v1.bin", "pile.v1.idx"]
    assert list(IndexedDataset(tmp_path / "pile.v1")[0]) == [4, 5]
    assert list(IndexedDataset(tmp_path / "pile.v1.idx")[0]) == [4, 5]


def test_empty_dataset(tmp_path):
    with IndexedDatasetWriter(tmp_path / "e"):
        pass
    ds = IndexedDataset(tmp_path / "e")
    assert len(ds) == 0 and ds.n_tokens == 0 and list(ds.doc_offsets) == [0]


def test_helpers():
    assert best_fitting_dtype(50277) == np.uint16
    assert best_fitting_dtype(100_000) == np.int32
    assert dataset_prefix("a/b.bin").as_posix() == "a/b"
    # Pythia: step 1000 starts at item 1024*1000, each item 2049 tokens.
    start, end = step_token_range(1000, 1001, tokens_per_step=PYTHIA_STORED_TOKENS_PER_STEP)
    assert (start, end) == (1024 * 1000 * 2049, 1024 * 1001 * 2049)
    with pytest.raises(CorpusError):
        step_token_range(5, 4, tokens_per_step=10)
