"""The explorer in a real browser: Playwright drives Debian Chromium against the app serving the
real default model (SmolLM2-135M with its shipped adapter and seeded front).

It loads the page, clicks a point of the plotly front (the click bridge), sees the adapter time and
the heatmap, runs a quick eval and sees the new measured point, and downloads the export bundle.
Timings (page request -> front drawn, click -> adapter shown) and a screenshot go to
``$COALORA_TEST_OUTPUT/browser`` (default ``test-output/browser``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
OUT = Path(os.environ.get("COALORA_TEST_OUTPUT", "test-output")) / "browser"


def _chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Debian chromium is missing; .ci/run installs it (apt-get install chromium)")
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free port with a fresh store seeded from data/seed, its model warm."""
    from coalora.store import Store
    from ui import handlers
    from ui.layout import build_app, launch_kwargs

    tmp = tmp_path_factory.mktemp("browser")
    old = handlers.MODELS, handlers.FRONTS, handlers.EXPORT_DIR
    handlers.MODELS = handlers.Models()
    handlers.MODELS.store = Store(tmp / "results.duckdb")
    handlers.FRONTS = handlers._FrontCache()
    handlers.EXPORT_DIR = tmp / "exports"
    demo = build_app("smollm2-135m")
    kw = launch_kwargs()
    kw["allowed_paths"] = [str(handlers.EXPORT_DIR)]
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, **kw)
    yield url
    demo.close()
    handlers.MODELS.store.close()
    handlers.MODELS, handlers.FRONTS, handlers.EXPORT_DIR = old


FIND_UNMEASURED = """
() => {
  // A point of the CoA-LoRA predicted front (2.5-6 bits) that is unmeasured and as far as possible
  // (on screen) from every measured point and every other trace's marker: plotly's closest-point
  // click may then pick a neighbour on the same line, but never an already measured configuration.
  const gd = document.querySelector('#front-plot .js-plotly-plot');
  const names = gd.data.map(t => t.name);
  const measured = new Set((gd.data[names.indexOf('CoA-LoRA measured')] || {customdata: []}).customdata);
  const ti = names.indexOf('CoA-LoRA predicted front');
  const traces = document.querySelectorAll('#front-plot .scatterlayer .trace');
  const centre = (el) => { const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; };
  const mine = [...traces[ti].querySelectorAll('.point')].map(centre);
  const avoid = [];
  traces.forEach((tr, k) => tr.querySelectorAll('.point').forEach((el, j) => { if (k !== ti) avoid.push(centre(el)); }));
  mine.forEach((c, i) => { if (measured.has(gd.data[ti].customdata[i])) avoid.push(c); });
  let best = null;
  mine.forEach((c, i) => {
    const h = gd.data[ti].customdata[i], x = gd.data[ti].x[i];
    if (measured.has(h) || x < 2.5 || x > 6) return;
    const d = Math.min(...avoid.map(o => Math.hypot(o[0] - c[0], o[1] - c[1])));
    if (!best || d > best.gap) best = {trace: ti, index: i, hash: h, gap: d};
  });
  return best;
}
"""

SELECTED = "() => (document.querySelector('#adapter-time').innerText.match(/Adapter for ([0-9a-f]{16})/) || [])[1]"

MEASURED_HASHES = """
() => {
  const gd = document.querySelector('#front-plot .js-plotly-plot');
  const t = gd.data.find(t => t.name === 'CoA-LoRA measured');
  return t ? t.customdata : [];
}
"""


def test_explorer_in_chromium(server):
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            t0 = time.perf_counter()
            page.goto(server)
            page.wait_for_selector("#front-plot .scatterlayer .point", timeout=60_000)
            timings["page_to_front_s"] = time.perf_counter() - t0
            page.wait_for_function("document.querySelector('#front-summary').innerText.includes('measured')")
            before = set(page.evaluate(MEASURED_HASHES))
            assert len(before) >= 40  # the seeded front

            # Click an unmeasured point of the predicted front near 3.2 bits (mouse on its centre:
            # plotly_click needs a real mouse event, a locator click on the SVG does not fire it).
            page.wait_for_function("window.__coaloraBridgeReady === true", timeout=10_000)
            target = page.evaluate(FIND_UNMEASURED)
            point = page.locator("#front-plot .scatterlayer .trace").nth(target["trace"]).locator(".point") \
                .nth(target["index"])
            box = point.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            t1 = time.perf_counter()
            page.mouse.click(x, y)
            try:
                page.wait_for_function(f"({SELECTED})() !== undefined", timeout=30_000)
            except Exception:
                page.screenshot(path=str(OUT / "failed-click.png"), full_page=True)
                raise AssertionError(f"clicked {target}, page shows: {page.inner_text('#adapter-time')!r}") from None
            timings["click_to_adapter_s"] = time.perf_counter() - t1
            picked = page.evaluate(SELECTED)  # the target or, in a dense front, a neighbour on its line
            assert picked not in before, f"clicked {target}, selected the measured {picked}"
            adapter_text = page.inner_text("#adapter-time")
            assert "generated in" in adapter_text and " ms" in adapter_text
            page.wait_for_selector("#heatmap .heatmaplayer", timeout=10_000)
            assert picked in page.input_value("#share-link textarea, #share-link input")

            # Quick eval: the new measured point appears on the front.
            t2 = time.perf_counter()
            page.click("#quick-eval")
            page.wait_for_function("document.querySelector('#eval-result').innerText.includes('perplexity')",
                                   timeout=180_000)
            page.wait_for_function(f"({MEASURED_HASHES})().includes('{picked}')", timeout=30_000)
            timings["quick_eval_s"] = time.perf_counter() - t2
            assert set(page.evaluate(MEASURED_HASHES)) == before | {picked}
            page.screenshot(path=str(OUT / "explorer.png"), full_page=True)

            # Export: download the bundle zip.
            page.click("#export")
            link = page.locator('#export-files a[download$=".zip"]').first
            link.wait_for(timeout=180_000)
            with page.expect_download() as dl:
                link.click()
            path = OUT / dl.value.suggested_filename
            dl.value.save_as(path)
            with zipfile.ZipFile(path) as z:
                meta = json.loads(z.read("coalora_config.json"))
            assert meta["config_hash"] == picked and meta["model"] == "smollm2-135m"
            assert not errors, errors
        finally:
            browser.close()
    (OUT / "timings.json").write_text(json.dumps(timings, indent=2))
    print("browser timings:", timings)
