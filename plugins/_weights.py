"""Weights of the Hub-backed objectives: where files come from, how state dicts are read, the process cache,
and `HubObjective`, the base class that validates parameters and loads weights when an objective is created.

Files come from the Hugging Face Hub (or a local folder given in place of a repo id) through
huggingface_hub and safetensors (`torch.load(weights_only=True)` only for a plain `.pth` state dict);
never `trust_remote_code`. Each model loads once per process (`cached`), when the objective is created,
so a missing download fails at once with the command that fetches it (`missing_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, ClassVar

import pydantic
import torch

from headhunter.objective.composite import format_leaf
from headhunter.errors import ObjectiveError
from headhunter.contracts.objective import Objective
from headhunter.format.schema import plugin_params

_CACHE: dict[tuple[Any, ...], Any] = {}


# ---------------------------------------------------------------- fetching

#: `--include` patterns that fetch only a repo's configs, tokenizer and preprocessing (no weights).
SMALL_FILES = '--include "*.json" "*.txt"'


def fetch_command(repo: str, include: str = "") -> str:
    return f"hf download {repo}" + (f" {include}" if include else "")


def missing_weights(repo: str, what: str, err: BaseException | str, include: str = "") -> ObjectiveError:
    """The error for files that are neither cached nor downloadable: names the repo and the fetch command."""
    if Path(repo).is_dir():
        return ObjectiveError(f"cannot load {what} from local folder {repo!r}: {err}")
    reason = err if isinstance(err, str) else type(err).__name__
    command = fetch_command(repo, include)
    return ObjectiveError(
        f"cannot load {what} from the Hugging Face Hub repo {repo!r}: not in the local cache and not "
        f"downloadable here ({reason}). Fetch it once while online with `{command}` (older huggingface_hub: "
        f"`huggingface-cli download {repo}{' ' + include if include else ''}`), or unset HF_HUB_OFFLINE to let it download."
    )


def hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, ValueError, HfHubHTTPError)


def resolve_file(repo: str, filename: str, revision: str | None = None, include: str = "") -> Path:
    """Path of `filename` in a local folder `repo`, or in the Hub repo `repo` (cache first, then download)."""
    if Path(repo).is_dir():
        path = Path(repo) / filename
        if not path.is_file():
            raise missing_weights(repo, filename, f"{path} does not exist")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except hub_errors() as err:
        raise missing_weights(repo, filename, err, include) from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a plain state dict read with `torch.load(weights_only=True)`."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle refusing a non-tensor object: not a plain state dict
        raise ObjectiveError(f"{path} is not a plain state dict loadable with weights_only=True: {err}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ObjectiveError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def cached(key: tuple[Any, ...], load: Callable[[], Any]) -> Any:
    """`load()` once per process for each key."""
    if key not in _CACHE:
        _CACHE[key] = load()
    return _CACHE[key]


class _Params(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class HubObjective(Objective):
    """Base of the weight-backed objectives: validated params, canonical `str()` of non-default params."""

    Params: ClassVar[type[_Params]]

    def __init__(self, **params: Any) -> None:
        self.params = plugin_params(self.Params, ObjectiveError, f"objective {self.name!r}", params)
        try:
            self.load()
        except ObjectiveError as err:
            commands = [fetch_command(repo, include) for repo, include in self.downloads() if not Path(repo).is_dir()]
            if "hf download" not in str(err) or len(commands) < 2:
                raise
            raise ObjectiveError(f"{err} Everything {self.name!r} needs: " + "; ".join(f"`{c}`" for c in commands)) from None

    def load(self) -> None:
        """Load (or fetch from the process cache) the weights; raises ObjectiveError naming the repo."""

    def downloads(self) -> list[tuple[str, str]]:
        """(repo, `--include` patterns or "") for every repo this objective reads."""
        return []

    def __str__(self) -> str:
        return format_leaf(self.name, self.params.model_dump(exclude_defaults=True))
