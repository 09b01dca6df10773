"""Resetting a booted system in place: no run's effects reach the next one.

The leak tests compare a canonical fingerprint of everything reachable from the
booted system (objects, containers, physical memory and its observers) before
any run with the fingerprint after each of many random programs, and run
A, B, A to see A's result and coverage come back identical."""

from __future__ import annotations

import array
import enum
import random
import types
from collections import Counter, deque
from dataclasses import dataclass

import pytest

from fuzz.bench.execs import corpus
from fuzz.harness import Settings, make_runner
from fuzz.program import OP_BY_NAME, Op, decode
from fuzz.snapshot import Snapshot
from vsmmu.hw.memory import PhysMem


# ------------------------------------------------------------ the mechanism
class Node:
    def __init__(self):
        self.items = [1, 2]
        self.table = {"a": [3]}
        self.seen = {4}
        self.queue = deque([5])


class Slotted:
    __slots__ = ("x", "y")

    def __init__(self):
        self.x = 1


class Tally(Counter):
    pass


def test_restore_puts_state_back_into_the_same_objects():
    node = Node()
    inner, items = node.table["a"], node.items
    snap = Snapshot(node)
    node.items.append(9)
    node.table["a"].append(9)
    node.table["b"] = Node()
    node.seen.clear()
    node.queue.appendleft(0)
    node.extra = "new"
    node.items = []  # rebound: the original list must come back, unchanged
    snap.restore()
    assert vars(node).keys() == {"items", "table", "seen", "queue"}
    assert node.items is items and node.items == [1, 2]
    assert node.table == {"a": [3]} and node.table["a"] is inner
    assert node.seen == {4} and list(node.queue) == [5]


def test_slots_dict_subclasses_and_immutable_containers():
    slotted, tally = Slotted(), Tally(a=1)
    tally.note = "n"
    root = (slotted, (tally,), frozenset({"f"}), types.MethodType(lambda self: 0, Node()))
    snap = Snapshot(root)
    slotted.x, slotted.y = 2, 3
    tally["b"] += 1
    tally.note = "changed"
    root[3].__self__.items.append(7)
    snap.restore()
    assert slotted.x == 1 and not hasattr(slotted, "y")
    assert tally == Tally(a=1) and tally.note == "n"
    assert root[3].__self__.items == [1, 2]


def test_what_a_closure_captured_is_restored():
    captured = []
    root = {"hook": lambda: captured.append(1)}
    snap = Snapshot(root)
    root["hook"]()
    snap.restore()
    assert captured == []


def test_excluded_objects_are_left_alone():
    node, kept = Node(), Node()
    node.other = kept
    snap = Snapshot(node, exclude=(kept,))
    kept.items.append(9)
    snap.restore()
    assert kept.items == [1, 2, 9]


class Colour(enum.Enum):
    RED = 1


@dataclass(frozen=True)
class Frozen:
    colour: Colour
    values: tuple


def test_atomic_values_are_not_saved_and_frozen_dataclasses_are_walked_through():
    inner = [1]
    root = [Frozen(Colour.RED, (1, "a", b"b", None, len, inner))]
    snap = Snapshot(root)
    assert len(snap) == 2  # the two lists: nothing else here can change
    inner.append(2)
    root.append(3)
    snap.restore()
    assert inner == [1] and len(root) == 1


def test_state_it_cannot_see_is_refused_when_the_snapshot_is_taken():
    with pytest.raises(TypeError, match="cannot snapshot a array"):
        Snapshot({"samples": array.array("i", [1])})


# ------------------------------------------------------------ no leaks, on the model
def fingerprint(root) -> list:
    """Everything reachable from `root`, object identities replaced by the order
    in which a breadth-first walk first meets them."""
    index: dict[int, int] = {}
    todo: list = []
    out: list = []

    def ref(x):
        if isinstance(x, (int, float, str, bytes, type(None), enum.Enum)):
            return x
        if isinstance(x, (type, types.FunctionType, types.BuiltinFunctionType)):
            return ("code", x.__qualname__)
        if id(x) not in index:
            index[id(x)] = len(index)
            todo.append(x)
        return ("ref", index[id(x)])

    ref(root)
    while todo:
        x = todo.pop(0)
        if isinstance(x, PhysMem):  # its page maps are only ever read sorted
            out.append(("PhysMem", sorted((k, bytes(v)) for k, v in x._pages.items()),
                        sorted(x._owner.items(), key=repr), dict(x._journal or {}),
                        sorted((repr(o), sorted(p)) for o, p in x._held.items() if p),
                        [ref(o) for o in x.observers]))
        elif isinstance(x, dict):
            out.append((type(x).__name__, [(ref(k), ref(v)) for k, v in x.items()]))
        elif isinstance(x, (list, tuple, deque)):
            out.append((type(x).__name__, [ref(v) for v in x]))
        elif isinstance(x, (set, frozenset)):
            out.append((type(x).__name__, sorted(repr(ref(v)) for v in x)))
        elif isinstance(x, bytearray):
            out.append(("bytearray", bytes(x)))
        elif isinstance(x, types.MethodType):
            out.append(("method", x.__func__.__qualname__, ref(x.__self__)))
        if hasattr(x, "__dict__") and not isinstance(x, (types.MethodType, PhysMem)):
            out.append((type(x).__qualname__, [(k, ref(v)) for k, v in vars(x).items()]))
        for name in getattr(type(x), "__slots__", ()):
            out.append((name, ref(getattr(x, name, "<unset>"))))
    return out


def lifecycle_programs(n: int, seed: int) -> list[list[Op]]:
    """Programs of random operations with the hypervisor destroying and
    re-creating guests in the middle of them."""
    rng = random.Random(seed)
    programs = []
    for data in corpus("system", n, seed):
        ops = decode(data)
        slot = rng.randrange(2)
        at = rng.randrange(len(ops) + 1)
        ops[at:at] = [Op(OP_BY_NAME["destroy"], (slot,)), *ops[:at],
                      Op(OP_BY_NAME["create"], (slot,))]
        programs.append(ops)
    return programs


def programs_for(target: str) -> list[list[Op]]:
    if target == "system":
        return lifecycle_programs(30, seed=1) + [decode(d) for d in corpus(target, 30, 2)]
    return [decode(d) for d in corpus(target, 60, 3)]


def observable(result) -> tuple:
    v = result.violation
    return (result.ops, None if v is None else (v.invariant, v.step), sorted(result.coverage))


@pytest.mark.parametrize("target", ["system", "virtio-iommu", "smmu"])
def test_no_run_leaks_into_the_next(target):
    runner = make_runner(target, Settings(z3=False))
    booted = fingerprint(runner.template)
    programs = programs_for(target)
    first = [observable(runner.run(ops)) for ops in programs]
    assert fingerprint(runner.template) == booted
    for i, ops in enumerate(programs[:20]):  # A, then B, then A again
        runner.run(programs[-1 - i])
        assert observable(runner.run(ops)) == first[i]
        assert fingerprint(runner.template) == booted


def test_the_lifecycle_programs_do_destroy_and_create_guests():
    runner = make_runner("system", Settings(monitor=False))
    destroyed = created = 0
    for ops in lifecycle_programs(10, seed=1):
        with runner.session() as s:
            for op in ops:
                s.step(op)
                if op.spec.name == "destroy":
                    destroyed += f"g{op.guest}" not in runner.template.hyp.guests
                if op.spec.name == "create":
                    created += f"g{op.guest}" in runner.template.hyp.guests
        assert set(runner.template.hyp.guests) == {"g0", "g1"}
    assert destroyed and created


def test_a_run_cannot_start_inside_another():
    runner = make_runner("smmu")
    with runner.session(), pytest.raises(RuntimeError, match="already under way"):
        with runner.session():
            pass
