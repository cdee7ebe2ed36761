"""The demo page end to end in a real headless Chromium (Debian's, driven by Playwright; nothing
is downloaded): pick a sample photo, see the baseline and REVISION side by side with the
summary, metadata and question, answer it, see the refined results; a product title holding
markup stays text. The screenshot goes to the test's folder, and to docs/ when
REVISION_DOCS_SCREENSHOT names a file (how docs/serve-page.png was made)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

import serve_support as ss
from conftest import require
from revision.catalog.schema import load_products
from revision.serve.app import create_app
from revision.serve.routes.page import samples_of
from revision.serve.service import RevisionService
from revision.settings import Settings
from revision.tables import PRODUCTS

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
MARKUP = '<img src=x onerror="window.__xss=1">Evil <b>title</b>'


@pytest.fixture(scope="module")
def chromium() -> Path:
    require("playwright")
    found = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    if not found:
        pytest.fail("Debian's chromium is not installed; install it with: apt-get install chromium")
    return Path(found)


@pytest.fixture(scope="module")
def page_warehouse(built_warehouse, tmp_path_factory):
    """A planner that shows a summary, product details and a question; one product whose
    title is markup (untrusted text must stay text on the page)."""
    base = ss.servable_base(built_warehouse, tmp_path_factory, plan=ss.PLAN_PAGE)
    return ss.copy(base, tmp_path_factory.mktemp("page") / "wh")


def test_upload_compare_answer_refine_in_a_real_browser(page_warehouse, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    wh = page_warehouse
    s = Settings(
        home=wh.root,
        trigger_threshold=2.0,
        planner_timeout_ms=60_000,
        tools_timeout_ms=60_000,
        log_flush_s=600,
    )
    with RevisionService.open(wh, s) as service:
        first_sample = samples_of(service)[0][0]
        _set_title(wh, first_sample, MARKUP)
    with (
        RevisionService.open(wh, s) as service,
        ss.uvicorn_thread(create_app(s, service)) as url,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(chromium), args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]", timeout=60_000)
        assert "planner" in page.locator("#status").inner_text()

        # upload a photo through the file input
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(ss.photo_bytes(load_products(wh)["image_path"].iloc[40]))
        page.set_input_files("#photo", str(photo))
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        assert page.locator("#baseline .card").count() == 8
        assert page.locator("#revision .card").count() == 8

        # both columns, badges, the summary card, details, the question, the plan and its DAG
        assert page.locator("#badges").inner_text().count("triggered") == 1
        assert page.locator("#summary").is_visible()
        assert page.locator("#revision .card dl").count() >= 1  # metadata
        assert page.locator("#plan").is_visible()
        assert page.locator("#dag rect").count() == 3
        options = page.locator("#question button")
        assert options.count() >= 2
        page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)
        choice = options.nth(1).get_attribute("data-option")
        before = page.locator("#revision .card").evaluate_all(
            "cards => cards.map(c => c.dataset.product)"
        )

        # answer: the search re-runs refined by the option
        options.nth(1).click()
        page.wait_for_selector("#revision[data-refined=true]", timeout=60_000)
        note = page.locator("#revision-note").inner_text()
        assert note.endswith(f"= {choice}")
        after = page.locator("#revision .card").evaluate_all(
            "cards => cards.map(c => c.dataset.product)"
        )
        assert after and after != before
        page.screenshot(path=str(tmp_path / "serve-page-refined.png"), full_page=True)

        # pick the sample whose product title is markup: it shows as text, nothing runs
        page.evaluate("document.body.dataset.state = ''")
        page.click(f"#samples button[data-sample='{first_sample}']")
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        titles = page.locator("#baseline .card .title").all_inner_texts()
        assert MARKUP in titles, titles
        assert page.evaluate("window.__xss") is None
        assert page.locator("#baseline .card .title b").count() == 0
        assert errors == []
        browser.close()
    target = os.environ.get("REVISION_DOCS_SCREENSHOT")
    if target:
        shutil.copy(tmp_path / "serve-page.png", target)
        shutil.copy(
            tmp_path / "serve-page-refined.png", Path(target).with_stem("serve-page-refined")
        )


def _set_title(wh, product_id: str, title: str) -> None:
    products = wh.read(PRODUCTS).to_pandas()
    products.loc[products["product_id"] == product_id, "title"] = title
    wh.write(PRODUCTS, pa.Table.from_pandas(products, schema=PRODUCTS.schema, preserve_index=False))
