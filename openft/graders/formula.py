"""``calculate_output`` of a multi grader: a small arithmetic language, parsed and evaluated here, never ``eval``.

    formula := sum
    sum     := product (('+' | '-') product)*
    product := unary (('*' | '/') unary)*
    unary   := ('-' | '+') unary | power
    power   := atom ('^' unary)?                  right-associative, tighter than a leading minus: -2^2 = -4
    atom    := number | name | function '(' sum (',' sum)* ')' | '(' sum ')'

Names are the keys of the multi grader's ``graders``; functions are min, max (one or more arguments), abs,
floor, ceil, exp, sqrt, log (natural; one argument). Every value is a float, so ``9^9^9`` overflows at once
instead of building a huge integer; a result that is not a finite number is an error.
"""

from __future__ import annotations

import math
import re

MAX_LENGTH = 2000
MAX_DEPTH = 40
MAX_OPERATIONS = 200  # a chain of operations is a chain of nested nodes: this bounds the tree's depth too
FUNCTIONS = {"min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
             "sqrt": math.sqrt, "log": math.log}
_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(.))")


class FormulaError(ValueError):
    """A formula that does not parse (``position`` is where) or cannot be evaluated."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"calculate_output is longer than {MAX_LENGTH} characters")
    out, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        number, name, char = match.groups()
        if char and char not in "+-*/^(),":
            raise FormulaError(f"unexpected {char!r} at position {match.start(3)}")
        if number or name or char:
            kind = "num" if number else "name" if name else char
            out.append((kind, number or name or char, match.start(match.lastindex)))
        pos = match.end()
    return out + [("end", "", len(text))]


class _Parser:
    def __init__(self, text: str):
        self.tokens, self.i, self.depth, self.operations = _tokens(text), 0, 0, 0

    def peek(self) -> str:
        return self.tokens[self.i][0]

    def take(self, kind: str) -> tuple[str, str, int]:
        token = self.tokens[self.i]
        if token[0] != kind:
            found = "the end" if token[0] == "end" else repr(token[1])
            if kind == "end":
                raise FormulaError(f"unexpected {found} at position {token[2]}")
            raise FormulaError(f"expected {kind!r} but found {found} at position {token[2]}")
        self.i += 1
        if kind in "+-*/^":
            self.operations += 1
            if self.operations > MAX_OPERATIONS:
                raise FormulaError(f"calculate_output has more than {MAX_OPERATIONS} operations")
        return token

    def sum(self):
        node = self.product()
        while self.peek() in ("+", "-"):
            node = (self.take(self.peek())[0], node, self.product())
        return node

    def product(self):
        node = self.unary()
        while self.peek() in ("*", "/"):
            node = (self.take(self.peek())[0], node, self.unary())
        return node

    def unary(self):
        negate = False
        while self.peek() in ("-", "+"):
            negate ^= self.take(self.peek())[0] == "-"
        node = self.power()
        return ("neg", node) if negate else node

    def power(self):
        self.depth += 1  # every nesting (parentheses, arguments, exponents) passes here
        if self.depth > MAX_DEPTH:
            raise FormulaError(f"calculate_output nests deeper than {MAX_DEPTH} levels")
        base = self.atom()
        if self.peek() == "^":
            self.take("^")
            base = ("^", base, self.unary())
        self.depth -= 1
        return base

    def atom(self):
        kind, value, pos = self.tokens[self.i]
        if kind == "num":
            return ("num", float(self.take("num")[1]))
        if kind == "name" and self.tokens[self.i + 1][0] == "(":
            return self.call(value, pos)
        if kind == "name":
            return ("var", self.take("name")[1])
        if kind != "(":
            found = "the end" if kind == "end" else repr(value)
            raise FormulaError(f"expected a value but found {found} at position {pos}")
        self.take("(")
        node = self.sum()
        self.take(")")
        return node

    def call(self, name: str, pos: int):
        if name not in FUNCTIONS:
            raise FormulaError(f"unknown function {name!r} at position {pos} (use {', '.join(FUNCTIONS)})")
        self.take("name"), self.take("(")
        args = [self.sum()]
        while self.peek() == ",":
            self.take(",")
            args.append(self.sum())
        self.take(")")
        if name not in ("min", "max") and len(args) != 1:
            raise FormulaError(f"{name}() takes one argument, not {len(args)}")
        return ("call", name, args)


def parse(text: str):
    """The formula as a tree of tuples; FormulaError if it is not one.

    >>> parse("0.5 * a + max(b, 1)")
    ('+', ('*', ('num', 0.5), ('var', 'a')), ('call', 'max', [('var', 'b'), ('num', 1.0)]))
    >>> parse("__import__('os')")
    Traceback (most recent call last):
    ...
    openft.graders.formula.FormulaError: unexpected "'" at position 11
    """
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("calculate_output must be a non-empty formula")
    parser = _Parser(text)
    tree = parser.sum()
    parser.take("end")
    return tree


def names(tree) -> set[str]:
    """The grader names a parsed formula uses.

    >>> sorted(names(parse("a * (1 - b) + min(a, c)")))
    ['a', 'b', 'c']
    """
    if tree[0] == "var":
        return {tree[1]}
    children = tree[2] if tree[0] == "call" else tree[1:] if tree[0] != "num" else ()
    return set().union(*(names(child) for child in children))


def evaluate(text: str, values: dict[str, float]) -> float:
    """The formula's value for the given grader rewards.

    >>> evaluate("-2^2 + 2^3^2 / 64", {})
    4.0
    >>> evaluate("0.5 * fuzzy + 0.5 * exact", {"fuzzy": 0.5, "exact": 1.0})
    0.75
    >>> evaluate("10 ^ 400", {})
    Traceback (most recent call last):
    ...
    openft.graders.formula.FormulaError: calculate_output could not be evaluated: math range error
    """
    try:
        result = _value(parse(text), values)
    except (ArithmeticError, ValueError) as exc:
        if isinstance(exc, FormulaError):
            raise
        raise FormulaError(f"calculate_output could not be evaluated: {exc}") from None
    if not math.isfinite(result):
        raise FormulaError(f"calculate_output is not a finite number ({result})")
    return result


def _value(tree, values: dict[str, float]) -> float:
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind == "var":
        if tree[1] not in values:
            raise FormulaError(f"calculate_output uses {tree[1]!r}, which is not one of the graders")
        return float(values[tree[1]])
    if kind == "neg":
        return -_value(tree[1], values)
    if kind == "call":
        return float(FUNCTIONS[tree[1]](*(_value(arg, values) for arg in tree[2])))
    left, right = _value(tree[1], values), _value(tree[2], values)
    if kind == "+":
        return left + right
    if kind == "-":
        return left - right
    if kind == "*":
        return left * right
    if kind == "/":
        return left / right
    return math.pow(left, right)
