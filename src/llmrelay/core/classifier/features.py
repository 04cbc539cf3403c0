"""Turn a prompt into sparse integer features for the linear basket model.

Two kinds of feature come out:

* lexical: word and symbol unigrams and bigrams (with begin/end markers, so the opening
  verb - "write", "solve", "summarise" - gets its own feature), plus the first and last
  dozen tokens again in their own id ranges;
* cues: signals that single words miss: how many words of each hand-written vocabulary
  occur (programming languages, developer tools, code concepts, maths, puzzles, writing
  tasks, humanities, science; see ``lexicon.py``), a few cheap shape tests (code fence,
  inline code, ``snake_case``, ``==``-style operators, ``^``/``%``/``$`` signs) and
  bucketed counts of digits, lines and tokens. Vocabulary cues carry what is learnt about
  one term over to the others, which matters for the hand-written hard cases.

Ids are built from ``zlib.crc32`` because Python's ``hash()`` is salted per process
(``PYTHONHASHSEED``): shipped weights would silently stop matching their features. They
are not folded into a fixed number of buckets: the model keeps a dictionary of the ids
seen in training, so there are no bucket collisions and no mask to apply per request.

Id layout (disjoint ranges, so different kinds do not collide):

* unigram ``u = crc32(b"\x00" + token)``, in ``[0, 2**32)``;
* bigram ``(u1 << 32) | u2``, in ``[2**32, 2**64)`` (barring a token whose ``u`` is 0);
* the same unigram among the first / last dozen tokens: ``u | 1 << 64`` / ``u | 2 << 64``;
* cue ``crc32(b"\x01cue:" + name) | 3 << 64``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from operator import lshift, or_
from types import MappingProxyType
from zlib import crc32

from llmrelay.core.classifier.lexicon import CODE_LEXICONS, LEXICON_OF, LEXICONS

# Digits are folded to "0" before tokenising so that numbers become shape tokens
# ("0", "00", "0.00"): the model learns "a two-digit number", not "the number 42".
_DIGIT_RE = re.compile(r"\d")

# Latin words (accents kept, but not the multiplication and division signs U+00D7 and
# U+00F7, which sit in the same block), numbers, then any other single character. CJK
# text therefore becomes a run of one-character tokens whose bigrams act as character
# bigrams.
_LATIN = "a-z_\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_TOKEN_RE = re.compile(rf"[{_LATIN}][{_LATIN}0-9]*|0+(?:[.,]0+)*|\S")

_BOS = "\x02"
_EOS = "\x03"
# Joins the tokens for a single encode() and is then split on; it is also hashed in front
# of every token. Removed from the text first so that it cannot appear inside a token.
_SEP = "\x00"
_SEP_BYTES = _SEP.encode()
_SEP_CRC = crc32(_SEP_BYTES)
_HEAD = 1 << 64
_TAIL = 2 << 64
_CUE = 3 << 64
# How many opening and closing tokens get their own features.
_ENDS = 12


@dataclass(frozen=True, slots=True)
class Cue:
    """A shape signal: fires when a guard substring occurs and then the pattern matches.

    The guards are plain substring tests, much cheaper than a regex scan; most prompts
    contain none of them, so most patterns never run. ``pattern=None`` means the guard
    alone decides.
    """

    name: str
    guards: tuple[str, ...]
    pattern: re.Pattern[str] | None = None

    def fires(self, text: str) -> bool:
        if not any(map(text.__contains__, self.guards)):
            return False
        return self.pattern is None or self.pattern.search(text) is not None


# Cues run on the original (not lower-cased) text. Cross-validation on the training split
# found that regex shape cues (camelCase, calls, arithmetic, indentation, ...) add nothing
# that the word bigrams and the rules do not already give, so only cheap, guard-first
# ones stay.
CUES: tuple[Cue, ...] = (
    Cue("fence", ("```",)),
    Cue("inline_code", ("`",), re.compile(r"`[^`\n]+`")),
    Cue("snake_case", ("_",), re.compile(r"[a-z0-9]_[a-z]")),
    Cue(
        "code_operator",
        ("=", "&&", "||", "->", "::", "++"),
        re.compile(r"[=!<>+-]=|&&|\|\||->|=>|::|\+\+"),
    ),
    Cue("line_end_brace", (";", "{", "}"), re.compile(r"[;{}][ \t]*$", re.MULTILINE)),
    Cue("error_name", ("Error", "Exception", "Traceback", "segfault")),
    Cue("power", ("^", "²", "³", "√", "∫", "∑", "π")),
    Cue("money", ("$",), re.compile(r"\$ ?\d")),
    Cue("percent", ("%",)),
    Cue(
        "latex_math",
        ("$", "\\"),
        re.compile(r"\$[^$\n]{1,80}\$|\\(?:frac|times|sqrt|cdot)\b"),
    ),
)

_COUNT_BUCKETS = ("0", "1", "2-3", "4-8", "9+")


def _bucket(count: int) -> int:
    """Index into ``_COUNT_BUCKETS``: "none / one / a few / several / many"."""
    if count <= 1:
        return max(count, 0)
    if count <= 3:
        return 2
    return 3 if count <= 8 else 4


def cue_id(name: str) -> int:
    return crc32(b"\x01cue:" + name.encode()) | _CUE


def _count_ids(prefix: str) -> tuple[int, ...]:
    return tuple(cue_id(f"{prefix}:{bucket}") for bucket in _COUNT_BUCKETS)


# Every cue id is computed once at import: a fired cue then costs a tuple index.
_CUE_IDS: tuple[tuple[Cue, int], ...] = tuple((cue, cue_id(cue.name)) for cue in CUES)
_LEXICON_IDS: tuple[tuple[int, ...], ...] = tuple(
    tuple(cue_id(f"lexicon:{name}:{hits}") for hits in range(4)) for name, _ in LEXICONS
)
_CODE_LEXICON_POSITIONS = tuple(
    position for position, (name, _) in enumerate(LEXICONS) if name in CODE_LEXICONS
)
_CODE_TERM_IDS = _count_ids("lexicon:code_terms")
_DIGIT_IDS = _count_ids("digits")
_LINE_IDS = _count_ids("lines")
_TOKEN_IDS = _count_ids("tokens")


def cue_names() -> list[str]:
    """Names of all cue features, for inspecting a trained model."""
    names = [cue.name for cue in CUES]
    names += [f"lexicon:{name}:{hits}" for name, _ in LEXICONS for hits in range(1, 4)]
    for prefix in ("lexicon:code_terms", "digits", "lines", "tokens"):
        names += [f"{prefix}:{bucket}" for bucket in _COUNT_BUCKETS]
    return names


CUE_NAMES: Mapping[int, str] = MappingProxyType({cue_id(name): name for name in cue_names()})


def _cues(text: str, folded: str, tokens: list[str]) -> list[int]:
    fired = [value for cue, value in _CUE_IDS if cue.fires(text)]
    # One lookup per distinct word; the lexicons are disjoint.
    found = [position for position in map(LEXICON_OF.get, set(tokens)) if position is not None]
    hits = [found.count(position) for position in range(len(LEXICONS))]
    # Only vocabularies that occur: "no writing words" as a feature of its own learnt a
    # large, brittle weight that pushed plain questions away from chat.
    fired += [ids[min(count, 3)] for ids, count in zip(_LEXICON_IDS, hits, strict=True) if count]
    fired.append(_CODE_TERM_IDS[_bucket(sum(hits[p] for p in _CODE_LEXICON_POSITIONS))])
    fired.append(_DIGIT_IDS[_bucket(folded.count("0"))])
    fired.append(_LINE_IDS[_bucket(text.count("\n"))])
    fired.append(_TOKEN_IDS[_bucket(len(tokens) // 8)])
    return fired


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """Feature ids of one text: lexical ids (scaled by length) and cue ids (weight 1)."""

    lexical: tuple[int, ...]
    cues: tuple[int, ...]


def extract(text: str) -> FeatureVector:
    """Feature ids of ``text``, each kind deduplicated.

    Lexical features are unigrams and bigrams over the whole text plus, in their own
    ranges, the first and last dozen tokens: the instruction and the final question say
    more about the work than the material pasted between them.

    Binary presence, not counts: a prompt that pastes a long function should not drown
    its one-line instruction. Everything here is C-level ``map``/``set`` work because it
    runs on every request.
    """
    folded = _DIGIT_RE.sub("0", text.lower())
    if _SEP in folded:
        folded = folded.replace(_SEP, "")
    tokens = _TOKEN_RE.findall(folded)
    encoded = _SEP.join((_BOS, *tokens, _EOS)).encode().split(_SEP_BYTES)
    count = len(encoded)
    unigrams = list(map(crc32, encoded, repeat(_SEP_CRC, count)))
    lexical = set(unigrams)
    lexical.update(map(or_, map(lshift, unigrams, repeat(32, count)), unigrams[1:]))
    lexical.update(map(or_, unigrams[1 : _ENDS + 1], repeat(_HEAD, _ENDS)))
    lexical.update(map(or_, unigrams[-_ENDS - 1 : -1], repeat(_TAIL, _ENDS)))
    # Sets of ints iterate in an order fixed by the values and insertion sequence (int
    # hashing is not salted), so float sums over these ids are reproducible anywhere.
    return FeatureVector(lexical=tuple(lexical), cues=tuple(set(_cues(text, folded, tokens))))
