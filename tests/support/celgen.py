"""Random DRA CEL selector cases for the differential test against Kubernetes' own CEL library.

A case is a device (every attribute type: int, bool, string, version and their list forms; capacities;
``allowMultipleAllocations``) and one selector drawn from a small typed grammar. Values come from small pools
so that comparisons are true about as often as false, and a share of the expressions is deliberately wrong
(missing attributes, type mismatches, bad literals, unknown functions, non-bool results) so that compile and
runtime errors are compared too.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

DRIVER = "gpu.example.com"
OTHER = "net.example.com"
DOMAINS = (DRIVER, OTHER, "resource.kubernetes.io", "missing.example.com")

INTS = (-3, 0, 1, 2, 7, 80, 2**40)
STRINGS = ("", "a", "H100", "h100-sxm", "fish,bird", " pad ", "10.0.0.5", "https://x.example.com:8443/p?q=1")
VERSIONS = ("1.0.0", "1.2.3", "2.0.0-rc.1", "2.0.0", "12.9.1+build.5", "0.0.1-alpha.beta")
QUANTITIES = ("0", "1", "100m", "1Ki", "1k", "1536Mi", "80Gi", "81559Mi", "4", "-2")
IDS = ("model", "index", "mig", "driverVersion", "cores", "tags", "flags", "versions", "numaNode", "nothere")


def _device(rng: random.Random, n: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    makers = (
        lambda: {"int": rng.choice(INTS)},
        lambda: {"bool": rng.random() < 0.5},
        lambda: {"string": rng.choice(STRINGS)},
        lambda: {"version": rng.choice(VERSIONS)},
        lambda: {"ints": rng.sample(INTS, rng.randint(0, 3))},
        lambda: {"bools": [rng.random() < 0.5 for _ in range(rng.randint(1, 3))]},
        lambda: {"strings": rng.sample(STRINGS, rng.randint(1, 3))},
        lambda: {"versions": rng.sample(VERSIONS, rng.randint(1, 3))},
    )
    for ident in rng.sample(IDS[:-1], rng.randint(2, 7)):
        domain = rng.choice(("", "", f"{OTHER}/", "resource.kubernetes.io/"))
        attributes[domain + ident] = rng.choice(makers)()
    capacity = {
        rng.choice(("", f"{OTHER}/")) + name: {"value": rng.choice(QUANTITIES)}
        for name in rng.sample(("memory", "cores", "slots"), rng.randint(0, 3))
    }
    device: dict[str, Any] = {"name": f"dev-{n}", "attributes": attributes, "capacity": capacity}
    if rng.random() < 0.5:
        device["allowMultipleAllocations"] = rng.random() < 0.5
    return device


@dataclass
class _Grammar:
    rng: random.Random
    depth: int = 0

    def pick(self, *options: Any) -> Any:
        """One option; callables (the recursive ones) are only expanded when chosen."""
        choice = self.rng.choice(options)
        return choice() if callable(choice) else choice

    def lit(self, value: Any) -> str:
        return json.dumps(value)

    def domain(self) -> str:
        return self.lit(self.rng.choice(DOMAINS[:2] * 3 + DOMAINS[2:]))

    def attr(self) -> str:
        name = self.rng.choice(IDS)
        if self.rng.random() < 0.2:
            return f"device.attributes[{self.domain()}][{self.lit(name)}]"
        return f"device.attributes[{self.domain()}].{name}"

    def cap(self) -> str:
        return f"device.capacity[{self.domain()}].{self.rng.choice(('memory', 'cores', 'slots', 'nothere'))}"

    def quantity(self) -> str:
        return self.pick(
            self.cap,
            lambda: f"quantity({self.lit(self.rng.choice((*QUANTITIES, '200K', '1.5.5')))})",
            lambda: f"{self.cap()}.add({self.rng.choice(INTS[:5])})",
            lambda: f"{self.cap()}.sub(quantity({self.lit(self.rng.choice(QUANTITIES))}))",
        )

    def semver(self) -> str:
        return self.pick(
            self.attr,
            lambda: f"semver({self.lit(self.rng.choice((*VERSIONS, 'v1.2', '01.2.3')))})",
            lambda: f"semver({self.lit(self.rng.choice(('v1.2', '01.2.3', '2', '1.0.0')))}, true)",
        )

    def int_expr(self) -> str:
        if self.depth > 3:
            return self.lit(self.rng.choice(INTS))
        self.depth += 1
        try:
            return self.pick(
                lambda: self.lit(self.rng.choice(INTS)),
                self.attr,
                lambda: f"{self.quantity()}.asInteger()",
                lambda: f"{self.semver()}.major()",
                lambda: f"{self.semver()}.compareTo({self.semver()})",
                lambda: f"size({self.str_expr()})",
                lambda: f"{self.attr()}.size()",
                lambda: f"({self.int_expr()} {self.pick('+', '-', '*', '/', '%')} {self.int_expr()})",
                lambda: (
                    f"[{', '.join(self.lit(i) for i in self.rng.sample(INTS, 3))}].{self.pick('sum', 'min', 'max')}()"
                ),
                lambda: f"{self.str_expr()}.indexOf({self.lit(self.rng.choice('a1,'))})",
                lambda: f"sign({self.quantity()})",
                lambda: f"[1, 2, 3][{self.rng.randint(-1, 3)}]",
                lambda: f"int({self.lit(self.rng.choice(('12', 'x', '-4')))})",
            )
        finally:
            self.depth -= 1

    def str_expr(self) -> str:
        return self.pick(
            lambda: self.lit(self.rng.choice(STRINGS)),
            self.attr,
            lambda: "device.driver",
            lambda: f"{self.attr()}.lowerAscii()",
            lambda: f"{self.attr()}.upperAscii()",
            lambda: f"{self.attr()}.trim()",
            lambda: f"{self.attr()}.replace({self.lit('a')}, {self.lit('b')})",
            lambda: f"{self.attr()}.find({self.lit(self.rng.choice(('[0-9]+', 'H.', '[a-z]*')))})",
            lambda: f"string({self.int_expr()})",
            lambda: f"{self.lit('%s-%d')}.format([{self.str_expr()}, {self.lit(self.rng.choice(INTS))}])",
            lambda: f"{self.attr()}.split({self.lit(',')}).join({self.lit('+')})",
            lambda: f"{self.attr()}.substring({self.rng.randint(0, 2)})",
            lambda: f"{self.attr()}.charAt({self.rng.randint(0, 2)})",
        )

    def list_expr(self) -> str:
        return self.pick(
            self.attr,
            lambda: f"[{', '.join(self.lit(s) for s in self.rng.sample(STRINGS, 2))}]",
            lambda: f"{self.attr()}.split({self.lit(',')})",
            lambda: f"{self.attr()}.findAll({self.lit('[a-z]+')})",
            lambda: f"lists.range({self.rng.randint(0, 4)})",
            lambda: f"[{', '.join(self.lit(i) for i in self.rng.sample(INTS, 3))}].sort()",
        )

    def bool_expr(self) -> str:
        if self.depth > 2:
            return self.atom()
        self.depth += 1
        try:
            roll = self.rng.random()
            if roll < 0.45:
                return self.atom()
            if roll < 0.85:
                return f"({self.bool_expr()} {self.pick('&&', '||')} {self.bool_expr()})"
            return self.pick(
                lambda: f"!{self.bool_expr()}",
                lambda: f"({self.bool_expr()} ? {self.bool_expr()} : {self.bool_expr()})",
                lambda: f"cel.bind(d, device.attributes[{self.domain()}], {self.bound('d')})",
                lambda: (
                    f"{self.list_expr()}.{self.pick('exists', 'all', 'exists_one')}(x, {self.element('x')})"
                ),
                lambda: (
                    f"device.attributes[{self.domain()}].{self.pick('all', 'exists')}(k, v, {self.pair('k', 'v')})"
                ),
            )
        finally:
            self.depth -= 1

    def bound(self, var: str) -> str:
        name = self.rng.choice(IDS)
        return self.pick(
            lambda: f"has({var}.{name})",
            lambda: f"{self.lit(name)} in {var}",
            lambda: f"{var}.size() > {self.rng.randint(0, 3)}",
            lambda: f"{var}[?{self.lit(name)}].orValue({self.lit(1)}) == {self.lit(self.rng.choice(INTS))}",
            lambda: f"has({var}.{name}) && {var}.{name} == {self.lit(self.rng.choice(INTS + STRINGS))}",
        )

    def element(self, var: str) -> str:
        return self.pick(
            lambda: f"{var} == {self.lit(self.rng.choice(INTS + STRINGS + (True,)))}",
            lambda: f"{var} {self.pick('<', '>=')} {self.lit(self.rng.choice(INTS))}",
            lambda: f"string({var}).startsWith({self.lit('a')})",
            lambda: f"{var}.isGreaterThan(semver({self.lit(self.rng.choice(VERSIONS))}))",
        )

    def pair(self, k: str, v: str) -> str:
        return self.pick(
            lambda: f"{k}.size() > 2",
            lambda: (
                f"{k} != {self.lit(self.rng.choice(IDS))} || {v} == {self.lit(self.rng.choice(INTS + STRINGS))}"
            ),
            lambda: f"type({v}) != string",
        )

    def atom(self) -> str:
        q, s = self.quantity, self.semver
        return self.pick(
            lambda: f"{self.int_expr()} {self.pick('==', '!=', '<', '<=', '>', '>=')} {self.int_expr()}",
            lambda: (
                f"{self.attr()} {self.pick('==', '!=')} {self.lit(self.rng.choice(INTS + STRINGS + (True, False)))}"
            ),
            lambda: f"{self.attr()} {self.pick('<', '>')} {self.pick('1.5', '2u', '-1')}",
            lambda: (
                f"{self.str_expr()}.{self.pick('startsWith', 'endsWith', 'contains', 'matches')}({self.lit(self.rng.choice(('H1', 'a', 'sxm$', '^[a-z]+$', '(', '')))})"
            ),
            lambda: f"{self.str_expr()} {self.pick('==', '<', '>=')} {self.str_expr()}",
            lambda: f"has({self.attr()})",
            lambda: f"{self.lit(self.rng.choice(IDS))} in device.attributes[{self.domain()}]",
            lambda: f"{self.domain()} in device.{self.pick('attributes', 'capacity')}",
            lambda: f"{q()}.{self.pick('isGreaterThan', 'isLessThan')}({q()})",
            lambda: f"{q()}.compareTo({q()}) {self.pick('==', '>=', '<')} 0",
            lambda: f"{q()} {self.pick('==', '!=')} {q()}",
            lambda: f"{q()}.isInteger()",
            lambda: f"{q()}.asApproximateFloat() > 1.0",
            lambda: f"{s()}.{self.pick('isGreaterThan', 'isLessThan')}({s()})",
            lambda: f"{s()} == {s()}",
            lambda: (
                f"isSemver({self.lit(self.rng.choice((*VERSIONS, 'v1', '1.0')))}{self.pick('', ', true')})"
            ),
            lambda: f"isQuantity({self.lit(self.rng.choice((*QUANTITIES, '200K', 'Mi')))})",
            lambda: f"{self.attr()}.includes({self.lit(self.rng.choice(INTS + STRINGS))})",
            lambda: f"{self.lit(self.rng.choice(INTS + STRINGS))} in {self.list_expr()}",
            lambda: (
                f"{self.list_expr()}.{self.pick('isSorted', 'size')}(){'' if self.rng.random() < 0.5 else ' == 2'}"
            ),
            lambda: (
                f"sets.{self.pick('contains', 'intersects', 'equivalent')}({self.list_expr()}, {self.list_expr()})"
            ),
            lambda: "device.allowMultipleAllocations",
            lambda: f"device.driver == {self.lit(self.pick(DRIVER, OTHER))}",
            lambda: f"isIP({self.str_expr()})",
            lambda: (
                f"cidr({self.lit(self.pick('10.0.0.0/8', '10.0.0.0/33', '::1/128'))}).containsIP({self.lit('10.0.0.5')})"
            ),
            lambda: (
                f"url({self.lit(self.pick('https://x.example.com:8443/p?q=1', 'not a url'))}).getPort() == {self.lit('8443')}"
            ),
            # Deliberately wrong: an unknown function, a method that is only a global, a non-bool result.
            self.pick(
                lambda: f"{self.attr()}.frobnicate()",
                lambda: f"{q()}.sign() == 1",
                self.int_expr,
                self.str_expr,
                lambda: f"{q()} > {q()}",
                lambda: "device.driver ==",
            ),
        )


def cases(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` cases (id, expression, driver, device), the same for the same seed."""
    rng = random.Random(seed)
    grammar = _Grammar(rng)
    return [
        {
            "id": f"gen-{seed}-{n}",
            "expression": grammar.bool_expr(),
            "driver": DRIVER,
            "device": _device(rng, n),
        }
        for n in range(count)
    ]
