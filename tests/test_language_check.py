"""``check`` catches, with file:line:col, the mistakes that would break every event at run time."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.compile.compiler import PresetError, load_preset
from language_fixtures import ACME_PRESET, write_acme


def problems(tmp_path: Path, *edits: tuple[str, str]) -> list[str]:
    path = write_acme(tmp_path, ACME_PRESET, *edits)
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    return info.value.problems


def located(path: Path, needle: str, *, at: str | None = None) -> str:
    """``file:line:col`` of ``at`` (default: ``needle``) on the line holding ``needle``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return f"{path}:{number}:{line.index(at or needle) + 1}"
    raise AssertionError(f"{needle!r} not in {path}")


def test_the_fixture_preset_is_valid(tmp_path: Path) -> None:
    preset = load_preset(str(write_acme(tmp_path)))
    assert preset.auth is not None and preset.auth.type == "api_key"


def test_an_undeclared_trait_in_the_mapping(tmp_path: Path) -> None:
    [line] = problems(tmp_path, ('"country": traits.country,', '"country": traits.cty,'))
    path = tmp_path / "contacts.yaml"
    assert line.startswith(f"{located(path, 'traits.cty', at='cty')}: actions.upsert_contact.mapping: ")
    assert "traits.cty is not a declared trait" in line


def test_a_misspelt_value(tmp_path: Path) -> None:
    [line] = problems(tmp_path, ('"source": values.source}', '"source": values.sorce}'))
    assert line.startswith(f"{located(tmp_path / 'contacts.yaml', 'values.sorce', at='sorce')}: ")
    assert "values.sorce is not defined by any event row" in line and "source" in line


def test_a_secret_setting_inside_jsonata(tmp_path: Path) -> None:
    [line] = problems(tmp_path, ('"source": values.source}', '"source": settings.api_key}'))
    assert line.startswith(f"{located(tmp_path / 'contacts.yaml', 'settings.api_key', at='api_key')}: ")
    assert "secret" in line


def test_an_unknown_setting_inside_jsonata(tmp_path: Path) -> None:
    [line] = problems(tmp_path, ('"source": values.source}', '"source": settings.region}'))
    assert "settings.region does not exist" in line


def test_an_unknown_function(tmp_path: Path) -> None:
    [line] = problems(tmp_path, ('"name": traits.name,', '"name": $titlecase(traits.name),'))
    assert line.startswith(f"{located(tmp_path / 'contacts.yaml', '$titlecase')}: ")
    assert "unknown function $titlecase()" in line


def test_a_function_bound_in_the_expression_is_known(tmp_path: Path) -> None:
    load_preset(
        str(
            write_acme(
                tmp_path,
                ACME_PRESET,
                ('"name": traits.name,', '"name": ($up := function($s){$uppercase($s)}; $up(traits.name)),'),
            )
        )
    )


def test_an_input_that_does_not_exist(tmp_path: Path) -> None:
    [line] = problems(tmp_path, ('"name": traits.name,', '"name": trait.name,'))
    assert "'trait' is not an input of the mapping" in line


def test_paths_inside_a_predicate_are_not_guessed_at(tmp_path: Path) -> None:
    """Inside a filter the context is the array item, not the mapping input: no false alarm."""
    load_preset(
        str(
            write_acme(
                tmp_path,
                ACME_PRESET,
                ('"name": traits.name,', '"name": event.properties.people[role = "lead"].traits.whatever,'),
            )
        )
    )


def test_a_placeholder_with_no_value(tmp_path: Path) -> None:
    [line] = problems(
        tmp_path,
        ('url: "{settings.base_url}/v1/contacts/{found.id}"', 'url: "{settings.base_url}/v1/contacts/{fund.id}"'),
    )
    assert "actions.upsert_contact.upsert.update.url: unknown placeholder {fund.id}" in line


def test_a_placeholder_in_a_request_url_may_only_use_settings(tmp_path: Path) -> None:
    [line] = problems(
        tmp_path,
        ('url: "{settings.base_url}/v1/contacts"\n', 'url: "{settings.base_url}/v1/contacts/{document.email}"\n'),
    )
    assert "actions.upsert_contact.request.url: unknown placeholder {document.email}" in line


def test_a_url_setting_with_neither_required_nor_default(tmp_path: Path) -> None:
    lines = problems(tmp_path, ('base_url: {type: url, default: "https://api.acme.test"}', "base_url: {type: url}"))
    assert [line.split(": ", 2)[1] for line in lines] == [
        "actions.upsert_contact.request.url",
        "actions.upsert_contact.upsert.update.url",
    ]
    assert all(
        "{settings.base_url} needs the setting 'base_url' to be required: true or to have a default" in line
        for line in lines
    )


def test_a_secret_setting_in_a_header(tmp_path: Path) -> None:
    [line] = problems(
        tmp_path,
        (
            "headers: {Content-Type: application/json, Accept: application/json}",
            'headers: {Content-Type: application/json, X-Key: "{settings.api_key}"}',
        ),
    )
    assert "actions.upsert_contact.request.headers.X-Key: {settings.api_key} is a secret setting" in line


def test_an_auth_credential_setting_must_be_secret(tmp_path: Path) -> None:
    [line] = problems(
        tmp_path, ("api_key: {type: string, required: true, secret: true}", "api_key: {type: string, required: true}")
    )
    assert "settings.api_key: used as auth.key_setting, so it must be marked secret: true" in line


def test_a_nested_object_query_parameter_must_be_declared_json(tmp_path: Path) -> None:
    edits = (
        "    upsert:\n      strategy: on_conflict\n",
        "    upsert:\n      strategy: on_conflict\n      lookup:\n        method: GET\n"
        '        url: "{settings.base_url}/v1/contacts"\n'
        '        query: \'{"filter": {"email": document.email}}\'\n',
    )
    [line] = problems(tmp_path, edits)
    assert "query parameter 'filter' is an object: list it in json_query" in line
    declared = (edits[0], edits[1] + "        json_query: [filter]\n")
    load_preset(str(write_acme(tmp_path, ACME_PRESET, declared)))


def test_lookup_first_needs_a_lookup(tmp_path: Path) -> None:
    [line] = problems(tmp_path, ("strategy: on_conflict", "strategy: lookup_first"))
    assert "strategy lookup_first needs a lookup: section" in line


def test_a_syntax_error_in_a_match_predicate_is_located(tmp_path: Path) -> None:
    [line] = problems(tmp_path, ("match: \"body.code = 'DUPLICATE'\"", 'match: "body.code = "'))
    assert "delivery.responses[3].when.match: JSONata syntax error" in line


def test_an_unknown_auth_kind_and_unknown_keys(tmp_path: Path) -> None:
    lines = problems(tmp_path, ("  in: query\n", "  in: query\n  header: X-Key\n"))
    assert any("auth.header: unknown key 'header'" in line for line in lines)
    [line] = problems(tmp_path, ("type: api_key", "type: apikey"))
    assert "auth.type" in line


def test_every_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        ('"country": traits.country,', '"country": traits.cty,'),
        ('"source": values.source}', '"source": values.sorce}'),
        ('"name": traits.name,', '"name": $titlecase(traits.name),'),
    )
    assert len(lines) == 3


def test_the_hash_functions_are_known_and_a_misspelt_one_is_not(tmp_path: Path) -> None:
    load_preset(
        str(
            write_acme(
                tmp_path, ACME_PRESET, ('"name": traits.name,', '"name": $sha256(traits.email) & $md5(traits.email),')
            )
        )
    )
    [line] = problems(tmp_path, ('"name": traits.name,', '"name": $sha265(traits.email),'))
    assert line.startswith(f"{located(tmp_path / 'contacts.yaml', '$sha265')}: ")
    assert "unknown function $sha265()" in line


def test_a_mapping_key_the_output_schema_forbids_is_named_at_its_line(tmp_path: Path) -> None:
    """contact.schema.json has additionalProperties: false; "sauce" would fail every event as output_invalid."""
    [line] = problems(tmp_path, ('"source": values.source}', '"sauce": values.source}'))
    key = '"sauce"'
    assert line.startswith(f"{located(tmp_path / 'contacts.yaml', key)}: actions.upsert_contact.mapping: ")
    assert "key 'sauce' is not allowed by the output schema ./contact.schema.json at the top level" in line
    assert "allowed: country, email, name, phone, source" in line


def test_a_forbidden_key_inside_a_merge_and_a_condition_is_found(tmp_path: Path) -> None:
    [line] = problems(
        tmp_path,
        ('{"email": traits.email,', '$merge([{"email": traits.email,'),
        ('"source": values.source}', '"source": values.source}, traits.name ? {"nmae": traits.name} : {}])'),
    )
    key = '"nmae"'
    assert line.startswith(f"{located(tmp_path / 'contacts.yaml', key)}: ") and "key 'nmae' is not allowed" in line


def test_a_computed_key_is_not_guessed_at(tmp_path: Path) -> None:
    load_preset(str(write_acme(tmp_path, ACME_PRESET, ('"source": values.source}', '("so" & "urce"): values.source}'))))


def test_order_by_is_checked_like_any_expression(tmp_path: Path) -> None:
    [line] = problems(
        tmp_path,
        (
            "  rate_limit: {requests: 100, per_seconds: 1}\n",
            "  rate_limit: {requests: 100, per_seconds: 1}\n  order_by: traits.emial\n",
        ),
    )
    assert line.startswith(f"{located(tmp_path / 'contacts.yaml', 'order_by', at='emial')}: delivery.order_by: ")
    assert "traits.emial is not a declared trait" in line


def test_an_unquoted_colon_in_a_message_says_how_to_write_it(tmp_path: Path) -> None:
    path = write_acme(
        tmp_path,
        ACME_PRESET,
        ("      message: the credential was refused\n", "      message: the credential was refused: check the key\n"),
    )
    with pytest.raises(Exception) as info:
        load_preset(str(path))
    text = str(info.value)
    number = next(i for i, line in enumerate(path.read_text().splitlines(), 1) if "check the key" in line)
    assert f"{path}:{number}:" in text and "mapping values are not allowed here" in text
    assert "put the whole value in quotes" in text and "block scalar (>-)" in text


def test_a_response_rule_hidden_behind_an_earlier_one_is_named(tmp_path: Path) -> None:
    hidden = (
        "      message: answered without the created record\n",
        "      message: answered without the created record\n"
        "    - when: {status: 201, step: create}\n      then: deliver\n",
    )
    [line] = problems(tmp_path, hidden)
    path = tmp_path / "contacts.yaml"
    assert line.startswith(f"{located(path, '{status: 201, step: create}', at='{')}: delivery.responses[3].when: ")
    assert "never used: delivery.responses[2] above it matches every answer this one matches" in line


def test_a_rule_after_one_with_a_predicate_or_for_a_missing_answer_is_not_called_hidden(tmp_path: Path) -> None:
    load_preset(
        str(
            write_acme(
                tmp_path,
                ACME_PRESET,
                (
                    "      message: answered without the created record\n",
                    "      message: answered without the created record\n"
                    "    - when: {error: [timeout, connection]}\n      then: retry\n",
                ),
            )
        )
    )
