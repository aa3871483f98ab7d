"""Entry points that resolve a name to a thing: head sets (file, preset, Hub) and built-in models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import HeadSetError
from .headset import HeadSet, load_headset_file
from .registry import get_registry

PRESET_PREFIX = "preset:"


def load_headset(
    source: str | Path,
    weight_name: str | None = None,
    revision: str | None = None,
    **hub_kwargs: Any,
) -> HeadSet:
    """Load a head set from a local file/folder, a shipped preset (`preset:NAME`) or a Hub repo (`user/repo`).

    Local paths win: an existing path is always read as a file. The Hub arguments follow diffusers'
    `load_lora_weights` (explicit `weight_name`, else the single head-set file in the repo); `hub_kwargs`
    (`cache_dir`, `token`, `local_files_only`) go unchanged to `headhunter.hub.download_headset`, the one
    place that lists them (an unknown keyword is a TypeError there).
    """
    text = str(source)
    if Path(text).exists():
        return load_headset_file(text)
    if text.startswith(PRESET_PREFIX):
        from .presets import load_preset

        return load_preset(text[len(PRESET_PREFIX) :])
    if _looks_like_repo_id(text):
        from .hub import load_from_hub

        return load_from_hub(text, weight_name=weight_name, revision=revision, **hub_kwargs)
    raise HeadSetError(
        f"head set {text!r} not found: not an existing file or folder, not 'preset:NAME' "
        "(see `headhunter presets`), not a Hub repo id 'user/repo'"
    )


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.endswith((".safetensors", ".json"))


def load_model(name: str = "digits") -> Any:
    """Load a model registered by a plugin (the embedded demo model is `digits`), ready for `apply`/`hunt`."""
    return get_registry().model_loader(name)()


def load_pipeline(name_or_path: str, torch_dtype: Any = None) -> Any:
    """A registered model (`digits`) or a diffusers pipeline from a local folder or the local Hub cache.

    Never downloads and never runs remote code: `local_files_only=True`; safetensors weights only.
    `torch_dtype` (diffusers pipelines only) loads the weights in that dtype (e.g. torch.bfloat16 on a GPU).
    """
    from .errors import ModelError

    registry = get_registry()
    if name_or_path in registry.names("model"):
        return registry.model_loader(name_or_path)()
    from diffusers import DiffusionPipeline

    try:
        extra = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
        pipe = DiffusionPipeline.from_pretrained(name_or_path, local_files_only=True, use_safetensors=True, **extra)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"cannot load model {name_or_path!r} offline: {str(err).splitlines()[0][:200]}. Registered models: "
            f"{', '.join(registry.names('model')) or '(none)'}; otherwise give a local diffusers folder or fetch "
            f"it first with `hf download {name_or_path}`"
        ) from None
    return pipe
