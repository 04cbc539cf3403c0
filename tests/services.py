"""The real PostgreSQL and Redis the accounting tests run against, isolated per test run.

Each PostgreSQL user gets a database of its own (``llmrelay_test_<random>``, dropped afterwards) and
each Redis user a key prefix of its own (its keys deleted afterwards), so parallel runs and other
people's runs on the same servers never meet. A server that is not there fails the test with how to
start it: these tests are part of the suite, never skipped.

For outages, :class:`PrivateRedis` and :class:`PrivatePostgres` run a server of their own (on a free
port, in a temporary directory) that a test may stop and start without touching anyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

PG_HOST = os.environ.get("LLMRELAY_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("LLMRELAY_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("LLMRELAY_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("LLMRELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

_PG_HELP = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
    "(scripts/test does)"
)
_REDIS_HELP = (
    'start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no (scripts/test does)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- PostgreSQL ---------------------------------------------------------------------------------


async def _pg_admin(sql: str, host: str, port: int, user: str) -> None:
    conn = await asyncpg.connect(host=host, port=port, user=user, database="postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(host: str = PG_HOST, port: int = PG_PORT, user: str = PG_USER) -> str:
    """A new empty database; its ``postgresql://`` URL."""
    name = "llmrelay_test_" + uuid.uuid4().hex[:12]
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"', host, port, user))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not usable at {host}:{port} ({exc!r}); {_PG_HELP}")
    return f"postgresql://{user}@{host}:{port}/{name}"


def drop_database(url: str) -> None:
    rest = url.removeprefix("postgresql://")
    user, _, rest = rest.partition("@")
    address, _, name = rest.partition("/")
    host, _, port = address.partition(":")
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', host, int(port), user))


@contextlib.contextmanager
def isolated_database() -> Iterator[str]:
    """A database of its own on the shared PostgreSQL, dropped afterwards."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


# -- Redis --------------------------------------------------------------------------------------


def redis_client(url: str = REDIS_URL) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(f"Redis is not usable at {url} ({exc!r}); {_REDIS_HELP}")
    return client


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    names = list(client.scan_iter(match=prefix + "*", count=1000))
    for start in range(0, len(names), 500):
        client.delete(*names[start : start + 500])


@contextlib.contextmanager
def isolated_prefix() -> Iterator[str]:
    """A key prefix no one else uses on the shared Redis; its keys are deleted afterwards."""
    client = redis_client()
    prefix = "llmrelay-test-" + uuid.uuid4().hex[:12] + ":"
    try:
        yield prefix
    finally:
        delete_prefix(client, prefix)
        client.close()


class PrivateRedis:
    """A redis-server of the test's own, which it may freeze, kill and start again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(f"redis-server is not installed; {_REDIS_HELP}")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tempfile.gettempdir()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def freeze(self) -> None:
        """Unreachable as a partition is: connections hang until the socket timeout."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Gone, with everything it held (it keeps no data on disk)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        self.kill()


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb in a temporary directory, a free port),
    which it may stop and start: an outage that no one else's tests notice."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        self.pg_ctl = str(bindir / "pg_ctl")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="llmrelay-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self._as_user = _run_as_postgres()
        if self._as_user:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(
            [str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8"]
        )  # fmt: skip
        self.start()
        self.url = create_database("127.0.0.1", self.port, "postgres")

    def _run(self, args: list[str]) -> None:
        if self._as_user:
            args = ["runuser", "-u", "postgres", "--", *args]
        result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -k {self.directory}"
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
                   "-w", "-t", "60", "start"])  # fmt: skip

    def stop(self) -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])

    def close(self) -> None:
        subprocess.run(
            (["runuser", "-u", "postgres", "--"] if self._as_user else [])
            + [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def _pg_bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(found.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        pytest.fail(f"PostgreSQL's initdb is not installed; {_PG_HELP}")
    return versions[-1].parent


def _run_as_postgres() -> bool:
    """initdb refuses to run as root: then the cluster belongs to the ``postgres`` user."""
    if os.geteuid() != 0:
        return False
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root with no 'postgres' user to own a private PostgreSQL cluster")
    return True
