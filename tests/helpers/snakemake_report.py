"""Reading a `snakemake --report` HTML file in a real browser as a person does: the menu, each category, each
subcategory, and each result shown with its eye button (an HTML result in an iframe, an image as an <img>).

The report is Snakemake 9's React app (snakemake/report/html_reporter/template/components/): `nav a` links are
its menu items and breadcrumbs, a subcategory lists its results as table rows whose last cell holds the eye
button, and the content pane beside the menu shows what the button opened.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .headless_chromium import Browser

_CLICK = """(text => {
    const link = [...document.querySelectorAll('nav a')].find(a => a.innerText.trim() === text);
    if (link) link.click();
    return Boolean(link);
})(%s)"""
_ROWS = "[...document.querySelectorAll('nav tbody tr')].map(row => row.cells[0].innerText.trim())"
# The content pane's iframe or image, once it shows a result not seen before (React may reuse the element).
_PANE = """(() => {
    window.seenResults = window.seenResults || new Set();
    const pane = document.querySelector('#app iframe')
        || [...document.querySelectorAll('img')].find(image => !image.closest('nav'));
    return pane && pane.src.startsWith('data:') && !seenResults.has(pane.src) ? pane : null;
})()"""


@dataclass(frozen=True)
class Shown:
    """One result as the content pane showed it: an HTML page's text, or an image's rendered width."""

    kind: str  # "html" or "image"
    text: str = ""
    width: int = 0


def menu_text(browser: Browser) -> str:
    return browser.wait_for("document.querySelector('nav') && document.querySelector('nav').innerText")


def click(browser: Browser, text: str) -> None:
    assert browser.evaluate(_CLICK % json.dumps(text)), f"no link {text!r} in: {menu_text(browser)}"


def _show(browser: Browser, index: int) -> Shown:
    row = f"document.querySelectorAll('nav tbody tr')[{index}]"
    browser.evaluate(f"{row}.cells[{row}.cells.length - 1].querySelector('a').click()")  # the eye button
    kind = browser.wait_for(f"{_PANE} && ({_PANE}.tagName === 'IFRAME' ? 'html' : 'image')")
    source = browser.evaluate(f"{_PANE}.src")
    browser.evaluate(f"seenResults.add({json.dumps(source)})")
    if kind == "image":
        pane = f"[...document.images].find(image => image.src === {json.dumps(source)})"
        browser.wait_for(f"{pane}.complete")  # loaded or broken; a broken image has no width
        return Shown("image", width=browser.evaluate(f"{pane}.naturalWidth"))
    context = browser.frame_context(source[:200])
    text = browser.wait_for("document.readyState === 'complete' && document.body && document.body.innerText", context)
    return Shown("html", text=text)


def show_every_result(browser: Browser, screenshots: Path) -> dict[tuple[str, str, str], Shown]:
    """(category, subcategory, label of the result) -> what its eye button showed, clicking through the menu;
    a screenshot of each in `screenshots`."""
    shown = {}
    categories = browser.evaluate("Object.keys(categories)")
    for category in categories:
        subcategories = browser.evaluate(f"Object.keys(categories[{json.dumps(category)}])")
        for subcategory in subcategories:
            click(browser, category)
            if browser.evaluate("app.state.navbarMode") == "category":  # one subcategory opens by itself
                click(browser, subcategory)
            for index, label in enumerate(browser.wait_for(_ROWS)):
                shown[(category, subcategory, label)] = _show(browser, index)
                name = re.sub(r"[^\w.-]+", "_", f"{category}-{subcategory}-{label}")
                browser.screenshot(screenshots / f"{name}.png")
            click(browser, "Results")
    return shown
