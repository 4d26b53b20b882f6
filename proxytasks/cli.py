"""The ``proxytasks`` command line: thin click commands over the library functions.

Bad input raises :class:`~proxytasks.errors.ProxytasksError` in the library; here it
becomes ``Error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import click

from .errors import ProxytasksError

logger = logging.getLogger(__name__)


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


def _progress(ctx: click.Context) -> bool:
    return not (ctx.find_root().obj or {}).get("quiet", False)


def _echo_report(report: dict) -> None:
    """One indented ``key value`` line per entry, floats rounded."""
    width = max(map(len, report), default=0)
    for key, value in report.items():
        click.echo(f"  {key:<{width}} {round(value, 4) if isinstance(value, float) else value}")


def _overwrite_option(f):
    """``--overwrite``: replace an output that already holds results or a person's answers."""
    return click.option("--overwrite", is_flag=True,
                        help="Replace the output even if it already holds results (or a person's answers).")(f)


def _refuse(path: Path, what: str, how: str, overwrite: bool, holds: bool | None = None) -> None:
    from .fileio import refuse_overwrite

    refuse_overwrite(path, what, how, overwrite, holds)


def _run_holds(run: Path) -> str | None:
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


@click.group(cls=ProxytasksGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quiet", "-q", is_flag=True, help="No progress bars, warnings only.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.option("--root", type=click.Path(path_type=Path), default=None, envvar="PROXYTASKS_ROOT",
              help="Refuse manifest paths (crop, image) that resolve outside this folder [env PROXYTASKS_ROOT].")
@click.version_option(package_name="proxytasks")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: bool, root: Path | None) -> None:
    """proxytasks: free same/different labels from video structure, to name faces."""
    from .manifest import confine_to

    confine_to(root)
    ctx.ensure_object(dict)
    ctx.obj.setdefault("quiet", quiet)
    level = logging.DEBUG if verbose else logging.WARNING if ctx.obj["quiet"] else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports every CPU variant tried


main = cli


# --------------------------------------------------------------------------- manifest
@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--no-check-files", is_flag=True, help="Skip opening every image (faster).")
def validate(manifest: Path, no_check_files: bool) -> None:
    """Check MANIFEST against the face manifest contract and print a summary."""
    from .manifest import Manifest

    m = Manifest.read(manifest, check_files=not no_check_files)
    summary = m.summary()
    click.echo(f"{manifest}: valid")
    _echo_report(summary)


# --------------------------------------------------------------------------- import
@cli.group("import")
def import_() -> None:
    """Build a manifest from an existing dataset layout."""


def _report_import(m, out: Path) -> None:
    s = m.summary()
    click.echo(f"wrote {out}: {s['faces']} faces, {s['identities']} identities, {s['media']} media")


@import_.command("folders")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@_overwrite_option
def import_folders_cmd(root: Path, out: Path, overwrite: bool) -> None:
    """Identity folders: ROOT/<identity>/<image>, each image a face photo."""
    _refuse(out, "a manifest", "write elsewhere with -o", overwrite)
    from data_tools.importers import import_folders

    _report_import(import_folders(root, out), out)


@import_.command("pattern")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--regex", required=True, help="Regular expression with a named group 'identity' "
              "(and optionally 'frame', 'media'), searched in each file's relative path.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--recursive", is_flag=True, help="Look into subfolders too.")
@_overwrite_option
def import_pattern_cmd(root: Path, regex: str, out: Path, recursive: bool, overwrite: bool) -> None:
    """Flat files with the identity in the name, e.g. --regex '(?P<identity>subject\\d+)\\.'."""
    _refuse(out, "a manifest", "write elsewhere with -o", overwrite)
    from data_tools.importers import import_pattern

    _report_import(import_pattern(root, regex, out, recursive=recursive), out)


@import_.command("crops")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--media", default=None, help="Name of the video the crops come from (default: file prefix).")
@_overwrite_option
def import_crops_cmd(root: Path, out: Path, media: str | None, overwrite: bool) -> None:
    """Frame-indexed crops: ROOT/[<identity>/]<prefix>_<frame>_<k>.<ext>."""
    _refuse(out, "a manifest", "write elsewhere with -o", overwrite)
    from data_tools.importers import import_crops

    _report_import(import_crops(root, out, media=media), out)


@import_.command("detections")
@click.argument("table", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--image-template", default=None,
              help="Frame image path from {media}, {media_stem}, {frame}, e.g. 'frames/{media_stem}/{frame:06d}.jpg'.")
@_overwrite_option
def import_detections_cmd(table: Path, out: Path, image_template: str | None, overwrite: bool) -> None:
    """A detections table (CSV/TSV/JSONL: media, frame, x, y, w, h, score)."""
    _refuse(out, "a manifest", "write elsewhere with -o", overwrite)
    from data_tools.importers import import_detections

    _report_import(import_detections(table, out, image_template=image_template), out)


# --------------------------------------------------------------------------- ingest
@cli.command()
@click.argument("media", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--detector", default="mtcnn", show_default=True, help="mtcnn, haar (see bench/README.md).")
@click.option("--fps", type=float, default=None, help="Sample videos at this rate (frames/s).")
@click.option("--stride", type=int, default=None, help="Keep every N-th video frame.")
@click.option("--min-face", default=20, show_default=True,
              help="Smallest face side in pixels of the picture the detector sees (see --detect-size).")
@click.option("--threshold", type=float, default=None, help="Detector score threshold.")
@click.option("--no-crops", is_flag=True, help="Do not write the face crops cache.")
@click.option("--margin", default=0.2, show_default=True, help="Crop margin, a fraction of the box.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Reuse the media an earlier (even killed) run finished with the same settings; "
                   "--no-resume redoes them.")
@click.option("--detect-size", type=click.IntRange(0), default=540, show_default=True,
              help="The detector sees frames downscaled to this shorter side (0: full resolution); "
                   "--min-face counts its pixels. Frames and crops stay at full resolution.")
@click.option("--detect-every", type=click.IntRange(1), default=5, show_default=True,
              help="Full detection on every N-th kept frame (and at possible shot cuts); faces are "
                   "followed in between (MTCNN). 1: detect every frame.")
@click.option("--shard", default=None, metavar="I/N",
              help="Ingest only block I of N of the media (from 0), e.g. as one job of a cluster array; "
                   "then merge-manifests the N manifests.")
@_overwrite_option
@click.pass_context
def ingest(ctx: click.Context, media: tuple[Path, ...], out: Path, detector: str, fps: float | None,
           stride: int | None, min_face: int, threshold: float | None, no_crops: bool, margin: float,
           resume: bool, detect_size: int, detect_every: int, shard: str | None, overwrite: bool) -> None:
    """Detect faces in videos and photos (files or folders) and write a manifest with shots."""
    # a rerun with --resume rebuilds the manifest from the records of the media it finished
    _refuse(out, "a manifest", "write elsewhere with -o, or rerun with --resume (the default) to rebuild it from "
            f"the media finished before ({out.name}.parts)", overwrite,
            holds=out.exists() and not (resume and out.with_name(out.name + ".parts").is_dir()))
    from .embed import parse_shard
    from .ingest import ingest_media

    where = parse_shard(shard) if shard is not None else None
    report = ingest_media(media, out, detector, fps=fps, stride=stride, min_face=min_face, threshold=threshold,
                          crops=not no_crops, margin=margin, progress=_progress(ctx), resume=resume,
                          detect_size=detect_size, detect_every=detect_every, shard=where)
    click.echo(f"wrote {out}{f' (shard {shard})' if where else ''}: {report.faces} faces from {len(report.done) + len(report.reused)} media "
               f"({len(report.reused)} reused), {report.frames} frames read at {report.frames_per_second:.1f} frames/s")
    for path, reason in report.skipped.items():
        click.echo(f"  skipped {path}: {reason}")
    for path, message in report.warnings.items():
        click.echo(f"  partly read {path}: {message}")


@cli.command("merge-manifests")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
def merge_manifests_cmd(shards: tuple[Path, ...], out: Path) -> None:
    """Join the SHARDS that `ingest --shard I/N` wrote into the manifest of the whole run."""
    from .ingest import merge_manifests

    m = merge_manifests(list(shards), out)
    click.echo(f"wrote {out}: {len(m)} faces from {len(shards)} shards")


# --------------------------------------------------------------------------- synthetic
@cli.command()
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Episode folder.")
@click.option("--identities", type=click.Path(path_type=Path), default=None,
              help="Identity-labelled manifest whose faces play the people (default: drawn faces).")
@click.option("--n-identities", default=6, show_default=True, help="People in the episode.")
@click.option("--shots", default=10, show_default=True, help="Number of shots.")
@click.option("--fps", default=8.0, show_default=True, help="Frames per second.")
@click.option("--max-people", default=4, show_default=True, help="Most people in one frame.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--labels-per-person", default=0, show_default=True,
              help="Also write labels.csv: this many faces named per person, as a human would type.")
@_overwrite_option
@click.pass_context
def synth(ctx: click.Context, out: Path, identities: Path | None, n_identities: int, shots: int,
          fps: float, max_people: int, seed: int, labels_per_person: int, overwrite: bool) -> None:
    """Render a synthetic episode: frames, a manifest with boxes and identities, truth."""
    _refuse(out, "a synthetic episode", "write elsewhere with -o", overwrite,
            holds=(out / "manifest.jsonl").exists())
    from data_tools.labels import draw_labels, write_labels
    from data_tools.synthetic import make_episode
    from .manifest import Manifest

    ids = Manifest.read(identities) if identities is not None else None
    path = make_episode(out, ids, n_identities=n_identities, n_shots=shots, fps=fps,
                        max_people=max_people, seed=seed, progress=_progress(ctx))
    m = Manifest.read(path, check_files=False)
    s = m.summary()
    click.echo(f"wrote {path}: {s['faces']} faces in {s['frames']} frames, {s['identities']} identities")
    if labels_per_person:
        labels = draw_labels(m, labels_per_person, seed)
        write_labels(out / "labels.csv", labels)
        click.echo(f"wrote {out / 'labels.csv'}: {len(labels)} names")


# --------------------------------------------------------------------------- track
@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--max-gap", default=2, show_default=True, help="Frames a track may skip.")
@click.option("--min-iou", default=0.2, show_default=True, help="Least IoU for a box link.")
@click.option("--min-similarity", default=0.3, show_default=True, help="Least appearance similarity.")
@click.option("--appearance", type=click.Choice(["auto", "thumb", "backbone", "none"]), default="auto",
              show_default=True, help="Appearance cue: thumb with boxes, backbone for crops only.")
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True,
              help="timm backbone for appearance on crops.")
@click.option("--weights", default=None, help="Backbone weights file (.pth/.safetensors).")
@click.option("--truth", type=click.Path(path_type=Path), default=None,
              help="JSONL with id and appearance per face (a synthetic episode's truth.jsonl) "
                   "for exact fragmentation.")
@_overwrite_option
@click.pass_context
def track(ctx: click.Context, manifest: Path, out: Path, max_gap: int, min_iou: float,
          min_similarity: float, appearance: str, backbone: str, weights: str | None,
          truth: Path | None, overwrite: bool) -> None:
    """Link faces across frames into tracks and find shot cuts; writes track and shot."""
    _refuse(out, "a manifest", "write elsewhere with -o", overwrite)
    from .evaluate import track_quality
    from .manifest import Manifest
    from .track import TrackerConfig, track_manifest

    m = Manifest.read(manifest)
    cfg = TrackerConfig(max_gap=max_gap, min_iou=min_iou, min_similarity=min_similarity,
                        appearance=appearance, backbone=backbone, weights=weights)
    tracked = track_manifest(m, cfg, progress=_progress(ctx))
    tracked.write(out)
    appearances = _read_appearances(truth, tracked) if truth is not None else None
    report = track_quality(tracked, appearances, max_gap=max_gap)
    click.echo(f"wrote {out}")
    _echo_report(report)


def _read_appearances(path: Path, manifest) -> list[str | None]:
    from .manifest import parse_line

    found: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, text in enumerate(fh, 1):
                if text.strip():
                    rec = parse_line(text)
                    found[str(rec["id"])] = str(rec["appearance"])
    except (OSError, ValueError, KeyError) as e:
        raise ProxytasksError(f"{path}: cannot read truth ({type(e).__name__}: {e})") from None
    return [found.get(f.id) for f in manifest.faces]


# --------------------------------------------------------------------------- pairs
@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Pairs file (.npz).")
@click.option("--rules", default="same-frame,same-track,track-cooccurrence,same-photo", show_default=True,
              help="Comma-separated rules; name:weight sets a weight.")
@click.option("--labels", multiple=True, type=click.Path(path_type=Path),
              help="Naming rounds (repeatable, in order): a person's names, removals and same/different "
                   "answers become pairs that win over the rules'.")
@click.option("--clusters", type=click.Path(path_type=Path), default=None,
              help="The clusters that 'cluster,name' rows of --labels refer to.")
@click.option("--policy", type=click.Choice(["different", "drop"]), default="different", show_default=True,
              help="Conflicts: cannot-link wins, or drop the pair.")
@_overwrite_option
def pairs(manifest: Path, out: Path, rules: str, labels: tuple[Path, ...], clusters: Path | None,
          policy: str, overwrite: bool) -> None:
    """Apply the cheap-label rules to MANIFEST and store the pairs."""
    _refuse(out, "rule pairs", "write elsewhere with -o", overwrite)
    from .manifest import Manifest
    from .rules import RuleSet

    m = Manifest.read(manifest)
    if all(f.track is None for f in m.faces) and any(f.frame is not None for f in m.faces):
        logger.warning("%s has no tracks: same-track pairs need `proxytasks track` first", manifest)
    ps = RuleSet(rules, policy=policy).apply(m)
    if labels:
        from .active import human_pairs
        from .cluster import read_clusters
        from .naming import read_annotations

        ids = [f.id for f in m.faces]
        ann = read_annotations(labels, ids, read_clusters(clusters, ids) if clusters is not None else None)
        ps = ps.with_human(*human_pairs(ann))
    ps.save(out)
    click.echo(f"wrote {out}: {len(ps)} pairs ({ps.nbytes / max(len(ps), 1):.0f} bytes each), "
               f"{ps.conflicts} conflicts resolved ({policy})")
    for name, count in ps.counts().items():
        click.echo(f"  {name:<20} {count}")


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the audit as JSON only.")
def audit(manifest: Path, pairs: Path, as_json: bool) -> None:
    """Per rule: pairs, coverage and precision against known identities."""
    from .evaluate import audit_pairs, format_audit
    from .manifest import Manifest
    from .pairs import PairSet

    m = Manifest.read(manifest, check_files=False)
    ps = PairSet.load(pairs, face_ids=[f.id for f in m.faces])
    result = audit_pairs(m, ps)
    click.echo(json.dumps(result, indent=2) if as_json else format_audit(result, len(m)))


# --------------------------------------------------------------------------- recipes
@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a top-level recipe variable, e.g. --set out=runs/x.")
@click.option("--from", "first", default=None, metavar="STEP",
              help="Start at this step: its number, or the name of its command (first such step).")
@click.option("--to", "last", default=None, metavar="STEP",
              help="Stop after this step: its number, or the name of its command (first such step "
                   "from --from on).")
@click.option("--dry-run", is_flag=True, help="Check every step and print its command; run nothing.")
@click.pass_context
def run(ctx: click.Context, recipe: Path, overrides: tuple[str, ...], first: str | None, last: str | None,
        dry_run: bool) -> None:
    """Run a YAML recipe: a chain of proxytasks commands.

    A recipe that waits for a person runs in two parts: `--to suggest`, fill the
    suggestion sheet, then `--from name`.
    """
    from .recipe import run_recipe

    run_recipe(recipe, cli, overrides=overrides, obj=ctx.find_root().obj, first=first, last=last, dry_run=dry_run)


# --------------------------------------------------------------------------- learning
@cli.command("train")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True, help="timm backbone name.")
@click.option("--weights", default=None, help="Backbone weights file (.pth/.safetensors); 'none' = random.")
@click.option("--head", type=click.Choice(["linear", "mlp"]), default="linear", show_default=True)
@click.option("--dim", default=128, show_default=True, help="Embedding width.")
@click.option("--input-size", default=128, show_default=True, help="Face crop side fed to the backbone.")
@click.option("--loss", default="auto", show_default=True,
              help="auto (track-supcon with cannot-links, ntxent without), contrastive, multi-similarity, ...")
@click.option("--init", type=click.Choice(["kissme", "random"]), default="kissme", show_default=True,
              help="Start the linear head from the KISSME metric fitted on the pairs.")
@click.option("--steps", type=int, default=None, help="Optimisation steps.")
@click.option("--epochs", type=float, default=None, help="Passes over the training faces.")
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds for the whole command; stops cleanly and saves.")
@click.option("--lr", default=1e-3, show_default=True, help="Learning rate.")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="cosine: decays to zero at the last step (needs --steps or --epochs).")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, mps.")
@click.option("--workers", default=1, show_default=True, help="DataLoader workers for decoding faces.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's last checkpoint.")
@_overwrite_option
@click.pass_context
def train_cmd(ctx: click.Context, manifest: Path, pairs: Path, out: Path, backbone: str, weights: str | None,
              head: str, dim: int, input_size: int, loss: str, init: str, steps: int | None,
              epochs: float | None, time_budget: float | None, lr: float, lr_schedule: str, seed: int,
              device: str, workers: int, resume: bool, overwrite: bool) -> None:
    """Train a face embedding on the rule PAIRS of MANIFEST (Siamese, within a time budget).

    On several processes: torchrun --nproc_per_node N -m proxytasks train ... (the same
    result as one process; rank 0 writes the run folder)."""
    _refuse(out, _run_holds(out) or "", "train into another -o, or add --resume to continue it", overwrite,
            holds=not resume and _run_holds(out) is not None)
    from .manifest import Manifest
    from .pairs import PairSet
    from .train import TrainConfig, train

    m = Manifest.read(manifest)
    ps = PairSet.load(pairs, face_ids=[f.id for f in m.faces])
    cfg = TrainConfig(backbone=backbone, weights=weights, head=head, dim=dim, input_size=input_size,
                      loss=loss, init=init, steps=steps, epochs=epochs, time_budget=time_budget, lr=lr,
                      lr_schedule=lr_schedule, seed=seed, device=device, workers=workers)
    summary = train(m, ps, out, cfg, resume=resume, progress=_progress(ctx))
    if int(os.environ.get("RANK", "0") or 0):  # under torchrun, rank 0 reports
        return
    click.echo(f"wrote {out}: {summary['steps']} steps in {summary['seconds']:.1f} s ({summary['stopped']}), "
               f"selected {summary['selected']}")
    for name, score in summary["scores"].items():
        click.echo(f"  validation AUC {name:<11} {'-' if score is None else f'{score:.4f}'}")


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Embeddings file (.npz).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", default=1, show_default=True, help="DataLoader workers for decoding faces.")
@click.option("--device", default="auto", show_default=True)
@click.option("--resume", is_flag=True,
              help="Reuse the chunks a killed run left in OUT.partial/ (same model, device kind and faces).")
@click.option("--chunk-size", type=click.IntRange(1), default=4096, show_default=True,
              help="Faces per resumable chunk (rounded up to whole batches).")
@click.option("--shard", default=None, metavar="I/N",
              help="Embed only block I of N of the faces (from 0), e.g. as one job of a cluster array; "
                   "then merge-embeddings or index the N files.")
@_overwrite_option
@click.pass_context
def embed(ctx: click.Context, run: Path, manifest: Path, out: Path, batch_size: int, workers: int,
          device: str, resume: bool, chunk_size: int, shard: str | None, overwrite: bool) -> None:
    """Embed every face of MANIFEST with the model in RUN (resumable: see --resume)."""
    _refuse(out, "embeddings", "write elsewhere with -o, or --resume to finish it", overwrite,
            holds=out.exists() and not resume)
    from .embed import embed_to_file, parse_shard, shard_manifest
    from .embedder import Embedder
    from .manifest import Manifest
    from .models import select_device

    where = parse_shard(shard) if shard is not None else None
    m = Manifest.read(manifest)
    embedder = Embedder.load(run)
    extra = {}
    if where is not None:
        m, extra["shard"] = shard_manifest(m, *where)
    emb = embed_to_file(embedder, m, out, batch_size, workers, _progress(ctx), str(select_device(device)),
                        resume=resume, chunk_size=chunk_size, meta=extra)
    part = f" (shard {shard} of {extra['shard']['faces']} faces)" if extra else ""
    click.echo(f"wrote {out}: {emb.vectors.shape[0]} faces x {emb.vectors.shape[1]} dims{part}")


@cli.command("merge-embeddings")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Embeddings file (.npz).")
@_overwrite_option
def merge_embeddings(shards: tuple[Path, ...], out: Path, overwrite: bool) -> None:
    """Join the SHARDS that `embed --shard I/N` wrote into the embeddings of the whole manifest."""
    _refuse(out, "embeddings", "write elsewhere with -o", overwrite)
    from .embed import Embeddings, merge_shards

    e = merge_shards([Embeddings.load(p) for p in shards], [str(p) for p in shards])
    e.save(out)
    click.echo(f"wrote {out}: {e.vectors.shape[0]} faces x {e.vectors.shape[1]} dims from {len(shards)} shards")


def _numbers(value: str, what: str, kind: type = int) -> list:
    """Comma-separated positive numbers of ``kind`` (int or float) from an option value."""
    try:
        items = [kind(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ProxytasksError(f"{what} {value!r}: expected comma-separated "
                              f"{'integers such as 1,5,20' if kind is int else 'numbers such as 60,180'}") from None
    if not items or not all(math.isfinite(x) and x > 0 for x in items):
        raise ProxytasksError(f"{what} {value!r}: expected positive {'integers' if kind is int else 'numbers'}")
    return items


def _names(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder (metrics.json).")
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True, help="timm backbone name.")
@click.option("--weights", default=None, help="Backbone weights file (.pth/.safetensors).")
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=300.0, show_default=True,
              help="Seconds for proxy training.")
@click.option("--shots", default="1,5,20", show_default=True, help="Names given per identity.")
@click.option("--repeats", default=5, show_default=True, help="Seeded draws per shot count.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--active", "active", is_flag=False, flag_value="clusters,margin,breadth,random", default=None,
              help="Add naming accuracy vs names typed by a simulated person for these strategies "
                   "(bare --active: clusters,margin,breadth,random).")
@click.option("--active-budget", type=click.IntRange(1), default=None,
              help="Names the simulated person types (default: four per identity).")
@click.option("--active-batch", type=click.IntRange(1), default=5, show_default=True,
              help="Suggestions answered per naming round.")
@click.option("--peers", default="auto", show_default=True,
              help="Peer methods measured in the same run: face_recognition (dlib's own pipeline), proxy_dlib "
                   "(proxy training from dlib's face ResNet); auto: those this machine can run; none.")
@click.option("--keep-tracks", is_flag=True,
              help="Use the manifest's own tracks instead of tracking the faces (tracks taken from ground truth "
                   "flatter the naming scores).")
@_overwrite_option
@click.pass_context
def benchmark(ctx: click.Context, manifest: Path, out: Path, backbone: str, weights: str | None,
              time_budget: float, shots: str, repeats: int, seed: int, active: str | None,
              active_budget: int | None, active_batch: int, peers: str, keep_tracks: bool,
              overwrite: bool) -> None:
    """Naming benchmark on a labelled MANIFEST: proxy training vs the pretrained backbone.

    Scored track-disjoint: faces sharing a track with a named face are not scored, and
    verification counts only pairs of faces from different tracks."""
    _refuse(out, "a benchmark (metrics.json)", "write elsewhere with --out", overwrite,
            holds=(out / "metrics.json").exists())
    from .active import names_to_reach
    from .benchmark import run_benchmark

    strategies = [s.strip() for s in active.split(",") if s.strip()] if active else []
    metrics = run_benchmark(manifest, out, backbone, weights, time_budget, _numbers(shots, "--shots"),
                            repeats, seed, progress=_progress(ctx), active=strategies,
                            active_budget=active_budget, active_batch=active_batch,
                            peers=None if peers == "auto" else [p.strip() for p in peers.split(",")
                                                                if p.strip() and p.strip() != "none"],
                            keep_tracks=keep_tracks)
    click.echo(f"wrote {out / 'metrics.json'} ({metrics['seconds']:.0f} s, protocol {metrics['protocol']})")
    rows = list(metrics["methods"].items()) + [(f"  {name}", m) for name, m in
                                               metrics.get("peer_variants", {}).get("face_recognition", {}).items()]
    for name, m in rows:
        naming = " ".join(f"{k}-shot {_fmt(v)}" for k, v in m["naming"].items())
        click.echo(f"  {name:<16} naming {naming} | bcubed F1 {m['clustering']['bcubed_f1']:.3f} "
                   f"({m['clustering']['clusters']} clusters) | AUC {_fmt(m['verification']['roc_auc'])}")
    if "alignment" in metrics:
        a = metrics["alignment"]
        click.echo(f"  faces given as crops: {a['faces']}; the face found inside by a detector in {a['found']}, "
                   f"the central region used for {a['fallback']}")
    if strategies:
        reach = {k: names_to_reach(c) for k, c in metrics["active"].items()}
        click.echo("  names typed to reach 90% naming accuracy: "
                   + ", ".join(f"{k} {'never' if v is None else v}" for k, v in reach.items()))
        best = min((v, k) for k, v in reach.items() if k != "random" and v is not None) if any(
            v is not None for k, v in reach.items() if k != "random") else None
        if best and reach.get("random"):
            click.echo(f"  best strategy {best[1]}: {best[0]} names vs random {reach['random']} "
                       f"(ratio {reach['random'] / best[0]:.2f}: times fewer names)")


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Output folder (budget.json, budget.md, plots).")
@click.option("--budgets", default="60,180,600", show_default=True, help="Time budgets in seconds.")
@click.option("--pairs", type=click.Path(path_type=Path), default=None,
              help="Rule pairs of MANIFEST (default: track when needed, then the default rules).")
@click.option("--backbones", default=None,
              help="timm backbones (default: mobilenetv2_100, tf_efficientnet_lite0 and dlib_resnet29, "
                   "those with weights here).")
@click.option("--fractions", default="0.25,0.5,1", show_default=True, help="Shares of the training pairs.")
@click.option("--steps", default="50,200,800,3200", show_default=True, help="Optimisation steps.")
@click.option("--schedules", default="constant,cosine", show_default=True, help="Learning-rate schedules.")
@click.option("--strategies", default="independent,sequential,global", show_default=True,
              help="How the naming head is trained with the embedding (see `name --strategy`).")
@click.option("--joint-steps", type=click.IntRange(1), default=100, show_default=True,
              help="Joint fine-tuning steps of a global configuration.")
@click.option("--max-configs", type=click.IntRange(1), default=8, show_default=True,
              help="Configurations sampled per budget (besides the independent ones).")
@click.option("--shots", type=click.IntRange(1), default=1, show_default=True,
              help="Names per person given when the error is naming error.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True, help="Seeded draws of those names.")
@click.option("--test-share", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3,
              show_default=True, help="Share of the time chunks of each video held out for the error.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, mps.")
@click.option("--workers", default=1, show_default=True, help="DataLoader workers for decoding faces.")
@_overwrite_option
@click.pass_context
def budget(ctx: click.Context, manifest: Path, out: Path, budgets: str, pairs: Path | None, backbones: str | None,
           fractions: str, steps: str, schedules: str, strategies: str, joint_steps: int, max_configs: int,
           shots: int, repeats: int, test_share: float, seed: int, device: str, workers: int,
           overwrite: bool) -> None:
    """Compute-budget sweep on MANIFEST: backbone x pairs x optimisation effort x strategy per budget."""
    _refuse(out, "a budget sweep (budget.json)", "write elsewhere with --out", overwrite,
            holds=(out / "budget.json").exists())
    from .benchmark import tracked_pairs
    from .budget import SweepSettings, budget_sweep, describe
    from .manifest import Manifest
    from .pairs import PairSet

    settings = SweepSettings(budgets=tuple(_numbers(budgets, "--budgets", float)),
                             backbones=_names(backbones) if backbones else None,
                             fractions=tuple(_numbers(fractions, "--fractions", float)),
                             steps=tuple(_numbers(steps, "--steps")), schedules=_names(schedules),
                             strategies=_names(strategies), joint_steps=joint_steps, max_configs=max_configs,
                             shots=shots, repeats=repeats, test_share=test_share, seed=seed, device=device,
                             workers=workers)
    m = Manifest.read(manifest)
    if pairs is not None:
        ps = PairSet.load(pairs, face_ids=[f.id for f in m.faces])
    else:
        out.mkdir(parents=True, exist_ok=True)
        m, ps = tracked_pairs(m, out, _progress(ctx))
    result = budget_sweep(m, ps, out, settings, progress=_progress(ctx))
    click.echo(f"wrote {out / 'budget.json'} ({result['seconds']:.0f} s for budgets of "
               f"{sum(settings.budgets):.0f} s in all); error: {result['error']}")
    for key, row in result["budgets"].items():
        best = row["best"]
        click.echo(f"  {key:>6} s: {describe(best)}" + (f" (error {best['error']:.4f}, {best['actual_s']:.0f} s)"
                                                        if best else ""))
    click.echo(result["conclusion"])


# --------------------------------------------------------------------------- index, clusters, names
@cli.command()
@click.argument("emb", metavar="EMB...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Index folder.")
@click.option("--factory", default=None, help="faiss factory string (default: chosen from size and memory).")
@click.option("--memory-gb", default=4.0, show_default=True, help="Memory budget for the automatic choice.")
@click.option("--add", is_flag=True, help="Add the faces of EMB that are new to an existing index.")
@click.option("--device", default="auto", show_default=True,
              help="cuda: train and search the index on the GPU where faiss has GPU support (auto: when present).")
@_overwrite_option
def index(emb: tuple[Path, ...], out: Path, factory: str | None, memory_gb: float, add: bool, device: str,
          overwrite: bool) -> None:
    """Build a FAISS index over the embeddings EMB (index_infos.json beside it).

    EMB is one embeddings file, or the shard files of one `embed --shard I/N` run (all N)."""
    _refuse(out, "an index", "add the new faces with --add, or write elsewhere with -o", overwrite,
            holds=not add and out.exists() and (not out.is_dir() or any(out.iterdir())))
    from .embed import load_embeddings
    from .index import FaceIndex

    e = load_embeddings(emb)
    named = emb[0] if len(emb) == 1 else f"the shards {emb[0]}..."
    if add:
        idx = FaceIndex.load(out, device=device)
        idx.check_source(e.meta, e.vectors.shape[1], named, out)
        known = set(idx.ids)
        new = [k for k, face_id in enumerate(e.ids) if face_id not in known]
        idx.add(e.vectors[new], [e.ids[k] for k in new])
        click.echo(f"added {len(new)} faces")
    else:
        idx = FaceIndex.build(e.vectors, e.ids, factory=factory, memory_budget_gb=memory_gb, source=e.meta,
                              device=device)
    idx.save(out)
    click.echo(f"wrote {out}: {idx.factory}, {len(idx)} faces x {idx.dim} dims")


@cli.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(path_type=Path))
@click.argument("emb", type=click.Path(path_type=Path))
@click.option("--id", "face_ids", multiple=True, required=True, help="Face id to query (repeatable).")
@click.option("-k", default=10, show_default=True, help="Neighbours per query.")
@click.option("--device", default="auto", show_default=True, help="cuda: search on the GPU where faiss has GPU support.")
def search(index_dir: Path, emb: Path, face_ids: tuple[str, ...], k: int, device: str) -> None:
    """The k nearest faces in INDEX of the given faces of EMB."""
    from .embed import Embeddings
    from .index import FaceIndex

    idx, e = FaceIndex.load(index_dir, device=device), Embeddings.load(emb)
    idx.check_source(e.meta, e.vectors.shape[1], emb, index_dir)
    pos = {face_id: i for i, face_id in enumerate(e.ids)}
    missing = [f for f in face_ids if f not in pos]
    if missing:
        raise ProxytasksError(f"{emb}: no face with id {', '.join(map(repr, missing))}")
    sims, found = idx.search(e.vectors[[pos[f] for f in face_ids]], k)
    for query, row_s, row_i in zip(face_ids, sims, idx.ids_of(found)):
        for rank, (s, face_id) in enumerate(zip(row_s, row_i), 1):
            if face_id is not None:
                click.echo(f"{query}\t{rank}\t{face_id}\t{s:.4f}")


@cli.command()
@click.argument("emb", type=click.Path(path_type=Path))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="CSV id,cluster.")
@click.option("-k", default=10, show_default=True, help="Neighbours per track in the kNN graph.")
@click.option("--threshold", type=float, default=None, help="Similarity to merge (default: from cannot-link violations).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cuda: the kNN graph on the GPU where faiss has GPU "
              "support.")
@_overwrite_option
def cluster(emb: Path, manifest: Path, pairs: Path, out: Path, k: int, threshold: float | None, seed: int,
            device: str, overwrite: bool) -> None:
    """Cluster faces into people: tracks kept whole, cannot-linked faces kept apart."""
    _refuse(out, "clusters", "write elsewhere with -o", overwrite)
    from .cluster import cluster_faces, constraint_arrays, write_clusters
    from .embed import Embeddings
    from .evaluate import cluster_report
    from .manifest import Manifest
    from .pairs import PairSet

    m = Manifest.read(manifest, check_files=False)
    ids = [f.id for f in m.faces]
    e = Embeddings.load(emb)
    if e.ids != ids:
        raise ProxytasksError(f"{emb} does not hold the faces of {manifest} in order; embed that manifest")
    groups, cannot = constraint_arrays(m, PairSet.load(pairs, face_ids=ids))
    result = cluster_faces(e.vectors, groups=groups, cannot_links=cannot, k=k, threshold=threshold, seed=seed,
                           device=device)
    write_clusters(out, ids, result.labels)
    click.echo(f"wrote {out}: {result.labels.max() + 1} clusters at threshold {result.threshold:.4f}")
    _echo_report(cluster_report(m, result.labels))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("emb", type=click.Path(path_type=Path))
@click.argument("labels", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="CSV id,name,confidence,source.")
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="Carry names along its tracks; its images for --strategy global (and independent "
                   "when RUN/features.npz does not hold the faces of EMB).")
@click.option("--clusters", type=click.Path(path_type=Path), default=None, help="Carry names along these clusters.")
@click.option("--head", type=click.Choice(["linear", "prototype"]), default="linear", show_default=True)
@click.option("--unknown-threshold", default="auto", show_default=True,
              help="Cosine similarity between a track and the nearest name's faces below which the track is "
                   "unknown: 'auto' calibrates it on the named faces (leave-one-out), 'none' never rejects.")
@click.option("--seed", default=0, show_default=True)
@click.option("--strategy", default="sequential", show_default=True,
              help="independent (naming on the frozen pretrained trunk features), sequential (on the proxy "
                   "embedding EMB) or global (trunk's last stage, head and naming fine-tuned jointly).")
@click.option("--pairs", "pairs_path", type=click.Path(path_type=Path), default=None,
              help="Rule pairs of the manifest, for --strategy global.")
@click.option("--steps", type=click.IntRange(0), default=None,
              help="Joint fine-tuning steps for --strategy global [default: 200, or until --time-budget].")
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds for joint fine-tuning (--strategy global); stops cleanly.")
@_overwrite_option
@click.pass_context
def name(ctx: click.Context, run: Path, emb: Path, labels: tuple[Path, ...], out: Path, manifest: Path | None,
         clusters: Path | None, head: str, unknown_threshold: str, seed: int, strategy: str,
         pairs_path: Path | None, steps: int | None, time_budget: float | None, overwrite: bool) -> None:
    """Name every face from a few names over the embedding of RUN.

    LABELS: one file per naming round, in order (CSV or JSONL: id,name / cluster,name /
    id,not_name / id,id2,answer, or a filled suggestion sheet). Later rounds win; a name
    a person removed from a face never comes back to it. With --manifest, two faces of
    one frame (and so two tracks that meet) never get the same name.
    """
    _refuse(out, "names", "write elsewhere with -o", overwrite)
    from .cluster import read_clusters
    from .embed import Embeddings
    from .manifest import Manifest
    from .naming import read_annotations, write_names
    from .pairs import PairSet
    from .systems import GlobalConfig, name_with_strategy

    e = Embeddings.load(emb)
    config = run / "config.json"
    saved = json.loads(config.read_text()) if config.is_file() else None
    if isinstance(saved, dict) and (saved.get("backbone") != e.meta.get("backbone") or (
            "model_sha256" in e.meta and saved.get("model_sha256") != e.meta["model_sha256"])):
        raise ProxytasksError(f"{emb} was not embedded with the model of {run}")
    tracks = _tracks_of(manifest, emb, e.ids) if manifest is not None else None
    cannot = _frame_links(manifest) if manifest is not None else None
    groups = read_clusters(clusters, e.ids) if clusters is not None else None
    ann = read_annotations(labels, e.ids, groups)
    if not ann.named:
        raise ProxytasksError(_nothing_named(labels))
    images = Manifest.read(manifest) if manifest is not None and strategy in ("independent", "global") else None
    ps = PairSet.load(pairs_path, face_ids=e.ids) if pairs_path is not None and strategy == "global" else None
    cfg = GlobalConfig(steps=200 if steps is None and time_budget is None else steps, time_budget=time_budget,
                       seed=seed)
    result, info = name_with_strategy(strategy, run, e, ann, images, ps, cfg, _progress(ctx), tracks=tracks,
                                      clusters=groups, unknown_threshold=unknown_threshold, head=head, seed=seed,
                                      cannot_links=cannot)
    if manifest is not None:
        from .naming import unname_marked
        from .rules import low_quality_mask

        result = unname_marked(result, low_quality_mask(Manifest.read(manifest, check_files=False)), ann.named)
    write_names(out, e.ids, result)
    named = sum(n is not None for n in result.names)
    click.echo(f"wrote {out}: {named} of {len(e.ids)} faces named, {len(set(result.names) - {None})} names "
               f"(strategy {strategy})")
    tau = result.info.get("unknown_threshold")
    click.echo(f"  unknown threshold: {'none' if tau is None else f'{tau:.4f}'}"
               + (f" ({result.info['calibration']['rule']})" if "calibration" in result.info else ""))
    if "fine_tune" in info:
        t = info["fine_tune"]
        click.echo(f"  joint fine-tuning: {t['steps']} steps in {t['seconds']:.1f} s ({t['stopped']}), "
                   f"loss on the first batch {t['loss_before']:.4f} -> {t['loss_after']:.4f}")


def _nothing_named(labels: tuple[Path, ...]) -> str:
    """What to do when the naming rounds hold no name (an unfilled sheet, typically)."""
    sheets = [p for p in labels if p.parent.name.startswith("round")]
    folder = sheets[0].parent.parent if sheets else Path("DIR")
    return (f"no face is named in {', '.join(map(str, labels))}: nothing to name the faces from. Fill the "
            f"'name' column of {labels[0]} (and 'answer', same or different, for the 'same person?' rows), "
            f"or name the people in the app: proxytasks app {folder}; then run this again (after the app: "
            f"with {folder / 'app' / 'labels.csv'} as the labels)")


def _frame_links(manifest: Path):
    """Face pairs of MANIFEST that share a frame or a photo: two people."""
    from .assign import frame_cannot_links
    from .manifest import Manifest

    m = Manifest.read(manifest, check_files=False)
    return frame_cannot_links([f.media for f in m.faces], [f.frame for f in m.faces])


def _tracks_of(manifest: Path, emb: Path, ids: list[str]):
    """The track of each face of MANIFEST, which must hold the faces of EMB in order."""
    from .manifest import Manifest
    from .rules import FaceColumns

    m = Manifest.read(manifest, check_files=False)
    if [f.id for f in m.faces] != ids:
        raise ProxytasksError(f"{manifest} does not hold the faces of {emb} in order")
    return FaceColumns.from_manifest(m).track


def _refuse_sheet(out: Path, overwrite: bool) -> None:
    """A suggestion sheet is where a person types names: never replaced silently."""
    from .active import sheet_answers

    filled = sheet_answers(out)
    if filled:
        _refuse(out, f"a sheet with {filled} answer(s) a person typed", "it is a naming round: give it to "
                "`proxytasks name` (or `--labels`) and write the next sheet elsewhere with -o", overwrite)
    _refuse(out, "a suggestion sheet", "write elsewhere with -o", overwrite)


@cli.command()
@click.argument("emb", type=click.Path(path_type=Path))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Suggestion sheet (CSV) to write; fill its name/answer column and give it to `name`.")
@click.option("--clusters", type=click.Path(path_type=Path), default=None, help="CSV id,cluster from `cluster`.")
@click.option("--labels", multiple=True, type=click.Path(path_type=Path),
              help="Naming rounds so far (repeatable, in order).")
@click.option("--strategy", default="margin", show_default=True, help="clusters, margin, breadth or random.")
@click.option("-n", default=20, show_default=True, help="Faces to name.")
@click.option("--pairs", "n_pairs", default=0, show_default=True,
              help="Also ask this many 'same person?' questions (clusters to merge or split).")
@click.option("--seed", default=0, show_default=True)
@_overwrite_option
def suggest(emb: Path, manifest: Path, out: Path, clusters: Path | None, labels: tuple[Path, ...],
            strategy: str, n: int, n_pairs: int, seed: int, overwrite: bool) -> None:
    """Which faces a person should name next (active learning), each with the reason."""
    _refuse_sheet(out, overwrite)
    from .active import Pool, STRATEGIES, face_images, suggest as suggest_faces, write_suggestions
    from .manifest import Manifest
    from .cluster import read_clusters
    from .embed import Embeddings
    from .naming import Annotations, name_from_annotations, read_annotations

    STRATEGIES.get(strategy)
    e = Embeddings.load(emb)
    tracks = _tracks_of(manifest, emb, e.ids)
    groups = read_clusters(clusters, e.ids) if clusters is not None else None
    ann = read_annotations(labels, e.ids, groups) if labels else Annotations()
    result = name_from_annotations(e.vectors, ann, tracks=tracks, clusters=groups, seed=seed) if ann.named else None
    todo = suggest_faces(Pool(e.vectors, tracks, groups, ann, result), strategy, n, n_pairs, seed)
    write_suggestions(out, e.ids, todo, images=face_images(Manifest.read(manifest, check_files=False), out))
    click.echo(f"wrote {out}: {sum(s.kind == 'name' for s in todo)} faces to name, "
               f"{sum(s.kind == 'same' for s in todo)} same-person questions ({len(ann.named)} faces named so far)")
    for rank, s in enumerate(todo[:5], 1):
        click.echo(f"  {rank}. {e.ids[s.face]}: {s.reason}")


@cli.command()
@click.argument("sheet", type=click.Path(path_type=Path))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="The answered sheet to write.")
@_overwrite_option
def simulate(sheet: Path, manifest: Path, out: Path, overwrite: bool) -> None:
    """A simulated person: answer the suggestion SHEET from the identities of MANIFEST."""
    _refuse_sheet(out, overwrite)
    from .active import SimulatedAnnotator, face_images, read_suggestions, write_suggestions
    from .manifest import Manifest

    m = Manifest.read(manifest, check_files=False)
    ids = [f.id for f in m.faces]
    if not any(f.identity is not None for f in m.faces):
        raise ProxytasksError(f"{manifest}: no face carries 'identity'; a simulated person needs ground truth")
    todo = read_suggestions(sheet, ids)
    annotator = SimulatedAnnotator([f.identity for f in m.faces])
    answers = {rank: a for rank, s in enumerate(todo, 1) if (a := annotator.answer(s)) is not None}
    write_suggestions(out, ids, todo, answers, images=face_images(m, out))
    click.echo(f"wrote {out}: {len(answers)} of {len(todo)} questions answered from {manifest}")


# --------------------------------------------------------------------------- export
@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.argument("names", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Dataset folder to write.")
@click.option("--min-confidence", type=float, default=None,
              help="Predicted names below this confidence go to _unknown; given names always stay.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in OUT (one with names.json).")
@click.pass_context
def export(ctx: click.Context, manifest: Path, names: Path, out: Path, min_confidence: float | None,
           overwrite: bool) -> None:
    """Write the named dataset: a folder of face crops per name of NAMES, _unknown apart."""
    from .export import export_dataset

    summary = export_dataset(manifest, names, out, min_confidence=min_confidence, overwrite=overwrite,
                             progress=_progress(ctx))
    click.echo(f"wrote {out}")
    _echo_report(summary)


# --------------------------------------------------------------------------- app
@cli.command("app")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Port to listen on [default: a free one].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (anything but 127.0.0.1 lets other machines in).")
def app_cmd(folder: Path, port: int, host: str) -> None:
    """The naming app: name the people of DIR in a browser (a recipe's output folder).

    Every action is saved at once as a round file in DIR/app/rounds/."""
    try:
        from .app.server import serve
    except ImportError as e:
        raise ProxytasksError(f"the app needs its extra: pip install -e '.[app]' ({e})") from None
    serve(folder, host=host, port=port, echo=click.echo)


# --------------------------------------------------------------------------- report
@cli.command("report")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="HTML file to write (default: RUN/report.html).")
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="Face manifest (default: RUN/tracked.jsonl, else RUN/manifest.jsonl).")
@click.option("--pairs", type=click.Path(path_type=Path), default=None, help="Rule pairs (default: RUN/pairs.npz).")
@click.option("--clusters", type=click.Path(path_type=Path), default=None,
              help="CSV id,cluster (default: RUN/clusters.csv).")
@click.option("--names", type=click.Path(path_type=Path), default=None,
              help="CSV id,name,confidence,source (default: RUN/names.csv).")
@click.option("--suggestions", type=click.Path(path_type=Path), default=None,
              help="Suggestions CSV (default: RUN/suggestions.csv).")
@click.option("--metrics", type=click.Path(path_type=Path), default=None,
              help="metrics.json (default: RUN/benchmark/metrics.json, else RUN/metrics.json).")
@click.option("--train-run", type=click.Path(path_type=Path), default=None,
              help="Training run folder with train_log.jsonl (default: RUN/run).")
@click.option("--budget", type=click.Path(path_type=Path), default=None,
              help="budget.json of a compute-budget sweep (default: RUN/budget/budget.json, else RUN/budget.json).")
@click.option("--max-clusters", type=click.IntRange(0), default=40, show_default=True,
              help="Largest clusters shown.")
@click.option("--per-cluster", type=click.IntRange(0), default=12, show_default=True,
              help="Faces shown per cluster.")
@_overwrite_option
@click.pass_context
def report_cmd(ctx: click.Context, run_dir: Path, out: Path | None, manifest: Path | None, pairs: Path | None,
               clusters: Path | None, names: Path | None, suggestions: Path | None, metrics: Path | None,
               train_run: Path | None, budget: Path | None, max_clusters: int, per_cluster: int,
               overwrite: bool) -> None:
    """A self-contained HTML page of the run folder RUN: audit, training, metrics, galleries."""
    _refuse(out if out is not None else run_dir / "report.html", "a report", "write elsewhere with -o",
            overwrite)
    from .report import write_report

    out = out if out is not None else run_dir / "report.html"
    summary = write_report(run_dir, out, manifest=manifest, pairs=pairs, clusters=clusters, names=names,
                           suggestions=suggestions, metrics=metrics, train_run=train_run, budget=budget,
                           max_clusters=max_clusters, per_cluster=per_cluster, progress=_progress(ctx))
    click.echo(f"wrote {out}")
    _echo_report({k: ", ".join(v) or "-" if isinstance(v, list) else v for k, v in summary.items() if k != "out"})
