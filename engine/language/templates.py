"""``{placeholder}`` strings used for URLs and header values in presets.

URLs are templates rather than JSONata because they are read far more often
than they change, and a preset author should see the URL at a glance.
Placeholders are dotted paths checked at load against the names the place
allows, so a typo fails ``signal-engine check`` instead of a live request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import quote

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


class TemplateError(Exception):
    pass


@dataclass(frozen=True)
class Template:
    source: str
    fields: tuple[tuple[str, ...], ...]
    # Values from these roots are inserted verbatim (an origin such as
    # settings.base_url); anything else is percent-encoded as a path segment.
    verbatim_roots: frozenset[str] = frozenset({"settings"})

    @classmethod
    def compile(cls, source: str, allowed: Iterable[str]) -> "Template":
        allowed = set(allowed)
        fields = []
        for match in _PLACEHOLDER.finditer(source):
            path = tuple(match.group(1).split("."))
            name = ".".join(path[:2]) if path[0] == "settings" else path[0]
            if path[0] not in allowed and name not in allowed:
                raise TemplateError(f"unknown placeholder {{{match.group(1)}}} (allowed here: "
                                    + ", ".join("{" + a + "}" for a in sorted(allowed)) + ")")
            fields.append(path)
        stray = _PLACEHOLDER.sub("", source)
        if "{" in stray or "}" in stray:
            raise TemplateError("unbalanced or malformed {placeholder}")
        return cls(source, tuple(fields))

    def render(self, context: Mapping[str, Any]) -> str:
        def substitute(match: re.Match[str]) -> str:
            path = match.group(1).split(".")
            value: Any = context
            for part in path:
                value = value.get(part) if isinstance(value, Mapping) else None
            if value is None:
                raise TemplateError(f"{{{match.group(1)}}} has no value")
            text = str(value)
            return text if path[0] in self.verbatim_roots else quote(text, safe="")

        return _PLACEHOLDER.sub(substitute, self.source)
