"""Training on several processes (torchrun, gloo on CPU): the shards of each step's loss
add up to the one-process loss, and a 2-process run gives the one-process model."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from proxytasks import distributed
from proxytasks.errors import ProxytasksError
from proxytasks.losses import LOSSES, make_loss


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    emb = torch.nn.functional.normalize(torch.randn(24, 8, generator=torch.Generator().manual_seed(seed)), dim=1)
    a1, p = rng.integers(0, 24, 40), rng.integers(0, 24, 40)
    a2, n = rng.integers(0, 24, 60), rng.integers(0, 24, 60)
    w = (rng.random(40) * (rng.random(40) > 0.2), rng.random(60))  # some zero weights
    return emb, (a1, p, a2, n), w


@pytest.mark.parametrize("name", sorted(LOSSES.names()))
@pytest.mark.parametrize("world", [2, 3])
def test_the_shards_of_a_loss_sum_to_the_loss_and_its_gradient(name, world):
    loss_fn = make_loss(name)
    emb, tup, w = _batch(world)
    whole_emb = emb.clone().requires_grad_(True)
    whole = loss_fn(whole_emb, tup, w)
    whole.backward()
    parts, grad = [], torch.zeros_like(emb)
    for rank in range(world):
        e = emb.clone().requires_grad_(True)
        part = loss_fn(e, tup, w, shard=(rank, world))
        part.backward()
        parts.append(part.item())
        grad += e.grad
    assert sum(parts) == pytest.approx(whole.item(), rel=1e-5, abs=1e-7)
    assert torch.allclose(grad, whole_emb.grad, atol=1e-6)
    assert sum(p != 0 for p in parts) >= 2  # the terms really are split, not all on one rank


def test_a_bad_shard_is_refused():
    emb, tup, w = _batch(0)
    with pytest.raises(ProxytasksError, match="shard"):
        make_loss("track-supcon")(emb, tup, w, shard=(2, 2))


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.context("cpu")
    assert (ctx.rank, ctx.world, ctx.main, ctx.shard) == (0, 1, True, None)
    rows = np.arange(6, dtype=np.float16).reshape(3, 2)
    assert distributed.gather_rows(rows, ctx) is rows and distributed.broadcast("x", ctx) == "x"
    assert distributed.any_rank(True, ctx) and distributed.total(2.5, ctx) == 2.5
    blocks = [distributed.block(10, distributed.Context(r, 3)) for r in range(3)]
    assert np.array_equal(np.concatenate(blocks), np.arange(10)) and [len(b) for b in blocks] == [4, 3, 3]


def test_a_half_described_process_group_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ProxytasksError, match="torchrun"):
        distributed.context("cpu")


def _train(args, tmp_path, out, procs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, "-m", "proxytasks"] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
         "-m", "proxytasks"]
    res = subprocess.run(launcher + ["-q", "train", *args, "-o", str(out)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _same_up_to_noise(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Equal but for float addition order: AdamW's normalised step can move a coordinate
    whose gradient is ~0 by a few 1e-5, so: at most 1e-4 anywhere, 1e-6 almost everywhere."""
    d = (a - b).abs()
    assert d.max() <= 1e-4 and (d > 1e-6).float().mean() < 0.01, (what, d.max().item())


@pytest.mark.slow
def test_torchrun_two_processes_train_the_same_model_as_one(tmp_path, small_episode):
    """2 processes (gloo): trunk features by blocks of faces (the seeded augmented view
    follows the face) equal one process's up to float16 rounding; on the same features,
    loss terms split by pairs give one process's model, log and checkpoint; one set of
    files is written and one report printed."""
    folder, _, _ = small_episode
    args = [str(folder / "tracked.jsonl"), str(folder / "pairs.npz"), "--steps", "60", "--dim", "32",
            "--device", "cpu", "--init", "random"]
    one, two, again = tmp_path / "one", tmp_path / "two", tmp_path / "again"
    _train(args, tmp_path, one, 1)
    res = _train(args, tmp_path, two, 2)
    assert res.stdout.count("wrote ") == 1  # rank 0 reports, rank 1 stays silent
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    with np.load(one / "features.npz") as a, np.load(two / "features.npz") as b:
        fa, fb = a["features"].astype(np.float32), b["features"].astype(np.float32)
    assert fa.shape == fb.shape and fa.shape[0] == 3  # plain, flip, augment
    assert np.abs(fa - fb).max() <= 2e-3 and (fa == fb).mean() > 0.999  # batch boundaries move a few ulps
    again.mkdir()
    shutil.copy(two / "features.npz", again / "features.npz")
    _train(args, tmp_path, again, 1)  # one process on the 2-process run's features
    wa, wb = load_file(str(again / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        _same_up_to_noise(wa[k], wb[k], k)
    ca, cb = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (again, two))
    assert ca["step"] == cb["step"] == 60
    for k in ca["head"]:
        _same_up_to_noise(ca["head"][k], cb["head"][k], k)
    la, lb = ([json.loads(x) for x in (p / "train_log.jsonl").read_text().splitlines()] for p in (again, two))
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(8, 60, 8)) + [60]  # 8 validations
    for ra, rb in zip(la, lb):  # the logged loss is the whole batch's (the sum of the ranks' shares)
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4) and rb["val_auc"] == pytest.approx(ra["val_auc"])
    cfg = json.loads((two / "config.json").read_text())
    assert cfg["train"]["processes"] == 2 and "processes" not in json.loads((again / "config.json").read_text())["train"]
