"""Renders an `EvalReport`: report.md (every metric, all systems side by side), scores.json and PNG plots.

Plots use matplotlib's object API (`Figure` + Agg canvas), never pyplot, so no global state or display is needed and
reports can be written from threads. Files are written atomically (temp file + rename).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
from reamo.files import write_atomic
from reamo.eval.scoring import MISSED, SPURIOUS, EvalReport, MetricRow

logger = logging.getLogger(__name__)

TASK_TITLES = {
    "ner": "NER (span + type)",
    "re": "RE triples (head span + tail span + relation)",
    "rc": "relation classification given the pair",
    "et": "event triggers (span + type)",
    "ea": "event arguments (span + role + event type)",
    "gmner": "GMNER (span + type + region)",
    "mner": "MNER (span + type)",
    "eeg": "EEG (span + region)",
}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


# ---------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------


def _tasks(report: EvalReport) -> list[str]:
    seen: dict[str, None] = {}
    for system in report.systems.values():
        for row in system.rows:
            seen.setdefault(row.task, None)
    return list(seen)


def _row(report: EvalReport, system: str, task: str, mode: str) -> MetricRow | None:
    return report.systems[system].row(task, mode)


def overall_table(report: EvalReport) -> str:
    names = list(report.systems)
    head = "| task | mode | gold | " + " | ".join(f"{n} P | {n} R | {n} F1" for n in names) + " |"
    lines = [head, "|" + "---|" * (3 + 3 * len(names))]
    for task in _tasks(report):
        for mode in ("exact", "relaxed"):
            rows = [_row(report, n, task, mode) for n in names]
            present = [r for r in rows if r is not None]
            if not present:
                continue
            cells = []
            for r in rows:
                cells += ["–"] * 3 if r is None else [_pct(r.scores.precision), _pct(r.scores.recall), _pct(r.scores.f1)]
            lines.append(f"| {task} | {mode} | {present[0].scores.n_gold} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_type_table(report: EvalReport, task: str) -> str:
    """Per-type P/R/F1 (exact) plus relaxed F1 for every system; types ordered by gold count."""
    names = list(report.systems)
    types: dict[str, int] = {}
    for name in names:
        for mode in ("exact", "relaxed"):
            row = _row(report, name, task, mode)
            if row is not None:
                for label, scores in row.per_type.items():
                    types[label] = max(types.get(label, 0), scores.n_gold)
    if not types:
        return ""
    head = "| type | gold | " + " | ".join(f"{n} P | {n} R | {n} F1 | {n} F1 relaxed" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + 4 * len(names))]
    for label in sorted(types, key=lambda t: (-types[t], t)):
        cells = []
        for name in names:
            exact, relaxed = _row(report, name, task, "exact"), _row(report, name, task, "relaxed")
            s = exact.per_type.get(label) if exact else None
            r = relaxed.per_type.get(label) if relaxed else None
            cells += ["–"] * 3 if s is None else [_pct(s.precision), _pct(s.recall), _pct(s.f1)]
            cells.append("–" if r is None else _pct(r.f1))
        lines.append(f"| {label} | {types[label]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_table(confusion: dict[str, dict[str, int]]) -> str:
    gold_types = sorted(t for t in confusion if t != SPURIOUS) + ([SPURIOUS] if SPURIOUS in confusion else [])
    pred_types = sorted({p for row in confusion.values() for p in row} - {MISSED})
    pred_types += [MISSED] if any(MISSED in row for row in confusion.values()) else []
    lines = ["| gold \\ predicted | " + " | ".join(pred_types) + " |", "|" + "---|" * (1 + len(pred_types))]
    for gold in gold_types:
        lines.append(f"| {gold} | " + " | ".join(str(confusion[gold].get(p, 0)) for p in pred_types) + " |")
    return "\n".join(lines)


def render_markdown(report: EvalReport, images: dict[str, str] | None = None) -> str:
    images = images or {}
    out = [f"# Reamo evaluation: {report.data}", ""]
    out.append(f"{report.n_examples} examples" + (f" (limit {report.limit})" if report.limit is not None else "")
               + f"; evaluated system: **{report.system}**; baselines: "
               + (", ".join(n for n in report.systems if n != report.system) or "none") + ".")
    out.append("Scores are micro P / R / F1 in percent; 'exact' = char spans equal, 'relaxed' = spans overlap.")
    if report.notes:
        out += ["", "Notes:", ""] + [f"- {note}" for note in report.notes]
    out += ["", "## Systems", "", "| system | examples | failed | s / example |", "|---|---|---|---|"]
    for name, system in report.systems.items():
        secs = "–" if system.seconds_per_example is None else f"{system.seconds_per_example:.3f}"
        out.append(f"| {name} | {system.n_examples} | {system.n_failed} | {secs} |")
    out += ["", "## Overall", "", overall_table(report)]
    counted = {name: system.event_free for name, system in report.systems.items() if system.event_free}
    if counted:
        out += ["", "## Invented events", "",
                "Sentences without a gold event that were given at least one event (lower is better; the bound "
                "for a default task is 1 in 10):", ""]
        out += [f"- {name}: {c.n_given_an_event} of {c.n_event_free} ({100 * c.share:.1f}%)"
                for name, c in counted.items()]
    for task in _tasks(report):
        table = per_type_table(report, task)
        if table:
            out += ["", f"## Per type: {task} — {TASK_TITLES.get(task, task)}", "", table]
            for key in (f"f1_per_type_{task}", f"pr_scatter_{task}"):
                if key in images:
                    out += ["", f"![{key}]({images[key]})"]
    for name, system in report.systems.items():
        if system.confusion:
            out += ["", f"## Entity type confusion: {name} (exact span match, type ignored for pairing)", "",
                    confusion_table(system.confusion)]
            if f"confusion_{name}" in images:
                out += ["", f"![confusion_{name}]({images[f'confusion_{name}']})"]
    out += ["", "## Grounding IoU", ""]
    any_iou = False
    for name, system in report.systems.items():
        if system.grounding_ious:
            any_iou = True
            ious = np.asarray(system.grounding_ious)
            out.append(f"- {name}: {len(ious)} span-matched entities with a predicted and a gold box; mean IoU "
                       f"{ious.mean():.3f}, IoU >= 0.5: {100 * (ious >= 0.5).mean():.1f}%")
            if f"iou_{name}" in images:
                out += ["", f"![iou_{name}]({images[f'iou_{name}']})", ""]
    if not any_iou:
        out.append("No system predicted an image box for a span-matched entity with a gold box, so there is no IoU "
                   "histogram.")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------


def _figure(width: float, height: float):  # type: ignore[no-untyped-def]
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        from reamo.errors import MissingDependencyError

        raise MissingDependencyError("plots need matplotlib: pip install 'matplotlib>=3.7,<4'") from error
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomic(path, buffer.getvalue())


def plot_f1_per_type(report: EvalReport, task: str, path: Path) -> bool:
    names = list(report.systems)
    rows = {n: _row(report, n, task, "exact") for n in names}
    types: dict[str, int] = {}
    for row in rows.values():
        for label, scores in (row.per_type if row else {}).items():
            types[label] = max(types.get(label, 0), scores.n_gold)
    if not types:
        return False
    labels = sorted(types, key=lambda t: (-types[t], t))[:30]
    figure = _figure(max(6.0, 0.45 * len(labels) * max(1, len(names)) + 2), 4.5)
    axes = figure.add_subplot()
    width = 0.8 / len(names)
    x = np.arange(len(labels))
    for k, name in enumerate(names):
        row = rows[name]
        values = [row.per_type[t].f1 if row and t in row.per_type else 0.0 for t in labels]
        axes.bar(x + k * width - 0.4 + width / 2, values, width, label=name)
    axes.set_xticks(x, labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    axes.set_ylim(0, 1)
    axes.set_ylabel("F1 (exact)")
    axes.set_title(f"{report.data}: {task} F1 per type")
    axes.legend()
    _save(figure, path)
    return True


def plot_pr_scatter(report: EvalReport, task: str, path: Path) -> bool:
    figure = _figure(6, 5.5)
    axes = figure.add_subplot()
    plotted = False
    for name, marker in zip(report.systems, "os^Dv<>p*h", strict=False):
        row = _row(report, name, task, "exact")
        if row is None or not row.per_type:
            continue
        points = [(label, s.precision, s.recall, s.n_gold) for label, s in row.per_type.items() if s.n_gold]
        if not points:
            continue
        plotted = True
        sizes = [20 + 200 * n / max(p[3] for p in points) for *_, n in points]
        axes.scatter([p[2] for p in points], [p[1] for p in points], s=sizes, marker=marker, alpha=0.6, label=name)
        for label, precision, recall, _ in points:
            axes.annotate(label, (recall, precision), fontsize=7, alpha=0.8)
    if not plotted:
        return False
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(f"{report.data}: {task} per-type P/R (size = gold count)")
    axes.legend()
    _save(figure, path)
    return True


def plot_confusion(confusion: dict[str, dict[str, int]], title: str, path: Path) -> bool:
    if not confusion:
        return False
    gold_types = sorted(t for t in confusion if t != SPURIOUS) + ([SPURIOUS] if SPURIOUS in confusion else [])
    pred_types = sorted({p for row in confusion.values() for p in row} - {MISSED})
    pred_types += [MISSED] if any(MISSED in row for row in confusion.values()) else []
    matrix = np.array([[confusion[g].get(p, 0) for p in pred_types] for g in gold_types], dtype=float)
    figure = _figure(max(5.0, 0.7 * len(pred_types) + 2), max(4.0, 0.5 * len(gold_types) + 1.5))
    axes = figure.add_subplot()
    image = axes.imshow(np.log1p(matrix), cmap="Blues")
    axes.set_xticks(range(len(pred_types)), pred_types, rotation=45, ha="right")
    axes.set_yticks(range(len(gold_types)), gold_types)
    threshold = np.log1p(matrix).max() / 2 if matrix.size else 0
    for i in range(len(gold_types)):
        for j in range(len(pred_types)):
            axes.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                      color="white" if np.log1p(matrix[i, j]) > threshold else "black")
    axes.set_xlabel("predicted type")
    axes.set_ylabel("gold type")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="log(1 + count)")
    _save(figure, path)
    return True


def plot_iou_histogram(ious: list[float], title: str, path: Path) -> bool:
    if not ious:
        return False
    figure = _figure(6, 4)
    axes = figure.add_subplot()
    axes.hist(ious, bins=np.linspace(0, 1, 21), edgecolor="black")
    axes.axvline(0.5, color="red", linestyle="--", label="GMNER threshold 0.5")
    axes.set_xlabel("box IoU with the best gold box")
    axes.set_ylabel("entities")
    axes.set_title(title)
    axes.legend()
    _save(figure, path)
    return True


def write_plots(report: EvalReport, out_dir: Path) -> dict[str, str]:
    """Every plot that has data; returns plot key -> file name (relative to out_dir)."""
    images: dict[str, str] = {}

    def keep(key: str, made: bool) -> None:
        if made:
            images[key] = f"{key}.png"

    for task in _tasks(report):
        keep(f"f1_per_type_{task}", plot_f1_per_type(report, task, out_dir / f"f1_per_type_{task}.png"))
        keep(f"pr_scatter_{task}", plot_pr_scatter(report, task, out_dir / f"pr_scatter_{task}.png"))
    for name, system in report.systems.items():
        keep(f"confusion_{name}", plot_confusion(system.confusion, f"{report.data}: {name} entity types",
                                                 out_dir / f"confusion_{name}.png"))
        keep(f"iou_{name}", plot_iou_histogram(system.grounding_ious, f"{report.data}: {name} grounding IoU",
                                               out_dir / f"iou_{name}.png"))
    return images


def write_report(report: EvalReport, out_dir: str | os.PathLike[str], plots: bool = True) -> dict[str, Path]:
    """Write report.md, scores.json and the plots into `out_dir`; records the file names in `report.files`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = write_plots(report, out) if plots else {}
    report.files = {"report": "report.md", "scores": "scores.json", **images}
    write_atomic(out / "report.md", render_markdown(report, images).encode("utf-8"))
    write_atomic(out / "scores.json", report.model_dump_json(indent=2).encode("utf-8"))
    return {key: out / name for key, name in report.files.items()}
