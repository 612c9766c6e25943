"""The report in a real browser: headless Chromium loads it with no console errors (CSP
violations included), the table sorts and filters, links open a kernel, hostile text stays text.

Skips only where no Chromium can be found (CI installs Debian's ``chromium`` first, see .ci/run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_review_helpers import (
    CAMPAIGN_TASKS,
    HOSTILE_TASK,
    build_real_run,
    run_campaign,
)

from agentforge.review import load_review, render_html
from agentforge.review.browser import BrowserUnavailable, Chromium, find_chromium

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no Chromium on this machine (apt-get install chromium, or set $CHROMIUM)")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("review-browser")
    run = build_real_run(d / "run")
    out = d / "report.html"
    out.write_text(render_html(load_review(run)))
    return out


@pytest.fixture(scope="module")
def campaign_page(tmp_path_factory) -> Path:
    """The report of a real `agentforge campaign` run, written by the review command."""
    from agentforge.review.cli import main

    d = tmp_path_factory.mktemp("review-campaign")
    run = run_campaign(d / "run")
    assert main(["review", str(run), "-o", str(d / "report.html")]) == 0
    return d / "report.html"


@pytest.fixture(scope="module")
def browser():
    try:
        with Chromium() as b:
            yield b
    except BrowserUnavailable as e:
        pytest.skip(f"Chromium cannot start here: {e}")


def rows_shown(b: Chromium) -> list[str]:
    return b.evaluate("Array.from(document.querySelectorAll('#task-table tbody tr'))"
                      ".filter(r => !r.hidden).map(r => r.dataset.name)")


def test_report_loads_without_console_errors_and_shows_its_parts(browser, page, tmp_path):
    load = browser.load(page)
    assert load.errors == []
    assert browser.evaluate("document.documentElement.dataset.ready") == "1"  # our script ran under the CSP
    counts = browser.evaluate("({rows: document.querySelectorAll('#task-table tbody tr').length,"
                              " kernels: document.querySelectorAll('details.task').length,"
                              " charts: document.querySelectorAll('#charts svg').length,"
                              " manifest: document.querySelectorAll('#manifest tr').length,"
                              " asp: document.querySelectorAll('pre.asp').length})")
    assert counts["rows"] == 4 and counts["kernels"] == 4 and counts["charts"] == 3
    assert counts["manifest"] >= 5 and counts["asp"] >= 3
    shot = browser.screenshot(tmp_path / "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_a_real_campaign_report_loads_clean(browser, campaign_page, tmp_path):
    load = browser.load(campaign_page)
    assert load.errors == [] and browser.evaluate("document.documentElement.dataset.ready") == "1"
    assert browser.evaluate("Array.from(document.querySelectorAll('#task-table tbody tr'))"
                            ".map(r => r.dataset.name).sort()") == sorted(CAMPAIGN_TASKS)
    assert browser.evaluate("document.querySelectorAll('details.task .timing svg.chart').length") == len(CAMPAIGN_TASKS)
    browser.evaluate("(() => { const d = document.getElementById('k-0'); d.open = true; d.scrollIntoView(); })()")
    shot = browser.screenshot(tmp_path / "campaign.png")
    assert shot.stat().st_size > 10_000


def test_table_filters_and_sorts(browser, page):
    browser.load(page)
    browser.evaluate("(() => { const f = document.getElementById('filter'); f.value = 'soft';"
                     " f.dispatchEvent(new Event('input')); })()")
    assert rows_shown(browser) == ["softmax"]
    browser.evaluate("(() => { const f = document.getElementById('filter'); f.value = '';"
                     " f.dispatchEvent(new Event('input')); const s = document.getElementById('status-filter');"
                     " s.value = 'failed'; s.dispatchEvent(new Event('change')); })()")
    assert rows_shown(browser) == [HOSTILE_TASK]
    browser.evaluate("(() => { const s = document.getElementById('status-filter'); s.value = '';"
                     " s.dispatchEvent(new Event('change'));"
                     " document.querySelector('th button[data-key=\"name\"]').click(); })()")
    names = rows_shown(browser)
    assert names == sorted(names, key=str.lower) or names == sorted(names)
    assert browser.load(page).errors == []


def test_a_link_opens_its_kernel(browser, page):
    browser.load(page)
    browser.evaluate("document.querySelector('a.task-link[href=\"#k-2\"]').click()")
    assert browser.evaluate("document.getElementById('k-2').open") is True


def test_hostile_text_is_text_in_the_browser(browser, page):
    browser.load(page)
    assert browser.evaluate("document.querySelectorAll('img, i').length") == 0
    assert browser.evaluate("document.querySelector('#task-table tbody tr:last-child td:nth-child(2)')"
                            ".textContent").startswith("<i>g</i>")
    assert browser.evaluate("document.querySelector('#task-table tbody tr:last-child a').textContent") == HOSTILE_TASK
    assert browser.evaluate("document.querySelectorAll('script').length") == 1


def test_a_csp_violation_would_be_reported(browser, page, tmp_path):
    """The control for the no-errors test: an extra inline script is blocked and reported."""
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace("</body>", "<script>document.title = 'x'</script></body>"))
    errors = browser.load(bad).errors
    assert any("Content Security Policy" in e for e in errors), errors
