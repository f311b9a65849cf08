"""Exact step labels and corrupted solutions of synthetic problems.

    labels = label_steps(problem, steps)          # one bool per step: right or not
    c = corrupt(problem, key, kind="operand")     # a wrong solution and its labels

A step is checked by parsing its equations ("5 + 3 = 8") and evaluating them exactly
(fractions); rule "valid" accepts any right arithmetic on known numbers, rule
"reference" only computations of the reference solution.
"""
from __future__ import annotations

import ast
import dataclasses
import re
from fractions import Fraction
from typing import Any, Sequence


from jaxstep.data.problem import Problem
from jaxstep.data.synthetic import apply_op, as_numpy_rng, pick, randint

KINDS = ("arithmetic", "operand", "skip", "repeat")  # corruption kinds


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
            return apply_op(_AST_OPS[type(node.op)], ev(node.left), ev(node.right))
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


# ---------------------------------------------------------------------------- redundancy

def with_repeated_step(problem: Problem, key: Any) -> Problem:
    """`problem` with one of its reference steps (drawn with `key`) written twice in a row:
    a correct but unnecessary step, the kind of redundancy real solutions have and a PRM
    rates as correct (`label_steps` labels the copy correct). A problem without steps is
    returned as is."""
    if not problem.steps:
        return problem
    k = randint(as_numpy_rng(key), 0, len(problem.steps) - 1)
    steps = problem.steps[:k + 1] + problem.steps[k:]
    return dataclasses.replace(problem, steps=steps)


def with_redundant_solutions(problems: Sequence[Problem], fraction: float, seed: int) -> list[Problem]:
    """`problems` where a `fraction` of them, drawn with `seed`, repeat one reference step
    (`with_repeated_step`); the rest unchanged, the order kept."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the redundant fraction must be in [0, 1], got {fraction}")
    if fraction == 0.0:
        return list(problems)
    rng = as_numpy_rng(seed)
    chosen = set(rng.permutation(len(problems))[:int(round(fraction * len(problems)))].tolist())
    return [with_repeated_step(p, rng) if i in chosen else p for i, p in enumerate(problems)]


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
            new = old + pick(rng, (-3, -2, -1, 1, 2, 3))
            if new < 1 or new in forbidden:
                return None
            a, b = (new, b) if j == 0 else (a, new)
        c = apply_op(op, a, b)
        if c is None or c < 0 or not _terminates(c):
            return None
        if i == k and kind == "arithmetic":
            wrong = c + pick(rng, (-3, -2, -1, 1, 2, 3))
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
            k = randint(rng, 0, last)
            built = _try_corrupt(problem, parsed, kind_, k, rng)
            if built is not None:
                steps, answer = built
                labels = tuple(label_steps(problem, steps, rule=rule))
                return CorruptedSolution(kind_, steps, answer, labels,
                                         _same_number(answer, problem.answer), k)
    raise ValueError(f"could not corrupt problem {problem.id} with kind {kind!r}")
