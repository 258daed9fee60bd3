"""The census: checks on what a source lists (names, sizes, sha256), no weight bytes read.

Each check is a small function in `CENSUS_CHECKS`, called in order with the shared
`CensusInput` and the findings of the checks before it (so a later check can stay silent
on a revision already reported); `census_findings` is the loop over that table. Only the
truncation check reads anything: safetensors headers (a few KB) and zip directories of
files already on disk.
"""
from __future__ import annotations

import json
import struct
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pythia_forensics.checkpoints.health_records import (
    KNOWN_IDENTICAL,
    Finding,
    ListedFile,
    RevisionFiles,
    format_of,
    missing_shards,
    order_key,
    weight_sets,
)
from pythia_forensics.checkpoints.registry import step_of_revision
from pythia_forensics.constants import MAIN_REVISION

__all__ = [
    "CENSUS_CHECKS",
    "CensusCheck",
    "CensusInput",
    "census_findings",
    "cluster_blobs",
    "safetensors_problem",
]

# A weight file whose size differs from the same-named file in most revisions by more than
# this fraction is reported (a truncated upload); a model's shards are the same size.
SIZE_TOLERANCE = 0.01
SIZE_MIN_PEERS = 3  # same-named files needed before a size counts as the norm


def safetensors_problem(path: Path) -> str | None:
    """Read a safetensors header (a few KB) and check the file holds every byte it promises.

    Returns:
        None when the file is whole, else a one-line description (truncated, bad header).
    """
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return f"{path.name} has {size} bytes, too few for a safetensors header"
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                return f"{path.name} has {size} bytes but its header alone claims {n + 8}"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        return f"{path.name} has an unreadable safetensors header ({exc})"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    expected = 8 + n + (max(ends) if ends else 0)
    if size != expected:
        return f"{path.name} has {size} bytes but its header promises {expected}"
    return None


def _bin_problem(path: Path) -> str | None:
    """A torch `.bin` is a zip archive (torch >= 1.6); a truncated one loses its directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        return f"{path.name} is not a readable torch zip archive ({exc})"
    return None


# --- census (pure) -----------------------------------------------------------------------
def cluster_blobs(listings: Sequence[RevisionFiles]) -> list[tuple[str, ...]]:
    """Group revisions that share at least one weight blob (same sha256), transitively.

    Returns:
        Clusters with two or more revisions, members in step order, clusters in order of
        their first member.
    """
    parent: dict[str, str] = {x.revision: x.revision for x in listings}

    def find(r: str) -> str:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    owner: dict[str, str] = {}
    for x in listings:
        for f in x.files:
            if format_of(Path(f.name).name) is None or not f.sha256:
                continue
            if f.sha256 in owner:
                parent[find(x.revision)] = find(owner[f.sha256])
            else:
                owner[f.sha256] = x.revision
    groups: dict[str, list[RevisionFiles]] = defaultdict(list)
    for x in listings:
        groups[find(x.revision)].append(x)
    clusters = [tuple(m.revision for m in sorted(g, key=lambda m: order_key(m.step, m.revision)))
                for g in groups.values() if len(g) > 1]
    order = {x.revision: order_key(x.step, x.revision) for x in listings}
    return sorted(clusters, key=lambda c: order[c[0]])


def _relation(a: RevisionFiles, b: RevisionFiles) -> tuple[str, str] | None:
    """How `a` relates to `b`: ("duplicate", what) for an identical set, ("shared_blob", files)."""
    fa, fb = _fingerprints(a.files), _fingerprints(b.files)
    same = [fmt for fmt in fa if fa[fmt] == fb.get(fmt)]
    if same:
        return "duplicate", "/".join(sorted(same))
    shas_b = {f.sha256: f.name for f in b.files if f.sha256}
    shared = sorted(f.name for f in a.files if f.sha256 in shas_b and format_of(Path(f.name).name))
    if shared:
        return "shared_blob", ", ".join(shared)
    return None


def _fingerprints(files: Iterable[ListedFile]) -> dict[str, tuple[str, ...]]:
    """Per format, the sorted sha256s of its files: equal fingerprints = byte-identical set."""
    return {fmt: tuple(sorted(f.sha256 for f in fs)) for fmt, fs in weight_sets(files).items()}


# --- the checks ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CensusInput:
    """What every census check reads.

    Attributes:
        listings: the revisions the source lists.
        expected: revision names the grid promises (registry / manifest).
        final_revision: the last step's branch (expected to equal `main`), if known.
        where: how to name the source in messages ("the hub repo ...", "/path/to/suite").
        clusters: groups of revisions sharing weight blobs, without the expected
            `final` == `main` pair (`cluster_blobs`).
    """

    listings: tuple[RevisionFiles, ...]
    expected: tuple[str, ...]
    final_revision: str | None
    where: str
    clusters: tuple[tuple[str, ...], ...]

    @property
    def by_rev(self) -> dict[str, RevisionFiles]:
        return {x.revision: x for x in self.listings}

    @property
    def final_unit(self) -> set[str]:
        """The final step's branch and `main`, those of them listed: one model, two names."""
        by_rev = self.by_rev
        return {r for r in (self.final_revision, MAIN_REVISION) if r in by_rev}


# A census check: (the input, findings of the checks before it) -> its own findings.
CensusCheck = Callable[[CensusInput, Sequence[Finding]], list[Finding]]


def missing_revisions(census: CensusInput, _before: Sequence[Finding]) -> list[Finding]:
    """`missing` (bad): revisions the grid promises but the source lacks."""
    by_rev = census.by_rev
    return [Finding(rev, step_of_revision(rev), "missing", "bad",
                    f"{rev} is in the expected grid but {census.where} has no such revision")
            for rev in census.expected if rev not in by_rev]


def incomplete_sets(census: CensusInput, _before: Sequence[Finding]) -> list[Finding]:
    """`no_weights` (bad) and `incomplete` (bad; flagged when another format is complete)."""
    out = []
    for x in census.listings:
        sets = weight_sets(x.files)
        if not sets:
            out.append(Finding(x.revision, x.step, "no_weights", "bad",
                               f"{x.revision} carries no weight file (.safetensors or .bin)"))
            continue
        lost = {fmt: missing_shards(fs) for fmt, fs in sets.items()}
        any_complete = not all(lost.values())
        out += [Finding(x.revision, x.step, "incomplete", "flagged" if any_complete else "bad",
                        f"{x.revision}'s {fmt} set lacks {', '.join(names)}")
                for fmt, names in lost.items() if names]
    return out


def truncated_files(census: CensusInput, _before: Sequence[Finding]) -> list[Finding]:
    """`truncated` (bad): weight files on disk holding fewer bytes than their header promises."""
    out = []
    for x in census.listings:
        if x.path is None:
            continue
        for f in x.files:
            local = Path(x.path) / f.name
            fmt = format_of(local.name)
            if fmt is None or not local.exists():
                continue
            problem = safetensors_problem(local) if fmt == "safetensors" else _bin_problem(local)
            if problem:
                out.append(Finding(x.revision, x.step, "truncated", "bad", problem))
    return out


def odd_sizes(census: CensusInput, before: Sequence[Finding]) -> list[Finding]:
    """`size` (bad): a weight file whose size differs from the same-named file's in most
    revisions (a truncated or wrong upload); silent where `truncated` already says so."""
    sizes: dict[str, Counter[int]] = defaultdict(Counter)
    for x in census.listings:
        for f in x.files:
            if format_of(Path(f.name).name):
                sizes[f.name][f.size] += 1
    truncated = {g.revision for g in before if g.code == "truncated"}
    out = []
    for x in census.listings:
        for f in x.files:
            counts = sizes.get(f.name)
            if not counts or sum(counts.values()) < SIZE_MIN_PEERS:
                continue
            norm, votes = counts.most_common(1)[0]
            if votes * 2 <= sum(counts.values()) or norm == 0:
                continue  # no clear majority: nothing to compare against
            if abs(f.size - norm) > SIZE_TOLERANCE * norm and x.revision not in truncated:
                out.append(Finding(x.revision, x.step, "size", "bad",
                                   f"{f.name} is {f.size} bytes where {votes} other revisions' is {norm} "
                                   "(truncated or wrong upload)"))
    return out


def _copies_of_final(census: CensusInput, members: Sequence[RevisionFiles]) -> list[Finding]:
    """A cluster holding the final model: the other names carrying its blobs are stale copies."""
    final_unit = census.final_unit
    anchor = next(m for m in members if m.revision in final_unit)
    finals = ", ".join(sorted(final_unit & {m.revision for m in members}))
    out = []
    for m in members:
        if m.revision in final_unit:
            continue
        code, what = _relation(m, anchor) or ("shared_blob", "weight blobs (via other revisions)")
        detail = (f"byte-identical {what} weights to {finals} (a copy of the final model under a "
                  "mid-training name)" if code == "duplicate" else f"shares {what} with the final model {anchor.revision}")
        out.append(Finding(m.revision, m.step, code, "bad", detail))
    return out


def _copies_of_origin(members: Sequence[RevisionFiles]) -> list[Finding]:
    """A mid-training cluster: later names carry the first member's blobs (known faults flagged)."""
    origin, out, unknown_later = members[0], [], []
    for m in members[1:]:
        known = KNOWN_IDENTICAL.get((origin.revision, m.revision))
        code, what = _relation(m, origin) or ("shared_blob", "weight blobs (via other revisions)")
        if known and code == "duplicate":
            out.append(Finding(m.revision, m.step, "duplicate", "flagged",
                               f"byte-identical {what} weights to {origin.revision} ({known})", known=True))
            continue
        unknown_later.append(m.revision)
        detail = (f"byte-identical {what} weights to {origin.revision}; training should have changed them"
                  if code == "duplicate" else f"shares {what} with {origin.revision}")
        out.append(Finding(m.revision, m.step, code, "bad", detail))
    if unknown_later:
        out.append(Finding(origin.revision, origin.step, "duplicate", "flagged",
                           f"later revisions {', '.join(unknown_later)} carry its weight blobs "
                           "(one of them is mislabelled)"))
    return out


def shared_blobs(census: CensusInput, _before: Sequence[Finding]) -> list[Finding]:
    """`duplicate` / `shared_blob`: revisions of one cluster (`CensusInput.clusters`)."""
    by_rev, final_unit = census.by_rev, census.final_unit
    out = []
    for cluster in census.clusters:
        members = [by_rev[r] for r in cluster]
        if final_unit & set(cluster):
            out += _copies_of_final(census, members)
        else:
            out += _copies_of_origin(members)
    return out


def final_differs_from_main(census: CensusInput, _before: Sequence[Finding]) -> list[Finding]:
    """`final_mismatch` (flagged): step<final> and `main` both listed, compared where they
    share a format, and different in every shared format."""
    by_rev, final = census.by_rev, census.final_revision
    if final not in by_rev or MAIN_REVISION not in by_rev:
        return []
    fa, fb = _fingerprints(by_rev[final].files), _fingerprints(by_rev[MAIN_REVISION].files)
    common = set(fa) & set(fb)
    if not common or any(fa[k] == fb[k] for k in common):
        return []
    return [Finding(rev, by_rev[rev].step, "final_mismatch", "flagged",
                    f"{rev} and {other} should hold the same final model but their "
                    f"{'/'.join(sorted(common))} weights differ")
            for rev, other in ((final, MAIN_REVISION), (MAIN_REVISION, final))]


CENSUS_CHECKS: tuple[CensusCheck, ...] = (
    missing_revisions,
    incomplete_sets,
    truncated_files,
    odd_sizes,
    shared_blobs,
    final_differs_from_main,
)


def census_findings(listings: Sequence[RevisionFiles], *, expected: Sequence[str],
                    final_revision: str | None, where: str = "the source",
                    checks: Sequence[CensusCheck] = CENSUS_CHECKS) -> tuple[list[Finding], list[tuple[str, ...]]]:
    """Every census check on listings alone (plus safetensors headers when files are local).

    Args:
        listings: the revisions the source lists.
        expected: revision names the grid promises (registry / manifest).
        final_revision: the last step's branch (expected to equal `main`), if known.
        where: how to name the source in messages ("the hub", "/path/to/suite").
        checks: the checks to run, in order (default: every one, `CENSUS_CHECKS`).

    Returns:
        (findings, clusters): clusters exclude the expected `final` == `main` pair.
    """
    final_unit = {r for r in (final_revision, MAIN_REVISION) if any(x.revision == r for x in listings)}
    clusters = tuple(c for c in cluster_blobs(listings) if not set(c) <= final_unit)
    census = CensusInput(listings=tuple(listings), expected=tuple(expected), final_revision=final_revision,
                         where=where, clusters=clusters)
    findings: list[Finding] = []
    for check in checks:
        findings += check(census, tuple(findings))
    return findings, list(clusters)
