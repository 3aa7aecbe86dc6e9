"""``{placeholder}`` strings used for URLs and header values in presets.

URLs are templates rather than JSONata because they are read far more often
than they change, and a preset author should see the URL at a glance.
Placeholders are dotted paths; the compiler checks each one against what
the place allows (``check`` refuses an unknown or secret one), so a typo
fails at load instead of on a live request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .records import record

# A dotted path; a segment after the first may be an array index ({steps.find.body.records.0.Id}).
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*)\}")
# Values of the OAuth token answer (``{token.instance_url}``) are known only
# once a token is minted, after the request is built: a render without them
# leaves these placeholders as they are, and :func:`fill_token_values` fills
# them right before the request is sent.
TOKEN_ROOT = "token"
_TOKEN_PLACEHOLDER = re.compile(r"\{" + TOKEN_ROOT + r"\.([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(Exception):
    pass


@record
class Template:
    source: str
    fields: tuple[tuple[str, ...], ...]
    # Values from these roots are inserted verbatim (an origin such as
    # settings.base_url); anything else is percent-encoded as a path segment.
    verbatim_roots: frozenset[str] = frozenset({"settings", TOKEN_ROOT})

    @classmethod
    def compile(cls, source: str) -> Template:
        """Parse the placeholders; which ones a place allows is the compiler's business."""
        fields = tuple(tuple(m.group(1).split(".")) for m in _PLACEHOLDER.finditer(source))
        stray = _PLACEHOLDER.sub("", source)
        if "{" in stray or "}" in stray:
            raise TemplateError("unbalanced or malformed {placeholder}")
        return cls(source, fields)

    def settings_used(self) -> list[str]:
        return [f[1] for f in self.fields if f[0] == "settings" and len(f) > 1]

    def render(self, context: Mapping[str, Any], *, encode: bool = True) -> str:
        """Fill every placeholder; ``encode=False`` for header values, which are not URLs."""

        def substitute(match: re.Match[str]) -> str:
            path = match.group(1).split(".")
            if path[0] == TOKEN_ROOT and TOKEN_ROOT not in context:
                return match.group(0)  # filled when the token is known (fill_token_values)
            value: Any = context
            for part in path:
                if isinstance(value, list) and part.isdigit():
                    value = value[int(part)] if int(part) < len(value) else None
                else:
                    value = value.get(part) if isinstance(value, Mapping) else None
            if value is None or isinstance(value, (dict, list)):
                raise TemplateError(
                    f"{{{match.group(1)}}} has no value"
                    if value is None
                    else f"{{{match.group(1)}}} is not a single value"
                )
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if not encode:
                if "\r" in text or "\n" in text:
                    raise TemplateError(f"{{{match.group(1)}}} would put a line break in a header")
                return text
            return text if path[0] in self.verbatim_roots else quote(text, safe="")

        return _PLACEHOLDER.sub(substitute, self.source)

    @property
    def uses_token(self) -> bool:
        return any(f[0] == TOKEN_ROOT for f in self.fields)


def fill_token_values(text: str, values: Mapping[str, str], *, header: bool = False) -> str:
    """Put the token answer's values into a rendered URL or header value (verbatim, like a setting)."""

    def substitute(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if not isinstance(value, str) or not value:
            raise TemplateError(f"{{token.{match.group(1)}}} has no value: the token answer held none")
        if header and ("\r" in value or "\n" in value):
            raise TemplateError(f"{{token.{match.group(1)}}} would put a line break in a header")
        return value

    return _TOKEN_PLACEHOLDER.sub(substitute, text) if "{" in text else text
