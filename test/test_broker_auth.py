"""Broker credentials: one set of settings for the bridge and the planner, checked up front."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mqtt_link import LinkConfig
from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.service import PlannerConfig
from cobot_hybrid_protocol.broker_auth import BrokerAuth
from cobot_hybrid_protocol.errors import BrokerAuthError
from cobot_hybrid_protocol.settings import sources

NAMES = ('tls_ca', 'tls_cert', 'tls_key', 'username', 'password_file', 'password_env')


def test_the_bridge_and_the_planner_take_the_same_settings_from_one_source() -> None:
    assert dict(sources(LinkConfig, BrokerAuth)) == {n: n for n in NAMES}
    assert dict(sources(PlannerConfig, BrokerAuth)) == {n: n for n in NAMES}


def files(tmp_path: Path) -> dict[str, str]:
    for name in ('ca.crt', 'me.crt', 'me.key', 'password'):
        (tmp_path / name).write_text('s3cret\n' if name == 'password' else 'x')
    return {'tls_ca': str(tmp_path / 'ca.crt'), 'tls_cert': str(tmp_path / 'me.crt'),
            'tls_key': str(tmp_path / 'me.key')}


@pytest.mark.parametrize(('given', 'needle'), [
    ({'tls_cert': 'me.crt'}, 'go together'),
    ({'tls_cert': 'me.crt', 'tls_key': 'me.key'}, 'without tls_ca'),
    ({'tls_ca': 'nowhere.crt'}, 'does not exist'),
    ({'username': 'u', 'password_file': 'password', 'password_env': 'HOME'}, 'not both'),
    ({'password_env': 'HOME'}, 'without a username'),
    ({'username': 'u', 'password_env': 'COBOT_HYBRID_UNSET_VARIABLE'}, 'is not set'),
])
def test_incomplete_credentials_are_refused_by_both_clients(tmp_path: Path, given: dict,
                                                            needle: str) -> None:
    files(tmp_path)
    values = {k: (str(tmp_path / v) if k in ('tls_ca', 'tls_cert', 'tls_key', 'password_file')
                  else v) for k, v in given.items()}
    with pytest.raises(BrokerAuthError, match=needle):
        BrokerAuth(**values).check()
    with pytest.raises(BridgeError, match=needle):
        LinkConfig(robot_id='cobot-a', **values)
    with pytest.raises(PlannerError, match=needle):
        PlannerConfig(**values)


def test_tls_and_the_password_are_what_the_transports_get(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    tls = files(tmp_path)
    auth = BrokerAuth(**tls, username='planner', password_file=str(tmp_path / 'password'))
    auth.check()
    assert auth.tls_arguments() == {'ca_certs': tls['tls_ca'], 'certfile': tls['tls_cert'],
                                    'keyfile': tls['tls_key'], 'cert_reqs': ssl.CERT_REQUIRED,
                                    'tls_version': ssl.PROTOCOL_TLS_CLIENT}
    assert auth.password() == 's3cret'
    assert BrokerAuth().tls_arguments() is None and BrokerAuth().password() is None
    monkeypatch.setenv('COBOT_HYBRID_TEST_PASSWORD', 'from-env')
    assert BrokerAuth(username='u', password_env='COBOT_HYBRID_TEST_PASSWORD').password() == \
        'from-env'


def test_a_huge_password_file_is_refused_not_read(tmp_path: Path) -> None:
    big = tmp_path / 'password'
    big.write_bytes(b'x' * 100_000)
    with pytest.raises(BrokerAuthError, match='not a password'):
        BrokerAuth(username='u', password_file=str(big)).password()


def test_the_serve_command_takes_the_credentials(tmp_path: Path) -> None:
    import argparse

    from cobot_hybrid_planner import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(['serve', '--site', 's.yaml', '--key', 'k.pem', '--tls-ca', 'ca',
                              '--tls-cert', 'c', '--tls-key', 'k', '--username', 'planner',
                              '--password-env', 'PW'])
    assert (args.tls_ca, args.tls_cert, args.tls_key, args.username, args.password_env) == \
        ('ca', 'c', 'k', 'planner', 'PW')


def _submit(*args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', 'submit', *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_submit_checks_the_order_before_it_goes_anywhere(tmp_path: Path) -> None:
    import json

    from conftest import ROOT, free_port

    wrong = tmp_path / 'wrong.json'
    wrong.write_text(json.dumps({'schema': 'something/else', 'tasks': []}))
    result = _submit(str(wrong), '--port', str(free_port()))
    assert result.returncode == 2 and 'is not a work order' in result.stderr
    examples = ROOT / 'config' / 'examples'
    nobody = tmp_path / 'nobody.json'
    nobody.write_text(json.dumps({'schema': 'cobot_hybrid/orders/v1', 'order_id': 'o', 'tasks': [
        {'task_id': 't', 'type': 'pick', 'station': 'nowhere', 'capability': 'pick',
         'duration_s': 1}]}))
    result = _submit(str(nobody), '--site', str(examples / 'site.yaml'))
    assert result.returncode == 2 and 'would reject every task' in result.stderr, result.stderr
    result = _submit(str(examples / 'orders.yaml'), '--port', str(free_port()))
    assert result.returncode == 2 and 'cannot reach the broker' in result.stderr, result.stderr


@pytest.mark.broker
def test_submit_says_when_no_planner_listens(mosquitto_broker: Any) -> None:
    from conftest import ROOT

    result = _submit(str(ROOT / 'config' / 'examples' / 'orders.yaml'), '--port',
                     str(mosquitto_broker.port))
    assert result.returncode == 2 and 'no planner subscribes' in result.stderr, result.stderr
