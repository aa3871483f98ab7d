"""Search reports people look at: per-round head heatmaps, score curve, image grids, tables, an index.

The report reads a search result (`headhunter.search.HuntResult`, used by attribute only: this module does
not import the search) and an optional fresh-seed `Evaluation`. Everything is written atomically into the search's output folder; `index.md` links it all and states
plainly whether the found head set beat the unguided model and the best whole layer on fresh seeds.
"""

from __future__ import annotations

import csv
import io as _io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._headset_io import write_atomic
from .evaluation import Evaluation


def write_report(result: Any, out_dir: Path, evaluation: Evaluation | None = None) -> Path:
    """Write all report files into out_dir; returns the path of index.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    heatmaps = [plot_heatmap(result, r.index, out_dir / f"heatmap_round{r.index}.png") for r in result.rounds]
    curve = plot_curve(result, out_dir / "curve.png", evaluation)
    write_scores(result, out_dir)
    grid = None
    if evaluation is not None:
        grid = write_grid(evaluation, out_dir / "grid.png")
        _write_json(out_dir / "evaluation.json", evaluation_dict(evaluation))
    index = out_dir / "index.md"
    write_atomic(index, render_index(result, evaluation, heatmaps, curve, grid).encode())
    return index


# ----- figures ----------------------------------------------------------------------------------------
def _save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


def heat_matrix(result: Any, round_index: int) -> np.ndarray:
    """Scores of round r as a layers x heads matrix (NaN where a head was not a candidate)."""
    width = max(s.num_heads for s in result.sites)
    matrix = np.full((len(result.sites), width), np.nan)
    for row in result.score_table():
        if row["round"] == round_index:
            matrix[row["layer"], row["head_index"]] = row["score"]
    return matrix


def plot_heatmap(result: Any, round_index: int, path: Path) -> Path:
    """Paper Fig. 2/22 style: every head's score in this round, selected heads boxed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = heat_matrix(result, round_index)
    rnd = result.rounds[round_index]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.42 * matrix.shape[1] + 2), max(3.0, 0.32 * matrix.shape[0] + 1.5)))
    image = ax.imshow(matrix, cmap="RdYlGn", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=f"mean {result.settings.objective}")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(matrix.shape[0]))
    for head in rnd.added:
        layer, index = _layer_head(head)
        ax.add_patch(plt.Rectangle((index - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    chosen = ", ".join(rnd.selected_before) or "none"
    ax.set_title(f"round {round_index}: score of S ∪ {{head}} (S = {chosen}); baseline {result.baseline_score:.3g}", fontsize=9)
    return _save_figure(fig, path)


def plot_curve(result: Any, path: Path, evaluation: Evaluation | None = None) -> Path:
    """Objective vs number of selected heads, with the baseline and the best whole layer as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [0] + [len(r.selected_before) + len(r.added) for r in result.rounds]
    values = [result.baseline_score] + [r.set_score for r in result.rounds]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(counts, values, marker="o", label="found head set (search seeds)")
    ax.axhline(result.baseline_score, color="gray", linestyle="--", label="no guidance")
    best = result.best_layer
    if best is not None:
        ax.axhline(best[1], color="tab:red", linestyle=":", label=f"best layer {best[0]} (all heads)")
    ax.set_xlabel("number of heads")
    ax.set_xticks(counts)
    ax.set_ylabel(result.settings.objective)
    ax.set_title("HeadHunter: score vs number of selected heads", fontsize=9)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def write_grid(evaluation: Evaluation, path: Path, cell: int = 64, gap: int = 3) -> Path:
    """PNG grid: one row per setting, one column per fresh sample (same seeds down each column)."""
    from PIL import Image, ImageDraw

    names = list(evaluation.settings)
    images = [evaluation.settings[n].images for n in names]
    cols = min(len(i) for i in images)
    label_w = 150
    pitch = cell + gap
    grid = Image.new("RGB", (label_w + cols * pitch, len(names) * pitch), "white")
    draw = ImageDraw.Draw(grid)
    for row, (name, batch) in enumerate(zip(names, images)):
        draw.text((4, row * pitch + cell // 2 - 6), name[:24], fill="black")
        for col in range(cols):
            grid.paste(_to_pil(batch[col]).resize((cell, cell), Image.NEAREST), (label_w + col * pitch, row * pitch))
    buffer = _io.BytesIO()
    grid.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
    return path


def _to_pil(image: torch.Tensor) -> Any:
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L").convert("RGB")
    return Image.fromarray(array, mode="RGB")


# ----- tables -------------------------------------------------------------------------------------------
def write_scores(result: Any, out_dir: Path) -> None:
    """scores.csv (one row per round and candidate) and scores.json (everything, machine-readable)."""
    rows = result.score_table()
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["round", "head", "layer", "head_index", "score", "added"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out_dir / "scores.csv", buffer.getvalue().encode())
    _write_json(out_dir / "scores.json", {
        "settings": result.settings.model_dump(),
        "baseline": result.baseline_score,
        "layers": result.layer_scores,
        "rounds": [{"index": r.index, "selected_before": r.selected_before, "added": r.added,
                    "set_score": r.set_score, "scores": r.scores} for r in result.rounds],
        "headset": result.headset.notation(),
    })


def evaluation_dict(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "objective": evaluation.objective, "prompts": evaluation.prompts, "seeds": evaluation.seeds,
        "settings": {
            name: {"objective": vars(r.objective), "metrics": {m: vars(e) for m, e in r.metrics.items()}}
            for name, r in evaluation.settings.items()
        },
    }


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, default=float) + "\n").encode())


def _layer_head(head: str) -> tuple[int, int]:
    from .sites import parse_notation

    layer, index, _ = parse_notation(head)
    return layer, index


# ----- index --------------------------------------------------------------------------------------------
def verdict(evaluation: Evaluation, found: str, rival: str) -> str:
    """One plain sentence: did `found` beat `rival` on fresh seeds (paired 95 % bootstrap interval)?"""
    diff = evaluation.difference(found, rival)
    if diff.low > 0:
        outcome = "beats"
    elif diff.high < 0:
        outcome = "is worse than"
    else:
        outcome = "is not distinguishable from"
    return f"**{found} {outcome} {rival}** on fresh seeds: difference {diff.mean:+.4g} (95 % CI [{diff.low:+.4g}, {diff.high:+.4g}], n = {diff.n})."


def render_index(result: Any, evaluation: Evaluation | None, heatmaps: list[Path], curve: Path, grid: Path | None) -> str:
    s = result.settings
    lines = [
        f"# HeadHunter report: {result.headset.name}",
        "",
        f"Model `{s.model}`, objective `{s.objective}`, {len(s.prompts)} prompts x {len(s.seeds)} seeds, "
        f"{s.steps} steps, perturbation `{s.perturbation.name}` (u = {s.strength:g}), scope `{s.guidance.scope}`, "
        f"w = {s.guidance.scale:g}, CFG {s.guidance.cfg if s.guidance.cfg is not None else 'off/pipeline default'}, "
        f"{s.rounds} round(s) x top {s.top_k}, {len(s.candidates)} candidate heads.",
        "",
        f"**Found head set:** {result.headset.notation()}  ([headset.safetensors](headset.safetensors), "
        f"[headset.json](headset.json))",
        "",
        "## On the search seeds",
        "",
        f"- no guidance: {result.baseline_score:.4g}",
    ]
    best = result.best_layer
    if best is not None:
        lines.append(f"- best whole layer: {best[0]} at {best[1]:.4g}")
    for r in result.rounds:
        lines.append(f"- round {r.index}: added {', '.join(r.added)} -> {r.set_score:.4g}")
    lines += ["", f"![score curve]({curve.name})", ""]
    lines += [f"![round {i} heatmap]({p.name})" for i, p in enumerate(heatmaps)]
    if evaluation is not None:
        lines += _evaluation_section(evaluation, grid)
    lines += ["", "Files: [scores.csv](scores.csv), [scores.json](scores.json)"
              + (", [evaluation.json](evaluation.json)" if evaluation else "") + ".", ""]
    return "\n".join(lines)


def _evaluation_section(evaluation: Evaluation, grid: Path | None) -> list[str]:
    names = list(evaluation.settings)
    metric_names = sorted({m for r in evaluation.settings.values() for m in r.metrics})
    header = "| setting | " + " | ".join([evaluation.objective, *metric_names]) + " |"
    lines = ["", f"## On fresh seeds ({len(evaluation.prompts)} prompts x {len(evaluation.seeds)} seeds, never seen by the search)", "",
             "Means with 95 % bootstrap intervals over samples.", "", header, "|" + "---|" * (1 + 1 + len(metric_names))]
    for name in names:
        r = evaluation.settings[name]
        cells = [str(r.objective)] + [str(r.metrics[m]) if m in r.metrics else "-" for m in metric_names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    if "found head set" in evaluation.settings:
        for rival in [n for n in names if n.startswith(("no guidance", "best layer"))]:
            lines.append("- " + verdict(evaluation, "found head set", rival))
    if grid is not None:
        lines += ["", f"![samples: same seeds down each column]({grid.name})"]
    return lines

