import re

import pytest
from click.testing import CliRunner

from proxytasks.cli import cli

from .conftest import shared


def invoke(*args: str):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def identities_of(validate_output: str) -> int:
    return int(re.search(r"identities\s+(\d+)", validate_output).group(1))


@pytest.mark.parametrize("dataset, args, identities, faces", [
    ("orl_faces", ["folders"], 38, 380),
    ("yalefaces", ["pattern", "--regex", r"(?P<identity>subject\d+)\."], 15, 164),
    ("bbt/images", ["folders"], 8, 40),
])
def test_import_then_validate_real_sets(tmp_path, dataset, args, identities, faces):
    root = shared(*dataset.split("/"))
    out = tmp_path / "m.jsonl"
    res = invoke("import", args[0], root, "-o", out, *args[1:])
    assert res.exit_code == 0, res.output
    res = invoke("validate", out)
    assert res.exit_code == 0, res.output
    assert identities_of(res.output) == identities
    assert re.search(r"faces\s+(\d+)", res.output).group(1) == str(faces)


def test_import_errors_exit_2(tmp_path):
    res = invoke("import", "folders", tmp_path / "nowhere", "-o", tmp_path / "m.jsonl")
    assert res.exit_code == 2 and "nowhere" in res.output
    res = invoke("import", "pattern", tmp_path, "--regex", "subject", "-o", tmp_path / "m.jsonl")
    assert res.exit_code == 2 and "identity" in res.output


def test_recipe_errors_name_the_step(tmp_path):
    bad = tmp_path / "bad.yaml"
    out = tmp_path / "out"
    bad.write_text(f"out: {out}\nsteps:\n  - validate: {{manifest: m.jsonl}}\n"
                   "  - validate: {manifest: m.jsonl, colour: red}\n")
    res = invoke("run", bad)
    assert res.exit_code == 2 and "step 2 (validate)" in res.output and "colour" in res.output
    assert "[1/2]" not in res.output and not out.exists()  # checked before any step runs
    bad.write_text("steps:\n  - validate: {manifest: '{nowhere}/m.jsonl'}\n")
    res = invoke("run", bad)
    assert res.exit_code == 2 and "unknown variable" in res.output
    bad.write_text("steps:\n  - validate: {manifest: missing.jsonl}\n")
    res = invoke("run", bad)
    assert res.exit_code == 2 and "step 1 (validate) failed" in res.output and "manifest not found" in res.output
    res = invoke("run", tmp_path / "absent.yaml")
    assert res.exit_code == 2 and "recipe not found" in res.output
    bad.write_text("steps: [")
    assert invoke("run", bad).exit_code == 2
