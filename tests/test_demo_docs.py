"""The docs say what the default hunt does: docs/search.md's defaults sentence and the README's summary are
checked against the demo's search defaults (issue 27 item 5: the docs said prompts 0..9 while the demo ran
the unconditional prompt; the README applied the found set at w = 3 while it was found at w = 2)."""

from __future__ import annotations

from pathlib import Path

from headhunter.plugins.digits import DEMO_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def words(n: int) -> str:
    return f"{n} round" + ("s" if n != 1 else "")


def test_search_md_states_the_demo_defaults():
    text = " ".join((ROOT / "docs" / "search.md").read_text().split())
    d = DEMO_DEFAULTS
    sentence = text[text.index("its defaults (`headhunter.plugins.digits.DEMO_DEFAULTS`"):][:900]
    expected = [
        f"objective `{d['objective']}`",
        'the unconditional prompt `""`' if d["prompts"] == [""] else f"prompts {d['prompts']}",
        f"seeds {d['seeds'][0]}-{d['seeds'][-1]}",
        f"u = {d['strength']:g}", f"w = {d['scale']:g}", f"{d['steps']} steps",
        f"{words(d['rounds'])} of top {d['top_k']}",
        f"{d['schedule']} at budget {d['budget']:g} with {d['first_pairs']} first pairs",
        f"seeds {d['eval_seeds'][0]}-{d['eval_seeds'][-1]}",
    ]
    if d.get("eval_prompts"):
        expected.append(f"the prompts '{d['eval_prompts'][0]}'..'{d['eval_prompts'][-1]}'")
    missing = [e for e in expected if e not in sentence]
    assert missing == [], f"docs/search.md's defaults sentence lacks {missing}: {sentence[:400]}"


def test_readme_applies_the_found_set_as_it_was_found():
    text = (ROOT / "README.md").read_text()
    d = DEMO_DEFAULTS
    assert f"w = {d['scale']:g}" in text and "prompt `\"\"`" in text
    assert "headhunter.apply(pipe, headset):" in text  # the head set's own (recommended) scale, not another w
    assert f"keeps the top {d['top_k']}" in text and ("one greedy round" if d["rounds"] == 1 else f"{d['rounds']} greedy rounds") in text
