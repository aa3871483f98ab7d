"""Declared DiTs: a model family taught to headhunter as data (sites, heads, token layout), not as a copied processor.

A `DiTDeclaration` says which transformer classes it covers, which of their modules are attention sites (module
name globs, in paper order), how the rows of one attention call are laid out (only needed for the `image` and
`pag_mask` scopes, finite-sigma blur, or sites whose queries are a part of the keys), and which per-forward
facts (text length, image grid) the layout needs. The engine (headhunter.engine.intercept) turns it into a
`ModelAdapter` whose processors wrap the model's own processor objects and intercept their attention call, so
the processor's code (projections, qk-norm, RoPE, masks, the user's attention backend) runs as shipped.

Nothing here imports torch or diffusers: a plugin lists its declarations cheaply (the CLI start-up), the engine
imports them when a model is installed. docs/plugins.md shows how to declare a family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

#: Row labels of a `CallLayout`: `text` and `image` rows are what the scopes select; `other` rows (a causal
#: prefix that the family never perturbs, padding, registers, reference tokens) keep the model's output.
RowLabel = Literal["text", "image", "other"]
Batch = Literal["same", "repeat", "per_call"]


@dataclass(frozen=True)
class SiteDecl:
    """One kind of attention site: a module-name glob inside the transformer (fnmatch, e.g.
    `single_transformer_blocks.*.attn`) and its site kind (`joint` | `single` | `image`).

    `calls`: which attention calls of one processor call are perturbed: `"self"` (calls whose queries and keys
    have the same length; a call with longer keys is cross-attention and runs stock unless the layout gives a
    `key_start`), or a predicate `(q_len, k_len, index) -> bool` (index: the call's position within the
    processor call). `batch`: how the call's batch maps to the transformer's samples: `"same"`; `"repeat"`
    (call batch = samples x r, sample-major: Latte's `(b f)` folding); `"per_call"` (the processor loops over
    samples, call j is sample j with batch 1: Mochi).
    """

    pattern: str
    kind: Literal["joint", "single", "image"] = "joint"
    calls: str | Callable[[int, int, int], bool] = "self"
    batch: Batch = "same"

    def __post_init__(self) -> None:
        if self.kind not in ("joint", "single", "image"):
            raise ValueError(f"site kind {self.kind!r} of {self.pattern!r}: allowed joint, single, image")
        if self.batch not in ("same", "repeat", "per_call"):
            raise ValueError(f"batch {self.batch!r} of {self.pattern!r}: allowed same, repeat, per_call")
        if not (self.calls == "self" or callable(self.calls)):
            raise ValueError(f"calls {self.calls!r} of {self.pattern!r}: allowed 'self' or a predicate")


@dataclass(frozen=True)
class CallLayout:
    """The rows of one attention call: `segments` ((label, length), ...) in sequence order, labels `text`,
    `image`, `other` (see RowLabel): at most one text and one image segment (`[text | image]`, `[image | text]`
    or image only); `other` segments may lie anywhere (outside the two, or between them: padding).

    `key_start`: query row i is key row `key_start + i` (sites whose queries are a part of the keys, e.g. image
    queries over `[text | image]` keys); None: the keys are the query rows. `grid` (rows, cols) and `frames`:
    the generated image's latent grid, when known (blur).
    """

    segments: tuple[tuple[str, int], ...]
    key_start: int | None = None
    grid: tuple[int, int] | None = None
    frames: int = 1

    @property
    def q_len(self) -> int:
        return sum(n for _, n in self.segments)


@dataclass
class AttentionCall:
    """What a layout function is told about one attention call: the site's name and kind, the processor call's
    arguments by name (`attn`, `hidden_states`, `encoder_hidden_states`, ...), the forward's facts
    (`DiTDeclaration.facts`), the query and key lengths, and the call's index within the processor call."""

    site: str
    kind: str
    args: dict[str, Any]
    facts: dict[str, Any]
    q_len: int
    k_len: int
    index: int


@dataclass(frozen=True)
class DiTDeclaration:
    """A DiT family, declared.

    name: the adapter's name and the architecture stored in head sets (e.g. "chroma").
    classes: the transformer class names it covers (exact `type(transformer).__name__`).
    sites: the site globs in paper order (sites are numbered pattern by pattern, module order within one).
    facts: transformer forward arguments (bound to their names; `"__config__"`: the transformer's config) ->
      dict of host facts for the layout, e.g. `{"text_len": encoder_hidden_states.shape[1]}`; shapes and host
      ints only (no device read per call). `text_len` and `grid` also go to the engine state.
    layout: AttentionCall -> CallLayout, or None for a call that runs stock. Without it only the `joint` scope
      with a whole-row target (softpag, identity, drop, uniform) is available on self-attention calls.
    layout_always: also consult `layout` in the joint scope (families with rows that are never perturbed).
    heads_attr: the attention module's attributes that may hold its (query) head count.
    layout_lines: what `headhunter inspect` prints about the token layout.
    """

    name: str
    classes: tuple[str, ...]
    sites: Sequence[SiteDecl]
    facts: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    layout: Callable[[AttentionCall], CallLayout | None] | None = None
    layout_always: bool = False
    heads_attr: tuple[str, ...] = ("heads", "num_heads", "num_attention_heads")
    description: str = ""
    layout_lines: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError(f"declaration {self.name!r} declares no sites")
        if not self.classes:
            raise ValueError(f"declaration {self.name!r} names no transformer class")


# ---- layout helpers shared by families ------------------------------------------------------------------------

def length(x: Any, dim: int = 1) -> int | None:
    """`x.shape[dim]` as an int, None for None (a shape read: no device sync)."""
    return None if x is None else int(x.shape[dim])


def text_image(text_len: int, image_len: int, *, text_first: bool, **kw: Any) -> CallLayout:
    """`[text | image]` (text_first) or `[image | text]`; empty segments dropped."""
    segs = (("text", text_len), ("image", image_len)) if text_first else (("image", image_len), ("text", text_len))
    return CallLayout(tuple(s for s in segs if s[1] > 0), **kw)


def image_only(call: AttentionCall) -> CallLayout:
    """Every query row is an image (or video) token: self-attention sites of cross-attention DiTs."""
    return CallLayout((("image", call.q_len),))


def text_from_facts(key: str = "encoder_hidden_states") -> Callable[[dict[str, Any]], dict[str, Any]]:
    """facts: `{"text_len": <key>.shape[1]}` from the transformer's forward arguments."""

    def facts(bound: dict[str, Any]) -> dict[str, Any]:
        return {"text_len": length(bound.get(key))}

    return facts


def double_single(text_first: bool = True, text_arg: str = "encoder_hidden_states") -> Callable[[AttentionCall], CallLayout]:
    """MMDiT double/single-stream layout: a double-stream call gets the text as `text_arg` (its length is the
    text length); a single-stream call gets the concatenated sequence and uses the forward's `text_len` fact."""

    def layout(call: AttentionCall) -> CallLayout:
        text = length(call.args.get(text_arg))
        if text is None:
            text = call.facts.get("text_len")
            if text is None:
                raise KeyError("text_len (call the transformer itself: its forward records it)")
        return text_image(text, call.q_len - text, text_first=text_first)

    return layout


__all__ = ["AttentionCall", "CallLayout", "DiTDeclaration", "SiteDecl", "double_single", "image_only", "length",
           "text_from_facts", "text_image"]
