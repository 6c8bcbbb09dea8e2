"""Where ``maas login`` keeps the base URL and API key: ``~/.config/maas/credentials.json``, readable by
its owner only (0600, in a 0700 folder), so the key is no less private than an SSH key.

The client commands use, in order: ``--base-url``/``--api-key``, ``MAAS_BASE_URL``/``MAAS_API_KEY``,
then this file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from maas_client.config import from_environment


def credentials_path() -> Path:
    return Path.home() / ".config" / "maas" / "credentials.json"


@dataclass(frozen=True)
class Credentials:
    base_url: str | None
    api_key: str | None


def save(base_url: str, api_key: str, path: Path | None = None) -> Path:
    """Write the file with mode 0600 from the start (never readable by others, even for a moment)."""
    path = path or credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"base_url": base_url, "api_key": api_key}, handle)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC
    return path


def load(path: Path | None = None) -> Credentials:
    path = path or credentials_path()
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return Credentials(None, None)
    return Credentials(stored.get("base_url"), stored.get("api_key"))


def resolve(base_url: str | None, api_key: str | None) -> Credentials:
    """The flags, else the environment, else the stored login (each of the two separately)."""
    env_url, env_key = from_environment()
    stored = load()
    return Credentials(base_url or env_url or stored.base_url, api_key or env_key or stored.api_key)
