"""How a client proves who it is to the broker: TLS (with a client certificate) and a password.

One source for the bridge's and the planner's settings of the same names (``same_as``):
``tls_ca`` (enables TLS; the broker is verified against it), ``tls_cert`` + ``tls_key`` (mTLS:
the certificate's CN is the MQTT username under the shipped mosquitto config), ``username``,
and the password from ``password_file`` or ``password_env``, never from a parameter file.

Pure: :meth:`BrokerAuth.tls_arguments` gives the keyword arguments of paho's ``tls_set``, the
transports apply them.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobot_hybrid_protocol.errors import BrokerAuthError
from cobot_hybrid_protocol.settings import setting

__all__ = ['BrokerAuth', 'BrokerAuthError']

_MAX_PASSWORD_BYTES = 4096


@dataclass(frozen=True)
class BrokerAuth:
    """TLS files and MQTT credentials of one client."""

    tls_ca: str = setting('', 'CA certificate file (enables TLS)')
    tls_cert: str = setting('', 'client certificate file (mTLS), with tls_key')
    tls_key: str = setting('', 'client key file (mTLS)')
    username: str = setting('', 'MQTT username')
    password_file: str = setting('', 'file holding the MQTT password')
    password_env: str = setting('', 'environment variable holding the MQTT password')

    def check(self) -> None:
        """Raise BrokerAuthError saying what is missing or inconsistent."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise BrokerAuthError('tls_cert and tls_key go together (client certificate, mTLS)')
        if self.tls_cert and not self.tls_ca:
            raise BrokerAuthError('tls_cert without tls_ca: give the CA that signed the '
                                  "broker's certificate too")
        for name in ('tls_ca', 'tls_cert', 'tls_key', 'password_file'):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise BrokerAuthError(f'{name} {path} does not exist')
        if self.password_file and self.password_env:
            raise BrokerAuthError('give password_file or password_env, not both')
        if (self.password_file or self.password_env) and not self.username:
            raise BrokerAuthError('a password without a username: set username too')
        if self.password_env and self.password_env not in os.environ:
            raise BrokerAuthError(f'password_env {self.password_env} is not set')

    def password(self) -> str | None:
        """Return the password from its file or environment variable (never from YAML)."""
        if self.password_file:
            data = Path(self.password_file).read_bytes()[:_MAX_PASSWORD_BYTES + 1]
            if len(data) > _MAX_PASSWORD_BYTES:
                raise BrokerAuthError(f'password_file {self.password_file} is larger than '
                                      f'{_MAX_PASSWORD_BYTES} bytes: not a password')
            return data.decode('utf-8', errors='strict').strip()
        if self.password_env:
            return os.environ[self.password_env]
        return None

    def tls_arguments(self) -> dict[str, Any] | None:
        """Keyword arguments of paho's ``tls_set``, or None without TLS."""
        if not (self.tls_ca or self.tls_cert):
            return None
        return {'ca_certs': self.tls_ca or None, 'certfile': self.tls_cert or None,
                'keyfile': self.tls_key or None, 'cert_reqs': ssl.CERT_REQUIRED,
                'tls_version': ssl.PROTOCOL_TLS_CLIENT}

    @classmethod
    def of(cls, config: Any) -> BrokerAuth:
        """Take the six settings from a config that has them (the bridge's, the planner's)."""
        return cls(config.tls_ca, config.tls_cert, config.tls_key, config.username,
                   config.password_file, config.password_env)
