"""HeadSet: construction, notation, composition, validation, and the file format (round trips + bad files)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

import headhunter as hh
from headhunter import HeadSet, HeadSetError, Site
from headhunter.format.headset_io import METADATA_KEY, read_header

SD3 = "stabilityai/stable-diffusion-3-medium-diffusers"
SITES = [Site(name=f"blocks.{i}.attn", num_heads=4 + i, kind="joint") for i in range(3)]


def small(heads, **meta) -> HeadSet:
    return HeadSet.from_heads(heads, sites=SITES, architecture="toy", **meta)


# ----- construction and notation ------------------------------------------------------------------
def test_notation_round_trip_on_known_model():
    hs = HeadSet.from_notation("L12H3, L0H4@0.5", base_model=SD3, name="x")
    assert hs.notation() == "L0H4@0.5, L12H3"
    assert hs.strengths() == {"transformer_blocks.0.attn": {4: 0.5}, "transformer_blocks.12.attn": {3: 1.0}}
    assert HeadSet.from_notation(hs.notation(), base_model=SD3, name="x") == hs
    assert hs.metadata.architecture == "sd3"


def test_from_heads_accepts_site_names_and_layer_indices():
    by_name = small([("blocks.1.attn", 2, 0.25), ("blocks.2.attn", 5)])
    by_index = small([(1, 2, 0.25), (2, 5, 1.0)])
    assert by_name == by_index
    assert [str(h) for h in by_name] == ["L1H2@0.25", "L2H5"]
    assert len(by_name) == 2


def test_dense_vectors_have_site_shapes():
    dense = small([(0, 3, 0.5), (2, 0, 1.0)]).dense()
    assert set(dense) == {"blocks.0.attn", "blocks.2.attn"}
    np.testing.assert_array_equal(dense["blocks.0.attn"], np.array([0, 0, 0, 0.5], dtype=np.float32))
    assert dense["blocks.2.attn"].shape == (6,)


@pytest.mark.parametrize(
    "heads, message",
    [
        ([(0, 4)], "head L0H4 does not exist in this model: layer 0 (blocks.0.attn) has 4 heads (H0-H3); allowed: L0, H0-H3;"),
        ([(0, -1)], "head -1 out of range"),
        ([(3, 0)], "layer 3 out of range"),
        ([("blocks.9.attn", 0)], "unknown site 'blocks.9.attn'"),
        ([(0, 1, 1.5)], "strength 1.5 at blocks.0.attn out of range"),
        ([(0, 1, -0.1)], "out of range"),
        ([(0, 1, float("nan"))], "strength nan"),
        ([(0, 1), (0, 1, 0.5)], "duplicate head 1 at blocks.0.attn"),
    ],
)
def test_bad_heads_raise_headset_error_naming_the_value(heads, message):
    with pytest.raises(HeadSetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        small(heads)


def test_bad_notation_is_named():
    with pytest.raises(HeadSetError, match="cannot parse head 'L1X3'"):
        HeadSet.from_notation("L1X3", base_model=SD3)


def test_unknown_base_model_lists_known_ones():
    with pytest.raises(HeadSetError, match="unknown base model 'nope/model'.*stabilityai"):
        HeadSet.from_notation("L0H0", base_model="nope/model")


# ----- composition ------------------------------------------------------------------------------
def test_merge_rules():
    a = small([(0, 1, 0.5), (1, 0, 0.3)])
    b = small([(0, 1, 0.8), (2, 2, 0.2)])
    assert a.merge(b).strengths() == {"blocks.0.attn": {1: 0.8}, "blocks.1.attn": {0: 0.3}, "blocks.2.attn": {2: 0.2}}
    assert a.merge(b, rule="sum").strengths()["blocks.0.attn"] == {1: 1.0}
    assert b.merge(a, rule="override").strengths()["blocks.0.attn"] == {1: 0.5}
    assert (a | b) == a.merge(b)
    with pytest.raises(HeadSetError, match="unknown merge rule 'min'"):
        a.merge(b, rule="min")


def test_merge_refuses_other_models():
    other = HeadSet.from_notation("L0H0", base_model=SD3)
    with pytest.raises(HeadSetError, match="different models"):
        small([(0, 0)]).merge(other)


def test_scaled_multiplies_and_checks_range():
    hs = small([(0, 1, 0.5), (1, 0, 1.0)])
    assert hs.scaled(0.5).strengths() == {"blocks.0.attn": {1: 0.25}, "blocks.1.attn": {0: 0.5}}
    assert len(hs.scaled(0.0)) == 0
    with pytest.raises(HeadSetError, match="scale factor 2 out of range"):
        hs.scaled(2)


def test_iteration_is_in_site_order_whatever_the_input_order():
    hs = small([(2, 1), (0, 3), (1, 0), (0, 0)])
    assert [(h.layer, h.head) for h in hs] == [(0, 0), (0, 3), (1, 0), (2, 1)]


def test_validate_against_names_first_mismatch():
    hs = small([(1, 4)])
    hs.validate_against(SITES, architecture="toy")
    with pytest.raises(HeadSetError, match="made for architecture 'toy', not 'sd3'"):
        hs.validate_against(SITES, architecture="sd3")
    fewer = [SITES[0], Site(name="blocks.1.attn", num_heads=3), SITES[2]]
    with pytest.raises(HeadSetError, match="'blocks.1.attn' has 3 heads in this model but"):
        hs.validate_against(fewer)
    with pytest.raises(HeadSetError, match="does not exist in this model"):
        hs.validate_against([SITES[0]])


# ----- files ----------------------------------------------------------------------------------------
strength = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, width=32).filter(lambda x: x > 0)


@st.composite
def headsets(draw):
    chosen = draw(
        st.dictionaries(
            st.tuples(st.integers(0, 2), st.integers(0, 3)), strength, min_size=0, max_size=8
        )
    )
    heads = [(layer, head, value) for (layer, head), value in chosen.items()]
    name = draw(st.text(min_size=1, max_size=20))
    tags = draw(st.lists(st.text(max_size=8), max_size=3))
    return small(heads, name=name, tags=tags, description=draw(st.text(max_size=40)))


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(headsets())
def test_save_load_and_json_round_trips_are_identities(tmp_path_factory, hs):
    folder = tmp_path_factory.mktemp("rt")
    assert hh.load_headset(hs.save(folder / "h.safetensors")) == hs
    assert hh.load_headset(hs.save(folder / "h.json")) == hs
    assert HeadSet._from_json_text(hs.to_json(), source="mem") == hs


def test_header_is_readable_without_tensors(tmp_path):
    path = small([(0, 1, 0.5)], name="hdr").save(tmp_path / "h.safetensors")
    head = path.read_bytes()[: 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]]
    meta = json.loads(read_header(head, "x")["__metadata__"][METADATA_KEY])
    assert meta["name"] == "hdr" and meta["format_version"] == hh.CONSTANT_FORMAT_VERSION == "1.0"


def test_folder_with_headset_file_loads(tmp_path):
    hs = small([(0, 0)])
    hs.save(tmp_path / "headset.safetensors")
    assert hh.load_headset(tmp_path) == hs


def _write_raw(path, tensors, meta):
    path.write_bytes(st_save(tensors, metadata=meta))
    return path


def _meta_json(**override):
    meta = json.loads(small([(0, 0)]).metadata.model_dump_json())
    meta.update(override)
    return json.dumps(meta)


@pytest.mark.parametrize(
    "tensors, meta, message",
    [
        ({"blocks.0.attn": np.ones(4, np.float32)}, None, "no 'headhunter' key"),
        ({"blocks.0.attn": np.ones(4, np.float32)}, {"headhunter": "{not json"}, "metadata is not JSON"),
        ({"blocks.0.attn": np.ones(4, np.float32)}, {"headhunter": "[]"}, "must be an object"),
        ({"blocks.0.attn": np.ones(4, np.float32)}, {"headhunter": _meta_json(sites=[])}, "does not match the head-set schema"),
        ({"blocks.0.attn": np.ones(4, np.float32)}, {"headhunter": _meta_json(format_version="3.0")}, "format 3.0; headhunter .* reads formats up to 2.x"),
        ({"blocks.0.attn": np.full(4, 2.0, np.float32)}, "ok", "strength 2.0 at blocks.0.attn out of range"),
        ({"blocks.0.attn": np.array([np.nan, 0, 0, 0], np.float32)}, "ok", "strength nan"),
        ({"blocks.0.attn": np.zeros(4, np.float32)}, "ok", "no non-zero strength"),
        ({"blocks.7.attn": np.ones(4, np.float32)}, "ok", "unknown site 'blocks.7.attn'"),
        ({"blocks.0.attn": np.ones(5, np.float32)}, "ok", r"shape \[5\], expected \[4\]"),
        ({"blocks.0.attn": np.ones(4, np.float64)}, "ok", "dtype F64"),
    ],
)
def test_bad_files_raise_headset_error(tmp_path, tensors, meta, message):
    meta = {"headhunter": _meta_json()} if meta == "ok" else meta
    path = _write_raw(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(HeadSetError, match=message):
        hh.load_headset(path)


def test_not_safetensors_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello world")
    with pytest.raises(HeadSetError, match="header is not JSON"):
        hh.load_headset(junk)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(HeadSetError, match="too short"):
        hh.load_headset(tiny)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(HeadSetError, match="exceeds"):
        hh.load_headset(huge)
    good = small([(0, 0), (2, 5)]).save(tmp_path / "good.safetensors").read_bytes()
    for cut in (len(good) - 4, len(good) - 30, 20):
        trunc = tmp_path / f"t{cut}.safetensors"
        trunc.write_bytes(good[:cut])
        with pytest.raises(HeadSetError, match="truncated"):
            hh.load_headset(trunc)


def test_newer_minor_version_warns_about_unknown_keys(tmp_path):
    meta = json.loads(_meta_json(format_version="1.7"))
    meta["colour"] = "blue"
    meta["guidance"]["sparkle"] = 1
    path = _write_raw(tmp_path / "new.safetensors", {"blocks.0.attn": np.ones(4, np.float32)}, {"headhunter": json.dumps(meta)})
    with pytest.warns(UserWarning, match="colour, guidance.sparkle"):
        hs = hh.load_headset(path)
    assert hs.metadata.format_version == "1.7"


def test_json_rendering_errors_name_the_problem(tmp_path):
    doc = json.loads(small([(0, 1)]).to_json())
    doc["heads"]["blocks.0.attn"] = {"x": 1.0}
    path = tmp_path / "h.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(HeadSetError, match="head index 'x' at blocks.0.attn"):
        hh.load_headset(path)
    path.write_text(json.dumps({"heads": {}}))
    with pytest.raises(HeadSetError, match="expected keys 'headhunter' and 'heads'"):
        hh.load_headset(path)


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    import headhunter.format.files as _headset_io

    target = tmp_path / "out.safetensors"

    def exploding_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(_headset_io.os, "fsync", exploding_fsync)
    with pytest.raises(OSError, match="disk full"):
        small([(0, 0)]).save(target)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_previous_file_intact(tmp_path, monkeypatch):
    import headhunter.format.files as _headset_io

    target = tmp_path / "out.safetensors"
    first = small([(0, 0)])
    first.save(target)
    monkeypatch.setattr(_headset_io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("interrupted")))
    with pytest.raises(OSError):
        small([(1, 1)]).save(target)
    assert hh.load_headset(target) == first
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_unknown_source_error_lists_the_forms():
    with pytest.raises(HeadSetError, match="not an existing file.*preset:NAME.*user/repo"):
        hh.load_headset("no-such-source")
    with pytest.raises(HeadSetError, match="^head-set file no-such-file.safetensors does not exist$"):
        hh.load_headset("no-such-file.safetensors")  # a file name: it is the file that is missing


def test_metadata_input_is_strict():
    with pytest.raises(HeadSetError, match=r"^bad head-set metadata: colour='blue': not a setting; allowed: .*name"):
        small([(0, 0)], colour="blue")


# ----- immutability and the errors of the Python API (a newcomer's trial) ------------------------------------
def test_a_head_set_cannot_be_changed_in_place_and_the_error_names_the_way():
    import copy
    import pickle

    hs = small([(0, 1)], name="a")
    with pytest.raises(AttributeError, match=r"HeadSet is immutable: cannot set 'scale'; .*apply\(pipe, hs, scale=\.\.\.\)"):
        hs.scale = 3  # used to set a stray attribute that nothing read
    with pytest.raises(AttributeError, match=r"cannot set 'name'; hs.with_metadata\(name=\.\.\.\)"):
        hs.name = "b"
    with pytest.raises(AttributeError, match=r"cannot set '_maps'; hs.with_metadata\(field=\.\.\.\).*hs.scaled\(u\)"):
        hs._maps = ()
    with pytest.raises(AttributeError, match="cannot delete 'name'"):
        del hs.name
    assert not hasattr(hs, "scale") and hs.name == "a"
    # the metadata is frozen too: an assignment would bypass validation and the text sanitizer
    with pytest.raises(Exception, match="frozen"):
        hs.metadata.guidance.scale = -1
    with pytest.raises(Exception, match="frozen"):
        hs.metadata.name = "\x1b[31mred"
    assert hs.metadata.guidance.scale == 3.0
    # copies and pickles still work (they do not assign attributes one by one)
    assert copy.copy(hs) == hs and copy.deepcopy(hs) == hs and pickle.loads(pickle.dumps(hs)) == hs
    # the intended ways give changed copies
    changed = hs.with_metadata(guidance=hs.metadata.guidance.model_copy(update={"scale": 5.0}), name="b")
    assert changed.metadata.guidance.scale == 5.0 and changed.name == "b" and hs.name == "a"


@pytest.mark.parametrize("updates, fragment", [
    ({"guidance": {"scale": -1}}, "guidance.scale=-1: Input should be greater than or equal to 0; allowed: [0, inf)"),
    ({"origin": "x"}, "origin='x': not one of the choices; allowed: 'paper', 'search', 'manual', 'atlas'"),
    ({"colour": "blue"}, "colour='blue': not a setting; allowed: format_version, name, description"),
    ({"guidance": {"scope": "all"}}, "guidance.scope='all': not one of the choices; allowed: 'joint', 'image', 'pag_mask'"),
])
def test_bad_metadata_is_a_headset_error_naming_the_field_and_what_is_allowed(updates, fragment):
    hs = small([(0, 1)])
    for build in (lambda: hs.with_metadata(**updates), lambda: small([(0, 1)], **updates),
                  lambda: hs.merge(hs, **updates), lambda: HeadSet.from_schedule([((0, 1), hs)], **updates)):
        with pytest.raises(HeadSetError) as err:  # not pydantic's ValidationError
            build()
        assert str(err.value).startswith("bad head-set metadata: ") and fragment in str(err.value), str(err.value)
    with pytest.raises(HeadSetError, match="metadata must be a HeadSetMetadata, got dict"):
        HeadSet({}, {"name": "x"})


@pytest.mark.parametrize("notation", ["", "   ", " , ;", [], ()])
def test_an_empty_notation_is_an_error_saying_what_notation_looks_like(notation):
    with pytest.raises(HeadSetError, match=r"names no head; write heads as 'L0H1, L2H7@0.5' \(layer L, head H"):
        HeadSet.from_notation(notation, base_model="digits")
    with pytest.raises(HeadSetError, match="must be a notation string like 'L0H1, L2H7@0.5'"):
        HeadSet.from_notation(5, base_model="digits")
    empty = HeadSet.from_heads([], base_model="digits")  # a head set with no heads is still buildable, explicitly
    assert len(empty) == 0 and empty.notation() == ""


def test_a_head_outside_the_model_names_the_allowed_range():
    from headhunter.atlases.atlas import select_heads
    from headhunter.errors import SearchError
    from headhunter.format.sites import head_range
    from headhunter.plugin_system.registry import get_registry
    from headhunter.search.search import candidate_pool

    digits = list(get_registry().known_model("digits").sites)  # 6 layers x 8 heads, nothing loaded
    assert head_range(digits) == "L0-L5, H0-H7"
    assert head_range(SITES) == "L0, H0-H3; L1, H0-H4; L2, H0-H5"
    assert head_range([*digits[:2], Site(name="x.attn2", num_heads=2, kind="image")]) == "L0-L1, H0-H7; L2, H0-H1"
    allowed = "allowed: L0-L5, H0-H7"
    with pytest.raises(SearchError, match=rf"^candidate L0H99 does not exist in this model: layer 0 \(transformer_blocks.0.attn\) has 8 heads \(H0-H7\); {allowed}$"):
        candidate_pool(digits, ["L0H99"])
    with pytest.raises(SearchError, match=rf"^candidate L9H0 does not exist in this model: it has 6 layers; {allowed}$"):
        candidate_pool(digits, ["L9H0"])
    with pytest.raises(SearchError, match=r"candidate layer 9 out of range; layers are 0..5 \(heads: L0-L5, H0-H7\)"):
        candidate_pool(digits, ["9"])
    with pytest.raises(SearchError, match=rf"^head L0H99 does not exist in this model: .*{allowed}$"):
        select_heads(digits, ["L0H99"])
    with pytest.raises(HeadSetError, match=rf"^head L0H99 does not exist in this model: .*{allowed}$"):
        HeadSet.from_notation("L0H99", base_model="digits")
    with pytest.raises(HeadSetError, match=r"layer 7 out of range; this model has layers 0..5 \(heads: L0-L5, H0-H7\)"):
        HeadSet.from_notation("L7H1", base_model="digits")
    assert candidate_pool(digits, ["L5H7"]) == ["L5H7"]
