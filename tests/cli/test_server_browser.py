"""Browser test of the /chat page in headless Chromium (Debian's chromium and
chromium-driver packages, driven by selenium)."""
import shutil

import pytest

from server_util import Server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.fail("chromium and chromedriver are missing: run scripts/install-deps.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,760", f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_chat_page_streams_hindi_reply(airavata_bin, shared_dir, tmp_path, browser):
    srv = Server(airavata_bin, shared_dir / "models" / "stories260K", tmp_path / "server.log")
    try:
        browser.get(srv.url + "/chat")
        WebDriverWait(browser, 10).until(
            lambda d: "stories260K" in d.find_element(By.ID, "model").text)
        # Count how many times the reply's text changes: a streamed reply
        # grows in many steps, a buffered one would appear once.
        browser.execute_script("""
            window.replyUpdates = 0;
            new MutationObserver(records => {
              for (const r of records)
                if (r.target.classList && r.target.classList.contains("assistant")) window.replyUpdates++;
            }).observe(document.getElementById("log"), {childList: true, subtree: true});
        """)
        box = browser.find_element(By.ID, "input")
        box.send_keys("नमस्ते! मुझे एक छोटी कहानी सुनाओ।")
        browser.find_element(By.ID, "send").click()

        user = WebDriverWait(browser, 10).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".msg.user"))
        assert user.text == "नमस्ते! मुझे एक छोटी कहानी सुनाओ।"
        assert user.get_attribute("lang") == "hi"
        reply = WebDriverWait(browser, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant[data-state='done']"))
        assert reply.text.strip(), "the reply is empty"
        assert "Error" not in reply.text
        assert browser.execute_script("return window.replyUpdates") > 3

        # The server logged a 200 chat request and the page keeps both turns
        # for the next message.
        assert "POST /v1/chat/completions 200" in srv.log_text()
        assert browser.execute_script("return turns.length") == 2
        shot = tmp_path / "chat.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
        print(f"screenshot: {shot}")

        browser.get(srv.url + "/docs")
        WebDriverWait(browser, 10).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "details.op")) >= 11)
        paths = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "details.op .path")]
        assert "/v1/chat/completions" in paths
        assert "/generate" in paths
        browser.find_element(By.XPATH, "//details[.//span[text()='/generate']]/summary").click()
        assert "max_new_tokens" in browser.find_element(
            By.XPATH, "//details[.//span[text()='/generate']]").text
        browser.save_screenshot(str(tmp_path / "docs.png"))
    finally:
        assert srv.stop() == 0
