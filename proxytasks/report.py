"""The run report: one self-contained HTML page of what a recipe left in a run folder.

:func:`write_report` reads the manifest, rule pairs, clusters, names, suggestions,
``metrics.json`` and the training run, and writes a single HTML file with no external
resource and no script: face thumbnails are embedded as JPEG data URIs and plots are
inline SVG drawn by :func:`proxytasks.plots.line_plot`. Every section keeps a stable hook
(``<section id="audit">`` ...). A section whose input is absent says which file was
missing, unless the run's recipe never asked for it (then the section is left out); the
inputs are found and read by :mod:`proxytasks.report_inputs`, and an input that exists
but cannot be read is a :class:`ProxytasksError`.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .errors import ProxytasksError
from .fileio import atomic_write
from .plots import escape as _e
from .plots import finite as _finite
from .plots import line_plot
from .report_inputs import DEFAULTS, asked_for, load_inputs, locate

logger = logging.getLogger(__name__)

SECTIONS = ("audit", "training", "methods", "active", "budget", "galleries", "suggestions")
THUMB = 64                 # thumbnail height in pixels
SUGGESTIONS_SHOWN = 100    # rows per suggestion kind
TARGET = 0.9               # accuracy for "names to reach"
NONE = "–"
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1280px;padding:0 20px 40px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
h3{font-size:14px;margin:14px 0 6px}.meta{font-weight:normal;color:#555}.missing{color:#a33}.note{color:#666}
table{border-collapse:collapse;margin:6px 0}td,th{padding:2px 10px;border-bottom:1px solid #eee;text-align:right}
td.l,th.l{text-align:left}th{background:#f6f6f6}
.plots{display:flex;flex-wrap:wrap;gap:16px}svg.plot{max-width:100%;height:auto;background:#fff}
svg.plot text{font-size:11px;fill:#333}svg.plot .title{font-size:13px;font-weight:600}
svg.plot .grid{stroke:#e6e6e6}svg.plot .axis{stroke:#555;fill:none}
.cluster h3,.unclustered h3{margin:2px 0 6px}.cluster .note{margin:4px 0 0}
.cluster,.unclustered{border:1px solid #ddd;border-radius:6px;padding:6px 8px;margin:8px 0}
.faces{display:flex;flex-wrap:wrap;gap:4px}figure{margin:0;width:max-content;text-align:center}
figure img{display:block;border:2px solid transparent;margin:0 auto}figure.odd img{border-color:#e67e22}
figcaption{font-size:10px;line-height:1.2;color:#444;max-width:90px;overflow:hidden;white-space:nowrap;
text-overflow:ellipsis}.pair{display:flex;gap:4px;align-items:center}
details{margin:6px 0}code{font-size:12px}summary{cursor:pointer}
"""


def _num(v: Any, digits: int = 3) -> str:
    """A number for a table cell; null, NaN and non-numbers are a dash."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{int(v):,}"
    return f"{v:.{digits}f}" if _finite(v) else NONE


# --------------------------------------------------------------------------- thumbnails
def _jpeg(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnail(img: Image.Image) -> tuple[str, int]:
    """``(data URI, width)`` of ``img`` scaled to THUMB pixels high."""
    w, h = img.size
    width = max(1, min(2 * THUMB, round(w * THUMB / h)))
    return _jpeg(img.convert("RGB").resize((width, THUMB), Image.BILINEAR)), width


def _spread(members: np.ndarray, k: int) -> np.ndarray:
    """At most ``k`` of ``members``, evenly spaced (so long tracks do not fill a block)."""
    if len(members) <= k:
        return members
    return members[np.unique(np.linspace(0, len(members) - 1, k).round().astype(int))]


# --------------------------------------------------------------------------- the page
class _Page:
    """Builds the HTML sections from the loaded inputs."""

    def __init__(self, run_dir: Path, paths: dict[str, Path | None], data: dict[str, Any],
                 max_clusters: int, per_cluster: int) -> None:
        self.run_dir, self.paths, self.d = run_dir, paths, data
        self.max_clusters, self.per_cluster = max_clusters, per_cluster
        self.missing: list[str] = []
        self.not_asked: list[str] = []  # inputs no step of the run's recipe writes
        self.thumbs: dict[int, tuple[str, int]] = {}
        self.unreadable: set[int] = set()
        self.blocks: list[tuple[int, np.ndarray, np.ndarray]] = []   # (cluster, members, shown)
        self.n_clusters, self.unclustered = 0, np.zeros(0, np.int64)

    def _missing(self, key: str, what: str, path: Path | None = None) -> str:
        """A "Missing" line for an input the run's recipe asked for; nothing (the section is
        left out) for one no step of the recipe writes."""
        if path is None and not asked_for(self.d.get("recipe"), key):
            self.not_asked.append(key)
            return ""
        shown = str(path) if path is not None else " or ".join(str(self.run_dir / c) for c in DEFAULTS[key])
        self.missing.append(shown)
        return f'<p class="missing">Missing {_e(shown)}: {_e(what)}.</p>'

    def plan(self) -> list[int]:
        """Choose the clusters and faces shown; returns the faces that need a thumbnail."""
        faces: list[int] = []
        labels = self.d.get("clusters")
        if labels is not None:
            cids, sizes = np.unique(labels[labels >= 0], return_counts=True)
            order = sorted(zip(sizes.tolist(), cids.tolist()), key=lambda t: (-t[0], t[1]))
            self.n_clusters = len(order)
            for _, c in order[:self.max_clusters]:
                members = np.flatnonzero(labels == c)
                self.blocks.append((c, members, _spread(members, self.per_cluster)))
            self.unclustered = np.flatnonzero(labels < 0)
            for _, _, shown in self.blocks:
                faces.extend(shown.tolist())
            faces.extend(_spread(self.unclustered, self.per_cluster).tolist())
        pos = self.d.get("pos")
        if pos is not None:
            for _, rows in self._suggestion_groups().items():
                for _, row in rows[:SUGGESTIONS_SHOWN]:
                    faces.extend(pos[row[col]] for col in ("id", "id2") if row.get(col))
        return list(dict.fromkeys(faces))

    def render_thumbnails(self, faces: list[int], progress: bool) -> None:
        from .embed import load_face

        m = self.d["manifest"]
        grey = None
        for i in tqdm(faces, desc="thumbnails", unit="face", disable=not progress):
            try:
                thumb = _thumbnail(load_face(m, m.faces[i]))
            except (ProxytasksError, OSError, ValueError, TypeError, ZeroDivisionError) as e:
                logger.debug("face %s: no thumbnail (%s)", m.faces[i].id, e)
                self.unreadable.add(i)
                grey = grey or (_jpeg(Image.new("RGB", (52, THUMB), (170, 170, 170))), 52)
                thumb = grey
            self.thumbs[i] = thumb
        if self.unreadable:
            logger.warning("%d face images could not be read; shown as grey placeholders", len(self.unreadable))

    def face(self, i: int, odd: bool = False) -> str:
        """A figure with the thumbnail of face ``i``, its name and confidence."""
        f = self.d["manifest"].faces[i]
        uri, width = self.thumbs[i]
        name, conf = self.d.get("names", {}).get(f.id, ("", None))
        title = f"{f.id} · {name or 'unknown'} · confidence {_num(conf, 2)}"
        if f.identity is not None:
            title += f" · identity {f.identity}"
        if i in self.unreadable:
            title += " · image unreadable"
        caption = f"{_e(name) if name else '<i>unknown</i>'} {_num(conf, 2)}" if "names" in self.d else _e(f.id)
        cls = ' class="odd"' if odd else ""
        return (f'<figure{cls}><img src="{uri}" width="{width}" height="{THUMB}" '
                f'alt="{_e(f.id)}" title="{_e(title)}"><figcaption>{caption}</figcaption></figure>')

    # ----------------------------------------------------------------------- sections
    def header(self) -> str:
        m, metrics = self.d.get("manifest"), self.d.get("metrics", {})
        out = [f"<h1>proxytasks report: {_e(self.run_dir.resolve().name)}</h1>",
               f'<p class="meta">run folder <code>{_e(self.run_dir)}</code> · written '
               f'{datetime.now().isoformat(sep=" ", timespec="seconds")}</p>']
        summary = m.summary() if m is not None else metrics.get("dataset")
        if isinstance(summary, dict):
            keys = [k for k in ("faces", "media", "frames", "tracks", "shots", "identities") if k in summary]
            out.append(_table(["dataset"] + keys, [["manifest" if m is not None else "metrics.json"]
                                                   + [_num(summary[k]) for k in keys]]))
        else:
            out.append(self._missing("manifest", "no dataset summary"))
        rows = "".join(f"<li>{_e(k.replace('_', ' '))}: <code>{_e(p) if p else 'not found'}</code></li>"
                       for k, p in self.paths.items())
        out.append(f"<details><summary>inputs</summary><ul>{rows}</ul></details>")
        recipe = self.d.get("recipe")
        if isinstance(recipe, dict) and isinstance(recipe.get("steps"), list):
            steps = []
            for step in recipe["steps"]:
                for name, opts in (step.items() if isinstance(step, dict) else [(step, {})]):
                    args = " ".join(f"--{k} {v}" for k, v in (opts or {}).items()) if isinstance(opts, dict) else opts
                    steps.append(f"<li><code>proxytasks {_e(name)} {_e(args)}</code></li>")
            plural = "s" * (len(steps) != 1)
            out.append(f"<details><summary>recipe ({len(steps)} step{plural})</summary><ol>{''.join(steps)}</ol>"
                       "</details>")
        return "".join(out)

    def audit(self) -> str:
        audit, metrics = self.d.get("audit"), self.d.get("metrics", {})
        note = ""
        if audit is None and isinstance(metrics.get("rules"), dict):
            audit, note = {"rules": metrics["rules"]}, '<p class="note">From metrics.json (the benchmark\'s pairs).</p>'
        if audit is None:
            return "".join(self._missing(k, "no rule audit") for k in ("manifest", "pairs") if self.paths[k] is None)
        n = len(self.d["manifest"]) if "manifest" in self.d else None
        rows = []
        for name, r in audit["rules"].items():
            r = r if isinstance(r, dict) else {}
            covered = _num(r.get("faces_covered"))
            if n and _finite(r.get("faces_covered")):
                covered += f" ({100 * r['faces_covered'] / n:.0f}%)"
            rows.append([_e(name), _e(r.get("label", NONE)), _num(r.get("pairs")), _num(r.get("precision"), 4),
                         covered, _num(r.get("identities_covered"))])
        out = _table(["rule", "label", "pairs", "precision", "faces covered", "identities"], rows, left=2)
        if "conflicts" in audit:
            out += f'<p class="note">Conflicts resolved: {_num(audit["conflicts"])}.</p>'
        return out + note

    def training(self) -> str:
        if self.paths["train_run"] is None:
            return self._missing("train_run", "no training curve")
        log, config = self.d.get("train_log"), self.d.get("train_config", {})
        summary = config.get("train", {}) if isinstance(config, dict) else {}
        out = []
        if log is None:
            out.append(self._missing("train_run", "no training curve", self.paths["train_run"] / "train_log.jsonl"))
        elif not log:
            out.append(f'<p class="note">{_e(self.paths["train_run"] / "train_log.jsonl")} is empty: '
                       "no step was logged.</p>")
        else:
            steps = [(r.get("step"), r.get("loss")) for r in log]
            aucs = [(r.get("step"), r.get("val_auc")) for r in log]
            validated = any(_finite(y) for _, y in aucs)
            best = summary.get("best_step") if isinstance(summary, dict) and validated else None
            plots = [line_plot([("loss", steps)], title="training loss", xlabel="step", ylabel="loss",
                               integer_x=True, vline=best)]
            if validated:
                plots.append(line_plot([("validation AUC", aucs)], title="validation AUC (held-out rule pairs)",
                                       xlabel="step", ylabel="ROC-AUC", ycap=1.0, integer_x=True, vline=best))
            out.append('<div class="plots">' + "".join(plots) + "</div>")
            if _finite(best):
                out.append('<p class="note">Dashed line: the best step by validation AUC.</p>')
            elif not validated:
                out.append('<p class="note">No validation AUC: the run held out no rule pairs to score '
                           "(see holdout_pairs below).</p>")
        if isinstance(summary, dict) and summary:
            rows = [[_e(k), _e(_plain(v))] for k, v in summary.items()]
            out.append(_table(["training", "value"], rows, left=2))
        elif self.paths["train_run"] is not None and "train_config" not in self.d:
            out.append(self._missing("train_run", "no training summary", self.paths["train_run"] / "config.json"))
        return "".join(out)

    def methods(self) -> str:
        metrics = self.d.get("metrics")
        if metrics is None:
            return self._missing("metrics", "no pretrained vs proxy comparison")
        methods = {k: v for k, v in metrics.get("methods", {}).items() if isinstance(v, dict)}
        if not methods:
            return '<p class="note">metrics.json holds no methods.</p>'
        names = sorted(methods, key=lambda k: (k != "pretrained", k != "proxy", k))
        variants = metrics.get("peer_variants")
        for peer, table in (variants.items() if isinstance(variants, dict) else ()):
            for variant, m in (table.items() if isinstance(table, dict) else ()):
                if isinstance(m, dict):
                    methods[f"{peer} ({variant})"] = m
                    names.append(f"{peer} ({variant})")
        shots = {str(k) for m in methods.values() for part in ("naming", "naming_macro_f1")
                 if isinstance(m.get(part), dict) for k in m[part]}
        shots = sorted(shots, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
        specs = ([(f"naming accuracy, {k} shot{'s' * (k != '1')}", "naming", k) for k in shots]
                 + [(f"naming macro-F1, {k} shot{'s' * (k != '1')}", "naming_macro_f1", k) for k in shots]
                 + list(METRIC_ROWS))
        rows = []
        for label, part, key in specs:
            values = [_get(methods[m], part, key) for m in names]
            numbers = [v for v in values if _finite(v)]
            unique_best = len(numbers) > 1 and numbers.count(max(numbers)) == 1 and key != "clusters"
            best = max(numbers) if unique_best else None
            rows.append([_e(label)] + [f"<b>{_num(v)}</b>" if best is not None and v == best else _num(v)
                                       for v in values])
        out = [_table(["metric"] + [_e(m) for m in names], rows)]
        facts = []
        dataset, train = metrics.get("dataset"), metrics.get("train")
        if isinstance(dataset, dict):
            facts.append("benchmark data: " + ", ".join(f"{_num(v)} {_e(k)}" for k, v in dataset.items()))
        if isinstance(train, dict):
            facts.append(f"proxy training: {_num(train.get('seconds'), 1)} s, {_num(train.get('pairs'))} pairs, "
                         f"{_num(train.get('steps'))} steps")
        if _finite(metrics.get("seconds")):
            facts.append(f"benchmark run: {metrics['seconds']:.0f} s")
        if metrics.get("protocol") == "track-disjoint":
            facts.append("naming scored track-disjoint (faces sharing a track with a named face are not scored), "
                         "verification on pairs of faces from different tracks")
        align = metrics.get("alignment")
        if isinstance(align, dict) and _finite(align.get("faces")) and align["faces"]:
            share = 100.0 * (align.get("fallback") or 0) / align["faces"]
            facts.append(f"faces given as crops: {_num(align['faces'])}, the face found inside by a detector in "
                         f"{_num(align.get('found'))}, the central region used for {_num(align.get('fallback'))} "
                         f"({share:.1f}%)")
        if facts:
            out.append(f'<p class="note">{"; ".join(facts)}. Bold: the better method.</p>')
        return "".join(out)

    def active(self) -> str:
        metrics = self.d.get("metrics")
        if metrics is None:
            return self._missing("metrics", "no naming accuracy curves")
        active = metrics.get("active")
        if not active:
            return '<p class="note">metrics.json holds no "active" curves (naming accuracy vs names typed).</p>'
        out = [line_plot([(s, pts) for s, pts in active.items()], title="naming accuracy vs names typed",
                         xlabel="names typed", ylabel="accuracy", ylim=(0.0, 1.0), integer_x=True,
                         hline=TARGET, width=560, height=320)]
        rows = []
        for strategy, pts in active.items():
            pts = sorted((x, y) for x, y in pts if _finite(x) and _finite(y))
            reach = next((x for x, y in pts if y >= TARGET), None)
            last = f"{_num(pts[-1][1])} at {_num(pts[-1][0])}" if pts else NONE
            rows.append([_e(strategy), "—" if reach is None else _num(reach), last])
        out.append(f'<p class="note">Dashed line: {TARGET:.0%} accuracy.</p>')
        out.append(_table(["strategy", f"names to reach {TARGET:.0%}", "last accuracy at names"], rows))
        return "".join(out)

    def budget(self) -> str:
        result = self.d.get("budget")
        if result is None:
            return self._missing("budget", "no compute-budget sweep")
        from .budget_grid import describe
        from .budget_report import plots

        out = [f'<p>{_e(result.get("conclusion", ""))}</p>',
               f'<p class="note">Error: {_e(result.get("error", "?"))}; lower is better.</p>']
        rows = []
        for key in sorted(result["budgets"], key=float):
            b = result["budgets"][key]
            best = b.get("best") or {}
            per = b.get("by_strategy") or {}
            rows.append([_e(key), _e(describe(b.get("best"))), _num(best.get("error")), _num(best.get("actual_s"), 1),
                         _num(best.get("predicted_s"), 1), _e(b.get("winner") or NONE)]
                        + [_num((per.get(st) or {}).get("error")) for st in ("independent", "sequential", "global")])
        out.append(_table(["budget (s)", "best configuration", "error", "actual (s)", "predicted (s)", "winner",
                           "independent", "sequential", "global"], rows, left=2))
        out.append('<div class="plots">' + "".join(plots(result)) + "</div>")
        every = [[_e(key), _e(describe(r)), _num(r.get("pairs")), _num(r.get("error")), _num(r.get("predicted_s"), 1),
                  _num(r.get("actual_s"), 1), _e(r.get("reason") or r.get("status", ""))]
                 for key in sorted(result["budgets"], key=float) for r in result["budgets"][key]["configs"]]
        out.append(f"<details><summary>every configuration ({len(every)})</summary>"
                   + _table(["budget (s)", "configuration", "pairs", "error", "predicted (s)", "actual (s)", "status"],
                            every, left=2) + "</details>")
        return "".join(out)

    def galleries(self) -> str:
        if "clusters" not in self.d:
            return "".join(self._missing(k, "no galleries") for k in ("manifest", "clusters") if self.paths[k] is None)
        faces, names = self.d["manifest"].faces, self.d.get("names", {})
        out = [f'<p class="note">{self.n_clusters} clusters, the {len(self.blocks)} largest shown; '
               f'{self.per_cluster} faces at most each, evenly spread. Orange frame: a name other than '
               "the cluster's.</p>"]
        for c, members, shown in self.blocks:
            given = [names[faces[i].id] for i in members if faces[i].id in names]
            counted = Counter(n for n, _ in given if n)
            meta = [f"{len(members)} faces"]
            top = counted.most_common(1)[0][0] if counted else None
            if "names" in self.d:
                confs = [conf for _, conf in given if _finite(conf)]
                meta.append(f"named {_e(top)} ({counted[top]} of {len(members)})" if top else "no name")
                meta.append(f"mean confidence {_num(float(np.mean(confs)) if confs else None, 2)}")
            idents = Counter(faces[i].identity for i in members if faces[i].identity is not None)
            if idents:
                ident, count = idents.most_common(1)[0]
                meta.append(f"purity {count / sum(idents.values()):.2f} ({_e(ident)})")
            figs = "".join(self.face(i, odd=names.get(faces[i].id, ("",))[0] not in ("", top)) for i in shown)
            more = f'<p class="note">{len(members) - len(shown)} more faces.</p>' if len(members) > len(shown) else ""
            out.append(f'<div class="cluster" id="cluster-{c}"><h3>cluster {c} <span class="meta">· '
                       f'{" · ".join(meta)}</span></h3><div class="faces">{figs}</div>{more}</div>')
        if self.n_clusters > len(self.blocks):
            out.append(f'<p class="note">{self.n_clusters - len(self.blocks)} smaller clusters not shown '
                       "(--max-clusters).</p>")
        if len(self.unclustered):
            shown = _spread(self.unclustered, self.per_cluster)
            out.append(f'<div class="unclustered"><h3>unclustered <span class="meta">· {len(self.unclustered)} '
                       f'faces</span></h3><div class="faces">{"".join(self.face(i) for i in shown)}</div></div>')
        return "".join(out)

    def _suggestion_groups(self) -> dict[str, list[tuple[int, dict[str, str]]]]:
        groups: dict[str, list[tuple[int, dict[str, str]]]] = {}
        for line, row in self.d.get("suggestions", []):
            groups.setdefault(row["kind"], []).append((line, row))
        return groups

    def suggestions(self) -> str:
        if "suggestions" not in self.d:
            return self._missing("suggestions", "no suggestions for the next round")
        groups = self._suggestion_groups()
        if not groups:
            return '<p class="note">suggestions.csv is empty.</p>'
        pos = self.d.get("pos")
        titles = {"name": "Faces to name", "same": "Same person?"}
        out = []
        for kind, rows in groups.items():
            table = []
            for _, r in rows[:SUGGESTIONS_SHOWN]:
                ids = [r[c] for c in ("id", "id2") if r.get(c)]
                if pos is not None:
                    cell = '<div class="pair">' + " <span>=?</span> ".join(self.face(pos[i]) for i in ids) + "</div>"
                else:
                    cell = " =? ".join(_e(i) for i in ids)
                answer = " → ".join(_e(r[c]) for c in ("name", "answer") if r.get(c))
                table.append([_e(r.get("rank", "")), _e(r.get("strategy", "")), cell, _e(r.get("cluster", "")),
                              _num(_float(r.get("score"))), _e(r.get("reason", "")), answer])
            out.append(f"<h3>{_e(titles.get(kind, kind))} <span class=\"meta\">({len(rows)})</span></h3>")
            out.append(_table(["rank", "strategy", "faces", "cluster", "score", "reason", "name / answer"], table,
                              left=7))
            if len(rows) > SUGGESTIONS_SHOWN:
                out.append(f'<p class="note">{len(rows) - SUGGESTIONS_SHOWN} more in '
                           f'{_e(self.paths["suggestions"])}.</p>')
        return "".join(out)


def _get(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...`` or None where a level is missing or not a mapping."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _plain(v: Any) -> str:
    """A config value in one line: dicts as ``key value, ...``, floats rounded."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {_plain(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A table from already escaped cells; the first ``left`` columns are aligned left."""
    def cls(k: int) -> str:
        return ' class="l"' if k < left else ""

    th = "".join(f"<th{cls(k)}>{h}</th>" for k, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{cls(k)}>{c}</td>" for k, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


METRIC_ROWS = (("clustering purity (WCP)", "clustering", "wcp"), ("clustering NMI", "clustering", "nmi"),
               ("clustering B-cubed F1", "clustering", "bcubed_f1"), ("clusters found", "clustering", "clusters"),
               ("verification ROC-AUC", "verification", "roc_auc"),
               ("verification TAR at FAR 1e-3", "verification", "tar_at_far_1e-3"))
TITLES = {"audit": "Rule audit", "training": "Training", "methods": "Pretrained vs proxy",
          "active": "Naming accuracy vs names typed", "budget": "Compute budget", "galleries": "Clusters",
          "suggestions": "Next round"}


def write_report(run_dir: str | os.PathLike, out_path: str | os.PathLike, *, manifest: str | os.PathLike | None = None,
                 pairs: str | os.PathLike | None = None, clusters: str | os.PathLike | None = None,
                 names: str | os.PathLike | None = None, suggestions: str | os.PathLike | None = None,
                 metrics: str | os.PathLike | None = None, train_run: str | os.PathLike | None = None,
                 budget: str | os.PathLike | None = None, max_clusters: int = 40, per_cluster: int = 12,
                 progress: bool = True) -> dict[str, Any]:
    """Write a self-contained HTML report of the run folder ``run_dir`` to ``out_path``.

    Inputs not given are looked for inside ``run_dir`` (see
    :data:`proxytasks.report_inputs.DEFAULTS`); a section whose input is absent says
    "Missing" and which file, unless the run's ``recipe.yaml`` has no step that writes it
    (a run that never asked for a budget sweep): then the section is left out. A path
    given that does not exist, or an input that cannot be read, raises
    :class:`ProxytasksError`.

    Returns:
        ``{"out", "sections" (those with content), "missing" (files not found),
        "left_out" (sections of inputs the recipe never asked for), "clusters_shown",
        "thumbnails", "unreadable", "bytes"}``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ProxytasksError(f"{run_dir}: run folder not found" if not run_dir.exists()
                              else f"{run_dir}: not a folder; give the run folder a recipe wrote")
    if max_clusters < 0 or per_cluster < 0:
        raise ProxytasksError("--max-clusters and --per-cluster must be 0 or more")
    paths = locate(run_dir, {"manifest": manifest, "pairs": pairs, "clusters": clusters, "names": names,
                              "suggestions": suggestions, "metrics": metrics, "train_run": train_run,
                              "budget": budget})
    page = _Page(run_dir, paths, load_inputs(paths, run_dir), max_clusters, per_cluster)
    needed = page.plan()
    if needed:
        page.render_thumbnails(needed, progress)
    body, present, left_out = [page.header()], [], []
    for key in SECTIONS:
        content = getattr(page, key)()
        if not content.strip():  # its input is absent and the run's recipe never asked for it
            left_out.append(key)
            continue
        if re.sub(r'<p class="(?:missing|note)">.*?</p>', "", content).strip():
            present.append(key)
        body.append(f'<section id="{key}"><h2>{TITLES[key]}</h2>{content}</section>')
    text = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>proxytasks report: {_e(run_dir.resolve().name)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    with atomic_write(out_path) as fh:
        fh.write(text)
    summary = {"out": str(out_path), "sections": present, "missing": list(dict.fromkeys(page.missing)),
               "left_out": left_out,
               "clusters_shown": len(page.blocks), "thumbnails": len(page.thumbs),
               "unreadable": len(page.unreadable), "bytes": len(text.encode("utf-8"))}
    logger.info("wrote %s: %d bytes, %d thumbnails", out_path, summary["bytes"], summary["thumbnails"])
    return summary
