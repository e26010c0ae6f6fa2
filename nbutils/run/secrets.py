"""Tokens (e.g. a Hugging Face token for gated models) without leaking them.

A token is read from the environment, then from Kaggle's or Colab's secret store, and is never
printed, logged or made a notebook parameter (parameters land in executed notebooks and run
records). Pass the returned value straight to the library that needs it.
"""

from __future__ import annotations

import os
import re


def get_secret(name: str) -> str | None:
    """The secret `name`, or None where no store has it. Never printed."""
    value = os.environ.get(name)
    if value:
        return value
    try:  # Kaggle: Add-ons > Secrets
        from kaggle_secrets import UserSecretsClient

        return UserSecretsClient().get_secret(name) or None
    except Exception:  # not on Kaggle, or the secret is not attached
        pass
    try:  # Colab: the key icon in the left bar
        from google.colab import userdata

        return userdata.get(name) or None
    except Exception:
        return None


def describe(value: str | None) -> str:
    """A printable description of a secret that reveals nothing of it."""
    return "set" if value else "not set"


# Query parameters of a URL that carry a credential (`?password=...` in a database URL).
_SECRET_QUERY_KEYS = ("pass", "secret", "token", "key", "credential")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@")


def redact_url(text: str) -> str:
    """`text` with the password of a URL in it masked (`postgresql://user:***@host/db`), and the
    values of query parameters that name a credential (`?password=`, `?token=`) too; other text
    comes back as it is. For database URLs (hpo_storage) and anything else that may carry one."""
    if not isinstance(text, str) or "://" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    if "?" not in text:
        return text
    base, _, query = text.partition("?")
    parts = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        secret = sep and any(key in name.lower() for key in _SECRET_QUERY_KEYS)
        parts.append(f"{name}=***" if secret else pair)
    return f"{base}?{'&'.join(parts)}"


def redact_config(config: dict) -> dict:
    """A copy of a notebook's parameters with the credentials in URL values masked
    (`redact_url`), for the run record."""
    def clean(value):
        if isinstance(value, str):
            return redact_url(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(config)
