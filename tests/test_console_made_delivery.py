"""Integrations set up in the console are delivered by ``serve`` and ``worker``, like a file's.

Real processes, the real Outreach and HubSpot sandboxes on loopback, a real
redis-server. An integration is saved through the console's JSON API of a
running ``serve --console``, which delivers it at once; any other service
reads the console-made integrations of its state store at start, so the next
start delivers it too, beside the file's own (HubSpot here), each with its
own outcomes. Edited with its secret
fields left out, it keeps its secrets; no answer or page ever shows one.
Without the key, or with another key, it is skipped with one line naming it,
and the file's integration is still delivered.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from engine.compile import load_preset
from engine.service.console_made import load_console_made
from engine.state.console_integrations import SecretBox, StoredIntegration
from engine.state.sqlite import SqliteState
from integration_helpers import ThreadedHubspot, fast_hubspot_preset, write_config
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from service_helpers import Service, identify, lead, post, until, write_key_headers
from test_delivery_sandbox import ThreadedSandbox, unique_credentials

cryptography = pytest.importorskip("cryptography.fernet")
KEY = cryptography.Fernet.generate_key().decode()
HUBSPOT_TOKEN = "pat-test-5b2d8e1f7a9c4063"
FAST_HUBSPOT = {"quota": 100000, "window": 1.0, "access_token": HUBSPOT_TOKEN}
NAME = "outreach-console"


def csrf_of(base: str) -> str:
    with urllib.request.urlopen(base + "/events", timeout=10) as answer:
        found = re.search(r'<meta name="csrf-token" content="([^"]+)"', answer.read().decode())
    assert found is not None
    return found.group(1)


def api(base: str, method: str, path: str, body: Any = None, csrf: str = "") -> tuple[int, Any]:
    request = urllib.request.Request(
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def text_of(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def post_leads(url: str, tag: str, count: int) -> None:
    batch = [e for i in range(count) for e in (identify(i, tag), lead(i, tag))]
    status, body = post(url, "/v1/batch", {"batch": batch}, write_key_headers())
    assert status == 200, body


def delivered(services: list[Service], integration: str, tag: str) -> set[str]:
    return {
        o["messageId"]
        for s in services
        for o in s.outcomes()
        if o.get("integration") == integration and o["outcome"] == "delivered" and o["messageId"].startswith(tag)
    }


def serve(tmp: Path, config: Path, env: dict[str, str], *extra: str | Path) -> Service:
    return Service("serve", "--config", config, "--port", "0", *extra, cwd=tmp, env=env, name="serve")


def stop(service: Service) -> None:
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0, service.stderr()[-2000:]
    service.stop()


def test_an_integration_saved_through_the_console_api_is_delivered_by_the_next_serve(tmp_path: Path) -> None:
    creds = unique_credentials()
    env = {"HUBSPOT_TOKEN": HUBSPOT_TOKEN, "SIGNAL_CONSOLE_SECRET_KEY": KEY}
    state = tmp_path / "state"
    with ThreadedSandbox(**creds) as outreach, ThreadedHubspot(**FAST_HUBSPOT) as hubspot:
        config = write_config(
            tmp_path / "integrations.yaml", None, None, fast_hubspot_preset(tmp_path), hubspot.base_url
        )
        first = serve(tmp_path, config, env, "--state", state, "--console")
        try:
            base = first.url + "/console"
            csrf = csrf_of(base)
            settings = {**creds, "base_url": outreach.base_url, "consent_categories": ["marketing"]}
            # Without the page's CSRF token: refused, nothing stored.
            assert api(base, "PUT", f"/api/integrations/{NAME}", {"preset": "outreach/lead-capture"})[0] == 403
            # The file's name is read-only here.
            status, body = api(base, "PUT", "/api/integrations/hubspot", {"preset": "hubspot/contacts"}, csrf)
            assert status == 409 and "read-only" in body["error"]
            assert api(base, "DELETE", "/api/integrations/hubspot", None, csrf)[0] == 409
            assert api(base, "GET", "/api/integrations/hubspot")[1]["read_only"] is True
            status, page = text_of(base + "/integrations/hubspot/edit")
            assert status == 409 and "read-only here" in page
            assert "Defined in the integrations file" in text_of(base + "/integrations/new")[1]
            # A mistake is answered with the problem at its setting, and nothing is stored.
            status, body = api(
                base, "PUT", f"/api/integrations/{NAME}", {"preset": "outreach/lead-capture", "settings": {}}, csrf
            )
            assert status == 422 and "client_id" in body["problems"]
            status, body = api(
                base,
                "PUT",
                f"/api/integrations/{NAME}",
                {"preset": "outreach/lead-capture", "settings": settings},
                csrf,
            )
            assert status == 201, body
            created = json.dumps(body)
            assert body["integration"]["secrets"] == {
                "client_secret": "set (encrypted)",
                "refresh_token": "set (encrypted)",
            }
            # Edited with the secrets left out: they are kept; the answer, the JSON and the pages show none.
            edited = {"client_id": creds["client_id"], "base_url": outreach.base_url}
            status, body = api(base, "PUT", f"/api/integrations/{NAME}", {"settings": edited}, csrf)
            assert status == 200, body
            seen = [created, json.dumps(body), json.dumps(api(base, "GET", f"/api/integrations/{NAME}")[1])]
            seen += [text_of(base + p)[1] for p in ("/integrations/new", f"/integrations/{NAME}/edit", "/integrations")]
            for secret in (creds["client_secret"], creds["refresh_token"]):
                assert not any(secret in text for text in seen)
            # A second one, deleted: gone from the store, and the next serve does not deliver it.
            doomed = {"preset": "outreach/lead-capture", "settings": settings}
            assert api(base, "PUT", "/api/integrations/doomed", doomed, csrf)[0] == 201
            assert api(base, "DELETE", "/api/integrations/doomed", None, csrf)[1]["deleted"] == "doomed"
            assert api(base, "GET", "/api/integrations/doomed")[0] == 404
            # This serve's console saved it: it delivers it at once, beside the file's (the deleted one not).
            post_leads(first.url, "before", 1)
            until(
                lambda: (
                    delivered([first], "hubspot", "before-lead") == {"before-lead-0"}
                    and delivered([first], NAME, "before-lead") == {"before-lead-0"}
                ),
                timeout=60,
                what=lambda: f"{first.outcomes()[-4:]}; {first.stderr()[-1500:]}",
            )
        finally:
            stop(first)
        assert {o.get("integration") for o in first.outcomes()} == {"hubspot", NAME}
        stored = SqliteState(state)
        try:
            [item] = stored.console_integrations().all()
        finally:
            stored.close()
        assert SecretBox(KEY).open(item.sealed["client_secret"]) == creds["client_secret"]

        second = serve(tmp_path, config, env, "--state", state)
        try:
            post_leads(second.url, "after", 3)
            until(
                lambda: (
                    len(delivered([second], NAME, "after-lead")) == 3
                    and len(delivered([second], "hubspot", "after-lead")) == 3
                ),
                timeout=90,
                what=lambda: f"{second.outcomes()[-6:]}; {second.stderr()[-1500:]}",
            )
        finally:
            stop(second)
        emails = [e for p in outreach.admin("GET", "state")["prospects"] for e in p["attributes"]["emails"]]
        assert sorted(emails) == [f"after{i}@service.test" for i in range(3)] + ["before0@service.test"]
        assert "doomed" not in {o.get("integration") for o in second.outcomes()}
        assert "skipped" not in second.stderr()
        for secret in (creds["client_secret"], creds["refresh_token"]):
            assert secret not in second.stderr() and not any(secret in line for line in second.lines)


@pytest.mark.parametrize(
    ("key", "why"),
    [("", "SIGNAL_CONSOLE_SECRET_KEY is not set"), ("other", "does not open with this SIGNAL_CONSOLE_SECRET_KEY")],
)
def test_without_the_key_or_with_another_one_serve_skips_it_in_one_line_and_serves_the_rest(
    tmp_path: Path, key: str, why: str
) -> None:
    creds = unique_credentials()
    state = tmp_path / "state"
    box = SecretBox(KEY)
    stored = SqliteState(state)
    try:
        stored.console_integrations().put(
            StoredIntegration(
                NAME,
                "outreach/lead-capture",
                {"client_id": creds["client_id"], "base_url": "http://127.0.0.1:9"},
                {n: box.seal(creds[n]) for n in ("client_secret", "refresh_token")},
            )
        )
    finally:
        stored.close()
    other = cryptography.Fernet.generate_key().decode() if key == "other" else ""
    with ThreadedHubspot(**FAST_HUBSPOT) as hubspot:
        config = write_config(
            tmp_path / "integrations.yaml", None, None, fast_hubspot_preset(tmp_path), hubspot.base_url
        )
        env = {"HUBSPOT_TOKEN": HUBSPOT_TOKEN, "SIGNAL_CONSOLE_SECRET_KEY": other}
        service = serve(tmp_path, config, env, "--state", state)
        try:
            post_leads(service.url, "k", 1)
            until(lambda: delivered([service], "hubspot", "k-lead") == {"k-lead-0"}, timeout=60)
            line = service.wait_for_notice(
                rf"^signal-engine: warning: integration '{NAME}' \(set up in the console\) is skipped: .*"
            )
        finally:
            stop(service)
        assert why in line.group(0)
        assert [ln for ln in service.stderr().splitlines() if NAME in ln] == [line.group(0)]  # one line
        assert {o.get("integration") for o in service.outcomes()} == {"hubspot"}
        assert all(creds[n] not in service.stderr() for n in creds)


def test_a_worker_on_redis_delivers_an_integration_saved_in_the_console_of_serve(
    tmp_path: Path, redis_url: str
) -> None:
    creds = unique_credentials()
    env = {"HUBSPOT_TOKEN": HUBSPOT_TOKEN, "SIGNAL_CONSOLE_SECRET_KEY": KEY}
    with ThreadedSandbox(**creds) as outreach, ThreadedHubspot(**FAST_HUBSPOT) as hubspot:
        config = write_config(
            tmp_path / "integrations.yaml", None, None, fast_hubspot_preset(tmp_path), hubspot.base_url
        )
        intake = serve(tmp_path, config, env, "--redis", redis_url, "--console")
        worker = None
        try:
            base = intake.url + "/console"
            settings = {**creds, "base_url": outreach.base_url}
            status, body = api(
                base,
                "PUT",
                f"/api/integrations/{NAME}",
                {"preset": "outreach/lead-capture", "settings": settings},
                csrf_of(base),
            )
            assert status == 201, body
            worker = Service("worker", "--config", config, "--redis", redis_url, cwd=tmp_path, env=env, name="worker")
            worker.wait_for_notice(rf"^worker \S+ consuming hubspot, {NAME}$")
            post_leads(intake.url, "r1", 2)
            until(lambda: len(delivered([worker], NAME, "r1-lead")) == 2, timeout=90, what=lambda: worker.stderr())
            # The intake restarted reads the console-made names too: their consumer group is kept, not removed.
            stop(intake)
            intake = serve(tmp_path, config, env, "--redis", redis_url)
            post_leads(intake.url, "r2", 2)
            until(lambda: len(delivered([worker], NAME, "r2-lead")) == 2, timeout=90, what=lambda: worker.stderr())
            # One worker for the console-made integration alone, by name.
            only = Service(
                "worker",
                "--config",
                config,
                "--redis",
                redis_url,
                "--integration",
                NAME,
                cwd=tmp_path,
                env=env,
                name="only",
            )
            only.wait_for_notice(rf"^worker \S+ consuming {NAME}$")
            stop(only)
        finally:
            for service in (intake, worker):
                if service is not None:
                    service.stop()
        emails = [e for p in outreach.admin("GET", "state")["prospects"] for e in p["attributes"]["emails"]]
        assert len(emails) == 4
        assert all(creds[n] not in worker.stderr() for n in ("client_secret", "refresh_token"))


def test_the_loader_says_why_each_unusable_one_is_skipped_and_never_shows_a_secret() -> None:
    secret = "cs-" + cryptography.Fernet.generate_key().decode()[:20]
    sealed = {"client_secret": SecretBox(KEY).seal(secret), "refresh_token": SecretBox(KEY).seal("rt-" + secret)}
    good = StoredIntegration("eu", "outreach/lead-capture", {"client_id": "c"}, sealed)
    gone = StoredIntegration("gone", "nowhere/nothing", {}, {})
    clash = StoredIntegration("hubspot", "hubspot/contacts", {}, {})
    missing = StoredIntegration("half", "outreach/lead-capture", {}, sealed)
    made = load_console_made([good, gone, clash, missing], {"SIGNAL_CONSOLE_SECRET_KEY": KEY}, taken={"hubspot"})
    assert made.names() == ["eu"]
    assert made.integrations[0].settings["client_secret"] == secret
    assert made.integrations[0].preset.name == load_preset("outreach/lead-capture").name
    assert [line.split(" is skipped: ")[0] for line in made.skipped] == [
        "integration 'gone' (set up in the console)",
        "integration 'hubspot' (set up in the console)",
        "integration 'half' (set up in the console)",
    ]
    assert "integrations file defines 'hubspot' too" in made.skipped[1]
    assert "client_id" in made.skipped[2]
    keyless = load_console_made([good], {})
    assert keyless.names() == [] and "SIGNAL_CONSOLE_SECRET_KEY is not set" in keyless.skipped[0]
    # The Redis intake opens nothing: it needs neither the key nor the credentials.
    assert load_console_made([good], {}, secrets=False).names() == ["eu"]
    assert all(secret not in line for line in [*made.skipped, *keyless.skipped])


def test_the_last_error_is_never_shown_with_an_empty_detail() -> None:
    from engine.console.views import integrations_page, last_error_text

    assert last_error_text({"outcome": "failed", "cause": None, "status": None}) == (
        "failed (no cause or status recorded)"
    )
    assert (
        last_error_text({"outcome": "failed", "cause": "http_error", "status": 400}) == "failed: http_error, HTTP 400"
    )
    assert last_error_text({"outcome": "dead_lettered", "cause": "", "status": 503}) == "dead_lettered: HTTP 503"
    windows = {
        "last hour": {
            "delivered": 0,
            "failed": 1,
            "dead_lettered": 0,
            "dropped": 0,
            "http_429": 0,
            "token_requests": 0,
            "p50_ms": None,
            "p95_ms": None,
        }
    }
    html = integrations_page(
        [
            {
                "integration": "x",
                "windows": windows,
                "last_error": {"at": 1.0, "outcome": "failed", "cause": None, "id": "e1"},
                "dead_letters": 0,
            }
        ],
        csrf="t",
    )
    assert "failed ." not in html and "failed (no cause or status recorded)." in html


def test_the_python_api_adds_them_after_the_file_s_and_checks_integration_names(tmp_path: Path) -> None:
    from engine.language.settings import resolve
    from engine.service.integrations import IntegrationsError, single
    from engine.service.serving import ServiceOptions, with_console_made

    hubspot = load_preset("hubspot/contacts")
    config = single(
        hubspot, resolve(hubspot.settings, {"access_token": HUBSPOT_TOKEN}, require=True), "hubspot/contacts"
    )
    sealed = {n: SecretBox(KEY).seal(f"{n}-value") for n in ("client_secret", "refresh_token")}
    state = SqliteState(tmp_path)
    try:
        state.console_integrations().put(StoredIntegration("eu", "outreach/lead-capture", {"client_id": "c"}, sealed))
        options = ServiceOptions(config, environ={"SIGNAL_CONSOLE_SECRET_KEY": KEY})
        merged, skipped = with_console_made(options, state)
        assert [i.name for i in merged.working()] == ["hubspot-contacts", "eu"] and skipped == []
        assert "client_secret-value" in merged.config.secrets()  # so every redactor of the service masks it
        assert with_console_made(ServiceOptions(config, console_made=False), state)[0].config.names() == [
            "hubspot-contacts"
        ]
        assert with_console_made(ServiceOptions(config, only=["eu"], environ=options.environ), state)[0].working()
        with pytest.raises(IntegrationsError, match="--integration nope: no such integration"):
            with_console_made(ServiceOptions(config, only=["nope"], environ=options.environ), state)
    finally:
        state.close()
