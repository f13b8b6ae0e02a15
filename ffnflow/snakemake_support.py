"""Glue for the thin scripts in scripts/: logging of a stage into its Snakemake log file."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from ffnflow.errors import InputError


@contextlib.contextmanager
def logged_stage(log_path: str | Path) -> Iterator[logging.Logger]:
    """Send logging, stdout and stderr of a stage to ``log_path``; ffnflow's warnings
    also to the console (Snakemake's stderr).

    An :class:`InputError` is logged as one clear line and ends the job with exit code 2
    (Snakemake then removes the job's outputs); other errors keep their traceback.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "w", buffering=1) as fh,
        contextlib.redirect_stdout(fh),
        contextlib.redirect_stderr(fh),
    ):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        # ffnflow's warnings also go to Snakemake's console, where people look.
        console = logging.StreamHandler(sys.__stderr__)
        console.addFilter(lambda record: record.levelno == logging.WARNING)  # errors: below
        console.setFormatter(logging.Formatter(f"ffnflow: warning: %(message)s (log: {log_path})"))
        ffnflow_logger = logging.getLogger("ffnflow")
        ffnflow_logger.addHandler(console)
        try:
            yield logging.getLogger("ffnflow")
        except InputError as exc:
            logging.getLogger("ffnflow").error("%s", exc)
            print(f"ffnflow: error: {exc} (log: {log_path})", file=sys.__stderr__)
            raise SystemExit(2) from None
        finally:
            root.removeHandler(handler)
            ffnflow_logger.removeHandler(console)
