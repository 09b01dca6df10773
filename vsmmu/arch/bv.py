"""A tiny bit-vector interface: the same code runs on ints and on Z3 terms.

The vSMMU's transfer functions (guest vSTE -> physical STE, guest command ->
physical command, physical event -> guest event) are written with these few
operations, so the running code and the Z3 proofs about it are one text
(claripy / Hyperkernel style).  Concrete values are Python ints and bools;
symbolic ones are z3 BitVecRef / BoolRef.  `&`, `|`, `~`, `==`, `<=` work
on both directly; conditionals and connectives go through here.
"""

from __future__ import annotations

from typing import Any

from .fields import is_symbolic


def _z3():
    import z3

    return z3


def ite(cond: Any, then: Any, other: Any, width: int) -> Any:
    """`then if cond else other`; `width` sizes int operands in the symbolic case."""
    if isinstance(cond, bool):
        return then if cond else other
    z3 = _z3()
    return z3.If(cond, _term(then, width), _term(other, width))


def all_of(*conds: Any) -> Any:
    if all(isinstance(c, bool) for c in conds):
        return all(conds)
    return _z3().And(*[_bool(c) for c in conds])


def any_of(*conds: Any) -> Any:
    if all(isinstance(c, bool) for c in conds):
        return any(conds)
    return _z3().Or(*[_bool(c) for c in conds])


def not_(cond: Any) -> Any:
    return (not cond) if isinstance(cond, bool) else _z3().Not(cond)


def ule(a: Any, b: Any) -> Any:
    """Unsigned `a <= b` (z3's `<=` on bit-vectors is signed)."""
    if not is_symbolic(a) and not is_symbolic(b):
        return a <= b
    return _z3().ULE(a, b)


def implies(a: Any, b: Any) -> Any:
    return any_of(not_(a), b)


def member(value: Any, options: frozenset[int] | set[int]) -> Any:
    """`value in options` for an int or a bit-vector."""
    if not is_symbolic(value):
        return value in options
    return any_of(*[value == o for o in sorted(options)]) if options else False


def lookup(key: Any, table: dict[int, int], width: int) -> tuple[Any, Any]:
    """(found, table[key]) for a concrete table; the value is 0 when not found."""
    if not is_symbolic(key):
        return key in table, table.get(key, 0)
    found, value = False, 0
    for k, v in sorted(table.items()):
        hit = key == k
        found = any_of(found, hit)
        value = ite(hit, v, value, width)
    return found, value


def _term(x: Any, width: int) -> Any:
    return x if is_symbolic(x) else _z3().BitVecVal(x, width)


def _bool(c: Any) -> Any:
    return _z3().BoolVal(c) if isinstance(c, bool) else c
