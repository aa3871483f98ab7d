"""HeadHunter search: Algorithm 1 exactly (against a brute-force reference), batching, determinism,
checkpoint/resume (including a real kill -9), refusal of changed settings, and the report files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from headhunter import GuidanceSettings, HeadSet, SearchError
from headhunter.engine.runner import Row, generate_rows
from headhunter.format.schema import GenerationSettings
from headhunter.contracts.objective import Objective, as_tensor_images
from headhunter.workflow.hunt import hunt

ROOT = Path(__file__).resolve().parents[1]


class Brightness(Objective):
    """Mean pixel value: a cheap objective every head moves a little."""

    name = "test-brightness"

    def score(self, images, prompts):
        return as_tensor_images(images).mean(dim=(1, 2, 3))


def tiny_digits_pipe(seed: int = 0):
    from headhunter.plugins.digits.model import build_pipeline, build_transformer

    torch.manual_seed(seed)
    pipe = build_pipeline(build_transformer(num_layers=2, num_attention_heads=3, attention_head_dim=8))
    for module in (pipe.transformer, pipe.label_encoder):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


SETTINGS = dict(prompts=["3", "7"], seeds=[0, 1], steps=3, scale=2.0, strength=0.5, progress=False)


def reference_hunt(pipe, objective, rounds, top_k, prompts, seeds, steps, scale, strength):
    """Algorithm 1 written out plainly: one candidate at a time, each image generated on its own."""
    from headhunter import get_registry

    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    gen = GenerationSettings(guidance=GuidanceSettings(scale=scale), steps=steps)
    pool = [(layer, head) for layer, s in enumerate(sites) for head in range(s.num_heads)]
    selected: list[tuple[int, int]] = []
    history = []
    for _ in range(rounds):
        scores = {}
        for cand in [c for c in pool if c not in selected]:
            hs = HeadSet.from_heads([(l, h, strength) for l, h in selected + [cand]], sites=sites,
                                    architecture=adapter.architecture)
            values = [float(objective(generate_rows(pipe, [Row(hs, p, s)], gen), [p])[0]) for p in prompts for s in seeds]
            scores[cand] = sum(values) / len(values)
        ranked = sorted(scores, key=lambda c: -scores[c])
        selected += ranked[:top_k]
        history.append(scores)
    return selected, history


def test_hunt_matches_brute_force_algorithm_1():
    pipe = tiny_digits_pipe()
    result = hunt(pipe, Brightness(), rounds=2, top_k=1, batch_size=5, **SETTINGS)
    ref_selected, ref_history = reference_hunt(pipe, Brightness(), 2, 1, ["3", "7"], [0, 1], 3, 2.0, 0.5)
    assert [(h.layer, h.head) for h in result.headset] == sorted(ref_selected)
    assert [r.added[0] for r in result.rounds] == [f"L{l}H{h}" for l, h in ref_selected]
    for r, ref in zip(result.rounds, ref_history):
        assert set(r.scores) == {f"L{l}H{h}" for l, h in ref}
        for (l, h), value in ref.items():
            assert r.scores[f"L{l}H{h}"] == pytest.approx(value, abs=1e-5)
    assert all(h.strength == 0.5 for h in result.headset)
    meta = result.headset.metadata
    assert meta.origin == "search" and meta.search.rounds == 2 and meta.search.seeds == [0, 1]
    assert meta.search.round_scores == [[r.set_score] for r in result.rounds]


def test_scheduled_search_matches_brute_force_over_head_interval_pairs():
    """A scheduled search (intervals=K): the candidates are every (head, interval of sigma) pair; each score
    equals images made one at a time with the head restricted to that interval (HeadSet.restricted, another
    path than the search's notation items); the found set holds the schedule and round 2 builds on round 1."""
    from headhunter import get_registry

    pipe = tiny_digits_pipe()
    result = hunt(pipe, Brightness(), rounds=2, top_k=1, intervals=2, batch_size=7, **SETTINGS)
    sites = get_registry().adapter_for(pipe).sites(pipe)
    arch = get_registry().adapter_for(pipe).architecture
    halves = {"[0,0.5)": (0.0, 0.5), "[0.5,1]": (0.5, 1.0)}
    assert set(result.rounds[0].scores) == {f"L{l}H{h}@{iv}" for l in range(2) for h in range(3) for iv in halves}
    gen = GenerationSettings(guidance=GuidanceSettings(scale=2.0), steps=3)

    def piece(item):
        head, _, iv = item.partition("@")
        one = HeadSet.from_notation(head, sites=sites, architecture=arch, strength=0.5)
        return one.restricted(*halves[iv])

    for r in result.rounds:
        before = None
        for item in r.selected_before:
            before = piece(item) if before is None else before.merge(piece(item))
        for item, score in list(r.scores.items())[:4]:
            hs = piece(item) if before is None else before.merge(piece(item))
            values = [float(Brightness()(generate_rows(pipe, [Row(hs, p, s)], gen), [p])[0])
                      for p in SETTINGS["prompts"] for s in SETTINGS["seeds"]]
            assert score == pytest.approx(sum(values) / len(values), abs=1e-5), item
        assert r.added == [max(r.scores, key=r.scores.get)]
    found = result.headset
    assert found.scheduled and found.bounds == (0.0, 0.5, 1.0)
    assert sorted(str(h) for h in found) == sorted(str(h) for h in piece(result.rounds[0].added[0]).merge(
        piece(result.rounds[1].added[0])))
    assert "scheduled over 2 intervals" in found.metadata.description
    with pytest.raises(SearchError, match=r"intervals=1.*\[2, 64\]"):
        hunt(pipe, Brightness(), intervals=1, **SETTINGS)


def test_refine_leaves_each_piece_out_and_drops_only_what_hurts(tmp_path):
    """hunt(refine=S): every (head, interval) piece's contribution objective(S) - objective(S minus it) equals
    images made one at a time (Brightness is a plain objective: a t interval at the Bonferroni level); the
    refined set is S without the pieces whose interval is below 0, each head keeping its strength."""
    import numpy as np

    from headhunter import get_registry
    from headhunter.search.refine import RefineResult
    from headhunter.search.stats import t_quantile

    pipe = tiny_digits_pipe()
    sites = get_registry().adapter_for(pipe).sites(pipe)
    arch = get_registry().adapter_for(pipe).architecture
    original = HeadSet.from_notation("L0H1@0.5, L1H2", sites=sites, architecture=arch, name="S")
    settings = {**SETTINGS, "seeds": [0, 1, 2]}
    result = hunt(pipe, Brightness(), refine=original, batch_size=5, **settings)
    assert isinstance(result, RefineResult) and result.intervals == [(0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0)]
    assert [e.piece for e in result.effects][:2] == ["L0H1@[0,0.3333333333333333)",
                                                      "L0H1@[0.3333333333333333,0.6666666666666666)"]
    gen = GenerationSettings(guidance=GuidanceSettings(scale=2.0), steps=3)
    pairs = [(p, s) for p in settings["prompts"] for s in settings["seeds"]]

    def values(hs):
        return np.array([float(Brightness()(generate_rows(pipe, [Row(hs, p, s)], gen), [p])[0]) for p, s in pairs])

    whole = values(original)
    level = 1 - 0.05 / 6
    assert result.level == pytest.approx(level)
    for e in result.effects[:3]:
        others = [h for h in original if f"L{h.layer}H{h.head}" != e.head]
        layer, head = int(e.head[1]), int(e.head[3])
        u = next(h.strength for h in original if h.layer == layer)
        keep = [iv for iv in result.intervals if iv != e.interval]
        without = HeadSet.from_heads([(h.layer, h.head, h.strength) for h in others]
                                     + [(layer, head, u, iv) for iv in keep], sites=sites, architecture=arch)
        d = whole - values(without)
        half = t_quantile(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        assert e.contribution.mean == pytest.approx(d.mean(), abs=1e-5)
        assert e.contribution.low == pytest.approx(d.mean() - half, abs=1e-5)
        assert e.verdict == ("keep" if d.mean() - half > 0 else "drop" if d.mean() + half < 0 else "unclear")
    kept = {(e.head, e.interval) for e in result.effects if e.verdict != "drop"}
    refined = {(f"L{h.layer}H{h.head}", iv) for iv in result.intervals for h in result.headset.at(sum(iv) / 2)}
    assert refined == kept  # (without a drop the refined set is S itself: equal maps merge into one interval)
    assert all(h.strength == (0.5 if h.layer == 0 else 1.0) for h in result.headset)
    with pytest.raises(SearchError, match="already holds one"):
        hunt(pipe, Brightness(), refine=original.restricted(0, 0.5), **SETTINGS)
    out = hunt(pipe, Brightness(), refine=original, intervals=2, out_dir=tmp_path / "r", eval_seeds=[50, 51],
               batch_size=8, **SETTINGS)
    assert (tmp_path / "r" / "refine.md").read_text().count("| L") == 2 and (tmp_path / "r" / "refine.png").exists()
    assert HeadSet.from_file(tmp_path / "r" / "headset.safetensors") == out.headset
    assert out.evaluation is not None and set(out.evaluation.settings) == {"no guidance", "original", "refined"}


def test_interval_candidates_expand_heads_and_keep_given_intervals():
    from headhunter.search.search import interval_candidates

    assert interval_candidates(["L0H1", "L2H0@[0,0.25)"], 3) == [
        "L0H1@[0,0.3333333333333333)", "L0H1@[0.3333333333333333,0.6666666666666666)", "L0H1@[0.6666666666666666,1]",
        "L2H0@[0,0.25)"]
    pipe = tiny_digits_pipe()
    result = hunt(pipe, Brightness(), candidates=["L0H0@[0,0.5)", "L1H2@[0.5,1]"], **SETTINGS)
    assert set(result.rounds[0].scores) == {"L0H0@[0,0.5)", "L1H2@[0.5,1]"}
    with pytest.raises(SearchError, match=r"candidate: .*write \[0,0.5\)"):
        hunt(pipe, Brightness(), candidates=["L0H0@[0,0.5]"], **SETTINGS)


@pytest.mark.slow
def test_batched_equals_one_at_a_time_and_is_deterministic():
    pipe = tiny_digits_pipe()
    a = hunt(pipe, Brightness(), batch_size=64, **SETTINGS)
    b = hunt(pipe, Brightness(), batch_size=1, **SETTINGS)
    c = hunt(pipe, Brightness(), batch_size=64, **SETTINGS)
    for head, value in a.rounds[0].scores.items():
        assert b.rounds[0].scores[head] == pytest.approx(value, abs=1e-5)
    assert a.rounds[0].scores == c.rounds[0].scores
    assert a.headset == c.headset


def test_top_k_and_candidates_restrict_the_pool():
    pipe = tiny_digits_pipe()
    result = hunt(pipe, Brightness(), rounds=1, top_k=2, candidates=["L1H0", "L1H2", 0], batch_size=16, **SETTINGS)
    assert set(result.rounds[0].scores) == {"L0H0", "L0H1", "L0H2", "L1H0", "L1H2"}
    assert len(result.headset) == 2
    with pytest.raises(SearchError, match="candidate layer 9 out of range"):
        hunt(pipe, Brightness(), candidates=[9], **SETTINGS)
    with pytest.raises(SearchError, match="3 heads asked for, but the pool has only 2"):
        hunt(pipe, Brightness(), rounds=3, candidates=["L0H0", "L0H1"], **SETTINGS)


@pytest.mark.slow
def test_changed_settings_are_refused_naming_the_setting(tmp_path):
    pipe = tiny_digits_pipe()
    hunt(pipe, Brightness(), out_dir=tmp_path, report=False, batch_size=16, **SETTINGS)
    changed = {**SETTINGS, "scale": 3.0}
    with pytest.raises(SearchError, match=r"holds a search with guidance\.scale=2\.0, but this one has guidance\.scale=3\.0"):
        hunt(pipe, Brightness(), out_dir=tmp_path, report=False, batch_size=16, **changed)
    hunt(pipe, Brightness(), out_dir=tmp_path, report=False, resume=False, batch_size=16, **changed)


@pytest.mark.slow
def test_resume_does_not_redo_finished_batches(tmp_path, monkeypatch):
    pipe = tiny_digits_pipe()
    full = hunt(pipe, Brightness(), out_dir=tmp_path / "a", report=False, batch_size=4, **SETTINGS)
    import headhunter.engine.runner as _runner

    calls = []
    original = _runner.generate_rows
    monkeypatch.setattr(_runner, "generate_rows", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = hunt(pipe, Brightness(), out_dir=tmp_path / "a", report=False, batch_size=4, **SETTINGS)
    assert calls == [] and again.headset == full.headset and again.rounds[0].scores == full.rounds[0].scores


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_search import tiny_digits_pipe, Brightness, SETTINGS
    from headhunter.workflow.hunt import hunt
    settings = {{**SETTINGS, **{extra}}}
    r = hunt(tiny_digits_pipe(), Brightness(), rounds=2, out_dir={out!r}, report=False, batch_size=2, **settings)
    print("RESULT", r.headset.notation(), repr([sorted(x.scores.items()) for x in r.rounds]),
          repr([(sorted(x.pairs.items()), sorted(x.dropped.items()), x.images) for x in r.rounds]),
          repr([None if x.calibration is None else (x.calibration.p_value, sorted(x.calibration.real.items()),
                [v.tolist() for _, v in sorted(x.calibration.null_stats.items())]) for x in r.rounds]))
    """
)


#: exhaustive (Algorithm 1), and the calibrated racing rule with its null replay (issue 23): stages, drops and
#: the calibration's Monte Carlo draws must all come back identical after a kill -9
KILL_CASES = {"exhaustive": {}, "racing+calibrate": dict(allocation="racing", budget=0.5, first_pairs=4,
                                                         calibrate=True, seeds=list(range(8))),
              "scheduled": dict(intervals=2)}  # issue 26: (head, interval) candidates


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KILL_CASES))
def test_kill_minus_9_then_resume_gives_the_same_result(tmp_path, case):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = lambda out: KILL_SCRIPT.format(tests=str(ROOT / "tests"), out=str(out), extra=repr(KILL_CASES[case]))  # noqa: E731
    straight = subprocess.run([sys.executable, "-c", script(tmp_path / "straight")],
                              capture_output=True, text=True, env=env, timeout=300)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", script(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    state = out / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a few batches are checkpointed, mid-search
        if state.exists() and sum(len(v) for v in json.loads(state.read_text())["done_batches"].values()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sum(len(v) for v in json.loads(state.read_text())["done_batches"].values())
    assert done_before >= 5
    resumed = subprocess.run([sys.executable, "-c", script(out)],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    last = lambda text: next(l for l in text.splitlines() if l.startswith("RESULT"))  # noqa: E731
    assert last(resumed.stdout) == last(straight.stdout)
    assert list(out.glob("*.tmp")) == []


@pytest.mark.slow
def test_report_files_are_written(tmp_path):
    pipe = tiny_digits_pipe()
    result = hunt(pipe, Brightness(), out_dir=tmp_path, eval_seeds=[100, 101], batch_size=16, **SETTINGS)
    for name in ("index.md", "heatmap_round0.png", "curve.png", "grid.png", "scores.csv", "scores.json",
                 "evaluation.json", "headset.safetensors", "headset.json", "state.json"):
        assert (tmp_path / name).is_file(), name
    index = (tmp_path / "index.md").read_text()
    assert "found head set" in index and ("beats" in index or "not distinguishable" in index or "worse" in index)
    from headhunter import load_headset

    saved = load_headset(tmp_path / "headset.safetensors")
    assert saved.notation() == result.headset.notation()
    assert "found head set" in saved.metadata.search.evaluation
    with pytest.raises(SearchError, match="evaluation seeds .* were used by the search"):
        hunt(pipe, Brightness(), out_dir=tmp_path / "b", eval_seeds=[0, 5], batch_size=16, **SETTINGS)


def test_verdicts_against_controls_and_on_unseen_prompts_are_reported(tmp_path):
    """The found set is judged on fresh seeds against random head sets of its size and every layer, and,
    with eval_prompts, on prompts the search never saw; the report and the head set's metadata say so."""
    pipe = tiny_digits_pipe()
    result = hunt(pipe, Brightness(), out_dir=tmp_path, eval_seeds=[100, 101, 102], batch_size=16, controls=3,
                  eval_prompts=["5", "6"], **SETTINGS)
    randoms = [n for n in result.evaluation.settings if n.startswith("random set ")]
    assert len(randoms) == 3 and result.unseen_evaluation.prompts == ["5", "6"]
    assert set(result.unseen_evaluation.settings) == {n for n in result.evaluation.settings if not n.startswith("random set ")}
    summary = result.headset.metadata.search.evaluation
    assert {"vs_no_guidance", "vs_random", "unseen_prompts"} <= set(summary)
    assert 0.0 <= summary["vs_random"]["beats_fraction"] <= 1.0 and summary["vs_no_guidance"]["mde"] > 0
    index = (tmp_path / "index.md").read_text()
    assert "Verdicts against the controls" in index and "Verdicts on prompts the search never saw" in index
    assert "detectable at 80 % power" in index and "random set 1 |" not in index  # summarised, not listed


def test_calibrate_reports_each_racing_round_beside_its_null(tmp_path):
    pipe = tiny_digits_pipe()
    settings = {**SETTINGS, "seeds": list(range(8))}
    result = hunt(pipe, Brightness(), rounds=1, batch_size=32, schedule="racing", first_pairs=4, budget=0.5,
                  calibrate=True, out_dir=tmp_path, eval_seeds=[100, 101], controls=0, **settings)
    cal = result.rounds[0].calibration
    assert cal is not None and isinstance(cal.distinguishable, bool) and 0.0 < cal.p_value <= 1.0
    assert {"drops", "leaders", "stability", "gain"} <= set(cal.real)
    assert "beside its null" in (tmp_path / "index.md").read_text()
    with pytest.raises(SearchError, match="needs allocation='racing'"):
        hunt(pipe, Brightness(), rounds=1, schedule="exhaustive", calibrate=True, **settings)


class Darkness(Objective):
    name = "test-darkness"

    def score(self, images, prompts):
        return 1.0 - as_tensor_images(images).mean(dim=(1, 2, 3))


def test_composite_objectives_combine_per_candidate_means_as_the_paper_code():
    """harmonic(A, B) of a candidate = harmonic(mean A, mean B) over its images, not mean of per-image harmonics."""
    from headhunter.objective.expr import HarmonicMean

    pipe = tiny_digits_pipe()
    objective = HarmonicMean([Brightness(), Darkness()])
    result = hunt(pipe, objective, candidates=["L0H1"], batch_size=16, **SETTINGS)
    adapter_sites = result.sites
    hs = HeadSet.from_heads([(0, 1, 0.5)], sites=adapter_sites, architecture=result.headset.metadata.architecture)
    images = generate_rows(pipe, [Row(hs, p, s) for p in ["3", "7"] for s in [0, 1]], GenerationSettings(guidance=GuidanceSettings(scale=2.0), steps=3))
    a = Brightness()(images, ["x"]).double().mean().item()
    b = Darkness()(images, ["x"]).double().mean().item()
    assert result.rounds[0].scores["L0H1"] == pytest.approx(2 / (1 / a + 1 / b), rel=1e-5)
    assert result.settings.objective == "harmonic(test-brightness, test-darkness)"


@pytest.mark.slow
def test_search_evaluation_and_report_are_separate_steps(tmp_path):
    """The loop returns a result and writes only its checkpoint; search and report never import each other."""
    import ast

    from headhunter.search.evaluation import evaluate_result
    from headhunter.report.report import write_report
    from headhunter.search.search import SearchSettings, search

    for module, other in (("search/search", "headhunter.report"), ("report/report", "headhunter.search.search")):
        tree = ast.parse((ROOT / "core" / f"{module}.py").read_text())
        imported = {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(name == other or name.startswith(other + ".") for name in imported), (module, imported)
    pipe = tiny_digits_pipe()
    settings = SearchSettings(model="tiny", objective="test-brightness", prompts=["3"], seeds=[0, 1], steps=3,
                              guidance={"scale": 2.0}, strength=0.5, candidates=["L0H0", "L1H2"], batch_size=8)
    result = search(pipe, settings, Brightness(), out_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert set(result.comparison_headsets()) == {"no guidance", "best layer (L%s)" % result.best_layer[0][1:],
                                                 "found head set", "layer L0", "layer L1"}
    evaluation = evaluate_result(pipe, result, Brightness(), [50, 51], progress=False)
    write_report(result, tmp_path, evaluation)
    assert (tmp_path / "index.md").is_file() and "found head set" in (tmp_path / "index.md").read_text()


def test_racing_drops_what_is_confidently_behind_and_reports_its_evidence():
    """Racing = exhaustive on the first pairs; candidates it drops were behind the leader on those pairs;
    every candidate carries a paired interval vs S; leaders include the selection; stability in [0, 1]."""
    pipe = tiny_digits_pipe()
    settings = {**SETTINGS, "seeds": list(range(8))}
    full = hunt(pipe, Brightness(), rounds=1, batch_size=32, schedule="exhaustive", **settings)
    race = hunt(pipe, Brightness(), rounds=1, batch_size=32, schedule="racing", first_pairs=4, budget=0.5, **settings)
    r, f = race.rounds[0], full.rounds[0]
    assert r.stages[0] == 4 and set(r.scores) == set(f.scores)
    assert r.images <= f.images // 2 and f.images == 6 * 16  # the budget caps what racing spends
    for head, n in r.pairs.items():
        assert n in r.stages and r.vs_set[head].n == n
        assert n == r.stages[-1] or head in r.dropped
    assert r.added[0] in r.leaders and set(r.leaders) <= set(r.scores) - set(r.dropped)
    assert 0.0 <= r.stability <= 1.0 and r.frequency[r.added[0]] >= r.stability
    # the exhaustive schedule: every candidate on all pairs, its interval is the paired t interval
    import numpy as np

    d = f.vs_set[f.added[0]]
    assert d.mean == pytest.approx(f.scores[f.added[0]] - full.baseline_score, abs=1e-9)
    assert d.n == 16 and d.low < d.mean < d.high
    assert f.set_vs_baseline.mean == pytest.approx(f.set_score - full.baseline_score, abs=1e-9)
    assert all(0.0 <= v <= 1.0 for v in f.frequency.values()) and np.isclose(sum(f.frequency.values()), 1.0)


def test_a_resumed_search_says_so_and_its_bar_names_the_stage_and_ends_at_100(tmp_path, capsys):
    """Long work says what it is doing: the bar's description names the phase (round and stage), the bar ends
    at 100 % even where racing's total was a cap, and a rerun says it resumed and counts the resumed images."""
    import headhunter.search.search as search_module

    bars = []
    real = search_module.tqdm

    described = []

    def recording(*args, **kwargs):
        bar = real(*args, **{**kwargs, "disable": False})
        bars.append(bar)
        shown = bar.set_description_str
        bar.set_description_str = lambda text, refresh=True: (described.append(text), shown(text, refresh))[1]
        return bar

    pipe = tiny_digits_pipe()
    settings = {**SETTINGS, "progress": True}
    search_module.tqdm = recording
    try:
        first = hunt(pipe, Brightness(), out_dir=tmp_path, report=False, batch_size=4, **settings)
        first_err = capsys.readouterr().err
        again = hunt(pipe, Brightness(), out_dir=tmp_path, report=False, batch_size=4, **settings)
    finally:
        search_module.tqdm = real
    err = capsys.readouterr().err
    assert f"resuming the search in {tmp_path}:" in err and "are not made again" in err
    assert again.resumed > 0 and first.resumed == 0 and again.headset == first.headset
    for bar in bars:
        assert bar.n == bar.total and bar.desc == "headhunter: search done"
    assert described[:2] == ["headhunter: no guidance + 2 layers", "headhunter: round 1/1"], described
    assert "headhunter:" in first_err


def test_ctrl_c_says_interrupted_and_that_the_same_command_resumes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import headhunter.workflow.hunt as workflow
    from headhunter.cli import make_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "hunt", interrupted)
    monkeypatch.setattr("headhunter.cli.hunt._load", lambda model: model)
    out = CliRunner().invoke(make_cli(), ["hunt", "--out", str(tmp_path / "run")])
    assert out.exit_code == 130
    lines = [x for x in out.output.splitlines() if x.strip()]
    assert lines == [f"Error: interrupted; rerun the same command to resume: finished batches are kept in "
                     f"{tmp_path / 'run'}/state.json (--no-resume starts over)"]


def test_cli_hunt_with_its_report_prints_the_summary(tmp_path, monkeypatch):
    """The CLI's closing summary reads the evaluation summary the found head set carries, whatever comparison
    entries it holds beside the settings (a KeyError there once ended a 20-minute demo with an internal error)."""
    from click.testing import CliRunner

    from headhunter.cli import make_cli

    monkeypatch.setattr("headhunter.cli.hunt._load", lambda model: tiny_digits_pipe())
    out = CliRunner().invoke(make_cli(), [
        "hunt", "--objective", "digit-confidence", "--prompt", "3", "--seeds", "0-1", "--eval-seeds", "100-103",
        "--rounds", "1", "--steps", "2", "--allocation", "exhaustive", "--out", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert "fresh seeds, found head set:" in out.output and "found head set" in out.output
    assert "internal error" not in out.output and "report:" in out.output
    assert (tmp_path / "run" / "index.md").is_file()
    # no set metric with per-sample features on the tiny model: the point-estimate fallback (test_verdicts has the paired one)
    assert "whole layers that dominate the found set (better objective and yardstick):" in out.output
    # with paired verdicts (a yardstick with features, as FD-digits on the shipped model) the line reads them
    fake = {"vs_layers": [{"rival": "layer L0", "dominance": "layer L0 dominates the found set"},
                          {"rival": "layer L1", "dominance": "the found set dominates layer L1"},
                          {"rival": "layer L2", "dominance": "neither dominates: objective not distinguishable, x"}]}
    monkeypatch.setattr("headhunter.search.verdicts.verdicts", lambda evaluation: fake)
    again = CliRunner().invoke(make_cli(), [
        "hunt", "--objective", "digit-confidence", "--prompt", "3", "--seeds", "0-1", "--eval-seeds", "100-103",
        "--rounds", "1", "--steps", "2", "--allocation", "exhaustive", "--out", str(tmp_path / "run")])
    assert again.exit_code == 0, again.output
    assert ("whole layers that dominate the found set (paired intervals, objective and yardstick): layer L0; "
            "the found set dominates: layer L1") in again.output


def test_a_hostile_head_set_name_is_inert_markdown_in_the_reports(tmp_path):
    """Names are made terminal-safe where they enter (headhunter.format.text); in the markdown reports they are
    also escaped as the model card escapes them (no raw HTML, no heading or front-matter line)."""
    from headhunter import get_registry

    pipe = tiny_digits_pipe()
    sites = get_registry().adapter_for(pipe).sites(pipe)
    evil = "x\x1b]0;t\x07\n---\n<script>alert(1)</script>"
    original = HeadSet.from_notation("L0H1, L1H2", sites=sites, architecture="sd3", name=evil)
    hunt(pipe, Brightness(), refine=original, intervals=2, out_dir=tmp_path / "r", eval_seeds=[50, 51],
         batch_size=8, **SETTINGS)
    hunt(pipe, Brightness(), name=evil, out_dir=tmp_path / "h", eval_seeds=[50, 51], controls=0, batch_size=8,
         **SETTINGS)
    for page in (tmp_path / "r" / "refine.md", tmp_path / "h" / "index.md"):
        text = page.read_text()
        assert "<script>" not in text and "\x1b" not in text and "\x07" not in text
        assert not any(line.strip() == "---" for line in text.splitlines())
