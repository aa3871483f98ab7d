"""The DiT coverage table of docs/compatibility.md, generated from diffusers' own list of classes (issue 24).

Denominator: every transformer class that some diffusers pipeline takes as its `transformer` component (the
type hint of `__init__`, every `*Pipeline` class diffusers exports) for text-to-image or text-to-video (the
pipeline has a `prompt` / `prompt_embeds` argument, `height`, no required image input and no edit / control /
img2img / inpaint / i2v / ... tag in its name), plus the transformer classes of modular pipelines with a
`text2image` / `text2video` / `t2va` workflow. Each class is then guided (an installed adapter recognises it:
copied or declared), refused with the reason, or not applicable with the reason; a class in none of these
fails the test. The table in the docs must equal the generated one: regenerate it with
`python tests/test_dit_coverage.py --write` (diffusers 0.42.1, the version CI installs).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import pkgutil
import re
import sys
import typing
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "compatibility.md"
START, END = "<!-- dit-coverage:start -->", "<!-- dit-coverage:end -->"
DIFFUSERS = "0.42.1"

#: classes with a text-to-image/video pipeline that no adapter guides, and why
REFUSED = {
    "SanaTransformer2DModel": "self-attention is ReLU linear attention (`SanaLinearAttnProcessor2_0`): there is "
                              "no softmax map to interpolate; it needs a copied processor (as diffusers' "
                              "`PAGIdentitySanaLinearAttnProcessor2_0`), not written yet",
    "SanaVideoTransformer3DModel": "linear attention (`SanaLinearAttnProcessor3_0`), as Sana",
}
NOT_APPLICABLE = {
    "UVit2DModel": "aMUSEd is a masked-token (MaskGIT) model predicting codebook logits, not noise or velocity: "
                   "the guidance formula on the prediction does not apply as is",
}
#: which tests back a guided row
COPIED_TESTS = "tests/test_dit_adapters.py, tests/test_perturbations.py, tests/test_dit_pipelines.py"
DECLARED_TESTS = "tests/test_declared_dits.py"

IMAGE_INPUTS = {"image", "images", "video", "reference_images", "control_image", "mask_image", "reference_image",
                "input_images", "cond_image", "condition_images", "conditions", "control_video", "image_latents"}
NOT_T2X = ("controlnet", "control", "inpaint", "fill", "img2img", "image2image", "i2i", "edit", "kontext",
           "imagetovideo", "image2video", "i2v", "videotovideo", "video2video", "v2v", "refiner", "wananimate",
           "videotoworld", "framepack", "incontext", "visualcloze", "condition", "srpipeline", "layered",
           "transfer", "hdr", "dfr", "multiprompt")
NOT_VISUAL = ("audio", "music", "proteina", "acestep")


def _transformer_types(cls: type) -> list[str]:
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 -- a pipeline whose hints do not resolve: fall back to the raw annotations
        hints = {k: p.annotation for k, p in inspect.signature(cls.__init__).parameters.items()}
    t = hints.get("transformer")
    if t is None:
        return []
    return [a.__name__ for a in (typing.get_args(t) or (t,)) if inspect.isclass(a) and a is not type(None)]


def _is_t2x(name: str, cls: type) -> bool:
    params = inspect.signature(cls.__call__).parameters
    n = name.lower().replace("_", "")
    if "height" not in params or any(w in n for w in NOT_VISUAL):
        return False
    tags = [k for k in NOT_T2X if k in n]
    if "ti2v" in n:  # text(+image)-to-video, the image optional
        tags = [t for t in tags if t != "i2v"]
    if "vace" in n:  # VACE without conditions is text-to-video
        tags = [t for t in tags if t not in ("v2v", "video2video")]
    required = [p for p in params if p in IMAGE_INPUTS and params[p].default is inspect.Parameter.empty]
    return ("prompt" in params or "prompt_embeds" in params) and not tags and not required


def _modular_t2x() -> dict[str, list[str]]:
    import diffusers.modular_pipelines as mp

    def walk(block, seen, out):
        if id(block) in seen:
            return
        seen.add(id(block))
        for spec in getattr(block, "expected_components", []) or []:
            if spec.name == "transformer" and spec.type_hint is not None:
                out.add(getattr(spec.type_hint, "__name__", str(spec.type_hint)))
        for sub in (getattr(block, "sub_blocks", None) or {}).values():
            walk(sub, seen, out)

    found: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(mp.__path__):
        if not info.ispkg:
            continue
        pkg = importlib.import_module(f"diffusers.modular_pipelines.{info.name}")
        for sub in pkgutil.iter_modules(pkg.__path__):
            if not sub.name.startswith("modular_blocks"):
                continue
            module = importlib.import_module(f"{pkg.__name__}.{sub.name}")
            for name, cls in vars(module).items():
                if not (inspect.isclass(cls) and cls.__module__ == module.__name__ and "_workflow_map" in cls.__dict__):
                    continue
                if not any(w in ("text2image", "text2video", "t2va") for w in cls._workflow_map):
                    continue
                types: set[str] = set()
                walk(cls(), set(), types)
                for t in types:
                    found.setdefault(t, []).append(f"modular {info.name}")
    return found


@functools.lru_cache(maxsize=1)
def t2x_classes() -> dict[str, list[str]]:
    """{transformer class name: its text-to-image/video pipelines}, from diffusers itself."""
    import diffusers
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    out: dict[str, list[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in dir(diffusers):
            if not name.endswith("Pipeline"):
                continue
            cls = getattr(diffusers, name)
            if not (inspect.isclass(cls) and issubclass(cls, DiffusionPipeline)) or cls is DiffusionPipeline:
                continue
            if _is_t2x(name, cls):
                for t in _transformer_types(cls):
                    out.setdefault(t, []).append(name)
        for t, pipes in _modular_t2x().items():
            out.setdefault(t, []).extend(sorted(set(pipes)))
    return {k: sorted(set(v), key=v.index) for k, v in sorted(out.items())}


def _bare(cls: type) -> torch.nn.Module:
    """An instance of `cls` with no weights (nn.Module initialised only): what `matches` needs."""
    inst = cls.__new__(cls)
    torch.nn.Module.__init__(inst)
    return inst


def status_rows() -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """(rows, unaccounted): rows (class, pipelines, status, detail) for every t2i/t2v class."""
    import diffusers

    from headhunter.engine.intercept import DeclaredAdapter
    from headhunter.plugin_system.registry import get_registry

    registry = get_registry()
    rows, missing = [], []
    for cls_name, pipes in t2x_classes().items():
        shown = ", ".join(f"`{p}`" for p in pipes[:3]) + (f" (+{len(pipes) - 3})" if len(pipes) > 3 else "")
        cls = getattr(diffusers, cls_name, None)
        adapters = [] if cls is None else [e for e in registry.entries("adapter") if e.obj.matches(_bare(cls))]
        if adapters:
            best = max(adapters, key=lambda e: getattr(e.obj, "priority", 0))
            declared = issubclass(best.obj, DeclaredAdapter)
            if declared:
                how = "declared; scopes " + ("joint, image" if best.obj.declaration.layout is not None else "joint")
            else:
                how = "copied processor; scopes as docs/engine.md, Adapters"
            tests = DECLARED_TESTS if declared else COPIED_TESTS
            rows.append((cls_name, shown, "guided", f"`{best.name}` ({how}); {tests}"))
        elif cls_name in REFUSED:
            rows.append((cls_name, shown, "refused", REFUSED[cls_name]))
        elif cls_name in NOT_APPLICABLE:
            rows.append((cls_name, shown, "not applicable", NOT_APPLICABLE[cls_name]))
        else:
            missing.append(cls_name)
    return rows, missing


def table() -> str:
    rows, missing = status_rows()
    if missing:
        raise AssertionError(f"classes with a text-to-image/video pipeline that are neither guided, refused nor "
                             f"not applicable: {missing}")
    guided = sum(r[2] == "guided" for r in rows)
    lines = [START,
             f"{guided} of {len(rows)} classes guided ({100 * guided / len(rows):.1f} %), diffusers {DIFFUSERS}; "
             f"generated by tests/test_dit_coverage.py.", "",
             "| transformer class | text-to-image / video pipelines | status | adapter, scopes, tests / reason |",
             "|---|---|---|---|"]
    lines += [f"| `{c}` | {p} | {s} | {d} |" for c, p, s, d in rows]
    lines.append(END)
    return "\n".join(lines)


def _doc_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(re.escape(START) + ".*?" + re.escape(END), text, flags=re.S)
    assert match, f"{DOC} has no {START} ... {END} block"
    return match.group(0)


def test_diffusers_is_the_surveyed_version():
    import diffusers

    if diffusers.__version__ != DIFFUSERS and not os.environ.get("HEADHUNTER_CI"):
        pytest.skip(f"diffusers {diffusers.__version__}: the table is for {DIFFUSERS} (the Makefile pins it; CI fails here)")
    assert diffusers.__version__ == DIFFUSERS, (
        f"the coverage table is for diffusers {DIFFUSERS}; installed {diffusers.__version__} (CI pins it)")


def test_every_class_is_accounted_for_and_the_docs_table_is_current():
    import diffusers

    if diffusers.__version__ != DIFFUSERS:
        pytest.skip(f"diffusers {diffusers.__version__} is not the surveyed {DIFFUSERS}")
    rows, missing = status_rows()
    assert not missing, f"unaccounted classes: {missing}"
    guided = [r for r in rows if r[2] == "guided"]
    assert len(guided) >= 0.9 * len(rows)
    assert _doc_table() == table(), "docs/compatibility.md's coverage table is stale: python tests/test_dit_coverage.py --write"


def test_every_declared_row_runs_in_the_declared_suite():
    from tiny_dits import SPECS

    from headhunter.plugins.dits.declarations import DECLARATIONS

    declared = {c for d in DECLARATIONS for c in d.classes}
    assert declared == set(SPECS)
    rows, _ = status_rows()
    assert {r[0] for r in rows if DECLARED_TESTS in r[3]} == declared


if __name__ == "__main__":
    new = table()
    if "--write" in sys.argv:
        from headhunter.format.files import write_atomic

        text = DOC.read_text(encoding="utf-8")
        if START in text:
            text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: new, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n## Every DiT in diffusers\n\n" + new + "\n"
        write_atomic(DOC, text.encode("utf-8"))
    print(new)
