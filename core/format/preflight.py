"""The checks that run before a model loads: prompts it accepts, head sets that fit it.

Loading a model takes seconds (the demo) to minutes (SD3 from disk); a wrong prompt or a head set made for
another model is known without it. A model named by a registered name or Hub id has a `KnownModel` in
the registry (the `register_base_models` hook: architecture, sites in paper order, and for a closed
vocabulary the prompts it accepts), and each check here compares against that table, reading no weights.
A model the registry does not describe (a local folder, an unlisted fine-tune) passes these checks; the
same checks then run when the model is loaded (`HeadSet.validate_against` in `apply` and `compile_plan`,
the pipeline's own prompt check), with the same messages.

Used by `headhunter generate`, `hunt` and `atlas` (CLI and Python API) before they load anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from headhunter.errors import ModelError
from headhunter.plugin_system.registry import get_registry


def describe_prompt(prompt: str) -> str:
    """A prompt as a person reads it: `'3'`, or `"" (unconditional)` for the empty prompt."""
    return '"" (unconditional)' if prompt == "" else repr(prompt)


def check_prompts(model: str, prompts: Iterable[str] | None, known: Any = None) -> None:
    """ModelError naming the first prompt `model` does not accept, and the ones it does, when the registry
    lists the model's prompts (the digits model: '0'..'9' and ''); nothing otherwise."""
    known = known if known is not None else get_registry().known_model(model)
    allowed = getattr(known, "prompts", None)
    if allowed is None or prompts is None:
        return
    for prompt in prompts:
        if prompt not in allowed:
            shown = ", ".join(describe_prompt(p) for p in allowed)
            raise ModelError(f"prompt {prompt!r} is not one the {model} model accepts; allowed: {shown}")


def check_headsets(model: str, headsets: Sequence[Any], known: Any = None) -> None:
    """HeadSetError for the first head set that does not fit `model` as the registry describes it
    (architecture, base model, sites and head counts), e.g. "head set 'sd3-dark-lighting' is for
    stabilityai/stable-diffusion-3-medium-diffusers; the model is digits (...)"; nothing when the registry
    does not describe `model`."""
    known = known if known is not None else get_registry().known_model(model)
    if known is None:
        return
    for headset in headsets:
        headset.validate_against(known.sites, known.architecture, base_model=model)


def not_on_this_machine(model: str) -> str:
    """The message for a diffusers model that is neither a local folder nor in the local Hugging Face cache
    (headhunter never downloads a model); `headhunter.load_pipeline` gives the same one."""
    registered = ", ".join(get_registry().names("model")) or "(none)"
    return (f"model {model!r} is not on this machine: headhunter loads a diffusers model only from a local folder or "
            f"the local Hugging Face cache, never downloading it. Fetch it first with `hf download {model}`, or give "
            f"a local folder (registered models: {registered})")


def check_model_available(model: str) -> None:
    """ModelError, before anything heavy loads, for a model name that cannot be loaded here: not a registered
    model, not an existing path, and not a Hub repo id whose pipeline (model_index.json) is in the local
    Hugging Face cache."""
    from pathlib import Path

    from headhunter.format.loading import looks_like_repo_id

    if model in get_registry().names("model") or Path(model).exists():
        return
    registered = ", ".join(get_registry().names("model")) or "(none)"
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1:  # meant as a path
        raise ModelError(f"model folder {model} does not exist; give a local diffusers folder, a Hub repo id "
                         f"'org/name' in the local cache, or a registered model ({registered})")
    if not looks_like_repo_id(model):
        raise ModelError(f"model {model!r} not found: not a registered model ({registered}), not an existing folder, "
                         "and not a Hub repo id 'org/name'")
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "model_index.json"), str):
        raise ModelError(not_on_this_machine(model))


def check_before_loading(model: Any, *, prompts: Iterable[str] | None = None, headsets: Sequence[Any] = ()) -> None:
    """Every check that needs only the model's name: that it can be loaded here, its prompts and the head
    sets' fit. `model` that is not a name (a pipeline object) is checked after loading instead, by the same
    rules."""
    if not isinstance(model, str):
        return
    check_model_available(model)
    known = get_registry().known_model(model)
    if known is None:
        return
    check_prompts(model, list(prompts) if prompts is not None else None, known)
    check_headsets(model, headsets, known)


__all__ = ["check_before_loading", "check_headsets", "check_model_available", "check_prompts", "describe_prompt",
           "not_on_this_machine"]
