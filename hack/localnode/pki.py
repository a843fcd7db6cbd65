"""The node cluster's certificates: one CA, then a key and certificate per identity.

Made with the openssl CLI on every start (EC P-256 keys take milliseconds), valid for a
few days: the cluster is thrown away long before.
"""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess

DAYS = "7"


@dataclasses.dataclass(frozen=True)
class Identity:
    """One certificate to issue: its file stem, subject, and what it may be used for."""

    stem: str
    common_name: str
    organization: str | None = None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    server: bool = False
    client: bool = False

    def subject(self) -> str:
        organization = f"/O={self.organization}" if self.organization else ""
        return f"{organization}/CN={self.common_name}"

    def extensions(self) -> list[str]:
        usages = [usage for usage, wanted in (("serverAuth", self.server), ("clientAuth", self.client)) if wanted]
        found = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            f"extendedKeyUsage={','.join(usages)}",
        ]
        names = [f"DNS:{name}" for name in self.dns_names] + [f"IP:{ip}" for ip in self.ip_addresses]
        if names:
            found.append(f"subjectAltName={','.join(names)}")
        return found


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _new_key(path: pathlib.Path) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(path)]


def issue(directory: pathlib.Path, identities: list[Identity]) -> None:
    """Write ``ca.crt``/``ca.key`` and ``<stem>.crt``/``<stem>.key`` for each identity into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    _openssl(
        "req", "-x509", "-new", *_new_key(ca_key), "-out", str(ca_cert), "-days", DAYS,
        "-subj", "/CN=agentrun-local-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    for identity in identities:
        extensions = [arg for extension in identity.extensions() for arg in ("-addext", extension)]
        _openssl(
            "req", "-x509", "-new", *_new_key(directory / f"{identity.stem}.key"),
            "-out", str(directory / f"{identity.stem}.crt"), "-days", DAYS,
            "-subj", identity.subject(), "-CA", str(ca_cert), "-CAkey", str(ca_key), *extensions,
        )  # fmt: skip
