"""The `calm` command: its arguments and main (parser), what each subcommand does (commands), the
conventions every subcommand shares (help) and `calm demo` (demo)."""

from .parser import main

__all__ = ["main"]
