"""Leases: holds and locks shared by many processes on one or several hosts, NFS/Lustre safe.

A lease is a file created atomically (`O_CREAT | O_EXCL`, which NFSv3+ and Lustre honour,
unlike `flock`, which on some mounts succeeds for everyone) whose mtime a heartbeat thread
of the owning process refreshes every `heartbeat_s()`. A lease whose mtime is older than
`timeout_s()` belongs to a dead worker (SIGKILL, lost node): anyone may break it, so a
killed worker's holds expire by themselves.

Three users:

* `LeaseLock` -- a mutex (the ledger lock);
* `Ledger` -- beside a hub cache: one hold file per (worker, revision) with the bytes it
  reserved; admission keeps the bytes of every live hold within one disk budget, and a
  revision is evicted only by the last worker holding it;
* `Claim` -- a work claim (replay: one revision scored once however many workers run).

Timeouts and the heartbeat period are `LEASE_TIMEOUT_S` / `LEASE_HEARTBEAT_S` (below),
overridable with `PF_LEASE_TIMEOUT_S` / `PF_LEASE_HEARTBEAT_S` (read at each use).
"""
from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pythia_forensics.constants import ENV_LEASE_HEARTBEAT, ENV_LEASE_TIMEOUT

__all__ = ["Lease", "LeaseLock", "Ledger", "HoldInfo", "Claim", "timeout_s", "heartbeat_s", "worker_id"]

# A lease whose mtime is older than the timeout belongs to a dead worker and is broken. Hosts
# sharing a cache need clocks within a small fraction of the timeout (NTP). The env vars
# above override both (tests use short ones).
LEASE_TIMEOUT_S = 120.0
LEASE_HEARTBEAT_S = 10.0
LEASE_POLL_S = 0.05            # first wait between tries for a busy lock (doubles, capped)
LEASE_POLL_MAX_S = 1.0

_WORKER: tuple[int, str] = (0, "")


def timeout_s() -> float:
    """Seconds after its last heartbeat that a lease counts as dead."""
    return float(os.environ.get(ENV_LEASE_TIMEOUT) or LEASE_TIMEOUT_S)


def heartbeat_s() -> float:
    """Seconds between heartbeats (kept well below the timeout)."""
    return min(float(os.environ.get(ENV_LEASE_HEARTBEAT) or LEASE_HEARTBEAT_S), timeout_s() / 4)


def worker_id() -> str:
    """This process's id in lease files: host, pid and a random part (pids are reused).

    A forked child gets its own."""
    global _WORKER
    if _WORKER[0] != os.getpid():
        _WORKER = (os.getpid(), f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    return _WORKER[1]


# --- the heartbeat ---------------------------------------------------------------------------
class _Heartbeat:
    """One daemon thread per process touching every live lease of the process."""

    def __init__(self) -> None:
        self._leases: weakref.WeakSet[Lease] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._wake = threading.Event()   # set on add: re-read the period (tests change it)

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases.add(lease)
            self._wake.set()
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="pf-lease-heartbeat", daemon=True)
                self._thread.start()

    def discard(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            self._wake.wait(heartbeat_s())
            self._wake.clear()
            with self._lock:
                leases = list(self._leases)
            for lease in leases:
                lease.touch()


_HEARTBEAT = _Heartbeat()


# --- one lease -------------------------------------------------------------------------------
class Lease:
    """A file this process created atomically and keeps alive with a heartbeat.

    Use `Lease.create`; `release()` deletes the file (also safe after it was broken)."""

    def __init__(self, path: Path, payload: dict[str, Any]) -> None:
        self.path = path
        self.payload = payload
        self.released = False

    @classmethod
    def create(cls, path: str | Path, payload: dict[str, Any] | None = None) -> Lease | None:
        """Create the lease file at `path`, or return None when a live lease holds it.

        A stale lease (no heartbeat for `timeout_s()`) is broken first.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"worker": worker_id(), "pid": os.getpid(), "host": socket.gethostname(),
                "created": time.time(), **(payload or {})}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not break_if_stale(path):
                    return None
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(body, fh)
            lease = cls(path, body)
            _HEARTBEAT.add(lease)
            return lease
        return None

    def touch(self) -> None:
        if self.released:
            return
        try:
            os.utime(self.path)
        except FileNotFoundError:
            pass  # broken by someone who judged us dead: our hold is gone (see Ledger docs)

    def alive(self) -> bool:
        """Still ours on disk (not released, not broken as stale by another worker)."""
        if self.released:
            return False
        try:
            return read_lease(self.path).get("worker") == self.payload["worker"]
        except (OSError, ValueError):
            return False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        _HEARTBEAT.discard(self)
        try:
            ours = read_lease(self.path).get("worker") == self.payload["worker"]
        except (OSError, ValueError):
            ours = False
        if ours:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def read_lease(path: Path) -> dict[str, Any]:
    """The JSON body of a lease file (raises OSError / ValueError when gone or half-written)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _owner_dead_here(path: Path) -> bool:
    """The lease was taken on this host by a process that no longer exists (a rerun right
    after a kill need not wait for the timeout). Other hosts' leases rely on the timeout."""
    try:
        body = read_lease(path)
        if body.get("host") != socket.gethostname():
            return False
        os.kill(int(body["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return False


def is_stale(path: Path, *, now: float | None = None) -> bool:
    """True when the file exists and has not been touched for `timeout_s()`, or its owner
    was a process of this host that is gone."""
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    return (time.time() if now is None else now) - mtime > timeout_s() or _owner_dead_here(path)


def break_if_stale(path: Path) -> bool:
    """Remove a dead worker's lease at `path`. Returns True when `path` is now free.

    Rename-then-check: the rename is atomic, so of two workers breaking one lease only one
    gets it; if the file renamed turns out to be a fresh lease (the stale one was replaced
    between our stat and our rename), it is linked back.
    """
    path = Path(path)
    try:
        before = os.stat(path)
    except FileNotFoundError:
        return True
    if time.time() - before.st_mtime <= timeout_s() and not _owner_dead_here(path):
        return False
    grave = path.with_name(f".{path.name}.broken.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return True
    after = os.stat(grave)
    if after.st_ino != before.st_ino:
        try:
            os.link(grave, path)   # a live lease: put it back (fails only if path was retaken)
        except FileExistsError:
            pass
    grave.unlink(missing_ok=True)
    return not path.exists()


class LeaseLock:
    """A mutex over processes and hosts: a lease file at `path`, waited for with backoff."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def hold(self) -> Iterator[Lease]:
        delay = LEASE_POLL_S
        while True:
            lease = Lease.create(self.path, {"kind": "lock"})
            if lease is not None:
                break
            time.sleep(delay * (0.5 + random.random()))
            delay = min(LEASE_POLL_MAX_S, delay * 2)
        try:
            yield lease
        finally:
            lease.release()


# --- the ledger beside a cache ---------------------------------------------------------------
@dataclass(frozen=True)
class HoldInfo:
    """One hold as its file says: who holds which revision, with how many bytes reserved."""

    path: Path
    worker: str
    repo: str
    commit: str
    nbytes: int
    stale: bool
    blobs: frozenset[str] = frozenset()   # cache blob names (ETags) of its files

    @property
    def revision_key(self) -> tuple[str, str]:
        return (self.repo, self.commit)


class Ledger:
    """Holds on cached revisions and one disk budget shared by every worker of a cache.

    Layout: ``CACHE/.pf-ledger/ledger.lock`` (a `LeaseLock`) and ``CACHE/.pf-ledger/holds/``
    (one lease file per (worker, revision), with the bytes it reserved). Under the lock a
    worker reaps dead workers' holds (evicting the revisions nobody else holds), sums the
    bytes of distinct live-held revisions and admits a new hold only when it fits the budget
    (or nothing at all is held: one checkpoint always fits, callers check that), so the
    reserved total never exceeds the budget whatever the number of workers.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.holds_dir = self.root / "holds"
        self.lock = LeaseLock(self.root / "ledger.lock")

    def holds(self) -> list[HoldInfo]:
        """Every hold file (live and stale)."""
        out = []
        if not self.holds_dir.is_dir():
            return out
        now = time.time()
        for p in self.holds_dir.glob("*.hold"):
            try:
                body = read_lease(p)
                out.append(HoldInfo(p, str(body["worker"]), str(body["repo"]), str(body["commit"]),
                                    int(body["nbytes"]), is_stale(p, now=now), frozenset(body.get("blobs", ()))))
            except (OSError, ValueError, KeyError):
                continue  # vanished, or being written this instant
        return out

    @staticmethod
    def held_bytes(holds: list[HoldInfo]) -> int:
        """Bytes of distinct live-held revisions (two workers on one revision count once)."""
        sizes: dict[tuple[str, str], int] = {}
        for h in holds:
            if not h.stale:
                sizes[h.revision_key] = max(sizes.get(h.revision_key, 0), h.nbytes)
        return sum(sizes.values())

    @staticmethod
    def _keep(live: list[HoldInfo], repo: str) -> frozenset[str]:
        """Blobs of `repo` that live holds use: an eviction must leave them, even where the
        holder's snapshot does not link them yet (its download is still running)."""
        return frozenset().union(*(h.blobs for h in live if h.repo == repo))

    def _reap(self, holds: list[HoldInfo], evict: Callable[[str, str, frozenset[str]], int]) -> list[HoldInfo]:
        live = [h for h in holds if not h.stale]
        held = {h.revision_key for h in live}
        for h in holds:
            if h.stale:
                if h.revision_key not in held:
                    evict(h.repo, h.commit, self._keep(live, h.repo))
                h.path.unlink(missing_ok=True)
        return live

    def reserve(self, repo: str, commit: str, nbytes: int, budget: int | None,
                evict: Callable[[str, str, frozenset[str]], int], *, blobs: Iterable[str] = ()) -> Lease | None:
        """Take a hold on (repo, commit) reserving `nbytes`, if the budget allows now.

        Args:
            evict: `evict(repo, commit, keep_blobs)` frees a revision of a dead worker that
                nobody else holds, keeping the blobs live holds use.
            blobs: the cache blob names of the revision's files (protected while held).

        Returns:
            The hold (release it with `release`), or None: wait and ask again.
        """
        with self.lock.hold():
            live = self._reap(self.holds(), evict)
            used = self.held_bytes(live)
            already = any(h.revision_key == (repo, commit) for h in live)
            need = 0 if already else nbytes
            if budget is not None and used > 0 and used + need > budget:
                return None
            name = f"{_safe(repo)}--{commit}--{worker_id()}-{uuid.uuid4().hex[:6]}.hold"
            return Lease.create(self.holds_dir / name, {"repo": repo, "commit": commit, "nbytes": int(nbytes),
                                                        "blobs": sorted(set(blobs))})

    def release(self, hold: Lease, evict: Callable[[str, str, frozenset[str]], int] | None) -> int:
        """Drop a hold; evict the revision (when `evict` is given) if no other worker holds it.

        Returns:
            Bytes the eviction freed (0 when another worker still holds the revision).
        """
        freed = 0
        with self.lock.hold():
            key = (hold.payload["repo"], hold.payload["commit"])
            live = [h for h in self.holds() if not h.stale and h.path != hold.path]
            if evict is not None and not any(h.revision_key == key for h in live):
                freed = int(evict(*key, self._keep(live, key[0])) or 0)
            hold.release()
        return freed

    def peak_probe(self) -> int:
        """Bytes reserved by live holds now (for progress and tests)."""
        return self.held_bytes(self.holds())


def _safe(text: str) -> str:
    return text.replace("/", "--")


class Claim:
    """A work claim in a folder: `Claim.take(folder, key)` or None when a live worker has it."""

    @staticmethod
    def take(folder: str | Path, key: str) -> Lease | None:
        return Lease.create(Path(folder) / f"{key}.claim", {"kind": "claim", "key": key})
