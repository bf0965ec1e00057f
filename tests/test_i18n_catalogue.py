"""The zh-Hans catalogue is complete and consistent: no entry empty or fuzzy, the same
placeholders as the English, the glossary's words (docs/i18n.md), and no string for people
in the code that the catalogue lacks (makemessages run on a copy of the tree must add
nothing untranslated). In-process and subprocesses, no cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import polib
import pytest
from django.utils import translation

from tests.conftest import ROOT

CATALOGUE = ROOT / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]|\{\{\s*(\w+)\s*\}\}")

# One word means one thing (docs/i18n.md). The job states, word for word.
JOB_STATES = {"Scheduled": "已计划", "Pending": "待执行", "Active": "执行中", "Retry": "待重试",
              "Dead": "已失败（死信）", "Completed": "已完成", "Cancelled": "已取消", "Expired": "已过期"}
NEWS_STATES = {"Draft": "草稿", "Scheduled": "定时发布", "Published": "已发布", "Archived": "已归档"}
# Synonyms a translator might reach for, which the glossary replaced by one word.
NOT_OUR_WORDS = {"作业": "任务 (job)", "仪表板": "监控面板 (dashboard)", "仪表盘": "监控面板 (dashboard)",
                 "草案": "草稿 (draft)", "出版": "发布 (publish)", "再试": "重试 (retry)",
                 "微信公众平台": "微信公众号 (Official Account)", "检疫": "隔离 (quarantine)"}


def problems(path) -> list[str]:
    """What is wrong with a catalogue, one line per entry."""
    po = polib.pofile(str(path))
    found = []
    if po.metadata_is_fuzzy:
        found.append("the header is marked fuzzy")
    if "nplurals=1" not in po.metadata.get("Plural-Forms", ""):
        found.append("Plural-Forms is not Chinese's nplurals=1")
    for entry in po:
        if entry.obsolete:
            continue
        name = f"{entry.msgctxt + ' | ' if entry.msgctxt else ''}{entry.msgid!r}"
        if "fuzzy" in entry.flags:
            found.append(f"fuzzy: {name}")
        translations = list(entry.msgstr_plural.values()) if entry.msgid_plural else [entry.msgstr]
        if not all(t.strip() for t in translations):
            found.append(f"untranslated: {name}")
            continue
        wanted = {m.group(1) or m.group(2) for m in PLACEHOLDER.finditer(entry.msgid)}
        for text in translations:
            given = {m.group(1) or m.group(2) for m in PLACEHOLDER.finditer(text)}
            if given != wanted:
                found.append(f"placeholders {sorted(given)} instead of {sorted(wanted)}: {name}")
        for word, ours in NOT_OUR_WORDS.items():
            if any(word in t for t in translations):
                found.append(f"{word!r} instead of {ours}: {name}")
    return found


def test_every_entry_is_translated_with_its_placeholders_and_our_words():
    assert problems(CATALOGUE) == []


def test_gnu_msgfmt_accepts_it(tmp_path):
    # The install path compiles with `manage.py compilemessages`, which runs this msgfmt.
    result = subprocess.run(["msgfmt", "--check", "--statistics", "-o", str(tmp_path / "django.mo"),
                             str(CATALOGUE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "untranslated" not in result.stderr and "fuzzy" not in result.stderr, result.stderr


def test_the_states_use_the_glossarys_words():
    po = polib.pofile(str(CATALOGUE))
    by_context = {(e.msgctxt, e.msgid): e.msgstr for e in po}
    assert {k: by_context[("job state", k)] for k in JOB_STATES} == JOB_STATES
    assert {k: by_context[("news status", k)] for k in NEWS_STATES} == NEWS_STATES


def test_the_running_code_reads_the_compiled_catalogue():
    # Compiled by the install path (scripts/test); a missing .mo would leave the admin English.
    from jobs.models import JobState

    compiled = CATALOGUE.with_suffix(".mo")
    assert compiled.exists(), f"{compiled} is missing: ./scripts/test compiles it (manage.py compilemessages)"
    with translation.override("zh-hans"):
        assert str(JobState.DEAD.label) == "已失败（死信）"
    with translation.override("en"):
        assert str(JobState.DEAD.label) == "Dead"


def test_a_new_string_without_its_translation_fails(tmp_path):
    """scripts/messages on a copy of the tree: every string for people that the code holds
    today is in the catalogue, translated. A `gettext("...")` added without its entry shows
    up here as untranslated."""
    copy = tmp_path / "tree"
    ignore = shutil.ignore_patterns(".venv", ".git", "var", "site", "mutants", "__pycache__", "*.mo", "tests",
                                    "bench", "artifacts", ".hypothesis", ".pytest_cache")
    shutil.copytree(ROOT, copy, ignore=ignore)
    env = {**os.environ, "PYTHON": sys.executable, "DJANGO_DEBUG": "1"}
    result = subprocess.run(["./scripts/messages"], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert problems(copy / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po") == []


@pytest.mark.parametrize("value,expected", [("", "en"), ("zh-hans", "zh-hans"), ("ZH-HANS", "zh-hans"), ("en", "en")])
def test_the_fallback_language_comes_from_the_environment(value, expected):
    result = subprocess.run([sys.executable, "-c", "from django.conf import settings; import django; "
                             "django.setup(); print(settings.LANGUAGE_CODE)"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "LANGUAGE_CODE": value,
                                 "DJANGO_SETTINGS_MODULE": "nextevent.settings"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_a_language_we_do_not_speak_is_refused_by_name():
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "LANGUAGE_CODE": "fr"})
    assert result.returncode != 0
    assert "LANGUAGE_CODE must be one of zh-hans, en, got 'fr'" in result.stderr


@pytest.mark.django_db
def test_the_cli_stays_english_when_the_fallback_is_chinese(capsys, settings):
    """Operators grep `manage.py jobs`: no Chinese in it, even with LANGUAGE_CODE=zh-hans and a
    Chinese translation active (the gauge's label is translated for the dashboard)."""
    from jobs.models import JobState
    from tests.ops_support import make_job, run_jobs_command

    settings.LANGUAGE_CODE = "zh-hans"
    make_job(state=JobState.DEAD, queue="wechat", job_type="wechat:publishing")
    with translation.override("zh-hans"):
        assert run_jobs_command("stats") == 0
        assert run_jobs_command("list", "--state", "dead") == 0
    out = capsys.readouterr().out
    assert "analytics buffer" in out and "dead" in out
    assert not re.search(r"[\u4e00-\u9fff]", out), out


@pytest.mark.parametrize("language,next_url", [("zh-hans", "https://evil.example/"), ("klingon", "/admin/"),
                                               ("", ""), ("x" * 5000, "/admin/\x00")])
def test_the_language_switch_refuses_bad_input_without_an_error(client, language, next_url):
    response = client.post("/i18n/setlang/", {"language": language, "next": next_url})
    assert response.status_code == 302
    assert not response["Location"].startswith("https://evil.example")
    cookie = response.cookies.get("django_language")
    assert (cookie.value if cookie else None) == ("zh-hans" if language == "zh-hans" else None)
