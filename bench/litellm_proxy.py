"""LiteLLM's proxy as the bench's point of comparison, in a virtualenv of its own.

    .venv/bin/python bench/litellm_proxy.py          # create bench/.venv-litellm (once)

``LITELLM_VERSION`` is installed into ``bench/.venv-litellm`` (git-ignored), never into the
project's environment. That release declares ``certifi>=2026.10.19``, newer than some package
mirrors carry; certifi is a CA bundle that a loopback benchmark never reads, so when the normal
install fails on it the venv is made from the wheel's own requirements (core + ``proxy`` extra)
with that one pin relaxed, and litellm itself with ``--no-deps``.

The proxy runs as the gateway does: one worker, one ``master_key``, no database, the same two
nginx locations as OpenAI-compatible deployments. Nothing it starts may leave the machine: the
model cost map is the bundled one (``LITELLM_LOCAL_MODEL_COST_MAP``), telemetry is off, and every
proxy variable points at a closed loopback port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

LITELLM_VERSION = "1.109.1"
VENV = Path(__file__).resolve().parent / ".venv-litellm"
MASTER_KEY = "sk-bench-litellm-master"
_RELAXED = {"certifi", "litellm-proxy-extras", "litellm-enterprise"}


def python() -> Path:
    return VENV / "bin" / "python"


def installed_version() -> str | None:
    if not python().exists():
        return None
    out = subprocess.run(
        [str(python()), "-c", "from importlib.metadata import version; print(version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or None


def ensure_venv(version: str = LITELLM_VERSION) -> Path:
    """The venv's python, with ``litellm[proxy]==version`` installed (installs on first use)."""
    if installed_version() == version:
        return python()
    if not python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if subprocess.run([*pip, f"litellm[proxy]=={version}"], check=False).returncode == 0:
        return python()
    print("litellm: the plain install failed; relaxing the certifi pin", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                str(python()),
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                tmp,
                f"litellm=={version}",
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("litellm-*.whl"))
        requirements = _requirements(wheel, version)
        (Path(tmp) / "req.txt").write_text("\n".join(requirements) + "\n")
        subprocess.run([*pip, "-r", str(Path(tmp) / "req.txt")], check=True)
        subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
    return python()


def _requirements(wheel: Path, version: str) -> list[str]:
    """The wheel's requirements for the core and the ``proxy`` extra, certifi unpinned."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"litellm-{version}.dist-info/METADATA").decode()
    wanted: list[str] = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        requirement = Requirement(line.removeprefix("Requires-Dist: "))
        marker = requirement.marker
        if marker is not None and not (
            marker.evaluate({"extra": ""}) or marker.evaluate({"extra": "proxy"})
        ):
            continue
        if requirement.name in _RELAXED:
            wanted.append(requirement.name)
            continue
        requirement.marker = None
        wanted.append(str(requirement))
    return wanted


def write_config(workdir: Path, models: dict[str, tuple[str, str]]) -> Path:
    """``models``: the name clients send → (upstream model, OpenAI ``base_url``)."""
    config = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{upstream}",
                    "api_base": base,
                    "api_key": "sk-bench-upstream",
                },
            }
            for name, (upstream, base) in models.items()
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
        "general_settings": {"master_key": MASTER_KEY},
    }
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def environment() -> dict[str, str]:
    """Everything off that could reach outside loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "DATABASE_URL"))}
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens, so it fails at once
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_MODE": "PRODUCTION",
            "DISABLE_ADMIN_UI": "True",
            "NO_DOCS": "True",
            "HTTP_PROXY": dead,
            "HTTPS_PROXY": dead,
            "http_proxy": dead,
            "https_proxy": dead,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "HF_HUB_OFFLINE": "1",
            "TIKTOKEN_CACHE_DIR": str(VENV / "tiktoken-cache"),
        }
    )
    return env


def command(config: Path, port: int) -> list[str]:
    litellm = VENV / "bin" / "litellm"
    return [
        str(litellm),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
        "--telemetry",
        "False",
    ]


if __name__ == "__main__":
    print(ensure_venv())
    print("litellm", installed_version())
