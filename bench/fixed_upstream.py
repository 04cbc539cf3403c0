"""The benches' near-free upstream, and the process and machine facts they report.

nginx answers ``POST /json/v1/chat/completions`` with one fixed ``chat.completion`` and
``POST /sse/v1/chat/completions`` with one fixed stream (a role chunk, ``SSE_CHUNKS`` content
chunks, the usage chunk and ``data: [DONE]``), as static files from its config, so
the upstream costs a few microseconds per request and the figures are the client's or the
gateway's own. Without nginx the provider emulator (``llmrelay mock-upstream``) stands in: it is
a real Python server, far from free, so the figures are then only comparable with each other.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import orjson

SSE_CHUNKS = 50
UPSTREAM_MODEL = "gpt-4o-mini-2024-07-18"
PROMPT = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Write two sentences about the sea, for a benchmark."},
]
_WORDS = (
    "The sea keeps its own time, folding light into each wave and returning it to the shore in "
    "pieces. Far out, where no one watches, it goes on rehearsing the same long sentence it has "
    "been writing since before the first coast was drawn on any chart"
).split()


def completion_body() -> bytes:
    """One ``chat.completion`` as OpenAI sends it (50 output tokens)."""
    text = " ".join((_WORDS * 2)[:SSE_CHUNKS])
    return orjson.dumps(
        {
            "id": "chatcmpl-BENCH0000000000000000000000",
            "object": "chat.completion",
            "created": 1763769600,
            "model": UPSTREAM_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(),
            "service_tier": "default",
            "system_fingerprint": "fp_bench",
        }
    )


def stream_body() -> bytes:
    """What OpenAI streams with ``stream_options.include_usage``: SSE_CHUNKS content chunks."""
    words = (_WORDS * 2)[:SSE_CHUNKS]
    base = {
        "id": "chatcmpl-BENCH0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": 1763769600,
        "model": UPSTREAM_MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
    }
    events: list[dict[str, object]] = [
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "", "refusal": None},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            "usage": None,
        }
    ]
    for i, word in enumerate(words):
        events.append(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": word if i == 0 else " " + word},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
                "usage": None,
            }
        )
    events.append(
        {
            **base,
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
            "usage": None,
        }
    )
    events.append({**base, "choices": [], "usage": _usage()})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _usage() -> dict[str, object]:
    return {
        "prompt_tokens": 31,
        "completion_tokens": SSE_CHUNKS,
        "total_tokens": 31 + SSE_CHUNKS,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def request_body(model: str, *, stream: bool) -> bytes:
    """The client's request: a short chat, ``stream_options.include_usage`` when streaming."""
    body: dict[str, object] = {"model": model, "messages": PROMPT, "max_tokens": 100}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


# -- the upstream process -------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """A running near-free upstream; ``json_base``/``sse_base`` are OpenAI ``base_url`` values."""

    kind: str  # "nginx" or "emulator"
    process: subprocess.Popen[bytes]
    json_base: str
    sse_base: str
    json_model: str
    sse_model: str
    version: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def json_url(self) -> str:
        return self.json_base + "/chat/completions"

    @property
    def sse_url(self) -> str:
        return self.sse_base + "/chat/completions"


def nginx_config(workdir: Path, port: int) -> str:
    """nginx serving the fixed bodies as static files, to POST as well.

    The static module answers POST with 405; ``error_page 405 =200 $uri`` turns that into an
    internal GET of the same file, answered 200. (``return 200 '...'`` would be simpler, but an
    nginx config parameter is limited to 4 KiB and the stream is larger.)
    """
    files = workdir / "bodies"
    files.mkdir(exist_ok=True)
    (files / "completion.json").write_bytes(completion_body())
    (files / "stream.sse").write_bytes(stream_body())
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/nginx-body;
  proxy_temp_path {workdir}/nginx-proxy;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server_tokens off;
  etag off;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /json/v1/chat/completions {{
      alias {files}/completion.json;
      default_type application/json;
      error_page 405 =200 $uri;
    }}
    location = /sse/v1/chat/completions {{
      alias {files}/stream.sse;
      default_type text/event-stream;
      add_header Cache-Control no-cache;
      error_page 405 =200 $uri;
    }}
  }}
}}
"""


def start_upstream(workdir: Path, kind: str, cpus: str | None) -> Upstream:
    """Start nginx (``kind`` "nginx" or "auto" with nginx installed) or the emulator."""
    port = free_port()
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if kind == "nginx" and not nginx:
        raise SystemExit(
            "nginx is not installed (apt-get install nginx-light), or use --upstream emulator"
        )
    if kind in ("nginx", "auto") and nginx:
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_config(workdir, port))
        version = subprocess.run(
            [nginx, "-v"], capture_output=True, text=True, check=False
        ).stderr.strip()
        with (workdir / "nginx.out").open("wb") as log:
            process = subprocess.Popen(
                [*pin(cpus), nginx, "-c", str(conf), "-p", str(workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        upstream = Upstream(
            "nginx",
            process,
            base + "/json/v1",
            base + "/sse/v1",
            UPSTREAM_MODEL,
            UPSTREAM_MODEL,
            version.removeprefix("nginx version: "),
        )
    else:
        llmrelay = str(Path(sys.executable).with_name("llmrelay"))
        with (workdir / "emulator.out").open("wb") as log:
            process = subprocess.Popen(
                [*pin(cpus), llmrelay, "mock-upstream", "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}/v1"
        upstream = Upstream(
            "emulator",
            process,
            base,
            base,
            f"bench+chunks={SSE_CHUNKS}",
            f"bench+chunks={SSE_CHUNKS}",
            "llmrelay " + metadata.version("llmrelay"),
        )
    wait_for_port(port, process, 20.0)
    return upstream


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """End one process this bench started, by its id: SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextlib.contextmanager
def running(upstream: Upstream) -> Iterator[Upstream]:
    try:
        yield upstream
    finally:
        stop(upstream.process)


# -- small process and machine helpers ------------------------------------------------------------


def pin(cpus: str | None) -> list[str]:
    """The ``taskset -c CPUS`` prefix, or nothing when not pinning (or taskset is missing)."""
    if not cpus or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpus]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process {process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout:.0f} s")


_TICK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's ``--workers`` children), from /proc."""
    pids = [pid]
    for current in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                    pids.extend(int(c) for c in children)
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants, all threads."""
    total = 0
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICK


def cpus_of(spec: str | None) -> set[int]:
    """``"0"``, ``"0,1"`` or ``"0-3"`` as a set of CPU numbers (empty for None)."""
    cpus: set[int] = set()
    for part in (spec or "").split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            cpus.update(range(int(low), int(high) + 1))
        elif part.strip():
            cpus.add(int(part))
    return cpus


def busy_seconds(cpus: set[int]) -> float:
    """CPU seconds the given cores spent busy (anything but idle and iowait), from /proc/stat.

    Minus the CPU time of the processes a bench put there, it is the load *other* processes
    (other people's work on a shared machine) put on those cores during a measurement.
    """
    total = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu" and int(name[3:]) in cpus:
                values = [int(f) for f in fields[:8]]
                total += sum(values) - values[3] - values[4]  # idle, iowait
    return total / _TICK


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) summed over ``pid`` and its descendants, in MiB."""
    total = 0
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def machine_info() -> dict[str, object]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for name in ("llmrelay", "aiohttp", "httpx", "httpx2", "uvicorn", "uvloop", "httptools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit or None,
        "loadavg": os.getloadavg(),
    }
