"""The report's PNG plots, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).

Every plot is always written: where its data is missing (an adapter that could not be trained, a corpus
without summaries) the figure says so instead, so a report never links to a file that is not there.
"""

from __future__ import annotations

from pathlib import Path

PLOTS = {
    "confusion_matrix": "confusion_matrix.png",
    "per_class_f1": "per_class_f1.png",
    "ndcg_by_mode": "ndcg_by_mode.png",
    "training_loss": "training_loss.png",
}
DPI = 110


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _missing(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11, transform=ax.transAxes)
    ax.set_axis_off()


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def confusion_matrix_plot(classification: dict, path: Path) -> Path:
    model = ((classification or {}).get("model") or {}).get("category")
    labels = model["confusion_labels"] if model else []
    size = max(4.0, 0.6 * len(labels) + 2.5)
    figure = _figure(size, size * 0.85)
    ax = figure.add_subplot()
    if not model:
        _missing(ax, "No classify adapter was trained:\nno confusion matrix")
        return _save(figure, path)
    matrix = model["confusion_matrix"]
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    top = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"Category confusion matrix\nclassify adapter, {model['n']} test documents", fontsize=10)
    return _save(figure, path)


def per_class_f1_plot(classification: dict, path: Path) -> Path:
    classification = classification or {}
    entries = [classification.get("model")] + list(classification.get("baselines", {}).values())
    systems = [(e["label"], e["category"]) for e in entries if e and e.get("category")]
    classes = classification.get("classes", [])
    figure = _figure(max(6.0, 0.9 * len(classes) * max(1, len(systems)) / 2 + 3), 4.5)
    ax = figure.add_subplot()
    if not classes or not systems:
        _missing(ax, "No categories to score")
        return _save(figure, path)
    width = 0.8 / len(systems)
    for s, (name, scores) in enumerate(systems):
        xs = [i + (s - (len(systems) - 1) / 2) * width for i in range(len(classes))]
        ax.bar(xs, [scores["per_class_f1"].get(c, 0.0) for c in classes], width, label=name)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title("Per-class F1 on the test documents")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def ndcg_by_mode_plot(search: dict, path: Path) -> Path:
    modes = [(m["label"], m["ndcg@10"], m["role"]) for m in (search or {}).get("modes", {}).values() if m]
    figure = _figure(7.0, 4.0)
    ax = figure.add_subplot()
    if not modes:
        _missing(ax, "No test document has a gold summary:\nno search queries")
        return _save(figure, path)
    colours = {"system": "tab:blue", "baseline": "tab:gray"}
    bars = ax.barh([label for label, _, _ in modes], [v for _, v, _ in modes],
                   color=[colours.get(role, "tab:blue") for _, _, role in modes])
    for bar, (_, value, _) in zip(bars, modes):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, f"{value:.3f}", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("nDCG@10")
    ax.set_title(f"Search: gold summary as query ({search.get('queries', 0)} queries; grey = baseline)")
    ax.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def training_loss_plot(training: dict, path: Path) -> Path:
    tasks = list((training or {}).items())
    figure = _figure(4.0 * max(1, len(tasks)), 3.5)
    axes = [figure.add_subplot(1, max(1, len(tasks)), i + 1) for i in range(max(1, len(tasks)))]
    if not tasks:
        _missing(axes[0], "Nothing was trained")
        return _save(figure, path)
    for ax, (task, info) in zip(axes, tasks):
        losses = info.get("losses") or []
        if not info.get("trained") or not losses:
            _missing(ax, f"{task}: not trained\n{info.get('message', '')[:80]}")
            continue
        ax.plot(range(1, len(losses) + 1), losses, linewidth=0.8, alpha=0.5, label="per step")
        window = max(1, len(losses) // 20)
        if window > 1:  # a running mean shows the trend through noisy per-batch losses
            smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
                      for i in range(len(losses))]
            ax.plot(range(1, len(losses) + 1), smooth, linewidth=1.5, label=f"mean of {window}")
            ax.legend(fontsize=8)
        ax.set_title(f"{task} ({info.get('kind')}, {info.get('status')})")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    return _save(figure, path)


def write_plots(metrics: dict, out_dir: Path) -> dict[str, str]:
    """Write every plot into out_dir; returns {plot name: file name}."""
    out_dir = Path(out_dir)
    confusion_matrix_plot(metrics.get("classification"), out_dir / PLOTS["confusion_matrix"])
    per_class_f1_plot(metrics.get("classification"), out_dir / PLOTS["per_class_f1"])
    ndcg_by_mode_plot(metrics.get("search"), out_dir / PLOTS["ndcg_by_mode"])
    training_loss_plot(metrics.get("training"), out_dir / PLOTS["training_loss"])
    return dict(PLOTS)
