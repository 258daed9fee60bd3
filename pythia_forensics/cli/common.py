"""Shared CLI helpers: the rich console and option parsing used by several commands."""
from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
