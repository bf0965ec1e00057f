"""deploy/: the systemd units pass `systemd-analyze verify` (no running systemd needed), and
their stop timeouts leave the supervisor its whole shutdown grace."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"


def unit_setting(unit: Path, key: str) -> str:
    match = re.search(rf"^{key}=(.*)$", unit.read_text(), re.MULTILINE)
    assert match, f"{unit.name} has no {key}="
    return match.group(1).strip()


def env_example(key: str) -> str:
    return unit_setting(ROOT / "deploy" / "nextevent.env.example", key)


@pytest.mark.parametrize("name", ["nextevent-web.service", "nextevent-qcluster.service"])
def test_unit_passes_systemd_analyze_verify(name, tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd (.ci/run installs it)"
    # The units name /opt/nextevent; verify checks that ExecStart's program exists, so point
    # them at this checkout. Everything else is verified as shipped.
    text = (UNITS / name).read_text().replace("/opt/nextevent", str(ROOT))
    unit = tmp_path / name
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Unknown keys or bad values are only warnings ("ignoring") with exit code 0: any output fails.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_stop_timeouts_exceed_the_shutdown_grace():
    grace = int(env_example("JOBS_SHUTDOWN_GRACE"))
    qcluster = UNITS / "nextevent-qcluster.service"
    # The supervisor needs the grace plus its own stop (dispatcher, killing what is left).
    assert int(unit_setting(qcluster, "TimeoutStopSec")) >= grace + 20
    # SIGTERM to the supervisor alone; control-group would signal every worker at once.
    assert unit_setting(qcluster, "KillMode") == "mixed"
    web = UNITS / "nextevent-web.service"
    graceful = re.search(r'"GUNICORN_GRACEFUL_TIMEOUT", (\d+)', (ROOT / "deploy" / "gunicorn.conf.py").read_text())
    assert int(unit_setting(web, "TimeoutStopSec")) > int(graceful.group(1))
    for unit in (qcluster, web):
        assert unit_setting(unit, "EnvironmentFile") == "/etc/nextevent/nextevent.env"
        assert unit_setting(unit, "Restart") in ("always", "on-failure")
        assert unit_setting(unit, "LimitNOFILE") and unit_setting(unit, "MemoryMax")
