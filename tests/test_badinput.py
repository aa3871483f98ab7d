"""Bad input never crashes, hangs or loses data (issue #13): readers, writers, schema numbers, the CLI.

Each example of the issue is a regression test here; the property-based test over the readers is in
tests/test_badinput_fuzz.py.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct

import numpy as np
import pytest
from safetensors.numpy import save as st_save

import headhunter as hh
from headhunter import HeadSet, HeadSetError, Site
from headhunter.format.files import NotRegularFileError, parse_json, read_regular, write_atomic
from headhunter.errors import HeadhunterError

SITES = [Site(name=f"blocks.{i}.attn", num_heads=4 + i, kind="joint") for i in range(3)]


def small(heads=((0, 1), (2, 3, 0.5)), **meta) -> HeadSet:
    return HeadSet.from_heads(list(heads), sites=SITES, architecture="toy", **meta)


def _meta() -> dict:
    return json.loads(small().metadata.model_dump_json())


def _file_with_meta(path, meta_text: str):
    path.write_bytes(st_save({"blocks.0.attn": np.ones(4, np.float32)}, metadata={"headhunter": meta_text}))
    return path


def _json_rendering(path, doc_text: str | bytes):
    (path.write_bytes if isinstance(doc_text, bytes) else path.write_text)(doc_text)
    return path


# ----- readers: the path first --------------------------------------------------------------------------
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(HeadSetError, match="FIFO"):
        hh.load_headset(fifo)
    json_fifo = tmp_path / "pipe.json"
    os.mkfifo(json_fifo)
    with pytest.raises(HeadSetError, match="FIFO"):
        hh.load_headset(json_fifo)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_symlink_to_dev_zero_is_refused(tmp_path):
    link = tmp_path / "zero.safetensors"
    link.symlink_to("/dev/zero")
    with pytest.raises(HeadSetError, match="character device, not a regular file"):
        hh.load_headset(link)


def test_padded_file_is_refused_from_its_size_without_reading_it(tmp_path, monkeypatch):
    path = small().save(tmp_path / "h.safetensors")
    with open(path, "ab") as handle:
        handle.truncate(path.stat().st_size + 600 * 1024 * 1024)  # sparse: 600 MiB of zeros
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(HeadSetError, match="bytes; at most"):
        hh.load_headset(path)
    assert sum(reads) == 0


def test_trailing_bytes_are_refused(tmp_path):
    path = small().save(tmp_path / "h.safetensors")
    path.write_bytes(path.read_bytes() + b"\0" * 100)
    with pytest.raises(HeadSetError, match="tensors use .* bytes after the header but the file has"):
        hh.load_headset(path)


# ----- readers: then the JSON ---------------------------------------------------------------------------
def test_deeply_nested_header_json_is_our_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(HeadSetError, match="nested 100000 levels deep"):
        hh.load_headset(_file_with_meta(tmp_path / "d.safetensors", deep))
    header = json.dumps({"__metadata__": {"headhunter": "{}"}, "x": json.loads("[" * 50 + "]" * 50)})
    raw = ("[" * 70_000 + "]" * 70_000).encode()
    for body in (raw, header.encode()):
        path = tmp_path / "h.safetensors"
        path.write_bytes(struct.pack("<Q", len(body)) + body)
        with pytest.raises(HeadSetError):
            hh.load_headset(path)


def test_deeply_nested_json_rendering_is_our_error(tmp_path):
    doc = '{"headhunter": ' + "[" * 100_000 + "]" * 100_000 + ', "heads": {}}'
    with pytest.raises(HeadSetError, match="nested"):
        hh.load_headset(_json_rendering(tmp_path / "d.json", doc))


@pytest.mark.parametrize("version", [".1", "1.", "1.0.0", "١.0", "5" * 5000 + ".0", 1.0, None])
def test_malformed_format_version_is_our_error(tmp_path, version):
    meta = _meta()
    meta["format_version"] = version
    with pytest.raises(HeadSetError, match="format_version"):
        hh.load_headset(_file_with_meta(tmp_path / "v.safetensors", json.dumps(meta)))


def test_huge_number_literals_are_our_error(tmp_path):
    good = json.loads(small().to_json())
    text = json.dumps(good).replace("0.5", "1" + "0" * 400)
    with pytest.raises(HeadSetError, match="integer literal of 401 digits"):
        hh.load_headset(_json_rendering(tmp_path / "big.json", text))
    text = json.dumps(good).replace("0.5", "1e400")
    with pytest.raises(HeadSetError, match="overflows"):
        hh.load_headset(_json_rendering(tmp_path / "inf.json", text))
    text = json.dumps(good).replace("0.5", "NaN")
    with pytest.raises(HeadSetError, match="NaN"):
        hh.load_headset(_json_rendering(tmp_path / "nan.json", text))
    meta = _meta()
    meta["guidance"]["scale"] = 1
    text = json.dumps(meta).replace('"scale": 1', '"scale": ' + "9" * 5000)
    with pytest.raises(HeadSetError, match="integer literal"):
        hh.load_headset(_file_with_meta(tmp_path / "m.safetensors", text))


def test_non_utf8_and_surrogates_are_our_error(tmp_path):
    text = small().to_json()
    with pytest.raises(HeadSetError, match="not UTF-8"):
        hh.load_headset(_json_rendering(tmp_path / "u16.json", text.encode("utf-16")))
    with pytest.raises(HeadSetError, match="unpaired surrogate"):
        hh.load_headset(_json_rendering(tmp_path / "s.json", text.replace('"unnamed"', '"\\ud800"')))


@pytest.mark.parametrize("index", [" 1", "1_0", "٣", "+1", "-1", "01", "9" * 50])
def test_json_head_index_must_be_plain_digits(tmp_path, index):
    doc = json.loads(small().to_json())
    doc["heads"]["blocks.0.attn"] = {index: 1.0}
    with pytest.raises(HeadSetError):
        hh.load_headset(_json_rendering(tmp_path / "i.json", json.dumps(doc)))


def test_inf_scale_in_file_metadata_is_refused(tmp_path):
    meta = _meta()
    meta["guidance"]["scale"] = 1e308
    text = json.dumps(meta).replace("1e+308", "1e999")
    with pytest.raises(HeadSetError, match="overflows"):
        hh.load_headset(_file_with_meta(tmp_path / "inf.safetensors", text))
    meta["guidance"]["scale"] = 1e308  # finite: fine
    assert hh.load_headset(_file_with_meta(tmp_path / "big.safetensors", json.dumps(meta))).metadata.guidance.scale == 1e308


def test_parse_json_helper_contract():
    assert parse_json(b'{"a": [1, 2.5, "x"]}', source="s", error=HeadSetError) == {"a": [1, 2.5, "x"]}
    assert parse_json('"[[[["', source="s", error=HeadSetError) == "[[[["  # brackets in strings do not count
    for bad in (b"\xff", b"[" * 65 + b"]" * 65, b"1e999", b"-Infinity", b"1" * 41, b"{", b"\xef\xbb\xbf{}",
                b'{"a": 1, "a": 2}'):
        with pytest.raises(HeadSetError):
            parse_json(bad, source="s", error=HeadSetError)


# ----- writers ----------------------------------------------------------------------------------------------
def test_strength_that_underflows_in_float32_is_refused_by_the_writer():
    with pytest.raises(HeadSetError, match="underflows to 0 in float32"):
        small([(0, 1, 1e-300)])
    tiny = small([(0, 1, 1.5e-45)])  # float32's smallest subnormal survives
    assert tiny.dense()["blocks.0.attn"][1] > 0


def test_writer_refuses_inf_scale_before_writing(tmp_path):
    hs = small()
    broken = HeadSet(hs.strengths(), hs.metadata.model_copy(update={"guidance": hs.metadata.guidance.model_copy(update={"scale": math.inf})}))
    with pytest.raises(HeadSetError, match="not saved"):
        broken.save(tmp_path / "h.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_saving_onto_a_symlink_writes_through(tmp_path):
    target = small([(0, 0)]).save(tmp_path / "real.safetensors")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target.name)
    small().save(link)
    assert link.is_symlink() and hh.load_headset(target) == small()


def test_saving_onto_a_fifo_or_folder_is_refused(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError, match="FIFO"):
        small().save(fifo)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OSError):
        small().save(tmp_path / "dir.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.json", "pipe.safetensors"]


def test_full_disk_leaves_no_temp_file_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = small([(0, 0)]).save(tmp_path / "h.safetensors")
    import headhunter.format.files as _files

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_files.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        small().save(path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["h.safetensors"]
    assert hh.load_headset(path) == small([(0, 0)])


def test_new_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_read_regular_bounds_and_names_the_file(tmp_path):
    (tmp_path / "f").write_bytes(b"12345")
    assert read_regular(tmp_path / "f", max_bytes=5, error=HeadhunterError) == b"12345"
    with pytest.raises(HeadhunterError, match="f is 5 bytes; at most 4"):
        read_regular(tmp_path / "f", max_bytes=4, error=HeadhunterError)
    with pytest.raises(HeadhunterError, match="does not exist"):
        read_regular(tmp_path / "nope", max_bytes=4, error=HeadhunterError)


# ----- schema numbers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("scale", math.inf), ("scale", math.nan), ("cfg", math.inf), ("scale", -1.0),
                                          ("start", 2.0)])
def test_guidance_settings_refuse_non_finite_and_out_of_range(field, value):
    from pydantic import ValidationError

    from headhunter.format.schema import GuidanceSettings

    with pytest.raises(ValidationError, match=field):
        GuidanceSettings(**{field: value})


def test_free_form_maps_refuse_non_finite_numbers():
    from pydantic import ValidationError

    from headhunter.format.schema import PerturbationSpec, SearchProvenance

    with pytest.raises(ValidationError, match="params.sigma holds inf"):
        PerturbationSpec(params={"sigma": math.inf})
    with pytest.raises(ValidationError, match=r"evaluation.found.ci95\[1\] holds nan"):
        SearchProvenance(objective="x", evaluation={"found": {"ci95": [0.0, math.nan]}})


# ----- the search: validation first, results first, checkpoints checked --------------------------------------
def _tiny_search_pipe():
    import torch

    from headhunter.plugins.digits.model import build_pipeline, build_transformer

    torch.manual_seed(0)
    pipe = build_pipeline(build_transformer(num_layers=1, num_attention_heads=2, attention_head_dim=8))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _brightness():
    from headhunter.contracts.objective import Objective, as_tensor_images

    class Brightness(Objective):
        name = "test-brightness"

        def score(self, images, prompts):
            return as_tensor_images(images).mean(dim=(1, 2, 3))

    return Brightness()


TINY_HUNT = dict(prompts=["3"], seeds=[0, 1], steps=2, scale=2.0, strength=0.5, progress=False, batch_size=8,
                 layer_baselines=False)


def test_bogus_scope_fails_before_writing_the_checkpoint(tmp_path):
    from headhunter import SearchError
    from headhunter.workflow.hunt import hunt

    with pytest.raises(SearchError, match="scope"):
        hunt(_tiny_search_pipe(), _brightness(), scope="bogus", out_dir=tmp_path / "d", **TINY_HUNT)
    assert not (tmp_path / "d").exists()


def test_inf_scale_fails_before_the_search(tmp_path):
    from headhunter import SearchError
    from headhunter.workflow.hunt import hunt

    with pytest.raises(SearchError, match="finite"):
        hunt(_tiny_search_pipe(), _brightness(), out_dir=tmp_path / "d", **{**TINY_HUNT, "scale": math.inf})
    assert not (tmp_path / "d").exists()


def test_single_fresh_seed_with_set_metrics_fails_before_the_search(tmp_path, monkeypatch):
    from headhunter import SearchError
    import headhunter.workflow.hunt as workflow
    from headhunter.workflow.hunt import hunt

    pipe = _tiny_search_pipe()
    from headhunter.search.defaults import SearchDefaults

    monkeypatch.setattr(workflow, "model_defaults",
                        lambda p: SearchDefaults(set_metrics={"fd": lambda images, prompts: (0.0, (0.0, 0.0))}))
    with pytest.raises(SearchError, match="need at least 2 images per setting.*give 1"):
        hunt(pipe, _brightness(), out_dir=tmp_path / "d", eval_seeds=[100], **TINY_HUNT)
    assert not (tmp_path / "d").exists()


def test_late_failure_keeps_the_head_set_and_says_where(tmp_path, monkeypatch):
    from headhunter import SearchError
    import headhunter.workflow.hunt as workflow

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(workflow, "evaluate_result", broken)
    out = tmp_path / "run"
    with pytest.raises(SearchError, match=f"saved in {out / 'headset.safetensors'}.*No space left"):
        workflow.hunt(_tiny_search_pipe(), _brightness(), out_dir=out, eval_seeds=[100, 101], **TINY_HUNT)
    saved = hh.load_headset(out / "headset.safetensors")
    assert len(saved) == 1 and saved.metadata.origin == "search"
    assert not (out / "index.md").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], "is not JSON"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "units"}), "units: Field required"),
    (lambda text: text.replace('"done_batches": {', '"done_batches": {"x": [-3], '), "negative batch start"),
    (lambda text: text.replace('"units": {', '"units": {"u": {"one": {"a": 1.0}}, '), "pair index 'one'"),
    (lambda text: "[" * 5000 + "]" * 5000, "nested"),
    (lambda text: text.encode("utf-16"), "not UTF-8"),
])
def test_damaged_checkpoint_is_our_error_naming_the_file(tmp_path, damage, message):
    from headhunter import SearchError
    from headhunter.workflow.hunt import hunt

    pipe = _tiny_search_pipe()
    out = tmp_path / "run"
    hunt(pipe, _brightness(), out_dir=out, report=False, candidates=["L0H0"], **TINY_HUNT)
    state = out / "state.json"
    damaged = damage(state.read_text())
    (state.write_bytes if isinstance(damaged, bytes) else state.write_text)(damaged)
    with pytest.raises(SearchError, match=message) as info:
        hunt(pipe, _brightness(), out_dir=out, report=False, candidates=["L0H0"], **TINY_HUNT)
    assert str(state) in str(info.value) and "--no-resume" in str(info.value)


# ----- objective expressions from the command line ------------------------------------------------------------
@pytest.mark.parametrize("expression, message", [
    ("harmonic(" * 3000 + "brightness" + ")" * 3000, "nested more than 32 levels deep"),
    ("(" * 3000 + "brightness" + ")" * 3000, "nested more than 32 levels deep"),
    ("brightness*1e999", "number '1e999' is not finite"),
    ("gate(brightness > 1e999, brightness; 0)", "not finite"),
    ("brightness:a=1e999", "not a finite number"),
])
def test_objective_expressions_bound_depth_and_numbers(expression, message):
    from headhunter import ObjectiveError
    from headhunter.objective.expr import parse_objective

    with pytest.raises(ObjectiveError, match=message):
        parse_objective(expression)


def test_seeds_outside_torch_range_fail_before_the_search(tmp_path):
    from headhunter import SearchError
    from headhunter.workflow.hunt import hunt

    for kwargs in ({"seeds": [2**70]}, {"eval_seeds": [2**70]}):
        with pytest.raises(SearchError, match="seed"):
            hunt(_tiny_search_pipe(), _brightness(), out_dir=tmp_path / "d", **{**TINY_HUNT, **kwargs})
        assert not (tmp_path / "d").exists()
