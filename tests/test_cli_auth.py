"""``signal-engine auth``: a new user authorises Outreach with one command, end to end against the sandbox.

Real processes throughout: the Outreach sandbox (``signal-engine sandbox
outreach``), the ``auth`` command waiting on its loopback redirect URI, and
``run``. The test plays the person's browser: it reads the printed URL and
follows it (the sandbox approves and redirects to the listener). What the
sandbox saw (``/_sandbox/state``) and what is in the state directory are the
proof. Expected values come from the product page's "Step 2: Obtain a
Refresh Token" and from RFC 6749 §4.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from engine.cli.main import main
from engine.compile.compiler import load_preset
from engine.delivery.auth.authorization_code import authorization_url, exchange_code
from engine.delivery.transport import HttpResponse
from engine.language.settings import resolve
from engine.redaction import Redactor
from engine.state.sqlite import SqliteState
from engine.state.token_store import AUTHORISED_CHAIN, StoredTokens

REPO = Path(__file__).resolve().parents[1]
PRESET = "outreach/lead-capture"
EVENTS = REPO / "examples" / "lead-capture.ndjson"
DELIVERED = 5  # leads in the example stream (tests/test_examples.py)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------


@contextlib.contextmanager
def sandbox(*flags: str, destination: str = "outreach") -> Iterator[str]:
    """``signal-engine sandbox DESTINATION`` on a free port; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "sandbox", destination, "--port", "0", *flags],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = proc.stdout.readline() if proc.stdout else ""
        assert "sandbox listening on http://127.0.0.1:" in banner, banner + (proc.stderr.read() if proc.stderr else "")
        yield next(word for word in banner.split() if word.startswith("http://"))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def sandbox_state(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/_sandbox/state", timeout=10) as resp:
        return json.load(resp)


def expire_access_tokens(base: str) -> None:
    request = urllib.request.Request(f"{base}/_sandbox/expire-tokens", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


class AuthProcess:
    """``signal-engine auth`` running; :attr:`url` is the authorization URL it printed."""

    def __init__(self, *args: str | Path, preset: str = PRESET) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "auth", preset, *map(str, args)],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.url + "\n" + out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def browse(url: str) -> tuple[int, str, str]:
    """A browser opening ``url``: redirects followed. (status, final URL, page)."""
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, resp.geturl(), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.geturl(), exc.read().decode()


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60
    )


def app_credentials() -> dict[str, str]:
    return {"client_id": f"app-{secrets.token_hex(4)}", "client_secret": f"cs-{secrets.token_hex(16)}"}


def sandbox_flags(creds: dict[str, str], *more: str) -> list[str]:
    # A 2 s mint window: a refresh right after the exchange waits a little instead of a minute.
    return [
        "--client-id",
        creds["client_id"],
        "--client-secret",
        creds["client_secret"],
        "--refresh-token",
        f"rt-unused-{secrets.token_hex(8)}",
        "--mint-window",
        "2",
        *more,
    ]


def write_settings(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()), encoding="utf-8")
    return path


def stored_authorisation(state: Path, client_id: str) -> StoredTokens | None:
    backend = SqliteState(state)
    try:
        return backend.tokens(client_id).load(AUTHORISED_CHAIN)
    finally:
        backend.close()


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_no_secret(texts: list[str], values: list[str]) -> None:
    blob = "\n".join(texts)
    assert all(values)
    for value in values:
        assert value not in blob, f"a secret ({value[:6]}...) was printed"


# --------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------


def test_a_new_user_authorises_with_one_command_and_the_next_run_just_works(tmp_path: Path) -> None:
    creds = app_credentials()
    with sandbox(*sandbox_flags(creds)) as base:
        settings = write_settings(tmp_path / "settings.yaml", {**creds, "base_url": base})  # no refresh_token
        settings_before = settings.read_bytes()
        state = tmp_path / "state"
        auth = AuthProcess("--settings", settings, "--state", state, "--port", "0", "--timeout", "60")
        try:
            # The URL of "Step 2": client id, loopback redirect URI, code, both scopes, and a state.
            parts = urlsplit(auth.url)
            assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{base}/oauth/authorize"
            query = {k: v for k, [v] in parse_qs(parts.query).items()}
            assert query["client_id"] == creds["client_id"] and query["response_type"] == "code"
            assert query["scope"] == "prospects.read prospects.write"
            assert "scope=prospects.read+prospects.write" in parts.query  # the page's own spelling
            redirect = urlsplit(query["redirect_uri"])
            assert (redirect.scheme, redirect.hostname, redirect.path) == ("http", "127.0.0.1", "/callback")
            assert len(query["state"]) >= 32

            status, landed, page = browse(auth.url)  # the sandbox approves and redirects to the listener
            assert status == 200 and landed.startswith(query["redirect_uri"] + "?") and "Authorised" in page
            code, out, err = auth.finish()
        finally:
            auth.kill()
        assert code == 0, err
        assert err.splitlines()[-1] == (
            f"signal-engine: authorised {PRESET} for client_id '{creds['client_id']}'; the tokens are stored in "
            f"{state / 'state.db'} (0600). A run with these settings and --state {state} uses them"
        )
        assert out.strip() == auth.url  # stdout holds the URL and nothing else

        # Stored in the state directory, privately; the settings file is untouched.
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("state.db", "state.db-wal"):
            if (state / name).exists():
                assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        tokens = stored_authorisation(state, creds["client_id"])
        assert tokens is not None and tokens.access_token and tokens.access_expires_at
        seen = sandbox_state(base)
        assert seen["authorizations"] == 1 and seen["code_exchanges"] == 1
        assert tokens.refresh_token in seen["refresh_tokens"]  # the live one upstream
        assert settings.read_bytes() == settings_before

        # The next run just works, with the same settings: the access token the exchange
        # bought is reused, so nothing is minted (Outreach throttles minting).
        first = cli("run", PRESET, "--events", EVENTS, "--settings", settings, "--state", state)
        assert first.returncode == 0, first.stderr
        assert sum(r["outcome"] == "delivered" for r in lines(first.stdout)) == DELIVERED
        assert first.stderr.strip().endswith("; 0 access token(s) minted")
        assert sandbox_state(base)["mints"] == 0 and len(sandbox_state(base)["prospects"]) == DELIVERED

        # Once that access token is gone, the stored refresh token mints a new one (and its rotation is kept).
        expire_access_tokens(base)
        later = tmp_path / "later.ndjson"
        later.write_text(
            "".join(
                json.dumps({**e, "messageId": f"{e['messageId']}-later"}) + "\n"
                for e in map(json.loads, EVENTS.read_text(encoding="utf-8").splitlines())
            ),
            encoding="utf-8",
        )
        second = cli("run", PRESET, "--events", later, "--settings", settings, "--state", state)
        assert second.returncode == 0, second.stderr
        assert sum(r["outcome"] == "delivered" for r in lines(second.stdout)) == DELIVERED
        assert second.stderr.strip().endswith("; 1 access token(s) minted")
        seen = sandbox_state(base)
        assert seen["mints"] == 1 and 400 not in seen["token_statuses"]  # refreshed, never refused
        assert tokens.refresh_token not in seen["refresh_tokens"]  # the stored one was the one spent
        rotated = stored_authorisation(state, creds["client_id"])
        assert rotated is not None and rotated.refresh_token in seen["refresh_tokens"]

        printed = [auth.url, out, err, first.stdout, first.stderr, second.stdout, second.stderr]
        assert_no_secret(
            printed,
            [
                creds["client_secret"],
                tokens.refresh_token,
                tokens.access_token or "",
                rotated.refresh_token,
                rotated.access_token or "",
            ],
        )
        landed_query = parse_qs(urlsplit(landed).query)
        assert_no_secret(printed, landed_query["code"])


def test_re_authorising_replaces_the_stored_authorisation_and_ignores_a_stale_redirect(tmp_path: Path) -> None:
    creds = app_credentials()
    with sandbox(*sandbox_flags(creds)) as base:
        settings = write_settings(tmp_path / "settings.yaml", {**creds, "base_url": base})
        state = tmp_path / "state"
        first = AuthProcess("--settings", settings, "--state", state, "--port", "0", "--timeout", "60")
        try:
            browse(first.url)
            assert first.finish()[0] == 0
        finally:
            first.kill()
        before = stored_authorisation(state, creds["client_id"])

        again = AuthProcess("--settings", settings, "--state", state, "--port", "0", "--timeout", "60")
        try:
            redirect_uri = parse_qs(urlsplit(again.url).query)["redirect_uri"][0]
            # An answer with another state (an old tab, or a forged request) is refused and changes nothing.
            status, _, page = browse(f"{redirect_uri}?code=forged-code&state=not-this-one")
            assert status == 400 and "does not belong" in page
            status, _, _ = browse(again.url)
            assert status == 200
            code, _, err = again.finish()
        finally:
            again.kill()
        assert code == 0, err
        assert "ignored a redirect whose state does not belong to this authorisation" in err
        assert "replacing the earlier authorisation" in err
        after = stored_authorisation(state, creds["client_id"])
        assert before is not None and after is not None and after.refresh_token != before.refresh_token
        seen = sandbox_state(base)
        assert seen["code_exchanges"] == 2  # the forged code never reached the token endpoint
        assert after.refresh_token in seen["refresh_tokens"]

        run = cli("run", PRESET, "--events", EVENTS, "--settings", settings, "--state", state)
        assert run.returncode == 0, run.stderr
        assert sum(r["outcome"] == "delivered" for r in lines(run.stdout)) == DELIVERED


def test_salesloft_is_authorised_the_same_way_with_context_and_scope_sent_back(tmp_path: Path) -> None:
    creds = app_credentials()
    flags = ["--client-id", creds["client_id"], "--client-secret", creds["client_secret"]]
    with sandbox(*flags, destination="salesloft") as base:
        settings = write_settings(tmp_path / "settings.yaml", {**creds, "base_url": base, "accounts_url": base})
        state = tmp_path / "state"
        auth = AuthProcess("--settings", settings, "--state", state, "--port", "0", preset="salesloft/people")
        try:
            query = parse_qs(urlsplit(auth.url).query)
            assert auth.url.startswith(f"{base}/oauth/authorize?") and "scope" not in query
            status, _, _ = browse(auth.url)
            code, _, err = auth.finish()
        finally:
            auth.kill()
        assert status == 200 and code == 0, err
        # The fake refuses an exchange without the redirect's context and scope: this one was accepted.
        assert sandbox_state(base)["code_exchanges"] == 1
        run = cli("run", "salesloft/people", "--events", EVENTS, "--settings", settings, "--state", state)
        assert run.returncode == 0, run.stderr
        assert sum(r["outcome"] == "delivered" for r in lines(run.stdout)) == DELIVERED


def test_salesforce_is_authorised_at_its_login_host_and_runs_at_the_instance_the_token_names(tmp_path: Path) -> None:
    creds = app_credentials()
    flags = ["--client-id", creds["client_id"], "--client-secret", creds["client_secret"]]
    with sandbox(*flags, destination="salesforce") as base:
        settings = write_settings(tmp_path / "settings.yaml", {**creds, "login_url": base})
        state = tmp_path / "state"
        auth = AuthProcess("--settings", settings, "--state", state, "--port", "0", preset="salesforce/leads")
        try:
            query = parse_qs(urlsplit(auth.url).query)
            assert auth.url.startswith(f"{base}/services/oauth2/authorize?")
            assert query["scope"] == ["api refresh_token"]
            status, _, _ = browse(auth.url)
            code, _, err = auth.finish()
        finally:
            auth.kill()
        assert status == 200 and code == 0, err
        assert sandbox_state(base)["code_exchanges"] == 1
        run = cli("run", "salesforce/leads", "--events", EVENTS, "--settings", settings, "--state", state)
        assert run.returncode == 0, run.stderr
        assert sum(r["outcome"] == "delivered" for r in lines(run.stdout)) == DELIVERED
        assert sandbox_state(base)["creates"] == DELIVERED


def test_a_denied_authorisation_stores_nothing_and_says_so(tmp_path: Path) -> None:
    creds = app_credentials()
    with sandbox(*sandbox_flags(creds, "--consent", "deny")) as base:
        settings = write_settings(tmp_path / "settings.yaml", {**creds, "base_url": base})
        auth = AuthProcess("--settings", settings, "--state", tmp_path / "state", "--port", "0")
        try:
            status, _, page = browse(auth.url)
            code, _, err = auth.finish()
        finally:
            auth.kill()
        assert status == 200 and "Not authorised" in page
        assert code == 1
        assert err.splitlines()[-1] == (
            "signal-engine: authorisation failed: the authorisation was denied "
            "(access_denied) (The user denied the authorization request.); nothing was "
            "stored"
        )
        assert stored_authorisation(tmp_path / "state", creds["client_id"]) is None
        assert sandbox_state(base)["code_exchanges"] == 0


def test_a_refused_code_exchange_fails_without_printing_the_secret(tmp_path: Path) -> None:
    creds = app_credentials()
    with sandbox(*sandbox_flags(creds)) as base:
        wrong = f"cs-wrong-{secrets.token_hex(12)}"
        settings = write_settings(
            tmp_path / "settings.yaml", {"client_id": creds["client_id"], "client_secret": wrong, "base_url": base}
        )
        auth = AuthProcess("--settings", settings, "--state", tmp_path / "state", "--port", "0")
        try:
            browse(auth.url)
            code, out, err = auth.finish()
        finally:
            auth.kill()
        assert code == 1
        assert err.splitlines()[-1] == (
            "signal-engine: authorisation failed: the token endpoint refused the client "
            "credentials: invalid_client (Client authentication failed.); check "
            "client_id and client_secret in the settings"
        )
        assert_no_secret([out, err], [wrong])
        assert stored_authorisation(tmp_path / "state", creds["client_id"]) is None


def test_no_redirect_in_time_is_a_clear_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = write_settings(
        tmp_path / "settings.yaml", {"client_id": "app", "client_secret": "cs-123456", "base_url": "http://127.0.0.1:9"}
    )
    code = main(
        [
            "auth",
            PRESET,
            "--settings",
            str(settings),
            "--state",
            str(tmp_path / "state"),
            "--port",
            "0",
            "--timeout",
            "0.5",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.startswith("http://127.0.0.1:9/oauth/authorize?client_id=app&")
    assert captured.err.splitlines()[-1] == (
        "signal-engine: authorisation failed: no redirect came back within 0.5s; nothing was stored. Run the "
        "command again and open the new URL (each one is good for one attempt)"
    )


def test_the_browser_opens_only_when_asked(tmp_path: Path) -> None:
    """``--open`` hands the URL to the default browser ($BROWSER here: a script that follows it); without it, nothing."""
    creds = app_credentials()
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(
        "import sys, urllib.request\n"
        f"open({str(opened)!r}, 'a').write(sys.argv[1] + '\\n')\n"
        "urllib.request.urlopen(sys.argv[1], timeout=15).read()\n",
        encoding="utf-8",
    )
    env = {**ENV, "BROWSER": f"{sys.executable} {browser} %s"}
    with sandbox(*sandbox_flags(creds)) as base:
        settings = write_settings(tmp_path / "settings.yaml", {**creds, "base_url": base})
        asked = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "auth",
                PRESET,
                "--settings",
                str(settings),
                "--state",
                str(tmp_path / "state"),
                "--port",
                "0",
                "--timeout",
                "30",
                "--open",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert asked.returncode == 0, asked.stderr
        assert opened.read_text(encoding="utf-8").splitlines() == [asked.stdout.strip()]
        opened.unlink()
        not_asked = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "auth",
                PRESET,
                "--settings",
                str(settings),
                "--state",
                str(tmp_path / "state"),
                "--port",
                "0",
                "--timeout",
                "1",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert not_asked.returncode == 1 and not opened.exists()


def test_a_refresh_token_in_the_settings_file_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_settings(
        tmp_path / "settings.yaml", {"client_id": "app", "client_secret": "cs-123456", "refresh_token": "rt-old-123456"}
    )
    code = main(
        ["auth", PRESET, "--settings", str(settings), "--state", str(tmp_path / "state"), "--timeout", "1"]
    )  # were it not refused, the command would give up at once
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == (
        f"{settings}:3: refresh_token is set here, and a run would use it rather than the "
        f"authorisation this command stores; delete that line (the new refresh token is kept in "
        f"--state {tmp_path / 'state'})\n"
    )
    assert "rt-old-123456" not in captured.err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "preset, why",
    [
        ("hubspot/contacts", "its auth is bearer, which needs no authorisation by a person"),
        ("close/leads", "its auth is basic, which needs no authorisation by a person"),
    ],
)
def test_a_preset_a_person_cannot_authorise_is_a_usage_error(
    preset: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["auth", preset]) == 2
    assert captured_line(capsys).startswith(f"signal-engine: {preset}: {why}")


def captured_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err


def test_a_port_in_use_is_a_usage_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = write_settings(tmp_path / "settings.yaml", {"client_id": "app", "client_secret": "cs-123456"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(
            ["auth", PRESET, "--settings", str(settings), "--state", str(tmp_path / "state"), "--port", str(port)]
        )
    assert code == 2
    assert captured_line(capsys).startswith(f"signal-engine: --port {port}: cannot listen on 127.0.0.1:{port} (")


# --------------------------------------------------------------------------
# the two protocol halves, against the vendors' documented forms
# --------------------------------------------------------------------------


def test_the_authorization_url_is_the_product_page_s() -> None:
    """ "https://api.outreach.io/oauth/authorize?client_id=YOUR_CLIENT_ID&redirect_uri=YOUR_REDIRECT_URI
    &response_type=code&scope=prospects.read+prospects.write", plus the state (RFC 6749 §4.1.1)."""
    preset = load_preset(PRESET)
    settings = resolve(preset.settings, {"client_id": "YOUR_CLIENT_ID"}, require=False)
    assert preset.auth is not None
    url = authorization_url(preset.auth, settings, "http://127.0.0.1:8750/callback", "S-1")
    assert url == (
        "https://api.outreach.io/oauth/authorize?client_id=YOUR_CLIENT_ID&redirect_uri="
        + quote("http://127.0.0.1:8750/callback", safe="")
        + "&response_type=code&scope=prospects.read+prospects.write&state=S-1"
    )


def test_salesloft_s_authorization_url_carries_no_scope() -> None:
    """Salesloft's documented form has none: the app's scopes are chosen in its settings (docs/vendors/salesloft.md)."""
    preset = load_preset("salesloft/people")
    settings = resolve(preset.settings, {"client_id": "YOUR_CLIENT_ID"}, require=False)
    assert preset.auth is not None
    url = authorization_url(preset.auth, settings, "http://127.0.0.1:8750/callback", "S-1")
    assert url == (
        "https://accounts.salesloft.com/oauth/authorize?client_id=YOUR_CLIENT_ID&redirect_uri="
        + quote("http://127.0.0.1:8750/callback", safe="")
        + "&response_type=code&state=S-1"
    )


def test_the_code_exchange_sends_what_the_product_page_s_curl_sends() -> None:
    """POST /oauth/token with client_id, client_secret, redirect_uri, grant_type=authorization_code and code."""
    preset = load_preset(PRESET)
    settings = resolve(preset.settings, {"client_id": "cid", "client_secret": "cs-123456"}, require=False)
    sent: list[Any] = []

    class Token:
        async def send(self, request: Any) -> HttpResponse:
            sent.append(request)
            return HttpResponse(
                200, {}, {"access_token": "at-123456", "refresh_token": "rt-123456", "expires_in": 7200}
            )

    assert preset.auth is not None
    tokens = asyncio.run(
        exchange_code(preset.auth, settings, Token(), "the-code", "http://127.0.0.1:1/callback", Redactor())
    )
    assert (tokens.refresh_token, tokens.access_token) == ("rt-123456", "at-123456")
    [request] = sent
    assert (request.method, request.url) == ("POST", "https://api.outreach.io/oauth/token")
    assert request.form == {
        "client_id": "cid",
        "client_secret": "cs-123456",
        "redirect_uri": "http://127.0.0.1:1/callback",
        "grant_type": "authorization_code",
        "code": "the-code",
    }


def test_the_auth_guide_s_sandbox_settings_authorise_against_the_sandbox_s_defaults() -> None:
    """examples/sandbox-auth-settings.yaml: the sandbox's default app and port, and no refresh_token."""
    from engine.language.settings import load_settings_file
    from engine.sandbox.outreach import SandboxConfig, build_parser

    values, _ = load_settings_file(REPO / "examples" / "sandbox-auth-settings.yaml", environ={})
    assert "refresh_token" not in values
    defaults = SandboxConfig()
    assert (values["client_id"], values["client_secret"]) == (defaults.client_id, defaults.client_secret)
    assert values["base_url"] == f"http://127.0.0.1:{build_parser().get_default('port')}"
    guide = (REPO / "docs" / "guides" / "auth.md").read_text(encoding="utf-8")
    assert "signal-engine auth outreach/lead-capture --settings examples/sandbox-auth-settings.yaml" in guide
