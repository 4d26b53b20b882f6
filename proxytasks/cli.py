"""The ``proxytasks`` command line: thin click commands over the library functions.

Bad input raises :class:`~proxytasks.errors.ProxytasksError` in the library; here it
becomes ``Error: ...`` on stderr and exit code 2. This module holds the group and the
commands up to the pairs (manifest, import, ingest, synth, track, pairs, audit, run);
:mod:`proxytasks.cli_learn` the learning stages, :mod:`proxytasks.cli_people` the
people stages (index to report). Commands import the library inside their body, so
``proxytasks --help`` never imports torch.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from . import cli_learn, cli_people
from .cli_common import ProxytasksGroup, echo_report, overwrite_option, progress, refuse
from .defaults import DEFAULT_BACKBONE, DEFAULT_DETECTOR, DEFAULT_RULES, DETECT_EVERY, DETECT_SIZE

logger = logging.getLogger(__name__)


@click.group(cls=ProxytasksGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quiet", "-q", is_flag=True, help="No progress bars, warnings only.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.option("--root", type=click.Path(path_type=Path), default=None, envvar="PROXYTASKS_ROOT",
              help="Refuse manifest paths (crop, image) that resolve outside this folder [env PROXYTASKS_ROOT; default: no confinement].")
@click.version_option(package_name="proxytasks")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: bool, root: Path | None) -> None:
    """proxytasks: free same/different labels from video structure, to name faces."""
    from .manifest import confine_to

    confine_to(root)
    ctx.meta["proxytasks.invoked"] = time.perf_counter()  # see loop.command_start
    ctx.ensure_object(dict)
    ctx.obj.setdefault("quiet", quiet)
    level = logging.DEBUG if verbose else logging.WARNING if ctx.obj["quiet"] else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports every CPU variant tried


main = cli
for _command in (*cli_learn.COMMANDS, *cli_people.COMMANDS):
    cli.add_command(_command)


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
    echo_report(summary)


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
@overwrite_option
def import_folders_cmd(root: Path, out: Path, overwrite: bool) -> None:
    """Identity folders: ROOT/<identity>/<image>, each image a face photo."""
    refuse(out, "a manifest", "write elsewhere with -o", overwrite)
    from data_tools.importers import import_folders

    _report_import(import_folders(root, out), out)


@import_.command("pattern")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--regex", required=True, help="Regular expression with a named group 'identity' "
              "(and optionally 'frame', 'media'), searched in each file's relative path.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--recursive", is_flag=True, help="Look into subfolders too.")
@overwrite_option
def import_pattern_cmd(root: Path, regex: str, out: Path, recursive: bool, overwrite: bool) -> None:
    """Flat files with the identity in the name, e.g. --regex '(?P<identity>subject\\d+)\\.'."""
    refuse(out, "a manifest", "write elsewhere with -o", overwrite)
    from data_tools.importers import import_pattern

    _report_import(import_pattern(root, regex, out, recursive=recursive), out)


@import_.command("crops")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--media", default=None, help="Name of the video the crops come from (default: file prefix).")
@overwrite_option
def import_crops_cmd(root: Path, out: Path, media: str | None, overwrite: bool) -> None:
    """Frame-indexed crops: ROOT/[<identity>/]<prefix>_<frame>_<k>.<ext>."""
    refuse(out, "a manifest", "write elsewhere with -o", overwrite)
    from data_tools.importers import import_crops

    _report_import(import_crops(root, out, media=media), out)


@import_.command("detections")
@click.argument("table", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--image-template", default=None,
              help="Frame image path from {media}, {media_stem}, {frame}, e.g. 'frames/{media_stem}/{frame:06d}.jpg' "
                   "[default: the table's image column].")
@overwrite_option
def import_detections_cmd(table: Path, out: Path, image_template: str | None, overwrite: bool) -> None:
    """A detections table (CSV/TSV/JSONL: media, frame, x, y, w, h, score)."""
    refuse(out, "a manifest", "write elsewhere with -o", overwrite)
    from data_tools.importers import import_detections

    _report_import(import_detections(table, out, image_template=image_template), out)


# --------------------------------------------------------------------------- ingest
@cli.command()
@click.argument("media", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--detector", default=DEFAULT_DETECTOR, show_default=True,
              help="Face detector: centerface, mtcnn, haar, or one registered in proxytasks.detect.DETECTORS (see "
                   "bench/README.md); boxes found by another tool come in through `import detections`.")
@click.option("--fps", type=float, default=None, help="Sample videos at this rate (frames/s) [default: every frame].")
@click.option("--stride", type=int, default=None, help="Keep every N-th video frame [default: 1, or from --fps].")
@click.option("--min-face", default=20, show_default=True,
              help="Smallest face side in pixels of the picture the detector sees (see --detect-size).")
@click.option("--threshold", type=float, default=None,
              help="Detector score threshold [default: the detector's own: 0.5 for centerface, 0.9 for mtcnn, "
                   "none for haar].")
@click.option("--no-crops", is_flag=True, help="Do not write the face crops cache.")
@click.option("--margin", default=0.2, show_default=True, help="Crop margin, a fraction of the box.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Reuse the media an earlier (even killed) run finished with the same settings; "
                   "--no-resume redoes them.")
@click.option("--detect-size", type=click.IntRange(0), default=DETECT_SIZE, show_default=True,
              help="The detector sees frames downscaled to this shorter side (0: full resolution); "
                   "--min-face counts its pixels. Frames and crops stay at full resolution.")
@click.option("--detect-every", type=click.IntRange(1), default=DETECT_EVERY, show_default=True,
              help="Full detection on every N-th kept frame (and at possible shot cuts); faces are "
                   "followed in between (centerface, mtcnn). 1: detect every frame.")
@click.option("--shard", default=None, metavar="I/N",
              help="Ingest only block I of N of the media (from 0), e.g. as one job of a cluster array; "
                   "then merge-manifests the N manifests [default: all media].")
@overwrite_option
@click.pass_context
def ingest(ctx: click.Context, media: tuple[Path, ...], out: Path, detector: str, fps: float | None,
           stride: int | None, min_face: int, threshold: float | None, no_crops: bool, margin: float,
           resume: bool, detect_size: int, detect_every: int, shard: str | None, overwrite: bool) -> None:
    """Detect faces in videos and photos (files or folders) and write a manifest with shots."""
    # a rerun with --resume rebuilds the manifest from the records of the media it finished
    refuse(out, "a manifest", "write elsewhere with -o, or rerun with --resume (the default) to rebuild it from "
           f"the media finished before ({out.name}.parts)", overwrite,
            holds=out.exists() and not (resume and out.with_name(out.name + ".parts").is_dir()))
    from .embed import parse_shard
    from .ingest import ingest_media

    where = parse_shard(shard) if shard is not None else None
    report = ingest_media(media, out, detector, fps=fps, stride=stride, min_face=min_face, threshold=threshold,
                          crops=not no_crops, margin=margin, progress=progress(ctx), resume=resume,
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
@overwrite_option
@click.pass_context
def synth(ctx: click.Context, out: Path, identities: Path | None, n_identities: int, shots: int,
          fps: float, max_people: int, seed: int, labels_per_person: int, overwrite: bool) -> None:
    """Render a synthetic episode: frames, a manifest with boxes and identities, truth."""
    refuse(out, "a synthetic episode", "write elsewhere with -o", overwrite,
           holds=(out / "manifest.jsonl").exists())
    from data_tools.labels import draw_labels, write_labels
    from data_tools.synthetic import make_episode
    from .manifest import Manifest

    ids = Manifest.read(identities) if identities is not None else None
    path = make_episode(out, ids, n_identities=n_identities, n_shots=shots, fps=fps,
                        max_people=max_people, seed=seed, progress=progress(ctx))
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
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True,
              help="timm backbone for appearance on crops.")
@click.option("--weights", default=None,
              help="Backbone weights file (.pth/.safetensors) [default: the packaged ImageNet weights].")
@click.option("--truth", type=click.Path(path_type=Path), default=None,
              help="JSONL with id and appearance per face (a synthetic episode's truth.jsonl) "
                   "for exact fragmentation [default: appearances from identity and frame gaps].")
@overwrite_option
@click.pass_context
def track(ctx: click.Context, manifest: Path, out: Path, max_gap: int, min_iou: float,
          min_similarity: float, appearance: str, backbone: str, weights: str | None,
          truth: Path | None, overwrite: bool) -> None:
    """Link faces across frames into tracks and find shot cuts; writes track and shot."""
    refuse(out, "a manifest", "write elsewhere with -o", overwrite)
    from .evaluate import read_appearances, track_quality
    from .manifest import Manifest
    from .track import TrackerConfig, track_manifest

    cfg = TrackerConfig(max_gap=max_gap, min_iou=min_iou, min_similarity=min_similarity,
                        appearance=appearance, backbone=backbone, weights=weights)
    tracked = track_manifest(Manifest.read(manifest), cfg, progress=progress(ctx))
    tracked.write(out)
    appearances = read_appearances(truth, tracked) if truth is not None else None
    click.echo(f"wrote {out}")
    echo_report(track_quality(tracked, appearances, max_gap=max_gap))


# --------------------------------------------------------------------------- pairs
@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Pairs file (.npz).")
@click.option("--rules", default=",".join(DEFAULT_RULES), show_default=True,
              help="Comma-separated rules; name:weight sets a weight.")
@click.option("--labels", multiple=True, type=click.Path(path_type=Path),
              help="Naming rounds (repeatable, in order): a person's names, removals and same/different "
                   "answers become pairs that win over the rules'.")
@click.option("--clusters", type=click.Path(path_type=Path), default=None,
              help="The clusters that 'cluster,name' rows of --labels refer to [default: none].")
@click.option("--policy", type=click.Choice(["different", "drop"]), default="different", show_default=True,
              help="Conflicts: cannot-link wins, or drop the pair.")
@overwrite_option
def pairs(manifest: Path, out: Path, rules: str, labels: tuple[Path, ...], clusters: Path | None,
          policy: str, overwrite: bool) -> None:
    """Apply the cheap-label rules to MANIFEST and store the pairs."""
    refuse(out, "rule pairs", "write elsewhere with -o", overwrite)
    from .manifest import Manifest
    from .pipeline import rule_pairs

    ps = rule_pairs(Manifest.read(manifest), rules, policy, labels, clusters, source=manifest)
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
              help="Start at this step: its number, or the name of its command (first such step) "
                   "[default: the first].")
@click.option("--to", "last", default=None, metavar="STEP",
              help="Stop after this step: its number, or the name of its command (first such step "
                   "from --from on) [default: the last].")
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


