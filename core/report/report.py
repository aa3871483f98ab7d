"""Search reports people look at: per-round head heatmaps, score curve, image grids, tables, an index.

The report reads a search result (`headhunter.search.search.HuntResult`, used by attribute only: this module does
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

from headhunter.format.headset_io import write_atomic
from headhunter.search.evaluation import Evaluation
from headhunter.search.verdicts import RANDOM_PREFIX, verdicts
from headhunter.format.preflight import describe_prompt
from headhunter.report.labels import fit_text, label_font, spread_labels
from headhunter.format.schedule import item_spec
from headhunter.format.text import card_line


def write_report(result: Any, out_dir: Path, evaluation: Evaluation | None = None) -> Path:
    """Write all report files into out_dir; returns the path of index.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    heatmaps = [plot_heatmap(result, r.index, out_dir / f"heatmap_round{r.index}.png") for r in result.rounds]
    curve = plot_curve(result, out_dir / "curve.png", evaluation)
    write_scores(result, out_dir)
    grid = None
    pareto = None
    if evaluation is not None:
        grid = write_grid(evaluation, out_dir / "grid.png")
        _write_json(out_dir / "evaluation.json", evaluation_dict(evaluation))
        if yardstick(evaluation) is not None:
            pareto = plot_pareto(evaluation, out_dir / "pareto.png")
    schedule = plot_schedule(result.headset, out_dir / "schedule.png") if result.headset.scheduled else None
    index = out_dir / "index.md"
    write_atomic(index, render_index(result, evaluation, heatmaps, curve, grid, pareto, schedule).encode())
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


def interval_matrix(result: Any, round_index: int) -> tuple[list[tuple[int, int]], list[tuple[float, float]], np.ndarray]:
    """A scheduled search's round r as ((layer, head) rows, intervals, heads x intervals scores), NaN where a
    (head, interval) was not a candidate; heads in site order, intervals lowest sigma first."""
    cells = {(row["layer"], row["head_index"], item_spec(row["head"], 1.0)[3]): row["score"]
             for row in result.score_table() if row["round"] == round_index}
    heads = sorted({(layer, head) for layer, head, _ in cells})
    intervals = sorted({interval for _, _, interval in cells})
    matrix = np.full((len(heads), len(intervals)), np.nan)
    for (layer, head, interval), score in cells.items():
        matrix[heads.index((layer, head)), intervals.index(interval)] = score
    return heads, intervals, matrix


def _heads_by_intervals(matrix: np.ndarray, heads: list[tuple[int, int]], intervals: list[tuple[float, float]],
                        label: str, **imshow: Any) -> tuple[Any, Any]:
    """The one heads (rows) x intervals of sigma (columns) picture of the scheduled search's heatmap, the
    schedule and refine: (figure, axes), the colour bar labelled `label`."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(3.5, 0.9 * len(intervals) + 2.5), max(2.0, 0.25 * len(heads) + 1.3)))
    image = ax.imshow(matrix, aspect="auto", interpolation="nearest", **imshow)
    fig.colorbar(image, ax=ax, label=label)
    ax.set_xticks(range(len(intervals)), [_short_interval(iv) for iv in intervals], fontsize=8)
    ax.set_yticks(range(len(heads)), [f"L{a}H{b}" for a, b in heads] or ["(none)"],
                  fontsize=max(4, min(8, int(400 / max(1, len(heads))))))
    ax.set_xlabel("interval of the noise level sigma (1 = pure noise, the first steps)")
    ax.set_ylabel("head")
    return fig, ax


def _short_interval(interval: tuple[float, float]) -> str:
    """`[0, 0.33)` for a picture's axis (the files keep the exact bounds)."""
    lo, hi = interval
    return f"[{lo:.2g}, {hi:.2g}{']' if hi == 1.0 else ')'}"


def plot_heatmap(result: Any, round_index: int, path: Path) -> Path:
    """Paper Fig. 2/22 style: every head's score in this round, selected heads boxed. A scheduled search
    (`settings.intervals`) draws heads x intervals of the noise level sigma instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if getattr(result.settings, "intervals", None):
        return _plot_interval_heatmap(result, round_index, path)
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


def _plot_interval_heatmap(result: Any, round_index: int, path: Path) -> Path:
    import matplotlib.pyplot as plt

    heads, intervals, matrix = interval_matrix(result, round_index)
    rnd = result.rounds[round_index]
    fig, ax = _heads_by_intervals(matrix, heads, intervals, f"mean {result.settings.objective}", cmap="RdYlGn")
    for item in rnd.added:
        layer, head, _, interval = item_spec(item, 1.0)
        row, col = heads.index((layer, head)), intervals.index(interval)
        ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    chosen = ", ".join(rnd.selected_before) or "none"
    ax.set_title(f"round {round_index}: score of S ∪ {{(head, interval)}} (S = {chosen}); baseline "
                 f"{result.baseline_score:.3g}", fontsize=8)
    return _save_figure(fig, path)


def plot_schedule(headset: Any, path: Path) -> Path:
    """A scheduled head set as a picture: its heads (rows) x its intervals of sigma (columns), the colour the
    strength u (0: the head does not act there)."""
    import matplotlib

    matplotlib.use("Agg")
    pieces = headset.pieces()
    heads = sorted({(h.layer, h.head) for _, piece in pieces for h in piece})
    matrix = np.zeros((max(1, len(heads)), len(pieces)))
    for col, (_, piece) in enumerate(pieces):
        for h in piece:
            matrix[heads.index((h.layer, h.head)), col] = h.strength
    fig, ax = _heads_by_intervals(matrix, heads, [iv for iv, _ in pieces], "strength u", cmap="Blues", vmin=0.0,
                                  vmax=1.0)
    ax.set_title(f"schedule of {headset.name}", fontsize=9)
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
    """PNG grid: one row per setting (the random control sets left out), one column per fresh sample (same
    seeds down each column)."""
    from PIL import Image, ImageDraw

    names = [n for n in evaluation.settings if not n.startswith(RANDOM_PREFIX)]
    images = [evaluation.settings[n].images for n in names]
    cols = min(len(i) for i in images)
    label_w = 150
    pitch = cell + gap
    grid = Image.new("RGB", (label_w + cols * pitch, len(names) * pitch), "white")
    draw = ImageDraw.Draw(grid)
    font = label_font()
    for row, (name, batch) in enumerate(zip(names, images)):
        draw.text((4, row * pitch + cell // 2 - 7), fit_text(name, label_w - 8), fill="black", font=font)
        for col in range(cols):
            grid.paste(_to_pil(batch[col]).resize((cell, cell), Image.NEAREST), (label_w + col * pitch, row * pitch))
    buffer = _io.BytesIO()
    grid.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
    return path


def _to_pil(image: torch.Tensor) -> Any:
    """An image [C, H, W] in [0, 1] as PIL RGB; a video [F, C, H, W] is shown by its middle frame."""
    from PIL import Image

    if image.ndim == 4:
        image = image[image.shape[0] // 2]
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L").convert("RGB")
    return Image.fromarray(array, mode="RGB")


# ----- tables -------------------------------------------------------------------------------------------
def write_scores(result: Any, out_dir: Path) -> None:
    """scores.csv (one row per round and candidate) and scores.json (everything, machine-readable)."""
    rows = result.score_table()
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["round", "head", "layer", "head_index", "interval", "score", "added"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out_dir / "scores.csv", buffer.getvalue().encode())
    _write_json(out_dir / "scores.json", {
        "settings": result.settings.model_dump(),
        "baseline": result.baseline_score,
        "layers": result.layer_scores,
        "rounds": [{"index": r.index, "selected_before": r.selected_before, "added": r.added,
                    "set_score": r.set_score, "scores": r.scores, "pairs": r.pairs,
                    "vs_set": {c: vars(e) for c, e in r.vs_set.items()}, "dropped": r.dropped,
                    "leaders": r.leaders, "stability": r.stability, "frequency": r.frequency,
                    "images": r.images, "stages": r.stages, "fidelity": getattr(r, "fidelity", "full"),
                    "screened_out": getattr(r, "screened_out", []), "screen_images": getattr(r, "screen_images", 0),
                    "set_vs_baseline": vars(r.set_vs_baseline) if r.set_vs_baseline else None}
                   for r in result.rounds],
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
    layer, index, _, _ = item_spec(head, 1.0)
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
    return (f"**{found} {outcome} {rival}** on fresh seeds: difference {diff.mean:+.4g} (95 % CI [{diff.low:+.4g}, "
            f"{diff.high:+.4g}], n = {diff.n})" + cost(evaluation, found, rival, "and" if diff.high < 0 else "but") + ".")


def cost(evaluation: Evaluation, found: str, rival: str, joiner: str = "but") -> str:
    """The price of `found` against `rival` in the same sentence: every other metric on which it is worse
    (point estimates; "lower is better" read from the metric's name), with both intervals and whether they
    overlap (within noise) or not; "" when it is worse on none."""
    if found not in evaluation.settings or rival not in evaluation.settings:
        return ""
    mine, theirs = evaluation.settings[found].metrics, evaluation.settings[rival].metrics
    parts = []
    for name in [m for m in mine if m in theirs]:
        a, b, lower = mine[name], theirs[name], "lower is better" in name
        if not _better(b.mean, a.mean, lower):
            continue
        apart = (a.low > b.high) if lower else (a.high < b.low)
        parts.append(f"**{name} is worse**: {a.mean:.4g} [{a.low:.4g}, {a.high:.4g}] vs {b.mean:.4g} "
                     f"[{b.low:.4g}, {b.high:.4g}] ({'beyond noise' if apart else 'the intervals overlap: within noise'})")
    return f"; {joiner} " + "; ".join(parts) if parts else ""


def prompts_phrase(prompts: list[str]) -> str:
    """'1 prompt ("" (unconditional))', '10 prompts ('0', '1', ...)': how many and which, the empty prompt
    named as unconditional."""
    shown = ", ".join(describe_prompt(p) for p in prompts[:4]) + (", ..." if len(prompts) > 4 else "")
    return f"{len(prompts)} prompt{'s' if len(prompts) != 1 else ''} ({shown})"


def images_phrase(result: Any) -> str:
    """The search's images as docs/benchmarks.md counts them: each round's candidate images, plus the
    reference (no guidance and every whole layer on the same pairs), and the sum."""
    s = result.settings
    rounds = [r.images for r in result.rounds]
    reference = (1 + len(result.layer_scores)) * len(s.prompts) * len(s.seeds)
    per_round = ", ".join(f"round {r.index}: {r.images:,}" for r in result.rounds)
    return (f"{sum(rounds):,} candidate images in the rounds ({per_round}) + {reference:,} for no guidance and the "
            f"{len(result.layer_scores)} whole layers = {sum(rounds) + reference:,} search images")


def _round_stats(r: Any, top_k: int) -> str:
    """The round's evidence in words: gain over no guidance, stability, indistinguishable leaders, cost."""
    parts = []
    if r.set_vs_baseline is not None:
        d = r.set_vs_baseline
        parts.append(f"gain over no guidance {d.mean:+.4g} (95 % CI [{d.low:+.4g}, {d.high:+.4g}], n = {d.n})")
    if r.stability == r.stability:
        parts.append(f"bootstrap stability of the choice {r.stability:.0%}")
    others = [c for c in r.leaders if c not in r.added]
    if others:
        shown = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
        parts.append(f"**not separable from {shown}** (paired 95 % intervals include 0)")
    else:
        parts.append("separated from every other candidate")
    parts.append(f"{r.images} images" + (f", {len(r.dropped)} candidates dropped early (stages {r.stages} pairs)" if r.dropped else ""))
    if getattr(r, "screened_out", None):
        parts.append(f"{len(r.screened_out)} candidates not promoted by the screen at fidelity {r.fidelity} "
                     f"({r.screen_images} cheap images); every score, interval and leader shown is full fidelity")
    return "; " + "; ".join(parts)


def render_index(result: Any, evaluation: Evaluation | None, heatmaps: list[Path], curve: Path, grid: Path | None,
                 pareto: Path | None = None, schedule: Path | None = None) -> str:
    s = result.settings
    lines = [
        f"# HeadHunter report: {card_line(result.headset.name)}",
        "",
        f"Model `{s.model}`, objective `{s.objective}`, {prompts_phrase(s.prompts)} x {len(s.seeds)} seeds, "
        f"{s.steps} steps, perturbation `{s.perturbation.name}` (u = {s.strength:g}), scope `{s.guidance.scope}`, "
        f"w = {s.guidance.scale:g}, CFG {s.guidance.cfg if s.guidance.cfg is not None else 'off/pipeline default'}, "
        f"{s.rounds} round(s) x top {s.top_k}, {len(s.candidates)} candidate "
        + (f"(head, interval) pairs over {s.intervals} intervals of sigma" if getattr(s, "intervals", None) else "heads")
        + f", schedule `{s.schedule}`"
        + (f" (budget {s.budget:g} of the exhaustive images per round, first stage {s.first_pairs} pairs)" if s.schedule == "racing" else "")
        + f"; {images_phrase(result)}.",
        "",
        f"**Found head set:** {result.headset.notation()}  ([headset.safetensors](headset.safetensors), "
        f"[headset.json](headset.json))",
        "",
    ]
    if schedule is not None:
        lines += [f"![schedule of the found head set]({schedule.name})", ""]
    if evaluation is not None and {"found head set", "no guidance"} <= set(evaluation.settings):
        lines += [f"**Verdict:** {verdict(evaluation, 'found head set', 'no guidance')}", ""]
    lines += [
        "## On the search seeds",
        "",
        f"- no guidance: {result.baseline_score:.4g}",
    ]
    best = result.best_layer
    if best is not None:
        lines.append(f"- best whole layer: {best[0]} at {best[1]:.4g}")
    for r in result.rounds:
        lines.append(f"- round {r.index}: added {', '.join(r.added)} -> {r.set_score:.4g}" + _round_stats(r, s.top_k))
    for r in result.rounds:
        if getattr(r, "calibration", None) is not None:
            lines += ["", f"### Round {r.index} beside its null ({r.calibration.null} null)", "", r.calibration.table()]
    lines += ["", f"![score curve]({curve.name})", ""]
    lines += [f"![round {i} heatmap]({p.name})" for i, p in enumerate(heatmaps)]
    if evaluation is not None:
        lines += _controls_section(evaluation, "Verdicts against the controls (fresh seeds, search prompts)")
        unseen = getattr(result, "unseen_evaluation", None)
        if unseen is not None:
            lines += _controls_section(unseen, "Verdicts on prompts the search never saw (fresh seeds)")
        lines += _evaluation_section(evaluation, grid)
        lines += _pareto_section(evaluation, pareto)
    lines += ["", "Files: [scores.csv](scores.csv), [scores.json](scores.json)"
              + (", [evaluation.json](evaluation.json)" if evaluation else "") + ".", ""]
    return "\n".join(lines)


def _controls_section(evaluation: Evaluation, title: str) -> list[str]:
    """The verdicts against the controls (headhunter.search.verdicts): no guidance, the random head sets of
    the found set's size, every whole layer; each with its minimum detectable effect."""
    if "found head set" not in evaluation.settings:
        return []
    found = verdicts(evaluation)
    lines = ["", f"## {title}", "",
             f"Paired differences of the objective on {found['pairs']} fresh pairs ({prompts_phrase(found['prompts'])}), "
             "95 % bootstrap intervals; 'detectable' is the smallest difference these pairs find with 80 % power.", ""]
    if "vs_no_guidance" in found:
        lines.append(f"- {found['vs_no_guidance']['sentence']}")
    if "vs_random" in found:
        r = found["vs_random"]
        lines.append(f"- {r['sentence']}; it beats {r['beats_fraction']:.0%} of the {r['random_sets']} random sets one by one")
    for layer in found["vs_layers"]:
        lines.append(f"- {layer['sentence']}")
    return lines


def _evaluation_section(evaluation: Evaluation, grid: Path | None) -> list[str]:
    names = [n for n in evaluation.settings if not n.startswith(RANDOM_PREFIX)]
    randoms = len(evaluation.settings) - len(names)
    metric_names = sorted({m for r in evaluation.settings.values() for m in r.metrics})
    header = "| setting | " + " | ".join([evaluation.objective, *metric_names]) + " |"
    images = len(evaluation.settings) * len(evaluation.prompts) * len(evaluation.seeds)
    lines = ["", f"## On fresh seeds ({prompts_phrase(evaluation.prompts)} x {len(evaluation.seeds)} seeds, never seen "
                 f"by the search: {len(evaluation.settings)} settings, {images:,} images)", "",
             "Means with 95 % bootstrap intervals over samples"
             + (f" ({randoms} random head sets of the found set's size are summarised below, not listed)" if randoms else "")
             + ".", "", header, "|" + "---|" * (1 + 1 + len(metric_names))]
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


# ----- Pareto view: objective vs an independent yardstick on fresh seeds ---------------------------------
def yardstick(evaluation: Evaluation) -> tuple[str, bool] | None:
    """The independent metric to plot against the objective: (name, lower_is_better). The first set-level
    or per-image metric the evaluation has; "lower is better" is read from its name (e.g. FD)."""
    names = [m for r in evaluation.settings.values() for m in r.metrics]
    if not names:
        return None
    fd_like = [m for m in names if "lower is better" in m]
    name = fd_like[0] if fd_like else names[0]
    return name, "lower is better" in name


def _better(a: float, b: float, lower: bool) -> bool:
    return a < b if lower else a > b


def dominance(evaluation: Evaluation, found: str = "found head set") -> list[dict[str, Any]]:
    """Every other setting that beats `found` on both axes: objective (paired difference over the same
    fresh samples, 95 % interval) and yardstick (point estimates and intervals). `beyond_noise` when the
    objective interval excludes 0 and the yardstick intervals do not overlap."""
    stick = yardstick(evaluation)
    if stick is None or found not in evaluation.settings:
        return []
    name, lower = stick
    f = evaluation.settings[found].metrics[name]
    out = []
    for other, r in evaluation.settings.items():
        if other == found or other.startswith(("best layer", RANDOM_PREFIX)) or name not in r.metrics:
            continue
        diff = evaluation.difference(other, found)
        m = r.metrics[name]
        if diff.mean > 0 and _better(m.mean, f.mean, lower):
            separated = (m.high < f.low) if lower else (m.low > f.high)
            out.append({"setting": other, "objective_diff": diff, "yardstick": m, "found_yardstick": f,
                        "beyond_noise": bool(diff.low > 0 and separated)})
    return out


def plot_pareto(evaluation: Evaluation, path: Path) -> Path:
    """Objective (x, higher is better) vs the yardstick (y) on fresh seeds, 95 % intervals as error bars,
    for no guidance, every whole layer, each round's set and the found set; the Pareto front is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, lower = yardstick(evaluation)
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    points, labels = [], []
    for setting, r in evaluation.settings.items():
        if name not in r.metrics or setting.startswith(("best layer", RANDOM_PREFIX)):
            continue
        o, m = r.objective, r.metrics[name]
        color = "tab:blue" if setting == "found head set" else "tab:green" if setting.startswith("round") else \
            "gray" if setting == "no guidance" else "tab:red"
        ax.errorbar(o.mean, m.mean, xerr=[[o.mean - o.low], [o.high - o.mean]], yerr=[[m.mean - m.low], [m.high - m.mean]],
                    fmt="o", color=color, capsize=2, markersize=5)
        labels.append(ax.annotate(setting.replace("layer ", ""), (o.mean, m.mean), fontsize=7, xytext=(3, 3),
                                  textcoords="offset points",
                                  bbox={"boxstyle": "square,pad=0.1", "fc": "white", "alpha": 0.75, "lw": 0}))
        points.append((o.mean, m.mean if not lower else -m.mean))
    front = sorted(p for p in points if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points))
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] if not lower else -p[1] for p in front], "k--", linewidth=0.8, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"{evaluation.objective} (higher is better)")
    ax.set_ylabel(name)
    ax.set_title("fresh seeds: objective vs independent yardstick (blue: found set, green: earlier rounds, red: layers)", fontsize=8)
    spread_labels(ax, labels)  # close points (the found set beside an earlier round's) keep readable labels
    return _save_figure(fig, path)


def _pareto_section(evaluation: Evaluation, pareto: Path | None) -> list[str]:
    stick = yardstick(evaluation)
    if stick is None or "found head set" not in evaluation.settings:
        return []
    name, lower = stick
    lines = ["", f"## Does any whole layer dominate the found set? (objective vs {name}, fresh seeds)", ""]
    paired_layers = [v for v in verdicts(evaluation)["vs_layers"] if "dominance" in v]
    if paired_layers:  # the yardstick has per-sample features: both axes judged with paired intervals
        lines.append(f"Judged with paired 95 % intervals of both differences (objective and {name}, the same fresh "
                     "pairs): a layer dominates only when both say so.")
        lines.append("")
        lines += [f"- {v['rival']}: {v['dominance']}" for v in paired_layers]
        if pareto is not None:
            lines += ["", f"![objective vs {name}]({pareto.name})"]
        return lines
    rivals = dominance(evaluation)
    layers = [d for d in rivals if d["setting"].startswith("layer ")]
    if not layers:
        lines.append(f"**No whole layer dominates the found head set**: none is better on both {evaluation.objective} and "
                     f"{name}, even on point estimates.")
    for d in layers:
        diff, m, f = d["objective_diff"], d["yardstick"], d["found_yardstick"]
        how = ("beyond noise" if d["beyond_noise"] else
               "on point estimates only: the differences are within the 95 % intervals (not a finding)")
        lines.append(f"- **{d['setting']} dominates the found set {how}**: objective {diff.mean:+.4g} (95 % CI "
                     f"[{diff.low:+.4g}, {diff.high:+.4g}]), {name} {m.mean:.4g} [{m.low:.4g}, {m.high:.4g}] vs "
                     f"{f.mean:.4g} [{f.low:.4g}, {f.high:.4g}].")
    for d in rivals:
        if not d["setting"].startswith("layer "):
            lines.append(f"- {d['setting']} is also better on both axes ({'beyond noise' if d['beyond_noise'] else 'within noise'}).")
    if pareto is not None:
        lines += ["", f"![objective vs {name}]({pareto.name})"]
    return lines


# ----- refine (headhunter.search.refine) ---------------------------------------------------------------------
def plot_refine(result: Any, path: Path) -> Path:
    """Heads x intervals of sigma: each piece's leave-one-out contribution objective(S) - objective(S minus
    it), drawn diverging around 0; kept pieces are boxed, dropped ones crossed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(dict.fromkeys(item_spec(e.piece, 1.0)[:2] for e in result.effects))
    cell = {e.piece: (heads.index(item_spec(e.piece, 1.0)[:2]), result.intervals.index(e.interval)) for e in result.effects}
    matrix = np.zeros((len(heads), len(result.intervals)))
    for e in result.effects:
        matrix[cell[e.piece]] = e.contribution.mean
    bound = float(np.abs(matrix).max()) or 1.0
    fig, ax = _heads_by_intervals(matrix, heads, result.intervals, "contribution (objective with - without)",
                                  cmap="RdBu", vmin=-bound, vmax=bound)
    for e in result.effects:
        row, col = cell[e.piece]
        if e.verdict == "keep":
            ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
        elif e.verdict == "drop":
            ax.plot([col - 0.4, col + 0.4], [row - 0.4, row + 0.4], color="black", linewidth=1.5)
            ax.plot([col - 0.4, col + 0.4], [row + 0.4, row - 0.4], color="black", linewidth=1.5)
    ax.set_title(f"refine {result.original.name}: boxed = keep, crossed = drop (level {result.level:.4g})", fontsize=8)
    return _save_figure(fig, path)


def write_refine_report(result: Any, out_dir: Path) -> Path:
    """refine.md (the pieces' table, the refined set, the fresh-seed verdicts) and refine.png in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    picture = plot_refine(result, out_dir / "refine.png")
    s = result.settings
    lines = [
        f"# Refine {card_line(result.original.name)} over the noise level",
        "",
        f"Model `{s.model}`, objective `{s.objective}`, {prompts_phrase(s.prompts)} x {len(s.seeds)} seeds, "
        f"{s.steps} steps; {len(result.effects)} (head, interval) pieces over {s.intervals} intervals of sigma, each "
        f"left out once; intervals at the Bonferroni level {result.level:.4g}; {result.images:,} images.",
        "",
        f"**Original:** {result.original.notation()} (search pairs: {result.set_score:.4g}; no guidance "
        f"{result.baseline_score:.4g})",
        "",
        f"**Refined:** {result.headset.notation() or '(no heads)'}  ([headset.safetensors](headset.safetensors), "
        f"[headset.json](headset.json)); dropped: {', '.join(result.dropped) or 'none'}",
        "",
        f"![contributions]({picture.name})",
        "",
        "## Contribution of each piece: objective(S) - objective(S without it), search pairs",
        "",
        result.table(),
        "",
    ]
    evaluation = result.evaluation
    if evaluation is not None:
        lines += ["## On fresh seeds", ""]
        for name in ("refined", "original"):
            lines.append(f"- {verdict(evaluation, name, 'no guidance')}")
        lines.append(f"- {verdict(evaluation, 'refined', 'original')}")
        for metric, est in evaluation.settings["refined"].metrics.items():
            other = evaluation.settings["original"].metrics[metric]
            lines.append(f"- {metric}: refined {est.mean:.4g} [{est.low:.4g}, {est.high:.4g}], original "
                         f"{other.mean:.4g} [{other.low:.4g}, {other.high:.4g}]")
        lines.append("")
    index = out_dir / "refine.md"
    write_atomic(index, "\n".join(lines).encode())
    return index
