"""Built-in models and diffusers pipelines by name: what `hunt`, `atlas` and the CLI load a model with."""

from __future__ import annotations

from typing import Any

from headhunter.errors import ModelError
from headhunter.format.loading import looks_like_repo_id
from headhunter.format.preflight import not_on_this_machine
from headhunter.plugin_system.registry import get_registry


def load_model(name: str = "digits") -> Any:
    """Load a model registered by a plugin (the embedded demo model is `digits`), ready for `apply`/`hunt`.

    The pipeline carries its registered name as diffusers' `name_or_path` (set here when the loader left it
    empty), so what is made with it (a found head set's base model, the report, generate.json) names the
    model the way the user does: `digits`, not the pipeline's class name."""
    pipe = get_registry().model_loader(name)()
    if not getattr(pipe, "name_or_path", None) and callable(getattr(pipe, "register_to_config", None)):
        pipe.register_to_config(_name_or_path=name)
    return pipe


def load_pipeline(name_or_path: str, torch_dtype: Any = None) -> Any:
    """A registered model (`digits`) or a diffusers pipeline from a local folder or the local Hub cache.

    Never downloads and never runs remote code: `local_files_only=True`; safetensors weights only.
    `torch_dtype` (diffusers pipelines only) loads the weights in that dtype (e.g. torch.bfloat16 on a GPU).
    """
    registry = get_registry()
    if name_or_path in registry.names("model"):
        return load_model(name_or_path)
    from diffusers import DiffusionPipeline

    from huggingface_hub.errors import LocalEntryNotFoundError

    registered = f"registered models: {', '.join(registry.names('model')) or '(none)'}"
    try:
        extra = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
        pipe = DiffusionPipeline.from_pretrained(name_or_path, local_files_only=True, use_safetensors=True, **extra)
    except LocalEntryNotFoundError:  # the cause is known: it is not on this machine, and headhunter never downloads
        raise ModelError(not_on_this_machine(name_or_path)) from None
    except (OSError, ValueError) as err:
        fetch = f" or fetch it first with `hf download {name_or_path}`" if looks_like_repo_id(name_or_path) else ""
        raise ModelError(
            f"cannot load model {name_or_path!r} offline: {_clip(str(err))}. {registered.capitalize()}; otherwise "
            f"give a local diffusers folder{fetch}"
        ) from None
    return pipe


def _clip(text: str, limit: int = 300) -> str:
    """The first line of a library's message, cut at a word (never mid-word) when longer than `limit`."""
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else "no reason given"
    if len(line) <= limit:
        return line.rstrip(".")
    return line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.") + " ..."
