"""Shared output format of the benchmarks: one JSON object per line with fixed keys."""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def emit(bench: str, metric: str, value: float | None, unit: str, peer: str, peer_value: float | None,
         ratio: float | None, target: str, met: bool, **extra) -> dict:
    """Print and return one result line (ratio: how many times better than the peer);
    ``extra``: keys a script adds after the fixed ones (how it measured: calls, threads...)."""
    row = {"bench": bench, "metric": metric, "value": value, "unit": unit, "peer": peer,
           "peer_value": peer_value, "ratio": ratio, "target": target, "met": bool(met), **extra}
    print(json.dumps(row), flush=True)
    return row


def orl_episode_benchmark(doc: str, prefix: str, **options) -> dict:
    """Parse the episode options of a benchmark script (``doc``: its docstring), render a
    synthetic episode of real ORL faces and run ``proxytasks benchmark`` on it with
    ``options``; returns the metrics."""
    import argparse
    import logging
    import tempfile

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--identities", type=int, default=10)
    ap.add_argument("--shots", type=int, default=20, help="shots of the episode (scenes), not names")
    ap.add_argument("--time-budget", type=float, default=120)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from data_tools.importers import import_folders
    from data_tools.synthetic import make_episode
    from proxytasks.benchmark import run_benchmark

    orl = SHARED_DATA / "orl_faces"
    if not orl.is_dir():
        raise SystemExit(f"needs {orl} (see shared/data/README.md)")
    out = args.out or Path(tempfile.mkdtemp(prefix=prefix))
    ids = import_folders(orl, out / "orl.jsonl")
    manifest = make_episode(out / "episode", ids, n_identities=args.identities, n_shots=args.shots,
                            seed=args.seed, progress=False)
    return run_benchmark(manifest, out / "benchmark", time_budget=args.time_budget, shots=(1, 5),
                         repeats=args.repeats, seed=0, progress=False, **options)


# --------------------------------------------------------------------------- measuring
def machine() -> str:
    """CPU model, cores and memory, for the README table."""
    import os
    import platform

    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {mem:.0f} GiB"


def load() -> float:
    """The 1-minute load average (other jobs on the same cores inflate the times)."""
    import os

    return round(os.getloadavg()[0], 2)


def log(*parts) -> None:
    """A progress or context line on stderr (stdout holds only the JSON result lines)."""
    print(*parts, file=sys.stderr, flush=True)


def wait_for_quiet(max_load: float = 0.7, max_wait: float = 0.0) -> float:
    """Wait up to ``max_wait`` seconds for the 1-minute load to fall below ``max_load``;
    returns the load when measuring starts (logged)."""
    import time

    end = time.monotonic() + max_wait
    while load() > max_load and time.monotonic() < end:
        time.sleep(5)
    value = load()
    log(f"load average at start: {value}" + (" (other jobs on the cores: times inflated)" if value > max_load else ""))
    return value


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(argv: list[str], env: dict | None = None, timeout: float | None = None,
              memory_gb: float | None = None, sample=None) -> tuple[int, float, float, str]:
    """Run ``argv`` as a child process; returns (exit code, wall seconds, the child's own
    peak RSS in MiB from ``wait4``, its stdout). The child's stderr passes through. Past
    ``timeout`` seconds the child is killed (exit code -9); ``memory_gb`` caps its address
    space (an allocation past it raises MemoryError there). ``sample(pid)`` is called every
    0.2 s while the child runs (e.g. to poll its memory)."""
    import os
    import resource
    import signal
    import subprocess
    import threading
    import time

    start = time.perf_counter()
    def limit() -> None:
        if memory_gb:
            cap = int(memory_gb * 1024 ** 3)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=REPO, preexec_fn=limit)  # noqa: PLW1509  no thread runs yet
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if timeout is not None and time.perf_counter() - start > timeout:
            os.kill(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            break
        if sample is not None:
            sample(proc.pid)
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024, b"".join(chunks).decode()


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB of process ``pid`` and all its descendants now, from /proc; PSS
    shares each shared page among the processes mapping it, so the sum does not count a
    library twice (DataLoader workers)."""
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, rss, pss = [pid], 0.0, 0.0
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except OSError:
            continue
    return rss, pss


def child_result(out: str) -> dict:
    """The last JSON line a child printed."""
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"the child printed no result: {out[-500:]!r}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- synthetic inputs
def face_columns(n_faces: int = 1_000_000, n_frames: int = 200_000, n_tracks: int = 20_000, n_media: int = 100,
                 miss: float = 0.03, seed: int = 0, shots: bool = False):
    """Where faces come from, TV-like, at exact sizes: ``(media, frame, track)`` int64 arrays
    (and the shot of each face with ``shots``).

    Shots (about ``n_tracks / 6.4`` of them, lengths multinomial around the mean) each hold
    one or more people; every person is one track covering 60-100% of the shot's frames
    (the first person of a shot all of it, so every frame has a face), then ``miss`` of the
    other detections are dropped at random (missed detections) to leave ``n_faces`` faces.
    Shots are spread evenly over ``n_media`` videos, frame numbers restart in each.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    coverage = 0.8
    n_shots = int(np.clip(round(n_tracks * n_frames * coverage * (1 - miss) / max(n_faces, 1)), 1,
                          min(n_tracks, n_frames)))
    people = 1 + rng.multinomial(n_tracks - n_shots, np.full(n_shots, 1 / n_shots))
    length = 1 + rng.multinomial(n_frames - n_shots, np.full(n_shots, 1 / n_shots))
    shot_start = np.r_[0, np.cumsum(length)[:-1]]
    tshot = np.repeat(np.arange(n_shots), people)
    first = np.r_[True, tshot[1:] != tshot[:-1]]
    span = length[tshot]
    u = np.where(first, 1.0, rng.uniform(0.6, 1.0, n_tracks))
    want = n_faces / (1 - miss)
    for _ in range(30):  # scale the covers so that about n_faces / (1 - miss) detections exist
        cover = np.clip(np.round(span * u), 1, span).astype(np.int64)
        if abs(cover.sum() - want) < 1e-3 * want:
            break
        u = np.where(first, 1.0, np.clip(u * (want - cover[first].sum()) / max(cover[~first].sum(), 1), 0, 1))
    start = shot_start[tshot] + (rng.random(n_tracks) * (span - cover + 1)).astype(np.int64)
    total = int(cover.sum())
    track = np.repeat(np.arange(n_tracks), cover)
    frame = np.repeat(start, cover) + np.arange(total) - np.repeat(np.cumsum(cover) - cover, cover)
    droppable = np.flatnonzero(~first[track])
    n_drop = min(max(total - n_faces, 0), len(droppable))
    keep = np.ones(total, bool)
    keep[rng.choice(droppable, n_drop, replace=False)] = False
    frame, track = frame[keep], track[keep]
    media = tshot[track] * n_media // n_shots
    media_start = np.zeros(n_media, np.int64)
    first_shot = np.searchsorted(np.arange(n_shots) * n_media // n_shots, np.arange(n_media))
    media_start[:] = shot_start[np.minimum(first_shot, n_shots - 1)]
    out = media.astype(np.int64), frame - media_start[media], track.astype(np.int64)
    return out + (tshot[track].astype(np.int64),) if shots else out


def columns_manifest(media, frame, track):
    """A :class:`proxytasks.manifest.Manifest` of these faces (crops named, never read)."""
    from proxytasks.manifest import Face, Manifest

    names = [f"m{m:03d}" for m in range(int(media.max(initial=0)) + 1)]
    return Manifest([Face(id=f"f{i}", media=names[m], frame=f, track=f"t{t}", crop="c.jpg")
                     for i, (m, f, t) in enumerate(zip(media.tolist(), frame.tolist(), track.tolist()))])


def clustered_vectors(n: int, dim: int = 128, identities: int | None = None, track_size: float = 5.0,
                      people_per_shot: int = 4, seed: int = 0, spread: float = 1.0, shot_noise: float = 0.7,
                      track_noise: float = 0.6, face_noise: float = 0.5):
    """Synthetic face embeddings with known identities, tracks and co-occurrence.

    Identity centres are unit vectors drawn around 32 "looks" (a look plus ``spread`` of
    noise: people who resemble each other); faces come in tracks (geometric lengths, mean
    ``track_size``) of one person; ``people_per_shot`` consecutive tracks of different
    people share a shot, whose lighting (a random vector of norm ``shot_noise``) they all
    carry, so faces of different people in one shot look alike: the case cannot-links are
    for. Each track adds its own offset (norm ``track_noise``: pose, expression), each face
    its own (``face_noise``). Identity sizes are skewed (Pareto: a few main characters).
    With the defaults, the mean cosine is about 0.88 inside a track, 0.48 between tracks
    of one person in different shots, 0.23 between people sharing a shot.

    Returns ``(vectors float32 (n, dim) unit rows, identity (n,), track (n,), cannot (M, 2))``;
    ``cannot`` holds one face pair for each pair of tracks sharing a shot.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    identities = identities or max(2, n // 100)
    g = lambda *s: rng.standard_normal(s, dtype=np.float32) / np.float32(np.sqrt(dim))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    looks = unit(rng.standard_normal((32, dim), dtype=np.float32))
    centres = unit(looks[rng.integers(0, 32, identities)] + spread * g(identities, dim))
    weight = rng.pareto(1.5, identities) + 1.0
    lengths = rng.geometric(1.0 / max(track_size, 1.0), size=int(2 * n / max(track_size, 1.0)) + 16)
    ends = np.cumsum(lengths)
    n_tracks = int(np.searchsorted(ends, n)) + 1
    lengths = lengths[:n_tracks]
    lengths[-1] -= ends[n_tracks - 1] - n
    track_person = rng.choice(identities, n_tracks, p=weight / weight.sum())
    shot = np.arange(n_tracks) // people_per_shot
    for _ in range(people_per_shot):  # nobody twice in one shot
        dup = np.zeros(n_tracks, bool)
        for k in range(1, people_per_shot):
            dup[k:] |= (track_person[k:] == track_person[:-k]) & (shot[k:] == shot[:-k])
        if not dup.any():
            break
        track_person[dup] = rng.integers(0, identities, int(dup.sum()))
    lighting = shot_noise * g(int(shot.max()) + 1, dim)
    track_vec = centres[track_person] + lighting[shot] + track_noise * g(n_tracks, dim)
    track = np.repeat(np.arange(n_tracks), lengths)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 1 << 18):  # in blocks, to keep the temporaries small
        t = track[s:s + (1 << 18)]
        x[s:s + len(t)] = unit(track_vec[t] + face_noise * g(len(t), dim))
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    ta = np.concatenate([np.arange(n_tracks - k) for k in range(1, people_per_shot)])
    tb = np.concatenate([np.arange(k, n_tracks) for k in range(1, people_per_shot)])
    ok = (shot[ta] == shot[tb]) & (track_person[ta] != track_person[tb])
    cannot = np.stack([first[ta[ok]], first[tb[ok]]], 1).astype(np.int64)
    return x, track_person[track].astype(np.int64), track.astype(np.int64), cannot


def episode(identities: int = 20, shots: int = 40, seed: int = 1, fps: float = 8.0) -> Path:
    """A synthetic episode (``data_tools.synthetic.make_episode``) of real ORL faces when
    ``../shared/data/orl_faces`` is there, of drawn faces otherwise; cached under the
    system's temporary folder by its parameters. Returns the manifest path."""
    import tempfile

    from data_tools.synthetic import make_episode

    orl = SHARED_DATA / "orl_faces"
    kind = "orl" if orl.is_dir() else "drawn"
    out = Path(tempfile.gettempdir()) / "proxytasks_bench" / f"episode_{kind}_{identities}x{shots}_s{seed}_fps{fps:g}"
    manifest = out / "episode" / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    ids = None
    if kind == "orl":
        from data_tools.importers import import_folders

        out.mkdir(parents=True, exist_ok=True)
        ids = import_folders(orl, out / "orl.jsonl")
    log(f"rendering a {kind} episode ({identities} people, {shots} shots) in {out}")
    return make_episode(out / "episode", ids, n_identities=identities, n_shots=shots, seed=seed, fps=fps,
                        progress=False)
