"""Strengths as the engine reads them: per-site `[B, H]` tensors built once on the host from head sets.

`strength_map` turns validated dense rows (one `{site: float32 [H]}` per row group) into a `StrengthMap`;
`batch_strengths` validates head sets first. Which samples and heads are non-zero is recorded here, on the
host, so the hot path never has to read a device tensor to find out (docs/engine.md, the hot-path rule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from headhunter.contracts.perturbation import Perturbation
from headhunter.errors import HeadSetError, PluginError
from headhunter.format.headset import HeadSet
from headhunter.format.schema import SCOPES
from headhunter.format.sites import Site


class SiteStrength(NamedTuple):
    """One site's strengths as the hot path reads them: u [B, H] and, when known on the host, the samples
    and heads with a non-zero strength (device index tensors; None = all) with `u_sub` = u[samples][:, heads].
    Heavy targets (a second attention) run on that sub-batch only."""

    u: torch.Tensor
    samples: torch.Tensor | None
    heads: torch.Tensor | None
    u_sub: torch.Tensor | None


class StrengthMap(dict):
    """`{site: Tensor[B, H]}` that also carries, per site, the samples and heads with a non-zero strength
    (host lists), already validated.

    `batch_strengths` returns one. `set_strengths` uses `samples`/`heads` to restrict heavy targets (a
    second attention) to the selected samples and heads without reading device tensors, and caches what it
    prepared on the map, so setting the same map again (every step) costs a dict lookup. Treat it as
    read-only once used.
    """

    def __init__(self, data: Mapping[str, torch.Tensor], heads: Mapping[str, list[int]],
                 samples: Mapping[str, list[int]] | None = None) -> None:
        super().__init__(data)
        self.heads = dict(heads)
        self.samples = dict(samples or {})
        self.prepared: dict[Any, dict[str, SiteStrength]] = {}


def batch_strengths(
    rows: Sequence[HeadSet | None],
    sites: Sequence[Site],
    repeat: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    architecture: str | None = None,
) -> StrengthMap:
    """Per-site strengths `[len(rows) * repeat, H]` from one head set (or None: unperturbed) per batch group.

    Row i fills samples `i * repeat ... (i + 1) * repeat - 1` (the layout `[uncond x n | cond x n | ptb x n]`
    with `repeat = n`). Sites where every row is zero are left out, so they run the stock code path. Each
    head set is validated against `sites` (and `architecture` when given) first: HeadSetError names the
    mismatch before any forward runs.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise HeadSetError(f"repeat must be a positive integer, got {repeat!r}")
    dense_rows = []
    for i, row in enumerate(rows):
        if row is None:
            dense_rows.append({})
            continue
        if not isinstance(row, HeadSet):
            raise HeadSetError(f"row {i} of the batch is {type(row).__name__}; expected a HeadSet or None")
        row.validate_against(sites, architecture)
        dense_rows.append(row.dense())
    return strength_map(dense_rows, sites, repeat, device, dtype)


def strength_map(
    dense_rows: Sequence[Mapping[str, np.ndarray]],
    sites: Sequence[Site],
    repeat: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> StrengthMap:
    """`batch_strengths` for rows that are already validated: one `{site: float32 [H]}` dict per row group
    (`HeadSet.dense()`; `{}` for an unperturbed group). What an execution plan (`headhunter.plan`) builds
    its strengths with; nothing is checked again here."""
    data, heads, samples = {}, {}, {}
    for site in sites:
        if not any(site.name in d for d in dense_rows):
            continue
        table = np.zeros((len(dense_rows), site.num_heads), dtype=np.float32)
        for i, d in enumerate(dense_rows):
            if site.name in d:
                table[i] = d[site.name]
        table = np.repeat(table, repeat, axis=0)
        heads[site.name] = np.flatnonzero(table.any(axis=0)).tolist()
        samples[site.name] = np.flatnonzero(table.any(axis=1)).tolist()
        if not heads[site.name]:
            del heads[site.name], samples[site.name]
            continue
        tensor = torch.from_numpy(table)
        data[site.name] = tensor.to(device=device, dtype=dtype) if device is not None else tensor.to(dtype)
    return StrengthMap(data, heads, samples)


class SegmentedStrengthMap(StrengthMap):
    """A layout's strengths for every segment of a plan's schedule (`Plan.stable_strengths`).

    As a `StrengthMap` it holds the union over the segments: every site, head and sample that is non-zero in
    some segment, with the values of segment 0. `tables[site]` is the float32 `[segments, B, H]` stack of
    every segment's values (host). `select(k)` (host) says which segment the next forwards use; the
    installation then copies that segment's values, once on the device, into the same preallocated tensors
    (`Installation.set_strengths`): same tensors, same shapes, same sites at every step, so a compiled
    transformer recompiles nothing when the interval changes, and no host-device sync happens.
    """

    def __init__(self, data: Mapping[str, torch.Tensor], heads: Mapping[str, list[int]],
                 samples: Mapping[str, list[int]], tables: Mapping[str, torch.Tensor]) -> None:
        super().__init__(data, heads, samples)
        self.tables = dict(tables)
        self.segment = 0
        #: per installation key: (device tables of applied u, of u_sub, the segment now in the tensors)
        self.device_tables: dict[Any, list[Any]] = {}

    def select(self, segment: int) -> None:
        """Use `segment` (0 <= segment < segments) for the following forwards."""
        segments = next(iter(self.tables.values())).shape[0] if self.tables else 1
        if isinstance(segment, bool) or not isinstance(segment, int) or not 0 <= segment < segments:
            raise HeadSetError(f"segment {segment!r} out of range; this map has segments 0..{segments - 1}")
        self.segment = segment


def segmented_strength_map(
    dense_by_segment: Sequence[Sequence[Mapping[str, np.ndarray]]],
    sites: Sequence[Site],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SegmentedStrengthMap:
    """`strength_map` for every segment at once: `dense_by_segment[k]` is segment k's rows (one
    `{site: float32 [H]}` per row group, as `strength_map` takes them, already validated). Sites, heads and
    samples are the union over the segments; see `SegmentedStrengthMap`."""
    rows = len(dense_by_segment[0])
    data, heads, samples, tables = {}, {}, {}, {}
    for site in sites:
        table = np.zeros((len(dense_by_segment), rows, site.num_heads), dtype=np.float32)
        for k, dense_rows in enumerate(dense_by_segment):
            for i, d in enumerate(dense_rows):
                if site.name in d:
                    table[k, i] = d[site.name]
        nonzero = table.any(axis=0)
        if not nonzero.any():
            continue
        heads[site.name] = np.flatnonzero(nonzero.any(axis=0)).tolist()
        samples[site.name] = np.flatnonzero(nonzero.any(axis=1)).tolist()
        tables[site.name] = torch.from_numpy(table)
        first = torch.from_numpy(table[0].copy())
        data[site.name] = first.to(device=device, dtype=dtype) if device is not None else first.to(dtype)
    return SegmentedStrengthMap(data, heads, samples, tables)


def check_scope(perturbation: Perturbation, scope: str) -> None:
    """HeadSetError for an unknown scope, PluginError for one the perturbation does not define."""
    if scope not in SCOPES:
        raise HeadSetError(f"unknown scope {scope!r}; allowed: {', '.join(SCOPES)} (docs/engine.md)")
    if scope not in perturbation.scopes:
        raise PluginError(
            f"perturbation {perturbation.name!r} does not define scope {scope!r}; it supports "
            f"{', '.join(perturbation.scopes)} (pag_mask is the identity target's logit mask)"
        )


__all__ = ["SegmentedStrengthMap", "SiteStrength", "StrengthMap", "batch_strengths", "check_scope",
           "segmented_strength_map", "strength_map"]
