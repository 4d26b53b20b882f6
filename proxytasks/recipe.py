"""Recipes: YAML files that chain proxytasks commands.

A recipe has top-level variables and a list of ``steps``; each step names a command
(``track``, ``import folders``, ...) and its options, whose keys equal the CLI option
and argument names. String values (of steps and of other variables) may refer to
variables as ``{name}``::

    out: runs/demo            # a variable
    steps:
      - synth: {out: "{out}/episode", seed: 0}
      - track: {manifest: "{out}/episode/manifest.jsonl", out: "{out}/tracked.jsonl"}

The resolved recipe is saved as ``recipe.yaml`` in the folder named by ``out``, and each
step's wall and CPU seconds are appended to ``recipe_log.jsonl`` there as it finishes. A
finished run says last where its named dataset, benchmark and report are, and what to open.
"""
from __future__ import annotations

import json
import logging
import shlex
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import click
import yaml

from .errors import ProxytasksError
from .fileio import atomic_write

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a recipe, apply ``key=value`` overrides to its variables, fill ``{name}`` references."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProxytasksError(f"{path}: recipe not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ProxytasksError(f"{path}: not a readable YAML recipe: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise ProxytasksError(f"{path}: a recipe is a mapping with a non-empty 'steps' list")
    variables = {k: v for k, v in data.items() if k != "steps"}
    known = sorted(variables)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProxytasksError(f"--set {item!r}: expected KEY=VALUE")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ProxytasksError(f"--set {item!r}: not a YAML value: {e}") from None
        if key not in variables:
            raise ProxytasksError(f"--set {item!r}: {path} has no variable {key!r}; its variables: "
                                  f"{', '.join(known) or 'none'}")
        variables[key] = parsed
    for _ in range(len(variables)):  # variables may refer to variables ("{out}/tracked.jsonl")
        filled = {key: _fill(v, variables, f"{path}: variable {key}") for key, v in variables.items()}
        if filled == variables:
            break
        variables = filled
    steps = []
    for k, step in enumerate(data["steps"], 1):
        if not (isinstance(step, dict) and len(step) == 1):
            raise ProxytasksError(f"{path}: step {k} must be a mapping of one command to its options")
        (name, options), = step.items()
        options = options or {}
        if not isinstance(options, dict):
            raise ProxytasksError(f"{path}: step {k} ({name}): options must be a mapping")
        steps.append({name: {key: _fill(v, variables, f"{path}: step {k}") for key, v in options.items()}})
    return {**variables, "steps": steps}


def _fill(value: Any, variables: dict[str, Any], where: str) -> Any:
    if isinstance(value, list):
        return [_fill(v, variables, where) for v in value]
    if not isinstance(value, str):
        return value
    try:
        return value.format_map(variables)
    except (KeyError, IndexError, ValueError) as e:
        raise ProxytasksError(f"{where}: cannot fill {value!r}: unknown variable {e}") from None


def step_argv(command: click.Command, options: dict[str, Any], where: str) -> list[str]:
    """The command-line arguments that give ``command`` these ``options``."""
    # a key is an option's long name (``n-pairs`` or ``pairs`` for ``--pairs``) or an
    # argument's name or metavar
    names: dict[str, str] = {}
    for p in command.params:
        keys = [p.name] + [o.lstrip("-") for o in p.opts if o.startswith("--")]
        if isinstance(p, click.Argument) and p.metavar:
            keys.append(p.metavar.lower())
        names.update({k.replace("-", "_"): p.name for k in keys})
    unknown = [k for k in options if k.replace("-", "_") not in names]
    if unknown:
        known = ", ".join(sorted({k.replace("_", "-") for k in names}))
        raise ProxytasksError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {known}")
    values = {names[k.replace("-", "_")]: v for k, v in options.items()}
    positional: list[str] = []
    flags: list[str] = []
    for p in command.params:
        if p.name not in values:
            continue
        v = values[p.name]
        if isinstance(p, click.Argument):
            positional.extend(str(x) for x in (v if isinstance(v, list) else [v]))
        elif getattr(p, "is_flag", False):
            if v:
                flags.append(p.opts[0])
            elif p.secondary_opts:
                flags.append(p.secondary_opts[0])
        else:
            for x in v if isinstance(v, list) else [v]:
                flags.extend([p.opts[-1] if p.opts[-1].startswith("--") else p.opts[0], str(x)])
    return flags + ["--"] + positional if positional else flags


def _resolve(group: click.Group, name: str, where: str) -> click.Command:
    command: click.Command = group
    for part in name.split():
        sub = command.commands.get(part) if isinstance(command, click.Group) else None
        if sub is None:
            raise ProxytasksError(f"{where}: unknown command {name!r}")
        command = sub
    return command


def _step_number(recipe: dict[str, Any], step: str | int | None, after: int, default: int, path: Path) -> int:
    """The 1-based number of ``step``: a number, or the first step from ``after`` on
    whose command is ``step``."""
    if step is None:
        return default
    names = [next(iter(s)) for s in recipe["steps"]]
    if str(step).isdigit() and 1 <= int(step) <= len(names):
        return int(step)
    for k in range(after, len(names) + 1):
        if names[k - 1] == step:
            return k
    raise ProxytasksError(f"{path}: no step {step!r} (steps: {', '.join(f'{k} {n}' for k, n in enumerate(names, 1))})")


def run_recipe(path: str | Path, group: click.Group, overrides: Sequence[str] = (),
               obj: dict | None = None, first: str | int | None = None,
               last: str | int | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Run the steps of the recipe in order, from ``first`` to ``last`` (step numbers or
    command names; default all); returns the resolved recipe. ``dry_run`` checks and
    prints the commands without running them."""
    path = Path(path)
    recipe = load_recipe(path, overrides)
    total = len(recipe["steps"])
    start = _step_number(recipe, first, 1, 1, path)
    stop = _step_number(recipe, last, start, total, path)
    if stop < start:
        raise ProxytasksError(f"{path}: --to step {stop} comes before --from step {start}")
    # Every step is checked (command, option names) before the first one runs.
    planned = []
    for k, step in enumerate(recipe["steps"], 1):
        (name, options), = step.items()
        where = f"{path}: step {k} ({name})"
        command = _resolve(group, name, where)
        options = _own_outputs(command, name, options, where, start <= k <= stop, path, overrides)
        planned.append((k, name, where, command, step_argv(command, options, where)))
    if "out" in recipe and not dry_run:
        out = Path(str(recipe["out"]))
        with atomic_write(out / "recipe.yaml") as fh:
            yaml.safe_dump(recipe, fh, sort_keys=False)
    began_all, times = time.perf_counter(), []
    if "out" in recipe and not dry_run and start == 1:  # a whole run starts a new log of step times
        (Path(str(recipe["out"])) / LOG_NAME).unlink(missing_ok=True)
    for k, name, where, command, argv in planned[start - 1:stop]:
        click.echo(f"[{k}/{total}] proxytasks {name} {' '.join(shlex.quote(a) for a in argv)}")
        if dry_run:
            continue
        began, cpu = time.perf_counter(), _cpu_seconds()
        try:
            command.main(args=argv, prog_name=f"proxytasks {name}", standalone_mode=False, obj=obj)
        except (ProxytasksError, click.ClickException) as e:
            message = e.format_message() if isinstance(e, click.ClickException) else str(e)
            raise ProxytasksError(f"{where} failed: {message}") from None
        took = {"step": k, "command": name, "seconds": round(time.perf_counter() - began, 3),
                "cpu_seconds": round(_cpu_seconds() - cpu, 3)}
        times.append(took)
        logger.info("step %d (%s) took %.1f s (%.1f s of CPU time)", k, name, took["seconds"], took["cpu_seconds"])
        if "out" in recipe:
            _log_step(Path(str(recipe["out"])), took)
    if dry_run:
        return recipe
    if stop < total and planned[stop - 1][1] == "suggest":
        _next_steps(path, recipe, planned, stop, overrides)
    elif "out" in recipe:
        for line in _final_lines(recipe, times, time.perf_counter() - began_all):
            click.echo(line)
    return recipe


LOG_NAME = "recipe_log.jsonl"


def _cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of its finished child processes."""
    if resource is None:  # not on POSIX: the process time of this process
        return time.process_time()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _log_step(out: Path, took: dict[str, Any]) -> None:
    """Append a finished step's wall and CPU seconds to ``out/recipe_log.jsonl`` (a log)."""
    try:
        with open(out / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({**took, "finished": datetime.now().isoformat(timespec="seconds")}) + "\n")
    except OSError as e:
        logger.warning("%s: step times not logged (%s)", out / LOG_NAME, e)


def _final_lines(recipe: dict[str, Any], times: list[dict[str, Any]], seconds: float) -> list[str]:
    """What a finished run says last: its time, then where the named dataset, the benchmark
    and the report are, and what to open."""
    out = str(recipe["out"])
    slow = ", ".join(f"{t['command']} {t['seconds']:.0f} s" for t in sorted(times, key=lambda t: -t["seconds"])[:3])
    more = ", ..." if len(times) > 3 else ""
    lines = [f"done in {seconds:.0f} s ({slow}{more}; every step in {out}/{LOG_NAME}): outputs in {out}/ "
             "(the resolved recipe is recipe.yaml there)"]
    last: dict[str, str] = {}
    for step in recipe["steps"]:
        (name, options), = step.items()
        if isinstance(options, dict) and isinstance(options.get("out"), str):
            last[name] = options["out"]
    if "export" in last and Path(last["export"]).is_dir():
        lines.append(f"  named dataset: {last['export']}/  (a folder of face crops per name, _unknown/ apart; "
                     "manifest.jsonl: every face with its name and confidence)")
    if "benchmark" in last and (Path(last["benchmark"]) / "metrics.json").is_file():
        lines.append(f"  benchmark:     {last['benchmark']}/metrics.json  (pretrained backbone vs proxy training)")
    report = last.get("report")
    if report and Path(report).is_file():
        lines.append(f"  report:        {report}")
        lines.append(f"open {report} in a web browser; to check and correct the names: proxytasks app {out}")
    return lines


def _continue(path: Path, overrides: Sequence[str], step: str) -> str:
    sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
    return f"proxytasks run {shlex.quote(str(path))}{sets} --from {step}"


def _own_outputs(command: click.Command, name: str, options: dict[str, Any], where: str, runs: bool,
                 path: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """``options`` with ``overwrite`` set for an output the recipe itself wrote before, so
    that it can be run again; a suggestion sheet a person filled stops the recipe first."""
    from .active import sheet_answers

    if not any(p.name == "overwrite" for p in command.params) or any(
            k.replace("-", "_") == "overwrite" for k in options):
        return options
    out = options.get("out")
    filled = sheet_answers(out) if name == "suggest" and isinstance(out, str) else 0
    if not filled:
        return {**options, "overwrite": True}
    if runs:
        raise ProxytasksError(
            f"{where}: {out} holds {filled} answer(s) a person typed; the recipe would replace it, so it "
            f"stops before running anything. To go on from those answers: "
            f"{_continue(path, overrides, 'name')}; to ask again, move the sheet away first")
    return options


def _next_steps(path: Path, recipe: dict[str, Any], planned: list, stop: int, overrides: Sequence[str]) -> None:
    """After a recipe stopped at ``suggest``: which file to fill, the app, and how to go on."""
    sheet = dict(recipe["steps"][stop - 1]["suggest"]).get("out", "the suggestion sheet")
    names = [p[1] for p in planned]
    step = names[stop] if names.index(names[stop]) == stop else str(stop + 1)
    out = recipe.get("out", Path(str(sheet)).parent.parent)
    click.echo(f"next, a person names the faces, either way:\n"
               f"  - fill the 'name' column of {sheet} (and 'answer', same or different, for the "
               f"'same person?' rows; leave a row blank to skip it), or\n"
               f"  - name them in the browser: proxytasks app {out}\n"
               f"then continue with:\n  {_continue(path, overrides, step)}")
    if "labels" in recipe:
        click.echo(f"  (after naming in the app, add: --set labels={out}/app/labels.csv)")
