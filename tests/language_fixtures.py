"""A small generic preset (not any real vendor) used to exercise the preset language itself."""

from __future__ import annotations

import json
from pathlib import Path

ACME_PRESET = """\
# A made-up CRM, used by the tests of the preset language.
preset: acme/contacts
metadata: {title: Acme contacts, destination: acme}
settings:
  api_key: {type: string, required: true, secret: true}
  consent_categories: {type: string_list, default: [marketing]}
  base_url: {type: url, default: "https://api.acme.test"}
identity:
  required: email
  traits:
    email: {normalise: email}
    name: {normalise: text}
    phone: {normalise: phone_e164, region_from: country}
    country: {normalise: country}
consent: {categories_setting: consent_categories, require: all}
events:
  defaults: {action: drop}
  track:
    Signed Up: {action: upsert_contact, values: {source: signup}}
actions:
  upsert_contact:
    mapping: |
      {"email": traits.email, "name": traits.name, "phone": traits.phone, "country": traits.country,
       "source": values.source}
    output:
      schema: ./contact.schema.json
    request:
      method: POST
      url: "{settings.base_url}/v1/contacts"
      headers: {Content-Type: application/json, Accept: application/json}
    upsert:
      strategy: on_conflict
      found: '{"id": $match(conflict.body.message, /id ([0-9]+)/).groups[0]}'
      update:
        method: PATCH
        url: "{settings.base_url}/v1/contacts/{found.id}"
        body: document
auth:
  type: api_key
  key_setting: api_key
  in: query
  name: key
delivery:
  rate_limit: {requests: 100, per_seconds: 1}
  retries: {max_attempts: 3, backoff: {initial_seconds: 0.5, multiplier: 2, max_seconds: 10}}
  responses:
    - when: {status: [200, 201], step: [create, update], match: "$exists(body.id)"}
      then: deliver
    - when: {status: 200, step: lookup}
      then: deliver
    - when: {status: 2xx}
      then: retry
      message: answered without the created record
    - when: {status: 409, match: "body.code = 'DUPLICATE'"}
      then: upsert
      message: merged into the existing contact
    - when: {status: 401}
      then: refresh_auth
      message: the credential was refused
    - when: {status: 429}
      then: wait_rate_limit
      message: over the rate limit
    - when: {status: 5xx}
      then: retry
      message: unavailable
"""

# The output contract, split across two files to exercise $ref between schema files.
CONTACT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["email"],
    "properties": {
        "email": {"type": "string"},
        "name": {"$ref": "./common.schema.json#/$defs/short_text"},
        "phone": {"type": "string"},
        "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
        "source": {"type": "string"},
    },
}
COMMON_SCHEMA = {"$defs": {"short_text": {"type": "string", "maxLength": 10}}}

CONSENT = {"consent": {"canonical": {"marketing": True}}}


def lead(email: str = "Jane@Acme.test", message_id: str = "m-1", **traits: object) -> dict:
    return {
        "type": "track",
        "event": "Signed Up",
        "messageId": message_id,
        "userId": f"u-{message_id}",
        "traits": {"email": email, **traits},
        "context": CONSENT,
    }


def write_acme(folder: Path, preset_text: str = ACME_PRESET, *edits: tuple[str, str]) -> Path:
    """Write the preset and its schemas into ``folder``; ``edits`` are (old, new) replacements."""
    folder.mkdir(parents=True, exist_ok=True)
    for old, new in edits:
        assert preset_text.count(old) == 1, f"edit anchor not unique: {old!r}"
        preset_text = preset_text.replace(old, new)
    path = folder / "contacts.yaml"
    path.write_text(preset_text, encoding="utf-8")
    (folder / "contact.schema.json").write_text(json.dumps(CONTACT_SCHEMA), encoding="utf-8")
    (folder / "common.schema.json").write_text(json.dumps(COMMON_SCHEMA), encoding="utf-8")
    return path
