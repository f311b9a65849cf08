"""Seeded arithmetic word problems in the GSM8K format, with exact step labels.

The built-in default dataset: small enough for a tiny model trained for minutes on
a CPU to learn partly. Each solution step is one computation written as
"Ann has 5 + 3 = 8 apples." and the final line is "#### N".

Three template families (the `subject` of a Problem; `level` is its step count):
  chain    one person, a sequence of events (+ buys, - gives away, * times as many,
           / splits into equal piles); "How many ... now?"
  compare  people defined relative to the previous one (more / fewer / times as
           many); the last one's count or everyone's total
  price    items bought at a unit price; the total spent or the change from a payment

Guarantees: every number in a step is either given in the question or the result
of an earlier step, every intermediate value is a non-negative integer distinct from
all givens and from every other intermediate value (so a value names its origin),
and train/test are decided by a hash of the question text (`split_of`), so the
splits never overlap whatever the seed or the knobs.

`jaxstep.data.step_checks.label_steps(problem, steps)` labels arbitrary solution steps
exactly, and `jaxstep.data.step_checks.corrupt(problem, key)` makes wrong solutions
(arithmetic slip, wrong operand, skipped step, repeated step) for reward models.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from jaxstep.data.problem import Problem

# A small vocabulary on purpose: a tiny tokenizer gives each word one token.
NAMES = ("Ann", "Ben", "Dan", "Eve", "Sam", "Tom")
ITEMS = ("apples", "pens", "cards", "books", "eggs", "toys")
THINGS = (("pen", "pens"), ("book", "books"), ("card", "cards"), ("toy", "toys"))
TEMPLATES = ("chain", "compare", "price")
TEST_PERCENT = 20  # share of the problem space (by question hash) that is test; fixed on purpose
DEFAULT_SIZES = {"train": 5000, "test": 500}

_CHAIN_EVENTS = {
    "+": ("{n} buys {b} more.", "{n} finds {b} more.", "{n} gets {b} more."),
    "-": ("{n} gives away {b}.", "{n} loses {b}."),
    "*": ("{n} then has {b} times as many.",),
    "/": ("{n} splits them into {b} equal piles and keeps one pile.",),
}
_RELATIONS = {
    "+": "{n} has {b} more {items} than {prev}.",
    "-": "{n} has {b} fewer {items} than {prev}.",
    "*": "{n} has {b} times as many {items} as {prev}.",
}


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """Knobs of the generator.

    Attributes:
      min_steps, max_steps: solution length range (2..5), drawn uniformly.
      max_value: largest starting amount / added or removed amount / unit price.
      max_factor: largest multiplier or divisor (multiplications stay short).
      max_result: largest intermediate value allowed.
      ops: allowed operations, a subset of "+-*/" (price problems need "+-*").
      templates: allowed template families, a subset of TEMPLATES.
    """

    min_steps: int = 2
    max_steps: int = 5
    max_value: int = 20
    max_factor: int = 5
    max_result: int = 100
    ops: str = "+-*/"
    templates: tuple[str, ...] = TEMPLATES

    def __post_init__(self):
        if not 2 <= self.min_steps <= self.max_steps <= 5:
            raise ValueError(f"need 2 <= min_steps <= max_steps <= 5, got {self.min_steps}, {self.max_steps}")
        if self.max_value < 2 or self.max_factor < 2 or self.max_result < self.max_value:
            raise ValueError("need max_value >= 2, max_factor >= 2 and max_result >= max_value")
        if not self.ops or set(self.ops) - set("+-*/"):
            raise ValueError(f"ops must be a non-empty subset of '+-*/', got {self.ops!r}")
        unknown = set(self.templates) - set(TEMPLATES)
        if unknown or not self.templates:
            raise ValueError(f"templates must be a non-empty subset of {TEMPLATES}, got {self.templates}")
        object.__setattr__(self, "templates", tuple(self.templates))
        if not self.usable_templates():
            raise ValueError(f"no template in {self.templates} works with ops={self.ops!r} "
                             "(price needs '+-*', compare needs one of '+-*')")

    def usable_templates(self) -> tuple[str, ...]:
        """The allowed templates that can be built with the allowed ops."""
        needs = {"chain": set(), "compare": None, "price": set("+-*")}
        ops = set(self.ops)
        return tuple(t for t in self.templates
                     if (ops & set("+-*") if needs[t] is None else needs[t] <= ops))


# ---------------------------------------------------------------------------- randomness

def as_numpy_rng(key: Any) -> np.random.Generator:
    """A numpy Generator from a jax PRNG key, an int seed or a Generator (returned as is)."""
    if isinstance(key, np.random.Generator):
        return key
    if isinstance(key, (int, np.integer)):
        return np.random.default_rng(int(key))
    import jax  # noqa: PLC0415 - only when a jax key is given

    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key).astype(np.uint32).ravel().tolist())


def split_of(question: str) -> str:
    """"test" for TEST_PERCENT % of question texts (by sha256), else "train"."""
    h = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big")
    return "test" if h % 100 < TEST_PERCENT else "train"


def randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


# ---------------------------------------------------------------------------- templates

@dataclasses.dataclass(frozen=True)
class _Step:
    prefix: str
    a: int
    op: str
    b: int
    c: int
    suffix: str

    def text(self) -> str:
        return f"{self.prefix}{self.a} {self.op} {self.b} = {self.c}{self.suffix}"


def apply_op(op: str, a: Fraction | int, b: Fraction | int) -> Fraction | None:
    a, b = Fraction(a), Fraction(b)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    return a / b


def _operand(rng, op: str, current: int, d: Difficulty) -> int | None:
    """A second operand for `current op b` keeping results integer, >= 1 and bounded."""
    if op == "+":
        hi = min(d.max_value, d.max_result - current)
        return randint(rng, 1, hi) if hi >= 1 else None
    if op == "-":
        hi = min(d.max_value, current - 1)
        return randint(rng, 1, hi) if hi >= 1 else None
    if op == "*":
        hi = min(d.max_factor, d.max_result // max(current, 1))
        return randint(rng, 2, hi) if hi >= 2 else None
    divisors = [b for b in range(2, d.max_factor + 1) if current % b == 0 and current // b >= 1]
    return pick(rng, divisors) if divisors else None


def _chain(rng, k: int, d: Difficulty):
    name, items = pick(rng, NAMES), pick(rng, ITEMS)
    current = randint(rng, 2, d.max_value)
    sentences = [f"{name} has {current} {items}."]
    steps = []
    for _ in range(k):
        choices = [op for op in d.ops]
        rng.shuffle(choices)
        for op in choices:
            b = _operand(rng, op, current, d)
            if b is not None:
                break
        else:
            return None
        c = int(apply_op(op, current, b))
        sentences.append(pick(rng, _CHAIN_EVENTS[op]).format(n=name, b=b))
        steps.append(_Step(f"{name} has ", current, op, b, c, f" {items}."))
        current = c
    sentences.append(f"How many {items} does {name} have now?")
    return " ".join(sentences), steps


def _compare(rng, k: int, d: Difficulty):
    ops = [op for op in "+-*" if op in d.ops]
    if not ops:
        return None
    # k steps: either the last of k+1 people, or the total of 2 people (k=2) / 3 people (k=4).
    total = k in (2, 4) and bool(rng.integers(2))
    people_count = {2: 2, 4: 3}[k] if total else k + 1
    names = [str(x) for x in rng.permutation(NAMES)[:people_count]]
    items = pick(rng, ITEMS)
    values = [randint(rng, 2, d.max_value)]
    sentences = [f"{names[0]} has {values[0]} {items}."]
    steps = []
    for i in range(1, people_count):
        order = list(ops)
        rng.shuffle(order)
        for op in order:
            b = _operand(rng, op, values[-1], d)
            if b is not None:
                break
        else:
            return None
        c = int(apply_op(op, values[-1], b))
        sentences.append(_RELATIONS[op].format(n=names[i], b=b, items=items, prev=names[i - 1]))
        steps.append(_Step(f"{names[i]} has ", values[-1], op, b, c, f" {items}."))
        values.append(c)
    if total:
        running = values[0]
        for i in range(1, people_count):
            s = running + values[i]
            last = i == people_count - 1
            prefix = "Together they have " if last else f"{names[0]} and {names[1]} have "
            steps.append(_Step(prefix, running, "+", values[i], s, f" {items}."))
            running = s
        sentences.append(f"How many {items} do they have in total?")
    else:
        sentences.append(f"How many {items} does {names[-1]} have?")
    return " ".join(sentences), steps


def _price(rng, k: int, d: Difficulty):
    if not set("+-*") <= set(d.ops):
        return None
    # (number of item kinds, ask for change) -> steps: (1,T)=2, (2,F)=3, (2,T)=4, (3,F)=5
    kinds, change = {2: (1, True), 3: (2, False), 4: (2, True), 5: (3, False)}[k]
    name = pick(rng, NAMES)
    things = [THINGS[i] for i in rng.permutation(len(THINGS))[:kinds]]
    prices = [randint(rng, 2, d.max_value) for _ in things]
    counts = [randint(rng, 2, d.max_factor) for _ in things]
    costs = [q * p for q, p in zip(counts, prices)]
    price_text = _and_list([f"a {one} costs {p} coins" for (one, _), p in zip(things, prices)])
    buy_text = _and_list([f"{q} {many}" for (_, many), q in zip(things, counts)])
    sentences = [price_text[0].upper() + price_text[1:] + ".", f"{name} buys {buy_text}."]
    steps = [_Step(f"The {many} cost ", q, "*", p, q * p, " coins.")
             for (_, many), q, p in zip(things, counts, prices)]
    spent = costs[0]
    for i in range(1, kinds):
        s = spent + costs[i]
        last = i == kinds - 1
        prefix = f"{name} spends " if last else f"The {things[0][1]} and {things[1][1]} cost "
        steps.append(_Step(prefix, spent, "+", costs[i], s, " coins."))
        spent = s
    if change:
        paid = spent + randint(rng, 1, d.max_value)
        sentences.append(f"{name} pays with {paid} coins.")
        steps.append(_Step(f"{name} gets ", paid, "-", spent, paid - spent, " coins back."))
        sentences.append(f"How many coins does {name} get back?")
    else:
        sentences.append(f"How many coins does {name} spend?")
    if max(s.c for s in steps) > d.max_result:
        return None
    return " ".join(sentences), steps


def _and_list(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


_BUILDERS = {"chain": _chain, "compare": _compare, "price": _price}


def _well_formed(question: str, steps: list[_Step], d: Difficulty) -> bool:
    """Intermediate values in [0, max_result], distinct from each other and from every given."""
    givens = {int(x) for x in re.findall(r"\d+", question)}
    results = [s.c for s in steps]
    return (len(set(results)) == len(results) and not givens & set(results)
            and 0 <= min(results) and max(results) <= d.max_result)


# Two fixed difficulties that stand for GSM8K and MATH in the miniature's studies (easy
# against hard problems, mixes of both): each is a `load` source of its own, and its
# problems carry its name as `Problem.source`. Easy: 2-3 steps, small numbers, no
# division; hard: 4-5 steps, larger numbers, all four operations.
LEVELS = {
    "synthetic_easy": Difficulty(min_steps=2, max_steps=3, max_value=10, max_factor=5,
                                 max_result=100, ops="+-*"),
    "synthetic_hard": Difficulty(min_steps=4, max_steps=5, max_value=30, max_factor=9,
                                 max_result=500, ops="+-*/"),
}
SOURCES = ("synthetic", *LEVELS)


def is_synthetic(source: str) -> bool:
    """Whether `source` names built-in synthetic problems ("synthetic" or a LEVELS name)."""
    return source in SOURCES


def sample_problem(rng: np.random.Generator, difficulty: Difficulty = Difficulty(),
                   source: str = "synthetic") -> Problem:
    """One random problem (any split), named `source`. Retries until the guarantees above hold."""
    k = randint(rng, difficulty.min_steps, difficulty.max_steps)
    template = pick(rng, difficulty.usable_templates())
    for _ in range(1000):
        # Retry the same (template, steps) so that the mix stays uniform.
        built = _BUILDERS[template](rng, k, difficulty)
        if built is None:
            continue
        question, steps = built
        if not _well_formed(question, steps, difficulty):
            continue
        digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:12]
        return Problem(question, tuple(s.text() for s in steps), str(steps[-1].c), source,
                       len(steps), template, f"{source}/{split_of(question)}/{digest}")
    raise ValueError(f"could not build a problem with {difficulty}: the knobs are too tight")


def generate(num_problems: int, *, split: str = "train", seed: Any = 0, source: str = "synthetic",
             **difficulty: Any) -> list[Problem]:
    """`num_problems` distinct problems of one split, deterministic in (seed, knobs).

    Args:
      num_problems: how many.
      split: "train" or "test"; decided per problem by `split_of(question)`.
      seed: int seed, jax key or numpy Generator.
      source: "synthetic" (the knobs below) or a LEVELS name (its fixed knobs; passing
        knobs too is an error).
      **difficulty: fields of `Difficulty` (min_steps, max_steps, max_value, ...).
    """
    if split not in ("train", "test"):
        raise ValueError(f"synthetic split must be 'train' or 'test', got {split!r}")
    if source not in SOURCES:
        raise ValueError(f"unknown synthetic source {source!r}: expected one of {SOURCES}")
    if source in LEVELS and difficulty:
        raise ValueError(f"{source} has fixed knobs ({LEVELS[source]}); got {sorted(difficulty)} too")
    knobs = LEVELS[source] if source in LEVELS else Difficulty(**difficulty)
    rng = as_numpy_rng(seed)
    seen: set[str] = set()
    problems: list[Problem] = []
    attempts = 0
    budget = 100 * num_problems + 1000
    while len(problems) < num_problems:
        attempts += 1
        if attempts > budget:
            raise ValueError(f"only {len(problems)} distinct {split} problems found in {budget} draws "
                             f"with {knobs}; widen the knobs or ask for fewer")
        problem = sample_problem(rng, knobs, source)
        if problem.question in seen or split_of(problem.question) != split:
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems


def load_split(split: str, *, limit: int | None = None, seed: Any = 0,
               num_problems: int | None = None, source: str = "synthetic", **difficulty: Any) -> list[Problem]:
    """`load(source, split)` for the SOURCES: `limit` (or `num_problems`, or 5000 train /
    500 test) problems."""
    n = limit if limit is not None else (num_problems if num_problems is not None else DEFAULT_SIZES.get(split, 0))
    return generate(n, split=split, seed=seed, source=source, **difficulty)
