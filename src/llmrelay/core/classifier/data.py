"""Loading labelled prompts: the shipped routing data set or a user's own JSONL labels."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

DATA_ENV_VAR = "LLMRELAY_ROUTING_DATA"
PROMPTS_FILE = "prompts.jsonl"
SPLIT_FILE = "split.json"


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    text: str
    basket: str
    source: str


def repo_root() -> Path:
    # src/llmrelay/core/classifier/data.py -> parents[4] is the checkout root.
    return Path(__file__).resolve().parents[4]


def default_data_dir() -> Path:
    """Where the routing data set lives: ``$LLMRELAY_ROUTING_DATA``, else ``../shared/...``.

    CI clones the repository with ``shared/`` next to it, so the default is relative to the
    checkout rather than to the current directory.
    """
    override = os.environ.get(DATA_ENV_VAR)
    if override:
        return Path(override)
    return (repo_root() / ".." / "shared" / "data" / "routing").resolve()


def load_jsonl(path: Path) -> list[Example]:
    """Read ``{"text", "basket"}`` objects (``id`` and ``source`` optional), one per line."""
    examples: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            text, basket = row.get("text"), row.get("basket")
            if not isinstance(text, str) or not isinstance(basket, str) or not basket:
                raise ValueError(f"{path}:{line_no}: need string 'text' and 'basket' fields")
            examples.append(
                Example(
                    id=str(row.get("id", f"line-{line_no}")),
                    text=text,
                    basket=basket,
                    source=str(row.get("source", "")),
                )
            )
    return examples


def load_split(data_dir: Path) -> tuple[list[Example], list[Example]]:
    """Return ``(train, test)`` from ``prompts.jsonl`` and ``split.json`` in ``data_dir``."""
    examples = {example.id: example for example in load_jsonl(data_dir / PROMPTS_FILE)}
    split = json.loads((data_dir / SPLIT_FILE).read_text(encoding="utf-8"))
    train = [examples[item] for item in split["train"]]
    test = [examples[item] for item in split["test"]]
    return train, test


def split_seed(data_dir: Path) -> int | None:
    seed = json.loads((data_dir / SPLIT_FILE).read_text(encoding="utf-8")).get("seed")
    return seed if isinstance(seed, int) else None


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
