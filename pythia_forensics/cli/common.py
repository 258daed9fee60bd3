"""Shared CLI helpers: the rich consoles used by every command."""
from __future__ import annotations

import sys

from rich.console import Console

# Piped output (CI logs, `| tee`) has no terminal width; rich would then squeeze tables to 80
# columns and elide numbers. Keep them readable instead.
_PIPED_WIDTH = 160

console = Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH)
