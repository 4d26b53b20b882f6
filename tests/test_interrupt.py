"""Kill `train`, `embed` and `ingest` with SIGKILL at random moments, then resume.

Each command runs once uninterrupted (the reference). Then, for several seeds, it is
started again in a fresh folder and killed (SIGKILL) after a seeded random delay between
0.3 s and the reference's duration (start-up takes much of it); one more case per
command waits for its first resumable piece of work (a checkpoint, a chunk, a finished
media) and kills at a seeded random moment in the rest of the reference's run time
(mid-training, mid-chunk, mid-video while frames and crops are written, mid-save). After each kill every file present under its final name must load whole;
the rerun (with ``--resume``; the default for ingest) must end with results equal to
the reference: the same weights, the same float32 vectors, the same manifest and crops.

The cases of a command run two at a time (their subprocesses are mostly start-up) and
every subprocess uses one thread, the reference included.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from proxytasks.embed import Embeddings
from proxytasks.embedder import Embedder
from proxytasks.manifest import Manifest

pytestmark = pytest.mark.slow  # SIGKILL cycles: minutes of subprocesses

SEEDS = (0, 1, 2)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TEMP = re.compile(r"^\..+\.tmp$")  # proxytasks.fileio.atomic_write's temporary files
TRAIN = ["--steps", "300", "--lr", "0.01", "--dim", "16", "--input-size", "32", "--workers", "0", "--device", "cpu"]
EMBED = ["--batch-size", "8", "--chunk-size", "16", "--workers", "0", "--device", "cpu"]
INGEST = ["--detector", "haar", "--min-face", "24"]


# --------------------------------------------------------------------------- helpers
def command(args: list, log: Path) -> float:
    """Run ``python -m proxytasks -q ARGS`` to its end (exit 0); its duration in seconds."""
    start = time.perf_counter()
    with open(log, "ab") as fh:
        rc = subprocess.call([sys.executable, "-m", "proxytasks", "-q", *map(str, args)], stdout=fh,
                             stderr=subprocess.STDOUT, env=ENV, timeout=600)
    assert rc == 0, log.read_text(errors="replace")[-3000:]
    return time.perf_counter() - start


def reference(args: list, log: Path, ready: Callable[[], bool]) -> tuple[float, float]:
    """Run the uninterrupted command (exit 0): its duration, and the seconds until
    ``ready()`` first held (its first resumable piece of work was written)."""
    start, first = time.perf_counter(), None
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "proxytasks", "-q", *map(str, args)], stdout=fh,
                                stderr=subprocess.STDOUT, env=ENV)
        try:
            while proc.poll() is None:
                if first is None and ready():
                    first = time.perf_counter() - start
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    duration = time.perf_counter() - start
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    assert first is not None, f"{args[0]}: no resumable piece of work was seen while it ran"
    return duration, first


def killed(args: list, log: Path, delay: float | None = None, ready: Callable[[], bool] | None = None,
           after: float = 0.0) -> str:
    """Start the command and SIGKILL it after ``delay`` seconds, or ``after`` seconds once
    ``ready()`` holds; what happened (for failure messages)."""
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "proxytasks", "-q", *map(str, args)], stdout=fh,
                                stderr=subprocess.STDOUT, env=ENV)
        start = time.perf_counter()
        try:
            if ready is None:
                time.sleep(delay)
            else:
                while proc.poll() is None and not ready() and time.perf_counter() - start < 300:
                    time.sleep(0.01)
                time.sleep(after)
            finished = proc.poll() is not None
            when = time.perf_counter() - start
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return f"{'finished before the kill' if finished else 'killed'} after {when:.2f} s (exit {proc.returncode})"


def final_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not TEMP.match(p.name))


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if TEMP.match(p.name))


def assert_whole(folder: Path, context: str) -> list[Path]:
    """Every file under its final name in ``folder`` loads whole; returns them."""
    files = final_files(folder)
    for p in files:
        name = p.name
        try:
            if name.endswith(".jsonl"):
                for line in p.read_text(encoding="utf-8").splitlines():
                    json.loads(line)
            elif name.endswith(".json"):
                json.loads(p.read_text(encoding="utf-8"))
            elif name.endswith(".npz"):
                with np.load(p, allow_pickle=False) as z:
                    for k in z.files:
                        z[k]
            elif name.endswith(".pt"):
                torch.load(p, weights_only=True)
            elif name.endswith(".safetensors"):
                load_file(str(p))
            elif name.endswith((".jpg", ".png")):
                with Image.open(p) as im:
                    im.load()
            else:
                raise AssertionError("an output of a kind this test does not know; teach assert_whole")
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            raise AssertionError(f"{context}: {p} is not whole: {type(e).__name__}: {e}") from None
    return files


def inventory(folder: Path) -> str:
    """What a kill left: the number of whole files by kind, and of temporary files."""
    if not folder.is_dir():
        return "nothing"
    kinds: dict[str, int] = {}
    for p in final_files(folder):
        kind = p.relative_to(folder).parts[0]  # a file, or the folder of the top it lies in
        kinds[kind] = kinds.get(kind, 0) + 1
    return (", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) or "no file") + \
        f"; {len(temporaries(folder))} temporary"


def tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside a loaded checkpoint, by its path of keys."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def assert_equal_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {different[:5]} differ"


def run_cases(one: Callable[[str, int | str], None], name: str, *moments: str) -> None:
    """``one(label, how)`` for each seed (a random moment) and each named moment, two at
    a time; the first failure is raised."""
    cases = [(f"{name}-seed{s}", s) for s in SEEDS] + [(f"{name}-after-{m}", m) for m in moments]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(one, label, how) for label, how in cases]:
            future.result()


def delay(label: str, duration: float) -> float:
    """A seeded random moment between 0.3 s and ``duration``, its own for each case label."""
    return random.Random(label).uniform(0.3, max(duration, 0.6))


def later(label: str, duration: float, first: float) -> float:
    """A seeded random moment in the rest of the run once its first piece of work is done."""
    return random.Random(label).uniform(0.0, max(duration - first, 0.05))


def kill_case(args: list, log: Path, label: str, how: int | str, ready: Callable[[], bool],
              timing: tuple[float, float], folder: Path) -> str:
    """Run ``args`` and SIGKILL it: at a seeded random delay when ``how`` is a seed, else
    at a random moment after ``ready()`` first holds (``timing``: the reference's duration
    and when its first piece was done). Returns the case's description, printed with
    what ``folder`` holds."""
    duration, first = timing
    if isinstance(how, str):
        what = killed(args, log, ready=ready, after=later(label, duration, first))
    else:
        what = killed(args, log, delay(label, duration))
    context = f"{label} ({what})"
    print(context, inventory(folder), flush=True)
    return context


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(small_episode, tmp_path_factory):
    """The reference training run: (folder, (seconds, seconds to its first checkpoint), manifest, pairs)."""
    folder, _, _ = small_episode
    out = tmp_path_factory.mktemp("interrupt_train")
    manifest, pairs = folder / "tracked.jsonl", folder / "pairs.npz"
    times = reference(["train", manifest, pairs, "-o", out / "ref", *TRAIN], out / "ref.log",
                      lambda: (out / "ref" / "checkpoint.pt").is_file())
    return out / "ref", times, manifest, pairs


@pytest.fixture(scope="module")
def videos(small_episode, tmp_path_factory) -> Path:
    """Three short mpeg4 videos cut from the synthetic episode's frames (drawn faces)."""
    folder, _, _ = small_episode
    frames = sorted((folder / "ep" / "frames").glob("*.jpg"))
    media = tmp_path_factory.mktemp("interrupt_media") / "media"
    media.mkdir()
    for k, part in enumerate(np.array_split(np.arange(min(len(frames), 48)), 3)):
        with av.open(str(media / f"clip{k}.mp4"), "w") as out:
            stream = out.add_stream("mpeg4", rate=4)
            with Image.open(frames[0]) as im:
                stream.width, stream.height = im.size
            stream.pix_fmt = "yuv420p"
            for i in part:
                with Image.open(frames[i]) as im:
                    frame = av.VideoFrame.from_image(im.convert("RGB"))
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return media


# --------------------------------------------------------------------------- train
def test_train_killed_at_random_moments_resumes_to_the_same_weights(trained):
    ref, (duration, first), manifest, pairs = trained
    ref_model = load_file(str(ref / "model.safetensors"))
    ref_ckpt = tensors(torch.load(ref / "checkpoint.pt", weights_only=True))
    ref_log = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (ref / "train_log.jsonl").read_text().splitlines()]
    assert len(ref_log) == 8  # train.EVALS validations; a checkpoint at the first, then every 30 s and at the end
    assert json.loads((ref / "config.json").read_text())["train"]["selected"] == "trained"  # a head to compare

    def one(label: str, how: int | str) -> None:
        run = ref.parent / label
        args = ["train", manifest, pairs, "-o", run, *TRAIN]
        log = ref.parent / f"{label}.log"
        context = kill_case(args, log, label, how, lambda: (run / "checkpoint.pt").is_file(), (duration, first), run)
        if run.is_dir():
            files = assert_whole(run, context)
            if {run / "config.json", run / "model.safetensors"} <= set(files):
                Embedder.load(run)
        command([*args, "--resume"], log)
        assert_equal_tensors(load_file(str(run / "model.safetensors")), ref_model, f"{context}: model.safetensors")
        assert_equal_tensors(tensors(torch.load(run / "checkpoint.pt", weights_only=True)), ref_ckpt,
                             f"{context}: checkpoint.pt")
        log_rows = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                    for line in (run / "train_log.jsonl").read_text().splitlines()]
        assert log_rows == ref_log, context

    run_cases(one, "train", "checkpoint")


# --------------------------------------------------------------------------- embed
def test_embed_killed_at_random_moments_resumes_to_the_same_vectors(trained):
    model, _, manifest, _ = trained
    out = model.parent / "embed"
    out.mkdir()
    duration, first = reference(["embed", model, manifest, "-o", out / "ref.npz", *EMBED], out / "ref.log",
                                lambda: any(final_files(out / "ref.npz.partial")) if out.is_dir() else False)
    ref = Embeddings.load(out / "ref.npz")
    assert not (out / "ref.npz.partial").exists() and not temporaries(out)
    n_chunks = -(-len(ref.ids) // 16)

    def one(label: str, how: int | str) -> None:
        folder = out / label
        target = folder / "emb.npz"
        partial = folder / "emb.npz.partial"
        args = ["embed", model, manifest, "-o", target, *EMBED]
        log = out / f"{label}.log"
        context = kill_case(args, log, label, how, lambda: partial.is_dir() and any(final_files(partial)),
                            (duration, first), folder)
        if folder.is_dir():
            files = assert_whole(folder, context)
            if target in files:
                Embeddings.load(target)
            if how == "chunk" and not target.is_file():
                assert 0 < len(final_files(partial)) <= n_chunks, context
        command([*args, "--resume"], log)
        got = Embeddings.load(target)
        assert got.ids == ref.ids and got.vectors.dtype == np.float32, context
        assert np.array_equal(got.vectors, ref.vectors), f"{context}: vectors differ"
        assert not partial.exists() and not temporaries(folder), context

    run_cases(one, "embed", "chunk")


@pytest.fixture
def one_thread():
    """Torch on one thread in this process, as in the subprocesses (two OpenMP threads on
    a busy 2-core machine can be ten times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_chunks_change_no_value_and_only_matching_chunks_are_reused(trained, tmp_path, one_thread):
    """In-process: chunking (with chunks of whole batches) gives the very values of one
    pass; --resume reuses a chunk only under its own key; without it, the sidecar is
    replaced whatever it holds."""
    from proxytasks.embed import _chunk_path, embed_manifest, embed_to_file, partial_folder

    model_dir, _, manifest_path, _ = trained
    model, manifest = Embedder.load(model_dir), Manifest.read(manifest_path)
    manifest = Manifest(manifest.faces[:60], manifest.root)  # enough for 4 chunks of 16
    whole = embed_manifest(model, manifest, batch_size=8, progress=False).vectors
    out = tmp_path / "emb.npz"
    partial = partial_folder(out)
    for chunk, batch in ((16, 8), (10, 4), (1000, 8)):  # 10 faces at batch 4: chunks of 12
        got = embed_manifest(model, manifest, batch_size=batch, progress=False, partial=partial, chunk_size=chunk)
        ref = whole if batch == 8 else embed_manifest(model, manifest, batch_size=batch, progress=False).vectors
        assert np.array_equal(got.vectors, ref), (chunk, batch)
    assert [p.name for p in partial.iterdir()] == [_chunk_path(partial, 0, len(manifest)).name]  # replaced
    embed_manifest(model, manifest, batch_size=8, progress=False, partial=partial, chunk_size=16)
    first, second = _chunk_path(partial, 0, 16), _chunk_path(partial, 16, 32)
    with np.load(first, allow_pickle=False) as z:
        key = str(z["key"])
        features = z["features"]
    # The same key over other values: --resume takes it (so it does reuse), no --resume does not.
    np.savez(first, features=features[::-1].copy(), key=np.array(key))
    second.write_bytes(b"PK\x03\x04 cut short")  # a damaged chunk is recomputed
    tampered = embed_manifest(model, manifest, batch_size=8, progress=False, partial=partial, chunk_size=16,
                              resume=True).vectors
    assert not np.array_equal(tampered[:16], whole[:16]) and np.array_equal(tampered[16:], whole[16:])
    got = embed_to_file(model, manifest, out, batch_size=8, progress=False, chunk_size=16)  # no --resume
    assert np.array_equal(got.vectors, whole) and np.array_equal(Embeddings.load(out).vectors, whole)
    assert not partial.exists()
    # A chunk of another model (another key) under a name this run uses is not reused.
    partial.mkdir()
    np.savez(first, features=features[::-1].copy(), key=np.array(json.dumps({"model": "another"})))
    got = embed_to_file(model, manifest, out, batch_size=8, progress=False, chunk_size=16, resume=True)
    assert np.array_equal(got.vectors, whole) and not partial.exists()


# --------------------------------------------------------------------------- ingest
def manifest_records(path: Path) -> list[dict]:
    Manifest.read(path)  # whole, and every image and crop it names opens
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ingest_killed_at_random_moments_resumes_to_the_same_manifest(videos, tmp_path):
    ref_out = tmp_path / "ref" / "faces.jsonl"
    duration, first = reference(["ingest", videos, "-o", ref_out, *INGEST], tmp_path / "ref.log",
                                lambda: any((tmp_path / "ref" / "faces.jsonl.parts").glob("*.json")))
    ref = manifest_records(ref_out)
    assert {r["media"].rsplit("/", 1)[-1] for r in ref} == {f"clip{k}.mp4" for k in range(3)}
    assert not temporaries(tmp_path / "ref")

    def one(label: str, how: int | str) -> None:
        folder = tmp_path / label
        out = folder / "faces.jsonl"
        args = ["ingest", videos, "-o", out, *INGEST]
        log = tmp_path / f"{label}.log"
        context = kill_case(args, log, label, how, lambda: any((folder / "faces.jsonl.parts").glob("*.json")),
                            (duration, first), folder)
        if folder.is_dir():
            assert_whole(folder, context)
            if out.is_file():
                manifest_records(out)
        command(args, log)
        if how == "media":  # the finished media was taken from its record
            assert int(re.findall(r"\((\d+) reused\)", log.read_text())[-1]) >= 1, context
        got = manifest_records(out)
        assert got == ref, f"{context}: the manifests differ"
        for rec in got:
            for field in ("image", "crop"):
                assert (folder / rec[field]).read_bytes() == (ref_out.parent / rec[field]).read_bytes(), \
                    f"{context}: {rec[field]} differs"
        assert not temporaries(folder), f"{context}: {temporaries(folder)}"

    run_cases(one, "ingest", "media")
