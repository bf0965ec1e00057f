"""Private redis-server processes for tests that kill, fail over or reconfigure Redis:
started on their own ports, stopped by their own pid, never the shared 6379."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis


class RedisProcess:
    def __init__(self, name: str, port: int, workdir: Path, args: list[str], sentinel_conf: str | None = None):
        self.name, self.port, self.dir = name, port, workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        if sentinel_conf is not None:
            conf = self.dir / "sentinel.conf"
            conf.write_text(sentinel_conf)
            argv = ["redis-server", str(conf), "--sentinel"]
        else:
            argv = ["redis-server", "--save", "", "--appendonly", "no"]
        argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--logfile", str(self.log),
                 *args]
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)

    def wait_ready(self, timeout: float = 15, **client_kwargs) -> "RedisProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                if self.client(**client_kwargs).ping():
                    return self
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} on port {self.port} did not answer within {timeout} s")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def restart(self) -> "RedisProcess":
        """Start it again with the same arguments (a sentinel re-reads the config it rewrote)."""
        self.stop()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def sentinel_conf(master_port: int, master: str = "mymaster") -> str:
    return (f"sentinel monitor {master} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {master} 1000\n"
            f"sentinel failover-timeout {master} 10000\n"
            f"sentinel parallel-syncs {master} 1\n")


class SentinelSet:
    """A master, a replica and three sentinels (quorum 2) on consecutive private ports."""

    def __init__(self, workdir: Path, base_port: int, master: str = "mymaster"):
        self.master_name = master
        self.master = self.replica = None
        self.sentinels: list[RedisProcess] = []
        try:  # one that fails to start must not leave the others running
            self.master = RedisProcess("master", base_port, workdir, [])
            self.master.wait_ready()
            self.replica = RedisProcess("replica", base_port + 1, workdir, ["--replicaof", "127.0.0.1", str(base_port)])
            self.replica.wait_ready()
            for i in range(3):
                self.sentinels.append(RedisProcess(f"sentinel{i}", base_port + 10 + i, workdir, [],
                                                   sentinel_conf=sentinel_conf(base_port, master)))
                self.sentinels[-1].wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def env_value(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def wait_replica_known(self, timeout: float = 40) -> None:
        """Sentinels learn of replicas from the master's INFO about every 10 s; a failover
        before that aborts with -failover-abort-no-good-slave."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                known = [s.client().sentinel_slaves(self.master_name) for s in self.sentinels]
                if all(any(int(r["port"]) == self.replica.port and "s_down" not in r["flags"] for r in k)
                       for k in known) and self.replica.client().info("replication")["master_link_status"] == "up":
                    return
            except redis.RedisError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the sentinels did not list the replica within {timeout} s")

    def master_port(self) -> int | None:
        for s in self.sentinels:
            try:
                addr = s.client().sentinel_get_master_addr_by_name(self.master_name)
                if addr:
                    return int(addr[1])
            except redis.RedisError:
                continue
        return None

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            if server is not None:
                server.stop()
