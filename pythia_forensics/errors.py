"""Every exception pythia-forensics raises on purpose.

Each subclasses `PFError` and a builtin, so callers can catch broadly (`except ValueError`)
or precisely (`except ProbeFormatError`). Every message says what failed, the bad value and
what to do; the CLI prints it as one line and exits with status 2.
"""
from __future__ import annotations


class PFError(Exception):
    """Base class: a user-facing error whose message is the whole story.

    The message speaks of values, not of a command line (a notebook caller never typed
    ``--steps``). ``param`` names the API argument the message is about; the CLI prefixes the
    message with that argument's flag (``--steps``), so both callers read their own words.
    """

    exit_code = 2

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# --- probes -----------------------------------------------------------------------------
class ProbeFormatError(PFError, ValueError):
    """A probe file is malformed (names file, line and field)."""


class UnknownProbeSetError(PFError, LookupError):
    """`--probes NAME` names no shipped probe set and no file."""


# --- tokenization / scoring -------------------------------------------------------------
class TokenizationError(PFError, ValueError):
    """A candidate or prefix tokenizes to nothing, or a cue class cannot be matched."""


class ModelLoadError(PFError, OSError):
    """A model path/repo/revision cannot be loaded."""


class ScoringError(PFError, RuntimeError):
    """Scoring failed for a reason the user can fix (device, dtype, batch size)."""


# --- registry / sources -----------------------------------------------------------------
class UnknownModelError(PFError, LookupError):
    """A registry name or suite is unknown ("did you mean" + the known list)."""


class RevisionNotFoundError(PFError, LookupError):
    """A branch/revision does not exist for a model."""


class SourceError(PFError, OSError):
    """The hub or a local folder cannot serve what was asked (unreachable, corrupt file)."""


class DiskBudgetError(PFError, ValueError):
    """The disk budget is smaller than one checkpoint."""


class StepSpecError(PFError, ValueError):
    """A `--steps` specification is malformed."""


# --- store / analysis -------------------------------------------------------------------
class StoreError(PFError, OSError):
    """A results folder is missing, empty or inconsistent."""


class ConfigError(PFError, ValueError):
    """An analysis config or predictions file is malformed."""


class PreregError(PFError, RuntimeError):
    """A pre-registration lock is missing, tampered with, or newer than the results."""


# --- corpus / mini suite / interventions -------------------------------------------------
class CorpusError(PFError, ValueError):
    """A corpus input or a corpus edit cannot be read or realised as requested."""


# --- health / audit -----------------------------------------------------------------------
class OutputFormatError(PFError, ValueError):
    """An `--out` file has a suffix no writer handles (names the suffixes that work)."""


class AuditError(PFError, ValueError):
    """A numerical audit cannot run as asked (empty sample, unknown dtype, no items)."""


# --- inputs, outputs, checkpoints, shutdown (#14) -----------------------------------------
class UsageError(PFError, ValueError):
    """A command-line option has a value the command cannot use (names option and value)."""


class OutputPathError(PFError, OSError):
    """An output location cannot be written (read-only, a file where a folder must be, ...)."""


class CheckpointError(ModelLoadError):
    """A checkpoint cannot give meaningful scores: unreadable or truncated weights, a refused
    pickle, an unsupported architecture, missing/unexpected/misshapen or non-finite tensors."""


class Interrupted(PFError):
    """The user interrupted a run (SIGINT); the message says what was kept. Exit status 130."""

    exit_code = 130


class MonitorError(PFError, ValueError):
    """A training monitor was set up or called wrongly (no tokenizer, bad schedule, ...)."""


# --- mechanism --------------------------------------------------------------------------
class MechanismError(PFError, ValueError):
    """A mechanism measurement cannot give meaningful numbers (architecture, candidates,
    a decomposition that does not add up)."""
