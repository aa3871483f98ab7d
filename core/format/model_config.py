"""Model configs from outside (a diffusers `config.json`), checked with bounds before anything is built.

A transformer is built from its config (on the meta device by `headhunter inspect`, for real by a model
loader), and every count in the config is a loop: a `config.json` claiming 100,000 layers ran for minutes
with memory rising. `check_model_config` bounds the config first, so a hostile or damaged one is a
ModelError naming the key, the value and what is allowed, in microseconds:

- layer and block counts (`num_layers`, `num_single_layers`, `num_blocks`, `depth`, any `*_layers` /
  `*_blocks` key): null or an integer in `[0, MAX_LAYERS]`, and all of them together at most `MAX_LAYERS`
  (published DiTs have at most 60: Qwen-Image; FLUX.1 19 + 38); a list there is a list of layer indices
  (SD3.5's `dual_attention_layers`);
- head counts (any key holding `heads`): null or an integer in `[1, MAX_HEADS]`
  (headhunter.format.sites.MAX_HEADS), or a list of such per-block counts;
- every other integer: `[-MAX_INT, MAX_INT]`; sizes and dimensions (`*_size`, `*_dim`, `*channels*`,
  `*_len`): at most `MAX_DIM`;
- lists at most `MAX_LIST` items, strings at most `MAX_TEXT` characters, booleans where a count is asked
  are refused (JSON `true` is not a number of layers).
The bounded reader (`headhunter.format.files.read_json`) has already refused non-objects, deep nesting,
huge files and non-finite numbers.
"""

from __future__ import annotations

import os
import re
from typing import Any

from headhunter.errors import ModelError
from headhunter.format.files import read_json
from headhunter.format.sites import MAX_HEADS

#: Most transformer blocks a config may declare, all layer/block counts together.
MAX_LAYERS = 512
#: Largest size or dimension (hidden size, channels, sample size, sequence length).
MAX_DIM = 65_536
#: Largest magnitude of any other integer in a config.
MAX_INT = 2**31
#: Most items in one list (e.g. `block_out_channels`, `axes_dims_rope`).
MAX_LIST = 256
#: Longest string (class names, activation names, ...).
MAX_TEXT = 1024
#: Largest config file read.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: Deepest nesting of a config (diffusers configs are 2-3 deep; a pipeline's model_config.json 3).
MAX_CONFIG_DEPTH = 16

_LAYERS = re.compile(r"(^|_)(layers|blocks|depth)$|^num_.*(layers|blocks)")
_HEADS = re.compile(r"heads")
_DIMS = re.compile(r"(_size|_dim|_dims|channels|_len|_length)$|^(sample_size|patch_size|in_channels|out_channels)$")


def check_model_config(config: Any, source: str) -> dict[str, Any]:
    """`config` (a parsed diffusers config) if its counts and sizes are within the bounds above, else a
    ModelError naming `source`, the key and the allowed range. Nested objects are checked key by key."""
    if not isinstance(config, dict):
        raise ModelError(f"config {source} must be a JSON object, not {type(config).__name__}")
    total = _check(config, source, "", "", False)
    if total > MAX_LAYERS:
        raise ModelError(f"config {source} declares {total} transformer layers/blocks in all; at most {MAX_LAYERS} "
                         "are allowed (published models have at most 60)")
    return config


def _check(value: Any, source: str, where: str, key: str, in_list: bool) -> int:
    """Check one value found under `key`; returns the layer/block count it declares (nested objects summed).

    A count key (layers/blocks, heads) holds null, a whole number in its range, or a list: of layer indices
    (layers) or of per-block head counts (heads, each in range). Items of a list are checked under the list's key.
    """
    low = key.lower()
    layers, heads = not in_list and bool(_LAYERS.search(low)), bool(_HEADS.search(low))
    if isinstance(value, dict):
        return sum(_check(item, source, f"{where}.{k}" if where else str(k), str(k), False) for k, item in value.items())
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise ModelError(f"config {source}: {where} is a list of {len(value)} items; at most {MAX_LIST} are allowed")
        for index, item in enumerate(value):
            _check(item, source, f"{where}[{index}]", key, True)
        return 0
    if layers:
        return _count(value, source, where, 0, MAX_LAYERS, "layers/blocks")
    if heads and (in_list or value is not None):
        _count(value, source, where, 1, MAX_HEADS, "heads")
        return 0
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ModelError(f"config {source}: {where} is a string of {len(value)} characters; at most {MAX_TEXT}")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        high = MAX_DIM if _DIMS.search(low) else MAX_INT
        if not -MAX_INT <= value <= high:
            raise ModelError(f"config {source}: {where}={value} is out of range; allowed: [{-MAX_INT}, {high}]")
    elif isinstance(value, float) and _DIMS.search(low) and not -MAX_INT <= value <= MAX_DIM:
        raise ModelError(f"config {source}: {where}={value!r} is out of range; allowed: at most {MAX_DIM}")
    return 0


def _count(value: Any, source: str, where: str, low: int, high: int, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"config {source}: {where}={value!r} must be a whole number of {what} in [{low}, {high}], "
                         f"not a {type(value).__name__}")
    if not low <= value <= high:
        raise ModelError(f"config {source}: {where}={value} {what} is out of range; allowed: [{low}, {high}]")
    return value


def read_model_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A model config file through the bounded reader (regular file, at most MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH
    deep, finite numbers) and `check_model_config`; ModelError naming the file otherwise."""
    config = read_json(path, max_bytes=MAX_CONFIG_BYTES, error=ModelError, what="config file", max_depth=MAX_CONFIG_DEPTH)
    if not isinstance(config, dict):
        raise ModelError(f"config file {path} must hold a JSON object, not {type(config).__name__}")
    return check_model_config(config, str(path))


__all__ = ["MAX_DIM", "MAX_HEADS", "MAX_LAYERS", "check_model_config", "read_model_config"]
