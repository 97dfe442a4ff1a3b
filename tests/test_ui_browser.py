"""The upload page (``GET /``, ``service/static/``) in a real headless Chromium against the real service.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``.ci/install-system-deps.sh``), driven by
Playwright for Python (the ``ui-test`` extra; Playwright's own browser download is not used). The
service is the shared ``live_server`` from ``conftest.py`` (``python -m service`` on 127.0.0.1).

For real test-split HAM10000 images, the page's rendered top class, the seven bars and the
malignant probability / referral must equal what the JSON API answers for the same file (fetched
separately with httpx). A non-image upload must show a plain-words error. Screenshots go to
``test-artifacts/`` (gitignored). Missing Chromium, Playwright or dataset -> skip; with ``CI=true``
they fail instead (``conftest.require``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, require

CHROMIUM = Path(os.environ.get("DERMSERVE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
TIMEOUT_MS = 30_000


def pct(p: float) -> str:
    """The page's percentage format (JavaScript ``(p * 100).toFixed(1) + "%"``)."""
    return f"{p * 100:.1f}%"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "Playwright for Python is not installed (pip install -e '.[ui-test]')")
    require(CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK),
            f"Chromium not found at {CHROMIUM} (sh .ci/install-system-deps.sh installs Debian's chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def api_answer(base_url: str, path: Path, headers: dict[str, str] | None = None) -> dict:
    """What ``POST /predict`` says for one file, sent the way the page sends it (one multipart part)."""
    r = httpx.post(base_url + "/predict", files=[("images", (path.name, path.read_bytes(), "image/jpeg"))],
                   headers=headers or {}, timeout=60.0)
    assert r.status_code == 200, r.text
    return r.json()


def card(page, filename: str):
    return page.locator("li.card", has=page.locator(".filename", has_text=re.compile("^" + re.escape(filename) + "$")))


def wait_cards_settled(page, n: int) -> None:
    page.wait_for_function(
        "n => { const c = document.querySelectorAll('li.card');"
        " return c.length === n && [...c].every(e => ['done', 'error', 'auth'].includes(e.dataset.state)); }",
        arg=n, timeout=TIMEOUT_MS * 2)


def check_card_matches_api(page, filename: str, answer: dict) -> None:
    pred = answer["predictions"][0]
    c = card(page, filename)
    assert c.get_attribute("data-state") == "done", c.inner_text()
    assert c.locator(".top-code").inner_text() == pred["label"]
    assert c.locator(".top-name").inner_text() == pred["label_name"]
    assert c.locator(".top-prob").inner_text() == pct(pred["probability"])
    assert filename in (c.locator("img.thumb").get_attribute("alt") or "")

    rows = c.locator(".bars li.bar-row")
    assert rows.count() == 7
    seen = {}
    for i in range(7):
        row = rows.nth(i)
        code = row.get_attribute("data-code")
        value = float(row.get_attribute("data-probability"))
        shown = row.locator(".bar-value").inner_text()
        label = row.locator(".bar-label").inner_text()
        width = row.locator(".bar-fill").evaluate("e => parseFloat(e.style.width)")
        seen[code] = (value, shown, label, width)
    assert sorted(seen) == sorted(pred["probabilities"]) == CLASSES
    for code, p in pred["probabilities"].items():
        value, shown, label, width = seen[code]
        # the page's own request may be batched differently by the server: allow float noise
        assert value == pytest.approx(p, abs=1e-5), code
        assert abs(float(shown.rstrip("%")) - p * 100) <= 0.05 + 1e-3, (code, shown, p)
        assert width == pytest.approx(p * 100, abs=0.01), code
        assert label.startswith(code)
    names = {row.get_attribute("data-code"): row.locator(".bar-name").inner_text()
             for row in (rows.nth(i) for i in range(7))}
    assert names[pred["label"]] == pred["label_name"]
    shown_order = [rows.nth(i).get_attribute("data-code") for i in range(7)]
    assert shown_order[0] == pred["label"], "bars are sorted by probability, top class first"

    mal = c.locator(".malignant")
    assert float(mal.get_attribute("data-value")) == pytest.approx(pred["malignant_probability"], abs=1e-5)
    shown_mal = float(re.search(r"Malignant probability ([\d.]+)%", mal.inner_text()).group(1))
    assert abs(shown_mal - pred["malignant_probability"] * 100) <= 0.05 + 1e-3

    referral = c.locator(".referral")
    title = referral.locator(".referral-title").inner_text()
    reasons = [li.get_attribute("data-reason") for li in referral.locator(".referral-reasons li").all()]
    if pred["referral_recommended"]:
        assert "Referral recommended" in title and "refer" in referral.get_attribute("class").split()
    else:
        assert "No referral" in title
    assert reasons == pred["referral_reasons"]


def test_upload_page_matches_api_and_reports_non_image(live_server, test_images, page, tmp_path):
    base = live_server.base_url
    images = test_images(3, offset=5)
    answers = {p.name: api_answer(base, p) for p in images}
    model = httpx.get(base + "/model", timeout=10.0).json()

    page.goto(base + "/")
    assert "Decision support, not a diagnosis" in page.locator("#disclaimer").inner_text()
    assert page.locator("#disclaimer").is_visible()
    page.wait_for_function("() => !/loading/.test(document.getElementById('model-name').textContent)")
    assert page.locator("#model-name").inner_text() == f"{model['name']} {model['version']}"
    assert page.locator("#auth").is_hidden()

    # several images at once through the file chooser
    page.set_input_files("#file-input", [str(p) for p in images])
    wait_cards_settled(page, 3)
    for name, answer in answers.items():
        check_card_matches_api(page, name, answer)

    # a non-image: the server refuses it (422 not_an_image) and the page says so in plain words
    txt = tmp_path / "photo.txt"
    txt.write_text("this is not a photograph\n")
    page.set_input_files("#file-input", str(txt))
    wait_cards_settled(page, 4)
    bad = card(page, "photo.txt")
    assert bad.get_attribute("data-state") == "error"
    assert bad.locator(".card-error").inner_text().strip() == "photo.txt: not an image"
    assert bad.locator(".card-error").get_attribute("role") == "alert"
    assert "1 failed" in page.locator("#status").inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-upload.png"), full_page=True)

    page.set_viewport_size(PHONE)
    page.wait_for_timeout(200)
    overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 375px width"
    page.screenshot(path=str(ARTIFACTS / "ui-upload-phone.png"), full_page=True)
    # still readable on a phone: the bar value and label of the top class are on screen, not clipped away
    first = card(page, images[0].name)
    assert first.locator(".bars li.bar-row").first.locator(".bar-value").is_visible()
    box = first.bounding_box()
    assert box is not None and box["width"] <= PHONE["width"]


def test_upload_page_drop_and_busy_and_too_large(live_server, test_images, page):
    """Drag-and-drop, and the plain-words texts for 503 (simulated: a real full queue is not
    reproducible in a short test) and a real 413 from the service's body limit."""
    base = live_server.base_url
    img = test_images(1, offset=9)[0]
    answer = api_answer(base, img)
    page.goto(base + "/")

    # drop a file onto the drop zone (a DataTransfer built in the page from the file's bytes)
    data = list(img.read_bytes())
    handle = page.evaluate_handle(
        "([name, bytes]) => { const dt = new DataTransfer();"
        " dt.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/jpeg'})); return dt; }",
        [img.name, data])
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": handle})
    wait_cards_settled(page, 1)
    check_card_matches_api(page, img.name, answer)

    # service busy: answer /predict with the service's 503 body for the next request only
    page.route("**/predict", lambda route: route.fulfill(
        status=503, headers={"Retry-After": "2", "Content-Type": "application/json"},
        body='{"error": "the queue is full", "request_id": "x"}'), times=1)
    page.set_input_files("#file-input", str(img))
    wait_cards_settled(page, 2)
    busy = page.locator("li.card").nth(1)
    assert busy.locator(".card-error p").inner_text() == "Service busy, try again in 2 s."
    busy.locator(".card-error button", has_text="Try again").click()  # the retry reaches the real service
    page.wait_for_function("() => document.querySelectorAll('li.card')[1].dataset.state === 'done'")
    assert busy.locator(".top-code").inner_text() == answer["predictions"][0]["label"]

    # request too large: a real 413 from the live server (DERMSERVE_MAX_UPLOAD_BYTES = 1 MB)
    big = bytes(1_300_000)
    page.set_input_files("#file-input", files=[{"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": big}])
    wait_cards_settled(page, 3)
    huge = card(page, "huge.jpg")
    assert huge.locator(".card-error p").inner_text().startswith("huge.jpg: request too large")


def test_upload_page_asks_for_api_key(server_factory, test_images, page):
    server = server_factory(env={"DERMSERVE_API_KEYS": '["ui-secret-key"]'})
    base = server.base_url
    img = test_images(1, offset=7)[0]
    answer = api_answer(base, img, headers={"Authorization": "Bearer ui-secret-key"})
    sent_auth: list[str | None] = []
    page.on("request", lambda req: sent_auth.append(req.headers.get("authorization"))
            if req.url.endswith("/predict") else None)

    page.goto(base + "/")
    auth = page.locator("#auth")
    auth.wait_for(state="visible")  # GET /model answered 401
    assert page.locator("label[for=api-key]").inner_text() == "API key"

    # an upload without a key is answered 401 and waits for the key
    page.set_input_files("#file-input", str(img))
    wait_cards_settled(page, 1)
    assert card(page, img.name).get_attribute("data-state") == "auth"
    assert sent_auth == [None]

    page.fill("#api-key", "ui-secret-key")
    page.click("#auth-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('li.card').dataset.state === 'done'")
    check_card_matches_api(page, img.name, answer)
    assert sent_auth[-1] == "Bearer ui-secret-key"
    assert page.evaluate("() => sessionStorage.getItem('dermserve.apiKey')") == "ui-secret-key"
    assert auth.is_hidden()
    model = httpx.get(base + "/model", headers={"Authorization": "Bearer ui-secret-key"}, timeout=10.0).json()
    page.wait_for_function("t => document.getElementById('model-name').textContent === t",
                           arg=f"{model['name']} {model['version']}")

    # a reload keeps the key for this tab (sessionStorage): no prompt
    page.reload()
    page.wait_for_function("() => !/loading/.test(document.getElementById('model-name').textContent)")
    assert page.locator("#auth").is_hidden()


def test_upload_page_says_first_that_an_image_is_not_dermoscopic(live_server, page, tmp_path, model_dir):
    """A non-dermoscopic picture (the OOD set's blank frame, built by code): the card leads with the
    plain-words out-of-distribution warning, the class read-out is de-emphasised, and the referral
    reasons start with it; needs a model whose manifest carries the guard."""
    import json

    require(json.loads((model_dir / "manifest.json").read_text()).get("ood") is not None,
            f"the model at {model_dir} has no out-of-distribution guard")
    pytest.importorskip("skimage", reason="scikit-image builds the OOD set (pip install -e '.[train]')")
    from trainer.oodset import build_ood_set

    blank = next(im for im in build_ood_set() if im.name == "drawn/blank_white")
    path = tmp_path / "blank.png"
    path.write_bytes(blank.png)
    answer = httpx.post(live_server.base_url + "/predict", files=[("images", (path.name, blank.png, "image/png"))],
                        timeout=60).json()["predictions"][0]
    assert answer["out_of_distribution"], answer
    page.goto(live_server.base_url + "/")
    page.wait_for_function("() => !/loading/.test(document.getElementById('model-name').textContent)")
    page.set_input_files("#file-input", str(path))
    wait_cards_settled(page, 1)
    c = card(page, "blank.png")
    assert c.get_attribute("data-ood") == "true"
    warning = c.locator(".ood-warning")
    assert warning.is_visible() and warning.get_attribute("role") == "alert"
    assert "Not recognised as a dermoscopic image" in warning.inner_text()
    # the warning comes first in the card, before the top class and the bars
    order = c.evaluate("e => [...e.querySelectorAll('.ood-warning, .top, .bars')].map(n => n.className)")
    assert order[0].startswith("ood-warning"), order
    assert float(c.locator(".bars").evaluate("e => getComputedStyle(e).opacity")) < 0.6
    reasons = [li.get_attribute("data-reason") for li in c.locator(".referral-reasons li").all()]
    assert reasons[0] == "out_of_distribution"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-ood.png"), full_page=True)
