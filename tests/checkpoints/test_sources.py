"""Checkpoint sources against the loopback hub (tests/hubserver.py) and local folders.

Every expected hash and size here is computed independently from the files the test wrote
(hashlib over the bytes), never taken from the code under test.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from hub_fixtures import TINY_MODEL, TINY_REPO, build_local_suite, publish_to_hub
from hubserver import HubServer
from pythia_forensics.errors import PFError, RevisionNotFoundError, SourceError
from pythia_forensics.checkpoints.sources import HubSource, LocalSource, open_source, select_files

WEIGHTS = "model.safetensors"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def local_model(tmp_path_factory, tiny_tokenizer):
    """A 4-revision local suite model (distinct weights per step)."""
    return build_local_suite(tmp_path_factory.mktemp("suite"), tiny_tokenizer, steps=(0, 1, 2, 4))


@pytest.fixture()
def hub(local_model):
    with HubServer() as server:
        server.commits = publish_to_hub(server, local_model)
        yield server


@pytest.fixture()
def cache(tmp_path):
    return tmp_path / "hf-cache"


def _source(hub, cache, **kw) -> HubSource:
    kw.setdefault("backoff_base_s", 0.01)
    return HubSource(TINY_REPO, cache_dir=cache, endpoint=hub.endpoint, token=False, **kw)


# --- listing ---------------------------------------------------------------------------------
def test_listing_has_sizes_and_lfs_sha256_without_downloading(hub, cache, local_model):
    src = _source(hub, cache)
    assert src.revisions() == ("step0", "step1", "step2", "step4", "main")
    for rev in src.revisions():
        listing = src.listing(rev)
        folder = local_model / ("step4" if rev == "main" else rev)
        assert listing.commit == hub.commits[rev]
        expected = {p.name: p.stat().st_size for p in folder.iterdir()}
        assert {f.name: f.size for f in listing.files} == expected
        weight = listing.file(WEIGHTS)
        assert weight.lfs and weight.sha256 == _sha(folder / WEIGHTS)
        record = src.record(rev)
        assert record.weight_files[0].sha256 == _sha(folder / WEIGHTS) and record.path is None
    # a census of every revision reads metadata only: no resolve/download request at all
    assert hub.requests(kind="resolve") == [] and hub.requests(kind="cdn") == []
    assert hub.bytes_sent(file="*.safetensors") == 0
    assert not cache.exists()


def test_listing_follows_tree_pagination(local_model, cache):
    with HubServer(tree_page_size=2) as server:
        publish_to_hub(server, local_model)
        listing = _source(server, cache).listing("step1")
        assert len(listing.files) == len(list((local_model / "step1").iterdir()))
        assert len(server.requests(kind="tree")) >= 3  # several pages were followed


def test_select_files_prefers_safetensors():
    names = ["config.json", "pytorch_model.bin", "model.safetensors", "tokenizer.json", "README.md",
             "training_args.bin"]
    assert select_files(names) == ("safetensors", ("config.json", "tokenizer.json"), ("model.safetensors",))
    sharded = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
               "pytorch_model.bin.index.json"]
    fmt, support, weights = select_files(sharded)
    assert fmt == "bin" and support == ("config.json", "pytorch_model.bin.index.json") and len(weights) == 2
    assert select_files(["config.json"])[0] is None


# --- download --------------------------------------------------------------------------------
def test_fetch_downloads_config_tokenizer_and_weights_only(hub, cache, local_model, tiny_tokenizer):
    # A branch that also carries a .bin copy, an optimizer state and a README: only the
    # safetensors weights and the config/tokenizer files may be downloaded.
    folder = Path(shutil.copytree(local_model / "step2", cache.parent / "extra"))
    (folder / "pytorch_model.bin").write_bytes(os.urandom(50_000))
    (folder / "optimizer.pt").write_bytes(os.urandom(40_000))
    (folder / "README.md").write_text("card")
    commit = hub.add_branch(TINY_REPO, "step8", folder)
    src = _source(hub, cache)
    size = src.size("step8")
    wanted = [p for p in folder.iterdir() if p.name not in ("pytorch_model.bin", "optimizer.pt", "README.md")]
    assert size.total_bytes == sum(p.stat().st_size for p in wanted) and size.download_bytes == size.total_bytes
    record = src.fetch("step8")
    assert record.commit == commit and record.source == "hub" and record.step == 8
    assert record.weight_files[0].sha256 == _sha(folder / WEIGHTS)
    assert sorted(p.name for p in record.path.iterdir()) == sorted(p.name for p in wanted)
    assert hub.bytes_sent(file="pytorch_model.bin") == hub.bytes_sent(file="optimizer.pt") == 0
    assert hub.bytes_sent(file="README.md") == 0
    assert hub.bytes_sent(file=WEIGHTS) == (folder / WEIGHTS).stat().st_size
    for p in wanted:  # byte-identical to what was published
        assert (record.path / p.name).read_bytes() == p.read_bytes()
    assert record.path == cache.resolve() / "models--EleutherAI--pythia-tiny" / "snapshots" / commit
    assert (cache / "models--EleutherAI--pythia-tiny" / "refs" / "step8").read_text() == commit
    # the snapshot is a loadable model
    from transformers import GPTNeoXForCausalLM

    GPTNeoXForCausalLM.from_pretrained(record.path)
    # the other format on demand (health's deep check), into the same snapshot
    assert src.fetch_files("step8", ["pytorch_model.bin"]) == record.path
    assert (record.path / "pytorch_model.bin").read_bytes() == (folder / "pytorch_model.bin").read_bytes()
    with pytest.raises(SourceError, match="no file 'flax_model.msgpack'"):
        src.fetch_files("step8", ["flax_model.msgpack"])


def test_resume_after_dropped_connection(hub, cache, local_model, monkeypatch):
    # huggingface_hub only resumes from bytes it has written: shrink its 10 MB chunk so a
    # drop inside our small file leaves written bytes to resume from.
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    size = (local_model / "step1" / WEIGHTS).stat().st_size
    hub.add_fault("drop", on="cdn", path=WEIGHTS, after_bytes=size // 2)
    record = _source(hub, cache).fetch("step1")
    gets = hub.requests(kind="cdn", method="GET")
    assert len(gets) == 2
    assert gets[0].bytes_sent == size // 2 and gets[0].range is None
    assert gets[1].status == 206 and gets[1].range.startswith("bytes=") and gets[1].range != "bytes=0-"
    assert sum(g.bytes_sent for g in gets) < 1.5 * size  # resumed, not restarted
    assert _sha(record.path / WEIGHTS) == _sha(local_model / "step1" / WEIGHTS)


@pytest.fixture()
def hf_waits(monkeypatch):
    """huggingface_hub's own retry waits (its `http_backoff`: 1 s, 2 s, ...; Retry-After + 1 s)
    recorded instead of slept. Its retries still happen, in order, against the loopback hub;
    only the clock is skipped (our `HubSource` backoff is `backoff_base_s`, set in `_source`)."""
    import time as real_time

    from huggingface_hub.utils import _http

    waits: list[float] = []

    class _Clock:
        def __getattr__(self, name):
            return getattr(real_time, name)

        @staticmethod
        def sleep(seconds):
            waits.append(seconds)

    monkeypatch.setattr(_http, "time", _Clock())
    return waits


# who retries: our `retrying` (refs, the resolve HEAD, cdn 5xx) or huggingface_hub's own backoff (tree pages,
# a 429 on the CDN); either way two faults, then the right bytes
@pytest.mark.parametrize("on,status,hf_retries", [("refs", 503, False), ("refs", 429, False), ("tree", 500, True),
                                                  ("resolve", 502, False), ("cdn", 503, False), ("cdn", 429, True)])
def test_retries_transient_errors(hub, cache, local_model, hf_waits, on, status, hf_retries):
    hub.add_fault("status", on=on, status=status, times=2)
    record = _source(hub, cache).fetch("step2")
    failed = [e for e in hub.log if e.status == status]
    assert len(failed) == 2 and all(e.kind == on for e in failed)
    assert _sha(record.path / WEIGHTS) == _sha(local_model / "step2" / WEIGHTS)
    # huggingface_hub waited twice (once per fault) exactly when it is the one retrying
    assert (len(hf_waits) == 2) == hf_retries, hf_waits


def test_persistent_errors_give_a_source_error(hub, cache):
    hub.add_fault("status", on="refs", status=503, times=None)
    with pytest.raises(SourceError, match="HTTP 503") as info:
        _source(hub, cache, max_retries=2).listing("step0")
    assert "\n" not in str(info.value)
    assert len(hub.requests(kind="refs")) == 3  # first try + 2 retries


def test_missing_branch_is_named(hub, cache):
    src = _source(hub, cache)
    with pytest.raises(RevisionNotFoundError) as info:
        src.fetch("step3")
    msg = str(info.value)
    assert "pythia-tiny" in msg and "'step3'" in msg and "nearest existing step2" in msg
    assert isinstance(info.value, PFError) and isinstance(info.value, LookupError)
    assert hub.requests(kind="resolve") == []
    # a branch deleted after the refs were listed: the hub's own 404 maps to the same error
    src.branches()
    hub.delete_branch(TINY_REPO, "step4")
    with pytest.raises(RevisionNotFoundError, match="step4"):
        _source(hub, cache).listing("step4")


def test_unreachable_hub(cache):
    src = HubSource(TINY_REPO, cache_dir=cache, endpoint="http://127.0.0.1:9", token=False,
                    backoff_base_s=0.01, max_retries=1)
    with pytest.raises(SourceError, match="HF_ENDPOINT.*HF_HUB_OFFLINE"):
        src.revisions()


@pytest.mark.parametrize("kind", ["corrupt", "truncate"])
def test_bad_download_is_refetched_once(hub, cache, local_model, kind):
    hub.add_fault(kind, on="cdn", path=WEIGHTS, times=1)
    record = _source(hub, cache).fetch("step0")
    assert len(hub.requests(kind="cdn", method="GET")) == 2
    assert _sha(record.path / WEIGHTS) == _sha(local_model / "step0" / WEIGHTS)


def test_persistently_corrupt_file_is_an_error(hub, cache):
    hub.add_fault("corrupt", on="cdn", path=WEIGHTS, times=None)
    with pytest.raises(SourceError, match="corrupt after a re-fetch: sha256"):
        _source(hub, cache).fetch("step0")
    assert len(hub.requests(kind="cdn", method="GET")) == 2  # one fetch, one re-fetch, then stop


# --- the shared cache ------------------------------------------------------------------------
def test_shared_cache_dedups_and_eviction_keeps_shared_blobs(hub, cache, local_model):
    src = _source(hub, cache)
    weight_size = (local_model / "step4" / WEIGHTS).stat().st_size
    src.fetch("step4")
    # `main` holds the same bytes as step4: sized as fully cached, fetched without weight bytes
    assert src.size("main").download_bytes == 0
    sent = hub.bytes_sent(file=WEIGHTS)
    main = src.fetch("main")
    assert hub.bytes_sent(file=WEIGHTS) == sent
    src.fetch("step2")
    blobs = cache / "models--EleutherAI--pythia-tiny" / "blobs"
    shared_blob = blobs / _sha(local_model / "step4" / WEIGHTS)
    assert shared_blob.is_file()
    # evicting main frees nothing of step4's blob, and step4 still loads
    src.evict("main")
    assert not main.path.exists() and shared_blob.is_file()
    assert src.size("step4").download_bytes == 0
    assert set(src.cached_commits()) == {hub.commits["step4"], hub.commits["step2"]}
    # evicting step2 frees its own weights
    freed = src.evict("step2")
    assert freed >= (local_model / "step2" / WEIGHTS).stat().st_size
    assert not (blobs / _sha(local_model / "step2" / WEIGHTS)).exists()
    assert set(src.cached_commits()) == {hub.commits["step4"]}
    assert src.evict("step2") == 0
    assert weight_size > 0


def test_reuploaded_branch_changes_commit_and_content_key(hub, cache, local_model):
    src = _source(hub, cache)
    before = src.record("step1")
    new_commit = hub.add_branch(TINY_REPO, "step1", local_model / "step2")
    assert src.record("step1").commit == before.commit  # refs are cached per source ...
    src.branches(refresh=True)                           # ... until refreshed
    after = src.record("step1")
    assert after.commit == new_commit != before.commit
    assert after.content_key != before.content_key
    assert after.weights_sha256 == src.record("step2").weights_sha256


# --- local folders ---------------------------------------------------------------------------
def test_local_and_hub_records_agree(hub, cache, local_model, tmp_path):
    local = LocalSource(local_model, hash_cache=tmp_path / "hashes.json")
    remote = _source(hub, cache)
    assert local.revisions() == ("step0", "step1", "step2", "step4")
    for rev in local.revisions():
        a, b = local.fetch(rev), remote.fetch(rev)
        for field in ("model", "revision", "step", "weight_files"):
            assert getattr(a, field) == getattr(b, field), (rev, field)
        assert a.weights_sha256 == b.weights_sha256
        assert a.weight_files[0].sha256 == _sha(local_model / rev / WEIGHTS)
        assert (a.source, a.commit, a.path) == ("local", None, local_model / rev)
        assert a.content_key == a.weights_sha256 and b.content_key == b.commit
        assert {f.name: f.sha256 for f in local.listing(rev).files if f.lfs} == \
               {f.name: f.sha256 for f in remote.listing(rev).files if f.lfs}
    assert local.evict("step0") == 0 and (local_model / "step0").is_dir()
    with pytest.raises(RevisionNotFoundError, match="step3"):
        local.fetch("step3")
    assert isinstance(open_source(local_model), LocalSource)


def test_local_hashes_are_cached_by_size_and_mtime(local_model, tmp_path):
    model_dir = Path(shutil.copytree(local_model, tmp_path / TINY_MODEL))
    cache_file = tmp_path / "hashes.json"
    first = LocalSource(model_dir, hash_cache=cache_file)
    first.listing("step0")
    assert first._hashes.hashed == len(list((model_dir / "step0").iterdir()))
    again = LocalSource(model_dir, hash_cache=cache_file)  # a new process: reads the JSON
    again.listing("step0")
    assert again._hashes.hashed == 0
    weights = model_dir / "step0" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    edited = LocalSource(model_dir, hash_cache=cache_file)
    record = edited.record("step0")
    assert edited._hashes.hashed == 1 and record.weight_files[0].sha256 == _sha(weights)


def test_offline_mode_serves_the_cache(hub, cache, local_model, monkeypatch):
    online = _source(hub, cache).fetch("step1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    dead = HubSource(TINY_REPO, cache_dir=cache, endpoint="http://127.0.0.1:9", token=False, backoff_base_s=0.01)
    assert dead.revisions() == ("step1",)
    offline = dead.fetch("step1")
    assert (offline.commit, offline.weight_files, offline.path) == (online.commit, online.weight_files, online.path)
    with pytest.raises(RevisionNotFoundError, match="step2"):
        dead.fetch("step2")
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE is set"):
        HubSource(TINY_REPO, cache_dir=cache.parent / "empty", endpoint="http://127.0.0.1:9", token=False).revisions()


def test_the_catalog_beside_the_cache_remembers_the_grid_after_eviction(hub, cache, local_model, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from pythia_forensics.checkpoints.fetch import stage

    stage([TINY_REPO], steps="0,2", cache_dir=cache, hub_options={"endpoint": hub.endpoint, "token": False},
          progress=False)
    online = _source(hub, cache)
    branches = online.branches()
    assert online.catalog() == (branches, {b: branches[b] for b in ("step0", "step2")})
    for revision in ("step0", "step2"):
        online.evict(revision)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    dead = HubSource(TINY_REPO, cache_dir=cache, endpoint="http://127.0.0.1:9", token=False, backoff_base_s=0.01)
    assert dead.cached_refs() == {}
    assert dead.known_branches() == branches          # the grid, although nothing is cached
    with pytest.raises(SourceError, match="2 were staged and have been evicted since"):
        dead.revisions()
    # a damaged or foreign catalog is no knowledge, never an error
    dead.catalog_path.write_text('{"repo": "someone/else", "branches": {"step9": "' + "a" * 40 + '"}}')
    assert dead.catalog() == ({}, {}) and dead.known_branches() == {}
    dead.catalog_path.write_text("{not json")
    assert dead.known_branches() == {}


def test_loopback_hub_speaks_the_client_protocol_and_size_agrees_with_dry_run(hub, cache, local_model):
    """Other huggingface_hub entry points work against the server, and `size()` (from the
    listing alone) agrees with the library's own `snapshot_download(dry_run=True)`."""
    from huggingface_hub import HfApi, scan_cache_dir, snapshot_download

    src = _source(hub, cache)
    api = HfApi(endpoint=hub.endpoint, token=False)
    info = api.model_info(TINY_REPO, revision="step2", files_metadata=True)
    assert info.sha == hub.commits["step2"]
    lfs = {s.rfilename: s.lfs.sha256 for s in info.siblings if s.lfs}
    assert lfs == {WEIGHTS: _sha(local_model / "step2" / WEIGHTS)}
    assert api.file_exists(TINY_REPO, WEIGHTS, revision="step2")
    assert not api.file_exists(TINY_REPO, "nope.bin", revision="step2")

    def dry(rev):
        names = src.listing(rev).fetch_names
        files = snapshot_download(TINY_REPO, revision=rev, cache_dir=cache, endpoint=hub.endpoint, token=False,
                                  allow_patterns=list(names), dry_run=True)
        assert sorted(f.filename for f in files) == sorted(names)
        return sum(f.file_size for f in files), sum(f.file_size for f in files if f.is_cached)

    assert dry("step4") == (src.size("step4").total_bytes, 0)
    src.fetch("step4")
    for rev in ("step4", "main", "step1"):  # main shares step4's blobs; step1 shares the tokenizer
        size = src.size(rev)
        assert dry(rev) == (size.total_bytes, size.cached_bytes), rev
    assert 0 < src.size("step1").cached_bytes < src.size("step1").total_bytes
    # the dry runs left refs without snapshots, which makes scan_cache_dir skip the repo as
    # corrupted; the source repairs that, so eviction still frees space
    assert any("missing commit hashes" in str(w) for w in scan_cache_dir(cache).warnings)
    assert set(src.cached_commits()) == {hub.commits["step4"]}
    assert not scan_cache_dir(cache).warnings
    assert src.evict("step4") > 0 and src.cached_commits() == {}


def test_bin_only_sharded_branch_is_fetched(hub, cache):
    shards = {f"pytorch_model-0000{i}-of-00002.bin": os.urandom(30_000 + i) for i in (1, 2)}
    index = b'{"weight_map": {}}'
    files = {"config.json": b'{"model_type": "gpt_neox"}', "pytorch_model.bin.index.json": index, **shards}
    hub.add_branch(TINY_REPO, "step16", files)
    src = _source(hub, cache)
    listing = src.listing("step16")
    assert listing.weight_format == "bin"
    record = src.fetch("step16")
    assert {(w.name, w.size, w.sha256) for w in record.weight_files} == {
        (name, len(data), hashlib.sha256(data).hexdigest()) for name, data in shards.items()}
    assert sorted(p.name for p in record.path.iterdir()) == sorted(files)
    assert (record.path / "pytorch_model.bin.index.json").read_bytes() == index
