"""Built-in models and diffusers pipelines by name: what `hunt`, `atlas` and the CLI load a model with."""

from __future__ import annotations

from typing import Any

from headhunter.errors import ModelError
from headhunter.plugin_system.registry import get_registry


def load_model(name: str = "digits") -> Any:
    """Load a model registered by a plugin (the embedded demo model is `digits`), ready for `apply`/`hunt`."""
    return get_registry().model_loader(name)()


def load_pipeline(name_or_path: str, torch_dtype: Any = None) -> Any:
    """A registered model (`digits`) or a diffusers pipeline from a local folder or the local Hub cache.

    Never downloads and never runs remote code: `local_files_only=True`; safetensors weights only.
    `torch_dtype` (diffusers pipelines only) loads the weights in that dtype (e.g. torch.bfloat16 on a GPU).
    """
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
