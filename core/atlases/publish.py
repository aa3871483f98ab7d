"""Publishing an atlas: its card and its push, in the atlas layer above the Hub transport.

`push_atlas(folder, repo_id)` publishes the page (index.html), its PNGs, atlas.json, effects.csv and values.csv
with a README card (`atlas_card`) naming the base model, tagged `headhunter` + `head-atlas` + the architecture
so `headhunter search --atlas` finds it. The checkpoint (state.json, images/) stays local.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headhunter._version import __version__
from headhunter.atlases.atlas import Atlas, load_atlas
from headhunter.format.hub import PushOptions, upload_folder
from headhunter.format.model_card import ATLAS_TAG, LIBRARY_NAME

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import CommitInfo, ModelCard

#: Files of an atlas folder that are published (the checkpoint state and its kept images are not).
ATLAS_FILES = ("index.html", "atlas.json", "effects.csv", "values.csv", "*.png")


def push_atlas(folder: str | Path, repo_id: str, **options: Any) -> CommitInfo:
    """Upload a head atlas folder (written by `headhunter.atlas(..., out_dir=...)`) as one commit.

    `options` are `headhunter.format.hub.PushOptions` (private, token, commit_message, revision, create_pr).
    Raises SearchError when the folder holds no atlas, HubError for Hub failures."""
    push = PushOptions(**options)
    source = Path(folder)
    atlas = load_atlas(source)
    with tempfile.TemporaryDirectory(prefix="headhunter-push-") as tmp:
        staging = Path(tmp)
        for pattern in ATLAS_FILES:
            for path in sorted(source.glob(pattern)):
                shutil.copyfile(path, staging / path.name)
        atlas_card(atlas, repo_id).save(staging / "README.md")
        return upload_folder(staging, repo_id, push,
                             f"Upload head atlas of {atlas.settings.model} ({atlas.images} images)")


def atlas_card(atlas: Atlas, repo_id: str) -> ModelCard:
    """The README of a pushed atlas: base model, settings, cost, the labelled heads and the groups."""
    from huggingface_hub import ModelCard, ModelCardData

    s = atlas.settings
    on_hub = len(s.model.split("/")) == 2
    data = ModelCardData(library_name=LIBRARY_NAME, base_model=s.model if on_hub else None,
                         tags=list(dict.fromkeys(["headhunter", ATLAS_TAG, "perturbation-guidance", atlas.architecture])))
    lines = [
        "---", data.to_yaml(), "---", "", f"# Head atlas of `{s.model}`", "",
        "Every attention head perturbed alone (and every whole layer) against no guidance, measured on the same "
        "prompt-seed pairs with paired differences and 95 % intervals, made with "
        "[headhunter](https://pypi.org/project/headhunter-guidance/) (`headhunter atlas`; HeadHunter / SoftPAG, "
        "Ahn et al., [arXiv 2506.10978](https://arxiv.org/abs/2506.10978)). Open `index.html` for the page.", "",
        "| setting | value |", "|---|---|",
        f"| base model | `{s.model}` ({atlas.architecture}, {len(atlas.sites)} attention sites) |",
        f"| units | {len(s.heads)} heads + {len(s.layers)} whole layers + no guidance |",
        f"| prompts x seeds | {len(s.prompts)} x {len(s.seeds)} |",
        f"| guidance | `{s.perturbation.name}` u={s.strength:g}, w={s.guidance.scale:g}, scope `{s.guidance.scope}`, {s.steps} steps |",
        f"| images | {atlas.images} |", "", "## Labelled units", "",
    ]
    table = atlas.label_table()
    lines += [f"- `{unit}`: " + "; ".join(f"{e.label} {e.mean:+.3g} [{e.low:+.3g}, {e.high:+.3g}]" for e in effects)
              for unit, effects in table] or ["No unit has a significant effect at these settings."]
    lines += ["", "## Groups", ""] + [f"- {g.name}: {' '.join(g.heads)}" for g in atlas.groups]
    lines += ["", "Make a head set from it: `headhunter atlas export DIR --effect WORD --top 3 -o heads.safetensors` "
              f"after `headhunter pull`-ing or cloning `{repo_id}`.", "", f"*Pushed with headhunter {__version__}.*", ""]
    return ModelCard("\n".join(lines))


__all__ = ["ATLAS_FILES", "atlas_card", "push_atlas"]
