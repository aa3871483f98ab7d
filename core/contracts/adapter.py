"""Model adapters: recognise a model, list its attention sites in paper order, install perturbing processors.

An adapter plugin teaches headhunter one family of diffusion transformers (built-ins: SD3/SD3.5 and
FLUX.1). It knows where the heads live (`sites`), how tokens are laid out at each site (`TokenLayout`), and
how to wrap the model's own attention processors so that the perturbation is added only where a strength
is non-zero (`make_processor`). The engine that runs inside those processors, and `install(adapter, model,
...)` that puts them in place, are in headhunter.engine.attention, above this contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from headhunter.errors import ModelError
from headhunter.format.sites import Site
from headhunter.plugin_system.registry import unwrap

if TYPE_CHECKING:  # the engine's types, named for readers only: the contract imports nothing above it
    EngineState = Any
    PerturbingProcessor = Any


@dataclass(frozen=True)
class TokenLayout:
    """Where text and image tokens sit in one attention call's sequence.

    `text_first`: FLUX orders `[text | image]`, SD3 `[image | text]`. `grid`: the image tokens' (rows, cols)
    on the latent patch grid of one frame, row-major, when known. `frames`: video frames (latent, after
    temporal patching; 1 for images); the image tokens are then `frames x rows x cols`, frame-major (Wan).
    An image-only site (SD3.5 `attn2`, Wan self-attention) has `text_len == 0`.

    Edit and reference-image pipelines (FLUX Kontext, Qwen-Image Edit, FLUX.2 with `image=`, Wan VACE) put
    the reference images' tokens in the same sequence: `ref_len` of them, right after the target image's
    `image_len` tokens (`ref_first=False`: `[text | target | refs]`) or right before them (`ref_first=True`:
    Wan VACE's reference frames come first). `image_len`, `grid` and `frames` always describe the target
    image (the tokens the pipeline steps on); `image_slice` is the target's tokens, `ref_slice` the
    references'. Scope `image` and blur perturb the target's rows only.
    """

    text_len: int
    image_len: int
    text_first: bool
    grid: tuple[int, int] | None = None
    frames: int = 1
    ref_len: int = 0
    ref_first: bool = False

    @property
    def seq_len(self) -> int:
        return self.text_len + self.image_len + self.ref_len

    @property
    def _visual_start(self) -> int:
        """Where the image part (target and references) starts."""
        return self.text_len if self.text_first else 0

    @property
    def image_slice(self) -> slice:
        """The target image tokens' positions in the sequence."""
        start = self._visual_start + (self.ref_len if self.ref_first else 0)
        return slice(start, start + self.image_len)

    @property
    def ref_slice(self) -> slice:
        """The reference-image tokens' positions in the sequence (empty without references)."""
        start = self._visual_start + (0 if self.ref_first else self.image_len)
        return slice(start, start + self.ref_len)

    @property
    def text_slice(self) -> slice:
        """The text tokens' positions in the sequence (empty at an image-only site)."""
        visual = self.image_len + self.ref_len
        return slice(0, self.text_len) if self.text_first else slice(visual, visual + self.text_len)


class ModelAdapter(ABC):
    """Base class of model adapter plugins (registered with `register_adapters`).

    Subclasses set `name` and `architecture` (the family name stored in head sets, e.g. "sd3") and
    implement `matches`, `sites` and `make_processor`; `observe` records per-forward facts (text length,
    image grid) that the attention processors are not told. `priority` settles overlaps: when several
    adapters recognise a model the highest priority wins, and a tie is an error naming them
    (`Registry.adapter_for`); an adapter for a subclass of a model a built-in handles sets it above 0.
    """

    name: ClassVar[str] = "adapter"
    architecture: ClassVar[str] = "unknown"
    priority: ClassVar[int] = 0
    #: Per-row (batch-first) inputs of every declared block, by keyword: what is fanned out when rows that
    #: were computed once split (docs/engine.md, "Rows computed once"). Used only if `blocks` declares blocks.
    row_inputs: ClassVar[tuple[str, ...]] = ("hidden_states", "encoder_hidden_states", "temb")
    #: What a declared block returns, in order, as names of its inputs: a block the sequential path skips
    #: returns these inputs unchanged (diffusers' MMDiT blocks return `(encoder_hidden_states, hidden_states)`).
    #: A mapping {block-name prefix: tuple} instead declares it per block kind (FLUX.2: double-stream blocks
    #: return both streams, single-stream blocks `hidden_states`); the longest matching prefix wins.
    block_outputs: ClassVar[tuple[str, ...] | dict[str, tuple[str, ...]]] = ("encoder_hidden_states", "hidden_states")
    #: Whether the family's edit pipelines append reference-image tokens after the target's and step on the
    #: prediction sliced back to the target, `noise_pred[:, :latents.size(1)]` (FLUX Kontext, Qwen-Image Edit,
    #: FLUX.2 with `image=`): the guidance term is then sliced the same way before it is added
    #: (docs/guidance.md, "Edit and reference-image pipelines"). False: a shape mismatch is an error.
    trailing_references: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def matches(cls, model: Any) -> bool:
        """True if this adapter handles `model` (a pipeline with `.transformer` or a bare transformer; a
        `torch.compile` wrapper is looked through: use `headhunter.plugin_system.registry.model_of(model)`)."""

    def transformer(self, model: Any) -> nn.Module:
        """The transformer inside `model` (the model itself when it is one), looking through a
        `torch.compile(module)` wrapper (headhunter.plugin_system.registry.unwrap)."""
        inner = getattr(model, "transformer", None)
        if isinstance(inner, nn.Module):
            return unwrap(inner)
        if isinstance(model, nn.Module):
            return unwrap(model)
        raise ModelError(f"{type(model).__name__} is neither a transformer nor a pipeline with a .transformer")

    def experts(self, model: Any) -> dict[str, nn.Module]:
        """Every transformer a pipeline of this family runs, by site-name prefix: `{"": transformer}` by default.
        A pipeline with several experts (Wan 2.2 A14B: `transformer` for high noise, `transformer_2` for low)
        names the second one's sites with a prefix (`"transformer_2."`); guidance hooks every expert."""
        return {"": self.transformer(model)}

    def site_module(self, model: Any, name: str) -> nn.Module:
        """The attention module of site `name`: inside the expert whose prefix it carries (`experts`)."""
        experts = self.experts(model)
        for prefix in sorted(experts, key=len, reverse=True):
            if prefix and name.startswith(prefix):
                return experts[prefix].get_submodule(name[len(prefix):])
        return experts[""].get_submodule(name)

    @abstractmethod
    def sites(self, model: Any) -> list[Site]:
        """The model's attention sites in paper order (the position is the paper's layer index)."""

    def blocks(self, model: Any) -> list[str]:
        """The transformer's blocks in execution order, as module names inside the transformer (e.g.
        `transformer_blocks.0`, ...); every site lies in exactly one of them.

        Declaring them lets the engine compute rows that are equal up to their first perturbed block once
        (docs/engine.md, "Rows computed once"; docs/plugins.md shows how to opt in). The default, `[]`,
        keeps the full computation of every row: always correct, never faster.
        """
        return []

    @abstractmethod
    def make_processor(self, site: Site, module: nn.Module, state: EngineState) -> PerturbingProcessor:
        """A perturbing processor for `module` (the site's attention module), wrapping its current processor.

        Raise ModelError naming the site and the processor class when the processor is not one this
        adapter can reproduce exactly.
        """

    def original_processor(self, site: Site, module: nn.Module, expected: type, hint: str) -> Any:
        """`module.processor`, checked to compute exactly like `expected` (same `__call__`; a subclass that does
        not override it passes). A perturbing processor reproduces the original's computation line for line,
        so any other processor (fused QKV, IP adapters, KV caches) is refused: ModelError naming the site, the
        processor found, and `hint` (what the user can do, e.g. "put it back")."""
        original = module.processor
        if type(original).__call__ is not expected.__call__:
            raise ModelError(f"{site.name} runs {type(original).__name__}; the {self.name} adapter reproduces "
                             f"{expected.__name__} only ({hint})")
        return original

    def prepare(self, state: EngineState, transformer: nn.Module) -> None:
        """Called once at install time, before `make_processor`: record per-model facts on `state.cache`."""

    def observe(self, state: EngineState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Called before every transformer forward with its arguments: record layout facts on `state`.

        Must not synchronise host and device (read shapes, not values). Default: nothing.
        """

    def layout_summary(self, model: Any, height: int | None = None, width: int | None = None) -> list[str]:
        """Human-readable lines on the token layout (order, image grid, text length) for `headhunter inspect`."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, architecture={self.architecture!r})"


__all__ = ["ModelAdapter", "TokenLayout"]
