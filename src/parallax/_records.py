"""Small value classes without ``dataclasses``.

``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``,
``tokenize``) and compiles each class's methods when the class is created:
about 6 ms for the module and 0.3-1 ms per class, more than the rest of a
first ``parallax.map`` call. The records on that call's path derive from
:class:`Record` instead: a written-out ``__init__`` (so type checkers see the
signature) and ``__match_args__`` (the fields, in order; also its
``__slots__``), from which this base derives what ``@dataclass`` would
generate: ``__repr__``, ``__eq__``, ``__hash__`` (frozen records) and
``replace``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: keeps this module light
if TYPE_CHECKING:
    from typing import Any, TypeVar

    R = TypeVar("R", bound="Record")

__all__ = ["FrozenRecord", "Record"]


class Record:
    """A value class whose fields are its ``__match_args__``."""

    __slots__ = ()
    __match_args__: tuple[str, ...] = ()

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__match_args__)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record) or type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable, as @dataclass(eq=True)

    def __reduce__(self) -> tuple[Any, ...]:
        # By keyword, through __init__: frozen records refuse setattr, which
        # pickle's default for __slots__ uses.
        return (_rebuild, (type(self), {name: getattr(self, name) for name in self.__match_args__}))

    def replace(self: R, **changes: Any) -> R:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        fields = {name: getattr(self, name) for name in self.__match_args__}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"{type(self).__qualname__} has no field(s) {sorted(unknown)}")
        fields.update(changes)
        return type(self)(**fields)


class FrozenRecord(Record):
    """A record that cannot change once made; hashable, as ``@dataclass(frozen=True)``.

    ``__init__`` sets its fields with ``object.__setattr__``.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

    def __hash__(self) -> int:  # type: ignore[override]  # frozen: hashable again
        return hash(self._fields())


def _rebuild(cls: type[R], fields: dict[str, Any]) -> R:
    return cls(**fields)
