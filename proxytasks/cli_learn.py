"""``proxytasks`` commands of the learning stages: train, embed, merge-embeddings,
benchmark and budget (registered on the group in :mod:`proxytasks.cli`).
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from .cli_common import fmt, names, numbers, overwrite_option, progress, refuse, run_holds
from .defaults import DEFAULT_BACKBONE, MAX_EPOCHS


# --------------------------------------------------------------------------- learning
@click.command("train")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True, help="timm backbone name.")
@click.option("--weights", default=None, help="Backbone weights file (.pth/.safetensors); 'none' = random "
              "[default: the packaged ImageNet weights].")
@click.option("--head", type=click.Choice(["linear", "mlp"]), default="linear", show_default=True,
              help="Projection head on the pooled trunk features.")
@click.option("--dim", default=128, show_default=True, help="Embedding width.")
@click.option("--input-size", default=128, show_default=True, help="Face crop side fed to the backbone.")
@click.option("--loss", default="auto", show_default=True,
              help="auto (track-supcon with cannot-links, ntxent without), contrastive, multi-similarity, ...")
@click.option("--init", type=click.Choice(["kissme", "random"]), default="kissme", show_default=True,
              help="Start the linear head from the KISSME metric fitted on the pairs.")
@click.option("--steps", type=int, default=None,
              help=f"Optimisation steps [default: from --epochs, else until --time-budget or {MAX_EPOCHS} epochs, "
                   "whichever comes first, else 1000].")
@click.option("--epochs", type=float, default=None, help="Passes over the training faces [default: see --steps].")
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds for the whole command; stops cleanly and saves [default: no limit].")
@click.option("--lr", default=1e-3, show_default=True, help="Learning rate.")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="cosine: decays to zero at the last step (needs --steps or --epochs).")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, mps.")
@click.option("--workers", default=1, show_default=True, help="DataLoader workers for decoding faces.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's last checkpoint.")
@overwrite_option
@click.pass_context
def train_cmd(ctx: click.Context, manifest: Path, pairs: Path, out: Path, backbone: str, weights: str | None,
              head: str, dim: int, input_size: int, loss: str, init: str, steps: int | None,
              epochs: float | None, time_budget: float | None, lr: float, lr_schedule: str, seed: int,
              device: str, workers: int, resume: bool, overwrite: bool) -> None:
    """Train a face embedding on the rule PAIRS of MANIFEST (Siamese, within a time budget).

    On several processes: torchrun --nproc_per_node N -m proxytasks train ... (the same
    result as one process; rank 0 writes the run folder)."""
    refuse(out, run_holds(out) or "", "train into another -o, or add --resume to continue it", overwrite,
           holds=not resume and run_holds(out) is not None)
    from .manifest import Manifest
    from .pairs import PairSet
    from .train import TrainConfig, train

    m = Manifest.read(manifest)
    ps = PairSet.load(pairs, face_ids=[f.id for f in m.faces])
    cfg = TrainConfig(backbone=backbone, weights=weights, head=head, dim=dim, input_size=input_size,
                      loss=loss, init=init, steps=steps, epochs=epochs, time_budget=time_budget, lr=lr,
                      lr_schedule=lr_schedule, seed=seed, device=device, workers=workers)
    from .loop import command_start

    # the budget counts from the command's start: the process's when run as `proxytasks train`
    summary = train(m, ps, out, cfg, resume=resume, progress=progress(ctx),
                    started=command_start(ctx.meta.get("proxytasks.invoked")))
    if int(os.environ.get("RANK", "0") or 0):  # under torchrun, rank 0 reports
        return
    click.echo(f"wrote {out}: {summary['steps']} steps ({summary['epochs']:g} epochs) in {summary['seconds']:.1f} s "
               f"({summary['stopped']}), selected {summary['selected']}")
    cached = summary.get("features", {})
    if cached.get("subsample"):
        click.echo(f"  trained on a subsample of {cached['faces']} of {cached['of']} faces (the time budget); "
                   "a larger --time-budget caches more")
    for name, score in summary["scores"].items():
        click.echo(f"  validation AUC {name:<11} {'-' if score is None else f'{score:.4f}'}")


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Embeddings file (.npz).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True, help="Faces per forward pass.")
@click.option("--workers", default=1, show_default=True, help="DataLoader workers for decoding faces.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N, mps.")
@click.option("--resume", is_flag=True,
              help="Reuse the chunks a killed run left in OUT.partial/ (same model, device kind and faces).")
@click.option("--chunk-size", type=click.IntRange(1), default=4096, show_default=True,
              help="Faces per resumable chunk (rounded up to whole batches).")
@click.option("--shard", default=None, metavar="I/N",
              help="Embed only block I of N of the faces (from 0), e.g. as one job of a cluster array; "
                   "then merge-embeddings or index the N files [default: all faces].")
@overwrite_option
@click.pass_context
def embed(ctx: click.Context, run: Path, manifest: Path, out: Path, batch_size: int, workers: int,
          device: str, resume: bool, chunk_size: int, shard: str | None, overwrite: bool) -> None:
    """Embed every face of MANIFEST with the model in RUN (resumable: see --resume)."""
    refuse(out, "embeddings", "write elsewhere with -o, or --resume to finish it", overwrite,
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
    emb = embed_to_file(embedder, m, out, batch_size, workers, progress(ctx), str(select_device(device)),
                        resume=resume, chunk_size=chunk_size, meta=extra)
    part = f" (shard {shard} of {extra['shard']['faces']} faces)" if extra else ""
    click.echo(f"wrote {out}: {emb.vectors.shape[0]} faces x {emb.vectors.shape[1]} dims{part}")


@click.command("merge-embeddings")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Embeddings file (.npz).")
@overwrite_option
def merge_embeddings(shards: tuple[Path, ...], out: Path, overwrite: bool) -> None:
    """Join the SHARDS that `embed --shard I/N` wrote into the embeddings of the whole manifest."""
    refuse(out, "embeddings", "write elsewhere with -o", overwrite)
    from .embed import Embeddings, merge_shards

    e = merge_shards([Embeddings.load(p) for p in shards], [str(p) for p in shards])
    e.save(out)
    click.echo(f"wrote {out}: {e.vectors.shape[0]} faces x {e.vectors.shape[1]} dims from {len(shards)} shards")


@click.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder (metrics.json).")
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True, help="timm backbone name.")
@click.option("--weights", default=None,
              help="Backbone weights file (.pth/.safetensors) [default: the packaged ImageNet weights].")
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=300.0, show_default=True,
              help="Seconds for proxy training.")
@click.option("--shots", default="1,5,20", show_default=True, help="Names given per identity.")
@click.option("--repeats", default=5, show_default=True, help="Seeded draws per shot count.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--active", "active", is_flag=False, flag_value="clusters,margin,breadth,random", default=None,
              help="Add naming accuracy vs names typed by a simulated person for these strategies "
                   "(bare --active: clusters,margin,breadth,random) [default: none].")
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
@overwrite_option
@click.pass_context
def benchmark(ctx: click.Context, manifest: Path, out: Path, backbone: str, weights: str | None,
              time_budget: float, shots: str, repeats: int, seed: int, active: str | None,
              active_budget: int | None, active_batch: int, peers: str, keep_tracks: bool,
              overwrite: bool) -> None:
    """Naming benchmark on a labelled MANIFEST: proxy training vs the pretrained backbone.

    Scored track-disjoint: faces sharing a track with a named face are not scored, and
    verification counts only pairs of faces from different tracks."""
    refuse(out, "a benchmark (metrics.json)", "write elsewhere with --out", overwrite,
           holds=(out / "metrics.json").exists())
    from .active import best_strategy, names_to_reach
    from .benchmark import run_benchmark

    strategies = list(names(active)) if active else []
    metrics = run_benchmark(manifest, out, backbone, weights, time_budget, numbers(shots, "--shots"), repeats, seed,
                            progress=progress(ctx), active=strategies, active_budget=active_budget,
                            active_batch=active_batch, keep_tracks=keep_tracks,
                            peers=None if peers == "auto" else [p for p in names(peers) if p != "none"])
    click.echo(f"wrote {out / 'metrics.json'} ({metrics['seconds']:.0f} s, protocol {metrics['protocol']})")
    rows = list(metrics["methods"].items()) + [(f"  {name}", m) for name, m in
                                               metrics.get("peer_variants", {}).get("face_recognition", {}).items()]
    for name, m in rows:
        naming = " ".join(f"{k}-shot {fmt(v)}" for k, v in m["naming"].items())
        click.echo(f"  {name:<16} naming {naming} | bcubed F1 {m['clustering']['bcubed_f1']:.3f} "
                   f"({m['clustering']['clusters']} clusters) | AUC {fmt(m['verification']['roc_auc'])}")
    if "alignment" in metrics:
        a = metrics["alignment"]
        click.echo(f"  faces given as crops: {a['faces']}; the face found inside by a detector in {a['found']}, "
                   f"the central region used for {a['fallback']}")
    if strategies:
        reach = {k: names_to_reach(c) for k, c in metrics["active"].items()}
        click.echo("  names typed to reach 90% naming accuracy: "
                   + ", ".join(f"{k} {'never' if v is None else v}" for k, v in reach.items()))
        best = best_strategy(reach)
        if best:
            click.echo(f"  best strategy {best[0]}: {best[1]} names vs random {reach['random']} "
                       f"(ratio {best[2]:.2f}: times fewer names)")


@click.command()
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
@overwrite_option
@click.pass_context
def budget(ctx: click.Context, manifest: Path, out: Path, budgets: str, pairs: Path | None, backbones: str | None,
           fractions: str, steps: str, schedules: str, strategies: str, joint_steps: int, max_configs: int,
           shots: int, repeats: int, test_share: float, seed: int, device: str, workers: int,
           overwrite: bool) -> None:
    """Compute-budget sweep on MANIFEST: backbone x pairs x optimisation effort x strategy per budget."""
    refuse(out, "a budget sweep (budget.json)", "write elsewhere with --out", overwrite,
           holds=(out / "budget.json").exists())
    from .pipeline import tracked_pairs
    from .budget import SweepSettings, budget_sweep, describe
    from .manifest import Manifest
    from .pairs import PairSet

    settings = SweepSettings(budgets=tuple(numbers(budgets, "--budgets", float)),
                             backbones=names(backbones) if backbones else None,
                             fractions=tuple(numbers(fractions, "--fractions", float)),
                             steps=tuple(numbers(steps, "--steps")), schedules=names(schedules),
                             strategies=names(strategies), joint_steps=joint_steps, max_configs=max_configs,
                             shots=shots, repeats=repeats, test_share=test_share, seed=seed, device=device,
                             workers=workers)
    m = Manifest.read(manifest)
    if pairs is not None:
        ps = PairSet.load(pairs, face_ids=[f.id for f in m.faces])
    else:
        out.mkdir(parents=True, exist_ok=True)
        m, ps = tracked_pairs(m, out, progress(ctx))
    result = budget_sweep(m, ps, out, settings, progress=progress(ctx))
    click.echo(f"wrote {out / 'budget.json'} ({result['seconds']:.0f} s for budgets of "
               f"{sum(settings.budgets):.0f} s in all); error: {result['error']}")
    for key, row in result["budgets"].items():
        best = row["best"]
        click.echo(f"  {key:>6} s: {describe(best)}" + (f" (error {best['error']:.4f}, {best['actual_s']:.0f} s)"
                                                        if best else ""))
    click.echo(result["conclusion"])


COMMANDS = (train_cmd, embed, merge_embeddings, benchmark, budget)
