"""Text in the PNGs a person looks at: word spaces survive, the empty prompt reads as unconditional, and
labels in the Pareto plot do not overlap (issue 27 item 8)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from headhunter.report.labels import label_font, overlapping, text_width


def ink_columns(text: str) -> int:
    """Width in pixels of what `text` actually puts on a white canvas (first to last inked column)."""
    from PIL import ImageDraw

    canvas = Image.new("L", (400, 30), 255)
    ImageDraw.Draw(canvas).text((2, 5), text, fill=0, font=label_font())
    cols = np.flatnonzero((np.asarray(canvas) < 128).any(axis=0))
    return int(cols[-1] - cols[0] + 1)


def test_a_rendered_label_keeps_its_word_spaces():
    spaced, joined = ink_columns("no guidance"), ink_columns("noguidance")
    assert spaced - joined >= 3, (spaced, joined)  # a real space (the old fonts gave 1-2 px: "noguidance")
    assert text_width("thinner strokes") - text_width("thinnerstrokes") >= 3


def evaluation(names, rng):
    from headhunter.search.evaluation import Evaluation, SettingResult, bootstrap_mean
    from headhunter.search.stats import Estimate

    fd = "FD-digits (lower is better)"
    settings = {}
    for i, name in enumerate(names):
        scores = list(-0.2 + 0.001 * i + 0.05 * rng.normal(size=16))  # all points nearly on top of each other
        images = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(i))
        settings[name] = SettingResult(name, bootstrap_mean(scores), scores, {fd: Estimate(600 + i, 500, 700, 16)}, images)
    return Evaluation(settings, [""], list(range(16)), "digit-logprob")


def test_pareto_labels_do_not_overlap(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from headhunter.report import report

    names = ["no guidance", "found head set", "round 0 set", *[f"layer L{i}" for i in range(6)]]
    seen = {}
    real_save = report._save_figure

    def keep(fig, path):
        ax = fig.axes[0]
        seen["overlaps"] = overlapping(ax, [t for t in ax.texts])
        seen["count"] = len(ax.texts)
        return real_save(fig, path)

    monkeypatch.setattr(report, "_save_figure", keep)
    report.plot_pareto(evaluation(names, np.random.default_rng(0)), tmp_path / "pareto.png")
    plt.close("all")
    assert seen["count"] == len(names) and seen["overlaps"] == []


def test_grid_labels_are_whole_and_spaced(tmp_path):
    from headhunter.report.report import write_grid

    path = write_grid(evaluation(["no guidance", "best layer (L0)", "found head set"], np.random.default_rng(1)),
                      tmp_path / "grid.png")
    label = np.asarray(Image.open(path).convert("L"))[:, :150]
    assert (label < 128).any(axis=1).sum() > 3 * 5  # three labels drawn, each several pixel rows tall


def test_comparison_grid_names_the_empty_prompt_unconditional():
    from headhunter.cli.generate import comparison_grid
    from headhunter.format.preflight import describe_prompt

    assert describe_prompt("") == '"" (unconditional)' and describe_prompt("3") == "'3'"
    cell = Image.new("RGB", (16, 16), "black")
    label = f"{describe_prompt('')} seed 0"
    grid = comparison_grid([cell], [cell], [label], "guided w=2")
    assert grid.width >= text_width(label) + 2 * 128  # the label column fits the whole label
