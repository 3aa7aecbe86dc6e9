"""Auth kinds whose credential is a setting: bearer tokens, API keys and HTTP Basic.

Nothing is minted, so nothing can be refreshed: a 401 or 403 means the
setting is wrong (or lacks a permission), and the events wait in the dead
letters (``auth_rejected``) until a person fixes it and replays them.
"""

from __future__ import annotations

import base64

from ...language.model import AuthSpec
from ...language.settings import Settings
from ...language.templates import TemplateError
from ...redaction import Redactor
from .base import AuthFailure

STATIC_KINDS = frozenset({"bearer", "api_key", "basic"})
REFUSED_STATUSES = frozenset({401, 403})


def refuses_static_credential(spec: AuthSpec | None, status: int | None) -> bool:
    """A 401 or 403 to a credential that is a setting: only a person can fix it, so it is never final.

    The engine decides this, not the preset: a rule that says ``fail`` on such
    an answer (or no rule at all, whose default is ``fail``) would turn a
    wrong or rotated key into lost events. The preset's ``message`` still
    says what to fix.
    """
    return spec is not None and spec.type in STATIC_KINDS and status in REFUSED_STATUSES


class _SettingAuth:
    """A credential read once from the settings."""

    mints = 0

    def __init__(self, spec: AuthSpec, secret: str, redactor: Redactor) -> None:
        self.spec = spec
        self._secret = secret
        redactor.add(secret)

    async def credential(self) -> str:
        if not self._secret:
            raise AuthFailure(f"no credential: the {self.spec.type} setting is empty", fatal=True)
        return self._secret

    async def refresh(self, rejected: str) -> bool:
        return False


class BearerAuth(_SettingAuth):
    """``Authorization: Bearer <token>``: the token is a secret setting (a private-app token)."""

    def __init__(self, spec: AuthSpec, settings: Settings, redactor: Redactor) -> None:
        super().__init__(spec, str(settings[spec.credential_setting or ""] or ""), redactor)


class ApiKeyAuth(_SettingAuth):
    """A key in a named header or query parameter."""

    def __init__(self, spec: AuthSpec, settings: Settings, redactor: Redactor) -> None:
        super().__init__(spec, str(settings[spec.credential_setting or ""] or ""), redactor)


class BasicAuth(_SettingAuth):
    """HTTP Basic from username and password templates; the engine does the base64."""

    def __init__(self, spec: AuthSpec, settings: Settings, redactor: Redactor) -> None:
        context = {"settings": dict(settings.values)}
        try:
            username = spec.username.render(context, encode=False) if spec.username else ""
            password = spec.password.render(context, encode=False) if spec.password else ""
        except TemplateError:
            username = password = ""
        pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii") if username else ""
        super().__init__(spec, pair, redactor)
        for template, value in ((spec.username, username), (spec.password, password)):
            if template is not None and any(n in settings.secret_names for n in template.settings_used()):
                redactor.add(value)
