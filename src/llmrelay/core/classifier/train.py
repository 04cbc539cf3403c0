"""Train the basket classifier (pure Python, deterministic).

One command retrains the shipped weights from the routing data set's ``train`` split::

    python -m llmrelay.core.classifier.train [--data DIR] [--out DIR]

or from your own labels, a JSONL file of ``{"text": ..., "basket": ...}`` objects::

    python -m llmrelay.core.classifier.train --labels my_labels.jsonl --out my_model/

Steps: measure the rules on the training labels and keep the precise ones; k-fold
cross-validation on the training data, repeated with a few fold assignments, gives
out-of-fold predictions, from which the probability temperature and the chat and
reasoning offsets are fitted; the shipped model is the average of all the fold models,
written out with a manifest. The test split is never used for any of this; it is only
scored at the end, for the manifest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import math
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from llmrelay.core.classifier.data import (
    DATA_ENV_VAR,
    PROMPTS_FILE,
    Example,
    default_data_dir,
    load_jsonl,
    load_split,
    sha256_of,
    split_seed,
)
from llmrelay.core.classifier.features import FeatureVector, extract
from llmrelay.core.classifier.metrics import CHAT, REASONING, report
from llmrelay.core.classifier.model import FORMAT, MANIFEST_FILE, WEIGHTS_FILE, LinearModel, softmax
from llmrelay.core.classifier.rules import RULES, first_match
from llmrelay.core.classifier.window import clip

PACKAGE_DIR = Path(__file__).resolve().parent
# Pseudo-hits of prior belief in a rule's precision (see ``choose_rules``).
_RULE_PRIOR_WEIGHT = 10.0


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Hyperparameters; the defaults were chosen by 5-fold cross-validation on ``train``."""

    max_chars: int = 2000
    epochs: int = 20
    learning_rate: float = 0.3
    l2: float = 1e-4
    # Features seen in fewer training prompts than this are dropped: one-off tokens are
    # mostly template noise and only add weights to ship.
    min_df: int = 2
    # Extra weight for the hand-written ``hw-*`` items, the least templated in the data.
    handwritten_weight: float = 2.0
    # Sample weight ~ (source size) ** -source_balance, so that big templated sources
    # (HumanEval, GSM8K) do not dominate the vocabulary.
    source_balance: float = 0.5
    # Largest acceptable out-of-fold under-routing when choosing the offsets. The
    # target is 0.02 on unseen data; 0.015 leaves a margin for the generalisation gap
    # (nested cross-validation on ``train`` runs about 0.002-0.004 above this cap).
    max_under_routing: float = 0.015
    # A rule is kept if its training precision is at least this.
    min_rule_precision: float = 0.98
    folds: int = 5
    # Cross-validation is run this many times with different fold assignments (seeds
    # ``seed``, ``seed + 1``, ...): the shipped model averages all ``folds * repeats`` fold
    # models, and calibration uses each example's out-of-fold logits averaged over repeats.
    repeats: int = 5
    seed: int = 20250601


# -- preparation -----------------------------------------------------------------------


def cv_group(example_id: str) -> str:
    """Items that must share a fold: a HumanEval problem and its HumanEval-X translations."""
    match = re.fullmatch(r"humaneval(?:x-[a-z]+)?-0*(\d+)", example_id)
    return f"humaneval-{match.group(1)}" if match else example_id


def sample_weights(examples: Sequence[Example], config: TrainConfig) -> list[float]:
    """Per-example loss weights, normalised to mean 1."""
    sizes = Counter(example.source for example in examples)
    raw = []
    for example in examples:
        weight = float(sizes[example.source]) ** -config.source_balance
        if example.id.startswith("hw-"):
            weight *= config.handwritten_weight
        raw.append(weight)
    mean = sum(raw) / len(raw)
    return [weight / mean for weight in raw]


def vectorize(examples: Sequence[Example], config: TrainConfig) -> list[FeatureVector]:
    return [extract(clip(example.text, config.max_chars)) for example in examples]


def rule_decisions(
    examples: Sequence[Example], rules: dict[str, float], config: TrainConfig
) -> list[str | None]:
    """The basket each example gets from a rule, or ``None`` where no rule fires."""
    enabled = [rule for rule in RULES if rule.name in rules]
    decided: list[str | None] = []
    for example in examples:
        match = first_match(clip(example.text, config.max_chars), enabled)
        decided.append(match.basket if match is not None else None)
    return decided


def choose_rules(examples: Sequence[Example], config: TrainConfig) -> dict[str, float]:
    """Rules whose training precision is high enough, with a smoothed precision as confidence.

    The confidence is the precision shrunk towards ``min_rule_precision`` by
    ``_RULE_PRIOR_WEIGHT`` pseudo-hits, so that a rule seen firing once is not reported
    as certain, one seen 200 times without a miss reports about 0.999, and one that never
    fires on these labels (it is kept: it was written for this label scheme) reports
    ``min_rule_precision``.
    """
    labels = {example.basket for example in examples}
    windows = [clip(example.text, config.max_chars) for example in examples]
    prior = config.min_rule_precision * _RULE_PRIOR_WEIGHT
    chosen: dict[str, float] = {}
    for rule in RULES:
        if rule.basket not in labels:
            continue
        hits = [
            example.basket
            for example, window in zip(examples, windows, strict=True)
            if rule.matches(window)
        ]
        correct = hits.count(rule.basket)
        if not hits or correct / len(hits) >= config.min_rule_precision:
            chosen[rule.name] = (correct + prior) / (len(hits) + _RULE_PRIOR_WEIGHT)
    return chosen


# -- fitting -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fitted:
    bias: list[float]
    table: dict[int, tuple[float, ...]]


def fit(
    vectors: Sequence[FeatureVector],
    labels: Sequence[int],
    weights: Sequence[float],
    n_classes: int,
    config: TrainConfig,
) -> Fitted:
    """Multinomial logistic regression by AdaGrad SGD, L2 applied to the active weights.

    Deterministic: the visiting order comes from ``random.Random(seed + epoch)``, feature
    ids are visited in sorted order and all arithmetic is plain floats in a fixed order.
    """
    document_frequency: Counter[int] = Counter()
    for vector in vectors:
        document_frequency.update(vector.lexical)
        document_frequency.update(vector.cues)
    vocabulary = sorted(i for i, count in document_frequency.items() if count >= config.min_df)
    index = {feature: position for position, feature in enumerate(vocabulary)}
    # Each example as (dense index, value) pairs: lexical values carry the 1/sqrt(n) scale
    # of LinearModel.logits, cues are 1.
    examples: list[list[tuple[int, float]]] = []
    for vector in vectors:
        scale = 1.0 / math.sqrt(len(vector.lexical)) if vector.lexical else 0.0
        pairs = [(index[i], scale) for i in sorted(vector.lexical) if i in index]
        pairs += [(index[i], 1.0) for i in sorted(vector.cues) if i in index]
        examples.append(pairs)
    size = len(vocabulary)
    rows = [[0.0] * size for _ in range(n_classes)]
    squares = [[0.0] * size for _ in range(n_classes)]
    bias = [0.0] * n_classes
    bias_squares = [0.0] * n_classes
    rate, l2 = config.learning_rate, config.l2
    order = list(range(len(examples)))
    for epoch in range(config.epochs):
        random.Random(config.seed + epoch).shuffle(order)
        for position in order:
            pairs, label, weight = examples[position], labels[position], weights[position]
            logits = [bias[c] + sum(rows[c][i] * v for i, v in pairs) for c in range(n_classes)]
            probabilities = softmax(logits)
            for c in range(n_classes):
                gradient = (probabilities[c] - (1.0 if c == label else 0.0)) * weight
                bias_squares[c] += gradient * gradient
                bias[c] -= rate * gradient / (math.sqrt(bias_squares[c]) + 1e-8)
                row, square = rows[c], squares[c]
                for i, v in pairs:
                    step = gradient * v + l2 * row[i]
                    accumulated = square[i] + step * step
                    square[i] = accumulated
                    row[i] -= rate * step / (math.sqrt(accumulated) + 1e-8)
    table = {
        feature: tuple(rows[c][position] for c in range(n_classes))
        for position, feature in enumerate(vocabulary)
    }
    return Fitted(bias, table)


def _model(
    classes: Sequence[str],
    fitted: Fitted,
    config: TrainConfig,
    temperature: float = 1.0,
    offsets: Sequence[float] = (),
    rules: dict[str, float] | None = None,
) -> LinearModel:
    return LinearModel(
        classes=tuple(classes),
        max_chars=config.max_chars,
        bias=tuple(fitted.bias),
        table=fitted.table,
        temperature=temperature,
        offsets=tuple(offsets),
        rules=rules or {},
    )


# -- cross-validation and calibration ---------------------------------------------------


def folds_for(examples: Sequence[Example], config: TrainConfig) -> list[int]:
    """Fold of each example: stratified by basket, grouped, ordered by a seeded SHA-256."""
    by_basket: dict[str, set[str]] = {}
    for example in examples:
        by_basket.setdefault(example.basket, set()).add(cv_group(example.id))
    fold_of_group: dict[str, int] = {}
    offset = 0
    for basket in sorted(by_basket):
        groups = sorted(
            by_basket[basket],
            key=lambda group: hashlib.sha256(f"{config.seed}:{group}".encode()).hexdigest(),
        )
        for position, group in enumerate(groups):
            # Continue the round-robin across baskets so that small baskets do not all
            # start in fold 0.
            fold_of_group.setdefault(group, (offset + position) % config.folds)
        offset += len(groups)
    return [fold_of_group[cv_group(example.id)] for example in examples]


@dataclass(frozen=True, slots=True)
class OutOfFold:
    logits: list[list[float]]
    rule_baskets: list[str | None]
    # The k fold models whose predictions these are.
    fold_models: list[Fitted]


def out_of_fold(
    examples: Sequence[Example],
    vectors: Sequence[FeatureVector],
    classes: Sequence[str],
    rules: dict[str, float],
    config: TrainConfig,
) -> OutOfFold:
    """Logits of every example from a model fitted on the other folds."""
    folds = folds_for(examples, config)
    weights = sample_weights(examples, config)
    labels = [classes.index(example.basket) for example in examples]
    logits: list[list[float]] = [[] for _ in examples]
    fold_models: list[Fitted] = []
    for fold in range(config.folds):
        inside = [i for i in range(len(examples)) if folds[i] != fold]
        fitted = fit(
            [vectors[i] for i in inside],
            [labels[i] for i in inside],
            [weights[i] for i in inside],
            len(classes),
            config,
        )
        fold_models.append(fitted)
        model = _model(classes, fitted, config)
        for i in range(len(examples)):
            if folds[i] == fold:
                logits[i] = model.logits(vectors[i])
    return OutOfFold(logits, rule_decisions(examples, rules, config), fold_models)


def average(models: Sequence[Fitted]) -> Fitted:
    """The mean of linear models: itself a linear model (a feature missing from one counts 0)."""
    n_classes = len(models[0].bias)
    zero = (0.0,) * n_classes
    features = sorted(set().union(*(model.table for model in models)))
    table = {
        feature: tuple(
            math.fsum(model.table.get(feature, zero)[c] for model in models) / len(models)
            for c in range(n_classes)
        )
        for feature in features
    }
    bias = [math.fsum(model.bias[c] for model in models) / len(models) for c in range(n_classes)]
    return Fitted(bias, table)


def fit_temperature(logits: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """Temperature minimising the negative log-likelihood (grid search, then refine)."""

    def nll(temperature: float) -> float:
        total = 0.0
        for row, label in zip(logits, labels, strict=True):
            probabilities = softmax([value / temperature for value in row])
            total -= math.log(max(probabilities[label], 1e-12))
        return total

    if not logits:
        return 1.0
    best = min((0.25 * 1.1**k for k in range(40)), key=nll)
    for step in (1.03, 1.01):
        best = min((best / step, best, best * step), key=nll)
    return best


def decisions(
    oof: OutOfFold, classes: Sequence[str], temperature: float, offsets: Sequence[float]
) -> list[str]:
    """Predicted baskets, as ``BasketClassifier.classify`` would make them."""
    predicted = []
    for row, rule_basket in zip(oof.logits, oof.rule_baskets, strict=True):
        if rule_basket is not None:
            predicted.append(rule_basket)
            continue
        # Same argmax as LinearModel.decide: log-softmax differs from logit / T by a
        # constant shared by all classes.
        scores = [value / temperature + offset for value, offset in zip(row, offsets, strict=True)]
        predicted.append(classes[max(range(len(classes)), key=scores.__getitem__)])
    return predicted


def choose_offsets(
    oof: OutOfFold,
    truth: Sequence[str],
    classes: Sequence[str],
    temperature: float,
    config: TrainConfig,
) -> list[float]:
    """Chat and reasoning offsets: the best out-of-fold macro-F1 meeting the under-routing cap.

    The chat offset (0 to -3) trades chat recall for less under-routing; the reasoning
    offset (-0.5 to +0.5) then moves the chat/reasoning boundary apart from the chat/code
    one, so that each gets the shift it needs. If no pair meets the cap, the one with the
    least under-routing wins. Code stays at 0 (only differences between offsets matter).
    For label sets without ``chat`` all offsets stay 0; without ``reasoning`` only the chat
    offset is searched.
    """
    zero = [0.0] * len(classes)
    if CHAT not in classes:
        return zero
    chat = classes.index(CHAT)
    reasoning = classes.index(REASONING) if REASONING in classes else None
    reasoning_steps = range(-5, 6) if reasoning is not None else range(1)
    best_key: tuple[bool, float, int, int] | None = None
    best = zero
    for step in range(31):
        for reasoning_step in reasoning_steps:
            offsets = list(zero)
            offsets[chat] = -0.1 * step
            if reasoning is not None:
                offsets[reasoning] = 0.1 * reasoning_step
            result = report(truth, decisions(oof, classes, temperature, offsets), classes)
            meets = result.under_routing <= config.max_under_routing
            # Meeting the cap first, then macro-F1 (or, failing the cap, low
            # under-routing), then the smallest shifts.
            key = (
                meets,
                result.macro_f1 if meets else -result.under_routing,
                -step,
                -abs(reasoning_step),
            )
            if best_key is None or key > best_key:
                best_key, best = key, offsets
    return best


@dataclass(frozen=True, slots=True)
class CrossValidation:
    temperature: float
    offsets: list[float]
    metrics: dict[str, object]
    handwritten_accuracy: float | None
    committee: Fitted


def repeated_out_of_fold(
    examples: Sequence[Example],
    vectors: Sequence[FeatureVector],
    classes: Sequence[str],
    rules: dict[str, float],
    config: TrainConfig,
) -> OutOfFold:
    """``out_of_fold`` run ``config.repeats`` times with different folds, logits averaged.

    Each example's averaged logits come from models that never saw it, so they stand in
    for the committee of all the fold models, which is what gets shipped.
    """
    runs = [
        out_of_fold(examples, vectors, classes, rules, replace(config, seed=config.seed + r))
        for r in range(max(config.repeats, 1))
    ]
    logits = [
        [math.fsum(run.logits[i][c] for run in runs) / len(runs) for c in range(len(classes))]
        for i in range(len(examples))
    ]
    return OutOfFold(
        logits, runs[0].rule_baskets, [model for run in runs for model in run.fold_models]
    )


def cross_validate(
    examples: Sequence[Example],
    vectors: Sequence[FeatureVector],
    classes: Sequence[str],
    rules: dict[str, float],
    config: TrainConfig,
) -> CrossValidation:
    oof = repeated_out_of_fold(examples, vectors, classes, rules, config)
    truth = [example.basket for example in examples]
    # Calibrate on the prompts the model actually decides (no rule fired).
    decided = [i for i, basket in enumerate(oof.rule_baskets) if basket is None]
    temperature = fit_temperature(
        [oof.logits[i] for i in decided], [classes.index(truth[i]) for i in decided]
    )
    offsets = choose_offsets(oof, truth, classes, temperature, config)
    predicted = decisions(oof, classes, temperature, offsets)
    handwritten = [i for i, example in enumerate(examples) if example.id.startswith("hw-")]
    return CrossValidation(
        temperature=temperature,
        offsets=offsets,
        metrics=report(truth, predicted, classes).as_dict(),
        handwritten_accuracy=(
            sum(1 for i in handwritten if predicted[i] == truth[i]) / len(handwritten)
            if handwritten
            else None
        ),
        committee=average(oof.fold_models),
    )


# -- end to end ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainResult:
    model: LinearModel
    manifest: dict[str, object]


def train(
    examples: Sequence[Example],
    config: TrainConfig,
    run_cv: bool = True,
    manifest_extra: dict[str, object] | None = None,
) -> TrainResult:
    """Fit a model on ``examples``.

    With ``run_cv`` the model is the average of the ``folds * repeats`` cross-validation
    fold models, and the temperature and offsets are those fitted on their out-of-fold
    predictions (averaged over the repeats). Shipping
    the fold models' average rather than a refit on all the data keeps that calibration
    valid: a refit sees more data for as many epochs and produces larger logits, which
    weakens the offsets (nested cross-validation on ``train`` also scored the average a
    little higher). Without cross-validation (or with too few examples for it) the model is
    fitted on all examples, with temperature 1 and no offset.
    """
    classes = sorted({example.basket for example in examples})
    if len(classes) < 2:
        raise ValueError("need labelled examples of at least two baskets")
    vectors = vectorize(examples, config)
    rules = choose_rules(examples, config)
    cv = None
    if run_cv and len(examples) >= 2 * config.folds:
        cv = cross_validate(examples, vectors, classes, rules, config)
    fitted = (
        cv.committee
        if cv is not None
        else fit(
            vectors,
            [classes.index(example.basket) for example in examples],
            sample_weights(examples, config),
            len(classes),
            config,
        )
    )
    model = _model(
        classes,
        fitted,
        config,
        temperature=cv.temperature if cv else 1.0,
        offsets=cv.offsets if cv else [0.0] * len(classes),
        rules=rules,
    )
    # Round-trip through the file format so that the returned model (and the figures the
    # manifest reports for it) is exactly the one that loads from the written file.
    model = LinearModel.from_json(model.to_json())
    manifest: dict[str, object] = {
        "format": FORMAT,
        "trained_at": _today(),
        "examples": len(examples),
        "examples_per_basket": dict(sorted(Counter(e.basket for e in examples).items())),
        "features": len(fitted.table),
        "hyperparameters": asdict(config),
        "rules": dict(model.rules),
        "temperature": model.temperature,
        "offsets": dict(zip(classes, model.offsets, strict=True)),
        "cross_validation": (
            {**cv.metrics, "folds": config.folds, "handwritten_accuracy": cv.handwritten_accuracy}
            if cv
            else None
        ),
    }
    manifest.update(manifest_extra or {})
    return TrainResult(model, manifest)


def _today() -> str:
    # SOURCE_DATE_EPOCH makes the manifest reproducible byte for byte when wanted.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        dt.datetime.fromtimestamp(int(epoch), tz=dt.UTC) if epoch else dt.datetime.now(tz=dt.UTC)
    )
    return moment.date().isoformat()


def write(result: TrainResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    result.model.save(out_dir / WEIGHTS_FILE)
    manifest = {**result.manifest, "weights_sha256": sha256_of(out_dir / WEIGHTS_FILE)}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")


# -- hyperparameter search ---------------------------------------------------------------

SEARCH_GRID: Mapping[str, tuple[object, ...]] = MappingProxyType(
    {
        "learning_rate": (0.1, 0.3, 1.0),
        "l2": (0.0, 1e-4, 1e-3),
        "epochs": (6, 12, 20),
        "min_df": (1, 2, 3),
        "source_balance": (0.0, 0.5, 1.0),
        "handwritten_weight": (1.0, 2.0, 4.0),
        "max_chars": (1000, 2000, 4000),
    }
)


def search(examples: Sequence[Example], base: TrainConfig, keys: Sequence[str]) -> TrainConfig:
    """Coordinate-wise search over ``SEARCH_GRID`` by cross-validated macro-F1 on ``train``.

    One knob at a time, twice round, rather than the full grid, which would take hours in
    pure Python. Ties go to the hand-written accuracy, then to the earlier candidate.
    """
    classes = sorted({example.basket for example in examples})
    rules = choose_rules(examples, base)
    vectors_by_chars: dict[int, list[FeatureVector]] = {}
    scores: dict[TrainConfig, tuple[float, float]] = {}

    def score(config: TrainConfig) -> tuple[float, float]:
        if config in scores:
            return scores[config]
        if config.max_chars not in vectors_by_chars:
            vectors_by_chars[config.max_chars] = vectorize(examples, config)
        cv = cross_validate(examples, vectors_by_chars[config.max_chars], classes, rules, config)
        macro_f1 = cv.metrics["macro_f1"]
        assert isinstance(macro_f1, float)
        handwritten = cv.handwritten_accuracy or 0.0
        print(f"  {_describe(config, keys)}  macro_f1={macro_f1:.4f} hw={handwritten:.3f}")
        scores[config] = (macro_f1, handwritten)
        return scores[config]

    best, best_score = base, score(base)
    for _, key in itertools.product(range(2), keys):
        for value in SEARCH_GRID[key]:
            if getattr(best, key) == value:
                continue
            changes: dict[str, Any] = {key: value}
            candidate = replace(best, **changes)
            candidate_score = score(candidate)
            if candidate_score > best_score:
                best, best_score = candidate, candidate_score
    print(f"best: {_describe(best, keys)}  macro_f1={best_score[0]:.4f} hw={best_score[1]:.3f}")
    return best


def _describe(config: TrainConfig, keys: Sequence[str]) -> str:
    return " ".join(f"{key}={getattr(config, key)}" for key in keys)


# -- command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmrelay.core.classifier.train",
        description="Train the request-basket classifier and write weights.json + manifest.json.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        type=Path,
        default=None,
        help="routing data set directory (prompts.jsonl + split.json); trains on 'train' "
        f"(default: ${DATA_ENV_VAR} or ../shared/data/routing beside the checkout)",
    )
    source.add_argument(
        "--labels",
        type=Path,
        default=None,
        help='your own JSONL of {"text", "basket"} objects; every line is used for training',
    )
    parser.add_argument(
        "--out", type=Path, default=PACKAGE_DIR, help="output directory (default: the package)"
    )
    parser.add_argument(
        "--folds", type=int, default=TrainConfig().folds, help="cross-validation folds (>= 2)"
    )
    parser.add_argument(
        "--max-under-routing",
        type=float,
        default=TrainConfig().max_under_routing,
        help="cap on cross-validated under-routing (code/reasoning sent to chat) used to pick "
        "the chat and reasoning offsets",
    )
    parser.add_argument("--no-cv", action="store_true", help="skip cross-validation")
    parser.add_argument(
        "--search",
        nargs="*",
        metavar="KNOB",
        default=None,
        help=f"first search hyperparameters by cross-validation: {', '.join(SEARCH_GRID)}",
    )
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    unknown = set(args.search or ()) - set(SEARCH_GRID)
    if unknown:
        parser.error(f"unknown --search knobs: {', '.join(sorted(unknown))}")
    config = replace(TrainConfig(), folds=args.folds, max_under_routing=args.max_under_routing)
    extra: dict[str, object] = {}
    test: list[Example] = []
    if args.labels is not None:
        examples = load_jsonl(args.labels)
        extra["data"] = {"labels_file": args.labels.name, "sha256": sha256_of(args.labels)}
    else:
        data_dir = args.data or default_data_dir()
        examples, test = load_split(data_dir)
        extra["data"] = {
            "prompts_sha256": sha256_of(data_dir / PROMPTS_FILE),
            "split": "train",
            "split_seed": split_seed(data_dir),
        }
    if args.search is not None:
        config = search(examples, config, args.search or list(SEARCH_GRID))
    result = train(examples, config, run_cv=not args.no_cv, manifest_extra=extra)
    if test:
        # Scored for the record only: nothing above looked at the test split.
        from llmrelay.core.classifier.evaluate import evaluate_model

        result.manifest["test"] = evaluate_model(result.model, test, timing_repeats=0).summary()
    write(result, args.out)
    print(json.dumps(result.manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
