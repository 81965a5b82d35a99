"""pyproject.toml declares the dependencies; the requirement files the images install say the same; every one is
pinned in constraints.txt."""

from __future__ import annotations

import re
import tomllib

from .conftest import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(lines: list[str]) -> set[str]:
    out = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.add(re.split(r"[\[=<>~! ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return out


def _requirements(path: str) -> set[str]:
    return _names((REPO / path).read_text().splitlines())


def _declared(*extras: str) -> set[str]:
    extra_lists = [PROJECT["optional-dependencies"][extra] for extra in extras]
    return _names([name for names in extra_lists for name in names])


def test_each_image_installs_what_pyproject_declares():
    core = _names(PROJECT["dependencies"])
    assert _requirements("services/onnx_api/requirements.txt") == core | _declared("onnx_api")
    assert _requirements("services/torch_api/requirements.txt") == core | _declared("torch_api")
    assert _requirements("build_artifacts/requirements.txt") == _declared("build")
    assert _requirements("loadtest/requirements.txt") == _declared("loadtest")
    everything = core | _declared(*PROJECT["optional-dependencies"])
    assert everything <= _requirements("requirements-dev.txt")
    assert "torch" not in _requirements("services/onnx_api/requirements.txt")


def test_every_dependency_is_pinned_once_in_constraints():
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = [line.split("==")[0].lower().replace("_", "-") for line in lines if "==" in line and line[0] != "#"]
    assert len(pins) == len(set(pins)), "a package pinned twice"
    unpinned = _requirements("requirements-dev.txt") - set(pins)
    assert not unpinned, f"not pinned in constraints.txt: {sorted(unpinned)}"
