"""Images for the local node, made without a registry and cached by their inputs.

- ``pause``: the sandbox image, one static binary compiled from ``pause.c``.
- ``python``: a Python 3.11 base from Debian's packages (debootstrap of bookworm), the
  stand-in for ``python:3.11-slim``.
- ``operator``: the repository's own Dockerfile built with buildah on that base, which
  the Dockerfile's ``PYTHON_IMAGE`` build argument selects.

Each image is an archive under ``<cache>/images``, named after a digest of everything
that goes into it, and is loaded into the node's containerd with ``ctr images import``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("AGENTRUN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# python3-venv brings the pip and setuptools wheels; pip installs both from them into /usr/local,
# where the Dockerfile's final `pip uninstall` can remove them, as on python:3.11-slim.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
# Part of the base's cache key with the suite and the packages: bump it when python_base()
# changes what it does to the root filesystem.
BASE_RECIPE = "1"
# The build trusts what this machine trusts (a proxy's CA, say), without baking it into a layer.
HOST_CA_BUNDLE = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")
KEEP_ARCHIVES = 2


class ImageError(RuntimeError):
    """An image could not be built or loaded."""


@dataclasses.dataclass(frozen=True)
class Image:
    """An image archive in the cache and the name it carries."""

    name: str
    archive: pathlib.Path
    key: str


def cache_root() -> pathlib.Path:
    """``$AGENTRUN_CACHE_DIR``, else ``$XDG_CACHE_HOME/agentrun``, else ``~/.cache/agentrun`` (as build.sh)."""
    configured = os.environ.get("AGENTRUN_CACHE_DIR")
    if configured:
        return pathlib.Path(configured)
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "agentrun"


def digest(*parts: bytes) -> str:
    """A short key for a list of inputs."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(hashlib.sha256(part).digest())
    return hasher.hexdigest()[:16]


def _run(*command: str, what: str, cwd: pathlib.Path | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)
    if result.returncode != 0:
        output = f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        raise ImageError(f"{what} failed ({result.returncode}): {' '.join(command)}\n{output}")
    return result.stdout


def _prune(directory: pathlib.Path, prefix: str, keep: pathlib.Path) -> None:
    """Keep the newest archives of one kind; older keys are never used again."""
    archives = sorted(directory.glob(f"{prefix}-*.tar"), key=lambda path: path.stat().st_mtime, reverse=True)
    for old in [path for path in archives if path != keep][KEEP_ARCHIVES - 1 :]:
        old.unlink(missing_ok=True)
        old.with_suffix(".packages").unlink(missing_ok=True)


@contextlib.contextmanager
def _building(directory: pathlib.Path) -> Iterator[None]:
    """One image build at a time per cache: concurrent sessions wait, then find the archive made."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- OCI archives ---------------------------------------------------------------------


def _blob(out: tarfile.TarFile, data: bytes) -> dict[str, object]:
    sha = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{sha}")
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{sha}", "size": len(data)}


def write_oci_archive(path: pathlib.Path, name: str, layer: pathlib.Path, config: Mapping[str, object]) -> None:
    """A one-layer OCI image archive that ``ctr images import`` loads under ``name``."""
    layer_sha = hashlib.sha256()
    with layer.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            layer_sha.update(chunk)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_sha.hexdigest()}"]},
        "history": [{"created_by": "agentrun hack/localnode/images.py"}],
    }
    partial = path.with_suffix(".partial")
    with tarfile.open(partial, "w") as out:
        config_ref = _blob(out, json.dumps(image_config).encode())
        layer_ref = {"digest": f"sha256:{layer_sha.hexdigest()}", "size": layer.stat().st_size}
        out.add(layer, arcname=f"blobs/sha256/{layer_sha.hexdigest()}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_ref},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_ref}],
        }
        manifest_ref = _blob(out, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **manifest_ref,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
        for member, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", json.dumps(index))):
            payload = data if isinstance(data, bytes) else data.encode()
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            out.addfile(info, io.BytesIO(payload))
    partial.rename(path)


# --- pause ----------------------------------------------------------------------------


def pause_image(cache: pathlib.Path | None = None) -> Image:
    """The sandbox image: ``pause.c`` compiled statically, alone in one layer."""
    directory = (cache or cache_root()) / "images"
    source = HERE / "pause.c"
    key = digest(source.read_bytes(), b"gcc -static -Os -s")
    image = Image(f"localhost/agentrun/pause:{key}", directory / f"pause-{key}.tar", key)
    if image.archive.exists():
        return image
    with _building(directory), tempfile.TemporaryDirectory(prefix="agentrun-pause-") as scratch:
        if image.archive.exists():
            return image
        binary = pathlib.Path(scratch) / "pause"
        _run("gcc", "-static", "-Os", "-s", "-o", str(binary), str(source), what="compiling pause.c")
        layer = pathlib.Path(scratch) / "layer.tar"
        with tarfile.open(layer, "w") as out:
            info = out.gettarinfo(str(binary), arcname="pause")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with binary.open("rb") as stream:
                out.addfile(info, stream)
        write_oci_archive(image.archive, image.name, layer, {"Entrypoint": ["/pause"], "User": "65535:65535"})
    _prune(directory, "pause", image.archive)
    return image


# --- the Python base ------------------------------------------------------------------


@contextlib.contextmanager
def _scratch_dir(prefix: str) -> Iterator[pathlib.Path]:
    """A directory that is unmounted and removed whatever happens (debootstrap mounts /proc in it)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR", "/var/tmp")))
    try:
        yield path
    finally:
        for mount in reversed(_mounts_under(path)):
            subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def _mounts_under(path: pathlib.Path) -> list[str]:
    found = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == str(path) or point.startswith(f"{path}/"):
            found.append(point)
    return sorted(found)


def _in_chroot(rootfs: pathlib.Path, *command: str, what: str) -> str:
    """A command inside ``rootfs``, with none of this machine's environment (pip settings, say)."""
    clean_env = ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root"]
    return _run(*clean_env, "/usr/sbin/chroot", str(rootfs), *command, what=what)


def python_base(cache: pathlib.Path | None = None) -> Image:
    """Python 3.11 from Debian bookworm, with pip and setuptools in /usr/local as on ``python:3.11-slim``."""
    directory = (cache or cache_root()) / "images"
    key = digest(DEBIAN_SUITE.encode(), " ".join(BASE_PACKAGES).encode(), BASE_RECIPE.encode())
    image = Image(f"localhost/agentrun/python:3.11-{DEBIAN_SUITE}-{key}", directory / f"python-{key}.tar", key)
    if image.archive.exists():
        return image
    started = time.monotonic()
    with _building(directory), _scratch_dir("agentrun-base-") as scratch:
        if image.archive.exists():
            return image
        rootfs = scratch / "rootfs"
        _run(
            "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR,
            what="debootstrap of the Python base",
        )  # fmt: skip
        packages = _finish_base(rootfs)
        layer = scratch / "layer.tar"
        _run(
            "tar", "--numeric-owner", "--sort=name", "--xattrs", "-C", str(rootfs),
            "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./run/*",
            "-cf", str(layer), ".",
            what="packing the base layer",
        )  # fmt: skip
        config = {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["python3"],
        }
        image.archive.with_suffix(".packages").write_text(packages)
        write_oci_archive(image.archive, image.name, layer, config)
    print(f"images: built the Python base {image.name} in {time.monotonic() - started:.0f}s", flush=True)
    _prune(directory, "python", image.archive)
    return image


def _finish_base(rootfs: pathlib.Path) -> str:
    """Turn a debootstrapped root into the base image's; return its package list."""
    # As on the python images: pip may install into the system, and does so under /usr/local.
    (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    # Debian's ensurepip refuses the system Python; pip installs itself from its own wheel instead.
    install_pip = (
        "set -- /usr/share/python-wheels/pip-*.whl /usr/share/python-wheels/setuptools-*.whl && "
        'python3 "$1/pip" install --no-index --no-cache-dir --disable-pip-version-check --root-user-action=ignore "$@"'
    )
    _in_chroot(rootfs, "sh", "-c", install_pip, what="installing pip into the base")
    packages = _in_chroot(rootfs, "dpkg-query", "-W", what="listing the base's packages")
    for trimmed in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists"):
        for child in (rootfs / trimmed).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for generated in ("var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin", "etc/resolv.conf"):
        (rootfs / generated).unlink(missing_ok=True)
    (rootfs / "etc/hostname").write_text("localhost\n")
    return packages


# --- the operator image -----------------------------------------------------------------


class Buildah:
    """buildah with its storage in the cache (overlay driver), where the Python base stays loaded."""

    def __init__(self, cache: pathlib.Path | None = None) -> None:
        root = (cache or cache_root()) / "buildah"
        self.options = ["--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "overlay"]

    def __call__(self, *args: str, what: str, cwd: pathlib.Path | None = None) -> str:
        return _run("buildah", *self.options, *args, what=what, cwd=cwd)

    def has(self, name: str) -> bool:
        result = subprocess.run(["buildah", *self.options, "inspect", "--type", "image", name], capture_output=True)
        return result.returncode == 0

    def load_base(self, base: Image) -> None:
        """Make the base archive available under its name, for ``FROM ${PYTHON_IMAGE}``."""
        if self.has(base.name):
            return
        image_id = self("pull", f"oci-archive:{base.archive}", what="loading the Python base").split()[-1]
        self("tag", image_id, base.name, what="naming the Python base")

    def build_options(self, base: Image) -> list[str]:
        """Options of ``buildah build`` for the Dockerfile on ``base``, its ``PYTHON_IMAGE``; nothing is pulled.

        No layer cache: buildah 1.28 reuses a cached ``RUN --mount=...,from=build`` step even when
        the wheels it mounts changed, which would ship stale code under a new name.
        """
        options = [
            "--pull=never", "--network=host", "--isolation=chroot",
            "--build-arg", f"PYTHON_IMAGE={base.name}",
        ]  # fmt: skip
        if HOST_CA_BUNDLE.exists():
            options += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        return options


def context_files(context: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """The files of the Docker build context: the allowlist in ``.dockerignore``, minus byte code."""
    allowed = [
        line.strip()[1:].strip("/")
        for line in (context / ".dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    ]
    found = [context / "Dockerfile", context / ".dockerignore"]
    for entry in allowed:
        path = context / entry
        if path.is_file():
            found.append(path)
        for child in sorted(path.rglob("*")) if path.is_dir() else []:
            if child.is_file() and "__pycache__" not in child.parts and child.suffix not in (".pyc", ".pyo", ".pyd"):
                found.append(child)
    return found


def operator_image(base: Image, cache: pathlib.Path | None = None, *, context: pathlib.Path = ROOT) -> Image:
    """The repository's Dockerfile built on ``base``; its key covers the base and every file of the context."""
    directory = (cache or cache_root()) / "images"
    files = context_files(context)
    key = digest(base.key.encode(), *(str(path.relative_to(context)).encode() for path in files),
                 *(path.read_bytes() for path in files))  # fmt: skip
    image = Image(f"localhost/agentrun-operator:{key}", directory / f"operator-{key}.tar", key)
    if image.archive.exists():
        return image
    started = time.monotonic()
    with _building(directory):
        if image.archive.exists():
            return image
        buildah = Buildah(cache)
        buildah.load_base(base)
        buildah("build", *buildah.build_options(base), "--tag", image.name, str(context),
                what="buildah build of the Dockerfile", cwd=context)  # fmt: skip
        partial = image.archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        buildah("push", image.name, f"docker-archive:{partial}:{image.name}", what="saving the operator image")
        partial.rename(image.archive)
        # The archive is the cache; buildah's storage keeps only the base.
        buildah("rmi", image.name, what="removing the built image from buildah's storage")
    print(f"images: built {image.name} from the Dockerfile in {time.monotonic() - started:.0f}s", flush=True)
    _prune(directory, "operator", image.archive)
    return image
