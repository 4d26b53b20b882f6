"""proxytasks.recipe, the engine under `proxytasks run`: variables and overrides, option names to
argv, step selection, checks before the first step runs, and the recipe's own outputs. The
shipped recipes themselves are run in test_recipes.py.

A small click group stands in for the CLI here so that each step's argv can be seen."""
from __future__ import annotations

from pathlib import Path

import click
import pytest
import yaml

from proxytasks.errors import ProxytasksError
from proxytasks.recipe import load_recipe, run_recipe, step_argv


def write(folder: Path, text: str, name: str = "r.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def make_group(calls: list) -> click.Group:
    """A CLI with ``count``, ``echo`` and ``out write`` commands that record their arguments."""

    @click.group()
    def group():
        pass

    @group.command()
    @click.argument("manifest")
    @click.argument("more", nargs=-1)
    @click.option("-o", "--out", required=True)
    @click.option("--n-pairs", type=int, default=1)
    @click.option("--tag", multiple=True)
    @click.option("--resume/--no-resume", default=True)
    @click.option("--fast", is_flag=True)
    def count(manifest, more, out, n_pairs, tag, resume, fast):
        calls.append(("count", manifest, more, out, n_pairs, tag, resume, fast))

    @group.command()
    @click.option("--text", default="")
    def echo(text):
        if text == "boom":
            raise ProxytasksError("the echo went wrong")
        if text == "click":
            raise click.BadParameter("not this one")
        calls.append(("echo", text))

    @group.group()
    def out():
        pass

    @out.command()
    @click.option("--out", required=True)
    @click.option("--overwrite", is_flag=True)
    def write(out, overwrite):
        calls.append(("out write", out, overwrite))

    return group


def test_variables_fill_each_other_and_overrides_are_yaml(tmp_path):
    path = write(tmp_path, """
out: runs/a
tracked: "{out}/tracked.jsonl"
steps_n: 3
steps:
  - count: {manifest: "{tracked}", out: "{out}/p.npz", tag: ["{out}", x], n-pairs: "{steps_n}"}
""")
    r = load_recipe(path)
    assert r["tracked"] == "runs/a/tracked.jsonl"
    assert r["steps"] == [{"count": {"manifest": "runs/a/tracked.jsonl", "out": "runs/a/p.npz",
                                     "tag": ["runs/a", "x"], "n-pairs": "3"}}]
    r = load_recipe(path, ["out=/tmp/b", "steps_n=7"])
    assert r["steps"][0]["count"]["manifest"] == "/tmp/b/tracked.jsonl" and r["steps_n"] == 7
    assert load_recipe(path, ["steps_n=[1, 2]"])["steps_n"] == [1, 2]  # a YAML value, not a string


@pytest.mark.parametrize("text, overrides, message", [
    ("steps: []", [], "non-empty 'steps' list"),
    ("- a\n- b", [], "non-empty 'steps' list"),
    ("steps: [{count: {}, echo: {}}]", [], "step 1 must be a mapping of one command"),
    ("steps: [{count: [a, b]}]", [], r"step 1 \(count\): options must be a mapping"),
    ("x: 1\nsteps: [{echo: {text: '{y}'}}]", [], "step 1: cannot fill '{y}': unknown variable 'y'"),
    ("x: 1\nsteps: [{echo: {}}]", ["y=2"], "has no variable 'y'; its variables: x"),
    ("x: 1\nsteps: [{echo: {}}]", ["x"], "expected KEY=VALUE"),
    ("x: 1\nsteps: [{echo: {}}]", ["x=[1"], "not a YAML value"),
    ("steps: [{echo: {text: 'a'}}\n  :", [], "not a readable YAML recipe"),
])
def test_bad_recipes_name_the_file_and_the_culprit(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(ProxytasksError, match=message) as err:
        load_recipe(path, overrides)
    assert str(path) in str(err.value) or "--set" in str(err.value)


def test_a_missing_recipe(tmp_path):
    with pytest.raises(ProxytasksError, match="recipe not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_step_argv_maps_every_kind_of_parameter():
    count = make_group([]).commands["count"]
    argv = step_argv(count, {"manifest": "m.jsonl", "more": ["a", "b"], "out": "o", "n_pairs": 5,
                             "tag": ["x", "y"], "resume": False, "fast": True}, "here")
    assert argv == ["--out", "o", "--n-pairs", "5", "--tag", "x", "--tag", "y", "--no-resume", "--fast",
                    "--", "m.jsonl", "a", "b"]  # "--": a value starting with "-" stays positional
    assert step_argv(count, {"fast": False, "out": "o"}, "here") == ["--out", "o"]  # a false flag: nothing
    assert step_argv(count, {"n-pairs": 2}, "here") == ["--n-pairs", "2"]  # the option's own spelling
    with pytest.raises(ProxytasksError, match="here: unknown option.*pairs; known: .*n-pairs"):
        step_argv(count, {"pairs": 2}, "here")
    # the argv parses back to the same values
    calls: list = []
    group = make_group(calls)
    group.commands["count"].main(args=argv, standalone_mode=False)
    assert calls == [("count", "m.jsonl", ("a", "b"), "o", 5, ("x", "y"), False, True)]


def test_run_checks_every_step_before_running_any(tmp_path):
    calls: list = []
    path = write(tmp_path, "steps:\n  - echo: {text: one}\n  - nonesuch: {}\n")
    with pytest.raises(ProxytasksError, match=r"step 2 \(nonesuch\): unknown command 'nonesuch'"):
        run_recipe(path, make_group(calls))
    path = write(tmp_path, "steps:\n  - echo: {text: one}\n  - echo: {txt: two}\n")
    with pytest.raises(ProxytasksError, match=r"step 2 \(echo\): unknown option\(s\) txt"):
        run_recipe(path, make_group(calls))
    assert calls == []  # nothing ran


def test_from_to_dry_run_and_the_saved_recipe(tmp_path, capsys):
    calls: list = []
    out = tmp_path / "run"
    path = write(tmp_path, f"out: {out}\nsteps:\n" + "".join(f"  - echo: {{text: s{k}}}\n" for k in range(1, 5)))
    run_recipe(path, make_group(calls), dry_run=True)
    assert calls == [] and not out.exists()  # a dry run writes nothing
    assert "[3/4] proxytasks echo --text s3" in capsys.readouterr().out
    run_recipe(path, make_group(calls), first=2, last="3")
    assert calls == [("echo", "s2"), ("echo", "s3")]
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["out"] == str(out) and len(saved["steps"]) == 4
    calls.clear()
    run_recipe(path, make_group(calls), first="echo", last="echo")  # by name: the first echo from --from
    assert calls == [("echo", "s1")]
    with pytest.raises(ProxytasksError, match=r"no step 'count' \(steps: 1 echo, 2 echo"):
        run_recipe(path, make_group(calls), first="count")
    with pytest.raises(ProxytasksError, match="--to step 1 comes before --from step 3"):
        run_recipe(path, make_group(calls), first=3, last=1)


@pytest.mark.parametrize("text, message", [("boom", "the echo went wrong"), ("click", "not this one")])
def test_a_failing_step_names_itself_and_stops_the_recipe(tmp_path, text, message):
    calls: list = []
    path = write(tmp_path, f"steps:\n  - echo: {{text: a}}\n  - echo: {{text: {text}}}\n  - echo: {{text: c}}\n")
    with pytest.raises(ProxytasksError, match=rf"step 2 \(echo\) failed: .*{message}"):
        run_recipe(path, make_group(calls))
    assert calls == [("echo", "a")]


def test_nested_commands_and_the_recipes_own_outputs(tmp_path):
    calls: list = []
    path = write(tmp_path, "steps:\n  - out write: {out: a}\n  - out write: {out: b, overwrite: false}\n")
    run_recipe(path, make_group(calls))
    # the recipe may replace what it wrote on an earlier run; an explicit choice is kept
    assert calls == [("out write", "a", True), ("out write", "b", False)]
