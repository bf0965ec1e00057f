"""The staff jobs dashboard in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) against a live server on the real database: a staff
user logs in, sees real numbers, charts and failures, pauses and resumes a queue, and the
test leaves a screenshot in tests/artifacts/."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from jobs.models import Heartbeat, JobState, QueuePause
from tests.conftest import ROOT
from tests.ops_support import make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} is missing: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


@pytest.fixture
def staff():
    user = User.objects.create_user("opsdesk", password="dashboard-pass-1", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="jobs", codename__in=["add_queuepause", "delete_queuepause", "view_job",
                                                      "change_job"]))
    return user


def seed_ledger():
    """A day and a week of history, two failures, work waiting: what an operator would see."""
    completed = 0
    for hours_ago in range(0, 24, 2):
        for _ in range(hours_ago % 5 + 1):
            make_job(state=JobState.COMPLETED, queue="news", job_type="news:scheduled_publisher",
                     ago=hours_ago * 3600 + 120, lateness=0.2, duration=0.5)
            completed += 1
    for days_ago in range(1, 7):
        for _ in range(days_ago):
            make_job(state=JobState.COMPLETED, queue="default", ago=days_ago * 86400 + 3600)
    dead = [make_job(state=JobState.DEAD, queue="wechat", job_type="wechat:publishing", ago=ago, subject="news:77",
                     last_error="WechatError: 45009 api freq out of limit")
            for ago in (5400, 600)]
    make_job(state=JobState.PENDING, queue="default", ago=42)
    make_job(state=JobState.SCHEDULED, queue="news", job_type="news:expiration")
    Heartbeat.objects.create(name="health", kind="health", seen_at=timezone.now() - timedelta(seconds=12),
                             details={"ok": False, "problems": ["queue wechat: 2 dead job(s)"]})
    Heartbeat.objects.create(name="dispatcher:web-1:4242", kind="dispatcher", seen_at=timezone.now(), details={})
    return completed, dead


def login(browser, base_url):
    from selenium.webdriver.common.by import By

    browser.get(f"{base_url}/admin/login/?next=/admin/jobs/dashboard/")
    browser.find_element(By.NAME, "username").send_keys("opsdesk")
    browser.find_element(By.NAME, "password").send_keys("dashboard-pass-1")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    # Wait for the login POST to land: navigating away before it does drops the session cookie.
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15).until(lambda b: "/admin/login/" not in b.current_url)


def cell(browser, queue, col):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f"#queue-{queue} td[data-col={col}]").text.strip()


def test_staff_see_real_numbers_charts_and_failures_and_can_pause_a_queue(live_server, browser, staff):
    from selenium.webdriver.common.by import By

    completed_24h, dead = seed_ledger()
    login(browser, live_server.url)
    assert browser.current_url == f"{live_server.url}/admin/jobs/dashboard/"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Jobs dashboard"

    # Per-queue counts straight from the ledger.
    assert cell(browser, "wechat", "dead") == "2"
    assert cell(browser, "default", "pending") == "1"
    assert cell(browser, "news", "scheduled") == "1"
    assert cell(browser, "wechat", "failed_1h") == "1"  # one died 10 minutes ago, one 90 minutes ago
    assert cell(browser, "default", "depth") == "0"
    assert cell(browser, "default", "oldest").endswith(" s")

    # Charts: server-rendered SVG whose bars add up to the ledger.
    hourly = browser.find_element(By.CSS_SELECTOR, "#chart-hourly svg")
    assert int(hourly.get_attribute("data-completed")) == completed_24h
    assert int(hourly.get_attribute("data-failed")) == 2
    assert len(hourly.find_elements(By.CSS_SELECTOR, "g.bar")) == 24
    assert hourly.find_elements(By.CSS_SELECTOR, "rect.completed") and hourly.find_elements(By.CSS_SELECTOR,
                                                                                            "rect.failed")
    daily = browser.find_element(By.CSS_SELECTOR, "#chart-daily svg")
    assert len(daily.find_elements(By.CSS_SELECTOR, "g.bar")) == 7
    assert int(daily.get_attribute("data-completed")) >= completed_24h
    assert hourly.size["height"] > 100 and hourly.size["width"] > 300  # really drawn, not just in the DOM

    # Lateness percentiles of the news jobs (0.2 s each).
    news_timing = browser.find_element(By.ID, "timing-news").text
    assert "200 ms" in news_timing

    # Recent failures link to their admin pages; health and liveness are shown.
    link = browser.find_element(By.CSS_SELECTOR, f"#failure-{dead[1].pk} a")
    assert link.get_attribute("href").endswith(f"/admin/jobs/job/{dead[1].pk}/change/")
    assert "WechatError: 45009" in browser.find_element(By.ID, f"failure-{dead[1].pk}").text
    assert "queue wechat: 2 dead job(s)" in browser.find_element(By.ID, "health-problems").text
    assert "web-1:4242" in browser.find_element(By.ID, "workers").text
    assert browser.find_element(By.ID, "no-clusters")

    # Pause (a CSRF-protected POST) and resume.
    browser.find_element(By.NAME, "pause-news").click()
    assert "Queue news paused" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    assert "paused" in cell(browser, "news", "state")
    assert QueuePause.objects.get(queue="news").paused_by == "admin:opsdesk"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "ops_dashboard.png"
    shot.unlink(missing_ok=True)
    browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000

    browser.find_element(By.NAME, "resume-news").click()
    assert "Queue news resumed" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    assert not QueuePause.objects.filter(queue="news").exists()

    link = browser.find_element(By.CSS_SELECTOR, f"#failure-{dead[1].pk} a")
    link.click()
    assert f"/admin/jobs/job/{dead[1].pk}/change/" in browser.current_url
    assert "WechatError: 45009" in browser.page_source


def test_the_admin_index_links_to_the_dashboard(live_server, browser, staff):
    from selenium.webdriver.common.by import By

    login(browser, live_server.url)
    browser.get(f"{live_server.url}/admin/")
    browser.find_element(By.LINK_TEXT, "Jobs dashboard").click()
    assert browser.current_url == f"{live_server.url}/admin/jobs/dashboard/"
