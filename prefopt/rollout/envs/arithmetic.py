"""A small arithmetic parser for the calculator tool: model output is parsed, never executed.

Grammar (recursive descent; exact rational arithmetic with :class:`fractions.Fraction`)::

    expr   := term (("+" | "-") term)*
    term   := unary (("*" | "/") unary)*
    unary  := ("+" | "-") unary | atom
    atom   := NUMBER | "(" expr ")"           NUMBER: digits with an optional decimal part

Limits keep a hostile expression cheap: at most ``MAX_CHARS`` characters, ``MAX_DEPTH`` nested
parentheses or signs, and |intermediate values| ≤ ``MAX_ABS``. Anything else — a name, ``**``, a call,
an attribute — is an :class:`ArithmeticSyntaxError` whose message is one line saying what was wrong.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_CHARS = 200
MAX_DEPTH = 32
MAX_ABS = 10**15

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|(\S))")


class ArithmeticSyntaxError(ValueError):
    """The expression is not arithmetic this parser accepts (one-line message)."""


def _tokens(text: str) -> list:
    out = []
    for m in _TOKEN.finditer(text):
        num, op = m.groups()
        if num is not None:
            out.append(Fraction(num))
        elif op is not None:
            if op not in "+-*/()":
                raise ArithmeticSyntaxError(f"unexpected character {op!r}; accepted: numbers, + - * / and parentheses")
            out.append(op)
    return out


class _Parser:
    def __init__(self, tokens: list):
        self.toks, self.i, self.depth = tokens, 0, 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def check(self, v: Fraction) -> Fraction:
        if abs(v) > MAX_ABS:
            raise ArithmeticSyntaxError(f"a value exceeds {MAX_ABS:.0e} in magnitude")
        return v

    def expr(self) -> Fraction:
        v = self.term()
        while self.peek() in ("+", "-"):
            v = self.check(v + self.term() if self.take() == "+" else v - self.term())
        return v

    def term(self) -> Fraction:
        v = self.unary()
        while self.peek() in ("*", "/"):
            if self.take() == "*":
                v = self.check(v * self.unary())
            else:
                d = self.unary()
                if d == 0:
                    raise ArithmeticSyntaxError("division by zero")
                v = self.check(v / d)
        return v

    def nested(self, f):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ArithmeticSyntaxError(f"nested deeper than {MAX_DEPTH} levels")
        try:
            return f()
        finally:
            self.depth -= 1

    def unary(self) -> Fraction:
        if self.peek() in ("+", "-"):
            sign = -1 if self.take() == "-" else 1
            return sign * self.nested(self.unary)
        return self.atom()

    def atom(self) -> Fraction:
        t = self.take()
        if isinstance(t, Fraction):
            return self.check(t)
        if t == "(":
            v = self.nested(self.expr)
            if self.take() != ")":
                raise ArithmeticSyntaxError("missing ')'")
            return v
        raise ArithmeticSyntaxError("expected a number or '('" + ("" if t is None else f", got {t!r}"))


def evaluate(expression: str) -> Fraction:
    """The exact value of ``expression``; :class:`ArithmeticSyntaxError` for anything else."""
    if len(expression) > MAX_CHARS:
        raise ArithmeticSyntaxError(f"longer than {MAX_CHARS} characters")
    toks = _tokens(expression)
    if not toks:
        raise ArithmeticSyntaxError("empty expression")
    p = _Parser(toks)
    v = p.expr()
    if p.peek() is not None:
        t = p.peek()
        raise ArithmeticSyntaxError(f"unexpected {format_number(t) if isinstance(t, Fraction) else t!r} after a "
                                    "complete expression")
    return v


def format_number(v: Fraction) -> str:
    """An integer as itself; otherwise a decimal rounded to 6 places, without trailing zeros."""
    if v.denominator == 1:
        return str(v.numerator)
    return f"{float(v):.6f}".rstrip("0").rstrip(".")
