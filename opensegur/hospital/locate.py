"""Where a key path lies in a TOML text: ``tomllib`` gives values without positions, and a hospital's engineer
needs the line to fix.

A small scanner of the TOML line structure — table headers, arrays of tables, ``key = value`` lines and the
elements of arrays (on one line or several) — records the first line of each concrete path such as
``("sites", 1, "units", 0, "code")``; a path not found falls back to its deepest known ancestor.
"""

from __future__ import annotations

from collections.abc import Sequence

PathPart = str | int


def locate(text: str, path: Sequence[PathPart]) -> int:
    """1-based line of ``path`` in ``text``, or of its deepest ancestor that is written there (else 1)."""
    index = _Scanner(text).index
    for n in range(len(path), 0, -1):
        line = index.get(tuple(path[:n]))
        if line is not None:
            return line
    return 1


def _split_keys(text: str) -> list[str]:
    """``a."b.c".d`` → ``["a", "b.c", "d"]``."""
    keys, current, quote = [], "", ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                current += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            keys.append(current.strip())
            current = ""
        else:
            current += ch
    keys.append(current.strip())
    return keys


class _Scanner:
    def __init__(self, text: str) -> None:
        self.index: dict[tuple[PathPart, ...], int] = {}
        self._arrays_of_tables: dict[tuple[PathPart, ...], int] = {}  # concrete path -> last index
        self._table: tuple[PathPart, ...] = ()
        # The value being read across lines: its nesting (arrays only are indexed) and an open multi-line string.
        self._stack: list[tuple[tuple[PathPart, ...] | None, int]] = []  # (array path or None, element count)
        self._expect_element = False
        self._string = ""
        for lineno, line in enumerate(text.splitlines(), 1):
            self._line(line, lineno)

    def _record(self, path: tuple[PathPart, ...], lineno: int) -> None:
        self.index.setdefault(path, lineno)

    def _concrete(self, keys: list[str]) -> tuple[PathPart, ...]:
        out: tuple[PathPart, ...] = ()
        for key in keys:
            out += (key,)
            if out in self._arrays_of_tables:
                out += (self._arrays_of_tables[out],)
        return out

    def _line(self, line: str, lineno: int) -> None:
        if self._string or self._stack:
            self._value(line, 0, lineno)
            return
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            return
        if stripped.startswith("[["):
            keys = _split_keys(stripped[2 : stripped.find("]]")])
            array = self._concrete(keys[:-1]) + (keys[-1],)
            self._arrays_of_tables[array] = self._arrays_of_tables.get(array, -1) + 1
            self._table = array + (self._arrays_of_tables[array],)
            self._record(array, lineno)
            self._record(self._table, lineno)
            return
        if stripped.startswith("["):
            self._table = self._concrete(_split_keys(stripped[1 : stripped.find("]")]))
            self._record(self._table, lineno)
            return
        equals = self._key_end(line)
        if equals < 0:
            return
        keys = _split_keys(line[:equals])
        for n in range(1, len(keys) + 1):
            self._record(self._table + tuple(keys[:n]), lineno)
        self._value(line, equals + 1, lineno, self._table + tuple(keys))

    @staticmethod
    def _key_end(line: str) -> int:
        quote = ""
        for i, ch in enumerate(line):
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "=":
                return i
        return -1

    def _value(self, line: str, start: int, lineno: int, path: tuple[PathPart, ...] | None = None) -> None:
        """Scan a value (or its continuation), recording the line of each array element."""
        i = start
        while i < len(line):
            if self._string:
                end = line.find(self._string, i)
                if end < 0:
                    return
                i = end + len(self._string)
                self._string = ""
                continue
            ch = line[i]
            if ch.isspace() or ch == ",":
                if ch == "," and self._stack:
                    self._expect_element = True
                i += 1
                continue
            if ch == "#":
                return
            if self._expect_element and self._stack and ch not in "]}":
                array, count = self._stack[-1]
                if array is not None:
                    self._record(array + (count,), lineno)
                self._stack[-1] = (array, count + 1)
            self._expect_element = False
            if ch in "[{":
                parent = self._element_path(path)
                self._stack.append((parent if ch == "[" else None, 0))
                self._expect_element = ch == "["
            elif ch in "]}":
                if self._stack:
                    self._stack.pop()
            elif line.startswith(('"""', "'''"), i):
                self._string = line[i : i + 3]
                i += 3
                continue
            elif ch in "\"'":
                end = i + 1
                while end < len(line) and line[end] != ch:
                    end += 2 if ch == '"' and line[end] == "\\" else 1
                i = end
            i += 1

    def _element_path(self, path: tuple[PathPart, ...] | None) -> tuple[PathPart, ...] | None:
        """The path of the array being opened: the key's, or the current element of the enclosing array."""
        if not self._stack:
            return path
        array, count = self._stack[-1]
        return array + (count - 1,) if array is not None else None
