"""Label and field selectors, parsed and matched the way the kube-apiserver does.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists),
``!k`` (does not exist), ``k>n`` / ``k<n`` (integer comparison), comma separated (all must hold).
Field selectors: ``f=v``, ``f==v``, ``f!=v``, comma separated, with ``\\,``, ``\\=`` and ``\\\\`` escapes;
which fields may be used depends on the kind (see ``driver.sim.kinds``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from driver.kube.api.names import label_value_errors, qualified_name_errors


class SelectorError(ValueError):
    """A selector that does not parse; the server answers 400 BadRequest with this message."""


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return present and (number > bound if self.operator == "gt" else number < bound)


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(r.matches(labels or {}) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


_TOKEN_RE = re.compile(r"\s*(==|!=|=|!|\(|\)|,|<|>|[^\s=!(),<>]+)")


def _tokenize(text: str) -> list[str]:
    tokens = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(text, pos)
        if not match:
            raise SelectorError(f"unable to parse requirement: unexpected character at {pos} in {text!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise SelectorError(f"unable to parse requirement: unexpected end of selector {self.text!r}")
        self.pos += 1
        return token

    def parse(self) -> LabelSelector:
        requirements = []
        while self.peek() is not None:
            requirements.append(self.requirement())
            token = self.peek()
            if token is not None:
                if token != ",":
                    raise SelectorError(f"found '{token}', expected: ',' or 'end of string'")
                self.take()
                if self.peek() is None:
                    raise SelectorError("found 'end of string', expected: identifier")
        return LabelSelector(tuple(requirements))

    def requirement(self) -> LabelRequirement:
        token = self.take()
        if token == "!":
            return LabelRequirement(self.key(self.take()), "!")
        key = self.key(token)
        op = self.peek()
        if op is None or op == ",":
            return LabelRequirement(key, "exists")
        self.take()
        if op in ("=", "==", "!="):
            value = self.peek()
            value = "" if value in (None, ",") else self.take()
            return LabelRequirement(key, "!=" if op == "!=" else "=", (self.value(value),))
        if op in ("in", "notin"):
            return LabelRequirement(key, op, self.value_set())
        if op in (">", "<"):
            bound = self.take()
            if not re.fullmatch(r"-?\d+", bound):
                raise SelectorError(
                    f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {bound}"
                )
            return LabelRequirement(key, "gt" if op == ">" else "lt", (bound,))
        raise SelectorError(f"found '{op}', expected: in, notin, =, ==, !=, gt, lt")

    def value_set(self) -> tuple[str, ...]:
        if self.take() != "(":
            raise SelectorError("found something else, expected: '('")
        values: list[str] = []
        while True:
            token = self.take()
            if token == ")":
                return tuple(values)
            if token == ",":
                continue
            values.append(self.value(token))

    @staticmethod
    def key(token: str) -> str:
        msgs = qualified_name_errors(token)
        if msgs:
            raise SelectorError(
                f"unable to parse requirement: invalid label key {token!r}: {'; '.join(msgs)}"
            )
        return token

    @staticmethod
    def value(token: str) -> str:
        msgs = label_value_errors(token)
        if msgs:
            raise SelectorError(
                f"unable to parse requirement: invalid label value: {token!r}: {'; '.join(msgs)}"
            )
        return token


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse a ``labelSelector`` query parameter (empty or None selects everything)."""
    if not text or not text.strip():
        return LabelSelector()
    return _Parser(text).parse()


# -- field selectors -------------------------------------------------------------------------------

FieldGetter = Callable[[Mapping[str, object]], str]


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    negate: bool
    value: str


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, object], getters: Mapping[str, FieldGetter]) -> bool:
        for req in self.requirements:
            equal = getters[req.field](obj) == req.value
            if equal == req.negate:
                return False
        return True

    def fields(self) -> set[str]:
        return {r.field for r in self.requirements}

    def value_of(self, field: str) -> str | None:
        """The value a positive ``field=value`` term pins, if any (used to narrow namespaces)."""
        for req in self.requirements:
            if req.field == field and not req.negate:
                return req.value
        return None


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out, escaped = [], False
    for char in text:
        if escaped:
            if char not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{char}")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    if escaped:
        raise SelectorError("invalid field selector: unterminated escape sequence")
    return "".join(out)


def _split_term(term: str) -> tuple[str, str, str]:
    """(field, operator, raw value) at the first unescaped ``!=``, ``==`` or ``=``."""
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op) :]
        i += 1
    raise SelectorError(f"invalid selector: '{term}'; can't understand '{term}'")


def parse_field_selector(text: str | None, getters: Mapping[str, FieldGetter]) -> FieldSelector:
    """Parse a ``fieldSelector`` for a kind whose selectable fields are ``getters``."""
    if not text or not text.strip():
        return FieldSelector()
    requirements = []
    for term in _split_unescaped(text, ","):
        if not term.strip():
            continue
        field, op, raw = _split_term(term)
        field = field.strip()
        if field not in getters:
            raise SelectorError(f"field label not supported: {field}")
        requirements.append(FieldRequirement(field, op == "!=", _unescape(raw)))
    return FieldSelector(tuple(requirements))
