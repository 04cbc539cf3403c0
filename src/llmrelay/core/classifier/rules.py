"""High-precision rules that decide a basket before the linear model is consulted.

Each rule looks for something that only appears when the work is about code (a fenced
block tagged with a programming language, a function definition at the start of a line,
an upper-case ``SELECT ... FROM``, a Python traceback). The label rules of the data set say
"code wins over reasoning and chat", so when one of these fires the model has nothing to
add, and the rule protects templated-looking inputs the model has never seen.

Training measures every rule on the training labels and keeps only the ones that are
(almost) never wrong there; the measured precision becomes the rule's confidence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rule:
    """``pattern`` is only tried when one of the ``guards`` substrings occurs.

    Substring tests are far cheaper than a regex scan and almost no prompt contains any
    guard, so the rules cost next to nothing on ordinary chat.
    """

    name: str
    basket: str
    guards: tuple[str, ...]
    pattern: re.Pattern[str]

    def matches(self, text: str) -> bool:
        if not any(guard in text for guard in self.guards):
            return False
        return self.pattern.search(text) is not None


_FENCE_LANGS = (
    "python|py|python3|javascript|js|jsx|typescript|ts|tsx|java|kotlin|scala|c|cpp|c\\+\\+|"
    "csharp|cs|go|golang|rust|rs|ruby|rb|php|swift|sql|postgresql|mysql|bash|sh|shell|zsh|"
    "powershell|html|css|scss|haskell|lua|perl|r|matlab|dockerfile|makefile"
)

RULES: tuple[Rule, ...] = (
    Rule(
        "fenced_code", "code", ("```",), re.compile(rf"```(?:{_FENCE_LANGS})\s*\n", re.IGNORECASE)
    ),
    Rule(
        "definition_line",
        "code",
        ("def ", "class ", "function ", "func ", "fn ", "public ", "private ", "protected "),
        re.compile(
            r"^\s*(?:def|class)\s+[A-Za-z_]\w*\s*[(:]"
            r"|^\s*(?:async\s+)?function\s+[A-Za-z_$][\w$]*\s*\("
            r"|^\s*(?:func|fn)\s+[A-Za-z_]\w*\s*[(<]"
            r"|^\s*(?:public|private|protected)\s+(?:static\s+)?[\w<>\[\]]+\s+\w+\s*\(",
            re.MULTILINE,
        ),
    ),
    Rule(
        "import_line",
        "code",
        ("import", "#include", "package main", "using namespace"),
        re.compile(
            r"^\s*(?:import\s+[\w.]+\s*$|from\s+[\w.]+\s+import\s+\w|#include\s*[<\"]"
            r"|package\s+main\b|using\s+namespace\s+\w)",
            re.MULTILINE,
        ),
    ),
    Rule(
        "sql_statement",
        "code",
        ("SELECT", "CREATE TABLE", "INSERT INTO"),
        re.compile(r"\bSELECT\b[^;]{1,300}?\bFROM\b|\bCREATE\s+TABLE\b|\bINSERT\s+INTO\b"),
    ),
    Rule("assert_line", "code", ("assert",), re.compile(r"^\s*assert\s+\w+\s*\(", re.MULTILINE)),
    Rule("doctest", "code", (">>> ",), re.compile(r"^\s*>>> \S", re.MULTILINE)),
    Rule(
        "traceback",
        "code",
        ("Traceback (most recent call last)", "Error: ", "Exception: "),
        re.compile(r"Traceback \(most recent call last\)|\b[A-Z][a-z]\w*(?:Error|Exception): "),
    ),
)


def first_match(text: str, enabled: Iterable[Rule]) -> Rule | None:
    """Return the first enabled rule whose pattern occurs in ``text``."""
    for rule in enabled:
        if rule.matches(text):
            return rule
    return None
