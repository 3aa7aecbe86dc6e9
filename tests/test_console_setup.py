"""Setting up an integration, below the pages: both stores keep it (secrets sealed), a file's name is refused,
a wrong key is refused with the reason, and a saved secret joins the redactor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict

from engine.compile import load_preset
from engine.console.security import Guard
from engine.console.setup import Setup
from engine.console.source import Configured, ConsoleSource
from engine.state.console_integrations import SecretBox, SecretsUnavailable, StoredIntegration
from engine.state.redis import RedisState
from engine.state.sqlite import SqliteState
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures

cryptography = pytest.importorskip("cryptography.fernet")
KEY = cryptography.Fernet.generate_key().decode()
SECRET = "cs-" + cryptography.Fernet.generate_key().decode()[:24]
FORM = MultiDict(
    [
        ("name", "outreach-eu"),
        ("setting.client_id", "client-eu"),
        ("setting.client_secret", SECRET),
        ("setting.refresh_token", "rt-" + SECRET),
        ("setting.consent_categories.present", "1"),
        ("setting.consent_categories", "marketing"),
    ]
)


def setup_over(backend: Any, configured: tuple[Configured, ...] = (), key: str | None = KEY) -> Setup:
    source = ConsoleSource(backend, configured=configured)
    return Setup.of(source, Guard(), {"SIGNAL_CONSOLE_SECRET_KEY": key} if key else {})


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_both_stores_keep_a_saved_integration_with_its_secrets_sealed(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    backend: Any = SqliteState(tmp_path) if kind == "sqlite" else RedisState(request.getfixturevalue("redis_url"))
    try:
        setup = setup_over(backend)
        problems, item = setup.save(load_preset("outreach/lead-capture"), FORM)
        assert problems == {} and item is not None
        [stored] = backend.console_integrations().all()
        assert stored == backend.console_integrations().get("outreach-eu")
        assert stored.values == {"client_id": "client-eu", "consent_categories": ["marketing"]}
        assert SECRET not in stored.to_doc() and SECRET not in repr(stored)
        assert SecretBox(KEY).open(stored.sealed["client_secret"]) == SECRET
        # Saved, the secret is masked wherever the console shows recorded data.
        assert SECRET not in json.dumps(setup.source.redactor.redact({"body": f"token={SECRET}"}))
    finally:
        backend.close()


def test_a_name_of_the_integrations_file_is_read_only(tmp_path: Path) -> None:
    backend = SqliteState(tmp_path)
    try:
        setup = setup_over(backend, (Configured("outreach-eu", "outreach/lead-capture", "integrations.yaml"),))
        problems, item = setup.save(load_preset("outreach/lead-capture"), FORM)
        assert item is None and "defined in the integrations file" in problems["name"][0]
        assert backend.console_integrations().all() == []
    finally:
        backend.close()


def test_a_key_that_is_not_a_fernet_key_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(SecretsUnavailable, match="is not a Fernet key"):
        SecretBox("not-a-key")
    backend = SqliteState(tmp_path)
    try:
        setup = setup_over(backend, key="not-a-key")
        problems, item = setup.save(load_preset("outreach/lead-capture"), FORM)
        assert (
            item is None and "not stored: SIGNAL_CONSOLE_SECRET_KEY is not a Fernet key" in problems["client_secret"][0]
        )
    finally:
        backend.close()


def test_a_secret_sealed_with_another_key_does_not_open() -> None:
    token = SecretBox(KEY).seal(SECRET)
    with pytest.raises(SecretsUnavailable, match="does not open"):
        SecretBox(cryptography.Fernet.generate_key().decode()).open(token)
    assert json.loads(StoredIntegration("x", "p", {}, {"s": token}).to_doc())["sealed"]["s"] == token


def test_only_a_plain_origin_of_an_authorize_url_reaches_the_page_s_csp() -> None:
    from engine.console.setup import _authorisable

    listed = [
        StoredIntegration("odd", "outreach/lead-capture", {"base_url": "https://evil;script-src *"}),
        StoredIntegration("eu", "outreach/lead-capture", {"base_url": "https://api.example.com:8443"}),
    ]
    assert _authorisable(listed) == {"eu": "https://api.example.com:8443"}
