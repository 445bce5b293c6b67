"""The published pages in a real browser: headless Chromium driven by Playwright.

The run writes its own site: one small simulated export with a planted ranking-timeout day
(NO_GO) and a privacy ticket (ROLLBACK), three ``whispers-lab report`` runs (a GO day, the
NO_GO day, the ROLLBACK day) and one ``whispers-lab daily`` run on a corrupt export (an ERROR
page), all into one folder with its index, then the stakeholder summary of that rollout
(``whispers-lab summary``, linked from the index). Each page is opened from disk and checked as a
stakeholder's phone or laptop would show it: no console error, no network request at all (the
pages must be self-contained), every image decodes, nothing runs off the side at 400 px, every
day link of the index leads to a page, and the decision banner comes first.

Screenshots (400 px full page, 1000 px top of page) are written to ``test-artifacts/browser/``
(``WHISPERS_TEST_ARTIFACTS`` overrides the folder); docs/screenshots/ holds a copy of each kind.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from whispers_lab.cli import main
from whispers_lab.paths import PROJECT_ROOT
from whispers_lab.plan import load_plan
from whispers_lab.report.index import DECISION_STYLE
from whispers_lab.simulate import simulate_to

from anchor_cases import require_anchor
from browser_env import LAUNCH_ARGS, chromium_executable

pytestmark = pytest.mark.browser

USERS, SEED = 6000, 5
REPORT_DAYS = (1, 8, 9)
SCENARIOS = ["ranking_timeouts:day=8", "privacy_ticket:day=9"]
ERROR_DAY = 7
KINDS = ("GO", "NO_GO", "ROLLBACK", "ERROR")
PAGES = ("index", *KINDS, "summary")
NARROW = 400

sync_api = require_anchor("playwright.sync_api")  # CI: an error if missing; else a skip


def _artifacts() -> Path:
    folder = Path(os.environ.get("WHISPERS_TEST_ARTIFACTS") or PROJECT_ROOT / "test-artifacts")
    out = folder / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---------------------------------------------------------------------------------------------
# the site, written once per test run (shared by parallel workers)


def _build_site(root: Path) -> None:
    exports, out = root / "exports", root / "reports"
    path, _ = simulate_to(exports / "rollout.duckdb", users=USERS, seed=SEED,
                          through_day=max(REPORT_DAYS), scenarios=SCENARIOS)
    qa = Path(__file__).resolve().parents[1] / "data" / "samples" / "qa-results.xml"
    for day in REPORT_DAYS:   # a passing QA run: Phase 1 requires the QA scenarios
        assert main(["report", "--export", str(path), "--day", str(day), "--out", str(out),
                     "--qa-results", str(qa)]) == 0
    broken = root / "broken-exports"
    broken.mkdir()
    (broken / "2026-12-09.duckdb").write_bytes(b"not a DuckDB file " * 64)
    today = load_plan().start_date + dt.timedelta(days=ERROR_DAY + 1)
    assert main(["daily", "--exports", str(broken), "--out", str(out),
                 "--today", today.isoformat()]) == 1
    assert main(["summary", "--reports", str(out), "--export", str(path)]) == 0


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> page path. Built once per run even with parallel workers (a file lock in the
    run's shared temporary folder)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    root = base.parent / f"browser-site-{run_id}" if run_id else base / "browser-site"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            _build_site(root)
            (root / "done").write_text("ok")
    out = root / "reports"
    pages: dict[str, Path] = {"index": out / "index.html", "summary": out / "summary.html"}
    for folder in sorted(out.glob("day-*")):
        decision = json.loads((folder / "decision.json").read_text())["decision"]
        pages.setdefault(decision, folder / "report.html")
    missing = [k for k in KINDS if k not in pages]
    assert not missing, f"the simulated site has no {missing} report: {sorted(pages)}"
    return pages


# ---------------------------------------------------------------------------------------------
# the browser


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    """Module scope: Playwright's sync API keeps an event loop in this process while it runs,
    and nbval's kernel clients (the notebooks run later in the same process) need it gone."""
    executable, reason = chromium_executable()
    if executable is None:
        message = f"no Chromium for the browser tests: {reason}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    profile = tempfile.mkdtemp(prefix="whispers-chromium-")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(executable), headless=True, args=list(LAUNCH_ARGS),
            viewport={"width": NARROW, "height": 900}, offline=True)
        try:
            yield context
        finally:
            context.close()


class Visit:
    """One page opened in the browser, with everything it logged and requested."""

    def __init__(self, context: Any, path: Path, width: int = NARROW):
        self.url = path.resolve().as_uri()
        self.console: list[str] = []
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.page = context.new_page()
        self.page.set_viewport_size({"width": width, "height": 900})
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.route("**/*", self._route)
        self.page.goto(self.url, wait_until="load")

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url.split("#")[0] == self.url or url.startswith("data:"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def js(self, script: str) -> Any:
        return self.page.evaluate(script)


@pytest.fixture(scope="module")
def visits(browser_context: Any, site: dict[str, Path]) -> Iterator[dict[str, Visit]]:
    opened = {kind: Visit(browser_context, path) for kind, path in site.items()}
    shots = _artifacts()
    for kind, visit in opened.items():
        visit.page.screenshot(path=str(shots / f"{kind}-{NARROW}px.png"), full_page=True)
        wide = Visit(browser_context, site[kind], width=1000)
        wide.page.screenshot(path=str(shots / f"{kind}-1000px.png"))
        wide.page.close()
    yield opened
    for visit in opened.values():
        visit.page.close()


# ---------------------------------------------------------------------------------------------
# the checks

_OVERFLOW_JS = """() => {
  const vw = document.documentElement.clientWidth;
  const out = [];
  if (document.documentElement.scrollWidth > vw) {
    out.push(`the page is ${document.documentElement.scrollWidth}px wide`);
  }
  const scrollsInside = (el) => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const s = getComputedStyle(a).overflowX;
      if ((s === 'auto' || s === 'scroll') && a.getBoundingClientRect().right <= vw + 1) return true;
    }
    return false;
  };
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || r.right <= vw + 1 || scrollsInside(el)) continue;
    out.push(`${el.tagName.toLowerCase()}.${el.className} ends at ${Math.round(r.right)}px: ` +
             (el.innerText || '').trim().slice(0, 50));
  }
  return out;
}"""

_IMAGES_JS = """async () => {
  const out = [];
  for (const img of Array.from(document.images)) {
    let ok = img.complete && img.naturalWidth > 0 && img.naturalHeight > 0;
    try { await img.decode(); } catch (e) { ok = false; }
    out.push({ok, src: img.src.slice(0, 40), w: img.naturalWidth, h: img.naturalHeight});
  }
  return out;
}"""

_FIRST_JS = """() => {
  // the first element in document order that shows text, and the nearest ancestor (or itself)
  // painted with a background colour
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode())) {
    const el = node.parentElement;
    if (!node.textContent.trim() || !el || el.getClientRects().length === 0) continue;
    for (let a = el; a && a !== document.body; a = a.parentElement) {
      const bg = getComputedStyle(a).backgroundColor;
      if (bg && bg !== 'rgba(0, 0, 0, 0)' && bg !== 'transparent') {
        return {text: a.innerText.trim().slice(0, 120), background: bg};
      }
    }
    return {text: el.innerText.trim().slice(0, 120), background: null};
  }
  return null;
}"""


def _rgb(hex_colour: str) -> str:
    h = hex_colour.lstrip("#")
    return f"rgb({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)})"


@pytest.mark.parametrize("kind", PAGES)
def test_no_console_error_and_no_network_request(visits: dict[str, Visit], kind: str):
    v = visits[kind]
    assert v.console == []
    assert v.blocked == [], "the page tried to load from outside itself"
    assert [u for u in v.requests if not u.startswith("data:")] == [v.url]


@pytest.mark.parametrize("kind", PAGES)
def test_every_image_decodes(visits: dict[str, Visit], kind: str):
    images = visits[kind].js(_IMAGES_JS)
    assert [i for i in images if not i["ok"]] == []
    if kind in ("GO", "NO_GO", "ROLLBACK"):
        assert len(images) >= 3  # the report's charts are there
    if kind in ("index", "summary"):
        assert len(images) == 6  # the trend charts across days


@pytest.mark.parametrize("kind", PAGES)
def test_nothing_overflows_at_400px(visits: dict[str, Visit], kind: str):
    v = visits[kind]
    assert v.js("document.documentElement.clientWidth") == NARROW
    assert v.js(_OVERFLOW_JS) == []


def test_every_day_link_of_the_index_leads_to_a_page(visits: dict[str, Visit],
                                                     browser_context: Any,
                                                     site: dict[str, Path]):
    index = visits["index"]
    hrefs = index.js("Array.from(document.querySelectorAll('a[href]'))"
                     ".map(a => a.getAttribute('href'))")
    days = sorted({h for h in hrefs if re.fullmatch(r"day-\d{2,}/report\.html", h)})
    assert len(days) == len(KINDS)  # one per report written, each linked
    assert {h for h in hrefs if h not in days} == {"summary.html"}  # and the summary
    for href in [*days, "summary.html"]:
        target = site["index"].parent / href
        assert target.is_file(), href
        page = Visit(browser_context, target)
        try:
            assert page.js("document.title"), href
            assert page.js("document.body.innerText.trim().length") > 100, href
            assert page.console == [] and page.blocked == []
        finally:
            page.page.close()


@pytest.mark.parametrize("kind", KINDS)
def test_the_decision_banner_comes_first(visits: dict[str, Visit], kind: str):
    first = visits[kind].js(_FIRST_JS)
    colour, label = DECISION_STYLE[kind]
    assert first is not None and first["background"] == _rgb(colour), first
    assert label in first["text"]


def test_the_summary_opens_with_the_outcome_and_links_its_data(visits: dict[str, Visit],
                                                              site: dict[str, Path]):
    folder = site["summary"].parent
    doc = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    colour, _ = DECISION_STYLE.get(doc["outcome"]["decision"], DECISION_STYLE["ERROR"])
    first = visits["summary"].js(_FIRST_JS)
    assert first is not None and first["background"] == _rgb(colour), first
    assert "summary for stakeholders" in first["text"]
    headline = visits["summary"].js("document.querySelector('.banner .big').innerText")
    assert headline == doc["outcome"]["headline"]
    hrefs = visits["summary"].js("Array.from(document.querySelectorAll('a[href]'))"
                                 ".map(a => a.getAttribute('href'))")
    assert sorted(hrefs) == ["index.html", "summary.json"]
    assert all((folder / h).is_file() for h in hrefs)
