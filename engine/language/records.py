"""Frozen records for the classes a start builds once: a dataclass's behaviour without its generated code.

A warm dry run spends most of its time importing; ``@dataclass(frozen=True)``
compiles six methods for each class it decorates, which for the preset
model, settings, templates and contracts was a fifth of a warm start. Classes
built per event (outcomes, requests) stay plain dataclasses: their generated
methods are faster per call.
"""

from __future__ import annotations

from dataclasses import MISSING, FrozenInstanceError, dataclass, field
from typing import Any, TypeVar, dataclass_transform

_Record = TypeVar("_Record", bound=type)
_METHODS = ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: _Record) -> _Record:
    """A frozen dataclass whose methods are shared functions rather than generated code.

    ``@dataclass(frozen=True)`` compiles six methods per class, about 0.6 ms of every start:
    11 ms for the preset model's 17 classes alone. For classes whose instances are built when a
    preset is loaded, not per event, the methods may be slower per call; they keep the dataclass's
    behaviour (keyword and positional construction, defaults and factories, field-wise equality
    and hash, a read-only instance, the same repr), and :func:`dataclasses.replace` and
    :func:`dataclasses.fields` still work.
    """
    own = [name for name in _METHODS if name in cls.__dict__]
    if own:  # a dataclass would keep them (or refuse); one of these would silently replace them
        raise TypeError(f"{cls.__qualname__} defines {', '.join(own)}: make it a dataclass, not a record")
    undocumented = cls.__doc__ is None
    if undocumented:
        # Any text that is not empty: for a class without one, dataclass builds a docstring with
        # inspect.signature, which parses object.__init__'s text signature with tokenize (compiling
        # tokenize's patterns costs a start about 3 ms). The real one is set below.
        cls.__doc__ = cls.__name__
    made: Any = dataclass(init=False, repr=False, eq=False)(cls)  # fields and replace(); no generated code
    fields = tuple(made.__dataclass_fields__.values())
    names = tuple(f.name for f in fields)
    if undocumented:
        cls.__doc__ = f"{cls.__name__}({', '.join(names)})"
    known = frozenset(names)
    shown = tuple(f.name for f in fields if f.repr)
    compared = tuple(f.name for f in fields if f.compare)
    hashed = tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))
    title = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(
                f"{title}.__init__() takes {len(names) + 1} positional arguments but {len(args) + 1} were given"
            )
        values = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in known:
                raise TypeError(f"{title}.__init__() got an unexpected keyword argument {name!r}")
            if name in values:
                raise TypeError(f"{title}.__init__() got multiple values for argument {name!r}")
            values[name] = value
        for f in fields:
            if f.name in values:
                value = values[f.name]
            elif f.default is not MISSING:
                value = f.default
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            else:
                raise TypeError(f"{title}.__init__() missing 1 required positional argument: {f.name!r}")
            object.__setattr__(self, f.name, value)

    def __repr__(self: Any) -> str:
        inside = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{type(self).__qualname__}({inside})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return tuple(getattr(self, n) for n in compared) == tuple(getattr(other, n) for n in compared)

    def __hash__(self: Any) -> int:
        return hash(tuple(getattr(self, n) for n in hashed))

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is made or name in known:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(made, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is made or name in known:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(made, self).__delattr__(name)

    for method in (__init__, __repr__, __eq__, __hash__, __setattr__, __delattr__):
        method.__qualname__ = f"{title}.{method.__name__}"
        setattr(made, method.__name__, method)
    return made
