"""Splitting reference solutions into reasoning steps, and pulling out boxed answers.

Rules (documented here because every stage's step labels depend on them):

* GSM8K: a step is one line of the `answer` field; the last line `#### N` is the
  final answer, not a step. Calculator annotations `<<16-3-4=9>>` are removed from the
  step text by default (a generator should not have to produce them).
* MATH: a solution is first cut into paragraphs (blank lines), then each paragraph
  into sentences. A sentence ends at `.`, `!` or `?` followed by whitespace, only
  outside math (`$...$`, `$$...$$`, `\\[...\\]`, `\\(...\\)`), outside `{}` groups,
  `\\begin..\\end` environments and `[asy]...[/asy]` figures, and not after a known
  abbreviation ("e.g.", "i.e.", ...), a lone enumeration label ("1.", "(a)."), or
  before a lowercase letter. A math span that itself ends in a period (`$x=2.$ Then`)
  also ends a sentence. Line breaks inside a step are folded into single spaces
  (`join_lines=True`), so "\\n" can delimit steps for every source.
  With `mode="paragraphs"` only blank lines split.
"""
from __future__ import annotations

import re

CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs mr mrs ms dr st cf approx no fig eq resp ca".split())
_ENUM_LABEL_RE = re.compile(r"^(\(?[0-9]{1,2}\)?|\(?[a-zA-Z]\)?|\(?[ivx]{1,4}\)?)$")
_WS_RE = re.compile(r"\s*\n\s*")


def strip_calculator(text: str) -> str:
    """Removes GSM8K calculator annotations: "2*3=<<2*3=6>>6" -> "2*3=6"."""
    return CALCULATOR_RE.sub("", text)


def split_gsm8k(answer: str, *, keep_calculator: bool = False) -> tuple[list[str], str | None]:
    """GSM8K `answer` field -> (steps, final answer without commas, or None if no `####`).

    Steps are the non-empty lines before the `####` line, stripped.
    """
    head, sep, tail = answer.rpartition("####")
    if not sep:
        return [line.strip() for line in answer.split("\n") if line.strip()], None
    if not keep_calculator:
        head = strip_calculator(head)
    steps = [line.strip() for line in head.split("\n") if line.strip()]
    final = tail.strip().split("\n")[0].strip().replace(",", "")
    return steps, (final or None)


def _boxed_argument(text: str, start: int) -> str | None:
    """The argument of a `\\boxed`/`\\fbox` whose name ends at `start`."""
    n = len(text)
    i = start
    while i < n and text[i] == " ":
        i += 1
    if i < n and text[i] == "{":
        depth = 0
        for j in range(i, n):
            c = text[j]
            if c == "\\":
                continue
            if c == "{" and (j == 0 or text[j - 1] != "\\"):
                depth += 1
            elif c == "}" and text[j - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[i + 1:j]
        return None  # unbalanced
    if i == start:  # "\boxedx": not a boxed command at all
        return None
    # "\boxed 5": the argument runs to the next space, "$" or end.
    m = re.match(r"[^\s$]+", text[i:])
    return m.group(0) if m else None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (nested braces ok), `\\boxed 5` or `\\fbox{...}`."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)(?![a-zA-Z])", text):
        arg = _boxed_argument(text, m.end())
        if arg is not None:
            best = arg
    return best.strip() if best is not None else None


def _math_closer(text: str, i: int) -> tuple[str, int] | None:
    """If a math span opens at i, returns (closing delimiter, length of opener)."""
    if text.startswith("$$", i):
        return "$$", 2
    if text[i] == "$":
        return "$", 1
    if text.startswith("\\[", i):
        return "\\]", 2
    if text.startswith("\\(", i):
        return "\\)", 2
    return None


def _split_sentences(paragraph: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    i = 0
    n = len(paragraph)
    brace = 0
    env = 0
    while i < n:
        if paragraph.startswith("[asy]", i):
            end = paragraph.find("[/asy]", i)
            i = n if end < 0 else end + len("[/asy]")
            continue
        c = paragraph[i]
        if c == "\\" and i + 1 < n and paragraph[i + 1] in "{}$%&_#":
            i += 2
            continue
        if paragraph.startswith("\\begin{", i):
            env += 1
        elif paragraph.startswith("\\end{", i):
            env = max(env - 1, 0)
        closer = _math_closer(paragraph, i)
        if closer is not None:
            close, open_len = closer
            end = paragraph.find(close, i + open_len)
            while end > 0 and close == "$" and paragraph[end - 1] == "\\":
                end = paragraph.find(close, end + 1)
            if end < 0:
                i = n
                break
            inner = paragraph[i + open_len:end].rstrip()
            i = end + len(close)
            if brace == 0 and env == 0 and inner.endswith(".") and _boundary_after(paragraph, i):
                sentences.append(paragraph[start:i])
                start = i
            continue
        if c == "{":
            brace += 1
        elif c == "}":
            brace = max(brace - 1, 0)
        elif c in ".!?" and brace == 0 and env == 0:
            if _boundary_after(paragraph, i + 1) and not _is_abbreviation(paragraph[start:i]):
                sentences.append(paragraph[start:i + 1])
                start = i + 1
        i += 1
    sentences.append(paragraph[start:])
    return [s.strip() for s in sentences if s.strip()]


def _boundary_after(text: str, i: int) -> bool:
    """True if position i is whitespace and the next word does not start lowercase."""
    if i >= len(text) or not text[i].isspace():
        return False
    rest = text[i:].lstrip()
    return bool(rest) and not rest[0].islower() and rest[0] not in ",;:)"


def _is_abbreviation(before: str) -> bool:
    words = before.strip().split()
    if not words:
        return True
    last = words[-1].lower().lstrip("(")
    if last in _ABBREVIATIONS:
        return True
    return len(words) == 1 and bool(_ENUM_LABEL_RE.match(words[0]))


def split_math(solution: str, *, mode: str = "sentences", join_lines: bool = True) -> list[str]:
    """MATH solution -> steps (see the module docstring for the rule).

    Args:
      solution: LaTeX worked solution.
      mode: "sentences" (paragraphs, then sentences) or "paragraphs".
      join_lines: fold line breaks inside a step into single spaces.
    """
    if mode not in ("sentences", "paragraphs"):
        raise ValueError(f"mode must be 'sentences' or 'paragraphs', got {mode!r}")
    paragraphs = _split_paragraphs(solution)
    steps: list[str] = []
    for paragraph in paragraphs:
        parts = _split_sentences(paragraph) if mode == "sentences" else [paragraph.strip()]
        steps.extend(p for p in parts if p)
    if join_lines:
        steps = [_WS_RE.sub(" ", s) for s in steps]
    return steps


def _split_paragraphs(text: str) -> list[str]:
    """Blank-line split that keeps `[asy]...[/asy]` figures whole."""
    pieces = re.split(r"(\[asy\].*?\[/asy\])", text, flags=re.S)
    paragraphs: list[str] = [""]
    for k, piece in enumerate(pieces):
        if k % 2 == 1:  # a figure: glue it to the current paragraph
            paragraphs[-1] += piece
            continue
        chunks = re.split(r"\n\s*\n", piece)
        paragraphs[-1] += chunks[0]
        paragraphs.extend(chunks[1:])
    return [p.strip() for p in paragraphs if p.strip()]
