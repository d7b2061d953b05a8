"""The `lifelong` command: `app` holds the classic commands and mounts one module per command group."""

from lifelong.cli.startup import quiet_collector

with quiet_collector():  # torch, typer, rich and the project: see `lifelong.cli.startup`
    from lifelong.cli.app import app, main

__all__ = ["app", "main"]
