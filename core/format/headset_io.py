"""Reading and writing head-set files: validated safetensors headers and atomic writes.

The header is parsed and checked by hand before safetensors touches the tensors, so a file that is
not ours (or not safetensors at all, or truncated) fails with a HeadSetError that says what is wrong.
"""

from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from headhunter.format.files import RegularFile, parse_json, read_regular, write_atomic  # noqa: F401 (write_atomic re-exported)
from headhunter._version import __version__
from headhunter.errors import HeadSetError
from headhunter.format.schema import FORMAT_VERSION, HeadSetMetadata, format_major
from headhunter.format.text import safe_line, safe_tree

#: Default file name of a head set in a folder or Hub repository.
WEIGHTS_NAME = "headset.safetensors"
#: Name of the JSON rendering uploaded beside it.
JSON_NAME = "headset.json"
#: Key of the metadata JSON inside the safetensors header.
METADATA_KEY = "headhunter"
#: Largest header we accept (a head set's header is a few kB; this bounds memory on hostile files).
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: Largest tensor data we accept (FLUX.1: 57 sites x 24 heads x 4 bytes = 5.5 kB).
MAX_BODY_BYTES = 16 * 1024 * 1024
#: Largest JSON rendering we read.
MAX_JSON_BYTES = 16 * 1024 * 1024

#: Metadata fields that may hold several lines (every other string is one line: a newline is escaped).
MULTILINE_FIELDS = ("description",)

_VERSION = re.compile(r"^[0-9]{1,6}\.[0-9]{1,6}$")


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata_json: str) -> None:
    """Serialise float32 site tensors with our metadata under the `headhunter` header key, atomically."""
    data = st_save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, metadata={METADATA_KEY: metadata_json})
    write_atomic(path, data)


#: What a head-set source may be, for messages about a file that is not one.
ACCEPTED = ("a head set is a .safetensors file written by headhunter (e.g. runs/demo/headset.safetensors), its .json "
            "rendering, a folder holding headset.safetensors, `preset:NAME` or a Hub repo id 'user/repo'")


def not_safetensors(source: str, first: bytes) -> str:
    """The message for a file whose first bytes are no safetensors header (a CSV, a PNG, text): what it
    starts with and what is accepted, instead of the absurd header size its first 8 bytes would give."""
    printable = "".join(chr(b) if 32 <= b < 127 else "." for b in first[:16])
    suffix = Path(source).suffix
    kind = f"a {suffix} file, " if suffix and suffix != ".safetensors" else ""
    return (f"{source} is not a head set: {kind}not a safetensors file (it starts with {printable!r}, not a "
            f"safetensors header); {ACCEPTED}")


def read_header(data: bytes, source: str) -> dict[str, Any]:
    """Parse and validate a safetensors header from the file's first bytes (or the whole file)."""
    if len(data) < 8:
        raise HeadSetError(f"{source} is not a safetensors file: {len(data)} bytes, too short for a header")
    (size,) = struct.unpack("<Q", data[:8])
    if data[8:9] not in (b"{", b"") and size > len(data) - 8:
        raise HeadSetError(not_safetensors(source, data))
    if size > MAX_HEADER_BYTES:
        raise HeadSetError(f"{source} is not a head-set file: header size {size} bytes exceeds {MAX_HEADER_BYTES}")
    if len(data) < 8 + size:
        raise HeadSetError(f"{source} is truncated: header needs {size} bytes, file has {len(data) - 8}")
    header = parse_json(data[8 : 8 + size], source=source, error=HeadSetError, what="its safetensors header",
                        max_bytes=MAX_HEADER_BYTES)
    if not isinstance(header, dict):
        raise HeadSetError(f"{source} is not a safetensors file: header is {type(header).__name__}, not an object")
    return header


def header_metadata(header: dict[str, Any], source: str) -> str:
    """The `headhunter` metadata JSON string of a parsed header."""
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise HeadSetError(
            f"{source} is a safetensors file but not a head set: no '{METADATA_KEY}' key in its header metadata"
        )
    value = meta[METADATA_KEY]
    if not isinstance(value, str):
        raise HeadSetError(f"{source}: header '{METADATA_KEY}' must be a JSON string, got {type(value).__name__}")
    return value


def read_safetensors(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """Read a head-set file: (metadata JSON, float32 tensors by site). Validates before loading.

    The path must be a regular file (never a FIFO or device: opened without blocking); the 8-byte
    length, then the header, then exactly the tensor bytes the header describes are read, and the file
    size must match them (safetensors' own rule), so memory is bounded by what a head set can hold.
    """
    source = str(path)
    with RegularFile(path, max_bytes=8 + MAX_HEADER_BYTES + MAX_BODY_BYTES, error=HeadSetError,
                     what="head-set file") as handle:
        first = handle.read(8)
        if len(first) < 8:
            raise HeadSetError(f"{source} is not a safetensors file: {len(first)} bytes, too short for a header")
        (size,) = struct.unpack("<Q", first)
        if size > min(MAX_HEADER_BYTES, handle.size - 8):
            start = first + handle.read(16)
            if start[8:9] != b"{":  # no safetensors file starts like this: its header is a JSON object
                raise HeadSetError(not_safetensors(source, start))
            if size <= MAX_HEADER_BYTES:
                raise HeadSetError(f"{source} is truncated: header needs {size} bytes, file has {handle.size - 8}")
        if size > MAX_HEADER_BYTES:
            raise HeadSetError(f"{source} is not a head-set file: header size {size} bytes exceeds {MAX_HEADER_BYTES}")
        if handle.size < 8 + size:
            raise HeadSetError(f"{source} is truncated: header needs {size} bytes, file has {handle.size - 8}")
        head = first + handle.read(size)
        header = read_header(head, source)
        meta_json = header_metadata(header, source)
        body = handle.size - 8 - size
        entries = [(key, entry) for key, entry in header.items() if key != "__metadata__"]
        for key, entry in entries:
            _check_entry(key, entry, body, source)
        used = max((entry["data_offsets"][1] for _, entry in entries), default=0)
        if used != body:
            raise HeadSetError(
                f"{source} is corrupt: its tensors use {used} bytes after the header but the file has {body}"
            )
        data = head + handle.read(body)
    if len(data) != handle.size:
        raise HeadSetError(f"{source} changed while it was read ({len(data)} of {handle.size} bytes)")
    try:
        tensors = st_load(data)
    except SafetensorError as err:
        raise HeadSetError(f"{source} is not a valid safetensors file: {err}") from None
    return meta_json, tensors


def _check_entry(key: str, entry: Any, body: int, source: str) -> None:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise HeadSetError(f"{source}: header entry {key!r} is malformed: {entry!r}")
    if entry["dtype"] != "F32":
        raise HeadSetError(f"{source}: tensor {key!r} has dtype {entry['dtype']}, head sets store F32")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and len(shape) == 1 and _is_int(shape[0]) and shape[0] > 0):
        raise HeadSetError(f"{source}: tensor {key!r} has shape {shape}, head sets store one [num_heads] vector per site")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise HeadSetError(f"{source}: tensor {key!r} has malformed data_offsets {offsets!r}")
    start, end = offsets
    if not 0 <= start <= end <= body or end - start != 4 * shape[0]:
        raise HeadSetError(f"{source} is truncated or corrupt: tensor {key!r} spans bytes {start}..{end} of {body}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_metadata(meta: str | dict[str, Any], source: str) -> HeadSetMetadata:
    """Validate metadata (JSON text, or an already parsed object): refuse a newer major format, warn once
    about unknown keys of a newer minor. Raises HeadSetError naming `source` and the first problem.

    Every string in it (keys too) is made terminal-safe first (`headhunter.format.text.safe_tree`: control,
    escape and bidi characters escaped visibly as `\\x1b`, `\\u202e`; newlines kept only in
    `MULTILINE_FIELDS`), so whatever prints or pushes a head set read from a file or the Hub sees safe text."""
    if isinstance(meta, str):
        raw = parse_json(meta, source=source, error=HeadSetError, what=f"its '{METADATA_KEY}' metadata",
                         max_bytes=MAX_HEADER_BYTES)
    else:
        raw = json.loads(json.dumps(meta))  # a private copy: unknown keys are dropped from it
    if not isinstance(raw, dict):
        raise HeadSetError(f"{source}: '{METADATA_KEY}' metadata must be an object, got {type(raw).__name__}")
    raw = safe_tree(raw, multiline=MULTILINE_FIELDS)  # every string made terminal-safe where it enters
    version = raw.get("format_version")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise HeadSetError(f"{source}: format_version {version!r} is missing or malformed (expected like '1.0')")
    if format_major(version) > format_major(FORMAT_VERSION):
        raise HeadSetError(
            f"{source} uses head-set format {version}; headhunter {__version__} reads formats up to "
            f"{format_major(FORMAT_VERSION)}.x. Upgrade: pip install -U headhunter-guidance"
        )
    unknown = _drop_unknown(HeadSetMetadata, raw, "")
    if unknown:
        warnings.warn(
            f"{source}: ignoring metadata keys unknown to headhunter {__version__}: {', '.join(sorted(unknown))}",
            stacklevel=3,
        )
    try:
        return HeadSetMetadata.model_validate(raw)
    except ValidationError as err:
        raise HeadSetError(f"{source}: metadata does not match the head-set schema: {_first_error(err)}") from None


def read_json_rendering(path: Path) -> Any:
    """The parsed JSON rendering of a head set (regular file, bounded size and depth; see headhunter.format.files)."""
    data = read_regular(path, max_bytes=MAX_JSON_BYTES, error=HeadSetError, what="head-set JSON file")
    return parse_json(data, source=str(path), error=HeadSetError, what="its content", max_bytes=MAX_JSON_BYTES)


def _drop_unknown(model: type[BaseModel], data: dict[str, Any], prefix: str) -> list[str]:
    """Remove keys the schema does not know (recursively into sub-models); return their dotted paths."""
    dropped = []
    for key in list(data):
        if key not in model.model_fields:
            dropped.append(prefix + key)
            del data[key]
            continue
        sub = _submodel(model.model_fields[key].annotation)
        if sub is not None and isinstance(data[key], dict):
            dropped += _drop_unknown(sub, data[key], f"{prefix}{key}.")
    return dropped


def _submodel(annotation: Any) -> type[BaseModel] | None:
    candidates = getattr(annotation, "__args__", (annotation,))
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"{where}: {first['msg']} (got {first.get('input')!r})"[:500]
