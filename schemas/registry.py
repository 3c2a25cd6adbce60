"""One way to register: a typed, named table that plug-ins add themselves to when their module is imported.

Modalities, model sizes, tokenizer families, labelers and eval tasks each keep one `Registry`. The module that
holds a registry imports none of its plug-ins (no import circle); the code that needs the full set imports the
plug-in package explicitly (`import pipeline.eval.tasks`, `import pipeline.data.labelers`), as torchtitan's
train script imports its model packages to fill the flavor table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name no entry (nor alias) is registered under; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """Entries by name (plus optional aliases), in registration order.

    `kind` names the concept in messages ("modality", "model size"); `plural` its plural when it is not kind + "s";
    `error` the UnknownNameError subclass a lookup raises, for callers that catch one concept's misses. A name
    registered twice is an error unless `replace=True`, so two plug-ins never silently shadow each other.
    """

    def __init__(self, kind: str, plural: str | None = None, error: type[UnknownNameError] = UnknownNameError):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.error = error
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, entry: T, *, aliases: Iterable[str] = (), replace: bool = False) -> T:
        aliases = tuple(aliases)
        if not replace:
            for taken in (name, *aliases):
                if taken in self._entries or taken in self._aliases:
                    raise ValueError(f"{self.kind} {taken!r} registered twice")
        self._entries[name] = entry
        self._aliases.update({alias: name for alias in aliases})
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry and its aliases (tests that register temporary entries clean up with this)."""
        self._entries.pop(name, None)
        self._aliases = {alias: target for alias, target in self._aliases.items() if target != name}

    def canonical(self, name: str) -> str:
        """The registered name of `name` (itself, or the entry an alias points to); unknown names are an error."""
        canonical = self._aliases.get(name, name)
        if canonical not in self._entries:
            known = ", ".join(sorted(self._entries)) or "none"
            raise self.error(f"unknown {self.kind} {name!r}; known {self.plural}: {known}")
        return canonical

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._aliases.get(name, name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
