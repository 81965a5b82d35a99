"""The documentation stays true to the tree (fast lane): docs/settings.md is what scripts/settings_doc.py renders
from the settings classes, every relative Markdown link in README.md and docs/*.md points at a file that exists,
and the README stays a map (at most 200 lines, showing the test command and the main job)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from .conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and ![alt](target), with an optional "title"; the target ends at whitespace or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)


def settings_doc():
    spec = importlib.util.spec_from_file_location("settings_doc", REPO / "scripts" / "settings_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_page_is_what_the_generator_renders():
    doc = settings_doc()
    assert doc.DOC.is_file(), "docs/settings.md is missing: run `make docs`"
    assert doc.DOC.read_text(encoding="utf-8") == doc.render(), "docs/settings.md is stale: run `make docs`"


def test_check_mode_fails_on_a_stale_page_and_passes_on_a_fresh_one(tmp_path, capsys):
    doc = settings_doc()
    page = tmp_path / "settings.md"
    page.write_text(doc.render().replace("| `", "| `X", 1), encoding="utf-8")
    assert doc.main(["--check", "--out", str(page)]) == 1
    assert "stale" in capsys.readouterr().err
    assert doc.main(["--out", str(page)]) == 0
    assert doc.main(["--check", "--out", str(page)]) == 0


def test_every_setting_of_every_service_is_on_the_page():
    doc = settings_doc()
    text = doc.DOC.read_text(encoding="utf-8")
    classes = doc.settings_classes()
    assert {cls.__name__ for cls in classes} >= {"ServiceSettings", "TorchSettings", "OnnxSettings"}
    for cls in classes:
        for name in cls.model_fields:
            assert f"`{doc.env_prefix(cls)}{name.upper()}`" in text, (cls.__name__, name)


def relative_links(page: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        targets.append(target)
    return targets


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_relative_links_point_at_existing_files(page):
    missing = []
    for target in relative_links(page):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


def test_the_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        '[a](docs/api.md) ![b](x.png "t") [c](https://x.org) [d](#top)\n`[e](no.md)`\n```\n[f](no.md)\n```\n',
        encoding="utf-8",
    )
    assert relative_links(page) == ["docs/api.md", "x.png"]


def test_readme_is_a_map_that_shows_the_test_command_and_the_main_job():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "make test" in text and "make benchmark" in text
    assert (REPO / "docs").is_dir() and len(PAGES) > 1
