"""Pre-registration: lock predictions and thresholds before results exist, then score them.

`lock(predictions_yaml, results_dir)` writes ``RESULTS/prereg.lock.json``: the predictions
(text, sha256, parsed claims), the analysis config's sha256 and the UTC time, with a hash
over the whole lock so an edit shows. It reads no result: only the store's write times.
`ledger(analysis, results_dir)` scores each claim pass / fail / void, and refuses
(PreregError) when the lock was written after any result a claim governs (times come from
the ``written_at`` column the store records in every item row, not from file mtimes), when
the lock was edited, or when the thresholds changed since locking.

Predictions file grammar (YAML)::

    split: heldout                 # optional; default analysis.yaml's primary_split
    predictions:
      - pythia-70m pronoun_gender DISPLACED          # MODEL RULE VERDICT[|VERDICT...]
      - id: size-final                               # optional id, else p1, p2, ...
        claim: rho(size, final) > 0                  # rho(SIZE, METRIC) OP NUMBER [for RULE]
      - rho(params_nonembedding, depth) < 0 for pronoun_gender

SIZE: ``size``/``total``/``params_total`` or ``nonembedding``/``params_nonembedding``;
METRIC: ``depth`` or ``final``; OP: ``> >= < <=``. A rho claim without ``for RULE`` must hold
for every rule with a valid rho. Validity gate: a verdict claim is void when its verdict is
void (agree control invalid, too few checkpoints) or absent; a rho claim is void when no rule
it covers has a rho (fewer than scale.min_models valid models, or constant values).
"""
from __future__ import annotations

import hashlib
import json
import operator
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pythia_forensics.atomic import write_json
from pythia_forensics.constants import ITEMS_DIR, PREREG_LOCK_FILE
from pythia_forensics.analysis.config import VERDICTS, AnalysisConfig, load_config, read_yaml
from pythia_forensics.analysis.dynamics import Analysis, primary
from pythia_forensics.errors import ConfigError, PreregError

__all__ = ["Claim", "parse_predictions", "lock", "read_lock", "ledger", "LEDGER_STATUSES"]

LEDGER_STATUSES = ("pass", "fail", "void")
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_SIZES = {"size": "params_total", "total": "params_total", "params_total": "params_total",
          "nonembedding": "params_nonembedding", "params_nonembedding": "params_nonembedding"}
_METRICS = {"depth": "depth", "final": "final_acc", "final_acc": "final_acc"}
_VERDICT_RE = re.compile(r"^(?P<model>\S+)\s+(?P<rule>\S+)\s+(?P<verdicts>[A-Za-z]+(?:\|[A-Za-z]+)*)$")
_RHO_RE = re.compile(r"^rho\(\s*(?P<size>\w+)\s*,\s*(?P<metric>\w+)\s*\)\s*(?P<op>>=|<=|>|<)\s*"
                     r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+))(?:\s+for\s+(?P<rule>\S+))?$")


@dataclass(frozen=True)
class Claim:
    """One parsed prediction.

    Attributes:
        id: the prediction's id (given, or p1, p2, ... by position).
        text: the claim as written.
        kind: "verdict" or "rho".
        model, rule: the trajectory a verdict claim names (rule also for a rho claim; "" = all).
        verdicts: the verdicts a verdict claim accepts.
        size, metric, op, value: a rho claim's parts (size/metric as column names).
    """

    id: str
    text: str
    kind: str
    model: str = ""
    rule: str = ""
    verdicts: tuple[str, ...] = ()
    size: str = ""
    metric: str = ""
    op: str = ""
    value: float = 0.0


def _parse_claim(cid: str, text: str, where: str) -> Claim:
    text = " ".join(str(text).split())
    if match := _RHO_RE.match(text):
        size, metric = match["size"].lower(), match["metric"].lower()
        if size not in _SIZES or metric not in _METRICS:
            raise ConfigError(f"{where}: {text!r}: size must be one of {sorted(_SIZES)} and metric one of "
                              f"{sorted(_METRICS)}")
        return Claim(id=cid, text=text, kind="rho", rule=match["rule"] or "", size=_SIZES[size],
                     metric=_METRICS[metric], op=match["op"], value=float(match["value"]))
    if match := _VERDICT_RE.match(text):
        verdicts = tuple(v.upper() for v in match["verdicts"].split("|"))
        unknown = [v for v in verdicts if v not in VERDICTS]
        if not unknown:
            return Claim(id=cid, text=text, kind="verdict", model=match["model"], rule=match["rule"], verdicts=verdicts)
        raise ConfigError(f"{where}: {text!r}: unknown verdict {unknown[0]!r}; use one of {list(VERDICTS)}")
    raise ConfigError(f"{where}: cannot read claim {text!r}; write 'MODEL RULE VERDICT' or "
                      "'rho(SIZE, METRIC) OP NUMBER [for RULE]'")


def parse_predictions(path: str | Path) -> tuple[str | None, tuple[Claim, ...]]:
    """(split or None, claims) of a predictions file.

    Raises:
        ConfigError: the file is missing, not YAML, or a claim does not follow the grammar.
    """
    path = Path(path)
    # no param=: the CLI's PREDICTIONS is an argument, which cli._flag_of cannot name yet (it
    # raises AttributeError on typer arguments); the message names the file itself
    data = read_yaml(path, what="predictions file", param=None, missing_hint="give the predictions YAML file to lock")
    if not isinstance(data, dict) or not isinstance(data.get("predictions"), list) or not data["predictions"]:
        raise ConfigError(f"predictions file {path} needs a non-empty list under 'predictions:'")
    claims, seen = [], set()
    for i, entry in enumerate(data["predictions"], start=1):
        where = f"{path} prediction {i}"
        if isinstance(entry, dict):
            if "claim" not in entry:
                raise ConfigError(f"{where}: a mapping entry needs 'claim:' (and optionally 'id:')")
            cid, text = str(entry.get("id", f"p{i}")), entry["claim"]
        else:
            cid, text = f"p{i}", entry
        if cid in seen:
            raise ConfigError(f"{where}: duplicate id {cid!r}; give each prediction its own id")
        seen.add(cid)
        claims.append(_parse_claim(cid, text, where))
    split = data.get("split")
    return (None if split is None else str(split)), tuple(claims)


# --- store write times ----------------------------------------------------------------------
def _write_times(results_dir: Path) -> pd.DataFrame:
    """(model, rule, first_written_ns): when each trajectory's oldest stored row was written.

    Reads only the model/rule/written_at columns of the item files (no scores). Rows of a
    store that predates ``written_at`` fall back to the file's mtime.
    """
    frames = []
    for path in sorted((results_dir / ITEMS_DIR).glob("*/*.parquet")):
        if path.name.startswith("."):
            continue
        try:
            names = pq.read_schema(path).names
            cols = [c for c in ("model", "rule", "written_at") if c in names]
            frame = pq.read_table(path, columns=cols).to_pandas()
        except FileNotFoundError:  # superseded by a concurrent writer since listing
            continue
        except (pa.ArrowException, OSError, ValueError):  # damaged: the store quarantines it on read
            continue
        if "written_at" not in frame:
            frame["written_at"] = path.stat().st_mtime_ns
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["model", "rule", "first_written_ns"])
    frame = pd.concat(frames, ignore_index=True)
    return frame.groupby(["model", "rule"], as_index=False)["written_at"].min().rename(
        columns={"written_at": "first_written_ns"})


# --- lock -------------------------------------------------------------------------------------
def _lock_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def lock(predictions_yaml: str | Path, results_dir: str | Path, *,
         config: AnalysisConfig | str | Path | None = None) -> Path:
    """Record predictions and thresholds, with their hashes and the UTC time, before results.

    Args:
        predictions_yaml: the predictions file (grammar in the module docstring).
        results_dir: the results folder the predictions govern (created if absent).
        config: the thresholds the predictions will be scored under (default: shipped).

    Returns:
        The lock file written (``RESULTS/prereg.lock.json``).

    Raises:
        ConfigError: the predictions file does not parse.
        PreregError: a lock already exists in the folder.
    """
    if not isinstance(config, AnalysisConfig):
        config = load_config(config)
    path = Path(predictions_yaml)
    split, claims = parse_predictions(path)
    root = Path(results_dir)
    target = root / PREREG_LOCK_FILE
    if target.exists():
        raise PreregError(f"{target} already exists; a lock is written once (move it away to lock new "
                          "predictions, and report both)")
    root.mkdir(parents=True, exist_ok=True)
    times = _write_times(root)
    now_ns = time.time_ns()
    text = path.read_text()
    body = dict(
        version=1,
        predictions_file=str(path),
        predictions_sha256=hashlib.sha256(text.encode()).hexdigest(),
        predictions_text=text,
        split=split,
        claims=[asdict(c) for c in claims],
        config_sha256=config.sha256,
        config=config.values,
        locked_at=datetime.fromtimestamp(now_ns / 1e9, tz=timezone.utc).isoformat(timespec="microseconds"),
        locked_at_ns=now_ns,
        # what the store held at lock time (write times only; no result was read)
        store_rows_before_lock=[dict(model=m, rule=r, first_written_ns=int(t))
                                for m, r, t in times.itertuples(index=False)],
    )
    body["lock_sha256"] = _lock_hash(body)
    return write_json(target, body)


def read_lock(results_dir: str | Path) -> dict | None:
    """The verified lock of a results folder, or None when there is none.

    Raises:
        PreregError: the lock is not JSON, or its content no longer matches its hash.
    """
    target = Path(results_dir) / PREREG_LOCK_FILE
    if not target.exists():
        return None
    try:
        body = json.loads(target.read_text())
        stored = body.pop("lock_sha256")
    except (json.JSONDecodeError, KeyError, AttributeError):
        raise PreregError(f"{target} is not a pythia-forensics lock; restore it or remove it and re-lock") from None
    if _lock_hash(body) != stored:
        raise PreregError(f"{target} was edited after locking (hash mismatch); restore the original lock")
    if hashlib.sha256(body["predictions_text"].encode()).hexdigest() != body["predictions_sha256"]:
        raise PreregError(f"{target}: predictions text does not match its hash; restore the original lock")
    return body


# --- ledger -------------------------------------------------------------------------------------
def _score_verdict(claim: Claim, table: pd.DataFrame) -> tuple[str, str, str]:
    rows = table[(table["model"] == claim.model) & (table["rule"] == claim.rule)]
    if rows.empty:
        return "void", "", f"no results for {claim.model} {claim.rule}"
    observed = ",".join(str(v) for v in rows["verdict"])
    if rows["void"].any():
        return "void", observed, "; ".join(r for r in rows["void_reason"] if r)
    ok = rows["verdict"].isin(claim.verdicts).all()
    return ("pass" if ok else "fail"), observed, ""


def _score_rho(claim: Claim, scale: pd.DataFrame) -> tuple[str, str, str]:
    rows = scale[(scale["size"] == claim.size) & (scale["metric"] == claim.metric)]
    if claim.rule:
        rows = rows[rows["rule"] == claim.rule]
    if rows.empty:
        return "void", "", "no scale statistics (no model sizes, or no such rule)"
    valid = rows[rows["rho"].notna()]
    if valid.empty:
        return "void", "", "; ".join(sorted(set(rows["note"])))
    observed = ", ".join(f"{r.rule}: rho={r.rho:.3f} (n={r.n_models}, p={r.p_perm:.3g})" for r in valid.itertuples())
    ok = all(_OPS[claim.op](r, claim.value) for r in valid["rho"])
    return ("pass" if ok else "fail"), observed, ""


def _governed(claim: Claim, analysis: Analysis, table: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, rule) trajectories whose results a claim is scored on."""
    if claim.kind == "verdict":
        return [(claim.model, claim.rule)]
    rows = table[~table["void"]]
    if claim.rule:
        rows = rows[rows["rule"] == claim.rule]
    return list(zip(rows["model"], rows["rule"]))


def ledger(analysis: Analysis, results_dir: str | Path) -> pd.DataFrame | None:
    """Score the locked predictions of a results folder against an analysis.

    Args:
        analysis: `dynamics.analyze` of the same folder.
        results_dir: the folder holding prereg.lock.json and the item rows.

    Returns:
        None when the folder has no lock; else one row per claim: id, claim, kind, status
        (pass | fail | void), observed, detail, locked_at, config_sha256.

    Raises:
        PreregError: the lock was edited, the thresholds differ from the locked ones, or any
            result a claim governs was written before the lock.
    """
    root = Path(results_dir)
    body = read_lock(root)
    if body is None:
        return None
    if body["config_sha256"] != analysis.config.sha256:
        raise PreregError(f"thresholds changed since the lock (locked config {body['config_sha256'][:12]}, "
                          f"analysis config {analysis.config.sha256[:12]}); analyse with the locked config")
    claims = [Claim(**{**c, "verdicts": tuple(c["verdicts"])}) for c in body["claims"]]
    split = body.get("split") or analysis.config.primary_split
    table = analysis.metrics[analysis.metrics["split"] == split] if not analysis.metrics.empty else analysis.metrics
    if table.empty:
        table = primary(analysis.metrics, analysis.config)
    scale = analysis.scale[analysis.scale["split"] == split] if not analysis.scale.empty else analysis.scale
    times = _write_times(root).set_index(["model", "rule"])["first_written_ns"]
    late = []
    for claim in claims:
        first = [int(times[k]) for k in _governed(claim, analysis, table) if k in times.index]
        if first and min(first) < body["locked_at_ns"]:
            when = datetime.fromtimestamp(min(first) / 1e9, tz=timezone.utc).isoformat(timespec="seconds")
            late.append(f"{claim.id} ({claim.text!r}: results from {when})")
    if late:
        raise PreregError(f"refusing to score predictions locked at {body['locked_at']}, after the results they "
                          f"govern were written: {'; '.join(late)}. Lock before replaying")
    rows = []
    for claim in claims:
        status, observed, detail = (_score_verdict(claim, table) if claim.kind == "verdict"
                                    else _score_rho(claim, scale))
        rows.append(dict(id=claim.id, claim=claim.text, kind=claim.kind, status=status, observed=observed,
                         detail=detail, locked_at=body["locked_at"], config_sha256=body["config_sha256"]))
    return pd.DataFrame(rows)
