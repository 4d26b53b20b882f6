"""The ``proxytasks`` command line: thin click commands over the library functions.

Bad input raises :class:`~proxytasks.errors.ProxytasksError` in the library; here it
becomes ``Error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import json
import logging
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


@click.group(cls=ProxytasksGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quiet", "-q", is_flag=True, help="No progress bars, warnings only.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.version_option(package_name="proxytasks")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """proxytasks: free same/different labels from video structure, to name faces."""
    ctx.ensure_object(dict)
    ctx.obj.setdefault("quiet", quiet)
    level = logging.DEBUG if verbose else logging.WARNING if ctx.obj["quiet"] else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


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
    for key, value in summary.items():
        click.echo(f"  {key:<12} {value}")


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
def import_folders_cmd(root: Path, out: Path) -> None:
    """Identity folders: ROOT/<identity>/<image>, each image a face photo."""
    from data_tools.importers import import_folders

    _report_import(import_folders(root, out), out)


@import_.command("pattern")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--regex", required=True, help="Regular expression with a named group 'identity' "
              "(and optionally 'frame', 'media'), searched in each file's relative path.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--recursive", is_flag=True, help="Look into subfolders too.")
def import_pattern_cmd(root: Path, regex: str, out: Path, recursive: bool) -> None:
    """Flat files with the identity in the name, e.g. --regex '(?P<identity>subject\\d+)\\.'."""
    from data_tools.importers import import_pattern

    _report_import(import_pattern(root, regex, out, recursive=recursive), out)


@import_.command("crops")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--media", default=None, help="Name of the video the crops come from (default: file prefix).")
def import_crops_cmd(root: Path, out: Path, media: str | None) -> None:
    """Frame-indexed crops: ROOT/[<identity>/]<prefix>_<frame>_<k>.<ext>."""
    from data_tools.importers import import_crops

    _report_import(import_crops(root, out, media=media), out)


@import_.command("detections")
@click.argument("table", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Manifest to write.")
@click.option("--image-template", default=None,
              help="Frame image path from {media}, {media_stem}, {frame}, e.g. 'frames/{media_stem}/{frame:06d}.jpg'.")
def import_detections_cmd(table: Path, out: Path, image_template: str | None) -> None:
    """A detections table (CSV/TSV/JSONL: media, frame, x, y, w, h, score)."""
    from data_tools.importers import import_detections

    _report_import(import_detections(table, out, image_template=image_template), out)


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
@click.pass_context
def synth(ctx: click.Context, out: Path, identities: Path | None, n_identities: int, shots: int,
          fps: float, max_people: int, seed: int) -> None:
    """Render a synthetic episode: frames, a manifest with boxes and identities, truth."""
    from data_tools.synthetic import make_episode
    from .manifest import Manifest

    ids = Manifest.read(identities) if identities is not None else None
    path = make_episode(out, ids, n_identities=n_identities, n_shots=shots, fps=fps,
                        max_people=max_people, seed=seed, progress=_progress(ctx))
    s = Manifest.read(path, check_files=False).summary()
    click.echo(f"wrote {path}: {s['faces']} faces in {s['frames']} frames, {s['identities']} identities")


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
@click.pass_context
def track(ctx: click.Context, manifest: Path, out: Path, max_gap: int, min_iou: float,
          min_similarity: float, appearance: str, backbone: str, weights: str | None,
          truth: Path | None) -> None:
    """Link faces across frames into tracks and find shot cuts; writes track and shot."""
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
    for key, value in report.items():
        click.echo(f"  {key:<26} {value if not isinstance(value, float) else round(value, 4)}")


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
@click.option("--policy", type=click.Choice(["different", "drop"]), default="different", show_default=True,
              help="Conflicts: cannot-link wins, or drop the pair.")
def pairs(manifest: Path, out: Path, rules: str, policy: str) -> None:
    """Apply the cheap-label rules to MANIFEST and store the pairs."""
    from .manifest import Manifest
    from .rules import RuleSet

    m = Manifest.read(manifest)
    if all(f.track is None for f in m.faces) and any(f.frame is not None for f in m.faces):
        logger.warning("%s has no tracks: same-track pairs need `proxytasks track` first", manifest)
    ps = RuleSet(rules, policy=policy).apply(m)
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
@click.pass_context
def run(ctx: click.Context, recipe: Path, overrides: tuple[str, ...]) -> None:
    """Run a YAML recipe: a chain of proxytasks commands."""
    from .recipe import run_recipe

    run_recipe(recipe, cli, overrides=overrides, obj=ctx.find_root().obj)


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
@click.option("--time-budget", type=float, default=None, help="Seconds for the whole command; stops cleanly and saves.")
@click.option("--lr", default=1e-3, show_default=True, help="Learning rate.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, mps.")
@click.option("--workers", default=1, show_default=True, help="DataLoader workers for decoding faces.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's last checkpoint.")
@click.pass_context
def train_cmd(ctx: click.Context, manifest: Path, pairs: Path, out: Path, backbone: str, weights: str | None,
              head: str, dim: int, input_size: int, loss: str, init: str, steps: int | None,
              epochs: float | None, time_budget: float | None, lr: float, seed: int, device: str,
              workers: int, resume: bool) -> None:
    """Train a face embedding on the rule PAIRS of MANIFEST (Siamese, within a time budget)."""
    from .manifest import Manifest
    from .pairs import PairSet
    from .train import TrainConfig, train

    m = Manifest.read(manifest)
    ps = PairSet.load(pairs, face_ids=[f.id for f in m.faces])
    cfg = TrainConfig(backbone=backbone, weights=weights, head=head, dim=dim, input_size=input_size,
                      loss=loss, init=init, steps=steps, epochs=epochs, time_budget=time_budget, lr=lr,
                      seed=seed, device=device, workers=workers)
    summary = train(m, ps, out, cfg, resume=resume, progress=_progress(ctx))
    click.echo(f"wrote {out}: {summary['steps']} steps in {summary['seconds']:.1f} s ({summary['stopped']}), "
               f"selected {summary['selected']}")
    for name, score in summary["scores"].items():
        click.echo(f"  validation AUC {name:<11} {'-' if score is None else f'{score:.4f}'}")


@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Embeddings file (.npz).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", default=1, show_default=True, help="DataLoader workers for decoding faces.")
@click.option("--device", default="auto", show_default=True)
@click.pass_context
def embed(ctx: click.Context, run_dir: Path, manifest: Path, out: Path, batch_size: int, workers: int,
          device: str) -> None:
    """Embed every face of MANIFEST with the model in RUN."""
    from .embed import embed_manifest
    from .embedder import Embedder
    from .manifest import Manifest
    from .models import select_device

    m = Manifest.read(manifest)
    emb = embed_manifest(Embedder.load(run_dir), m, batch_size, workers, _progress(ctx),
                         str(select_device(device)))
    emb.save(out)
    click.echo(f"wrote {out}: {emb.vectors.shape[0]} faces x {emb.vectors.shape[1]} dims")


def _int_list(value: str, what: str) -> list[int]:
    try:
        items = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ProxytasksError(f"{what} {value!r}: expected comma-separated integers such as 1,5,20") from None
    if not items or min(items) < 1:
        raise ProxytasksError(f"{what} {value!r}: expected positive integers")
    return items


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder (metrics.json).")
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True, help="timm backbone name.")
@click.option("--weights", default=None, help="Backbone weights file (.pth/.safetensors).")
@click.option("--time-budget", default=300.0, show_default=True, help="Seconds for proxy training.")
@click.option("--shots", default="1,5,20", show_default=True, help="Names given per identity.")
@click.option("--repeats", default=5, show_default=True, help="Seeded draws per shot count.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.pass_context
def benchmark(ctx: click.Context, manifest: Path, out: Path, backbone: str, weights: str | None,
              time_budget: float, shots: str, repeats: int, seed: int) -> None:
    """Naming benchmark on a labelled MANIFEST: proxy training vs the pretrained backbone."""
    from .benchmark import run_benchmark

    metrics = run_benchmark(manifest, out, backbone, weights, time_budget, _int_list(shots, "--shots"),
                            repeats, seed, progress=_progress(ctx))
    click.echo(f"wrote {out / 'metrics.json'} ({metrics['seconds']:.0f} s)")
    for name, m in metrics["methods"].items():
        naming = " ".join(f"{k}-shot {'-' if v is None else f'{v:.3f}'}" for k, v in m["naming"].items())
        click.echo(f"  {name:<11} naming {naming} | bcubed F1 {m['clustering']['bcubed_f1']:.3f} "
                   f"({m['clustering']['clusters']} clusters) | AUC {m['verification']['roc_auc']}")
