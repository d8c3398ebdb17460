"""The browser playground, driven in a real headless Chromium against a real server.

Three `reward-engine serve` processes serve the page: one with an API key, on a tiny
checkpoint whose maximum length is small enough to exceed; one without a key on a
multi-attribute checkpoint (id2label names); and a slowed one whose queue a test fills to
get a real 503. Selenium drives Debian's
Chromium through chromedriver. Every figure the page shows is checked against the engine
itself: rewards and ranks against `RewardEngine.score` on the same conversations, the
"what the model reads" view against `ChatFormatter.render` and `encode`, and the exported
results against what `reward-engine score` writes for the same input line.

Rewards: the page shows 4 decimals and keeps the full value in `data-value`; the server
and the in-process engine run the same float32 model, so they agree to REWARD_TOL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# A test run writes its screenshot among the build outputs (git ignores build/);
# REWARD_ENGINE_SCREENSHOT=bench/results/playground.png refreshes the committed one.
SCREENSHOT = REPO / os.environ.get(
    "REWARD_ENGINE_SCREENSHOT", "build/test-artifacts/playground.png"
)
EXAMPLES = REPO / "examples" / "conversations.jsonl"

REWARD_TOL = 1e-4  # server vs in-process engine, both float32
API_KEY = "playground-test-key"
MAX_LEN = 512  # the checkpoint's max_position_embeddings: an over-long response is ~600 words
MODEL_NAME = "tiny-random-rm"  # seeded random weights: the rewards are meaningless
WAIT_S = 60  # the longest any one page action may take on a loaded 2-core machine


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _find("chromium", "chromium-browser")
CHROMEDRIVER = _find("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Chromium and chromedriver are not installed (apt-get install -y chromium "
    "chromium-driver; .ci/run installs them)",
)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
from chat_messages import assistant, system, user  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from server_testing import launch, stop, wait_ready  # noqa: E402

# ------------------------------------------------------------------------------------------
# Fixtures: the checkpoint, the reference engine, the server, the browser


@pytest.fixture(scope="module")
def model_dir(make_tiny_checkpoint) -> Path:
    return Path(make_tiny_checkpoint(max_position_embeddings=MAX_LEN))


LABELS = ["helpfulness", "correctness", "verbosity"]


@pytest.fixture(scope="module")
def multi_model_dir(make_tiny_checkpoint) -> Path:
    """A multi-attribute head: three outputs named by config.json's id2label."""
    id2label = dict(enumerate(LABELS))
    return Path(make_tiny_checkpoint(num_labels=len(LABELS), id2label=id2label))


@pytest.fixture(scope="module")
def engine(model_dir):
    """The oracle: the same checkpoint scored in-process."""
    from engine import RewardEngine

    return RewardEngine.from_pretrained(model_dir, dtype="float32", kv_cache_gib=0.25)


# The overload server: one sequence at a time, 64 tokens per step held 50 ms each
# (slow_serve.py), at most 2 sequences waiting, so a 4,000-token sequence runs ~3 s.
OVERLOAD_ARGS = ("--max-batch-tokens", "64", "--max-num-seqs", "1", "--max-queue", "2",
                 "--request-timeout", "60")  # fmt: skip


@pytest.fixture(scope="module")
def servers(model_dir, multi_model_dir, tiny_checkpoint, tmp_path_factory):
    """The three servers, started together (each takes seconds to load on a busy machine),
    with the server suite's launcher (tests/engine/server/server_testing.py)."""
    logs = tmp_path_factory.mktemp("playground-servers")
    started = {
        "key": launch(model_dir, logs / "key.log", "--served-model-name", MODEL_NAME,
                      api_key=API_KEY),
        "multi": launch(multi_model_dir, logs / "multi.log", "--served-model-name", "multi"),
        "slow": launch(tiny_checkpoint, logs / "slow.log", *OVERLOAD_ARGS, slow=True),
    }  # fmt: skip
    try:
        # generous: three servers load at once, on a host other test runs may share
        yield {name: wait_ready(s, timeout=240) for name, s in started.items()}
    finally:
        for s in started.values():
            stop(s)


@pytest.fixture(scope="module")
def server(servers):
    """The server most tests use: the tiny model, and it needs an API key."""
    return servers["key"].url


@pytest.fixture(scope="module")
def multi_server(servers):
    """The multi-attribute model, with no API key."""
    return servers["multi"].url


@pytest.fixture(scope="module")
def slow_server(servers):
    """A slowed-down server whose queue a test can fill (no API key)."""
    return servers["slow"]


@pytest.fixture(scope="module")
def downloads():
    with tempfile.TemporaryDirectory(prefix="playground-dl-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def browser(downloads):
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="playground-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1280,1600"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Page helpers


def wait(browser, condition, timeout=WAIT_S):
    return WebDriverWait(browser, timeout).until(condition)


def open_page(browser, server, *, with_key=True, path="/"):
    browser.get(server + path)
    wait(browser, lambda b: b.find_element(By.ID, "model-name").text not in ("", "(loading…)"))
    if with_key:
        enter_key(browser)


def enter_key(browser):
    wait(browser, EC.visibility_of_element_located((By.ID, "api-key")))
    box = browser.find_element(By.ID, "api-key")
    box.clear()
    box.send_keys(API_KEY, Keys.TAB)  # leaving the box commits it
    wait(browser, lambda b: b.find_element(By.ID, "model-name").text != "(unknown)")


def set_value(browser, element, text):
    """Put text in a field as typing would (input events), without typing it key by key."""
    browser.execute_script(
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
        element,
        text,
    )


def fill_form(browser, system_prompt, turns, responses):
    """Fill the system prompt, the prompt turns (role, text) and the responses."""
    set_value(browser, browser.find_element(By.ID, "system-prompt"), system_prompt)
    while len(browser.find_elements(By.CSS_SELECTOR, "#turns .turn")) < len(turns):
        browser.find_element(By.ID, "add-turn").click()
    while len(browser.find_elements(By.CSS_SELECTOR, "#turns .turn")) > len(turns):
        browser.find_elements(By.CSS_SELECTOR, "#turns .remove-turn")[-1].click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#turns .turn")
    for li, (role, text) in zip(rows, turns, strict=True):
        browser.execute_script(
            "arguments[0].value = arguments[1]", li.find_element(By.CSS_SELECTOR, "select"), role
        )
        set_value(browser, li.find_element(By.CSS_SELECTOR, "textarea"), text)
    while len(browser.find_elements(By.CSS_SELECTOR, "#responses .response")) < len(responses):
        browser.find_element(By.ID, "add-response").click()
    while len(browser.find_elements(By.CSS_SELECTOR, "#responses .response")) > len(responses):
        browser.find_elements(By.CSS_SELECTOR, "#responses .remove-response")[-1].click()
    for i, text in enumerate(responses):
        set_value(browser, browser.find_element(By.ID, f"response-{i + 1}"), text)


def click_score(browser):
    """Press Score and wait for the request to end (the button is disabled while it runs)."""
    form = browser.find_element(By.ID, "score-form")
    before = int(form.get_attribute("data-done") or 0)
    browser.find_element(By.ID, "score-button").click()
    wait(browser, lambda b: int(form.get_attribute("data-done") or 0) > before)


def results_of(browser):
    """The results table as [(rank, response_index, [reward values])], in table order."""
    wait(browser, EC.visibility_of_element_located((By.ID, "results-body")))
    rows = []
    for tr in browser.find_elements(By.CSS_SELECTOR, "#results-rows tr.result-row"):
        values = [float(v.get_attribute("data-value"))
                  for v in tr.find_elements(By.CSS_SELECTOR, ".reward-value")]  # fmt: skip
        shown = [v.text for v in tr.find_elements(By.CSS_SELECTOR, ".reward-value")]
        rank = tr.find_element(By.CSS_SELECTOR, "td.rank").text
        rows.append((rank, int(tr.get_attribute("data-index")), values, shown))
    return rows


def error_text(browser):
    wait(browser, EC.visibility_of_element_located((By.ID, "error")))
    return browser.find_element(By.ID, "error").text


def expected_ranks(rewards):
    """Rank 1 for the highest reward (the oracle's ordering)."""
    order = sorted(range(len(rewards)), key=lambda i: -rewards[i])
    return {i: pos + 1 for pos, i in enumerate(order)}


# ------------------------------------------------------------------------------------------
# The tests

PROMPT_TURNS = [("user", "What is 17 * 23?"), ("assistant", "17 * 23 = 391."),
                ("user", "And divided by 17 again?")]  # fmt: skip
SYSTEM = "You are a careful math tutor."
RESPONSES = ["391 / 17 = 23.", "It is 24.", "Dividing 391 by 17 gives back 23, where we started."]


def conversation(response, system_prompt=SYSTEM, turns=PROMPT_TURNS):
    messages = [system(system_prompt)] if system_prompt else []
    messages += [{"role": role, "content": text} for role, text in turns]
    return [*messages, assistant(response)]


def test_page_is_served_at_root_and_playground_without_a_key(server):
    for path in ("/", "/playground"):
        with urllib.request.urlopen(server + path, timeout=5) as r:
            body = r.read().decode()
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/html")
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert "<title>reward-engine playground</title>" in body
    for asset, kind in (("playground.js", "javascript"), ("playground.css", "text/css")):
        with urllib.request.urlopen(f"{server}/playground/static/{asset}", timeout=5) as r:
            assert kind in r.headers["Content-Type"]
    # the page loads nothing from another host (offline machines)
    page = (REPO / "engine/server/static/index.html").read_text()
    js = (REPO / "engine/server/static/playground.js").read_text()
    css = (REPO / "engine/server/static/playground.css").read_text()
    for text in (page, js, css):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_api_key_is_asked_for_then_sent_and_never_kept_in_the_url(browser, server, engine):
    open_page(browser, server, with_key=False)
    # /v1/models needs the key: the page shows the key box instead of failing silently
    assert browser.find_element(By.ID, "key-section").is_displayed()
    fill_form(browser, "", [("user", "Hi")], ["Hello!"])
    click_score(browser)
    message = error_text(browser)
    assert "API key" in message and "401" in message
    assert browser.switch_to.active_element.get_attribute("id") == "api-key"
    assert not browser.find_element(By.ID, "results-body").is_displayed()

    enter_key(browser)
    assert browser.find_element(By.ID, "model-name").text == MODEL_NAME
    assert "max 512 tokens" in browser.find_element(By.ID, "model-details").text
    click_score(browser)
    assert not browser.find_element(By.ID, "error").is_displayed()
    [(rank, index, values, _)] = results_of(browser)
    assert (rank, index) == ("1", 0)
    assert values[0] == pytest.approx(
        engine.score([[user("Hi"), assistant("Hello!")]])[0], abs=REWARD_TOL
    )
    assert API_KEY not in browser.current_url
    stored = browser.execute_script(
        "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie"
    )
    assert API_KEY not in stored


def test_scores_and_ranks_equal_the_engine(browser, server, engine):
    open_page(browser, server)
    fill_form(browser, SYSTEM, PROMPT_TURNS, RESPONSES)
    click_score(browser)
    rows = results_of(browser)

    want = engine.score([conversation(r) for r in RESPONSES])
    ranks = expected_ranks(want)
    assert sorted(index for _, index, _, _ in rows) == [0, 1, 2]
    assert [index for _, index, _, _ in rows] == sorted(range(3), key=lambda i: -want[i])
    for rank, index, values, shown in rows:
        assert int(rank) == ranks[index]
        assert values[0] == pytest.approx(want[index], abs=REWARD_TOL)
        assert float(shown[0]) == pytest.approx(want[index], abs=5e-5 + REWARD_TOL)
    # the bars span the spread: the best is full, the worst is empty
    widths = browser.execute_script(
        "return Array.from(document.querySelectorAll('#results-rows .bar-fill'), "
        "e => parseFloat(e.style.width))"
    )
    assert widths[0] == 100.0 and widths[-1] == 0.0
    summary = browser.find_element(By.ID, "results-summary").text
    tokens = sum(len(engine.chat.encode(conversation(r))) for r in RESPONSES)
    assert "3 of 3 responses scored" in summary
    assert f"{tokens} tokens" in summary
    assert "wall time" in summary


def test_what_the_model_reads_is_the_formatter_output(browser, server, engine):
    open_page(browser, server)
    fill_form(browser, SYSTEM, PROMPT_TURNS, RESPONSES)
    browser.find_elements(By.CSS_SELECTOR, "#responses .show-reads")[1].click()
    wait(browser, EC.visibility_of_element_located((By.ID, "reads-text")))
    conv = conversation(RESPONSES[1])
    text = browser.find_element(By.ID, "reads-text").get_property("textContent")
    assert text == engine.chat.render(conv)
    ids = engine.chat.encode(conv)
    summary = browser.find_element(By.ID, "reads-summary").text
    assert summary.startswith(f"Response 2: {len(ids)} tokens of the model's maximum {MAX_LEN}")
    controls = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#reads-text .control")]
    assert controls[:3] == ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
    assert controls.count("<|eot_id|>") == 5  # system, three prompt turns, the response
    browser.find_element(By.ID, "reads-show-tokens").click()
    tokens = browser.find_elements(By.CSS_SELECTOR, "#reads-tokens li")
    assert len(tokens) == len(ids)
    assert tokens[0].get_attribute("title") == f"token 0: id {ids[0]}"


def test_an_over_long_response_is_explained_in_words(browser, server, engine):
    open_page(browser, server)
    long_response = " ".join(["overflow"] * 600)
    fill_form(browser, "", [("user", "Say a lot.")], ["A short one.", long_response])
    n_tokens = len(engine.chat.encode([user("Say a lot."), assistant(long_response)]))
    assert n_tokens > MAX_LEN
    click_score(browser)
    message = error_text(browser)
    assert message.startswith("1 of 2 responses could not be scored:\nResponse 2: ")
    assert str(n_tokens) in message and str(MAX_LEN) in message
    assert "item 1" not in message  # the server's 0-based item number, renamed
    # its neighbour is still scored and ranked; the long one's row says why it is not
    [(rank, index, values, _), (no_rank, long_index, no_values, _)] = results_of(browser)
    assert (rank, index, no_rank, long_index, no_values) == ("1", 0, "–", 1, [])
    want = engine.score([[user("Say a lot."), assistant("A short one.")]])[0]
    assert values[0] == pytest.approx(want, abs=REWARD_TOL)
    row = browser.find_element(By.CSS_SELECTOR, "#results-rows tr[data-index='1']").text
    assert "Not scored" in row and str(n_tokens) in row
    # the reads view says it is too long as well
    browser.find_elements(By.CSS_SELECTOR, "#responses .show-reads")[1].click()
    wait(browser, EC.visibility_of_element_located((By.ID, "reads-text")))
    assert "too long" in browser.find_element(By.ID, "reads-summary").text


def test_a_bad_role_from_an_imported_line_is_explained_in_words(browser, server):
    open_page(browser, server)
    line = {"prompt": [{"role": "tool", "content": "{}"}], "responses": ["ok"]}
    set_value(browser, browser.find_element(By.ID, "import-text"), json.dumps(line))
    browser.find_element(By.ID, "import-button").click()
    click_score(browser)
    message = error_text(browser)
    assert "'tool'" in message and "user" in message and "assistant" in message


def test_overload_503_is_shown_with_its_retry_after(browser, slow_server):
    """A real overload: one request fills the slowed server's queue, then Score is pressed."""
    open_page(browser, slow_server.url, with_key=False)
    fill_form(browser, "", [("user", "Hi")], ["Hello!"])
    # one 4,000-token sequence runs (~3 s) while two short ones wait: the queue is full
    filler = {"token_ids": [[100] * 4000, [101] * 16, [102] * 16]}
    background = threading.Thread(target=slow_server.post, args=("/v1/score", filler))
    background.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while slow_server.metrics().get("reward_engine_requests_waiting", 0) < 2:
            assert time.monotonic() < deadline, "the filler request never queued"
            time.sleep(0.05)
        click_score(browser)
        message = error_text(browser)
    finally:
        background.join()
    assert message.startswith("The server is busy or shutting down (HTTP 503): ")
    assert "queue is full" in message
    assert re.search(r"Retry in \d+ s\.$", message)
    assert not browser.find_element(By.ID, "results-body").is_displayed()
    # once the queue has drained, the same request goes through
    click_score(browser)
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert len(results_of(browser)) == 1


def _downloaded(directory: Path, name: str) -> dict:
    path = directory / name
    deadline = time.monotonic() + WAIT_S
    while not (path.is_file() and path.read_text().endswith("\n")):
        if time.monotonic() > deadline:
            pytest.fail(f"{name} was not downloaded (found {os.listdir(directory)})")
        time.sleep(0.1)
    [line] = path.read_text().splitlines()
    path.unlink()
    return json.loads(line)


def test_import_a_cli_line_and_export_the_cli_output(
    browser, server, engine, model_dir, downloads, tmp_path
):
    from engine.cli import main

    [line] = [ln for ln in EXAMPLES.read_text().splitlines() if '"best-of-4"' in ln]
    record = json.loads(line)
    source = tmp_path / "one.jsonl"
    source.write_text(line + "\n")
    open_page(browser, server)
    browser.find_element(By.ID, "import-file").send_keys(str(source))
    wait(browser, lambda b: "Loaded 4 responses" in b.find_element(By.ID, "import-status").text)
    first_turn = browser.find_element(By.CSS_SELECTOR, "#turns textarea")
    assert first_turn.get_property("value") == record["prompt"]
    shown = [
        browser.find_element(By.ID, f"response-{i}").get_property("value") for i in (1, 2, 3, 4)
    ]
    assert shown == record["responses"]

    browser.find_element(By.ID, "export-input").click()
    assert _downloaded(downloads, "playground-input.jsonl") == record

    click_score(browser)
    browser.find_element(By.ID, "export-results").click()
    exported = _downloaded(downloads, "playground-results.jsonl")

    cli_out = tmp_path / "cli.jsonl"
    args = ["score", "--model", str(model_dir), "--input", str(source), "--output", str(cli_out),
            "--dtype", "float32", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    cli = json.loads(cli_out.read_text())
    assert exported.keys() == cli.keys() == {"id", "line", "rewards"}
    assert exported["id"] == cli["id"] == "best-of-4" and exported["line"] == cli["line"] == 1
    assert exported["rewards"] == pytest.approx(cli["rewards"], abs=REWARD_TOL)
    assert exported["rewards"] == pytest.approx(
        engine.score_responses(record["prompt"], record["responses"]), abs=REWARD_TOL
    )


def test_a_pasted_messages_line_round_trips(browser, server, downloads):
    open_page(browser, server)
    record = {"id": 7, "messages": [system("Be brief."), user("Hi"), assistant("Hello.")]}
    set_value(browser, browser.find_element(By.ID, "import-text"), json.dumps(record))
    browser.find_element(By.ID, "import-button").click()
    assert browser.find_element(By.ID, "system-prompt").get_property("value") == "Be brief."
    browser.find_element(By.ID, "export-input").click()
    assert _downloaded(downloads, "playground-input.jsonl") == record
    click_score(browser)
    browser.find_element(By.ID, "export-results").click()
    exported = _downloaded(downloads, "playground-results.jsonl")
    assert exported.keys() == {"id", "line", "reward"} and exported["id"] == 7


def test_a_bad_import_line_says_what_is_wrong(browser, server):
    open_page(browser, server)
    set_value(browser, browser.find_element(By.ID, "import-text"), '{"prompt": "x"}')
    browser.find_element(By.ID, "import-button").click()
    assert "'prompt' needs a 'response'" in error_text(browser)


def test_keyboard_only_use_and_labels(browser, server):
    open_page(browser, server)
    unlabeled = browser.execute_script(
        "return Array.from(document.querySelectorAll('input, textarea, select'))"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))"
        ".map(e => e.id || e.className)"
    )
    assert unlabeled == []
    fill_form(browser, "", [("user", "Pick one.")], ["A", "B"])
    # Ctrl+Enter in a text box scores, with no mouse
    browser.find_element(By.ID, "response-2").send_keys(Keys.CONTROL, Keys.ENTER)
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results-rows tr")) == 2)
    # "Add response" is reachable and moves focus into the new box
    add = browser.find_element(By.ID, "add-response")
    add.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "response-3"


def test_one_to_sixteen_responses(browser, server):
    open_page(browser, server)
    fill_form(browser, "", [("user", "Pick one.")], ["only"])
    assert not browser.find_element(By.CSS_SELECTOR, "#responses .remove-response").is_enabled()
    add = browser.find_element(By.ID, "add-response")
    for _ in range(15):
        add.click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#responses .response")) == 16
    assert not add.is_enabled()
    assert browser.find_element(By.ID, "response-count").text == "16"
    browser.find_elements(By.CSS_SELECTOR, "#responses .remove-response")[0].click()
    assert add.is_enabled()
    assert browser.find_element(By.ID, "response-count").text == "15"


def test_narrow_window_has_no_sideways_scrolling(browser, server):
    browser.set_window_size(390, 900)
    try:
        open_page(browser, server)
        fill_form(browser, SYSTEM, PROMPT_TURNS, RESPONSES)
        click_score(browser)
        results_of(browser)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
    finally:
        browser.set_window_size(1280, 1600)


def test_screenshot_of_a_scored_request(browser, server):
    """Saved for a person to look at (SCREENSHOT; bench/results/playground.png is one)."""
    open_page(browser, server)
    fill_form(browser, SYSTEM, PROMPT_TURNS, RESPONSES)
    click_score(browser)
    results_of(browser)
    browser.find_elements(By.CSS_SELECTOR, "#responses .show-reads")[0].click()
    wait(browser, EC.visibility_of_element_located((By.ID, "reads-text")))
    browser.find_element(By.ID, "reads-show-tokens").click()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height + 100, 4000))
    browser.execute_script("window.scrollTo(0, 0)")
    try:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000
    finally:
        browser.set_window_size(1280, 1600)


def test_multi_attribute_heads_get_one_named_bar_per_attribute(
    browser, multi_server, multi_model_dir
):
    from engine import RewardEngine

    reference = RewardEngine.from_pretrained(multi_model_dir, dtype="float32", kv_cache_gib=0.25)
    responses = ["Short.", "A longer and more detailed answer.", "Maybe."]
    want = reference.score([[user("Explain tides."), assistant(r)] for r in responses])
    browser.get(multi_server + "/")
    wait(browser, lambda b: b.find_element(By.ID, "model-name").text not in ("", "(loading…)"))
    assert not browser.find_element(By.ID, "key-section").is_displayed()  # no key needed
    assert ", ".join(LABELS) in browser.find_element(By.ID, "model-details").text
    fill_form(browser, "", [("user", "Explain tides.")], responses)
    click_score(browser)
    rows = results_of(browser)
    for _, index, values, shown in rows:
        assert values == pytest.approx(want[index], abs=REWARD_TOL)
        assert [t.split(":")[0] for t in shown] == LABELS
    bars = browser.find_elements(By.CSS_SELECTOR, "#results-rows tr:first-child .bar-name")
    assert [b.text for b in bars] == LABELS
    # ranked by the first attribute, then by the one chosen
    for k, label in enumerate(LABELS):
        Select(browser.find_element(By.ID, "rank-by")).select_by_visible_text(label)
        order = [index for _, index, _, _ in results_of(browser)]
        assert order == sorted(range(3), key=lambda i: -want[i][k])


def test_the_page_ships_in_the_wheel():
    """pyproject's package-data covers every file of engine/server/static."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["engine.server"]
    files = [p.relative_to(REPO / "engine/server").as_posix()
             for p in (REPO / "engine/server/static").iterdir()]  # fmt: skip
    assert sorted(files) == ["static/index.html", "static/playground.css", "static/playground.js"]
    for name in files:
        assert any(fnmatch.fnmatch(name, pat) for pat in patterns), name
