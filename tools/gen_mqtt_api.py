"""Write docs/asyncapi.yaml and docs/mqtt-api.md from cobot_hybrid_protocol (``--check``: compare).

Run after changing the contract: ``.venv/bin/python tools/gen_mqtt_api.py``. The test suite
runs it with ``--check`` and fails when the files in docs/ are not what the code produces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cobot_hybrid_protocol.asyncapi import CHANNELS, document  # noqa: E402

YAML_PATH = ROOT / 'docs' / 'asyncapi.yaml'
MD_PATH = ROOT / 'docs' / 'mqtt-api.md'


def _type(prop: dict[str, Any]) -> str:
    if 'const' in prop:
        return f'`{json.dumps(prop["const"])}`'
    if 'enum' in prop:
        return ' \\| '.join(f'`{v}`' for v in prop['enum'])
    if 'oneOf' in prop:
        return ' or '.join(_type(p) for p in prop['oneOf'])
    kind = prop.get('type', 'any')
    bounds = []
    if 'minimum' in prop or 'maximum' in prop:
        bounds.append(f'{prop.get("minimum", "-inf"):g}..{prop.get("maximum", "inf"):g}'
                      if isinstance(prop.get('minimum', 0), (int, float)) else '')
    if 'maxLength' in prop:
        bounds.append(f'{prop.get("minLength", 0)}-{prop["maxLength"]} chars')
    if 'maxItems' in prop:
        bounds.append(f'at most {prop["maxItems"]}')
    return f'{kind}' + (f' ({", ".join(b for b in bounds if b)})' if bounds else '')


def _fields(schema: dict[str, Any]) -> list[str]:
    rows = []
    required = set(schema.get('required', ()))
    for name, prop in schema.get('properties', {}).items():
        rows.append(f'| `{name}` | {_type(prop)} | {"yes" if name in required else "no"} | '
                    f'{prop.get("description", "")} |')
    return rows


def render(doc: dict[str, Any]) -> str:
    """Return the Markdown page of the document."""
    schemas = doc['components']['schemas']
    messages = doc['components']['messages']
    lines = [
        '# MQTT API (cobot/v1)', '',
        'Every topic between the robots (`bridge_node`), the cloud planner and its replicas, '
        'with its payload, QoS and retain flag. Generated from `cobot_hybrid_protocol` by '
        '`tools/gen_mqtt_api.py` (with the machine-readable [AsyncAPI 3.0 document]'
        '(asyncapi.yaml)); `test_mqtt_api` checks both are current, that the document is '
        'valid AsyncAPI, and that the messages the bridge and the planner really produce '
        'match it. Do not edit by hand.', '',
        '- [Servers](#servers)', '- [Channels](#channels)', '- [Messages](#messages)',
        '- [Rules every consumer follows](#rules-every-consumer-follows)', '',
        '## Servers', '',
        '| server | host | protocol | security |', '|---|---|---|---|']
    for name, server in doc['servers'].items():
        lines.append(f'| {name} | `{server["host"]}` | {server["protocol"]} '
                     f'{server["protocolVersion"]} | {server["description"]} |')
    lines += ['', '## Channels', '',
              '| topic | sent by | message | QoS | retained | what |', '|---|---|---|---|---|---|']
    for channel_id, (address, _, message, sender, qos, retain, summary) in CHANNELS.items():
        lines.append(f'| `{address}` | {sender} | [{message}](#{message.lower()}) | {qos} | '
                     f'{"yes" if retain else "no"} | {summary} |')
        del channel_id
    lines += ['', '## Messages', '']
    for name, message in messages.items():
        schema = schemas[name]
        lines += [f'### {name}', '', message['summary'] + '.', '']
        if 'headers' in message:
            lines += ['MQTT 5 user properties: `robot_id`, `seq` (decimal), `stamp`.', '']
        data = schema.get('properties', {}).get('data')
        lines += ['| field | type | required | meaning |', '|---|---|---|---|']
        lines += _fields(schema)
        if isinstance(data, dict) and data.get('properties'):
            lines += ['', '`data`:', '', '| field | type | required | meaning |',
                      '|---|---|---|---|'] + _fields(data)
        if name == 'SignedCommand':
            mission = schemas['Mission']
            lines += ['', 'The decoded `payload` (a Mission):', '',
                      '| field | type | required | meaning |', '|---|---|---|---|']
            lines += _fields(mission)
        lines += ['', 'Example:', '', '```json',
                  json.dumps(message['examples'][0]['payload'], indent=2), '```', '']
    lines += [
        '## Rules every consumer follows', '',
        '- Every payload is hostile until parsed: bounded JSON (size, depth, digits, finite '
        'numbers), the schema above, and the robot id of the topic must equal the one in the '
        'payload and in the user properties.',
        '- De-duplicate by `(robot_id, seq)`; a different payload under a seq seen before means '
        "the robot's outbox was replaced: take it as new.",
        '- Acknowledge what you stored, after your own commit, on `delivered` (robots with '
        '`delivery: cloud` keep every message until then).',
        '- Ignore retained events and refuse retained commands and orders.',
        '- Commands are verified on the robot: the signature over payload and robot id, the '
        'validity window and the mission version (replays are refused across restarts).', '']
    return '\n'.join(lines)


def main() -> int:
    """Write (or with --check compare) the two files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true', help='exit 1 if the files differ')
    args = parser.parse_args()
    doc = document()
    outputs = {YAML_PATH: '# Generated by tools/gen_mqtt_api.py from cobot_hybrid_protocol; '
               'do not edit.\n' + yaml.safe_dump(doc, sort_keys=False, width=99,
                                                 allow_unicode=True),
               MD_PATH: render(doc)}
    stale = [p for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f'{path.relative_to(ROOT)} is not what the code produces: run '
                  'tools/gen_mqtt_api.py', file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs[path])
        print(f'wrote {path.relative_to(ROOT)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
