"""Signed commands: every rejection reason, replay across restarts, fuzzed payloads."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from cobot_hybrid_bridge.command_security import CommandRejected, CommandVerifier
from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_protocol.errors import KeyFileError
from cobot_hybrid_protocol.mission import (
    MISSION_SCHEMA,
    Mission,
    mission_to_json,
    validate_mission,
)
from cobot_hybrid_protocol.signing import load_public_keys, sign_command

NOW = 1_795_790_000.0
KEY = Ed25519PrivateKey.generate()


def mission(**overrides: Any) -> dict[str, Any]:
    data = {'schema': MISSION_SCHEMA, 'kind': 'mission', 'command_id': 'm-1-v1',
            'robot_id': 'cobot-a', 'mission_id': 'm-1', 'version': 1, 'issued_at': NOW - 5,
            'valid_until': NOW + 600, 'frame_id': 'map',
            'tasks': [{'task_id': 't1', 'type': 'pick', 'station': 'press-1',
                       'pose': {'x': 1.0, 'y': 2.0, 'z': 0.0, 'yaw': 0.5},
                       'duration_s': 30.0}]}
    data.update(overrides)
    return data


@pytest.fixture
def verifier(tmp_path: Path) -> CommandVerifier:
    v = CommandVerifier('cobot-a', {'planner': KEY.public_key()}, tmp_path / 'replay.db')
    yield v
    v.close()


def test_a_good_mission_is_accepted(verifier: CommandVerifier) -> None:
    accepted = verifier.verify(sign_command(KEY, 'planner', mission(), 'cobot-a'), NOW)
    assert isinstance(accepted, Mission) and accepted.tasks[0].station == 'press-1'
    assert verifier.accepted == 1 and not verifier.rejected


def _tamper(envelope: bytes) -> bytes:
    data = json.loads(envelope)
    payload = json.loads(base64.b64decode(data['payload']))
    payload['tasks'][0]['pose']['x'] = 99.0
    data['payload'] = base64.b64encode(json.dumps(payload).encode()).decode()
    return json.dumps(data).encode()


OTHER_KEY = Ed25519PrivateKey.generate()


@pytest.mark.parametrize(('make', 'reason'), [
    (lambda: b'x' * 300_000, 'too_large'),
    (lambda: b'{not json', 'malformed'),
    (lambda: json.dumps({'payload': 'x'}).encode(), 'malformed'),
    (lambda: sign_command(KEY, 'someone', mission(), 'cobot-a'), 'unknown_key'),
    (lambda: sign_command(OTHER_KEY, 'planner', mission(), 'cobot-a'), 'bad_signature'),
    (lambda: sign_command(KEY, 'planner', mission(), 'cobot-b'), 'bad_signature'),
    (lambda: _tamper(sign_command(KEY, 'planner', mission(), 'cobot-a')), 'bad_signature'),
    (lambda: sign_command(KEY, 'planner', mission(extra=1), 'cobot-a'), 'schema'),
    (lambda: sign_command(KEY, 'planner', mission(version=0), 'cobot-a'), 'schema'),
    (lambda: sign_command(KEY, 'planner', mission(robot_id='cobot-b'), 'cobot-a'),
     'wrong_robot'),
    (lambda: sign_command(KEY, 'planner', mission(issued_at=NOW + 3600,
                                                  valid_until=NOW + 7200), 'cobot-a'),
     'not_yet_valid'),
    (lambda: sign_command(KEY, 'planner', mission(issued_at=NOW - 900, valid_until=NOW - 1),
                          'cobot-a'), 'expired'),
    (lambda: sign_command(KEY, 'planner', mission(valid_until=NOW + 90_000), 'cobot-a'),
     'validity_too_long'),
])
def test_each_bad_command_is_rejected_with_its_reason(verifier: CommandVerifier, make: Any,
                                                      reason: str) -> None:
    with pytest.raises(CommandRejected) as caught:
        verifier.verify(make(), NOW)
    assert caught.value.reason == reason
    assert verifier.rejected == {reason: 1} and verifier.accepted == 0


def test_replay_is_refused_also_after_a_restart(tmp_path: Path) -> None:
    envelope = sign_command(KEY, 'planner', mission(), 'cobot-a')
    first = CommandVerifier('cobot-a', {'planner': KEY.public_key()}, tmp_path / 'r.db')
    first.verify(envelope, NOW)
    with pytest.raises(CommandRejected, match='replayed'):
        first.verify(envelope, NOW + 1)
    first.close()
    second = CommandVerifier('cobot-a', {'planner': KEY.public_key()}, tmp_path / 'r.db')
    with pytest.raises(CommandRejected, match='replayed'):
        second.verify(envelope, NOW + 2)
    newer = sign_command(KEY, 'planner', mission(command_id='m-1-v2', version=2), 'cobot-a')
    assert second.verify(newer, NOW + 3).version == 2
    second.close()


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=2048), st.text(max_size=512).map(str.encode),
                     st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                                  lambda c: st.lists(c) | st.dictionaries(st.text(), c),
                                  max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_fuzzed_payloads_never_crash_the_verifier(tmp_path_factory: pytest.TempPathFactory,
                                                  raw: bytes) -> None:
    verifier = CommandVerifier('cobot-a', {'planner': KEY.public_key()},
                               tmp_path_factory.mktemp('fuzz') / 'r.db')
    try:
        with pytest.raises(CommandRejected):
            verifier.verify(raw, NOW)
    finally:
        verifier.close()


@settings(max_examples=100, deadline=None)
@given(data=st.dictionaries(st.sampled_from(list(mission())), st.integers() | st.text() |
                            st.none() | st.lists(st.integers())))
def test_fuzzed_signed_missions_are_schema_errors_not_crashes(
        tmp_path_factory: pytest.TempPathFactory, data: dict) -> None:
    verifier = CommandVerifier('cobot-a', {'planner': KEY.public_key()},
                               tmp_path_factory.mktemp('fuzz') / 'r.db')
    try:
        with pytest.raises(CommandRejected) as caught:
            verifier.verify(sign_command(KEY, 'planner', {**mission(), **data,
                                                           'version': 'x'}, 'cobot-a'), NOW)
        assert caught.value.reason in ('schema', 'malformed')   # malformed: beyond the limits
    finally:
        verifier.close()


def test_mission_json_round_trip() -> None:
    parsed = validate_mission(mission(tasks=[{
        'task_id': 't', 'type': 'move', 'station': 's', 'duration_s': 0,
        'pose': {'x': 0, 'y': 0, 'z': 0, 'yaw': 0}, 'deadline': NOW + 60}]))
    assert validate_mission(mission_to_json(parsed)) == parsed


def test_public_keys_load_from_pem_files(tmp_path: Path) -> None:
    pem = tmp_path / 'planner.pub'
    pem.write_bytes(KEY.public_key().public_bytes(Encoding.PEM,
                                                  PublicFormat.SubjectPublicKeyInfo))
    assert 'planner' in load_public_keys({'planner': pem})
    with pytest.raises(KeyFileError, match='cannot be read'):
        load_public_keys({'x': tmp_path / 'missing.pub'})
    (tmp_path / 'rsa.pub').write_text('not a key')
    with pytest.raises(KeyFileError, match='rsa.pub cannot be read'):
        load_public_keys({'x': tmp_path / 'rsa.pub'})
    with pytest.raises(BridgeError, match='no cloud public key'):
        CommandVerifier('cobot-a', {}, tmp_path / 'r.db')


# --- hardening: every crash of the issue is a regression test --------------------------------

def _envelope(key_id: object = 'planner', payload: bytes = b'{}', signature: bytes = b'x'
              ) -> bytes:
    return json.dumps({'key_id': key_id, 'payload': base64.b64encode(payload).decode(),
                       'signature': base64.b64encode(signature).decode()}).encode()


@pytest.mark.parametrize('raw', [
    b'{"key_id": ' + b'9' * 5000 + b', "payload": "", "signature": ""}',   # ValueError before
    b'[' * 5000 + b']' * 5000,                                             # RecursionError
    b'{"key_id": "planner", "payload": "", "signature": "", "key_id": 1}',
    b'{"key_id": NaN, "payload": "", "signature": ""}',
])
def test_pathological_envelopes_are_malformed_rejections(verifier: CommandVerifier,
                                                         raw: bytes) -> None:
    with pytest.raises(CommandRejected) as caught:
        verifier.verify(raw, NOW)
    assert caught.value.reason == 'malformed'
    assert verifier.rejected['malformed'] == 1


@pytest.mark.parametrize('command', [
    {'nested': json.loads('[' * 50 + ']' * 50)},
    {'version': 10 ** 30},
    {'issued_at': 1e300},
])
def test_pathological_signed_payloads_are_rejected_not_raised(verifier: CommandVerifier,
                                                              command: dict) -> None:
    with pytest.raises(CommandRejected) as caught:
        verifier.verify(sign_command(KEY, 'planner', mission(**command), 'cobot-a'), NOW)
    assert caught.value.reason in ('malformed', 'schema')


@pytest.mark.parametrize(('task', 'match'), [
    ({'pose': {'x': 1e308, 'y': 0, 'z': 0, 'yaw': 0}}, 'pose.x'),
    ({'pose': {'x': 0, 'y': 0, 'z': 0, 'yaw': 100.0}}, 'pose.yaw'),
    ({'duration_s': 1e300}, 'duration_s'),
    ({'duration_s': -1}, 'duration_s'),
    ({'deadline': 1e12}, 'deadline'),
    ({'task_id': 'a\nb'}, 'task_id'),
])
def test_the_schema_bounds_every_number_and_id(verifier: CommandVerifier, task: dict,
                                               match: str) -> None:
    base = mission()['tasks'][0]
    with pytest.raises(CommandRejected, match=match) as caught:
        verifier.verify(sign_command(KEY, 'planner', mission(tasks=[{**base, **task}]),
                                     'cobot-a'), NOW)
    assert caught.value.reason == 'schema'


def test_duplicate_task_ids_and_huge_versions_are_schema_errors(verifier: CommandVerifier
                                                                ) -> None:
    task = mission()['tasks'][0]
    with pytest.raises(CommandRejected, match='appears twice'):
        verifier.verify(sign_command(KEY, 'planner', mission(tasks=[task, task]), 'cobot-a'),
                        NOW)
    with pytest.raises(CommandRejected, match='version'):
        verifier.verify(sign_command(KEY, 'planner', mission(version=2**63), 'cobot-a'), NOW)


def test_the_reason_is_not_repeated_in_the_detail(verifier: CommandVerifier) -> None:
    with pytest.raises(CommandRejected) as caught:
        verifier.verify(_envelope(), NOW)
    assert caught.value.reason == 'bad_signature'
    assert not caught.value.detail.startswith('bad_signature')
    assert str(caught.value).count('bad_signature') == 1


def test_an_older_version_is_refused_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / 'replay.db'
    first = CommandVerifier('cobot-a', {'planner': KEY.public_key()}, path)
    first.verify(sign_command(KEY, 'planner', mission(version=3, command_id='c3'), 'cobot-a'),
                 NOW)
    first.close()
    again = CommandVerifier('cobot-a', {'planner': KEY.public_key()}, path)
    for version, command_id in ((2, 'c2'), (3, 'c3-other')):
        with pytest.raises(CommandRejected) as caught:
            again.verify(sign_command(KEY, 'planner', mission(version=version,
                                                              command_id=command_id),
                                      'cobot-a'), NOW)
        assert caught.value.reason == 'superseded'
        assert caught.value.mission is not None and caught.value.mission.version == version
    assert again.verify(sign_command(KEY, 'planner', mission(version=4, command_id='c4'),
                                     'cobot-a'), NOW).version == 4
    assert again.versions() == {'m-1': 4}
    again.close()


def test_a_replay_is_refused_after_the_wall_clock_jumped_ahead_and_back(
        verifier: CommandVerifier) -> None:
    command = sign_command(KEY, 'planner', mission(), 'cobot-a')
    verifier.verify(command, NOW)
    # NTP steps the clock two days ahead: the next accepted command purges the window...
    verifier.verify(sign_command(KEY, 'planner', mission(
        mission_id='m-2', command_id='m-2-v1', issued_at=NOW + 2 * 86400 - 5,
        valid_until=NOW + 2 * 86400 + 600), 'cobot-a'), NOW + 2 * 86400)
    # ...and back: the first command is valid again by the clock, and still refused.
    with pytest.raises(CommandRejected) as caught:
        verifier.verify(command, NOW + 1)
    assert caught.value.reason == 'superseded'


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'zeroed_header'])
def test_a_corrupt_replay_store_is_rebuilt_and_refuses_earlier_commands(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'replay.db'
    first = CommandVerifier('cobot-a', {'planner': KEY.public_key()}, path)
    old = sign_command(KEY, 'planner', mission(), 'cobot-a')
    first.verify(old, NOW)
    first.close()
    data = path.read_bytes()
    path.write_bytes({'garbage': b'not a database' * 300, 'truncated': data[:len(data) // 2],
                      'zeroed_header': b'\0' * 100 + data[100:]}[damage])
    for suffix in ('-wal', '-shm'):
        Path(f'{path}{suffix}').unlink(missing_ok=True)

    class Later:
        def wall(self) -> float:
            return NOW + 10

        def monotonic(self) -> float:
            return 0.0

    rebuilt = CommandVerifier('cobot-a', {'planner': KEY.public_key()}, path, clock=Later())
    assert rebuilt.rebuilt_at == NOW + 10
    assert list(tmp_path.glob('replay.db.corrupt-*'))
    assert any('replay store' in r.message for r in caplog.records)
    with pytest.raises(CommandRejected) as caught:   # the replay, issued before
        rebuilt.verify(old, NOW + 10)
    assert caught.value.reason == 'store_rebuilt'
    fresh = sign_command(KEY, 'planner', mission(version=2, command_id='v2',
                                                 issued_at=NOW + 50), 'cobot-a')
    assert rebuilt.verify(fresh, NOW + 60).version == 2
    rebuilt.close()
    reopened = CommandVerifier('cobot-a', {'planner': KEY.public_key()}, path)
    assert reopened.rebuilt_at == rebuilt.rebuilt_at     # remembered across restarts
    reopened.close()
