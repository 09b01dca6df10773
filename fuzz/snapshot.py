"""Reset a booted object graph in place, without copying it.

`Snapshot(root)` walks every object reachable from `root` once and keeps a
shallow copy of each mutable one's state: a dict's items, a list's, a set's or a
deque's elements, an object's `__dict__`.  `restore()` puts each state back into the
same object, so every object keeps its identity across runs (the memory
observers, bound to the booted monitor, stay valid) and whatever a run
created is simply dropped.  A restore is one C-level slice assignment per
object (a few hundred for the fuzzing platform) where `copy.deepcopy` made a
Python call per value (about 4,800).

Objects the walk must not touch, such as the physical memory that keeps its
own journal, are passed as `exclude`.  A type whose state the walk cannot see
(no `__dict__`, a C extension) is refused when the snapshot is taken, so a new
kind of object in the model fails loudly rather than leaking between runs.
"""

from __future__ import annotations

import enum
import types
from collections import deque
from collections.abc import Iterable

# Values with no state of their own to restore (their contents, when they are
# containers, are walked).
_ATOMIC = (int, float, complex, str, bytes, bool, type(None), range, type, enum.Enum,
           types.BuiltinFunctionType, types.ModuleType)
_IMMUTABLE_CONTAINERS = (tuple, frozenset)
_CONTAINERS = (dict, list, set, deque, bytearray)  # the mutable ones _take saves


def _restore_dict(obj: dict, saved: dict) -> None:
    obj.clear()
    obj.update(saved)


def _restore_list(obj: list, saved: list) -> None:
    obj[:] = saved


def _restore_set(obj: set, saved: set) -> None:
    obj.clear()
    obj |= saved


def _restore_deque(obj: deque, saved: list) -> None:
    obj.clear()
    obj.extend(saved)


def _restore_bytearray(obj: bytearray, saved: bytes) -> None:
    obj[:] = saved


def _restore_attrs(obj: object, saved: dict) -> None:
    _restore_dict(obj.__dict__, saved)


_UNSET = object()  # a slot with no value


def _restore_slots(obj: object, saved: dict) -> None:
    for name, value in saved.items():
        if value is _UNSET:
            if hasattr(obj, name):
                object.__delattr__(obj, name)
        else:
            object.__setattr__(obj, name, value)


def _frozen(obj: object) -> bool:
    params = getattr(type(obj), "__dataclass_params__", None)
    return params is not None and params.frozen


def _slots(cls: type) -> list[str]:
    return [name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())
            if name not in ("__dict__", "__weakref__")]


class Snapshot:
    """The state of every mutable object reachable from `root`, restorable in place."""

    def __init__(self, root: object, exclude: Iterable[object] = ()):
        self._saved: list[tuple] = []  # (restore function, object, saved state)
        seen = {id(x) for x in exclude}
        todo = [root]
        while todo:
            obj = todo.pop()
            if id(obj) in seen or isinstance(obj, _ATOMIC):
                continue
            seen.add(id(obj))
            todo.extend(self._take(obj))

    def _take(self, obj: object) -> Iterable[object]:
        """Save `obj`'s own state; return what it refers to."""
        save = self._saved.append
        if isinstance(obj, _IMMUTABLE_CONTAINERS):
            return obj
        if isinstance(obj, types.MethodType):
            return (obj.__self__,)
        if isinstance(obj, types.FunctionType):  # what a closure captured is walked (a
            # captured object is restored; a cell rebound with `nonlocal` would not be)
            return [cell.cell_contents for cell in obj.__closure__ or ()]
        refs: list[object] = []
        if isinstance(obj, dict):
            save((_restore_dict, obj, dict(obj)))
            refs += [*obj.keys(), *obj.values()]
        elif isinstance(obj, list):
            save((_restore_list, obj, list(obj)))
            refs += obj
        elif isinstance(obj, set):
            save((_restore_set, obj, set(obj)))
            refs += obj
        elif isinstance(obj, deque):
            save((_restore_deque, obj, list(obj)))
            refs += obj
        elif isinstance(obj, bytearray):
            save((_restore_bytearray, obj, bytes(obj)))
        slots = _slots(type(obj))
        if slots:
            state = {n: getattr(obj, n, _UNSET) for n in slots}
            save((_restore_slots, obj, state))
            refs += [v for v in state.values() if v is not _UNSET]
        if hasattr(obj, "__dict__"):
            if not _frozen(obj):  # a frozen dataclass's own fields cannot change
                save((_restore_attrs, obj, dict(obj.__dict__)))
            refs += obj.__dict__.values()
        elif not (slots or isinstance(obj, _CONTAINERS)):
            raise TypeError(f"cannot snapshot a {type(obj).__qualname__}: its state is "
                            "not in a __dict__, __slots__ or a built-in container")
        return refs

    def __len__(self) -> int:
        """How many object states a restore writes back."""
        return len(self._saved)

    def restore(self) -> None:
        """Every object back to its state when the snapshot was taken."""
        for put, obj, saved in self._saved:
            put(obj, saved)


class Reset:
    """`with reset:` runs on a booted system, then puts it back as it was: its
    objects from a `Snapshot`, its physical memory `mem` from memory's own
    write journal (and memory's observers, which a run may add to)."""

    def __init__(self, root: object, mem) -> None:
        self.mem = mem
        self.snapshot = Snapshot(root, exclude=(mem,))
        self._observers = list(mem.observers)
        self._busy = False
        mem.checkpoint()

    def __enter__(self) -> None:
        if self._busy:
            raise RuntimeError("a run is already under way on this booted system")
        self._busy = True

    def __exit__(self, *exc: object) -> None:
        self.mem.observers[:] = self._observers
        self.mem.rollback()
        self.snapshot.restore()
        self._busy = False
