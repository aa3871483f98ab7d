"""Perturbation: what a selected head's attention is pulled toward (the target T), as the product T·V.

The paper's unified view (Ahn et al. §4.2, App. C): a perturbed head uses `A' = (1 - u) A + u T`, with A the
head's attention map and T a target map; because `A' V = O + u (T·V - O)` with `O = A V`, a perturbation only
has to compute `T·V` for the selected heads. The engine (headhunter.engine.attention) does the interpolation, the
per-sample/per-head strengths u and the scope (which query rows are perturbed). docs/engine.md explains
how to write one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

from headhunter.errors import PluginError
from headhunter.format.schema import plugin_params

if TYPE_CHECKING:
    from headhunter.contracts.adapter import TokenLayout

#: Which query rows a target is defined for: every row, or image-token rows only (text rows stay unperturbed).
Rows = Literal["all", "image"]


class NoParams(BaseModel):
    """A perturbation without parameters."""

    model_config = ConfigDict(extra="forbid")


class Perturbation(ABC):
    """Base class of perturbation plugins: subclasses set `name`, optionally `Params`, and implement `target`.

    `target(q, k, v, layout)` receives the selected heads' queries, keys and values `[B, H, S, D]` (S = the
    site's whole token sequence, in the model's order; `layout` says where text and image tokens are) and
    returns `T·V` `[B, H, S, D]` (an expanded view is fine). A subclass whose `rows` is `"image"` returns only
    the image rows `[B, H, image_len, D]`; its text rows are never perturbed.
    """

    #: The registered name.
    name: ClassVar[str] = "perturbation"
    #: Strict pydantic parameter model (extra="forbid"); its field descriptions double as CLI help.
    Params: ClassVar[type[BaseModel]] = NoParams
    #: The scopes this perturbation is defined for (`pag_mask` is the identity target's logit mask only).
    scopes: ClassVar[tuple[str, ...]] = ("joint", "image")
    #: Query rows the target covers: "all" or "image".
    rows: Rows = "all"
    #: True when `target` runs a second attention: the engine then restricts it to the selected heads.
    heavy: bool = False
    #: True when `target` reads `layout.grid` (the adapter then makes sure the image grid is known).
    needs_grid: bool = False
    #: True when a row's target depends on that row's own key and value only (identity: T·V = V; drop: 0), so
    #: the call's attention mask cannot change it; declared DiTs refuse masked calls for the others.
    row_local: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:

        self.params = plugin_params(self.Params, PluginError, f"perturbation {self.name!r}", params)

    @abstractmethod
    def target(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """T·V for the selected heads: `[B, H, S, D]` (or `[B, H, image_len, D]` when `rows == "image"`)."""

    def target_matrix(self, q: torch.Tensor, k: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """The explicit target map T `[B, H, S, S]` (rows that `rows` excludes are ignored); tests only.

        Built-ins implement it so the explicit reference checks `target` independently. Without it the
        reference falls back to `target` evaluated in float64.
        """
        raise NotImplementedError

    def strengths(self, u: torch.Tensor) -> torch.Tensor:
        """Map requested strengths to the ones applied (decided once, on the host side of the hot path)."""
        return u

    def spec(self) -> dict[str, Any]:
        """Name and parameters, as stored in a head set's metadata (`PerturbationSpec`)."""
        return {"name": self.name, "params": self.params.model_dump()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"


__all__ = ["NoParams", "Perturbation", "Rows"]
