"""The page in a real browser (headless Chromium driven by Selenium): the README request gives a picture and a
clip, an uploaded picture can be asked about. CI installs Chromium from the distribution's packages (.ci/run);
elsewhere the test is skipped when Chromium or its driver is missing."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from chameleon_lite.generate import Generator
from chameleon_lite.generate.batching import BatchScheduler
from chameleon_lite.serve.app import make_app, serve_in_thread

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI: chromium and chromedriver must be installed (.ci/run installs them)")
    pytest.skip("chromium / chromedriver not installed", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

README_REQUEST = "a large red circle in the top left, then play C5 E5 G5 on a square wave"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from chameleon_lite.bundle import demo_model_dir

    gen = Generator.from_dir(demo_model_dir())
    sched = BatchScheduler(gen, max_batch=2, max_queue=4)
    app = make_app(
        sched, str(tmp_path_factory.mktemp("served") / "out"), base_cfg=gen.default_config(max_new_tokens=400)
    )
    server, port = serve_in_thread(app)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # a fake microphone (Chromium's test tone) that the page may use without asking
    fake_mic = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1400", *fake_mic):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        yield driver
    finally:
        driver.quit()
        server.should_exit = True
        sched.close()


def _answers(driver):
    return driver.find_elements(By.CSS_SELECTOR, ".turn.bot")


def test_the_readme_request_and_a_question_about_an_upload(page, tmp_path):
    wait = WebDriverWait(page, 120)
    wait.until(lambda d: "model" in d.find_element(By.ID, "model").text)
    page.find_element(By.ID, "prompt").send_keys(README_REQUEST)
    page.find_element(By.ID, "send").click()
    wait.until(lambda d: _answers(d) and _answers(d)[-1].find_elements(By.CSS_SELECTOR, ".links"))
    bot = _answers(page)[-1]
    imgs, clips = bot.find_elements(By.TAG_NAME, "img"), bot.find_elements(By.TAG_NAME, "audio")
    assert imgs and clips, bot.text
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", imgs[0]) > 0)
    assert clips[0].get_attribute("src").endswith(".wav") and clips[0].get_attribute("controls") is not None
    # a picture from disk, and a question about it, answered in text
    pic = tmp_path / "pic.png"
    Image.fromarray(np.full((48, 48, 3), 230, np.uint8)).save(pic)
    page.find_element(By.ID, "files").send_keys(str(pic))
    assert "pic.png" in page.find_element(By.ID, "attached").text
    page.find_element(By.CSS_SELECTOR, "#then option[value='text']").click()
    page.find_element(By.ID, "prompt").send_keys("what is in this picture?")
    page.find_element(By.ID, "send").click()
    wait.until(lambda d: len(_answers(d)) == 2 and _answers(d)[-1].find_elements(By.CSS_SELECTOR, ".links"))
    assert page.find_elements(By.CSS_SELECTOR, ".turn.user img.thumb")
    assert not _answers(page)[-1].find_elements(By.CSS_SELECTOR, ".err"), _answers(page)[-1].text
    assert not _answers(page)[-1].find_elements(By.TAG_NAME, "img")  # the prompt's picture is not shown as an answer
    shot = os.environ.get("CHAMELEON_LITE_SCREENSHOT")
    if shot:  # docs/serve.png is taken this way
        page.save_screenshot(shot)


def test_a_clip_recorded_from_the_microphone_is_sent_and_answered(page):
    """Record (Chromium's fake microphone plays a test tone), stop, and ask about the clip: the page writes it as a
    WAV file, attaches it, and the server reads it and answers in text."""
    wait = WebDriverWait(page, 120)
    before = len(_answers(page))
    page.find_element(By.ID, "record").click()
    wait.until(lambda d: d.find_element(By.ID, "record").text == "Stop recording")
    time.sleep(1.5)
    page.find_element(By.ID, "record").click()
    wait.until(lambda d: "recording.wav" in d.find_element(By.ID, "attached").text)
    page.find_element(By.CSS_SELECTOR, "#then option[value='text']").click()
    page.find_element(By.ID, "prompt").send_keys("what is this sound?")
    page.find_element(By.ID, "send").click()
    wait.until(lambda d: len(_answers(d)) == before + 1 and _answers(d)[-1].find_elements(By.CSS_SELECTOR, ".links"))
    answer = _answers(page)[-1]
    assert not answer.find_elements(By.CSS_SELECTOR, ".err"), answer.text
    assert answer.text.strip()
    html = answer.find_element(By.CSS_SELECTOR, ".links a").get_attribute("href")
    doc = page.execute_async_script("fetch(arguments[0]).then(r => r.json()).then(arguments[1])",
                                    html.replace("document.html", "document.json"))  # fmt: skip
    heard = [s for s in doc["segments"] if s.get("from_prompt") and s.get("file", "").endswith(".wav")]
    assert len(heard) == 1 and heard[0]["seconds"] > 0.5, doc["segments"]  # the recording, tokenized and kept
