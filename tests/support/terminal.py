"""A real terminal for tests of what a person sees: a tmux session running a command, read with
``capture-pane`` and typed into with ``send-keys``, and the ``maas`` command run as a user would run it."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import REPO, inherited_env


def tmux_missing() -> bool:
    return shutil.which("tmux") is None


def cli_env(home: Path, base_url: str, api_key: str | None) -> dict[str, str]:
    """The environment of a ``maas`` client command: its own HOME (for ``maas login``), the API, the key."""
    env = {**inherited_env(), "HOME": str(home), "MAAS_BASE_URL": base_url, "PYTHONPATH": str(REPO)}
    if api_key:
        env["MAAS_API_KEY"] = api_key
    return env


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def maas(env: dict[str, str], *args: str, timeout_s: float = 600) -> Finished:
    """``python -m cli.main ARGS`` in a child process, awaited, so an API on this event loop keeps serving."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        cwd=REPO,
        env={**env, "COLUMNS": "160"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


class Tmux:
    """One detached tmux session (160x40) running ``args`` then printing ``EXIT=<code>`` and idling."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]):
        self.name = name
        # the shell traps Ctrl-C (a trap, unlike an ignore, is not inherited): it outlives the command to print its code
        command = f"trap : INT; {shlex.join(args)}; echo EXIT=$?; sleep 600"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k.isidentifier())
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "160",
                "-y",
                "40",
                f"env {exports} sh -c {shlex.quote(command)}",
            ],
            cwd=REPO,
            check=True,
            timeout=30,
        )

    def screen(self) -> str:
        done = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True, timeout=30)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True, timeout=30)
