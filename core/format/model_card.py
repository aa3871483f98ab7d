"""Model cards: the README pushed with a head set (or an atlas), in the Hub's conventions.

`model_card(headset, repo_id)` renders a head set's card with huggingface_hub's `ModelCard` (YAML front
matter via `ModelCardData`: `library_name: headhunter`, `base_model` + `base_model_relation: adapter` for a
Hub base model, tags, license, a widget gallery for example images), the heads in paper notation, the
recommended settings, how the heads were found (search provenance) and a usage snippet.
`HeadSet.push_to_hub` writes it; an atlas's card is the atlas layer's (`headhunter.atlases.publish`).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import headhunter.format.headset_io as io
from headhunter.format.schedule import format_interval
from headhunter._version import __version__
from headhunter.format.schema import HeadSetMetadata
from headhunter.format.text import card_code, card_line, card_string, card_text, one_line

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import ModelCard

HeadSet = Any  # a headhunter.format.headset.HeadSet; named for readers (the head set renders its card through here)

#: `library_name` on every card, and the tag `headhunter search` filters on.
LIBRARY_NAME = "headhunter"
#: Tags on every pushed card, before the model family, `text-to-image` and the head set's own tags.
BASE_TAGS = ("headhunter", "head-set", "perturbation-guidance")
#: The tag that marks a pushed head atlas (docs/atlas.md); `headhunter search --atlas` filters on it.
ATLAS_TAG = "head-atlas"


def json_name(weight_name: str) -> str:
    """Name of the JSON rendering uploaded beside `weight_name`."""
    if weight_name == io.WEIGHTS_NAME:
        return io.JSON_NAME
    return str(PurePosixPath(weight_name).with_suffix(".json"))


_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

{{ description }}

A **head set** for [headhunter](https://pypi.org/project/headhunter-guidance/): the attention heads
{{ base_phrase }} to perturb for head-level perturbation guidance (HeadHunter / SoftPAG,
Ahn et al., *Where and How to Perturb*, [arXiv 2506.10978](https://arxiv.org/abs/2506.10978)).
It is a few kB of safetensors and is applied on top of the stock model, like a LoRA.

## Heads

{{ count }} head{{ '' if count == 1 else 's' }} in paper notation (`L<layer>H<head>`, 0-based; `@u` is the
SoftPAG strength where it is not 1):

`{{ notation }}`
{%- if schedule %}

### Schedule

The heads depend on the noise level sigma (1 = pure noise at the first step, 0 = the clean image; the
value the sampler's scheduler steps through), one row per interval `[lo, hi)` (the top one closed at 1).
This file is head-set format 2.0: headhunter versions that read only format 1.x refuse it rather than
apply it without its schedule.

| sigma | heads |
|---|---|
{%- for interval, heads in schedule %}
| `{{ interval }}` | {{ heads }} |
{%- endfor %}
{%- endif %}

## Recommended settings

| setting | value |
|---|---|
| architecture | `{{ architecture }}` ({{ n_sites }} attention sites) |
| perturbation | `{{ perturbation }}` |
| guidance scale w | {{ scale }} |
| CFG scale s | {{ cfg }} |
| step window | [{{ start }}, {{ stop }}) of the steps |
| identity scope | `{{ scope }}` |
| origin | {{ origin }}{{ source }} |
{%- if license %}
| license | {{ license }} |
{%- endif %}

## How it was found

{{ provenance }}

## Usage

```python
import headhunter
{{ load_pipe }}
headset = headhunter.load_headset("{{ repo_id }}"{{ weight_arg }})
with headhunter.apply(pipe, headset, scale={{ scale }}):
    image = pipe("a photo of a lighthouse at dusk").images[0]
```

From the command line: `headhunter pull {{ repo_id }}{{ weight_flag }}` and `headhunter show {{ repo_id }}`.
{%- if images %}

## Examples

<Gallery />
{%- endif %}

## Files

- `{{ weight_name }}`: {% if schedule %}one float32 `[num_heads]` strength vector per attention site and interval of the
  schedule (keys `<site>@<k>`), metadata (with the intervals){% else %}one float32 `[num_heads]` strength vector per
  attention site, metadata{% endif %} in the safetensors header under `headhunter` (readable without downloading the tensors)
- `{{ json_name }}`: the same head set as editable JSON

*Pushed with headhunter {{ version }}.*
"""


#: A Hub repo id (`user/name`) as the Hub allows it; only such a base model becomes a link and `base_model:`.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def _yaml_text(text: str) -> str:
    """A front-matter value: one line of safe text with HTML escaped (PyYAML, via ModelCardData, quotes it)."""
    return html.escape(one_line(text), quote=False)


def card_tags(headset: HeadSet) -> list[str]:
    """The card's tags: headhunter's own, the model family, `text-to-image`, then the head set's tags (each one
    line of safe text: a tag holds no control characters or newlines)."""
    tags = [*BASE_TAGS, headset.metadata.architecture, "text-to-image", *headset.metadata.tags]
    return list(dict.fromkeys(_yaml_text(t) for t in tags))


def model_card(
    headset: HeadSet,
    repo_id: str,
    *,
    weight_name: str = io.WEIGHTS_NAME,
    images: Sequence[tuple[str, str]] = (),
) -> ModelCard:
    """The README of a pushed head set (huggingface_hub ModelCard; YAML via ModelCardData).

    Every metadata string is escaped for the card (`headhunter.format.text.card_*`): a name or description
    cannot add front-matter lines, a `---` fence, HTML (`<script>`) or markdown structure; the YAML front
    matter is dumped by `ModelCardData` (PyYAML quotes the values), never assembled from text.
    """
    from huggingface_hub import ModelCard, ModelCardData

    m = headset.metadata
    g = m.guidance
    on_hub = m.base_model is not None and _REPO_ID.match(m.base_model) is not None
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        base_model=m.base_model if on_hub else None,
        tags=card_tags(headset),
        license=None if m.license is None else _yaml_text(m.license),
        model_name=_yaml_text(m.name),
        widget=[{**({"text": caption} if caption else {}), "output": {"url": path}} for path, caption in images] or None,
        **({"base_model_relation": "adapter"} if on_hub else {}),
    )
    if on_hub:
        load_pipe = (
            "import torch\nfrom diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained({card_string(m.base_model)}, torch_dtype=torch.bfloat16).to("cuda")'
        )
    else:
        load_pipe = f'\npipe = headhunter.load_model({card_string(m.base_model or m.architecture)})'
    custom = weight_name != io.WEIGHTS_NAME
    return ModelCard.from_template(
        data,
        template_str=_CARD_TEMPLATE,
        name=card_line(m.name),
        description=card_text(m.description) if m.description else f"A head set for `{card_code(m.base_model or m.architecture)}`.",
        base_phrase=f"of [`{m.base_model}`](https://huggingface.co/{m.base_model})" if on_hub else f"of `{card_code(m.base_model or m.architecture)}`",
        count=len(headset),
        notation=headset.notation() or "(none)",
        schedule=[(format_interval(interval), f"`{piece.notation()}`" if len(piece) else "(none)")
                  for interval, piece in headset.pieces()] if headset.scheduled else [],
        architecture=card_code(m.architecture, table=True),
        n_sites=len(m.sites),
        perturbation=card_code(m.perturbation.name + (f" {json.dumps(m.perturbation.params)}" if m.perturbation.params else ""), table=True),
        scale=f"{g.scale:g}",
        cfg="off (not set)" if g.cfg is None else f"{g.cfg:g}",
        start=f"{g.start:g}",
        stop=f"{g.stop:g}",
        scope=g.scope,
        origin={"paper": "named in the paper", "search": "found by a headhunter search", "manual": "hand-made",
                "atlas": "exported from a head atlas"}[m.origin],
        source=f" ({card_line(m.source)})" if m.source else "",
        license=card_line(m.license) if m.license else None,
        provenance=_provenance(m),
        load_pipe=load_pipe,
        repo_id=card_string(repo_id)[1:-1],
        weight_arg=f", weight_name={card_string(weight_name)}" if custom else "",
        weight_flag=f" --weight-name {card_code(weight_name)}" if custom else "",
        images=bool(images),
        weight_name=card_code(weight_name),
        json_name=card_code(json_name(weight_name)),
        version=__version__,
    )


def _provenance(m: HeadSetMetadata) -> str:
    """Markdown lines describing where the heads come from (the search settings and scores, if searched)."""
    s = m.search
    if s is None:
        where = {"paper": "Named in the paper", "search": "Found by a headhunter search", "manual": "Chosen by hand",
                 "atlas": "Exported from a head atlas"}
        return f"{where[m.origin]}{': ' + card_line(m.source) if m.source else ''}. No search record is attached."
    rows = [
        ("objective", f"`{card_code(s.objective, table=True)}`"),
        ("rounds x heads per round", f"{s.rounds or '-'} x {s.top_k or '-'}"),
        ("candidates", s.candidates),
        ("sampling steps", s.steps),
        ("strength u during the search", s.strength),
        ("guidance scale w / CFG during the search", f"{s.scale if s.scale is not None else '-'} / {s.cfg if s.cfg is not None else '-'}"),
        ("prompts", "; ".join(f"`{card_code(p, table=True)}`" for p in s.prompts[:10]) + (f" (+{len(s.prompts) - 10} more)" if len(s.prompts) > 10 else "")),
        ("seeds", ", ".join(map(str, s.seeds[:20])) + (" ..." if len(s.seeds) > 20 else "")),
        ("baseline score (no guidance)", s.baseline_score),
        ("best score per round", ", ".join(f"{max(r):.4g}" for r in s.round_scores if r)),
    ]
    rows += [(f"evaluation: {card_line(k)}", card_line(json.dumps(v) if not isinstance(v, (int, float, str)) else str(v)))
             for k, v in s.evaluation.items()]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v not in (None, "", "- x -")]
    return (f"Source: {card_line(m.source)}\n\n" if m.source else "") + "\n".join(lines)


__all__ = ["ATLAS_TAG", "BASE_TAGS", "LIBRARY_NAME", "card_tags", "json_name", "model_card"]
