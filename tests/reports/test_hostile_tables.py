"""A results table and environment.json full of markup: the report and the html leaderboard
escape every text that comes from them, and a report still comes out."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from rbpbench import leaderboard
from rbpbench.cli import main
from rbpbench.reports import report
from rbpbench.results import COLUMNS, ResultsFolder, to_frame
from tests.reports.browser import Browser, chromium
from tests.tables import row

# Where a hostile row carries its curves until they are written beside the table.
CURVES_KEY = "_curves"

HOSTILE = (
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "&",
    "<script>console.error('xss')</script>",
    "'><img src=y onerror=console.error('xss')>",
)
TEXT_COLUMNS = [c for c in COLUMNS if to_frame([]).dtypes[c] == "string"]
IDENTITY = ("cell_id", "task", "method", "device", "status", "error")
UNESCAPED_AMPERSAND = re.compile(r"&(?![a-zA-Z]+;|#[0-9]+;|#x[0-9a-fA-F]+;)")


class Markup(HTMLParser):
    """The elements, attributes and text of a page as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def assert_inert(page: str) -> Markup:
    """No script, no event handler, no image but the report's own figures, no bare ``&``."""
    markup = Markup()
    markup.feed(page)
    markup.close()
    assert not [tag for tag, _ in markup.tags if tag in ("script", "iframe", "object", "embed")]
    for tag, attrs in markup.tags:
        assert not [name for name, _ in attrs if name.lower().startswith("on")], (tag, attrs)
        if tag == "img":
            assert re.fullmatch(r"report/[a-z0-9-]+\.png", dict(attrs)["src"] or ""), attrs
    assert not UNESCAPED_AMPERSAND.search(page)
    return markup


def hostile_rows() -> list[dict[str, object]]:
    """Per hostile string a task of that name whose every text column holds it; statuses
    unknown to rbpbench beside ok ones; a device that varies, so it names the groups."""
    rows = []
    for i, text in enumerate(HOSTILE):
        for method in ("bptt", text):
            for seed in range(2):
                record = row(
                    text, method, 10, seed, grad_rel_error=0.1 * (seed + 1), wall_time_s=0.1,
                    peak_memory_bytes=1024, forward_converged=seed == 0, forward_tolerance=1e-6,
                    adjoint_converged=None if method == "bptt" else True,
                )  # fmt: skip
                record.update({c: text for c in TEXT_COLUMNS if c not in IDENTITY})
                record.update(
                    cell_id=f"{text}-{method}-{seed}",
                    device="cpu" if seed else text,
                    status="ok" if seed == 0 else text,
                    error=f"{text}\nsecond line {text}",
                )
                if (i, method, seed) == (0, "bptt", 0):
                    record["cell_id"] = "cell-with-curves"
                    record[CURVES_KEY] = {text: [1.0, 0.5, 0.25], f"{text}_loss": [2.0, 1.0]}
                rows.append(record)
    return rows


def hostile_folder(folder: Path) -> Path:
    rows = hostile_rows()
    results = ResultsFolder(folder)
    for record in rows:
        if CURVES_KEY in record:
            results.write_curves(str(record["cell_id"]), record.pop(CURVES_KEY))  # type: ignore[arg-type]
    data = to_frame(rows)
    for column, dtype in (("forward_converged", "boolean"), ("adjoint_converged", "boolean")):
        data[column] = pd.Series([r[column] for r in rows], dtype=dtype)
    data["forward_tolerance"] = pd.Series([r["forward_tolerance"] for r in rows], dtype="float64")
    data.to_parquet(folder / "results.parquet", index=False)
    runs = {
        text: {"run_id": text, **dict.fromkeys(report.ENVIRONMENT_KEYS, text)} for text in HOSTILE
    }
    (folder / "environment.json").write_text(json.dumps({"runs": runs}))
    return folder


def test_the_table_has_hostile_text_in_every_text_column() -> None:
    data = to_frame(hostile_rows())
    assert {"task", "method", "status", "error", "node", "extra_metrics"} <= set(TEXT_COLUMNS)
    for column in TEXT_COLUMNS:
        assert all(data[column].str.contains(h, regex=False).any() for h in HOSTILE), column
    assert {"bptt", "ok", "cpu"} <= set(data.method) | set(data.status) | set(data.device)


def test_the_report_escapes_every_text_from_the_table_and_the_environment(
    tmp_path: Path,
) -> None:
    page = report.write(hostile_folder(tmp_path)).read_text()
    markup = assert_inert(page)
    text = "".join(markup.text)
    for hostile in HOSTILE:
        assert hostile in text  # shown, as text
    assert "second line" not in text
    assert "cells whose forward did not converge" in text
    assert [s for s in re.findall(r'id="([^"]*)"', page) if not s] == []
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all((tmp_path / s).is_file() for s in sources)


def test_the_html_leaderboard_escapes_every_text_from_the_table(tmp_path: Path) -> None:
    data = pd.read_parquet(hostile_folder(tmp_path) / "results.parquet")
    text = "".join(assert_inert(leaderboard.render(data, "html")).text)
    assert all(hostile in text for hostile in HOSTILE)


def test_the_cli_reports_a_table_of_unknown_statuses(tmp_path: Path, capsys) -> None:
    assert main(["report", str(hostile_folder(tmp_path))]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["leaderboard", str(tmp_path)]) == 0


@pytest.mark.slow
@pytest.mark.skipif(
    chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_a_hostile_report_runs_nothing_in_headless_chromium(tmp_path: Path) -> None:
    page = report.write(hostile_folder(tmp_path))
    with Browser(str(chromium())) as browser:
        loaded = browser.load(page.as_uri())
    assert loaded.errors == []
    assert loaded.images and loaded.broken_images == []
