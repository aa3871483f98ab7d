"""The atlas page: contact sheets, heatmaps, labels and groups, as PNGs and one self-contained HTML file.

index.html needs no network: every picture is an inline PNG (a base64 data URI) and the CSS is inline.
The same pictures are written as PNG files beside it (contact_L{i}.png, heatmap_{measure}.png,
heatmaps.png), with the numbers in atlas.json / effects.csv / values.csv (written by `Atlas.save`).
"""

from __future__ import annotations

import base64
import html
import io as _io
import math
from pathlib import Path
from typing import Any

import numpy as np

from headhunter.format.headset_io import write_atomic
from headhunter.format.schedule import format_interval
from headhunter.atlases.atlas import Atlas
from headhunter.atlases.effects import NONE, Measure
from headhunter.format.preflight import describe_prompt
from headhunter.report.labels import LABEL_SIZE, fit_text, label_font

CELL = 64  # smallest cell side in the contact sheets, pixels
LABEL_WIDTH = 260


# ----- pictures -----------------------------------------------------------------------------------------
def sheet_rows(atlas: Atlas, layer: int) -> list[str]:
    """Rows of a layer's contact sheet: no guidance, the whole layer (if measured), then its heads."""
    rows = [NONE] + ([f"L{layer}"] if layer in atlas.settings.layers else [])
    return rows + [h for h in atlas.settings.heads if h.startswith(f"L{layer}H")]


def contact_sheet(atlas: Atlas, layer: int) -> Any:
    """Paper Fig. 1 style: one row per unit (one head per row), the same prompt-seed pair down each column.

    Returns a PIL image; each row is labelled with the unit and its effect words.
    """
    from PIL import Image, ImageDraw

    rows = sheet_rows(atlas, layer)
    cols = [c for c in range(min(atlas.settings.sheet_pairs, len(atlas.pairs))) if (NONE, c) in atlas.thumbs]
    if not cols:
        return None
    sample = atlas.thumbs[(NONE, cols[0])]
    h, w = sample.shape[-2:]
    factor = max(1, math.ceil(CELL / max(h, w)))
    ch, cw = h * factor, w * factor
    gap, top = 3, 18
    sheet = Image.new("RGB", (LABEL_WIDTH + len(cols) * (cw + gap), top + len(rows) * (ch + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    font, small = label_font(), label_font(LABEL_SIZE - 1)
    for c, pair in enumerate(cols):
        prompt, seed = atlas.pairs[pair]
        caption = f"seed {seed}" + (f" {describe_prompt(prompt[:10])}" if len(atlas.settings.prompts) > 1 else "")
        draw.text((LABEL_WIDTH + c * (cw + gap) + 2, 3), fit_text(caption, cw, LABEL_SIZE - 1), fill="black", font=small)
    for r, unit in enumerate(rows):
        y = top + r * (ch + gap)
        name = "no guidance" if unit == NONE else (f"{unit} (whole layer)" if "H" not in unit else unit)
        words = atlas.labels(unit) if unit != NONE else []
        lines = _wrap(", ".join(words), 42)[:3]
        y0 = y + max(2, ch // 2 - 7 * (len(lines) + 1))
        draw.text((4, y0), fit_text(name, LABEL_WIDTH - 8), fill="black", font=font)
        for i, line in enumerate(lines):
            draw.text((4, y0 + 13 * (i + 1)), fit_text(line, LABEL_WIDTH - 8, LABEL_SIZE - 1), fill=(90, 90, 90), font=small)
        for c, pair in enumerate(cols):
            thumb = atlas.thumbs.get((unit, pair))
            if thumb is not None:
                sheet.paste(_to_pil(thumb).resize((cw, ch), Image.NEAREST), (LABEL_WIDTH + c * (cw + gap), y))
    return sheet


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        elif word:
            lines.append(word)
    return lines


def _to_pil(thumb: Any) -> Any:
    from PIL import Image

    array = thumb.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L").convert("RGB")
    return Image.fromarray(array[:, :, :3], mode="RGB")


def live_measures(atlas: Atlas) -> list[Measure]:
    """Measures shown: every measure that varies (constant ones, e.g. colour on gray images, are skipped)."""
    return [m for m in atlas.measures if m.name not in atlas.skipped]


def heat_matrix(atlas: Atlas, measure: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, significant, labelled) as layers x (heads + 1) arrays; the last column is the whole layer.

    values: d (mean / unguided sd) where defined, else the mean difference; NaN where not measured.
    """
    width = max(s.num_heads for s in atlas.sites) + 1
    shape = (len(atlas.sites), width)
    values, significant, labelled = np.full(shape, np.nan), np.zeros(shape, bool), np.zeros(shape, bool)
    for unit, per in atlas.effects.items():
        e = per.get(measure)
        if e is None:
            continue
        if "H" in unit:
            layer, head = (int(x) for x in unit[1:].split("H"))
        else:
            layer, head = int(unit[1:]), width - 1
        values[layer, head] = e.d if math.isfinite(e.d) else e.mean
        significant[layer, head] = e.significant
        labelled[layer, head] = e.label is not None
    return values, significant, labelled


def _draw_heatmap(ax: Any, atlas: Atlas, m: Measure, colorbar: bool = True) -> None:
    import matplotlib.pyplot as plt

    values, significant, labelled = heat_matrix(atlas, m.name)
    standardized = any(math.isfinite(e.d) for per in atlas.effects.values() if m.name in per for e in [per[m.name]])
    heads = values[:, :-1]  # the colour scale follows the heads; a stronger whole layer saturates
    limit = float(np.nanmax(np.abs(heads))) if np.isfinite(heads).any() else 1.0
    limit = limit or 1.0
    cmap = "Reds" if m.kind == "paired" else "RdBu_r"
    image = ax.imshow(values, cmap=cmap, vmin=0 if m.kind == "paired" else -limit, vmax=limit, aspect="auto",
                      interpolation="nearest")
    width = values.shape[1]
    ax.axvline(width - 1.5, color="black", linewidth=1.5)
    for layer, head in zip(*np.nonzero(significant)):
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False,
                                   edgecolor="black", linewidth=2.0 if labelled[layer, head] else 0.8))
    ax.set_xticks(range(width))
    ax.set_xticklabels([str(i) for i in range(width - 1)] + ["all"], fontsize=7)
    ax.set_yticks(range(values.shape[0]))
    ax.set_yticklabels([str(i) for i in range(values.shape[0])], fontsize=7)
    ax.set_xlabel("head", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    ax.set_title(m.name, fontsize=9)
    if colorbar:
        plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label(
            "d = mean diff / unguided sd" if standardized else "mean difference vs no guidance", fontsize=7)


def heatmap_figure(atlas: Atlas, m: Measure) -> Any:
    """One measure's layers x heads heatmap (last column: the whole layer); boxes: significant, thick: labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(s.num_heads for s in atlas.sites) + 1
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * width + 2), max(2.6, 0.3 * len(atlas.sites) + 1.4)))
    _draw_heatmap(ax, atlas, m)
    return fig


def overview_figure(atlas: Atlas) -> Any:
    """Every shown measure's heatmap in one figure (the picture docs/atlas.md shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = live_measures(atlas)
    cols = min(3, len(measures))
    rows = math.ceil(len(measures) / cols)
    width = max(s.num_heads for s in atlas.sites) + 1
    cell_w, cell_h = max(3.2, 0.3 * width + 1.6), max(2.2, 0.26 * len(atlas.sites) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell_w, rows * cell_h), squeeze=False)
    for ax, m in zip(axes.flat, measures):
        _draw_heatmap(ax, atlas, m)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    fig.suptitle(f"head atlas of {atlas.settings.model}: effect of each head alone vs no guidance "
                 f"(w={atlas.settings.guidance.scale:g}, u={atlas.settings.strength:g}, {len(atlas.pairs)} pairs)", fontsize=10)
    fig.tight_layout()
    return fig


def _png(obj: Any) -> bytes:
    buffer = _io.BytesIO()
    if hasattr(obj, "savefig"):
        import matplotlib.pyplot as plt

        obj.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(obj)
    else:
        obj.save(buffer, format="PNG")
    return buffer.getvalue()


# ----- page ---------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.88em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .55em;text-align:left}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}
img{max-width:100%;image-rendering:pixelated}code{background:#f4f4f4;padding:0 .25em}
.tag{display:inline-block;background:#eef;border-radius:3px;padding:0 .4em;margin:0 .2em .2em 0;font-size:.9em}
details{margin:.6em 0}
"""


def _size(e: Any) -> float:
    return e.d if math.isfinite(e.d) else e.mean


def _fmt(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3g}"


def render_html(atlas: Atlas, pictures: dict[str, bytes]) -> str:
    """The self-contained page (pictures inlined as data URIs)."""
    s = atlas.settings
    esc = html.escape

    def img(name: str, alt: str) -> str:
        data = base64.b64encode(pictures[name]).decode()
        return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'

    seconds, cpu = atlas.timing.get("seconds", 0.0), atlas.timing.get("cpu_seconds", 0.0)
    made = int(atlas.timing.get("images", 0))
    per_image = (f"{1000 * seconds / made:.0f} ms wall, {1000 * cpu / made:.0f} ms CPU per image" if made
                 else "all images came from the checkpoint")
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>head atlas: {esc(s.model)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Head atlas of <code>{esc(s.model)}</code></h1>",
        "<p>Every head perturbed <b>alone</b> (and every whole layer) on the same prompt-seed pairs; each effect is the "
        "paired difference against no guidance on the same pair (paper Fig. 1, measured).</p>",
        "<table>",
        *(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in (
            ("units", f"{len(s.heads)} heads + {len(s.layers)} whole layers + no guidance"),
            ("prompts", "; ".join(f"<code>{esc(p)}</code>" for p in s.prompts[:8]) + (" ..." if len(s.prompts) > 8 else "")),
            ("seeds", esc(", ".join(map(str, s.seeds[:24])) + (" ..." if len(s.seeds) > 24 else ""))),
            ("guidance", f"{esc(s.perturbation.name)} u={s.strength:g}, w={s.guidance.scale:g}, scope {esc(s.guidance.scope)}, "
                         f"cfg {'off' if s.guidance.cfg is None else f'{s.guidance.cfg:g}'}, {s.steps} steps"),
            ("images", (f"{atlas.images} = (({len(s.heads)} + {len(s.layers)}) x (1 + {len(s.intervals)} noise intervals) + 1)"
                        if s.intervals else f"{atlas.images} = ({len(s.heads)} + {len(s.layers)} + 1)")
                       + f" x {len(s.prompts)} x {len(s.seeds)}; "
                       f"generated into this folder: {made} in {seconds:.0f} s ({per_image})"),
            ("labels", f"significant after Bonferroni over every (unit, measure) test (alpha {atlas.alpha:g}) and "
                       f"|d| &ge; {atlas.min_effect:g} (d = mean difference / sd of the unguided images); "
                       "intervals are 95 % t intervals of the paired mean"),
            ("not shown", esc(", ".join(atlas.skipped) + " (constant on every image)") if atlas.skipped else "-"),
        )),
        "</table>",
        "<p>Numbers: <code>atlas.json</code> (everything), <code>effects.csv</code> (one row per unit and measure), "
        "<code>values.csv</code> (one row per image and measure).</p>",
        "<h2>Labels</h2>",
    ]
    table = atlas.label_table()
    if table:
        out.append("<table><tr><th>unit</th><th>effects (mean difference [95 % interval], d)</th></tr>")
        for unit, effects in table:
            cells = "; ".join(f"<b>{esc(e.label or '')}</b> {_fmt(e.mean)} [{_fmt(e.low)}, {_fmt(e.high)}]"
                              + (f", d={_fmt(e.d)}" if math.isfinite(e.d) else "") for e in effects)
            name = f"{unit} (whole layer)" if "H" not in unit else unit
            out.append(f"<tr><td><code>{esc(name)}</code></td><td>{cells}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class=muted>No head has a significant effect at these settings.</p>")
    words = sorted(atlas.effect_words().items(), key=lambda kv: (-kv[1], kv[0]))
    if words:
        out.append("<h2>By effect</h2><p>Heads (not whole layers) carrying each label, strongest first; "
                   "<code>headhunter atlas export DIR --effect WORD</code> makes a head set of the first ones.</p>"
                   "<table><tr><th>effect</th><th>heads</th></tr>")
        for word, _ in words:
            measure, _ = atlas._resolve_effect(word)
            cells = " ".join(f"<span class=tag>{esc(h)} {_fmt(_size(atlas.effects[h][measure.name]))}</span>"
                             for h in atlas.heads_with(word))
            out.append(f"<tr><td><b>{esc(word)}</b></td><td>{cells}</td></tr>")
        out.append("</table><p class=muted>Number after each head: d, or the mean difference for measures whose "
                   "unguided sd is 0 (the class change: fraction of pairs).</p>")
    out.append("<h2>Groups of heads with similar effects</h2><table><tr><th>group</th><th>heads</th></tr>")
    for g in atlas.groups:
        out.append(f"<tr><td>{esc(g.name)}</td><td>{' '.join(f'<span class=tag>{esc(h)}</span>' for h in g.heads)}</td></tr>")
    out.append("</table><p class=muted>Average-linkage clustering of the labelled heads' standardized effect vectors.</p>")
    if s.intervals:
        out.extend(_interval_section(atlas, esc))
    out.append("<h2>Heatmaps</h2><p>Colour: d (or the mean difference where the unguided sd is 0), scaled to the "
               "heads (a stronger whole layer saturates); last column: the whole layer; thin box: significant; "
               "thick box: labelled.</p>")
    out.append(img("heatmaps.png", "every measure's heatmap"))
    out.append("<h2>Contact sheets</h2><p>One row per head (the same prompt-seed pair down each column), with no "
               "guidance and the whole layer on top.</p>")
    for layer in range(len(atlas.sites)):
        name = f"contact_L{layer}.png"
        if name in pictures:
            out.append(f"<h3>layer {layer} <span class=muted>({esc(atlas.sites[layer].name)})</span></h3>")
            out.append(img(name, f"contact sheet of layer {layer}"))
    out.append("<h2>Every effect</h2><details><summary>table</summary><table><tr><th>unit</th><th>measure</th>"
               "<th>mean</th><th>95 % interval</th><th>d</th><th>p</th><th>label</th></tr>")
    for row in atlas.effect_rows():
        out.append(f"<tr><td>{esc(row['unit'])}</td><td>{esc(row['measure'])}</td><td class=num>{_fmt(row['mean'])}</td>"
                   f"<td class=num>[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]</td><td class=num>{_fmt(row['d'])}</td>"
                   f"<td class=num>{row['p']:.2g}</td><td>{esc(row['label'])}</td></tr>")
    out.append("</table></details></body></html>")
    return "\n".join(out)


def _interval_section(atlas: Atlas, esc: Any) -> list[str]:
    """The per-noise-interval part of the page: which units' effects differ between intervals of sigma."""
    s = atlas.settings
    names = [format_interval(tuple(iv)) for iv in s.intervals]
    found = [d for d in atlas.interval_differences if d.significant]
    out = [f"<h2>Per noise interval</h2><p>Every unit was also generated acting only while the noise level sigma "
           f"(1 = pure noise, the first step) is in one of {len(names)} intervals: "
           + ", ".join(f"<code>{esc(n)}</code>" for n in names)
           + ". Its per-interval effects are in <code>effects.csv</code> (units like <code>L3H2@[0,0.5)</code>), in "
           "the same Bonferroni family as the units. Below: effects that <b>differ between two intervals</b> "
           f"(paired difference of the two restricted runs, Bonferroni over all {len(atlas.interval_differences)} "
           "unit x measure x interval-pair tests, same size threshold as the labels).</p>"]
    if not found:
        out.append("<p class=muted>No unit's effect differs significantly between intervals at these settings.</p>")
        return out
    out.append("<table><tr><th>unit</th><th>measure</th><th>intervals</th><th>difference [95 % interval]</th>"
               "<th>p</th></tr>")
    for d in sorted(found, key=lambda d: d.p)[:100]:
        out.append(f"<tr><td><code>{esc(d.unit)}</code></td><td>{esc(d.measure)}</td><td><code>{esc(names[d.a])}</code> "
                   f"&minus; <code>{esc(names[d.b])}</code></td><td class=num>{_fmt(d.mean)} [{_fmt(d.low)}, "
                   f"{_fmt(d.high)}]</td><td class=num>{d.p:.2g}</td></tr>")
    out.append("</table>")
    return out


def write_page(atlas: Atlas, out_dir: str | Path) -> Path:
    """Write the PNGs and index.html into out_dir (atomically); returns index.html's path."""
    out = Path(out_dir)
    pictures: dict[str, bytes] = {}
    for layer in range(len(atlas.sites)):
        sheet = contact_sheet(atlas, layer)
        if sheet is not None and len(sheet_rows(atlas, layer)) > 1:
            pictures[f"contact_L{layer}.png"] = _png(sheet)
    for m in live_measures(atlas):
        pictures[f"heatmap_{_safe(m.name)}.png"] = _png(heatmap_figure(atlas, m))
    pictures["heatmaps.png"] = _png(overview_figure(atlas))
    for name, data in pictures.items():
        write_atomic(out / name, data)
    write_atomic(out / "index.html", render_html(atlas, pictures).encode())
    return out / "index.html"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
