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

`label_steps(problem, steps)` labels arbitrary solution steps exactly, and
`corrupt(problem, key)` makes wrong solutions (arithmetic slip, wrong operand,
skipped step, repeated step) for reward-model tests.
"""
from __future__ import annotations

import ast
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
KINDS = ("arithmetic", "operand", "skip", "repeat")
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


def _int(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def _pick(rng: np.random.Generator, seq: Sequence):
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


def _apply(op: str, a: Fraction | int, b: Fraction | int) -> Fraction | None:
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
        return _int(rng, 1, hi) if hi >= 1 else None
    if op == "-":
        hi = min(d.max_value, current - 1)
        return _int(rng, 1, hi) if hi >= 1 else None
    if op == "*":
        hi = min(d.max_factor, d.max_result // max(current, 1))
        return _int(rng, 2, hi) if hi >= 2 else None
    divisors = [b for b in range(2, d.max_factor + 1) if current % b == 0 and current // b >= 1]
    return _pick(rng, divisors) if divisors else None


def _chain(rng, k: int, d: Difficulty):
    name, items = _pick(rng, NAMES), _pick(rng, ITEMS)
    current = _int(rng, 2, d.max_value)
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
        c = int(_apply(op, current, b))
        sentences.append(_pick(rng, _CHAIN_EVENTS[op]).format(n=name, b=b))
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
    items = _pick(rng, ITEMS)
    values = [_int(rng, 2, d.max_value)]
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
        c = int(_apply(op, values[-1], b))
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
    name = _pick(rng, NAMES)
    things = [THINGS[i] for i in rng.permutation(len(THINGS))[:kinds]]
    prices = [_int(rng, 2, d.max_value) for _ in things]
    counts = [_int(rng, 2, d.max_factor) for _ in things]
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
        paid = spent + _int(rng, 1, d.max_value)
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


def sample_problem(rng: np.random.Generator, difficulty: Difficulty = Difficulty()) -> Problem:
    """One random problem (any split). Retries until the guarantees above hold."""
    k = _int(rng, difficulty.min_steps, difficulty.max_steps)
    template = _pick(rng, difficulty.usable_templates())
    for _ in range(1000):
        # Retry the same (template, steps) so that the mix stays uniform.
        built = _BUILDERS[template](rng, k, difficulty)
        if built is None:
            continue
        question, steps = built
        if not _well_formed(question, steps, difficulty):
            continue
        digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:12]
        return Problem(question, tuple(s.text() for s in steps), str(steps[-1].c), "synthetic",
                       len(steps), template, f"synthetic/{split_of(question)}/{digest}")
    raise ValueError(f"could not build a problem with {difficulty}: the knobs are too tight")


def generate(num_problems: int, *, split: str = "train", seed: Any = 0, **difficulty: Any) -> list[Problem]:
    """`num_problems` distinct problems of one split, deterministic in (seed, knobs).

    Args:
      num_problems: how many.
      split: "train" or "test"; decided per problem by `split_of(question)`.
      seed: int seed, jax key or numpy Generator.
      **difficulty: fields of `Difficulty` (min_steps, max_steps, max_value, ...).
    """
    if split not in ("train", "test"):
        raise ValueError(f"synthetic split must be 'train' or 'test', got {split!r}")
    knobs = Difficulty(**difficulty)
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
        problem = sample_problem(rng, knobs)
        if problem.question in seen or split_of(problem.question) != split:
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems


def load_split(split: str, *, limit: int | None = None, seed: Any = 0,
               num_problems: int | None = None, **difficulty: Any) -> list[Problem]:
    """`load("synthetic", split)`: `limit` (or `num_problems`, or 5000 train / 500 test) problems."""
    n = limit if limit is not None else (num_problems if num_problems is not None else DEFAULT_SIZES.get(split, 0))
    return generate(n, split=split, seed=seed, **difficulty)


# ---------------------------------------------------------------------------- equations

_NUM = r"\d+(?:\.\d+)?"
_EQUATION_RE = re.compile(r"([\d(][\d\s+\-*/().×÷]*?[\d)])\s*=\s*(-?" + _NUM + r")(?![\d.]*\d)")
_OP_RE = re.compile(r"[-+*/×÷]")


@dataclasses.dataclass(frozen=True)
class Equation:
    """`lhs = result` found in a step; `value` is lhs evaluated exactly (None if invalid)."""

    lhs: str
    result: Fraction
    value: Fraction | None
    operands: tuple[Fraction, ...]
    ops: tuple[str, ...]
    span: tuple[int, int]


def _evaluate(expr: str) -> Fraction | None:
    """Exact value of + - * / arithmetic over numbers and parentheses, or None."""
    try:
        tree = ast.parse(expr.replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        return None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            return _apply(_AST_OPS[type(node.op)], ev(node.left), ev(node.right))
        raise ValueError("unsupported")

    try:
        return ev(tree)
    except (ValueError, TypeError, ZeroDivisionError):
        return None


_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def parse_equations(text: str) -> list[Equation]:
    """Every `a op b [op c ...] = r` in a step, left to right."""
    equations = []
    for m in _EQUATION_RE.finditer(text):
        lhs = m.group(1)
        if not _OP_RE.search(lhs):
            continue
        value = _evaluate(lhs)
        operands = tuple(Fraction(x) for x in re.findall(_NUM, lhs))
        ops = tuple(_OP_RE.findall(lhs))
        equations.append(Equation(lhs, Fraction(m.group(2)), value, operands, ops, m.span()))
    return equations


def _canonical(op: str, a: Fraction, b: Fraction) -> tuple:
    op = {"×": "*", "÷": "/"}.get(op, op)
    return (op, *sorted((a, b))) if op in "+*" else (op, a, b)


def _same_number(text: str, answer: str) -> bool:
    try:
        return Fraction(text.strip().replace(",", "")) == Fraction(answer.strip())
    except (ValueError, ZeroDivisionError):
        return False


def label_steps(problem: Problem, solution_steps: Sequence[str], *, rule: str = "valid") -> list[bool]:
    """Exact correctness of each step of an arbitrary solution to a synthetic problem.

    A step is correct iff it contains at least one equation `expr = r`, every
    equation's arithmetic is exactly right, and every number in `expr` was given in
    the question or is the result of an earlier *correct* step (or of an earlier
    equation in the same step). With `rule="reference"` each equation must also be
    one of the reference computations (same operation and operands; + and *
    commutative), so a valid but pointless computation is wrong too.
    A final-answer line "#### N" is correct iff N equals the reference answer.

    Under the default rule a skipped operation that continues from an earlier value
    is still "valid"; the final answer tells it apart. Labels are exact for
    synthetic problems (their intermediate values are all distinct).

    Args:
      problem: a synthetic Problem (any GSM8K-style problem whose steps are
        single computations works).
      solution_steps: the solution's steps (strings), e.g. a generated response split
        at the step delimiter.
      rule: "valid" (default) or "reference".

    Returns:
      One bool per step.
    """
    if rule not in ("valid", "reference"):
        raise ValueError(f"rule must be 'valid' or 'reference', got {rule!r}")
    available = {Fraction(x) for x in re.findall(_NUM, problem.question)}
    reference = set()
    if rule == "reference":
        for step in problem.steps:
            for eq in parse_equations(step):
                if len(eq.ops) == 1:
                    reference.add(_canonical(eq.ops[0], *eq.operands))
    labels = []
    for step in solution_steps:
        text = step.strip()
        if text.startswith("####"):
            labels.append(_same_number(text[4:], problem.answer))
            continue
        equations = parse_equations(text)
        ok = bool(equations)
        known = set(available)
        for eq in equations:
            if eq.value is None or eq.value != eq.result or not all(x in known for x in eq.operands):
                ok = False
                break
            if rule == "reference" and (len(eq.ops) != 1 or _canonical(eq.ops[0], *eq.operands) not in reference):
                ok = False
                break
            known.add(eq.result)
        if ok:
            available = known
        labels.append(ok)
    return labels


# ---------------------------------------------------------------------------- corruption

@dataclasses.dataclass(frozen=True)
class CorruptedSolution:
    """A flawed solution to a synthetic problem.

    Attributes:
      kind: "arithmetic" (a wrong result), "operand" (a number that was never given),
        "skip" (an operation left out; later steps continue from the value before it),
        "repeat" (a correct step written twice; the answer stays right).
      steps: the solution steps (no final-answer line).
      answer: the final answer this solution reaches.
      labels: `label_steps(problem, steps, rule=rule)`.
      answer_correct: whether `answer` equals the reference answer.
      position: index (in the reference steps) of the step that was corrupted.
    """

    kind: str
    steps: tuple[str, ...]
    answer: str
    labels: tuple[bool, ...]
    answer_correct: bool
    position: int


def _reference_steps(problem: Problem) -> list[tuple[str, Equation]]:
    parsed = []
    for text in problem.steps:
        equations = parse_equations(text)
        if len(equations) != 1 or len(equations[0].ops) != 1:
            raise ValueError(f"corrupt() needs one 'a op b = c' per step; problem {problem.id} "
                             f"has step {text!r}")
        parsed.append((text, equations[0]))
    return parsed


def _terminates(x: Fraction) -> bool:
    """True if x has a finite decimal expansion (a skipped step can make 7 / 2 = 3.5)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else str(float(x))


def _render(text: str, eq: Equation, a: Fraction, op: str, b: Fraction, c: Fraction) -> str:
    start, end = eq.span
    return f"{text[:start]}{_fmt(a)} {op} {_fmt(b)} = {_fmt(c)}{text[end:]}"


def _try_corrupt(problem, parsed, kind, k, rng):
    givens = {Fraction(x) for x in re.findall(_NUM, problem.question)}
    reference_values = {eq.result for _, eq in parsed}
    forbidden = givens | reference_values
    subst: dict[Fraction, Fraction] = {}
    out: list[str] = []
    for i, (text, eq) in enumerate(parsed):
        a, b = (subst.get(x, x) for x in eq.operands)
        op = eq.ops[0]
        if i == k and kind == "repeat":
            out += [text, text]
            continue
        if i == k and kind == "skip":
            subst[eq.result] = a
            continue
        if i == k and kind == "operand":
            j = int(rng.integers(2))
            old = (a, b)[j]
            new = old + _pick(rng, (-3, -2, -1, 1, 2, 3))
            if new < 1 or new in forbidden:
                return None
            a, b = (new, b) if j == 0 else (a, new)
        c = _apply(op, a, b)
        if c is None or c < 0 or not _terminates(c):
            return None
        if i == k and kind == "arithmetic":
            wrong = c + _pick(rng, (-3, -2, -1, 1, 2, 3))
            if wrong < 0 or wrong in forbidden:
                return None
            c = wrong
        if c != eq.result:
            subst[eq.result] = c
        out.append(_render(text, eq, a, op, b, c))
    final = subst.get(parsed[-1][1].result, parsed[-1][1].result)
    return tuple(out), _fmt(final)


def corrupt(problem: Problem, key: Any, *, kind: str | None = None, rule: str = "valid") -> CorruptedSolution:
    """A wrong (or, for "repeat", redundant) solution to a synthetic problem.

    Later steps consistently use the corrupted value (arithmetic right on a wrong
    input), as a model that made the mistake would.

    Args:
      problem: a synthetic Problem.
      key: jax PRNG key, int seed or numpy Generator.
      kind: one of KINDS, or None for a random one.
      rule: the labelling rule for `labels` (see `label_steps`).
    """
    rng = as_numpy_rng(key)
    parsed = _reference_steps(problem)
    kinds = [kind] if kind is not None else [str(x) for x in rng.permutation(KINDS)]
    for kind_ in kinds:
        if kind_ not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind_!r}")
        last = len(parsed) - (2 if kind_ == "skip" else 1)
        for _ in range(50):
            k = _int(rng, 0, last)
            built = _try_corrupt(problem, parsed, kind_, k, rng)
            if built is not None:
                steps, answer = built
                labels = tuple(label_steps(problem, steps, rule=rule))
                return CorruptedSolution(kind_, steps, answer, labels,
                                         _same_number(answer, problem.answer), k)
    raise ValueError(f"could not corrupt problem {problem.id} with kind {kind!r}")
