"""Helpers that every ``proxytasks`` command module shares (:mod:`proxytasks.cli`,
:mod:`proxytasks.cli_learn`, :mod:`proxytasks.cli_people`): errors as exit code 2,
progress, printing, and refusing to overwrite outputs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import click

from .errors import ProxytasksError


class UserError(click.ClickException):
    """A :class:`ProxytasksError` as click shows it: message only, exit code 2."""

    exit_code = 2


class ProxytasksGroup(click.Group):
    """The root group: turns library errors into exit code 2 without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ProxytasksError as e:
            raise UserError(str(e)) from None


def progress(ctx: click.Context) -> bool:
    """Whether to show progress bars: not under the root's ``--quiet``."""
    return not (ctx.find_root().obj or {}).get("quiet", False)


def echo_report(report: dict) -> None:
    """One indented ``key value`` line per entry, floats rounded."""
    width = max(map(len, report), default=0)
    for key, value in report.items():
        click.echo(f"  {key:<{width}} {round(value, 4) if isinstance(value, float) else value}")


def overwrite_option(f):
    """``--overwrite``: replace an output that already holds results or a person's answers."""
    return click.option("--overwrite", is_flag=True,
                        help="Replace the output even if it already holds results (or a person's answers).")(f)


def refuse(path: Path, what: str, how: str, overwrite: bool, holds: bool | None = None) -> None:
    """Stop (exit 2) before replacing ``path``, which holds ``what``, unless ``overwrite``;
    ``how`` says how to go on (:func:`proxytasks.fileio.refuse_overwrite`)."""
    from .fileio import refuse_overwrite

    refuse_overwrite(path, what, how, overwrite, holds)


def run_holds(run: Path) -> str | None:
    """What a training run folder holds ("a trained model (436 steps)"), or None when nothing."""
    if (run / "model.safetensors").exists():
        try:
            steps = json.loads((run / "config.json").read_text())["train"]["steps"]
            return f"a trained model ({steps} steps)"
        except (OSError, ValueError, KeyError, TypeError):
            return "a trained model"
    if (run / "checkpoint.pt").exists():
        return "the checkpoint of an unfinished training run"
    return None


def numbers(value: str, what: str, kind: type = int) -> list:
    """Comma-separated positive numbers of ``kind`` (int or float) from an option value."""
    try:
        items = [kind(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ProxytasksError(f"{what} {value!r}: expected comma-separated "
                              f"{'integers such as 1,5,20' if kind is int else 'numbers such as 60,180'}") from None
    if not items or not all(math.isfinite(x) and x > 0 for x in items):
        raise ProxytasksError(f"{what} {value!r}: expected positive {'integers' if kind is int else 'numbers'}")
    return items


def names(value: str) -> tuple[str, ...]:
    """The comma-separated names of an option value, stripped, empty ones left out."""
    return tuple(x.strip() for x in value.split(",") if x.strip())


def fmt(value: float | None) -> str:
    """A score with three decimals, "-" for None."""
    return "-" if value is None else f"{value:.3f}"
