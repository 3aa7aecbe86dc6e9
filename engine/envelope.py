"""The request envelope: ``{method, url, headers, body}``, and its masked view.

Dry runs, outcomes, dead letters, golden files and logs all show requests;
the credential's place in them is always shown as the mask. Where a
credential goes (a header, or a query parameter) is the preset's ``auth``
section and is the same for every auth kind, so the masked view a person
sees and the value on the wire come from one template and cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from .redaction import MASK

if TYPE_CHECKING:
    from .language.model import AuthSpec


@dataclass
class HttpRequest:
    """One request as the engine means it; ``query`` is kept apart so it can be masked and encoded once."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    query: list[tuple[str, str]] = field(default_factory=list)
    body: Any = None  # a JSON document, sent as JSON
    form: dict[str, str] | None = None  # sent as application/x-www-form-urlencoded
    authenticated: bool = True  # carries the preset's credential (a token request does not)

    def full_url(self) -> str:
        return with_query(self.url, self.query)

    def sent_headers(self) -> dict[str, str]:
        """The headers that go out: a Content-Type describes a body, so none without one."""
        if self.body is None and self.form is None:
            return {k: v for k, v in self.headers.items() if k.lower() != "content-type"}
        return dict(self.headers)


def with_query(url: str, query: Sequence[tuple[str, str]]) -> str:
    """``url`` plus the encoded query; repeated keys stay repeated (``a[]=x&a[]=y``)."""
    if not query:
        return url
    encoded = urlencode(list(query), quote_via=quote, safe="")
    return f"{url}{'&' if '?' in url else '?'}{encoded}"


def apply_credential(spec: AuthSpec, request: HttpRequest, credential: str) -> None:
    """Put the credential where the preset says: a header, or a query parameter."""
    value = spec.render(credential)
    if spec.placement == "query":
        request.query = [(k, v) for k, v in request.query if k != spec.header] + [(spec.header or "", value)]
    elif spec.header:
        request.headers[spec.header] = value


# Form fields of token requests that carry credentials.
SECRET_FORM_FIELDS = frozenset({"client_secret", "refresh_token", "code", "password", "code_verifier"})


def masked_view(spec: AuthSpec | None, request: HttpRequest, *, as_sent: bool = False) -> dict[str, Any]:
    """The request as a person may see it: every credential's place shown as the mask.

    That is the preset's credential (header or query parameter), any
    ``Authorization`` header (its scheme kept: ``Basic ***``), and the
    secret fields of a token request's form. A request the engine built
    carries no credential yet, so its view shows where it will go;
    ``as_sent=True`` views a request as it went out, and masks the
    credential only where it actually is (a token request carries none).
    """
    headers = {
        name: (_masked_authorization(value) if name.lower() == "authorization" else value)
        for name, value in request.sent_headers().items()
    }
    url = request.full_url()
    if spec is not None and request.authenticated:
        value = spec.render(MASK)
        if spec.placement == "query":
            if not as_sent or any(k == spec.header for k, _ in request.query):
                others = [(k, v) for k, v in request.query if k != spec.header]
                url = with_query(request.url, others)
                url += f"{'&' if '?' in url else '?'}{quote(spec.header or '', safe='')}={value}"
        elif spec.header and (not as_sent or spec.header in headers):
            headers[spec.header] = value
    view: dict[str, Any] = {"method": request.method, "url": url, "headers": headers}
    if request.form is not None:
        view["form"] = {k: (MASK if k in SECRET_FORM_FIELDS else v) for k, v in request.form.items()}
    elif request.body is not None:
        view["body"] = request.body
    return view


def _masked_authorization(value: str) -> str:
    scheme, _, rest = value.partition(" ")
    return f"{scheme} {MASK}" if rest else MASK
