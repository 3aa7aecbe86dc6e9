"""Settings: defaults, types, file loading with ${ENV} expansion, URL safety, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import outcome as oc
from engine.compile.compiler import load_preset
from engine.language.settings import SettingsError, SettingSpec, check_url, is_loopback, load_settings_file, resolve
from engine.pipeline.prepare import Pipeline

CREDENTIALS = {"client_id": "cid-123", "client_secret": "s3cr3t-client-value", "refresh_token": "rt-abcdef-123456"}


@pytest.fixture(scope="module")
def specs() -> Any:
    return load_preset("outreach/lead-capture").settings


def write(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# resolve
# --------------------------------------------------------------------------


def test_defaults_are_applied(specs: Any) -> None:
    settings = resolve(specs, {}, require=False)
    assert settings["consent_categories"] == ["marketing"]
    assert settings["base_url"] == "https://api.outreach.io"
    assert settings["client_id"] is None
    assert "client_secret" not in settings.values


def test_supplied_values_override_defaults(specs: Any) -> None:
    settings = resolve(
        specs,
        {**CREDENTIALS, "consent_categories": ["marketing", "analytics"], "base_url": "https://sandbox.example.com/"},
        require=True,
    )
    assert settings["consent_categories"] == ["marketing", "analytics"]
    assert settings["base_url"] == "https://sandbox.example.com"  # trailing slash dropped
    assert settings["client_id"] == "cid-123"


def test_null_value_means_use_the_default(specs: Any) -> None:
    assert resolve(specs, {"base_url": None}, require=False)["base_url"] == "https://api.outreach.io"


def test_a_scalar_where_a_list_is_declared_is_an_error(specs: Any) -> None:
    """No silent coercion: `consent_categories: marketing` is not quietly turned into a list."""
    with pytest.raises(SettingsError) as info:
        resolve(specs, {"consent_categories": "marketing, analytics"}, require=False)
    assert str(info.value) == (
        "settings: setting 'consent_categories' must be a list of strings, got the text "
        "'marketing, analytics'; write it as a YAML list: [marketing, analytics]"
    )


@pytest.mark.parametrize(
    "name, value",
    [
        ("client_id", ""),
        ("client_id", ["x"]),
        ("client_id", True),
        ("consent_categories", [1, 2]),
        ("consent_categories", {"a": 1}),
    ],
)
def test_wrong_types_are_rejected_naming_the_setting(specs: Any, name: str, value: Any) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(specs, {name: value}, require=False)
    assert f"setting {name!r}" in str(info.value)


@pytest.mark.parametrize("value, described", [(12345, "the number 12345"), (1.5, "the number 1.5")])
def test_a_number_for_a_string_setting_is_an_error_unless_quoted(specs: Any, value: Any, described: str) -> None:
    """No silent coercion: YAML reads `client_id: 12345` as a number; the message says to quote it."""
    with pytest.raises(SettingsError) as info:
        resolve(specs, {"client_id": value}, require=False)
    assert str(info.value) == (
        f"settings: setting 'client_id' must be a string, got {described}; quote it to keep it as text: \"{value}\""
    )
    assert resolve(specs, {"client_id": "12345"}, require=False)["client_id"] == "12345"


def test_every_problem_of_a_settings_file_is_reported_at_once_in_file_order(tmp_path: Path, specs: Any) -> None:
    path = write(
        tmp_path,
        "client_id: 12345\n"
        "consent_categories: marketing\n"
        "# a comment\n"
        "base_url: http://example.com\n"
        "client_secrett: x\n",
    )
    values, where = load_settings_file(path, environ={})
    with pytest.raises(SettingsError) as info:
        resolve(specs, values, require=True, where=where)
    problems = info.value.problems
    assert [p.split(": setting")[0].split(": unknown")[0].split(": required")[0] for p in problems] == [
        f"{path}:1",
        f"{path}:2",
        f"{path}:4",
        f"{path}:5",
        "settings",
    ]
    assert "'client_id' must be a string" in problems[0]
    assert "'consent_categories' must be a list of strings" in problems[1]
    assert "'base_url' plain http" in problems[2]
    assert "unknown setting 'client_secrett'" in problems[3]
    # refresh_token is not among them: `signal-engine auth` may have stored it in the state.
    assert problems[4:] == [
        "settings: required setting 'client_secret' is missing (Your connected app's Secret (OAuth client secret).)"
    ]
    assert str(info.value) == "\n".join(problems)


def test_a_required_setting_the_state_may_supply_is_not_missing_but_others_are() -> None:
    """The preset's refresh token may come from an authorisation stored in the state (checked when delivery starts)."""
    specs = {
        "token": SettingSpec("token", "string", required=True, secret=True, stored=True),
        "key": SettingSpec("key", "string", required=True, secret=True),
    }
    with pytest.raises(SettingsError) as info:
        resolve(specs, {}, require=True)
    assert info.value.problems == ["settings: required setting 'key' is missing (string)"]
    assert resolve(specs, {"key": "k-123456"}, require=True).values == {"key": "k-123456"}
    # Given, it is checked like any other value.
    with pytest.raises(SettingsError, match="'token' must be a string"):
        resolve(specs, {"key": "k-123456", "token": 12345}, require=True)


def test_only_the_refresh_token_of_an_authorisable_auth_may_come_from_the_state(specs: Any) -> None:
    assert [name for name, spec in specs.items() if spec.stored] == ["refresh_token"]
    assert not any(spec.stored for spec in load_preset("hubspot/contacts").settings.values())


def test_integer_and_boolean_types() -> None:
    specs = {"n": SettingSpec("n", "integer"), "b": SettingSpec("b", "boolean")}
    assert resolve(specs, {"n": 3, "b": False}, require=False).values == {"n": 3, "b": False}
    for bad in ({"n": True}, {"n": "3"}, {"b": "true"}, {"b": 1}):
        with pytest.raises(SettingsError):
            resolve(specs, bad, require=False)


def test_unknown_setting(specs: Any) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(specs, {"client_secrett": "x"}, require=False)
    message = str(info.value)
    assert "unknown setting 'client_secrett'" in message
    assert "client_secret" in message.split("takes:", 1)[1]


def test_required_missing_when_required(specs: Any) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(specs, {"client_id": "cid"}, require=True)
    assert "required setting 'client_secret' is missing" in str(info.value)


def test_required_missing_is_fine_for_a_dry_run(specs: Any) -> None:
    settings = resolve(specs, {}, require=False)
    assert settings.secrets() == []
    assert set(settings.values) == {"consent_categories", "base_url"}


def test_all_required_present(specs: Any) -> None:
    settings = resolve(specs, CREDENTIALS, require=True)
    assert settings["client_secret"] == "s3cr3t-client-value"


# --------------------------------------------------------------------------
# settings files and ${ENV_VAR}
# --------------------------------------------------------------------------


def test_unknown_setting_in_a_file_is_named_with_file_and_line(tmp_path: Path, specs: Any) -> None:
    path = write(tmp_path, "client_id: abc\n\n# the secret\nclient_secrett: x\n")
    values, where = load_settings_file(path, environ={})
    with pytest.raises(SettingsError) as info:
        resolve(specs, values, require=False, where=where)
    assert str(info.value).startswith(f"{path}:4: unknown setting 'client_secrett'")


def test_required_missing_after_a_file_names_the_setting(tmp_path: Path, specs: Any) -> None:
    path = write(tmp_path, "client_id: abc\n")
    values, where = load_settings_file(path, environ={})
    with pytest.raises(SettingsError) as info:
        resolve(specs, values, require=True, where=where)
    assert "'client_secret'" in str(info.value)


def test_type_error_in_a_file_names_file_and_line(tmp_path: Path, specs: Any) -> None:
    path = write(tmp_path, "client_id: abc\nbase_url: http://example.com\n")
    values, where = load_settings_file(path, environ={})
    with pytest.raises(SettingsError) as info:
        resolve(specs, values, require=False, where=where)
    assert str(info.value).startswith(f"{path}:2: setting 'base_url' plain http")


def test_env_vars_are_expanded(tmp_path: Path, specs: Any) -> None:
    path = write(
        tmp_path,
        'client_id: "${CID}"\nrefresh_token: rt-${RT}-x\n'
        "consent_categories: [marketing, '${EXTRA}']\nbase_url: http://127.0.0.1:${PORT}\n",
    )
    env = {"CID": "cid-9", "RT": "abc", "EXTRA": "analytics", "PORT": "8080"}
    values, where = load_settings_file(path, environ=env)
    assert values == {
        "client_id": "cid-9",
        "refresh_token": "rt-abc-x",
        "consent_categories": ["marketing", "analytics"],
        "base_url": "http://127.0.0.1:8080",
    }
    assert where["refresh_token"] == f"{path}:2"
    settings = resolve(specs, values, require=False, where=where)
    assert settings["base_url"] == "http://127.0.0.1:8080"


def test_env_expansion_is_not_recursive_and_leaves_plain_dollars(tmp_path: Path) -> None:
    path = write(tmp_path, "client_id: ${A}\nrefresh_token: $HOME-literal\n")
    values, _ = load_settings_file(path, environ={"A": "${B}", "B": "nope"})
    assert values == {"client_id": "${B}", "refresh_token": "$HOME-literal"}


def test_env_vars_from_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNAL_TEST_CLIENT_ID", "from-env")
    path = write(tmp_path, "client_id: ${SIGNAL_TEST_CLIENT_ID}\n")
    assert load_settings_file(path)[0] == {"client_id": "from-env"}


def test_missing_env_var_names_file_line_and_variable(tmp_path: Path, specs: Any) -> None:
    path = write(tmp_path, "client_id: abc\nclient_secret: ${OUTREACH_CLIENT_SECRET}\nrefresh_token: rt-x\n")
    values, where = load_settings_file(path, environ={})
    with pytest.raises(SettingsError) as info:
        resolve(specs, values, require=True, where=where)
    assert str(info.value) == (
        f"{path}:2: setting 'client_secret': environment variable OUTREACH_CLIENT_SECRET is not set"
    )


def test_an_unset_secret_variable_is_fine_for_a_dry_run(tmp_path: Path, specs: Any) -> None:
    path = write(
        tmp_path, "client_id: abc\nclient_secret: ${OUTREACH_CLIENT_SECRET}\nrefresh_token: ${OUTREACH_REFRESH_TOKEN}\n"
    )
    values, where = load_settings_file(path, environ={})
    settings = resolve(specs, values, require=False, where=where)
    assert "client_secret" not in settings.values and "refresh_token" not in settings.values
    assert settings.secrets() == []


def test_an_unset_variable_in_a_non_secret_setting_is_an_error_even_for_a_dry_run(tmp_path: Path, specs: Any) -> None:
    """Non-secret settings shape the output (base_url is in every URL): a dry run needs them."""
    path = write(tmp_path, "base_url: ${SANDBOX_URL}\nconsent_categories: [marketing, '${EXTRA}']\n")
    values, where = load_settings_file(path, environ={})
    with pytest.raises(SettingsError) as info:
        resolve(specs, values, require=False, where=where)
    assert info.value.problems == [
        f"{path}:1: setting 'base_url': environment variable SANDBOX_URL is not set",
        f"{path}:2: setting 'consent_categories': environment variable EXTRA is not set",
    ]


def test_settings_file_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- client_id\n- abc\n")
    with pytest.raises(SettingsError) as info:
        load_settings_file(path, environ={})
    assert str(info.value).startswith(f"{path}:1:1: ")


def test_empty_settings_file(tmp_path: Path) -> None:
    assert load_settings_file(write(tmp_path, "# nothing yet\n"), environ={}) == ({}, {})


def test_missing_settings_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SettingsError) as info:
        load_settings_file(missing, environ={})
    assert str(info.value) == f"{missing}: file not found"


def test_invalid_yaml_settings_file_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "client_id: abc\nbase_url: a: b\n")
    with pytest.raises(SettingsError) as info:
        load_settings_file(path, environ={})
    assert str(info.value).startswith(f"{path}:2:")


# --------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.outreach.io",
        "https://sandbox.example.com:8443",
        "http://127.0.0.1:8080",
        "http://[::1]:9000",
        "http://localhost",
        "http://localhost:3000",
    ],
)
def test_acceptable_urls(url: str) -> None:
    assert check_url(url) is None


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://example.com", "loopback"),
        ("http://api.outreach.io", "loopback"),
        ("http://0.0.0.0:8080", "loopback"),
        ("http://localhost.example.com", "loopback"),
        ("http://127.0.0.1.nip.io", "loopback"),
        ("ftp://example.com", "http(s)"),
        ("api.outreach.io", "http(s)"),
        ("https://", "http(s)"),
        ("https://x.example.com/?a=1", "query"),
        ("https://x.example.com/#frag", "fragment"),
    ],
)
def test_rejected_urls(url: str, why: str) -> None:
    problem = check_url(url)
    assert problem is not None
    assert why in problem


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("example.com") and not is_loopback("10.0.0.1") and not is_loopback(None)


def test_http_base_url_rejected_through_resolve(specs: Any) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(specs, {"base_url": "http://example.com"}, require=False)
    assert "setting 'base_url'" in str(info.value)
    assert "https" in str(info.value)


# --------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------


def test_public_never_exposes_secrets(specs: Any) -> None:
    settings = resolve(specs, CREDENTIALS, require=True)
    public = settings.public()
    assert "client_secret" not in public and "refresh_token" not in public
    assert public["client_id"] == "cid-123"
    assert "s3cr3t-client-value" not in repr(public)
    assert "rt-abcdef-123456" not in repr(public)
    assert sorted(settings.secrets()) == sorted(["s3cr3t-client-value", "rt-abcdef-123456"])
    assert settings.secret_names == frozenset({"client_secret", "refresh_token"})


def test_mapping_input_settings_are_the_public_ones(specs: Any) -> None:
    preset = load_preset("outreach/lead-capture")
    pipe = Pipeline(preset, resolve(preset.settings, CREDENTIALS, require=True))
    assert "client_secret" not in pipe.public_settings
    assert "refresh_token" not in pipe.public_settings
    result = pipe.dry_run(
        {
            "type": "track",
            "event": "Signed Up",
            "userId": "u",
            "context": {"consent": {"marketing": True}},
            "traits": {"email": "a@b.co"},
        }
    )
    assert result.outcome == oc.WOULD_SEND
    dumped = repr(result.to_dict())
    assert "s3cr3t-client-value" not in dumped and "rt-abcdef-123456" not in dumped


def test_empty_consent_categories_text_does_not_disable_the_consent_gate(specs: Any) -> None:
    preset = load_preset("outreach/lead-capture")
    try:
        settings = resolve(preset.settings, {"consent_categories": ""}, require=False)
    except SettingsError:
        return  # rejecting the value is a fine answer too
    result = Pipeline(preset, settings).dry_run(
        {"type": "track", "event": "Signed Up", "userId": "u", "traits": {"email": "a@b.co"}}
    )
    assert result.outcome == oc.DROPPED
    assert result.reason == oc.NO_CONSENT
