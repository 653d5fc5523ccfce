"""One real Azure Blob Storage-compatible server (Azurite, Microsoft's emulator, from the npm
registry: `make test` installs it into `.azurite/`) on loopback per test session, reached
through the `azure_connection` session fixture in tests/conftest.py.

bertetl reaches it as a user reaches a storage account, through `--storage-option
connection_string=...` (Azurite's well-known development account and key).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.io.servers import serving

#: Where `make test` installs Azurite (`npm install --prefix .azurite azurite`).
INSTALLED = Path(__file__).resolve().parents[2] / ".azurite" / "node_modules" / ".bin"
#: Azurite's documented development account.
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def binary() -> str | None:
    """The `azurite-blob` command: the one `make test` installed, else one on PATH."""
    installed = INSTALLED / "azurite-blob"
    return str(installed) if installed.exists() else shutil.which("azurite-blob")


@contextmanager
def running() -> Iterator[str]:
    """Start Azurite's blob service in memory; yields the connection string, then stops it."""
    command = binary()
    assert command, "Azurite is not installed: run `make test` (npm install --prefix .azurite)"

    def start(port: int) -> tuple[list[str], str]:
        arguments = ["--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                     "--silent", "--skipApiVersionCheck", "--loose"]  # fmt: skip
        return [command, *arguments], f"http://127.0.0.1:{port}/{ACCOUNT}"

    with serving(start, "Azurite") as port:
        endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={endpoint};"
        )


def service(connection: str):
    """An azure-storage-blob service client (as a user's own code would make one)."""
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(connection)


def new_container(connection: str) -> str:
    """A fresh container on the server."""
    name = f"bertetl-{uuid.uuid4().hex[:12]}"
    service(connection).create_container(name)
    return name
