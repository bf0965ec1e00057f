"""Process-tree guarantees for qcluster on Linux: no process outlives the one that owns it,
and a job's lease holder is named precisely enough that its own host can tell it is dead.

- Parent-death signal (prctl PR_SET_PDEATHSIG): the kernel signals a child the moment the
  thread that forked it dies. Installed in every process django-q2 forks (sentinel, pusher,
  monitor, workers) by an at-fork hook, and in each cluster's main process, so a SIGKILL
  anywhere in the tree takes everything below it along, with no polling.
- Child subreaper (PR_SET_CHILD_SUBREAPER) for the supervisor: an orphan of its tree is
  re-parented to the supervisor, not to init, and the supervisor kills and reaps it.
- Holder ids "host:start:pid": `start` is the process's start time in clock ticks since boot
  (/proc/<pid>/stat field 22), so a pid reused by a later process is not taken for the
  holder. The pid comes last so `holder.rsplit(":", 1)[1]` is the pid, as before.

Elsewhere (no /proc, no prctl) every function degrades to a no-op or to psutil.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys

logger = logging.getLogger(__name__)

# Set by the supervisor for each cluster's main process: the parent it must die with.
SUPERVISOR_ENV = "NEXTEVENT_SUPERVISOR_PID"

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = None


def _prctl(option: int, arg: int) -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc.prctl(option, arg, 0, 0, 0) == 0


def die_with_parent(sig: int = signal.SIGKILL, expected_parent: int | None = None) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies. If the parent is
    already gone (it died before the prctl), exit now. Returns False if unsupported."""
    ok = _prctl(PR_SET_PDEATHSIG, int(sig))
    if ok and expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)  # the parent died between our fork and the prctl: the signal never comes
    return ok


def become_subreaper() -> bool:
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


_forking_parent = 0
_hook_installed = False


def _before_fork():
    global _forking_parent
    _forking_parent = os.getpid()


def _after_fork_in_child():
    die_with_parent(signal.SIGKILL, _forking_parent)


def install_fork_hook() -> None:
    """Every process forked from here on (and from those, recursively: the hook is inherited)
    is SIGKILLed when its parent dies. Called in a cluster's main process before django-q2
    forks its sentinel, which forks pusher, monitor and workers."""
    global _hook_installed
    if not _hook_installed:
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _hook_installed = True


# ---------------------------------------------------------------- lease holders


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return _psutil_start(pid)
    # Field 2 (comm) may hold spaces and parentheses: split after the last ")".
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)


def _psutil_start(pid: int) -> int | None:
    import psutil

    try:
        return int(psutil.Process(pid).create_time() * 100)
    except psutil.Error:
        return None


_me: tuple[int, str] | None = None


def holder_id(pid: int | None = None) -> str:
    """"host:start:pid" of this process (cached per pid: a forked worker gets its own)."""
    global _me
    if pid is None:
        mine = os.getpid()
        if _me is None or _me[0] != mine:
            _me = (mine, f"{socket.gethostname()}:{start_ticks(mine) or 0}:{mine}")
        return _me[1]
    return f"{socket.gethostname()}:{start_ticks(pid) or 0}:{pid}"


def parse_holder(holder: str) -> tuple[str, int | None, int] | None:
    """(host, start ticks or None for the old "host:pid" form, pid), or None if unreadable."""
    parts = (holder or "").split(":")
    try:
        if len(parts) == 3:
            return parts[0], int(parts[1]), int(parts[2])
        if len(parts) == 2:
            return parts[0], None, int(parts[1])
    except ValueError:
        return None
    return None


def holder_alive(holder: str, host: str | None = None) -> bool | None:
    """True/False for a holder on this host (`host`, default this host's name); None when it
    is another host's (only its lease can tell) or unreadable."""
    parsed = parse_holder(holder)
    if parsed is None:
        return None
    h, start, pid = parsed
    if h != (host or socket.gethostname()) or start is None:
        return None
    now_start = start_ticks(pid)
    if now_start is None or now_start != start:
        return False  # gone, or the pid now belongs to a later process
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")  # a zombie is dead, just not reaped yet
    except OSError:
        return False


# ---------------------------------------------------------------- killing trees


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def exited_unreaped(pid: int) -> bool:
    """True if our child `pid` has exited, leaving it a zombie (not reaped), so its pid and
    process group id cannot be reused while we kill what is left of its group."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None
