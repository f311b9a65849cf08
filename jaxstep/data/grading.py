"""Final-answer extraction and grading (GSM8K numbers, MATH LaTeX answers).

`is_correct(response, reference)` is called thousands of times per RL step, so it
goes from cheap to expensive and caches:
  1. identical answers, or answers equal after normalisation (see `normalize_answer`);
  2. both plain numbers (integers, decimals, thousands separators, fractions
     `a/b`, `\\frac{a}{b}`, `\\dfrac`, signs, units or a currency sign around them):
     exact rational comparison, no sympy;
  3. math_verify (`parse` + `verify`) with its signal-alarm timeouts DISABLED
     (`parsing_timeout=None`, `timeout_seconds=None`), so it runs in any thread;
     inputs that could make sympy hang (very long, huge exponents or factorials)
     skip this step;
  4. otherwise a normalised string compare in the style of the PRM800K grader
     (tuples/intervals compared element by element).
A response with no recognisable final answer is wrong, never an error.
"""
from __future__ import annotations

import functools
import logging
import re
from fractions import Fraction

from jaxstep.data.steps import last_boxed

# ---------------------------------------------------------------------------- extraction

_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_PRM_ANSWER_RE = re.compile(r"#[ \t]*Answer[ \t]*\n+\s*([^\n]+)")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?\s*([^\n]+)", re.IGNORECASE)
_A_LINE_RE = re.compile(r"^\s*A:\s*(.+?)\s*$")


def _clean(answer: str | None) -> str | None:
    if answer is None:
        return None
    answer = answer.strip().rstrip(" .")
    inner = last_boxed(answer) if ("\\boxed" in answer or "\\fbox" in answer) else None
    if inner:
        answer = inner
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) > len(left) + len(right):
            answer = answer[len(left):-len(right)].strip()
    answer = answer.rstrip(" .")
    if answer.endswith("$") and answer.count("$") == 1:
        answer = answer[:-1].rstrip(" .")
    return answer or None


def extract_answer(text: str | None) -> str | None:
    """The final answer in a solution, or None if it states none.

    Recognised, in this order of preference: a GSM8K line `#### N` (the last one);
    PRM800K's `# Answer\\n\\n...`; the last `\\boxed{...}` / `\\boxed N` / `\\fbox{...}`;
    "The answer is ..." (the last one, to the end of its line); a last line `A: ...`
    (GSM8K example model solutions). Surrounding `$...$` and a final period are dropped.
    """
    if not text:
        return None
    matches = _HASH_RE.findall(text)
    if matches:
        return _clean(matches[-1])
    matches = _PRM_ANSWER_RE.findall(text)
    if matches:
        return _clean(matches[-1])
    boxed = last_boxed(text)
    if boxed:
        return _clean(boxed)
    matches = _ANSWER_IS_RE.findall(text)
    if matches:
        return _clean(matches[-1])
    lines = [line for line in text.strip().split("\n") if line.strip()]
    if lines:
        m = _A_LINE_RE.match(lines[-1])
        if m:
            return _clean(m.group(1))
    return None


# ---------------------------------------------------------------------------- normalisation

_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day",
          "week", "month", "year", "foot", "feet", "inch", "yard", "unit", "dollar", "cent")
_UNIT_RE = re.compile(r"\b(?:" + "|".join(_UNITS) + r")(?:e?s)?\b(?:\s*\^\s*\{?\d+\}?)?")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|textnormal)\s*\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])")
_CHOICE_RE = re.compile(r"^\(([a-z])\)$")


def normalize_answer(answer: str) -> str:
    """A canonical string for comparing answers (PRM800K-grader style).

    Drops `$`, `\\left`/`\\right`, `\\!`, `\\,`, `^\\circ`, `\\%`, common units and
    `\\text{}` wrappers; `\\dfrac`/`\\tfrac` -> `\\frac`; thousands separators in
    well-formed numbers; "x = 5" -> "5"; spaces; lower case; an integral decimal
    ("18.00") becomes an integer.
    """
    s = answer.strip()
    s = s.replace("\u2212", "-").replace("\\$", "").replace("$", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "")
    for token in ("\\!", "\\,", "\\;", "\\:", "\\ ", "~"):
        s = s.replace(token, " ")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _TEXT_WRAP_RE.sub(r"\1", s)
    s = _UNIT_RE.sub("", s)
    s = _THOUSANDS_RE.sub(lambda m: m.group(1).replace(",", ""), s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=\S)", "", s)  # "x = 5" -> "5"
    s = re.sub(r"\s+", "", s).lower().rstrip(".")
    if s.startswith("{") and s.endswith("}") and s.count("{") == 1:
        s = s[1:-1]
    m = _CHOICE_RE.match(s)
    if m:
        s = m.group(1)
    number = _parse_number(s)
    if number is not None and number.denominator == 1 and re.fullmatch(r"-?\d+(\.0+)?", s):
        s = str(number.numerator)
    return s


_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_FRAC_RE = re.compile(r"([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}")
_FRAC_SHORT_RE = re.compile(r"([-+]?)\\frac(\d)(\d)")
_SLASH_RE = re.compile(r"([-+]?\d+)/([-+]?\d+)")
_WORDS_AFTER_NUMBER_RE = re.compile(r"^(\S+?)\s+[a-zA-Z]{2,}[a-zA-Z ]*$")


def _parse_number(s: str) -> Fraction | None:
    """An exact rational for a plain number / fraction string (already normalised), else None."""
    if not s or len(s) > 40:
        return None
    try:
        if _NUMBER_RE.fullmatch(s):
            return Fraction(s)
        for regex in (_FRAC_RE, _FRAC_SHORT_RE):
            m = regex.fullmatch(s)
            if m:
                value = Fraction(int(m.group(2)), int(m.group(3)))
                return -value if m.group(1) == "-" else value
        m = _SLASH_RE.fullmatch(s)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def as_number(answer: str) -> Fraction | None:
    """The exact value of an answer that is a plain number (units/currency allowed), else None."""
    number = _parse_number(normalize_answer(answer))
    if number is None:
        m = _WORDS_AFTER_NUMBER_RE.match(answer.strip())  # "18 dollars", "5 apples"
        if m:
            number = _parse_number(normalize_answer(m.group(1)))
    return number


# ---------------------------------------------------------------------------- math_verify

class _DropTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


@functools.lru_cache(maxsize=1)
def _math_verify():
    import math_verify  # noqa: PLC0415 - imports sympy; only when needed

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropTimeoutWarning())
    return math_verify


_BIG_OPS_RE = re.compile(r"(?<!\\)!|\\[dt]?binom|\\choose|\\Gamma|\\sum|\\prod|\\int|\\lim")
_RISKY_RES = (
    re.compile(r"\^\s*\{?\s*[-+]?\d{6,}"),  # 2^{1000000}
    re.compile(r"\^\s*\{[^{}]*\^"),  # 2^{2^{100}}
    re.compile(r"\^\s*(?:\w+|\{[^{}]*\})\s*\^"),  # 2^3^4, 2^{3}^{4}
    re.compile(r"\d{5,}"),  # only with _BIG_OPS_RE: 99999!, \binom{12345}{67}
)


_EXPONENT_RE = re.compile(r"\^\s*\{?\s*[-+]?(\d+)")
_COMMAND_RE = re.compile(r"\\[a-zA-Z]+")
_VARIABLE_RE = re.compile(r"[a-zA-Z]")


def _risky(s: str) -> bool:
    """Inputs that can make sympy run for minutes (math_verify runs without a timeout).

    Long strings, huge or nested exponents, high powers of expressions with
    variables, and factorials/binomials/sums/products of anything but small literal
    integers (`(10^{9})!` never returns).
    """
    if len(s) > 300 or any(r.search(s) for r in _RISKY_RES[:3]):
        return True
    exponents = [int(e) for e in _EXPONENT_RE.findall(s)]
    if exponents and max(exponents) > 100 and _VARIABLE_RE.search(_COMMAND_RE.sub("", s)):
        return True  # (x+1)^{2000}: sympy expands for minutes
    if exponents and max(exponents) > 20000:
        return True
    if _BIG_OPS_RE.search(s):
        return "^" in s or len(re.findall(r"(?<!\\)!", s)) > 1 or _RISKY_RES[3].search(s) is not None or \
            re.search(r"\\(?:sum|prod|int|lim)", s) is not None
    return False


@functools.lru_cache(maxsize=65536)
def _mv_parse(answer: str):
    mv = _math_verify()
    try:
        return mv.parse("$" + answer + "$", parsing_timeout=None)
    except Exception:  # noqa: BLE001 - math_verify raises many kinds; unparseable = no match
        return []


def math_verify_match(pred: str, ref: str) -> bool:
    """math_verify's verdict (timeouts disabled); False when it cannot parse or is risky."""
    if _risky(pred) or _risky(ref):
        return False
    gold, target = _mv_parse(ref), _mv_parse(pred)
    if not gold or not target:
        return False
    try:
        return bool(_math_verify().verify(gold, target, timeout_seconds=None))
    except Exception:  # noqa: BLE001
        return False


# ---------------------------------------------------------------------------- grading

def _split_tuple(s: str) -> list[str]:
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and not any(c in s[1:-1] for c in "()[]"):
        return [s[0] + s[-1]] + s[1:-1].split(",")
    return [s]


def _normalized_match(pred_norm: str, ref_norm: str) -> bool:
    if pred_norm == ref_norm:
        return True
    ref_parts, pred_parts = _split_tuple(ref_norm), _split_tuple(pred_norm)
    if len(ref_parts) == 1 or len(ref_parts) != len(pred_parts):
        return False
    for r, p in zip(ref_parts, pred_parts):
        if r != p:
            rn, pn = _parse_number(r), _parse_number(p)
            if rn is None or rn != pn:
                return False
    return True


@functools.lru_cache(maxsize=262144)
def answers_match(pred: str, ref: str) -> bool:
    """Whether answer `pred` equals reference answer `ref` (both already extracted)."""
    pred, ref = pred.strip(), ref.strip()
    if not pred or not ref:
        return False
    if pred == ref:
        return True
    pred_norm, ref_norm = normalize_answer(pred), normalize_answer(ref)
    if pred_norm and pred_norm == ref_norm:
        return True
    ref_number = as_number(ref)
    pred_number = as_number(pred)
    if ref_number is not None and pred_number is not None:
        return ref_number == pred_number
    if ref_number is not None and re.fullmatch(r"[-+]?[\d.,\s]*", pred):
        return False  # a malformed number against a number: no need for sympy
    if math_verify_match(pred, ref):
        return True
    return _normalized_match(pred_norm, ref_norm)


def is_correct(response: str | None, reference: str) -> bool:
    """Whether a response's final answer matches the reference.

    Args:
      response: a generated solution (its answer is found by `extract_answer`).
      reference: a bare reference answer ("18", "\\frac{9}{7}"), or a full reference
        solution, whose final answer is then extracted the same way.

    Returns:
      False when the response has no final answer; never raises on odd input.
    """
    try:
        pred = extract_answer(response)
        if pred is None:
            return False
        ref = extract_answer(reference) or (reference or "").strip()
        if not ref:
            return False
        return answers_match(pred, ref)
    except RecursionError:
        return False
