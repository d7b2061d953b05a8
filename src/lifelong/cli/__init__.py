"""The `lifelong` command: `app` holds the classic commands and mounts one module per command group."""

from lifelong.cli.app import app, main

__all__ = ["app", "main"]
