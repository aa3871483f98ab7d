"""Checkpoints: the one `state.json` mechanism that the search and the atlas both resume from.

A checkpoint is a JSON object in `out_dir/state.json` holding the run's settings (a resume is refused,
naming the first field that differs, when they are not equal), the library version, and the run's own
record (the search: per-unit per-pair scores and finished batches; the atlas: per-unit values, finished
batches and timing). It is read as a file from outside (a regular file of bounded size, bounded-depth finite
JSON, then the run's pydantic schema) before it is trusted, written atomically after every batch, and under
torch.distributed only rank 0 reads or writes it: the content is broadcast to every rank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from headhunter.errors import SearchError
from headhunter.format.files import read_json, write_atomic
from headhunter.search.distributed import Context

STATE_NAME = "state.json"
#: Largest state.json read.
MAX_STATE_BYTES = 512 * 1024 * 1024
FIX = "delete it, or pass resume=False (--no-resume) to start over"


class Checkpoint:
    """A run's record in out_dir/state.json. Subclasses name the run (`what`), give the record's `Schema`
    (a strict pydantic model of the whole file), the `fresh` record, and any `check` beyond the schema."""

    what: ClassVar[str] = "run"
    Schema: ClassVar[type[BaseModel]]

    def __init__(self, path: Path | None, settings: BaseModel, data: dict[str, Any]) -> None:
        #: Where rank 0 writes; None on other ranks and for a run without an out dir (nothing is written).
        self.path, self.settings, self.data = path, settings, data

    @classmethod
    def fresh(cls, settings: BaseModel) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @classmethod
    def check(cls, data: dict[str, Any], path: Path) -> None:
        """Checks the schema cannot express; SearchError naming the file and the problem."""

    @classmethod
    def open(cls, out_dir: Path | None, settings: BaseModel, resume: bool, ctx: Context | None = None) -> Checkpoint:
        """Rank 0 reads (with `resume`) or starts the checkpoint and hands its content to every rank; only
        rank 0 keeps a path, so only rank 0 ever writes. SearchError if it was made with other settings."""
        ctx = ctx or Context()
        fresh = cls.fresh(settings)
        if out_dir is None:
            return cls(None, settings, fresh)
        path = out_dir / STATE_NAME
        data: Any = None
        if ctx.is_main:
            try:
                if (path.exists() or path.is_symlink()) and resume:
                    data = cls.read(path)
                    require_same_settings(data["settings"], settings.model_dump(mode="json"), out_dir, cls.what)
                else:
                    out_dir.mkdir(parents=True, exist_ok=True)
                    data = fresh
                    write_atomic(path, json.dumps(data).encode())
                    cls.started(out_dir)
            except SearchError as exc:
                data = exc
        data = ctx.broadcast(data)
        if isinstance(data, SearchError):
            raise data
        return cls(path if ctx.is_main else None, settings, data)

    @classmethod
    def started(cls, out_dir: Path) -> None:
        """Called when a fresh checkpoint replaces an old one: remove what belonged to the old run."""

    @classmethod
    def read(cls, path: Path) -> dict[str, Any]:
        """Read and check a checkpoint before trusting it: a regular file of bounded size, bounded-depth finite
        JSON, its schema, then `check`. SearchError naming the file and the first problem, with the way out."""
        try:
            raw = read_json(path, max_bytes=MAX_STATE_BYTES, error=SearchError, what=f"{cls.what} checkpoint")
        except SearchError as err:
            raise SearchError(f"{err}; {FIX}") from None
        try:
            data = cls.Schema.model_validate(raw).model_dump()
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise SearchError(f"{cls.what} checkpoint {path} is damaged: {where}: {first['msg']}; {FIX}") from None
        cls.check(data, path)
        return data

    def save(self) -> None:
        if self.path is not None:
            write_atomic(self.path, json.dumps(self.data).encode())


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as {"guidance.scale": 3.0, ...}, so a mismatch names the one field that differs."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and key in ("guidance", "perturbation"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def require_same_settings(saved: dict[str, Any], wanted: dict[str, Any], out_dir: Path, what: str = "run") -> None:
    """SearchError naming the first setting that differs between a checkpoint and this run."""
    saved, wanted = _flat(saved), _flat(wanted)
    for key in sorted(set(saved) | set(wanted)):
        if saved.get(key) != wanted.get(key):
            shown = lambda v: (json.dumps(v)[:80] + ("..." if len(json.dumps(v)) > 80 else ""))  # noqa: E731
            raise SearchError(
                f"{out_dir} holds {'an' if what[0] in 'aeiou' else 'a'} {what} with {key}={shown(saved.get(key))}, "
                f"but this one has {key}={shown(wanted.get(key))}; use another out_dir, or resume=False "
                "(--no-resume) to start over"
            )
