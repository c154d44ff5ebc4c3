"""A repeated field seen through a conversion applied to each element as it is read.

The write path checks how many elements a call carries before it looks at any; converting them all first
let one 4 MiB request of two million empty items cost 4 s of the event loop (and ~300 MB) to be refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, overload

S = TypeVar("S")
T = TypeVar("T")


class Converted(Sequence[T], Generic[S, T]):
    """`convert` of each of `elements`, computed when read: the length is known before any is converted."""

    __slots__ = ("_elements", "_convert")

    def __init__(self, elements: Sequence[S], convert: Callable[[S], T]) -> None:
        self._elements = elements
        self._convert = convert

    def __len__(self) -> int:
        return len(self._elements)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self._convert(element) for element in self._elements[index]]
        return self._convert(self._elements[index])

    def __iter__(self) -> Iterator[T]:
        return map(self._convert, self._elements)
