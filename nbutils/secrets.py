"""Tokens (e.g. a Hugging Face token for gated models) without leaking them.

A token is read from the environment, then from Kaggle's or Colab's secret store, and is never
printed, logged or made a notebook parameter (parameters land in executed notebooks and run
records). Pass the returned value straight to the library that needs it.
"""

from __future__ import annotations

import os


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
