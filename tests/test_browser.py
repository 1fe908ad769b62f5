"""The app in a real browser: Debian's chromium driven by Playwright against `make run`'s server.

One server per module (tiny trained models, its own data folder); each test opens its own page.
Screenshots go to test-artifacts/ (they are what a user sees: look at them).
"""

import base64
import csv
import io
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_make_run import free_port, wait_for_health

from bloodcells.store import PredictionRow, open_store
from bloodcells.synthetic import cell_image, encode, smear_field, write_cell_zip

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 180_000  # the machine is shared: model loading and inference can be slow


@contextmanager
def make_run(root: Path, models: Path | None = None) -> Iterator[dict]:
    """`make run` on a free port with its own data folder under ``root`` (and ``models`` when given):
    the server's URL and database."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (CI installs Debian's chromium)")
    env = {**os.environ, "BLOODCELLS_DATA_DIR": str(root / "data")}
    if models is not None:
        env["BLOODCELLS_MODELS_DIR"] = str(models)
    env.pop("BLOODCELLS_DATABASE_URL", None)
    env.pop("BLOODCELLS_PASSWORD", None)
    port = free_port()
    # to a file: a pipe nobody reads fills up (64 KiB) and then blocks the server at its next log line
    log = root / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(port, process, log)
        yield {"url": f"http://127.0.0.1:{port}", "database": f"sqlite:///{root / 'data' / 'bloodcells.db'}"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory, trained_models_dir, trained_detector):
    """`make run` with the tiny models and a fresh data folder."""
    root = tmp_path_factory.mktemp("browser")
    models = root / "models"
    shutil.copytree(trained_models_dir, models / "classifier" / "default")
    shutil.copytree(trained_detector.parent, models / "detector")
    with make_run(root, models) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server, request):
    """A fresh tab; its last view is saved as test-artifacts/<test name>.png, passed or failed."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1400, "height": 1600}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    yield tab
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def open_page(page, server, path: str) -> None:
    page.goto(f"{server['url']}/{path}")
    page.get_by_role("heading", level=1).first.wait_for()


def drop_file(page, name: str, content: bytes, mime: str) -> None:
    """Drag a file onto the file uploader, as a user does (a drop event carrying the file)."""
    zone = page.get_by_test_id("stFileUploaderDropzone").first
    data = page.evaluate_handle(
        """([name, b64, mime]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: mime}));
            return transfer;
        }""", [name, base64.b64encode(content).decode(), mime])
    zone.dispatch_event("dragenter", {"dataTransfer": data})
    zone.dispatch_event("drop", {"dataTransfer": data})
    page.get_by_text(name).first.wait_for()


def metric(page, label: str):
    """The value of the metric labelled ``label``."""
    label_element = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return page.get_by_test_id("stMetric").filter(has=label_element).get_by_test_id("stMetricValue").first


def test_classification_drag_a_zip_see_counts_and_download(page, server, tmp_path):
    from playwright.sync_api import expect

    upload = write_cell_zip(tmp_path / "cells.zip", {"LYT": 3, "EOS": 3, "NGS": 3}, size=32)
    open_page(page, server, "Classification")
    drop_file(page, "cells.zip", upload.read_bytes(), "application/zip")
    page.get_by_role("button", name="Classify").click()
    expect(page.get_by_text("Saved as analysis #")).to_be_visible()
    expect(metric(page, "Cells")).to_have_text("9")
    expect(page.get_by_text("Differential")).to_be_visible()
    rows = list(csv.DictReader(io.StringIO(downloaded(page, page.get_by_role("button", name="Download CSV"))
                                           .read_text(encoding="utf-8-sig"))))
    assert len(rows) == 9 and {r["file"].split("/")[0] for r in rows} == {"LYT", "EOS", "NGS"}
    page.get_by_test_id("stPlotlyChart").first.wait_for()


def test_classification_cancel_keeps_nothing_half_stored(page, server, tmp_path):
    from playwright.sync_api import expect

    upload = write_cell_zip(tmp_path / "many.zip", {"LYT": 1500, "NGS": 1500}, size=24)
    open_page(page, server, "Classification")
    drop_file(page, "many.zip", upload.read_bytes(), "application/zip")
    page.get_by_role("button", name="Classify").click()
    expect(page.get_by_test_id("stProgress")).to_be_visible()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_text("Classification cancelled")).to_be_visible()
    store = open_store(server["database"])
    deadline = time.time() + 60  # the stopped run cleans up in its own thread, beside the new run
    while (cancelled := [a for a in store.list_analyses() if a.name == "many.zip"])[0].status == "running" \
            and time.time() < deadline:
        time.sleep(0.5)
    assert [(a.status, "cancelled" in (a.error or "")) for a in cancelled] == [("failed", True)]
    assert not store.get_analysis(cancelled[0].id).predictions  # no partial results
    store.engine.dispose()


def stored_analysis(server, code: str, path: str, cells: int) -> int:
    store = open_store(server["database"])
    analysis_id = store.start_analysis(f"{code}-cells.zip", "classification", {"ALL": "0" * 64})
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"{code}_{n}.png", code, path, 0.4, {}, True, encode(cell_image("NGS", n, 64)))
        for n in range(cells)])
    store.engine.dispose()
    return analysis_id


def settled(page) -> None:
    """Wait until the page's script has finished running (its widgets are those of the new run). The
    short pause first lets a rerun just asked for (Enter, a click) begin: before it, the page still
    reads "not running" from the run before."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


def downloaded(page, button) -> Path:
    """Click a download button and return the file it gives. On a loaded machine a click now and
    then brings no download (the page had settled; the server logged nothing: the click landed on
    a button being redrawn), so after 30 s without one the page is let settle and the button
    clicked again; a lost click is reported as a warning. Downloading twice does no harm."""
    import warnings

    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    for attempt in range(3):
        try:
            with page.expect_download(timeout=30_000) as download:
                button.click()
        except PlaywrightTimeoutError:
            settled(page)
            continue
        if attempt:
            warnings.warn(f"a download click brought nothing; click {attempt + 1} did", stacklevel=2)
        return Path(download.value.path())
    raise AssertionError("three clicks on the download button brought no download")


def choose_analysis(page, analysis_id: int) -> None:
    """Pick an analysis in the page's "Analysis" select box (found by its label: the gallery's
    "Other type" boxes are comboboxes too, and may come first in the page), and wait for the page
    to run with it: text typed into a widget while it reruns can be lost."""
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Analysis").first.click()
    page.get_by_role("option", name=f"#{analysis_id} ").click()
    settled(page)


def review_one_cell(page, server, analysis_id: int, button: str) -> list[tuple]:
    """Open the analysis on Review as Dr Browser, click ``button`` once; the reviews stored after."""
    from playwright.sync_api import expect

    open_page(page, server, "Review")
    choose_analysis(page, analysis_id)
    page.get_by_label("Your name").fill("Dr Browser")
    page.get_by_label("Your name").press("Enter")
    expect(metric(page, "Reviewed")).to_have_text("0 of 3")
    page.get_by_role("button", name=button, exact=True).first.click()
    expect(metric(page, "Reviewed")).to_have_text("1 of 3")
    store = open_store(server["database"])
    reviews = [(r.old_code, r.new_code, r.reviewer) for p in store.get_analysis(analysis_id).predictions
               for r in p.reviews]
    store.engine.dispose()
    return reviews


def test_review_one_click_changes_the_count(page, server):
    from playwright.sync_api import expect

    analysis_id = stored_analysis(server, "NGS", "ALL/MYE/MYM/NEU/NGS", 3)
    reviews = review_one_cell(page, server, analysis_id, "NGB · band neutrophil")
    expect(page.get_by_test_id("stDataFrame").first).to_contain_text("band neutrophil")
    assert reviews == [("NGS", "NGB", "Dr Browser")]


def test_detection_upload_a_smear_see_boxes(page, server):
    from playwright.sync_api import expect

    field, boxes = smear_field(320, 240, seed=3)
    open_page(page, server, "Detection")
    confidence = page.get_by_label("Minimum box confidence", exact=True)
    confidence.fill("0.001")  # the 1-epoch test detector is unsure of everything
    confidence.press("Enter")
    drop_file(page, "field.png", encode(field), "image/png")
    page.get_by_role("button", name="Detect", exact=True).click()
    expect(page.get_by_text("Saved as analysis #")).to_be_visible()
    annotated = page.get_by_test_id("stImage").filter(has_text="field.png")
    expect(annotated).to_be_visible()
    expect(page.get_by_role("button", name="Download annotated PNG")).to_be_visible()
    from PIL import Image

    drawn = Image.open(downloaded(page, page.get_by_role("button", name="Download annotated PNG"))).convert("RGB")
    assert drawn.size == field.size and drawn.tobytes() != field.tobytes()  # boxes were drawn on it


def test_explanation_shows_a_heatmap(page, server):
    from playwright.sync_api import expect

    open_page(page, server, "Explanation")
    drop_file(page, "eosinophil.png", encode(cell_image("EOS", 3, 64)), "image/png")
    page.get_by_role("button", name="Explain", exact=True).click()
    expect(page.get_by_text("Morphology")).to_be_visible()
    heatmaps = page.get_by_test_id("stImage").filter(has_text="→")
    expect(heatmaps.first).to_be_visible()
    assert heatmaps.count() >= 1
    expect(metric(page, "Time")).to_contain_text(" s")


def test_review_of_not_identifiable_cells(page, server):
    """Regression (#12): cells predicted NIF stopped the page with a duplicate widget key."""
    from playwright.sync_api import expect

    analysis_id = stored_analysis(server, "NIF", "ALL/ABN/NIF", 3)
    reviews = review_one_cell(page, server, analysis_id, "OTH · other cell")  # the nearest other type, one click
    expect(page.get_by_text("StreamlitDuplicateElementKey")).to_have_count(0)
    assert reviews == [("NIF", "OTH", "Dr Browser")]


def test_review_downloads_the_report_to_sign(page, server):
    """The PDF a haematologist signs, downloaded from Review and read back."""
    from pypdf import PdfReader

    analysis_id = stored_analysis(server, "NGS", "ALL/MYE/MYM/NEU/NGS", 3)
    open_page(page, server, "Review")
    choose_analysis(page, analysis_id)
    page.get_by_text("Sign-off and report (PDF)").click()
    page.get_by_role("textbox", name="Category").fill("peripheral blood")
    page.get_by_role("textbox", name="Category").press("Enter")
    settled(page)  # a click while Enter's rerun is under way was lost now and then (no download came)
    report = downloaded(page, page.get_by_role("button", name="Download report (PDF)"))
    text = "\n".join(p.extract_text() for p in PdfReader(report).pages)
    assert "Segmented neutrophils" in text and "peripheral blood" in text
    assert "3 of a 200-cell target" in text and "Flagged, not reviewed 3" in text


def test_history_after_a_delete_names_the_analysis_it_shows(page, server):
    """After "Yes, delete", the Open box went on naming the deleted analysis above another one's page (and its
    Delete button): Streamlit's browser side kept the forgotten choice."""
    stored_analysis(server, "LYT", "ALL/LYM/LYT", 2)  # one left to show
    doomed = stored_analysis(server, "EOS", "ALL/MYE/MYM/EOS", 2)
    open_page(page, server, "History")
    settled(page)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Open").first.click()
    page.get_by_role("option", name=f"#{doomed} ").click()
    settled(page)
    page.get_by_text("Delete…").first.click()
    settled(page)
    page.get_by_text(f"Yes, delete #{doomed}").click()
    settled(page)
    shown = page.get_by_role("combobox", name="Open").input_value()  # "#12 · date · kind · name (status)"
    assert not shown.startswith(f"#{doomed} ")
    assert shown.split(" ")[0] == page.locator("h3").first.inner_text().split(" ")[0]  # the page's "#12 name"
