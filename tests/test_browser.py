"""The explorer in a real browser: `streamlit run app.py` driven by Playwright + Chromium.

Opens every page on the tiny run by its URL on a freshly started server (a deep link is
a session's first request, the case Streamlit once ran without app.py's navigation),
waits until Streamlit has finished running, checks the navigation, the page config,
the shared sidebar and the page's key elements, and saves a full-page screenshot to
tests/screenshots/. Then shareable URLs on one server: read, kept in sync, refused
when hostile. Skips when Debian's chromium is not installed (`apt-get install chromium`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "tests" / "screenshots"
START_TIMEOUT = 60
PAGE_TIMEOUT_MS = 120_000

NAV = ("Home", "Generate", "Attribution", "Ablation lab", "Training set", "Diagnostics",
       "Ladder")

# url path -> (title shown, selectors that must exist, text that must show)
PAGES = {
    "": (
        "Which training images made this sample?",
        ['[data-testid="stImage"] img', '[data-testid="stButtonGroup"]'],  # pictures; a pill
        ["training images", "How a counterfactual works", "without image #",
         "Interactive code matrix"],
    ),
    "generate": (
        "Generate",
        ['[data-testid="stImage"] img', '[data-testid="stSlider"]'],
        ["Every member alone", "The chain at a glance"],
    ),
    "attribution": (
        "Attribution",
        ['[data-testid="stImage"] img', '[data-testid="stCheckbox"]'],
        ["Its floor's p99", "training image", "Top 8 training images by resemblance",
         "score against its floor"],
    ),
    "ablation": (
        "Ablation lab",
        ['[data-testid="stCheckbox"]', '[data-testid="stImage"] img'],
        ["Members on", "m5", "Remove image #"],
    ),
    "training_set": (
        "Training set",
        ['[data-testid="stFileUploader"]', '[data-testid="stImage"] img'],
        ["Browse", "Nearest training images", "With an image of your own"],
    ),
    "diagnostics": (  # the tiny run has no report: the page says how to make one
        "Diagnostics",
        ['[data-testid="stButton"]'],
        ["No evaluation report for this run yet", "Recompute small version"],
    ),
    "ladder": (  # one run: the page says how to add rungs
        "Ladder",
        ['[data-testid="stImage"] img', '[data-testid="stButton"]'],
        ["The ladder needs runs at two or more N", "TAR against N", "on every rung"],
    ),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(log: Path, **env_vars):
    """`streamlit run app.py` on a free port with `env_vars` set; yields its URL."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    port = _free_port()
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",  # tiny models: two threads on a busy 2-core box are far slower
        **env_vars,
    )
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.port",
                str(port),
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + START_TIMEOUT
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"streamlit did not start:\n{log.read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def tiny_env(tiny_run_dir, tmp_path_factory) -> dict[str, str]:
    """The app on the tiny run (no assets)."""
    return {
        "TDA_RUNS": str(tiny_run_dir.parent),
        "TDA_ASSETS": str(tmp_path_factory.mktemp("no-assets")),
    }


@pytest.fixture(scope="module")
def server(tiny_env, tmp_path_factory):
    """One server for the tests that need no fresh one."""
    with streamlit_server(tmp_path_factory.mktemp("streamlit") / "server.log", **tiny_env) as url:
        yield url


@pytest.fixture
def page(browser):
    """A new browser context per test: its own Streamlit session, as a new visitor."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(PAGE_TIMEOUT_MS)
    yield pg
    context.close()


def wait_until_done(page) -> None:
    """Streamlit is done when the app's navigation and sidebar exist and nothing runs."""
    page.get_by_role("link", name="Home", exact=True).wait_for()
    page.locator('[data-testid="stSidebar"] [data-testid="stNumberInput"]').first.wait_for()
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached")
    page.wait_for_selector('[data-testid="stSkeleton"]', state="detached")


def screenshot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport to fit."""
    height = page.evaluate(
        "() => Math.max(...['stMain', 'stAppViewContainer', 'stMainBlockContainer'].map("
        "id => document.querySelector(`[data-testid=${id}]`)?.scrollHeight || 0))"
    )
    width = page.viewport_size["width"]
    page.mouse.move(0, 0)  # no hover tooltip over the page
    page.set_viewport_size({"width": width, "height": min(max(900, height + 40), 8000)})
    page.wait_for_timeout(700)  # charts re-layout at the new size
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)
    page.set_viewport_size({"width": width, "height": 900})


def check_app_frame(page, title: str) -> None:
    """What every page shares: the app's own navigation (titles, not file names), the
    page config (tab title, wide layout) and the sidebar's run, seed and rule."""
    links = page.locator('[data-testid="stSidebar"] [data-testid="stPageLink"]')
    titles = [t.split("\n")[-1] for t in links.all_inner_texts()]  # after the icon's name
    assert titles == list(NAV), titles
    assert not page.locator('[data-testid="stSidebarNav"]').is_visible()  # Streamlit's own
    assert page.title() == ("tda explorer" if title == "Home" else f"{title} · tda explorer")
    assert (
        page.locator('[data-testid="stMain"]').evaluate(
            "el => el.querySelector('[data-testid=stMainBlockContainer]').offsetWidth"
        )
        > 1000
    )  # layout="wide": the main block fills the 1400 px window, not 736 px
    sidebar = page.locator('[data-testid="stSidebar"]')
    for label in ("Run", "Seed", "Combine"):
        sidebar.get_by_text(label, exact=True).first.wait_for(state="visible")


@pytest.mark.parametrize("path", list(PAGES))
def test_deep_link_on_a_fresh_server(tiny_env, page, tmp_path, path):
    """Each page opened by its URL as the first request of a new server: the whole app."""
    title, selectors, texts = PAGES[path]
    with streamlit_server(tmp_path / "server.log", **tiny_env) as url:
        page.goto(f"{url}/{path}")
        wait_until_done(page)
        page.get_by_role("heading", name=title).first.wait_for()
        main = page.locator('[data-testid="stMain"]')
        for sel in selectors:  # a visible one: a collapsed expander hides its chart
            main.locator(f"{sel} >> visible=true").first.wait_for(state="visible")
        for text in texts:  # waits: under load a run may start late or rerun
            main.get_by_text(text).first.wait_for(state="visible")
        wait_until_done(page)
        check_app_frame(page, "Home" if path == "" else title)
        assert not page.locator('[data-testid="stException"]').count()
        page.wait_for_function(  # every image has loaded and decoded
            "() => [...document.querySelectorAll('[data-testid=stImage] img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        screenshot(page, f"{path or 'home'}.png")


def test_charts_load_on_request(server, page):
    """Pages open with pictures; a pill swaps in the interactive plotly chart."""
    page.goto(server)
    wait_until_done(page)
    main = page.locator('[data-testid="stMain"]')
    assert not main.locator('[data-testid="stPlotlyChart"]').count()
    main.get_by_text("Interactive code matrix").wait_for()  # the pill's label
    main.locator('[data-testid="stButtonGroup"] button').filter(has_text="interactive").click()
    main.locator('[data-testid="stPlotlyChart"]').first.wait_for(state="visible")
    wait_until_done(page)
    assert main.locator('[data-testid="stPlotlyChart"] .main-svg').count()
    screenshot(page, "home_interactive.png")


def test_seed_change_in_the_browser(server, page):
    page.goto(f"{server}/generate")
    wait_until_done(page)
    seed = page.get_by_role("spinbutton", name="Seed")
    seed.fill("7")
    seed.press("Enter")
    page.get_by_role("heading", name="Sample of seed 7").wait_for()
    wait_until_done(page)
    page.get_by_role("link", name="Ablation lab").click()
    page.get_by_text("full ensemble (seed 7)").wait_for()
    wait_until_done(page)
    screenshot(page, "ablation_seed7.png")
    page.get_by_role("button", name="Remove image #").click()  # its members switch off
    page.get_by_text("3 of 6 members on").wait_for()
    page.get_by_role("heading", name="Training images no active member saw (1)").wait_for()
    wait_until_done(page)
    screenshot(page, "ablation_remove0.png")


def test_diagnostics_of_the_shipped_run(page, tmp_path_factory):
    """The shipped run's saved report, drawn: every figure renders, nothing raises."""
    with streamlit_server(
        tmp_path_factory.mktemp("streamlit-shipped") / "server.log",
        TDA_RUNS=str(tmp_path_factory.mktemp("no-runs")),
        TDA_ASSETS=str(ROOT / "assets"),
    ) as url:
        page.goto(f"{url}/diagnostics")  # the default run: its candidate test
        wait_until_done(page)
        main = page.locator('[data-testid="stMain"]')
        main.get_by_text("Are samples attributable?").first.wait_for(state="visible")
        main.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for(state="visible")
        assert not page.locator('[data-testid="stException"]').count()
        screenshot(page, "diagnostics_shipped_default.png")
        page.goto(f"{url}/diagnostics?run=n16-replay")  # the contrast run's full report
        wait_until_done(page)
        page.get_by_role("heading", name="Diagnostics").first.wait_for()
        for text in ("FD ensemble", "Sample quality", "512 samples each"):
            main.get_by_text(text).first.wait_for(state="visible")
        main.locator('[data-testid="stPlotlyChart"]').nth(3).wait_for(state="visible")
        wait_until_done(page)
        assert not page.locator('[data-testid="stException"]').count()
        assert main.locator('[data-testid="stPlotlyChart"]').count() >= 6
        screenshot(page, "diagnostics_shipped.png")


def test_a_shared_link_opens_its_view_and_follows_changes(server, page):
    """?seed= in a link is read on the first visit; the URL and every navigation link then
    follow the sidebar, so the address bar can be copied and handed out at any time."""
    page.goto(f"{server}/generate?seed=7")
    wait_until_done(page)
    page.get_by_role("heading", name="Sample of seed 7").wait_for()
    page.wait_for_function("() => location.search.includes('combine=')")
    assert "seed=7" in page.url and "run=" in page.url
    seed = page.get_by_role("spinbutton", name="Seed")
    seed.fill("8")
    seed.press("Enter")
    page.get_by_role("heading", name="Sample of seed 8").wait_for()
    wait_until_done(page)
    page.wait_for_function("() => location.search.includes('seed=8')")
    link = page.get_by_role("link", name="Ablation lab")
    assert "seed=8" in link.get_attribute("href")
    link.click()
    page.get_by_text("full ensemble (seed 8)").wait_for()
    wait_until_done(page)
    page.wait_for_function(
        "() => location.pathname.endsWith('/ablation') && location.search.includes('seed=8')"
    )


def test_a_hostile_link_gets_messages_not_a_traceback(server, page):
    page.goto(f"{server}/generate?seed=-1&run=..%2F..%2Fetc%2Fpasswd&combine=%3Cscript%3E&x=1")
    wait_until_done(page)
    page.get_by_role("heading", name="Sample of seed 0").wait_for()
    main = page.locator('[data-testid="stMain"]')
    for text in ("a run this server does not have", "seed is not a whole number", "rule is not"):
        main.get_by_text(text).first.wait_for(state="visible")
    assert not page.locator('[data-testid="stException"]').count()
    shown = main.inner_text()  # the link's values are never repeated on the page
    assert "passwd" not in shown and "<script>" not in shown
    page.wait_for_function("() => location.search.includes('seed=0')")
    assert "x=1" not in page.url and "passwd" not in page.url
    screenshot(page, "hostile_link.png")


def test_ladder_click_switches_the_app_to_a_rung(tiny_ladder_dir, page, tmp_path_factory):
    """Two rungs of one recipe: the page draws both, and a click on the other rung's
    button switches the sidebar's run, the URL and every page to it."""
    with streamlit_server(
        tmp_path_factory.mktemp("streamlit-ladder") / "server.log",
        TDA_RUNS=str(tiny_ladder_dir),
        TDA_ASSETS=str(tmp_path_factory.mktemp("no-assets-ladder")),
    ) as url:
        page.goto(f"{url}/ladder")
        wait_until_done(page)
        main = page.locator('[data-testid="stMain"]')
        main.get_by_text("on every rung").first.wait_for(state="visible")
        main.get_by_role("button", name="N = 16: open now").wait_for()
        page.wait_for_function("() => location.search.includes('tiny16')")
        wait_until_done(page)
        check_app_frame(page, "Ladder")
        screenshot(page, "ladder.png")
        main.get_by_role("button", name="N = 20: open").click()
        main.get_by_role("button", name="N = 20: open now").wait_for()
        page.wait_for_function("() => location.search.includes('tiny20')")
        wait_until_done(page)
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("N = 20 images", exact=False).first.wait_for(state="visible")
        page.get_by_role("link", name="Generate").click()
        page.get_by_role("heading", name="Sample of seed 0").wait_for()
        wait_until_done(page)
        assert "tiny20" in page.url
        sidebar.get_by_text("N = 20 images", exact=False).first.wait_for(state="visible")
        assert not page.locator('[data-testid="stException"]').count()
