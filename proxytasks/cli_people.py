"""``proxytasks`` commands of the people stages: index, search, cluster, name, suggest,
simulate, export, app and report (registered on the group in :mod:`proxytasks.cli`).
"""
from __future__ import annotations

from pathlib import Path

import click

from .cli_common import echo_report, overwrite_option, progress, refuse
from .errors import ProxytasksError


# --------------------------------------------------------------------------- index, clusters, names
@click.command()
@click.argument("emb", metavar="EMB...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Index folder.")
@click.option("--factory", default=None, help="faiss factory string [default: chosen from size and memory].")
@click.option("--memory-gb", default=4.0, show_default=True, help="Memory budget for the automatic choice.")
@click.option("--add", is_flag=True, help="Add the faces of EMB that are new to an existing index.")
@click.option("--device", default="auto", show_default=True,
              help="cuda: train and search the index on the GPU where faiss has GPU support (auto: when present).")
@overwrite_option
def index(emb: tuple[Path, ...], out: Path, factory: str | None, memory_gb: float, add: bool, device: str,
          overwrite: bool) -> None:
    """Build a FAISS index over the embeddings EMB (index_infos.json beside it).

    EMB is one embeddings file, or the shard files of one `embed --shard I/N` run (all N)."""
    refuse(out, "an index", "add the new faces with --add, or write elsewhere with -o", overwrite,
           holds=not add and out.exists() and (not out.is_dir() or any(out.iterdir())))
    from .embed import load_embeddings
    from .index import FaceIndex

    e = load_embeddings(emb)
    named = emb[0] if len(emb) == 1 else f"the shards {emb[0]}..."
    if add:
        idx = FaceIndex.load(out, device=device)
        idx.check_source(e.meta, e.vectors.shape[1], named, out)
        click.echo(f"added {idx.add_new(e.vectors, e.ids)} faces")
    else:
        idx = FaceIndex.build(e.vectors, e.ids, factory=factory, memory_budget_gb=memory_gb, source=e.meta,
                              device=device)
    idx.save(out)
    click.echo(f"wrote {out}: {idx.factory}, {len(idx)} faces x {idx.dim} dims")


@click.command()
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


@click.command()
@click.argument("emb", type=click.Path(path_type=Path))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="CSV id,cluster.")
@click.option("-k", default=10, show_default=True, help="Neighbours per track in the kNN graph.")
@click.option("--threshold", type=float, default=None,
              help="Cosine similarity to merge [default: set from the links by --threshold-rule].")
@click.option("--threshold-rule", type=click.Choice(["auto", "violations", "midpoint"]), default="auto",
              show_default=True,
              help="How the threshold is set from the rule pairs, never from names. violations: the loosest "
                   "threshold before merges start to bring cannot-linked faces together (vectors never trained "
                   "on these pairs: pretrained features). midpoint: halfway between the median cosine of "
                   "must-linked (same-track) and of cannot-linked face pairs (a head trained on these pairs has "
                   "pushed exactly the cannot-linked faces apart, so their violations come too late). auto: "
                   "midpoint when EMB's header names a trained head, else violations (with a warning when the "
                   "header does not say and the vectors look trained on the pairs).")
@click.option("--seed", default=0, show_default=True, help="Random seed (kNN graph, calibration sample).")
@click.option("--device", default="auto", show_default=True, help="cuda: the kNN graph on the GPU where faiss has GPU "
              "support.")
@overwrite_option
def cluster(emb: Path, manifest: Path, pairs: Path, out: Path, k: int, threshold: float | None,
            threshold_rule: str, seed: int, device: str, overwrite: bool) -> None:
    """Cluster faces into people: tracks kept whole, cannot-linked faces kept apart.

    Average linkage over tracks; the number of people is unknown, and the threshold comes
    from the rule pairs (see --threshold-rule).
    """
    refuse(out, "clusters", "write elsewhere with -o", overwrite)
    from .cluster import write_clusters
    from .embed import Embeddings
    from .evaluate import cluster_report
    from .manifest import Manifest
    from .pairs import PairSet
    from .pipeline import check_same_faces, cluster_people

    e, m = Embeddings.load(emb), Manifest.read(manifest, check_files=False)
    check_same_faces(e, m, emb, manifest)
    ids = e.ids
    result = cluster_people(e, m, PairSet.load(pairs, face_ids=ids), k=k, threshold=threshold, seed=seed,
                            device=device, threshold_rule=threshold_rule)
    write_clusters(out, ids, result.labels)
    click.echo(f"wrote {out}: {result.labels.max() + 1} clusters at threshold {result.threshold:.4f} "
               f"({result.info.get('threshold_rule', 'given')})")
    echo_report(cluster_report(m, result.labels))


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("emb", type=click.Path(path_type=Path))
@click.argument("labels", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="CSV id,name,confidence,source.")
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="Carry names along its tracks; its images for --strategy global (and independent "
                   "when RUN/features.npz does not hold the faces of EMB) [default: no tracks].")
@click.option("--clusters", type=click.Path(path_type=Path), default=None,
              help="Carry names along these clusters (CSV id,cluster) [default: none].")
@click.option("--head", type=click.Choice(["linear", "prototype"]), default="linear", show_default=True,
              help="Naming classifier: prototypes fine-tuned (linear) or the names' mean faces (prototype).")
@click.option("--unknown-threshold", default="auto", show_default=True,
              help="Cosine similarity between a track and the nearest name's faces below which the track is "
                   "unknown: 'auto' calibrates it on the named faces (leave-one-out), 'none' never rejects.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--strategy", default="sequential", show_default=True,
              help="independent (naming on the frozen pretrained trunk features), sequential (on the proxy "
                   "embedding EMB) or global (trunk's last stage, head and naming fine-tuned jointly).")
@click.option("--pairs", "pairs_path", type=click.Path(path_type=Path), default=None,
              help="Rule pairs of the manifest, for --strategy global [default: none].")
@click.option("--steps", type=click.IntRange(0), default=None,
              help="Joint fine-tuning steps for --strategy global [default: 200, or until --time-budget].")
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds for joint fine-tuning (--strategy global); stops cleanly [default: no limit].")
@overwrite_option
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
    refuse(out, "names", "write elsewhere with -o", overwrite)
    from .naming import write_names
    from .pipeline import name_run

    ids, result, info = name_run(run, emb, labels, manifest, clusters, strategy, pairs_path, steps, time_budget,
                                 seed, progress(ctx), head=head, unknown_threshold=unknown_threshold)
    write_names(out, ids, result)
    named = sum(n is not None for n in result.names)
    click.echo(f"wrote {out}: {named} of {len(ids)} faces named, {len(set(result.names) - {None})} names "
               f"(strategy {strategy})")
    tau = result.info.get("unknown_threshold")
    click.echo(f"  unknown threshold: {'none' if tau is None else f'{tau:.4f}'}"
               + (f" ({result.info['calibration']['rule']})" if "calibration" in result.info else ""))
    if "fine_tune" in info:
        t = info["fine_tune"]
        click.echo(f"  joint fine-tuning: {t['steps']} steps in {t['seconds']:.1f} s ({t['stopped']}), "
                   f"loss on the first batch {t['loss_before']:.4f} -> {t['loss_after']:.4f}")


def _refuse_sheet(out: Path, overwrite: bool) -> None:
    """A suggestion sheet is where a person types names: never replaced silently."""
    from .active import sheet_answers

    filled = sheet_answers(out)
    if filled:
        refuse(out, f"a sheet with {filled} answer(s) a person typed", "it is a naming round: give it to "
               "`proxytasks name` (or `--labels`) and write the next sheet elsewhere with -o", overwrite)
    refuse(out, "a suggestion sheet", "write elsewhere with -o", overwrite)


@click.command()
@click.argument("emb", type=click.Path(path_type=Path))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Suggestion sheet (CSV) to write; fill its name/answer column and give it to `name`.")
@click.option("--clusters", type=click.Path(path_type=Path), default=None,
              help="CSV id,cluster from `cluster` [default: none].")
@click.option("--labels", multiple=True, type=click.Path(path_type=Path),
              help="Naming rounds so far (repeatable, in order).")
@click.option("--strategy", default="margin", show_default=True,
              help="How to pick the faces: clusters, margin, breadth, random, or one registered in "
                   "proxytasks.active.SUGGESTION_STRATEGIES.")
@click.option("-n", default=20, show_default=True, help="Faces to name.")
@click.option("--pairs", "n_pairs", default=0, show_default=True,
              help="Also ask this many 'same person?' questions (clusters to merge or split).")
@click.option("--seed", default=0, show_default=True, help="Random seed (the random strategy, ties).")
@overwrite_option
def suggest(emb: Path, manifest: Path, out: Path, clusters: Path | None, labels: tuple[Path, ...],
            strategy: str, n: int, n_pairs: int, seed: int, overwrite: bool) -> None:
    """Which faces a person should name next (active learning), each with the reason."""
    _refuse_sheet(out, overwrite)
    from .active import check_strategies, face_images, write_suggestions
    from .cluster import read_clusters
    from .embed import Embeddings
    from .manifest import Manifest
    from .naming import Annotations, read_annotations
    from .pipeline import check_same_faces, suggest_faces

    check_strategies([strategy])
    e, m = Embeddings.load(emb), Manifest.read(manifest, check_files=False)
    check_same_faces(e, m, emb, manifest)
    groups = read_clusters(clusters, e.ids) if clusters is not None else None
    ann = read_annotations(labels, e.ids, groups) if labels else Annotations()
    todo = suggest_faces(e, m, groups, ann, strategy, n, n_pairs, seed)
    write_suggestions(out, e.ids, todo, images=face_images(m, out))
    click.echo(f"wrote {out}: {sum(s.kind == 'name' for s in todo)} faces to name, "
               f"{sum(s.kind == 'same' for s in todo)} same-person questions ({len(ann.named)} faces named so far)")
    for rank, s in enumerate(todo[:5], 1):
        click.echo(f"  {rank}. {e.ids[s.face]}: {s.reason}")


@click.command()
@click.argument("sheet", type=click.Path(path_type=Path))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="The answered sheet to write.")
@overwrite_option
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
@click.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.argument("names", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Dataset folder to write.")
@click.option("--min-confidence", type=float, default=None,
              help="Predicted names below this confidence go to _unknown; given names always stay "
                   "[default: every predicted name kept].")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in OUT (one with names.json).")
@click.pass_context
def export(ctx: click.Context, manifest: Path, names: Path, out: Path, min_confidence: float | None,
           overwrite: bool) -> None:
    """Write the named dataset: a folder of face crops per name of NAMES, _unknown apart."""
    from .export import export_dataset

    summary = export_dataset(manifest, names, out, min_confidence=min_confidence, overwrite=overwrite,
                             progress=progress(ctx))
    click.echo(f"wrote {out}")
    echo_report(summary)


# --------------------------------------------------------------------------- app
@click.command("app")
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
@click.command("report")
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
@overwrite_option
@click.pass_context
def report_cmd(ctx: click.Context, run_dir: Path, out: Path | None, manifest: Path | None, pairs: Path | None,
               clusters: Path | None, names: Path | None, suggestions: Path | None, metrics: Path | None,
               train_run: Path | None, budget: Path | None, max_clusters: int, per_cluster: int,
               overwrite: bool) -> None:
    """A self-contained HTML page of the run folder RUN: audit, training, metrics, galleries."""
    refuse(out if out is not None else run_dir / "report.html", "a report", "write elsewhere with -o",
           overwrite)
    from .report import write_report

    out = out if out is not None else run_dir / "report.html"
    summary = write_report(run_dir, out, manifest=manifest, pairs=pairs, clusters=clusters, names=names,
                           suggestions=suggestions, metrics=metrics, train_run=train_run, budget=budget,
                           max_clusters=max_clusters, per_cluster=per_cluster, progress=progress(ctx))
    click.echo(f"wrote {out}")
    echo_report({k: ", ".join(v) or "-" if isinstance(v, list) else v for k, v in summary.items() if k != "out"})


COMMANDS = (index, search, cluster, name, suggest, simulate, export, app_cmd, report_cmd)
