"""The newsroom's language in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) against a live server on the real database: the dashboard, the job list,
a dead job's page and a WeChat article's page, once with `Accept-Language: zh-CN` and once
with `en`. On the Chinese pages no English word may be left outside data (queue names, job
types, errors as recorded, ids, commands); each page leaves a screenshot in tests/artifacts/
(i18n_<page>_<language>.png)."""

from __future__ import annotations

import re
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from jobs.models import Heartbeat, JobState
from jobs.queues import QUEUES
from news.factories import PublishedNewsFactory
from tests.conftest import ROOT
from tests.ops_support import make_job
from wechat.models import ArticleState, WechatArticle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "tests" / "artifacts"

# Data, shown as it is stored whatever the language: what the seed below writes.
WECHAT_ERROR = "WechatError: 45009 api freq out of limit"
DEAD_ERROR = "RuntimeError: boom"
DATA = [WECHAT_ERROR, DEAD_ERROR, "Traceback (most recent call last):", "wechat:publishing", "news:77",
        "news:scheduled_publisher", "news:expiration", "system:noop", "web-1:4242", "host:1", "editor",
        "EDITOR", "media-draft-1", "publish-88", "https://mp.weixin.qq.com/s/abc", "freepublish/get",
        # Commands for operators (the CLI stays English).
        "manage.py jobs retry --all-dead", "manage.py qcluster",
        # The language switch names each language in itself.
        "简体中文", "English",
        # The health check's problems are recorded in English by the check (like log lines).
        "queue wechat: 2 dead job(s)",
        # Keys of the payload and of each recorded error (JSON, as stored).
        '"attempt"', '"at"', '"worker"', '"error"', '"traceback"', '"images"',
        *QUEUES]


def data_values() -> list[str]:
    from jobs.registry import job_types

    # A cluster of another run on the same Redis shows as this host's name: data too.
    return [*DATA, *job_types(), socket.gethostname()]
# Names and technical terms that Chinese pages use as they are.
ALLOWED_WORDS = {"Django", "Q", "NextEvent", "Redis", "ID", "HTML", "JSON", "SHA", "URL", "p50", "p90", "p99",
                 "pid", "uploadimg", "media_id", "mmbiz", "qpic", "cn", "publish_status", "draft", "add",
                 "batchget", "Official", "UTC"}


def english_words(text: str) -> list[str]:
    for value in sorted(data_values(), key=len, reverse=True):
        text = text.replace(value, " ")
    # ISO dates, times and numbers are locale-neutral; words are runs of two or more letters.
    words = re.findall(r"[A-Za-z][A-Za-z_]+", text)
    allowed = {w.lower() for w in ALLOWED_WORDS}  # the admin's CSS capitalises some headings
    return sorted({w for w in words if w.lower() not in allowed})


@pytest.fixture
def browser_in(request):
    """A factory: a Chromium whose Accept-Language is `language`; all quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} is missing: apt-get install chromium chromium-driver"
    # Without a Chinese font the zh-Hans screenshots show boxes (the text checks would still pass).
    fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout
    assert fonts.strip(), "no Chinese font for the screenshots: apt-get install fonts-wqy-zenhei"
    drivers = []

    def start(language: str):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-dev-shm-usage", "--window-size=1400,2000", f"--lang={language}",
                    f"--accept-lang={language}"):
            options.add_argument(arg)
        options.add_experimental_option("prefs", {"intl.accept_languages": language})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.implicitly_wait(5)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def seed():
    """What an editor and an operator meet: history, a dead WeChat job, an article that
    needs a person."""
    for hours_ago in range(0, 24, 3):
        make_job(state=JobState.COMPLETED, queue="news", job_type="news:scheduled_publisher",
                 ago=hours_ago * 3600 + 120, lateness=0.2, duration=0.5)
    for days_ago in range(1, 7):
        make_job(state=JobState.COMPLETED, queue="default", ago=days_ago * 86400 + 3600)
    dead = make_job(state=JobState.DEAD, queue="wechat", job_type="wechat:publishing", ago=600,
                    subject="news:77", last_error=WECHAT_ERROR)
    make_job(state=JobState.PENDING, queue="default", ago=42)
    make_job(state=JobState.SCHEDULED, queue="news", job_type="news:expiration")
    Heartbeat.objects.create(name="health", kind="health", seen_at=timezone.now() - timedelta(seconds=12),
                             details={"ok": False, "problems": ["queue wechat: 2 dead job(s)"]})
    Heartbeat.objects.create(name="dispatcher:web-1:4242", kind="dispatcher", seen_at=timezone.now(), details={})
    news = PublishedNewsFactory(title="台风“海葵”登陆福建", author="编辑部", push_to_wechat=True)
    article = WechatArticle.objects.create(
        news=news, state=ArticleState.UNKNOWN, draft_media_id="media-draft-1", publish_id="publish-88",
        article_url="https://mp.weixin.qq.com/s/abc", polls=3, reconcile_checks=2, last_error=WECHAT_ERROR,
        drafted_at=timezone.now() - timedelta(minutes=30), submitted_at=timezone.now() - timedelta(minutes=20))
    User.objects.create_superuser("editor", password="newsroom-pass-1")
    return dead, article


def login(browser, base_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{base_url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("editor")
    browser.find_element(By.NAME, "password").send_keys("newsroom-pass-1")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 15).until(lambda b: "/admin/login/" not in b.current_url)


def visit(browser, url: str, name: str, language: str) -> str:
    """The page's visible text (and its tooltips and button labels); a screenshot kept."""
    from selenium.webdriver.common.by import By

    browser.get(url)
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == language, url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"i18n_{name}_{language}.png"
    shot.unlink(missing_ok=True)
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    extra = browser.execute_script(
        "return Array.from(document.querySelectorAll('[title], input[type=submit], input[type=button]'))"
        ".map(e => (e.getAttribute('title') || '') + ' ' + (e.value || '')).join('\\n')")
    svg = browser.execute_script(
        "return Array.from(document.querySelectorAll('svg text, svg title')).map(e => e.textContent).join('\\n')")
    text = "\n".join([browser.find_element(By.TAG_NAME, "body").text, extra, svg])
    shot.with_suffix(".txt").write_text(text)  # what the check below read, for a reader of the artefacts
    return text


def pages(base_url, dead, article):
    return [("dashboard", f"{base_url}/admin/jobs/dashboard/"),
            ("job_list", f"{base_url}/admin/jobs/job/"),
            ("dead_job", f"{base_url}/admin/jobs/job/{dead.pk}/change/"),
            ("wechat_article", f"{base_url}/admin/wechat/wechatarticle/{article.pk}/change/")]


def test_the_admin_speaks_chinese_to_a_chinese_browser(live_server, browser_in):
    dead, article = seed()
    browser = browser_in("zh-CN")
    login(browser, live_server.url)
    texts = {name: visit(browser, url, name, "zh-hans") for name, url in pages(live_server.url, dead, article)}

    left = {name: english_words(text) for name, text in texts.items()}
    assert left == dict.fromkeys(texts, []), "English left on the Chinese pages"
    # The newsroom's words (the glossary in docs/i18n.md), where an editor looks for them.
    assert "任务监控面板" in texts["dashboard"] and "已失败（死信）" in texts["dashboard"]
    assert "最近的失败" in texts["dashboard"] and WECHAT_ERROR in texts["dashboard"]
    assert "已失败（死信）" in texts["job_list"] and "立即重试" in texts["job_list"]
    assert "已失败（死信）" in texts["dead_job"] and DEAD_ERROR in texts["dead_job"]
    assert "需人工处理" in texts["wechat_article"] and "微信公众号" in texts["wechat_article"]
    assert "台风“海葵”登陆福建" in texts["wechat_article"]
    # Dates follow the locale: Chinese month and day names, not "Dec." or "Fri".
    assert re.search(r"\d{4}年\d{1,2}月\d{1,2}日", texts["dead_job"])


def test_the_same_pages_stay_english_for_an_english_browser(live_server, browser_in):
    dead, article = seed()
    browser = browser_in("en")
    login(browser, live_server.url)
    texts = {name: visit(browser, url, name, "en") for name, url in pages(live_server.url, dead, article)}

    assert "Jobs dashboard" in texts["dashboard"] and "Recent failures" in texts["dashboard"]
    assert "Retry now" in texts["job_list"] and "Dead" in texts["job_list"]
    assert "Dead" in texts["dead_job"]
    assert "a person must check WeChat" in texts["wechat_article"]
    for name, text in texts.items():
        data = text.replace("台风“海葵”登陆福建", "").replace("编辑部", "").replace("简体中文", "")
        assert not re.search(r"[\u4e00-\u9fff]", data), \
            f"Chinese on the English {name} page"


def page_in(browser, lang: str) -> None:
    """Wait for the page the switch's POST redirects to: read before it has loaded, the old
    page's elements go stale under the test."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda b: b.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang)


def test_an_editor_switches_the_language_and_it_sticks(live_server, browser_in):
    """The switch beside the user links posts to Django's set_language: its cookie wins over
    the browser's Accept-Language on every later page, until switched back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    dead, article = seed()
    browser = browser_in("zh-CN")
    login(browser, live_server.url)
    browser.get(f"{live_server.url}/admin/jobs/job/{dead.pk}/change/")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-hans"
    Select(browser.find_element(By.ID, "language-select")).select_by_value("en")
    browser.find_element(By.ID, "language-submit").click()
    page_in(browser, "en")
    assert f"/admin/jobs/job/{dead.pk}/change/" in browser.current_url  # back where the editor was
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    assert browser.get_cookie("django_language")["value"] == "en"
    browser.get(f"{live_server.url}/admin/jobs/dashboard/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Jobs dashboard"
    Select(browser.find_element(By.ID, "language-select")).select_by_value("zh-hans")
    browser.find_element(By.ID, "language-submit").click()
    page_in(browser, "zh-hans")
    assert browser.find_element(By.TAG_NAME, "h1").text == "任务监控面板"
