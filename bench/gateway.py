"""What llmrelay adds over calling the upstream directly, side by side with LiteLLM's proxy.

    .venv/bin/python bench/gateway.py [--duration S] [--quick] [--workers N] [--no-litellm]

One run starts a near-free upstream (nginx answering a fixed ``chat.completion`` and a fixed
50-chunk SSE stream; see ``fixed_upstream.py``) and ``llmrelay serve`` with the normal SQLite ledger
in a temporary directory, creates a key with ``llmrelay keys create``, then drives both with
``wrk`` (one thread, a Lua script for the POST body and the key). The gateway is pinned to one core
(``--gateway-cpus``, default 1), the upstream, wrk and this script to the other (``--load-cpus``,
default 0). For each body (JSON, SSE) and each number of connections (1 and 64 by default) it
measures the direct path, then the same through the gateway, and reports requests/s, latency
percentiles (wrk measures until the last byte, so a stream's latency is its whole duration), the
latency llmrelay adds, the gateway's CPU time per request (``/proc/PID/stat``, all threads, the
ledger's included) and its peak RSS (``VmHWM``). LiteLLM's proxy (``litellm_proxy.py``: its own
virtualenv, one worker, pinned like the gateway) takes the same load in the same run. For streams
it also measures the time to the first ``data:`` event (``streams.py``: a raw-socket client, 1 and
64 in flight) and the gateway's memory with ``--idle-streams`` streams held open to an upstream
that sent one chunk and went silent. The figures are printed and written as JSON to
``bench/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

import litellm_proxy
import streams
from fixed_upstream import (
    SSE_CHUNKS,
    Upstream,
    busy_seconds,
    completion_body,
    cpu_seconds,
    cpus_of,
    free_port,
    machine_info,
    peak_rss_mib,
    pin,
    process_tree,
    request_body,
    running,
    start_upstream,
    stop,
    wait_for_port,
)

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent

_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {{\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, " ..
    "\\"errors\\": {{\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, " ..
    "\\"timeout\\": %d}}, \\"latency_us\\": {{\\"mean\\": %.1f, \\"max\\": %.1f, " ..
    "\\"p50\\": %.1f, \\"p90\\": %.1f, \\"p99\\": %.1f, \\"p999\\": %.1f}}}}\\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


@dataclass
class Run:
    """One wrk run, and the CPU time each party spent during it."""

    requests: int
    seconds: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    gateway_cpu_s: float
    upstream_cpu_s: float
    wrk_cpu_s: float
    other_load_gateway_cores: float | None
    """Fraction of the gateway's cores used by processes other than the gateway (others' work)."""
    other_load_load_cores: float | None
    """Fraction of the load cores used by processes other than the upstream and wrk."""


@dataclass
class Cell:
    body: str  # "json" or "sse"
    connections: int
    path: str  # "direct", "llmrelay" or "litellm"
    runs: list[Run] = field(default_factory=list)

    def _median(self, values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.runs)

    @property
    def rps(self) -> float:
        return self._median([r.requests / r.seconds for r in self.runs if r.seconds])

    @property
    def error_count(self) -> int:
        return sum(sum(r.errors.values()) for r in self.runs)

    def ms(self, name: str) -> float:
        return self._median([r.latency_us.get(name, 0.0) / 1000 for r in self.runs])

    def cpu_us(self, process: str) -> float:
        """Median CPU µs per request of ``gateway``, ``upstream`` or ``wrk``."""
        return self._median(
            [getattr(r, f"{process}_cpu_s") / r.requests * 1e6 for r in self.runs if r.requests]
        )

    def other_load(self, where: str) -> float | None:
        values = [getattr(r, f"other_load_{where}_cores") for r in self.runs]
        known = [v for v in values if v is not None]
        return max(known) if known else None

    def as_json(self) -> dict[str, Any]:
        return {
            "body": self.body,
            "connections": self.connections,
            "path": self.path,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.ms("p50"), 3),
            "p90_ms": round(self.ms("p90"), 3),
            "p99_ms": round(self.ms("p99"), 3),
            "p999_ms": round(self.ms("p999"), 3),
            "mean_ms": round(self.ms("mean"), 3),
            "errors": self.error_count,
            "gateway_cpu_us_per_request": round(self.cpu_us("gateway"), 1),
            "upstream_cpu_us_per_request": round(self.cpu_us("upstream"), 1),
            "wrk_cpu_us_per_request": round(self.cpu_us("wrk"), 1),
            "max_other_load_gateway_cores": self.other_load("gateway"),
            "max_other_load_load_cores": self.other_load("load"),
            "runs": [asdict(r) for r in self.runs],
        }


@dataclass
class Target:
    """A gateway under test (llmrelay or LiteLLM), with the key and model names it takes."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    key: str = ""
    models: dict[str, str] = field(default_factory=dict)  # "json"/"sse"/"idle" → model name

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return self.base_url + "/v1/chat/completions"


@dataclass
class Gateway:
    target: Target
    config: Path
    database: Path


_MODELS = {"json": "json/bench", "sse": "sse/bench", "idle": "idle/bench"}


# -- setting up ---------------------------------------------------------------------------------


def write_config(
    workdir: Path, upstream: Upstream, idle_base: str, accounting: bool = True
) -> tuple[Path, Path]:
    database = workdir / "llmrelay.db"
    provider = {"type": "openai", "api_key": "sk-bench-upstream", "supports_cancellation": True}
    price = {"input": 0.15, "output": 0.60, "cached_input": 0.075}
    config = {
        "database_url": f"sqlite:///{database}",
        "providers": {
            "json": {**provider, "base_url": upstream.json_base},
            "sse": {**provider, "base_url": upstream.sse_base},
            "idle": {**provider, "base_url": idle_base},
        },
        "models": [
            {
                "id": "json/bench",
                "provider": "json",
                "upstream": upstream.json_model,
                "price": price,
            },
            {"id": "sse/bench", "provider": "sse", "upstream": upstream.sse_model, "price": price},
            {"id": "idle/bench", "provider": "idle", "upstream": "idle", "price": price},
        ],
        "ledger": {"journal_path": str(workdir / "ledger.journal")},
    }
    if not accounting:
        config["accounting"] = {"enabled": False}
    path = workdir / "llmrelay.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, database


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("LLMRELAY_DATABASE_URL", "LLMRELAY_REDIS_URL", "LLMRELAY_CONFIG"):
        env.pop(name, None)
    return env


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path, limit: float) -> None:
    deadline = time.monotonic() + limit
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{process.args!r} exited with {process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    except BaseException:
        stop(process)
        sys.stderr.write(log.read_text(errors="replace")[-5000:])
        raise


def start_gateway(
    workdir: Path,
    upstream: Upstream,
    idle_base: str,
    workers: int,
    cpus: str | None,
    accounting: bool = True,
) -> Gateway:
    config, database = write_config(workdir, upstream, idle_base, accounting)
    port = free_port()
    command = [
        *pin(cpus),
        str(BIN / "llmrelay"),
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]
    log_path = workdir / "llmrelay.out"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env())
    base_url = f"http://127.0.0.1:{port}"
    _wait_healthy(process, base_url + "/health", log_path, 60.0)
    target = Target("llmrelay", process, base_url, models=dict(_MODELS))
    return Gateway(target, config, database)


def start_litellm(workdir: Path, upstream: Upstream, idle_base: str, cpus: str | None) -> Target:
    litellm_proxy.ensure_venv()
    config = litellm_proxy.write_config(
        workdir,
        {
            "json/bench": (upstream.json_model, upstream.json_base),
            "sse/bench": (upstream.sse_model, upstream.sse_base),
            "idle/bench": ("idle", idle_base),
        },
    )
    port = free_port()
    log_path = workdir / "litellm.out"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*pin(cpus), *litellm_proxy.command(config, port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=litellm_proxy.environment(),
            cwd=workdir,
        )
    base_url = f"http://127.0.0.1:{port}"
    _wait_healthy(process, base_url + "/health/liveliness", log_path, 180.0)
    return Target("litellm", process, base_url, litellm_proxy.MASTER_KEY, dict(_MODELS))


def start_idle_upstream(workdir: Path, cpus: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with (workdir / "idle.out").open("wb") as log:
        process = subprocess.Popen(
            [
                *pin(cpus),
                sys.executable,
                str(Path(__file__).with_name("streams.py")),
                "idle-upstream",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(port, process, 20.0)
    return process, f"http://127.0.0.1:{port}/v1"


def create_key(gateway: Gateway) -> str:
    command = ["keys", "create", "--name", "bench", "--json", "--config", str(gateway.config)]
    out = subprocess.run(
        [str(BIN / "llmrelay"), *command],
        capture_output=True,
        check=True,
        env=_env(),
    ).stdout
    key: str = orjson.loads(out)["key"]
    return key


def _post(url: str, body: bytes, key: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"sanity check failed: {what}")


def sanity_check(target: Target, upstream: Upstream) -> None:
    """One request of each kind through a gateway: the bench must measure real answers."""
    name = target.name
    status, headers, raw = _post(
        target.url, request_body(target.models["json"], stream=False), target.key
    )
    _expect(status == 200, f"{name}: JSON answer status {status}")
    if name == "llmrelay":
        _expect(headers.get("x-resolved-model") == "json/bench", f"JSON answer headers {headers}")
    content = orjson.loads(raw)["choices"][0]["message"]["content"]
    expected = orjson.loads(completion_body())["choices"][0]["message"]["content"]
    _expect(upstream.kind != "nginx" or content == expected, f"{name}: JSON content {content!r}")
    status, headers, raw = _post(
        target.url, request_body(target.models["sse"], stream=True), target.key
    )
    _expect(status == 200, f"{name}: stream status {status}")
    content_type = {k.lower(): v for k, v in headers.items()}["content-type"]
    _expect(content_type.startswith("text/event-stream"), f"{name}: stream headers {headers}")
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    _expect(events[-1] == b"[DONE]", f"{name}: stream end {events[-2:]!r}")
    chunks = [orjson.loads(e) for e in events[:-1]]
    usage = chunks[-1].get("usage") or {}
    _expect(usage.get("completion_tokens") == SSE_CHUNKS, f"{name}: stream usage {chunks[-1]}")
    content = "".join(
        (c["choices"][0]["delta"].get("content") or "") if c.get("choices") else "" for c in chunks
    )
    if upstream.kind == "nginx":
        _expect(content == expected, f"{name}: stream content {content!r}")
        if name == "llmrelay":
            _expect(len(chunks) == SSE_CHUNKS + 3, f"{len(chunks)} chunks, not {SSE_CHUNKS + 3}")


# -- measuring ----------------------------------------------------------------------------------


def run_wrk(
    workdir: Path,
    url: str,
    body: bytes,
    key: str,
    connections: int,
    duration: float,
    cpus: str | None,
) -> dict[str, Any]:
    script = workdir / "post.lua"
    script.write_text(_LUA.format(body=body.decode(), key=key))
    command = [
        *pin(cpus),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("BENCH "):
            result: dict[str, Any] = json.loads(line[6:])
            return result
    raise RuntimeError(f"wrk printed no result:\n{out}")


@dataclass(frozen=True)
class Setup:
    workdir: Path
    duration: float
    load_cpus: str | None
    gateway_cpus: str | None
    upstream_pid: int
    profile_dir: Path | None = None


@contextlib.contextmanager
def profiled(setup: Setup, pid: int, name: str) -> Iterator[None]:
    """py-spy samples ``pid`` (and its workers) for as long as the block runs, if asked to."""
    spy = shutil.which("py-spy", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if setup.profile_dir is None or pid == setup.upstream_pid or spy is None:
        yield
        return
    setup.profile_dir.mkdir(parents=True, exist_ok=True)
    output = setup.profile_dir / f"{name}.folded"
    command = [spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "1000"]
    command += ["--format", "raw", "--output", str(output), "--nonblocking"]
    recorder = subprocess.Popen(
        [*pin(setup.load_cpus), *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)  # py-spy attaches before the load starts
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        recorder.wait(30)


def measure(setup: Setup, connections: int, url: str, body: bytes, key: str, pid: int) -> Run:
    """One wrk run against ``url``; ``pid`` is the gateway under test (the upstream's if direct)."""
    gateway_cores, load_cores = cpus_of(setup.gateway_cpus), cpus_of(setup.load_cpus)
    gateway, upstream = cpu_seconds(pid), cpu_seconds(setup.upstream_pid)
    direct = pid == setup.upstream_pid
    wrk = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_gateway, busy_load = busy_seconds(gateway_cores), busy_seconds(load_cores)
    result = run_wrk(setup.workdir, url, body, key, connections, setup.duration, setup.load_cpus)
    busy_gateway = busy_seconds(gateway_cores) - busy_gateway
    busy_load = busy_seconds(load_cores) - busy_load
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = after.ru_utime + after.ru_stime - wrk.ru_utime - wrk.ru_stime
    gateway = 0.0 if direct else cpu_seconds(pid) - gateway
    upstream = cpu_seconds(setup.upstream_pid) - upstream
    seconds = float(result["duration_us"]) / 1e6

    separate = bool(gateway_cores and load_cores and not gateway_cores & load_cores)

    def other(busy: float, ours: float, cores: set[int]) -> float | None:
        if not separate:
            return None  # not pinned, or both sides share cores: nothing to tell apart
        return round(max(0.0, busy - ours) / (seconds * len(cores)), 3)

    return Run(
        requests=int(result["requests"]),
        seconds=seconds,
        errors={k: int(v) for k, v in result["errors"].items()},
        latency_us={k: float(v) for k, v in result["latency_us"].items()},
        gateway_cpu_s=round(gateway, 3),
        upstream_cpu_s=round(upstream, 3),
        wrk_cpu_s=round(wrk_cpu, 3),
        other_load_gateway_cores=other(busy_gateway, gateway, gateway_cores),
        other_load_load_cores=other(busy_load, upstream + wrk_cpu, load_cores),
    )


def ledger_summary(database: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT status, COUNT(*) FROM ledger GROUP BY status").fetchall()
    return {str(status): int(count) for status, count in rows}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def measure_ttft(upstream: Upstream, targets: list[Target], quick: bool) -> list[dict[str, Any]]:
    """Time to the first ``data:`` event, direct and through each gateway, at 1 and 64 in flight."""
    rows: list[dict[str, Any]] = []
    host_port = upstream.sse_url.split("//", 1)[1]
    direct_port = int(host_port.split("/", 1)[0].rsplit(":", 1)[1])
    direct_path = "/" + host_port.split("/", 1)[1]
    plan: list[tuple[str, int, str, bytes, dict[str, str], int]] = [
        ("direct", direct_port, direct_path, request_body(upstream.sse_model, stream=True), {}, 1)
    ]
    for target in targets:
        body = request_body(target.models["sse"], stream=True)
        headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"}
        slow = 8 if target.name == "litellm" else 1  # ~40 streams/s: fewer samples
        plan.append((target.name, target.port, "/v1/chat/completions", body, headers, slow))
    for concurrency in (1, 64):
        for name, port, path, body, headers, slow in plan:
            count = (400 if quick else 2000) // slow
            if concurrency > 1:
                count = max(count, concurrency * 4)
            samples = streams.ttft(
                "127.0.0.1",
                port,
                path,
                body,
                headers,
                count,
                concurrency,
                warmup=2 if slow > 1 else 20,
            )
            row = {
                "path": name,
                "in_flight": concurrency,
                "samples": len(samples),
                "p50_ms": round(_percentile(samples, 50) * 1000, 3),
                "p90_ms": round(_percentile(samples, 90) * 1000, 3),
                "p99_ms": round(_percentile(samples, 99) * 1000, 3),
            }
            print(
                f"  ttft {name:<8} in flight {concurrency:<3} p50 {row['p50_ms']:.3f} ms  "
                f"p99 {row['p99_ms']:.3f} ms  ({len(samples)} streams)",
                flush=True,
            )
            rows.append(row)
    return rows


def _rss_mib(pid: int) -> float:
    total = 0
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def measure_idle(target: Target, count: int, time_limit: float) -> dict[str, Any]:
    """``count`` streams held open through ``target`` to the silent upstream: its memory."""
    before = _rss_mib(target.process.pid)
    seen: dict[str, Any] = {}

    def at_peak(opened: int) -> None:
        seen["opened"] = opened
        seen["rss_mib"] = round(_rss_mib(target.process.pid), 1)

    started = time.monotonic()
    body = request_body(target.models["idle"], stream=True)
    headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"}
    opened = streams.idle_streams(
        "127.0.0.1",
        target.port,
        "/v1/chat/completions",
        body,
        headers,
        count,
        time_limit,
        at_peak,
    )
    row = {
        "path": target.name,
        "wanted": count,
        "opened": opened,
        "seconds_to_open": round(time.monotonic() - started, 1),
        "rss_before_mib": round(before, 1),
        "rss_open_mib": seen.get("rss_mib"),
    }
    print(
        f"  idle {target.name:<8} {opened}/{count} streams open: RSS {row['rss_open_mib']} MiB "
        f"(before {row['rss_before_mib']} MiB)",
        flush=True,
    )
    time.sleep(2)  # let the gateway close its side before anything else runs
    return row


# -- reporting ----------------------------------------------------------------------------------


def _find(cells: list[Cell], body: str, connections: int, path: str) -> Cell | None:
    for cell in cells:
        if (cell.body, cell.connections, cell.path) == (body, connections, path):
            return cell
    return None


def summarise(cells: list[Cell]) -> list[dict[str, Any]]:
    rows = []
    for relay in (c for c in cells if c.path != "direct"):
        direct = _find(cells, relay.body, relay.connections, "direct")
        if direct is None:
            continue
        rows.append(
            {
                "path": relay.path,
                "body": relay.body,
                "connections": relay.connections,
                "rps_direct": round(direct.rps, 1),
                "rps": round(relay.rps, 1),
                "rps_ratio": round(relay.rps / direct.rps, 4) if direct.rps else None,
                "chunks_per_s": round(relay.rps * (SSE_CHUNKS + 3))
                if relay.body == "sse"
                else None,
                "p50_direct_ms": round(direct.ms("p50"), 3),
                "p50_ms": round(relay.ms("p50"), 3),
                "p99_direct_ms": round(direct.ms("p99"), 3),
                "p99_ms": round(relay.ms("p99"), 3),
                "added_p50_ms": round(relay.ms("p50") - direct.ms("p50"), 3),
                "added_p99_ms": round(relay.ms("p99") - direct.ms("p99"), 3),
                "gateway_cpu_us_per_request": round(relay.cpu_us("gateway"), 1),
                "upstream_cpu_us_per_request": round(direct.cpu_us("upstream"), 1),
            }
        )
    return rows


def _load(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def print_report(
    cells: list[Cell],
    summary: list[dict[str, Any]],
    rss: dict[str, float],
    upstream: Upstream,
) -> None:
    print(
        f"\nupstream: {upstream.kind} ({upstream.version}). json: one chat.completion; sse: "
        f"{SSE_CHUNKS} content chunks + usage. Latency is until the last byte (wrk).\n"
        "CPU µs/req: the gateway's (llmrelay/litellm rows) or the upstream's (direct rows).\n"
        "'other load': the busiest share of the gateway's / load core taken by processes not\n"
        "in the bench."
    )
    header = (
        f"{'body':<5} {'conns':>5} {'path':<9} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6} {'CPU µs/req':>10} {'other load':>11}"
    )
    print(header)
    print("-" * len(header))
    for cell in cells:
        cpu = cell.cpu_us("gateway" if cell.path != "direct" else "upstream")
        print(
            f"{cell.body:<5} {cell.connections:>5} {cell.path:<9} {cell.rps:>8.0f} "
            f"{cell.ms('p50'):>8.3f} {cell.ms('p90'):>8.3f} {cell.ms('p99'):>8.3f} "
            f"{cell.error_count:>6} {cpu:>10.0f} "
            f"{_load(cell.other_load('gateway')):>5}/{_load(cell.other_load('load')):<5}"
        )
    print("\nagainst the direct path")
    header = (
        f"{'path':<9} {'body':<5} {'conns':>5} {'req/s':>8} {'of direct':>9} {'added p50 ms':>13} "
        f"{'added p99 ms':>13} {'CPU µs/req':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in summary:
        print(
            f"{row['path']:<9} {row['body']:<5} {row['connections']:>5} {row['rps']:>8.0f} "
            f"{row['rps_ratio'] or 0:>9.1%} {row['added_p50_ms']:>13.3f} "
            f"{row['added_p99_ms']:>13.3f} {row['gateway_cpu_us_per_request']:>11.0f}"
        )
    for name, value in rss.items():
        print(f"{name} peak RSS (VmHWM, all its processes): {value:.1f} MiB")


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="3 s per run, 1 s warm-ups")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (medians reported)")
    parser.add_argument("--workers", type=int, default=1, help="llmrelay serve --workers")
    parser.add_argument("--connections", default="1,64", help="comma-separated, e.g. 1,16,64")
    parser.add_argument("--gateway-cpus", default="1", help="taskset -c list for the gateways")
    parser.add_argument("--load-cpus", default="0", help="for the upstream, wrk and this script")
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything to cores")
    parser.add_argument("--upstream", choices=("auto", "nginx", "emulator"), default="auto")
    parser.add_argument("--no-litellm", action="store_true", help="llmrelay and direct only")
    parser.add_argument(
        "--no-accounting",
        action="store_true",
        help="llmrelay without ledger, limits or credits (accounting.enabled: false)",
    )
    parser.add_argument("--bodies", default="json,sse", help="json, sse or both")
    parser.add_argument("--no-ttft", action="store_true", help="skip the time-to-first-event probe")
    parser.add_argument(
        "--idle-streams", type=int, default=10000, help="streams held open (0: skip)"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: results/)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="directory: py-spy records the gateway during each of its cells (folded stacks)",
    )
    return parser.parse_args(argv)


def run_cells(
    setup: Setup,
    upstream: Upstream,
    targets: list[Target],
    bodies: list[str],
    connections: list[int],
    repeat: int,
    warmup: float,
) -> tuple[list[Cell], int]:
    """Every cell, direct then each gateway, ``repeat`` times; also llmrelay's warm-up requests."""
    cells: list[Cell] = []
    warm_requests = 0
    plan = {
        "json": (upstream.json_url, upstream.json_model, False),
        "sse": (upstream.sse_url, upstream.sse_model, True),
    }
    for name in bodies:
        direct_url, upstream_model, stream = plan[name]
        direct_body = request_body(upstream_model, stream=stream)
        paths = [("direct", direct_url, direct_body, "none", setup.upstream_pid)]
        paths += [
            (t.name, t.url, request_body(t.models[name], stream=stream), t.key, t.process.pid)
            for t in targets
        ]
        # Warm every path: the gateway's key cache and upstream pool, nginx's file cache.
        for path, url, body, key, _ in paths:
            warm = run_wrk(setup.workdir, url, body, key, 64, warmup, setup.load_cpus)
            if path == "llmrelay":
                warm_requests += int(warm["requests"])
        for conns in connections:
            row = {path: Cell(name, conns, path) for path, *_ in paths}
            for _ in range(repeat):
                for path, url, body, key, pid in paths:
                    cell = row[path]
                    with profiled(setup, pid, f"{path}-{name}-c{conns}-{len(cell.runs)}"):
                        run = measure(setup, conns, url, body, key, pid)
                    cell.runs.append(run)
                    print(
                        f"  {name:<4} c={conns:<3} {cell.path:<8} "
                        f"{run.requests / run.seconds:9.0f} req/s  "
                        f"p50 {run.latency_us['p50'] / 1000:.3f} ms  "
                        f"p99 {run.latency_us['p99'] / 1000:.3f} ms  "
                        f"errors {sum(run.errors.values())}  other load "
                        f"{_load(run.other_load_gateway_cores)}/"
                        f"{_load(run.other_load_load_cores)}",
                        flush=True,
                    )
            cells += list(row.values())
    return cells, warm_requests


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    duration = 3.0 if args.quick else args.duration
    warmup = 1.0 if args.quick else 3.0
    connections = [int(c) for c in args.connections.split(",") if c.strip()]
    bodies = [b for b in args.bodies.split(",") if b.strip()]
    gateway_cpus = None if args.no_pin else args.gateway_cpus
    load_cpus = None if args.no_pin else args.load_cpus
    if load_cpus:
        os.sched_setaffinity(0, cpus_of(load_cpus))  # this script stays off the gateway's core
    if args.idle_streams:
        limit = streams.raise_fd_limit(args.idle_streams * 2 + 1000)  # inherited by children
        if limit < args.idle_streams * 2 + 100:
            print(
                f"note: the open-file limit is {limit} and a gateway needs two descriptors per "
                f"stream: about {(limit - 100) // 2} of {args.idle_streams} idle streams can open",
                flush=True,
            )
    if not args.no_litellm:
        litellm_proxy.ensure_venv()
    machine = machine_info()
    machine["litellm"] = None if args.no_litellm else litellm_proxy.installed_version()
    started = datetime.now(UTC)
    ttft: list[dict[str, Any]] = []
    idle: list[dict[str, Any]] = []
    rss: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="llmrelay-bench-") as tmp:
        workdir = Path(tmp)
        idle_upstream, idle_base = start_idle_upstream(workdir, load_cpus)
        processes: list[subprocess.Popen[bytes]] = [idle_upstream]
        try:
            with running(start_upstream(workdir, args.upstream, load_cpus)) as upstream:
                gateway = start_gateway(
                    workdir, upstream, idle_base, args.workers, gateway_cpus, not args.no_accounting
                )
                processes.append(gateway.target.process)
                targets = [gateway.target]
                gateway.target.key = create_key(gateway)
                if not args.no_litellm:
                    litellm = start_litellm(workdir, upstream, idle_base, gateway_cpus)
                    processes.append(litellm.process)
                    targets.append(litellm)
                for target in targets:
                    sanity_check(target, upstream)
                setup = Setup(
                    workdir, duration, load_cpus, gateway_cpus, upstream.pid, args.profile
                )
                cells, warm_requests = run_cells(
                    setup, upstream, targets, bodies, connections, args.repeat, warmup
                )
                rss = {t.name: peak_rss_mib(t.process.pid) for t in targets}
                if "sse" in bodies and not args.no_ttft:
                    ttft = measure_ttft(upstream, targets, args.quick)
                if args.idle_streams:
                    idle = [measure_idle(t, args.idle_streams, 120.0) for t in targets]
        finally:
            for process in reversed(processes):
                stop(process)
        ledger = ledger_summary(gateway.database)
    summary = summarise(cells)
    print_report(cells, summary, rss, upstream)
    served = sum(c.requests for c in cells if c.path == "llmrelay") + warm_requests + 2
    print(
        f"llmrelay ledger rows by status: {ledger}; wrk saw {served} answers through llmrelay "
        "(the cancelled rows are requests in flight when wrk stopped, and the idle streams)"
    )
    report = {
        "bench": "gateway",
        "date": started.isoformat(timespec="seconds"),
        "machine": {**machine, "loadavg_end": os.getloadavg()},
        "settings": {
            "accounting": not args.no_accounting,
            "duration_s": duration,
            "warmup_s": warmup,
            "repeat": args.repeat,
            "workers": args.workers,
            "connections": connections,
            "gateway_cpus": gateway_cpus,
            "load_cpus": load_cpus,
            "upstream": upstream.kind,
            "upstream_version": upstream.version,
            "sse_chunks": SSE_CHUNKS,
            "load_generator": "wrk -t1",
        },
        "summary": summary,
        "ttft": ttft,
        "idle_streams": idle,
        "peak_rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "ledger_rows": ledger,
        "wrk_answers_through_llmrelay": served,
        "cells": [c.as_json() for c in cells],
    }
    output = args.output or RESULTS / f"gateway-{started:%Y%m%d-%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"figures written to {output}")


if __name__ == "__main__":
    main()
