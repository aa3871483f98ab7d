"""The built wheel holds every module and data file of the fixed layout and imports on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {"core": "headhunter", "plugins": "headhunter/plugins", "cli": "headhunter/cli", "headsets": "headhunter/headsets"}
DATA_SUFFIXES = (".py", ".json", ".safetensors", ".md")


def _source_files() -> set[str]:
    """Files that must be in the wheel, as wheel paths (sources under the four package folders)."""
    wanted = set()
    for folder, package in LAYOUT.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in DATA_SUFFIXES and "__pycache__" not in path.parts:
                rel = path.relative_to(ROOT / folder)
                if folder == "core" and rel.parts[0] in ("plugins", "cli", "headsets"):
                    continue
                wanted.add(f"{package}/{rel.as_posix()}")
    return wanted


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(out)],
        check=True, capture_output=True, text=True,
    )
    (built,) = out.glob("headhunter_guidance-*.whl")
    return built


@pytest.mark.slow
def test_wheel_contains_every_source_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_source_files() - names)
    assert not missing, f"missing from the wheel (add the package to pyproject.toml): {missing}"
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("dist-info/entry_points.txt"))).decode()
    assert "headhunter = headhunter.cli:main" in metadata


@pytest.mark.slow
def test_installed_wheel_imports_and_runs_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    code = (
        "import headhunter, headhunter.plugins, headhunter.cli; "
        "from headhunter.format.presets import list_presets; list_presets(); "
        "print(headhunter.__file__); print(headhunter.get_registry().names('perturbation'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(site))
    cli = subprocess.run([sys.executable, "-m", "headhunter.cli", "--version"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert cli.returncode == 0 and "headhunter" in cli.stdout


@pytest.mark.slow
def test_every_subpackage_imports_from_the_installed_wheel(wheel, tmp_path):
    """pyproject.toml lists the packages by hand: every folder of the layout must be in the wheel and import
    from it (not from the checkout), and the built-in plugins must be found through its entry points."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True)
    packages = sorted(
        ".".join([LAYOUT[folder].replace("/", "."), *init.parent.relative_to(ROOT / folder).parts])
        for folder in LAYOUT for init in (ROOT / folder).rglob("__init__.py") if "__pycache__" not in init.parts
    )
    code = (
        "import importlib, sys\n"
        f"names = {packages!r}\n"
        "for name in names:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(site)!r}), (name, module.__file__)\n"
        "from headhunter.plugin_system.registry import builtin_plugins\n"
        "print(len(names), len(builtin_plugins()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # every built-in plugin pyproject.toml declares is found through the installed wheel's entry points
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["headhunter"]
    assert result.stdout.split() == [str(len(packages)), str(len(declared))]
