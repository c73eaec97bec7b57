"""Packaging: setup.cfg lists every (sub)package, and a built wheel works outside editable mode."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("privfl", "attacks", "defenses", "mechanisms", "evaluations")
IMPORTS = (
    "privfl",
    "privfl.attacks",
    "privfl.defenses",
    "privfl.mechanisms",
    "privfl.evaluations",
    "privfl.data",
    "privfl.fl",
)


def _options() -> tuple[list[str], dict[str, str]]:
    cfg = configparser.ConfigParser()
    assert cfg.read(ROOT / "setup.cfg"), "setup.cfg not found"
    packages = [p.strip() for p in cfg["options"]["packages"].splitlines() if p.strip()]
    package_dir = {}
    for line in cfg["options"]["package_dir"].splitlines():
        if line.strip():
            name, _, folder = line.partition("=")
            package_dir[name.strip()] = folder.strip()
    return packages, package_dir


def _folder_to_package(folder: Path, package_dir: dict[str, str]) -> str | None:
    """The dotted package a source folder installs as, per ``package_dir`` (longest mapping wins)."""
    rel = folder.relative_to(ROOT).as_posix()
    best = None
    for pkg, src in package_dir.items():
        if rel == src or rel.startswith(src + "/"):
            if best is None or len(src) > len(package_dir[best]):
                best = pkg
    if best is None:
        return None
    rest = rel[len(package_dir[best]) :].strip("/")
    return best + ("." + rest.replace("/", ".") if rest else "")


def _package_to_folder(package: str, package_dir: dict[str, str]) -> Path:
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in package_dir:
            return ROOT / package_dir[head] / Path(*parts[i:])
    return ROOT / Path(*parts)


def _source_packages() -> list[Path]:
    found = []
    for top in SOURCE_DIRS:
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found.append(init.parent)
    return sorted(found)


def test_package_dir_maps_the_component_folders():
    _, package_dir = _options()
    assert package_dir.get("privfl") == "privfl"
    for folder in ("attacks", "defenses", "mechanisms", "evaluations"):
        assert package_dir.get(f"privfl.{folder}") == folder


def test_every_source_package_is_listed():
    packages, package_dir = _options()
    folders = _source_packages()
    assert {ROOT / d for d in SOURCE_DIRS} <= set(folders)  # every top folder is a package
    missing = {}
    for folder in folders:
        dotted = _folder_to_package(folder, package_dir)
        assert dotted is not None, f"{folder} is not under any package_dir mapping"
        if dotted not in packages:
            missing[str(folder.relative_to(ROOT))] = dotted
    assert not missing, f"folders with __init__.py missing from setup.cfg [options] packages: {missing}"


def test_every_listed_package_exists():
    packages, package_dir = _options()
    assert len(packages) == len(set(packages))
    for package in packages:
        folder = _package_to_folder(package, package_dir)
        assert (folder / "__init__.py").is_file(), f"{package} is listed but {folder}/__init__.py does not exist"


def test_mapping_helpers_detect_a_missing_subpackage():
    # The check above must be able to fail: an unlisted subfolder maps to a package not in the list.
    packages, package_dir = _options()
    fake = ROOT / "attacks" / "not_listed"
    assert _folder_to_package(fake, package_dir) == "privfl.attacks.not_listed"
    assert "privfl.attacks.not_listed" not in packages
    assert _folder_to_package(ROOT / "privfl" / "fl", package_dir) == "privfl.fl"
    assert _package_to_folder("privfl.defenses", package_dir) == ROOT / "defenses"


# --------------------------------------------------------------------------------------------
# A real wheel, installed into a plain directory, imported from a neutral working directory
# --------------------------------------------------------------------------------------------
_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "results", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", ".hypothesis", "*.pyc",
)

_CHECK = textwrap.dedent(
    """
    import importlib, json
    out = {}
    for name in IMPORTS_PLACEHOLDER:
        mod = importlib.import_module(name)
        out[name] = getattr(mod, "__file__", None)
    import privfl
    agg = privfl.make("aggregator", "mean")
    import torch
    out["mean"] = agg(torch.tensor([[1.0, 2.0], [3.0, 6.0]])).tolist()
    from importlib import resources
    specs = resources.files("privfl.evaluations") / "specs"
    out["specs"] = sorted(p.name for p in specs.iterdir() if p.name.endswith(".yaml")) if specs.is_dir() else []
    print(json.dumps(out))
    """
).replace("IMPORTS_PLACEHOLDER", repr(IMPORTS))


@pytest.mark.slow
def test_wheel_installs_and_imports_outside_editable_mode(tmp_path):
    # Build from a copy of the source tree so the build leaves no build/ or egg-info changes in the
    # checkout (other work runs there concurrently); the copy holds the same files the repo does.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
         "-q", "-w", str(dist), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    wheels = list(dist.glob("privfl-*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
         "--target", str(site), str(wheels[0])],
        check=True, capture_output=True, text=True, timeout=300,
    )
    work = tmp_path / "cwd"
    work.mkdir()
    # -I would also drop PYTHONPATH; -S is not possible (torch lives in site-packages). The editable
    # finder of the venv is on sys.meta_path *after* the path finder, so PYTHONPATH entries win. The
    # caller's PYTHONPATH (where dependencies may live) comes after the wheel; the asserts below check
    # that every privfl module still came from the wheel.
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK],
        cwd=work, env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in IMPORTS:
        path = out[name]
        assert path is not None, f"{name} imported as a namespace package (no __init__.py in the wheel)"
        assert Path(path).resolve().is_relative_to(site.resolve()), f"{name} imported from {path}, not the wheel"
    assert out["mean"] == [2.0, 4.0]
    source_specs = sorted(p.name for p in (ROOT / "evaluations" / "specs").glob("*.yaml"))
    if source_specs:
        assert out["specs"] == source_specs
    installed_specs = sorted(p.name for p in (site / "privfl" / "evaluations" / "specs").glob("*.yaml"))
    assert installed_specs == source_specs
