"""Keyboard review, sign-off, amendment and the count log in a real browser (Debian's chromium via
Playwright against `make run`). Review needs no model, so this module's server has none of its own.

Screenshots go to test-artifacts/ (look at them: the key layout must be readable).
"""

import csv
import io

import pytest
import test_browser
from test_browser import (
    ARTIFACTS,
    choose_analysis,
    downloaded,
    make_run,
    metric,
    open_page,
    settled,
    stored_analysis,
)

from bloodcells.store import PredictionRow, open_store
from bloodcells.synthetic import cell_image, encode

pytestmark = [pytest.mark.browser, pytest.mark.slow]
browser, page = test_browser.browser, test_browser.page  # the same chromium and tabs, this module's server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with make_run(tmp_path_factory.mktemp("browser-review")) as running:
        yield running


def cells_of(server, analysis_id: int) -> list[tuple[str, list[tuple]]]:
    """(final code, [(old, new, reviewer, amendment?)]) per cell, from the database."""
    store = open_store(server["database"])
    try:
        return [(p.final_code, [(r.old_code, r.new_code, r.reviewer, r.reopening_id is not None) for r in p.reviews])
                for p in store.get_analysis(analysis_id).predictions]
    finally:
        store.engine.dispose()


def open_review(page, server, analysis_id: int, name: str) -> None:
    from playwright.sync_api import expect

    open_page(page, server, "Review")
    choose_analysis(page, analysis_id)
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Your name").press("Enter")
    settled(page)
    expect(page.get_by_text("Enter your name in the sidebar")).to_have_count(0)


def keyboard_mode(page) -> None:
    """Switch Review to keyboard mode and take the focus out of any text box (keys typed there are text)."""
    from playwright.sync_api import expect

    page.get_by_test_id("stButtonGroup").get_by_text("keyboard", exact=True).click()
    expect(page.get_by_text("Cell 1 of ")).to_be_visible()
    page.get_by_role("heading", level=1).click()


def press(page, key: str, then: str) -> None:
    """Press ``key`` as a user does, having seen the cell (a key sooner than the page's SEEN_SECONDS after
    the cell was drawn is refused), and wait until ``then`` shows and the page has run to its end."""
    from playwright.sync_api import expect

    page.wait_for_timeout(600)
    page.keyboard.press(key)
    expect(page.get_by_text(then)).to_be_visible()
    settled(page)


def click_until(page, button, shown) -> None:
    """Click ``button`` until ``shown`` (a locator) is visible. CI lost a Sign off click on a slow
    machine: the page had settled, the button was there, nothing ran. The buttons this is for are
    gone once they have done their work, so a click repeated only after the page settled with the
    button still there cannot do it twice."""
    from playwright.sync_api import expect

    for _ in range(2):
        button.click()
        try:
            expect(shown).to_be_visible(timeout=30_000)
            return
        except AssertionError:
            settled(page)
            if not button.is_visible():
                break
    expect(shown).to_be_visible()


def panel(page):
    """The sign-off panel, opened: once the page has run to its end, and judged by the expander's own
    open state (a button's visibility read during a rerun made this close an open panel)."""
    from playwright.sync_api import expect

    settled(page)
    header = page.get_by_test_id("stExpander").filter(has_text="Sign-off and report (PDF)")
    if header.locator("details").get_attribute("open") is None:
        header.get_by_text("Sign-off and report (PDF)").click()
    expect(header.get_by_role("button", name="Download report (PDF)")).to_be_visible()
    return header


def test_keyboard_review_with_keys_arrows_and_undo(page, server):
    from playwright.sync_api import expect

    analysis_id = stored_analysis(server, "NGS", "ALL/MYE/MYM/NEU/NGS", 4)
    open_review(page, server, analysis_id, "Dr Keys")
    keyboard_mode(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "keyboard_review_layout.png"), full_page=True)
    press(page, "5", then="Cell 2 of 4")  # band neutrophil, and on to the next cell
    press(page, "u", then="Cell 3 of 4")  # unidentified
    assert [code for code, _ in cells_of(server, analysis_id)] == ["NGB", "NIF", "NGS", "NGS"]
    press(page, "Backspace", then="Cell 2 of 4")  # undo: back on that cell, its type restored
    press(page, "ArrowRight", then="Cell 3 of 4")
    press(page, "ArrowLeft", then="Cell 2 of 4")
    press(page, "ArrowLeft", then="Cell 1 of 4")
    expect(page.get_by_text("now NGB · band neutrophil")).to_be_visible()
    cells = cells_of(server, analysis_id)
    assert [code for code, _ in cells] == ["NGB", "NGS", "NGS", "NGS"]
    assert cells[0][1] == [("NGS", "NGB", "Dr Keys", False)]
    assert cells[1][1] == [("NGS", "NIF", "Dr Keys", False), ("NIF", "NGS", "Dr Keys", False)]  # both kept
    expect(metric(page, "Reviewed")).to_have_text("1 of 4")  # the undone cell is unreviewed again
    page.screenshot(path=str(ARTIFACTS / "keyboard_review_after_keys.png"), full_page=True)


def test_keys_pressed_faster_than_the_page_runs_never_review_a_cell_twice(page, server):
    """6, 7, 9 with no pause were three reviews of the first cell (saved as the last key's type) and
    none of the next two: each key reached the server as a click of the buttons drawn for cell 1."""
    from playwright.sync_api import expect

    analysis_id = stored_analysis(server, "NGS", "ALL/MYE/MYM/NEU/NGS", 4)
    open_review(page, server, analysis_id, "Dr Quick")
    keyboard_mode(page)
    page.wait_for_timeout(600)  # the first cell seen; then three keys with no pause
    for key in "679":
        page.keyboard.press(key)
    settled(page)
    cells = cells_of(server, analysis_id)
    reviewed = [n for n, (_, reviews) in enumerate(cells) if reviews]
    assert all(len(reviews) <= 1 for _, reviews in cells), cells  # no cell reviewed by a key meant for another
    assert reviewed == list(range(len(reviewed))) and reviewed, cells  # the first cells, in order
    if len(reviewed) < 3:  # keys that came before their cell was shown: said, not applied
        expect(page.get_by_text("pressed before this cell was shown")).to_be_visible()


def test_sign_off_locks_keys_reopen_amend_and_the_report_says_amended(page, server):
    from playwright.sync_api import expect
    from pypdf import PdfReader

    analysis_id = stored_analysis(server, "NGS", "ALL/MYE/MYM/NEU/NGS", 3)
    open_review(page, server, analysis_id, "Dr Sign")
    signing = panel(page)
    signing.get_by_role("textbox", name="Category").fill("routine")
    signing.get_by_role("textbox", name="Category").press("Enter")
    settled(page)  # a click while the page reruns for the text can be lost
    signing.get_by_test_id("stSelectbox").filter(has_text="Specimen").click()
    page.get_by_role("option", name="peripheral blood").click()
    settled(page)
    signing.get_by_text("Sign off with the 3 flagged cells not reviewed").click()  # on purpose
    settled(page)
    click_until(page, signing.get_by_role("button", name="Sign off", exact=True),
                page.get_by_text("Signed off by Dr Sign"))
    settled(page)
    keyboard_mode(page)
    page.keyboard.press("5")  # locked: the key does nothing
    expect(page.get_by_test_id("stButton").filter(has_text="NGB · band neutrophil").get_by_role("button")).to_be_disabled()
    page.screenshot(path=str(ARTIFACTS / "keyboard_review_locked.png"), full_page=True)
    assert [reviews for _, reviews in cells_of(server, analysis_id)] == [[], [], []]

    reopening = panel(page)
    reopening.get_by_role("textbox", name="Reason for reopening").fill("a band was missed")
    reopening.get_by_role("textbox", name="Reason for reopening").press("Enter")
    settled(page)
    click_until(page, reopening.get_by_role("button", name="Reopen to amend"),  # its new label closes the panel
                page.get_by_text("Sign-off and report (PDF) · reopened"))
    expect(page.get_by_text("Signed off by Dr Sign")).to_have_count(0)
    settled(page)
    page.get_by_role("heading", level=1).click()
    press(page, "5", then="Cell 2 of 3")
    assert cells_of(server, analysis_id)[0] == ("NGB", [("NGS", "NGB", "Dr Sign", True)])
    panel(page).get_by_text("Sign off with the 2 flagged cells not reviewed").click()
    settled(page)
    click_until(page, panel(page).get_by_role("button", name="Sign off the amended differential"),
                page.get_by_text("Signed off by Dr Sign"))
    settled(page)
    report = downloaded(page, panel(page).get_by_role("button", name="Download report (PDF)"))
    text = "\n".join(p.extract_text() for p in PdfReader(report).pages)
    for expected in ("Differential count - AMENDED", "Amended: signed off again by Dr Sign", "Specimen peripheral blood",
                     "reopened by Dr Sign: a band was missed", "Changes after the first sign-off", "(NGS) -> band neutrophil (NGB)"):
        assert expected in text, expected
    page.screenshot(path=str(ARTIFACTS / "review_signed_amended.png"), full_page=True)


def test_count_log_filters_and_downloads_csv(page, server):
    from playwright.sync_api import expect

    store = open_store(server["database"])
    marrow = stored_analysis(server, "EBO", "ALL/ERY/EBO", 2)
    store.sign_off(marrow, "Dr Marrow", category="bone marrow")
    stored_analysis(server, "LYT", "ALL/LYM/LYT", 1)
    store.engine.dispose()
    open_page(page, server, "History")
    page.get_by_test_id("stButtonGroup").get_by_text("count log", exact=True).click()
    page.get_by_text("Category", exact=True).wait_for()
    page.get_by_test_id("stMultiSelect").filter(has_text="Category").click()
    page.get_by_role("option", name="bone marrow").click()
    page.keyboard.press("Escape")
    expect(page.get_by_text("1 of ")).to_be_visible()
    settled(page)
    count_log = downloaded(page, page.get_by_role("button", name="Download count log (CSV)"))
    rows = list(csv.DictReader(io.StringIO(count_log.read_text(encoding="utf-8-sig"))))
    assert [(r["id"], r["category"], r["signed by"], r["status"], r["Erythroblasts"]) for r in rows] == [
        (str(marrow), "bone marrow", "Dr Marrow", "signed", "2")]


def test_the_cells_filter_shown_is_the_one_applied_after_choosing_another_analysis(page, server):
    """Chosen after an analysis with nothing flagged ("all"), an analysis showed its flagged cells while the
    control still read "all", which the browser sent back at the first click: the view jumped to every cell."""
    from playwright.sync_api import expect

    store = open_store(server["database"])
    mixed = store.start_analysis("two flagged.zip", "classification", {"ALL": "0" * 64})
    store.finish_analysis(mixed, predictions=[
        PredictionRow(f"NGS_{n}.png", "NGS", "ALL/MYE/MYM/NEU/NGS", 0.4 if n < 2 else 0.99, {}, n < 2,
                      encode(cell_image("NGS", n, 64))) for n in range(6)])
    calm = store.start_analysis("none flagged.zip", "classification", {"ALL": "0" * 64})
    store.finish_analysis(calm, predictions=[
        PredictionRow(f"LYT_{n}.png", "LYT", "ALL/LYM/LYT", 0.99, {}, False, encode(cell_image("LYT", n, 64)))
        for n in range(2)])
    store.engine.dispose()
    open_review(page, server, calm, "Dr Filter")
    choose_analysis(page, mixed)
    others = page.get_by_role("button", name="other…")
    expect(others).to_have_count(2)  # its flagged cells
    page.get_by_role("button", name="✓ NGS").first.click()
    settled(page)
    expect(others).to_have_count(2)  # still the flagged view
    assert [len(reviews) for _, reviews in cells_of(server, mixed)] == [1, 0, 0, 0, 0, 0]


def test_a_clicked_button_does_not_keep_the_keys_meant_for_the_cells(page, server):
    """After a click on "all" (the view) the arrows moved the buttons' choice, not the cells; after a click on a
    type, Enter pressed that button again for the next cell."""
    from playwright.sync_api import expect

    analysis_id = stored_analysis(server, "NGS", "ALL/MYE/MYM/NEU/NGS", 4)
    open_review(page, server, analysis_id, "Dr Focus")
    keyboard_mode(page)
    page.get_by_test_id("stButtonGroup").get_by_text("all", exact=True).click()
    settled(page)
    press(page, "ArrowRight", then="Cell 2 of 4")
    page.get_by_role("button", name="NGB · band neutrophil").click()  # a type by mouse: cell 2, on to cell 3
    expect(page.get_by_text("Cell 3 of 4")).to_be_visible()
    settled(page)
    page.wait_for_timeout(600)
    page.keyboard.press("Enter")
    page.wait_for_timeout(1000)
    settled(page)
    assert [code for code, _ in cells_of(server, analysis_id)] == ["NGS", "NGB", "NGS", "NGS"]  # cell 3 untouched
