"""No file the toolkit reads can run code: a source scan (ast) plus hostile files.

Decision on ``np.load``: every call must pass ``allow_pickle=False`` explicitly. NumPy's
default has been False since 1.16.3, but an explicit argument is what review and this
scan can see, and it does not depend on the NumPy version installed.
"""
from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from proxytasks.cli import cli
from proxytasks.embed import Embeddings
from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Face, Manifest
from proxytasks.models import load_state_dict_file
from proxytasks.pairs import PairSet
from proxytasks.rules import RuleSet

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("proxytasks", "data_tools")
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve"}
BANNED_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


# --------------------------------------------------------------------------- the scan
def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``np.load`` -> ``numpy.load`` through the file's import aliases; None if not a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword_is(call: ast.Call, name: str, value: bool) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
               for k in call.keywords)


def scan(source: str, where: str = "<text>") -> tuple[list[str], dict[str, int]]:
    """Unsafe loading in one module: (problems as ``where:line: what``, counts of the
    loader calls checked)."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    problems: list[str] = []
    counts = {"torch.load": 0, "numpy.load": 0, "yaml.safe_load": 0}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.split(".")[0] in BANNED_MODULES:
                    problems.append(f"{where}:{node.lineno}: imports {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in BANNED_MODULES:
                problems.append(f"{where}:{node.lineno}: imports from {node.module}")
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    calls = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Name, ast.Attribute)):
            continue
        name = _dotted(node, aliases)
        if name is None:
            continue
        call = calls.get(id(node))
        line = f"{where}:{node.lineno}"
        if name in ("eval", "exec", "builtins.eval", "builtins.exec") and (call or isinstance(node, ast.Attribute)):
            problems.append(f"{line}: calls {name}()")
        elif name == "torch.load":
            counts[name] += 1
            if call is None or not _keyword_is(call, "weights_only", True):
                problems.append(f"{line}: torch.load without weights_only=True")
        elif name == "numpy.load":
            counts[name] += 1
            if call is None or not _keyword_is(call, "allow_pickle", False):
                problems.append(f"{line}: np.load without allow_pickle=False")
        elif name.startswith("yaml.") and name[5:] in BANNED_YAML:
            problems.append(f"{line}: {name} (use yaml.safe_load)")
        elif name == "yaml.safe_load" and call is not None:
            counts[name] += 1
    return problems, counts


@pytest.mark.parametrize("snippet, flagged", [
    ("import pickle", "imports pickle"),
    ("import dill as d", "imports dill"),
    ("from joblib import load", "imports from joblib"),
    ("import cPickle", "imports cPickle"),
    ("import torch\ntorch.load('x')", "torch.load without"),
    ("import torch\ntorch.load('x', weights_only=False)", "torch.load without"),
    ("from torch import load\nload('x', map_location='cpu')", "torch.load without"),
    ("import torch as t\nf = t.load", "torch.load without"),
    ("import numpy as np\nnp.load('x')", "np.load without"),
    ("import numpy\nnumpy.load('x', allow_pickle=True)", "np.load without"),
    ("import numpy as np\nnp.load('x', **{'allow_pickle': True})", "np.load without"),
    ("import yaml\nyaml.load(s, Loader=yaml.Loader)", "yaml.load"),
    ("import yaml\nyaml.unsafe_load(s)", "yaml.unsafe_load"),
    ("from yaml import full_load\nfull_load(s)", "yaml.full_load"),
    ("eval('1')", "calls eval()"),
    ("exec('x = 1')", "calls exec()"),
    ("import builtins\nbuiltins.exec('x = 1')", "calls builtins.exec()"),
])
def test_the_scan_flags_each_unsafe_form(snippet, flagged):
    """The checker itself can fail: each unsafe form is reported."""
    problems, _ = scan(snippet)
    assert any(flagged in p for p in problems), problems


def test_the_scan_passes_safe_forms():
    """Safe loaders and ``model.eval()`` are not reported."""
    safe = ("import torch, yaml\nimport numpy as np\n"
            "torch.load(p, map_location='cpu', weights_only=True)\n"
            "np.load(p, allow_pickle=False)\nyaml.safe_load(t)\nmodel.eval()\nre.compile('x')\n")
    problems, counts = scan(safe)
    assert problems == [] and counts == {"torch.load": 1, "numpy.load": 1, "yaml.safe_load": 1}


def test_library_and_data_tools_load_nothing_unsafely():
    """Every module of proxytasks/ and data_tools/: no pickle-family import, torch.load
    only with weights_only=True, np.load only with allow_pickle=False, YAML only through
    safe_load, no eval/exec."""
    every = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*") if p.is_file()
                   and "__pycache__" not in p.parts)
    files = [p for p in every if p.suffix == ".py"]
    # besides Python, only the naming app's page assets (served as they are, never loaded as data)
    others = [p for p in every if p.suffix != ".py"]
    assert all(p.parent == ROOT / "proxytasks" / "app" / "static" and p.suffix in (".html", ".css", ".js")
               for p in others), others
    assert len(files) >= 20
    problems: list[str] = []
    totals = {"torch.load": 0, "numpy.load": 0, "yaml.safe_load": 0}
    for path in files:
        found, counts = scan(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
        problems += found
        totals = {k: totals[k] + counts[k] for k in totals}
    assert problems == []
    # the scan saw the loaders the toolkit really uses (it is not vacuous)
    assert totals["torch.load"] >= 3 and totals["numpy.load"] >= 3 and totals["yaml.safe_load"] >= 2


# --------------------------------------------------------------------------- hostile files
class Payload:
    """Unpickled, it creates the file ``marker``: stands for any code an attacker wants run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _pickle_formats(marker: Path) -> dict[str, bytes]:
    """The payload as a raw pickle, as a torch.save zip, and wrapped as a checkpoint."""
    import io

    out = {"raw": pickle.dumps(Payload(marker), protocol=2)}
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": Payload(marker)}}, buf)
    out["torch-zip"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "code": Payload(marker)}, buf, _use_new_zipfile_serialization=False)
    out["torch-legacy"] = buf.getvalue()
    return out


def test_the_payload_is_live(tmp_path):
    """Control: plain unpickling of these bytes does run the code."""
    for kind, data in _pickle_formats(tmp_path / "ran").items():
        (tmp_path / "ran").unlink(missing_ok=True)
        if kind == "raw":
            pickle.loads(data)
        else:
            (tmp_path / "x.pth").write_bytes(data)
            torch.load(tmp_path / "x.pth", weights_only=False)
        assert (tmp_path / "ran").exists(), kind


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_pickled_code_as_weights_is_refused(tmp_path, suffix):
    """load_state_dict_file refuses every pickle form with a ProxytasksError; nothing runs."""
    marker = tmp_path / "ran"
    for kind, data in _pickle_formats(marker).items():
        path = tmp_path / f"{kind}{suffix}"
        path.write_bytes(data)
        with pytest.raises(ProxytasksError, match="could not be read"):
            load_state_dict_file(path)
        assert not marker.exists(), f"{kind}{suffix}: the payload ran"


def _tiny_run_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A 4-face manifest with real crops and its rule pairs."""
    faces = []
    for k, (frame, track) in enumerate([(0, "A"), (0, "B"), (1, "A"), (1, "B")]):
        Image.new("RGB", (32, 32), (40 * k, 90, 160)).save(tmp_path / f"c{k}.png")
        faces.append(Face(id=f"f{k}", media="v", frame=frame, track=track, crop=f"c{k}.png"))
    manifest = Manifest(faces, tmp_path).write(tmp_path / "m.jsonl")
    RuleSet("same-frame,same-track").apply(Manifest.read(manifest)).save(tmp_path / "pairs.npz")
    return manifest, tmp_path / "pairs.npz"


def test_train_refuses_pickled_weights_with_exit_2(tmp_path):
    """`proxytasks train --weights evil.pth`: exit 2, the file named, the code never runs."""
    manifest, pairs = _tiny_run_inputs(tmp_path)
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(_pickle_formats(marker)["torch-zip"])
    res = CliRunner().invoke(cli, ["-q", "train", str(manifest), str(pairs), "-o", str(tmp_path / "run"),
                                   "--weights", str(evil), "--steps", "1", "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert f"weights file {evil}" in res.output and "Traceback" not in res.output
    assert not marker.exists()
    assert not (tmp_path / "run" / "model.safetensors").exists()


def _embeddings_file(path: Path, **override) -> Path:
    """An embeddings .npz as Embeddings.save writes it, with some arrays replaced."""
    good = Embeddings(np.eye(2, 3, dtype=np.float32), ["a", "b"], {})
    good.save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(override)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


@pytest.mark.parametrize("field", ["vectors", "ids", "meta"])
def test_embeddings_with_an_object_array_are_refused(tmp_path, field):
    """An .npz whose array holds pickled objects: Embeddings.load refuses it, nothing runs."""
    marker = tmp_path / "ran"
    path = _embeddings_file(tmp_path / "e.npz", **{field: np.array([Payload(marker)], dtype=object)})
    Embeddings.load(_embeddings_file(tmp_path / "ok.npz"))  # the untouched file loads
    with pytest.raises(ProxytasksError, match="not a proxytasks embeddings file"):
        Embeddings.load(path)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as z:  # control: a careless loader runs it
        z[field]
    assert marker.exists()


def test_pairs_with_an_object_array_are_refused(tmp_path):
    """The same for a pairs file: PairSet.load refuses it, nothing runs."""
    marker = tmp_path / "ran"
    _, pairs = _tiny_run_inputs(tmp_path)
    with np.load(pairs, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["i"] = np.array([Payload(marker)], dtype=object)
    with open(pairs, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(ProxytasksError, match="not a proxytasks pairs file"):
        PairSet.load(pairs)
    assert not marker.exists()


class Marker:
    """Built by an unsafe YAML loader from ``!!python/object``, it creates ``path``."""

    def __setstate__(self, state):
        open(state["path"], "w").close()


YAML_PAYLOADS = {
    "object/apply": "!!python/object/apply:builtins.open [{m}, w]",
    "object": "!!python/object:tests.test_safe_loading.Marker {{path: {m}}}",
    "object/new": "!!python/object/new:tests.test_safe_loading.Marker {{state: {{path: {m}}}}}",
}


@pytest.mark.parametrize("kind", sorted(YAML_PAYLOADS))
@pytest.mark.parametrize("where", ["variable", "step option"])
def test_recipe_with_python_tags_exits_2(tmp_path, kind, where):
    """`proxytasks run` on a recipe with a !!python tag: exit 2 naming the file; nothing runs."""
    marker = tmp_path / "ran"
    tag = YAML_PAYLOADS[kind].format(m=json.dumps(str(marker)))
    yaml.unsafe_load(tag)  # control: an unsafe loader runs it
    assert marker.exists()
    marker.unlink()
    recipe = tmp_path / "r.yaml"
    if where == "variable":
        recipe.write_text(f"out: {tmp_path / 'o'}\nx: {tag}\nsteps:\n  - synth: {{out: '{{out}}/ep'}}\n")
    else:
        recipe.write_text(f"out: {tmp_path / 'o'}\nsteps:\n  - synth: {{out: {tag}}}\n")
    res = CliRunner().invoke(cli, ["-q", "run", str(recipe), "--dry-run"])
    assert res.exit_code == 2, res.output
    assert f"{recipe}: not a readable YAML recipe" in res.output and "Traceback" not in res.output
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["!!python/object/apply:builtins.open [{m}, w]", "[unclosed"])
def test_set_override_with_python_tag_or_bad_yaml_exits_2(tmp_path, value):
    """`proxytasks run --set x=VALUE` parses VALUE safely; bad YAML is exit 2, not a traceback."""
    marker = tmp_path / "ran"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"out: {tmp_path / 'o'}\nsteps:\n  - synth: {{out: '{{out}}/ep'}}\n")
    res = CliRunner().invoke(cli, ["-q", "run", str(recipe), "--dry-run", "--set",
                                   "x=" + value.format(m=json.dumps(str(marker)))])
    assert res.exit_code == 2, res.output
    assert "--set" in res.output and "Traceback" not in res.output
    assert not marker.exists()


# --------------------------------------------------------------------------- --root
@pytest.fixture
def confined(tmp_path):
    """A root folder with one face inside, one beside it, and a link leading out."""
    from proxytasks.manifest import confine_to

    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    for folder in (root, elsewhere):
        Image.new("RGB", (32, 32), (90, 60, 30)).save(folder / "face.png")
    (root / "link.png").symlink_to(elsewhere / "face.png")
    yield root, elsewhere
    confine_to(None)


def _one_face(root: Path, crop: str) -> Path:
    path = root / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "media": "p", "crop": crop}) + "\n")
    return path


@pytest.mark.parametrize("crop", ["../elsewhere/face.png", "ABS", "link.png", "./../elsewhere/face.png"])
def test_root_refuses_paths_that_escape(confined, crop):
    root, elsewhere = confined
    crop = str(elsewhere / "face.png") if crop == "ABS" else crop
    manifest = _one_face(root, crop)
    assert CliRunner().invoke(cli, ["validate", str(manifest)]).exit_code == 0  # no --root: allowed
    res = CliRunner().invoke(cli, ["--root", str(root), "validate", str(manifest)])
    assert res.exit_code == 2 and "m.jsonl:1: field 'crop'" in res.output and "outside the root" in res.output
    res = CliRunner().invoke(cli, ["validate", str(manifest)], env={"PROXYTASKS_ROOT": str(root)})
    assert res.exit_code == 2 and "outside the root" in res.output


def test_root_accepts_paths_inside_and_guards_every_read(confined):
    from proxytasks.manifest import confine_to

    root, elsewhere = confined
    res = CliRunner().invoke(cli, ["--root", str(root), "validate", str(_one_face(root, "./face.png"))])
    assert res.exit_code == 0, res.output
    assert CliRunner().invoke(cli, ["--root", str(root / "nowhere"), "validate",
                                    str(_one_face(root, "face.png"))]).exit_code == 2
    confine_to(root)
    built = Manifest([Face(id="b", media="p", crop="../elsewhere/face.png")], root)  # made in code, not read
    with pytest.raises(ProxytasksError, match="outside the root"):
        built.resolve(built.faces[0].crop)
    assert built.resolve("face.png") == root / "face.png"
    confine_to(None)
    assert built.resolve(built.faces[0].crop).is_file()
