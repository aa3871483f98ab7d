"""Scheduled head sets (issue 26): strength maps over intervals of the noise level sigma, format 2.0.

Round trips (safetensors, JSON, notation) and hypothesis fuzzing; head sets without a schedule are still
written exactly as format 1.0; scheduled files are refused by the 1.x version check, and their tensor keys
by a 1.x reader that skipped it; composition (merge, scaled, restricted) is pointwise in sigma.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

import headhunter as hh
import headhunter.format.headset_io as io
from headhunter import HeadSet, HeadSetError, Site
from headhunter.format.headset_io import METADATA_KEY, read_header
from headhunter.format.schedule import format_interval, interval_index, parse_item, split_items

SITES = [Site(name=f"blocks.{i}.attn", num_heads=4 + i, kind="joint") for i in range(3)]
#: The metadata keys of a format 1.0 file, as headhunter wrote them before schedules existed.
KEYS_1_0 = {"format_version", "name", "description", "architecture", "base_model", "sites", "perturbation",
            "guidance", "origin", "source", "search", "library_version", "license", "tags"}


def toy(notation: str, **meta) -> HeadSet:
    return HeadSet.from_notation(notation, sites=SITES, architecture="toy", **meta)


def header(path) -> dict:
    data = path.read_bytes()
    return read_header(data[: 8 + struct.unpack("<Q", data[:8])[0]], str(path))


# ----- notation ---------------------------------------------------------------------------------------------
def test_notation_with_intervals_round_trips_and_reads_per_sigma():
    hs = toy("L0H1@[0,0.4), L0H1@0.5@[0.4,1], L2H3@[0.2,0.7)")
    assert hs.scheduled and hs.metadata.format_version == "2.0"
    assert hs.intervals == [(0.0, 0.2), (0.2, 0.4), (0.4, 0.7), (0.7, 1.0)]
    assert hs.notation() == "L0H1@[0,0.4), L0H1@0.5@[0.4,1], L2H3@[0.2,0.7)"
    assert toy(hs.notation()) == hs
    assert hs.at(0.1).strengths() == {"blocks.0.attn": {1: 1.0}}
    assert hs.at(0.2).strengths() == {"blocks.0.attn": {1: 1.0}, "blocks.2.attn": {3: 1.0}}
    assert hs.at(0.4).strengths() == {"blocks.0.attn": {1: 0.5}, "blocks.2.attn": {3: 1.0}}
    assert hs.at(1.0).strengths() == {"blocks.0.attn": {1: 0.5}}  # the top interval is closed at 1
    assert len(hs) == 2 and not hs.at(0.1).scheduled
    assert "sigma in [0.7,1]" in hs.describe() and "L0H1@0.5" in hs.describe()


def test_a_schedule_that_is_the_same_everywhere_is_a_plain_head_set():
    hs = toy("L0H1@[0,0.5), L0H1@[0.5,1], L1H0")
    assert not hs.scheduled and hs == toy("L0H1, L1H0")
    assert hs.metadata.format_version == "1.0" and hs.metadata.intervals is None
    assert hs.restricted(0, 1) == hs and hs.at(0.3) is hs


@pytest.mark.parametrize(("text", "message"), [
    ("L0H1@[0,1)", r"write \[0,1\]"),
    ("L0H1@[0,0.5]", r"write \[0,0.5\)"),
    ("L0H1@[0.5,0.2)", "out of range"),
    ("L0H1@[0,1.5]", "out of range"),
    ("L0H1@[-0.1,0.5)", "out of range"),
    ("L0H1@[0,0.5", "cannot parse head"),
    ("L0H1@[0,0.6), L0H1@[0.5,1]", "overlapping intervals"),
    ("L0H1@[a,1]", "cannot parse"),
])
def test_bad_intervals_name_the_value(text, message):
    with pytest.raises(HeadSetError, match=message):
        toy(text)


def test_interval_grammar_helpers():
    assert split_items("L0H1@[0,0.4), L1H2; L2H0@0.5@[0.4,1]") == ["L0H1@[0,0.4)", " L1H2", " L2H0@0.5@[0.4,1]"]
    assert parse_item("L3H2@0.5@[0.4,1]") == (3, 2, 0.5, (0.4, 1.0))
    assert parse_item(" L3H2 ") == (3, 2, None, None)
    assert format_interval((0.0, 0.4)) == "[0,0.4)" and format_interval((0.4, 1.0)) == "[0.4,1]"
    bounds = (0.0, 0.4, 1.0)
    assert [interval_index(bounds, s) for s in (0.0, 0.39999, 0.4, 0.9, 1.0)] == [0, 0, 1, 1, 1]
    for bad in (-1e-9, 1.0000001, float("nan")):
        with pytest.raises(ValueError, match="outside"):
            interval_index(bounds, bad)


# ----- composition --------------------------------------------------------------------------------------------
SIGMAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.99, 1.0]


@pytest.mark.parametrize("rule", ["max", "sum", "override"])
def test_merge_is_pointwise_in_sigma(rule):
    a = toy("L0H1@0.5@[0,0.5), L1H0@[0.3,1]")
    b = toy("L0H1@0.7@[0.4,1], L2H2")
    merged = a.merge(b, rule=rule)
    for sigma in SIGMAS:
        assert merged.at(sigma).strengths() == a.at(sigma).merge(b.at(sigma), rule=rule).strengths(), sigma
    assert (a | b) == a.merge(b)


def test_scaled_restricted_and_from_schedule():
    a = toy("L0H1@[0,0.5), L1H0@0.5")
    assert a.scaled(0.5).at(0.2).strengths() == {"blocks.0.attn": {1: 0.5}, "blocks.1.attn": {0: 0.25}}
    r = toy("L0H1, L2H3@0.5").restricted(0.2, 0.6)
    assert r.notation() == "L0H1@[0.2,0.6), L2H3@0.5@[0.2,0.6)"
    assert len(r.at(0.1)) == 0 and r.at(0.6).strengths() == {}
    early, late = toy("L0H1"), toy("L1H2@0.5")
    built = HeadSet.from_schedule([((0.0, 0.4), early), ((0.4, 1.0), late)], name="s")
    assert built == toy("L0H1@[0,0.4), L1H2@0.5@[0.4,1]", name="s")
    with pytest.raises(HeadSetError, match="overlap"):
        HeadSet.from_schedule([((0.0, 0.5), early), ((0.4, 1.0), late)])
    with pytest.raises(HeadSetError, match="already holds a schedule"):
        HeadSet.from_schedule([((0.0, 0.5), built)])
    with pytest.raises(HeadSetError, match=r"holds a schedule .* use \.schedule\(\)"):
        built.dense()


def test_construction_checks_the_maps_against_the_intervals():
    meta = toy("L0H1").metadata
    with pytest.raises(HeadSetError, match="needs one strength map per interval"):
        HeadSet({"blocks.0.attn": {1: 1.0}}, meta, intervals=[(0, 0.5), (0.5, 1)])
    with pytest.raises(HeadSetError, match="contiguous"):
        HeadSet([{}, {}], meta, intervals=[(0, 0.4), (0.5, 1)])
    with pytest.raises(HeadSetError, match="from 0 to 1"):
        HeadSet([{}, {}], meta, intervals=[(0, 0.4), (0.4, 0.9)])


# ----- files -------------------------------------------------------------------------------------------------------
def test_plain_head_sets_are_still_written_as_format_1_0(tmp_path):
    path = toy("L0H1, L2H3@0.5", name="plain").save(tmp_path / "p.safetensors")
    head = header(path)
    meta = json.loads(head["__metadata__"][METADATA_KEY])
    assert set(meta) == KEYS_1_0 and meta["format_version"] == "1.0"
    assert set(head) - {"__metadata__"} == {"blocks.0.attn", "blocks.2.attn"}
    doc = json.loads(toy("L0H1").to_json())
    assert set(doc["headhunter"]) == KEYS_1_0 and isinstance(doc["heads"], dict)


def test_scheduled_file_layout(tmp_path):
    hs = toy("L0H1@[0,0.4), L0H1@0.5@[0.4,1], L2H3@[0.4,1]", name="sched")
    path = hs.save(tmp_path / "s.safetensors")
    head = header(path)
    meta = json.loads(head["__metadata__"][METADATA_KEY])
    assert meta["format_version"] == "2.0" and meta["intervals"] == [[0.0, 0.4], [0.4, 1.0]]
    tensors = st_load(path.read_bytes())
    assert sorted(tensors) == ["blocks.0.attn@0", "blocks.0.attn@1", "blocks.2.attn@1"]
    assert tensors["blocks.0.attn@1"].tolist() == [0.0, 0.5, 0.0, 0.0]
    assert hh.load_headset(path) == hs
    assert hh.load_headset(hs.save(tmp_path / "s.json")) == hs
    doc = json.loads(hs.to_json())
    assert doc["heads"] == [{"blocks.0.attn": {"1": 1.0}}, {"blocks.0.attn": {"1": 0.5}, "blocks.2.attn": {"3": 1.0}}]


def test_a_1x_reader_refuses_scheduled_files(tmp_path, monkeypatch):
    """The version check of a reader that knows only format 1.x refuses a 2.0 file; a 1.x reader that got past
    it (a forged '1.0' version) refuses the `<site>@<k>` tensor keys as unknown sites."""
    hs = toy("L0H1@[0,0.4), L1H2@[0.4,1]")
    path, rendering = hs.save(tmp_path / "s.safetensors"), hs.save(tmp_path / "s.json")
    monkeypatch.setattr(io, "FORMAT_VERSION", "1.0")  # what every 1.x reader compares with
    with pytest.raises(HeadSetError, match="uses head-set format 2.0; .* reads formats up to 1.x"):
        hh.load_headset(path)
    with pytest.raises(HeadSetError, match="uses head-set format 2.0"):
        hh.load_headset(rendering)
    monkeypatch.undo()
    tensors = st_load(path.read_bytes())
    meta = json.loads(header(path)["__metadata__"][METADATA_KEY])
    meta["format_version"] = "1.0"
    del meta["intervals"]
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(st_save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
    with pytest.raises(HeadSetError, match=r"unknown site 'blocks\.[01]\.attn@[01]'"):
        hh.load_headset(forged)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m, t: m.pop("intervals"), "list their intervals"),
    (lambda m, t: m.update(intervals=[[0, 0.4], [0.5, 1]]), "contiguous"),
    (lambda m, t: m.update(intervals=[[0, 0.4], [0.4, 0.9]]), "from 0 to 1"),
    (lambda m, t: m.update(intervals=[[0, 0.4], [0.4, "x"]]), "does not match the head-set schema"),
    (lambda m, t: m.update(format_version="1.0"), "hold no schedule"),
    (lambda m, t: t.update({"blocks.0.attn@2": np.ones(4, np.float32)}), r"k in 0\.\.1"),
    (lambda m, t: t.update({"blocks.0.attn": np.ones(4, np.float32)}), "must be keyed"),
    (lambda m, t: t.update({"blocks.0.attn@01": np.ones(4, np.float32)}), "must be keyed"),
    (lambda m, t: t.update({"blocks.9.attn@1": np.ones(4, np.float32)}), "unknown site 'blocks.9.attn'"),
    (lambda m, t: t.update({"blocks.0.attn@1": np.zeros(4, np.float32)}), "no non-zero strength"),
])
def test_bad_scheduled_files_raise_headset_error(tmp_path, edit, message):
    hs = toy("L0H1@[0,0.4), L1H2@[0.4,1]")
    path = hs.save(tmp_path / "s.safetensors")
    tensors = dict(st_load(path.read_bytes()))
    meta = json.loads(header(path)["__metadata__"][METADATA_KEY])
    edit(meta, tensors)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(st_save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
    with pytest.raises(HeadSetError, match=message):
        hh.load_headset(bad)


def test_bad_scheduled_json_raises_headset_error(tmp_path):
    doc = json.loads(toy("L0H1@[0,0.4), L1H2@[0.4,1]").to_json())
    doc["heads"] = doc["heads"][:1]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(HeadSetError, match="list of 2"):
        hh.load_headset(path)


# ----- fuzzing -------------------------------------------------------------------------------------------------
strength = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, width=32).filter(lambda x: x > 0)
bound = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, exclude_min=True, exclude_max=True)


@st.composite
def scheduled(draw):
    inner = sorted(set(draw(st.lists(bound, min_size=0, max_size=4))))
    bounds = [0.0, *inner, 1.0]
    maps = []
    for _ in range(len(bounds) - 1):
        chosen = draw(st.dictionaries(st.tuples(st.integers(0, 2), st.integers(0, 3)), strength, max_size=5))
        per: dict[str, dict[int, float]] = {}
        for (layer, head), value in chosen.items():
            per.setdefault(SITES[layer].name, {})[head] = value
        maps.append(per)
    meta = toy("L0H0", name=draw(st.text(min_size=1, max_size=12))).metadata
    return HeadSet(maps, meta, intervals=list(zip(bounds, bounds[1:]))), bounds, maps


@settings(max_examples=60, deadline=None)
@given(scheduled(), st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
def test_fuzzed_schedules_round_trip_and_read_back_per_sigma(tmp_path_factory, drawn, sigma):
    hs, bounds, maps = drawn
    folder = tmp_path_factory.mktemp("fz")
    back = hh.load_headset(hs.save(folder / "h.safetensors"))
    assert back == hs
    assert hh.load_headset(hs.save(folder / "h.json")) == hs
    if len(hs) == 0:  # an empty head set's notation is "", which from_notation refuses (it names no head)
        assert hs.notation() == ""
        with pytest.raises(HeadSetError, match="names no head"):
            toy(hs.notation(), name=hs.name)
    elif all(float(f"{h.strength:g}") == h.strength for h in hs):  # notation prints strengths with :g
        assert toy(hs.notation(), name=hs.name) == hs
    k = min(max(i for i, b in enumerate(bounds[:-1]) if b <= sigma), len(maps) - 1)
    want = {site: {h: float(np.float32(v)) for h, v in heads.items()} for site, heads in maps[k].items()}
    assert back.at(sigma).strengths() == want
    assert (hs.metadata.format_version == "2.0") == hs.scheduled
    for (lo, hi), piece in back.pieces():
        assert back.at(lo).strengths() == piece.strengths()


@settings(max_examples=60, deadline=None)
@given(scheduled(), st.binary(min_size=1, max_size=8), st.integers(0, 10_000))
def test_fuzzed_mutations_of_scheduled_files_only_raise_headset_error(tmp_path_factory, drawn, junk, where):
    hs, _, _ = drawn
    data = bytearray(st_save({k: v for k, v in hs._tensors().items()} or {"blocks.0.attn@0": np.ones(4, np.float32)},
                             metadata={METADATA_KEY: hs.metadata.model_dump_json()}))
    at = where % len(data)
    data[at: at + len(junk)] = junk
    path = tmp_path_factory.mktemp("mut") / "m.safetensors"
    path.write_bytes(bytes(data))
    try:
        hh.load_headset(path)
    except HeadSetError:
        pass
