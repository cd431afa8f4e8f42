"""The committed reference results: each leaderboard is what its results table gives today,
and each report shows only figures that are committed beside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rbpbench import leaderboard
from rbpbench.results import read

RESULTS = Path(__file__).resolve().parents[1] / "results"
FOLDERS = sorted(p.parent for p in RESULTS.glob("*/leaderboard.md"))


def test_there_are_committed_results() -> None:
    assert FOLDERS, f"no committed leaderboard under {RESULTS}"
    assert (RESULTS / "quick" / "results.parquet").exists()


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_the_committed_leaderboard_regenerates_exactly(folder: Path) -> None:
    regenerated = leaderboard.render(read(folder), "markdown")
    assert regenerated == (folder / "leaderboard.md").read_text(), (
        f"{folder}/leaderboard.md is stale: rbpbench leaderboard {folder.relative_to(RESULTS.parent)}"
        " --format markdown > .../leaderboard.md"
    )


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_the_committed_report_has_its_images_and_its_readme(folder: Path) -> None:
    page = (folder / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all((folder / s).is_file() for s in sources)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert not any("$" in c for c in captions), "TeX in a caption: regenerate with rbpbench report"
    assert "rbpbench run" in (folder / "README.md").read_text()
