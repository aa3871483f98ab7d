"""One vocabulary of options across verbs, checked on every option of every verb found by walking the click
tree of `make_cli()` (plugins' commands included), not on a hand-made list (issue 27 item 6).

Rules: an option name means one kind of value everywhere (a flag, a number, an integer, seeds, a folder, a
file, a dtype, ...); `--out` is always a folder and `-o/--output` always a file; `--private` always comes with
`--public`; `--dtype` takes the same names everywhere; no help shows click's `FLOAT RANGE` / `INTEGER RANGE`
metavars beside our `NUMBER` / `INTEGER`. Old spellings stay accepted as secondary names of the same option
(`--schedule`, `bench --heads`, `bench --json FILE`), so only an option's first long name is the vocabulary.
"""

from __future__ import annotations

from collections import defaultdict

import click
import pytest
from click.testing import CliRunner

from headhunter.cli import make_cli
from headhunter.cli.params import BoundedInt, Device, DType, FiniteFloat, IntList, PluginName, Scope, Seeds


def walk(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


CLI = make_cli()
COMMANDS = list(walk(CLI))
OPTIONS = [(" ".join(path) or "headhunter", p) for path, cmd in COMMANDS for p in cmd.params
           if isinstance(p, click.Option) and not p.hidden]


def primary(option: click.Option) -> str:
    return next(o for o in option.opts if o.startswith("--"))


def kind(option: click.Option) -> str:
    """The kind of value an option takes, by its parameter type."""
    t = option.type
    if option.is_flag:
        return "flag"
    for cls, name in ((DType, "dtype"), (Scope, "scope"), (Seeds, "seeds"), (IntList, "list"), (Device, "device"),
                      (PluginName, "plugin name"), (FiniteFloat, "number"), (BoundedInt, "integer")):
        if isinstance(t, cls):
            return name
    if isinstance(t, click.Path):
        return "file" if not t.dir_okay else "folder" if not t.file_okay else "path"
    if isinstance(t, (click.Choice, click.types.StringParamType)):
        return "text"  # free text or a closed list of words: the same kind to a user
    return f"other:{type(t).__name__}"


def test_the_walk_finds_every_builtin_verb():
    names = {path[0] for path, _ in COMMANDS if path}
    assert {"inspect", "show", "generate", "hunt", "atlas", "push", "pull", "search", "plugins", "presets", "bench"} <= names
    assert len(OPTIONS) > 80


def test_an_option_name_means_one_kind_of_value_everywhere():
    kinds: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for where, option in OPTIONS:
        kinds[primary(option)][kind(option)].append(where)
    mixed = {name: dict(by_kind) for name, by_kind in kinds.items() if len(by_kind) > 1}
    assert mixed == {}, f"same option name, different kinds of value: {mixed}"


def test_numbers_and_integers_use_the_checked_types_and_metavars():
    ctx = click.Context(CLI)
    for where, option in OPTIONS:
        if option.is_flag:
            continue
        assert not kind(option).startswith("other"), (where, primary(option), type(option.type))
        if isinstance(option.type, (click.FloatRange, click.IntRange)):
            assert isinstance(option.type, (FiniteFloat, BoundedInt)), (where, primary(option), "use FiniteFloat/BoundedInt")
        metavar = option.make_metavar(ctx)
        assert "RANGE" not in metavar and metavar not in ("FLOAT", "INT"), (where, primary(option), metavar)


def test_out_is_a_folder_and_output_a_file_everywhere():
    for where, option in OPTIONS:
        names = set(option.opts) | set(option.secondary_opts)
        if "--out" in names:
            assert kind(option) == "folder", (where, option.opts)
        if "--output" in names or "-o" in names:
            assert {"-o", "--output"} <= names and kind(option) == "file", (where, option.opts)


def test_private_comes_with_public_and_dtype_takes_one_set_of_names():
    for where, option in OPTIONS:
        if "--private" in option.opts:
            assert option.secondary_opts == ["--public"] and option.default is None, where
        if primary(option) == "--dtype":
            assert isinstance(option.type, DType), where


@pytest.mark.parametrize("old, new", [("fp32", "float32"), ("bf16", "bfloat16"), ("FP16", "float16"), ("float16", "float16")])
def test_dtype_old_spellings_are_accepted(old, new):
    assert DType().convert(old, None, None) == new
    with pytest.raises(click.BadParameter, match="float32"):
        DType().convert("int8", None, None)


def test_every_verbs_help_renders_with_the_same_vocabulary():
    runner = CliRunner()
    for path, _ in COMMANDS:
        out = runner.invoke(CLI, [*path, "--help"])
        assert out.exit_code == 0, (path, out.output)
        assert "FLOAT RANGE" not in out.output and "INTEGER RANGE" not in out.output, path


def test_generate_counts_share_the_seed_bound_and_the_last_seed_fits_torch():
    from headhunter.cli.params import MAX_SEED, MAX_SEEDS, check_image_seeds, parse_seeds

    generate = CLI.commands["generate"]
    num_images = next(p for p in generate.params if p.name == "num_images")
    assert isinstance(num_images.type, BoundedInt) and num_images.type.max == MAX_SEEDS  # one bound with --seeds
    with pytest.raises(ValueError, match=f"more than {MAX_SEEDS} seeds"):
        parse_seeds(f"0-{MAX_SEEDS}")
    check_image_seeds(MAX_SEED, 1)  # the edges are allowed
    check_image_seeds(MAX_SEED - 9, 5, prompts=2)
    check_image_seeds(0, MAX_SEEDS // 4, prompts=4)
    with pytest.raises(click.BadParameter, match=r"allowed: \[0, 9223372036854775798\] for 10 image"):
        check_image_seeds(MAX_SEED - 8, 5, prompts=2)
    with pytest.raises(click.BadParameter, match="at most 100000 in all"):
        check_image_seeds(0, MAX_SEEDS // 4 + 1, prompts=4)
