"""Embedded mode's redis-server belongs to whoever started it: a one-off management command
(`NEXTEVENT_EMBEDDED=1 manage.py migrate`) that had to start it stops it when it exits, and
a command that found it running leaves it alone; with NEXTEVENT_EMBEDDED_REDIS=shared (the
quick start) nobody but its owner stops it. Each test runs in a copy of the tree, so its var/
(SQLite file, socket) is its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import psutil
import pytest
import redis

from tests.conftest import ROOT, wait_for



@pytest.fixture
def tree(tmp_path):
    copy = tmp_path / "tree"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".venv", ".git", "var", "site", "mutants", "__pycache__", "tests", "bench", "docs", ".hypothesis"))
    yield copy
    for process in servers_of(copy):  # whatever a failed test left: ours, stopped by pid
        process.kill()


def servers_of(copy) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            if "redis-server" in (process.info["name"] or "") or any(
                    "redis-server" in part for part in process.info["cmdline"] or []):
                if str(copy) in " ".join(process.info["cmdline"] or []) or str(copy) in process.cwd():
                    found.append(process)
        except psutil.Error:
            continue
    return found


def manage(copy, *args, **env):
    environ = {"PATH": os.environ["PATH"], "NEXTEVENT_EMBEDDED": "1", "DJANGO_DEBUG": "1", **env}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=copy, env=environ, capture_output=True,
                          text=True, timeout=120)


def answers(copy) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(copy / "var" / "redis.sock"), socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def test_a_one_off_command_stops_the_server_it_started(tree):
    result = manage(tree, "migrate", "--noinput")
    assert result.returncode == 0, result.stderr
    assert not answers(tree)
    wait_for(lambda: not servers_of(tree), 10, message="the embedded redis-server to exit")


def test_a_command_that_found_the_server_running_leaves_it_to_its_owner(tree):
    owner = manage(tree, "migrate", "--noinput", NEXTEVENT_EMBEDDED_REDIS="shared")
    assert owner.returncode == 0, owner.stderr
    assert answers(tree) and len(servers_of(tree)) == 1  # shared: still running for the others
    result = manage(tree, "jobs", "stats")
    assert result.returncode == 0, result.stderr
    assert answers(tree), "a command that did not start it stopped it"
    redis.Redis(unix_socket_path=str(tree / "var" / "redis.sock")).shutdown()  # what the quick start's Ctrl-C does
    wait_for(lambda: not servers_of(tree), 10, message="the embedded redis-server to exit")
