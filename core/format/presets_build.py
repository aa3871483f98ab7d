"""Regenerate the paper presets in headsets/ from the table below: `python -m headhunter.format.presets_build`.

Each row is a head or head combination the paper names for SD3-medium or FLUX.1-dev, with the effect it
reports and the figure it comes from (reference: the paper's §3.1, Figs. 3, 9, 32-36; FLUX layers are
numbered 0-18 double-stream, 19-56 single-stream). Heads whose label pairing the paper's figures leave
ambiguous are left out.

Settings (the paper's recommendations): SoftPAG, w = 3 for SD3 (20 Euler steps, CFG off in the paper),
w = 8 for FLUX.1-dev (15 steps). **Strengths are stored as u = 0.5**, SoftPAG's tuned default (App. B:
search at u = 1, then tune u down to about 0.5 to remove over-saturation), so loading a preset and
applying it uses the recommended setting with no further knob. The effects were found at u = 1 (PAG);
`preset:NAME@1` loads the same heads at full strength where an effect is too faint at 0.5.

Paper presets are rebuilt wholesale: rows are written in order, entries of origin `paper` that are no
longer in the table are dropped, entries of other origins (searched presets) are kept as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import headhunter.format.headset_io as io
from headhunter.format.headset import HeadSet
from headhunter.format.presets import INDEX_FORMAT, INDEX_NAME, PresetEntry, add_preset, headsets_root

SD3_MEDIUM = "stabilityai/stable-diffusion-3-medium-diffusers"
FLUX1_DEV = "black-forest-labs/FLUX.1-dev"
#: The paper's recommended settings per base model: (folder, guidance scale w, sampling steps used in the paper).
SETTINGS = {SD3_MEDIUM: ("sd3-medium", 3.0, 20), FLUX1_DEV: ("flux1-dev", 8.0, 15)}
#: SoftPAG strength u stored in every paper preset.
PRESET_STRENGTH = 0.5


class PaperPreset(NamedTuple):
    name: str
    model: str
    heads: str  # paper notation; a whole layer is written out head by head
    effect: str
    source: str
    tags: tuple[str, ...]


def _layer(layer: int, heads: int = 24) -> str:
    return ", ".join(f"L{layer}H{h}" for h in range(heads))


PAPER_PRESETS: tuple[PaperPreset, ...] = (
    # SD3-medium: single heads (Fig. 3 and the running text of §3.1)
    PaperPreset("sd3-dark-lighting", SD3_MEDIUM, "L1H10", "darker image, dramatic lighting", "paper Fig. 3, §3.1", ("lighting",)),
    PaperPreset("sd3-shearing", SD3_MEDIUM, "L11H15", "shears the layout from top-left to bottom-right", "paper Fig. 3, §3.1", ("structure",)),
    PaperPreset("sd3-shadow", SD3_MEDIUM, "L13H17", "adds shadows", "paper Fig. 3", ("lighting",)),
    PaperPreset("sd3-blue-tone", SD3_MEDIUM, "L0H23", "blue colour tone", "paper Fig. 3", ("color",)),
    # SD3-medium: single heads cross-checked between Figs. 32 and 34
    PaperPreset("sd3-red", SD3_MEDIUM, "L0H3", "red colour cast", "paper Figs. 32, 34", ("color",)),
    PaperPreset("sd3-sunlight", SD3_MEDIUM, "L0H4", "sunlight", "paper Figs. 32, 34", ("lighting",)),
    PaperPreset("sd3-horizontal-banding", SD3_MEDIUM, "L16H3", "horizontal banding", "paper Figs. 32, 34", ("texture",)),
    PaperPreset("sd3-fine-detail", SD3_MEDIUM, "L14H7", "high resolution, fine detail", "paper Figs. 32, 34", ("detail", "quality")),
    PaperPreset("sd3-rainbow-neon", SD3_MEDIUM, "L14H17", "rainbow neon filter", "paper Figs. 32, 34", ("color", "style")),
    # SD3-medium: combinations
    PaperPreset("sd3-white", SD3_MEDIUM, "L0H15, L1H19", "amplifies the concept 'white'", "paper Fig. 36", ("concept", "color")),
    PaperPreset("sd3-dark", SD3_MEDIUM, "L1H2, L1H10", "amplifies the concept 'dark'", "paper Fig. 36", ("concept", "lighting")),
    PaperPreset("sd3-dark-shearing", SD3_MEDIUM, "L1H10, L11H15", "darkness/lighting and shearing combined",
                "paper Fig. 3, §3.1 (composition)", ("lighting", "structure", "composition")),
    PaperPreset("sd3-layer9-softpag", SD3_MEDIUM, _layer(9), "general quality: layer-level SoftPAG on layer 9",
                "official code sd3_inference.ipynb; paper Fig. 9", ("quality", "layer")),
    # FLUX.1-dev: single-stream heads cross-checked between Figs. 33 and 35
    PaperPreset("flux-golden-hour", FLUX1_DEV, "L38H18", "golden-hour light", "paper Figs. 33, 35", ("lighting", "style")),
    PaperPreset("flux-glossy", FLUX1_DEV, "L43H17", "glossy, plastic texture", "paper Figs. 33, 35", ("texture",)),
    PaperPreset("flux-green-filter", FLUX1_DEV, "L52H12", "green filter", "paper Figs. 33, 35", ("color",)),
    PaperPreset("flux-vintage-film", FLUX1_DEV, "L51H23", "vintage film look", "paper Figs. 33, 35", ("style",)),
    PaperPreset("flux-warm-red", FLUX1_DEV, "L52H22", "warm red palette", "paper Figs. 33, 35", ("color",)),
    PaperPreset("flux-smooth-bokeh", FLUX1_DEV, "L34H0", "smooth bokeh, detailed subject", "paper Figs. 33, 35", ("detail",)),
    PaperPreset("flux-cool-tone", FLUX1_DEV, "L52H6", "cool colour tone", "paper Figs. 33, 35", ("color",)),
)


def paper_headset(row: PaperPreset) -> HeadSet:
    """The head set of one table row, with the paper's recommended settings in its metadata."""
    folder, scale, steps = SETTINGS[row.model]
    description = (
        f"{row.effect[0].upper()}{row.effect[1:]} ({row.source}). Paper-named heads, stored at SoftPAG u = "
        f"{PRESET_STRENGTH:g} (the paper's tuned default; the effect was shown at u = 1, load 'preset:{row.name}@1' "
        f"for that); recommended w = {scale:g}, {steps} steps."
    )
    return HeadSet.from_notation(
        row.heads,
        base_model=row.model,
        strength=PRESET_STRENGTH,
        name=row.name,
        description=description,
        perturbation={"name": "softpag", "params": {}},
        guidance={"scale": scale},
        origin="paper",
        source=row.source,
        tags=["paper", folder, *row.tags],
    )


def build(root: str | Path | None = None) -> list[PresetEntry]:
    """Write every paper preset and its index entry under `root` (default: the shipped headsets/)."""
    folder = Path(root) if root else headsets_root()
    index = folder / INDEX_NAME
    kept = []
    if index.exists():
        kept = [p for p in json.loads(index.read_text()).get("presets", []) if p.get("origin") != "paper"]
    names = {row.name for row in PAPER_PRESETS}
    io.write_atomic(index, (json.dumps({"format": INDEX_FORMAT, "presets": []}) + "\n").encode())
    entries = []
    for row in PAPER_PRESETS:
        subfolder = SETTINGS[row.model][0]
        file = f"{subfolder}/{row.name.split('-', 1)[1]}.safetensors"
        entries.append(add_preset(paper_headset(row), row.name, file, effect=row.effect, root=folder))
    others = [PresetEntry.model_validate(p) for p in kept if p["name"] not in names]
    if others:
        doc = json.loads(index.read_text())
        doc["presets"] += [p.model_dump() for p in others]
        io.write_atomic(index, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode())
    return entries


if __name__ == "__main__":
    for entry in build():
        print(f"{entry.name:<24} {entry.file:<40} {entry.heads if len(entry.heads) < 40 else entry.heads[:37] + '...'}")
