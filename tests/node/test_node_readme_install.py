"""The README's install section, followed step for step on the node.

The commands are read from the first ``sh`` block under "Install with Helm" and run in
order, each in a shell, from the repository root, with the pinned kubectl and helm and
the ``kubectl-agentrun`` plugin on the PATH. Two things stand in for what this machine
lacks, and nothing else is changed:

- a placeholder in angle brackets gets an example value;
- ``docker`` is a stand-in over buildah, the builder here: ``docker build`` is
  ``buildah build`` with the same arguments on the local Python base (the Dockerfile's
  ``PYTHON_IMAGE``), and ``docker push`` puts the image where the node finds it, in its
  containerd, since there is no registry to push to.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import subprocess
from collections.abc import Iterator

import pytest

import harness
import nodetier
from localnode import images

pytestmark = pytest.mark.node

README = harness.ROOT / "README.md"
PLACEHOLDERS = {"<repository URL>": "https://example.invalid/agentrun"}
NAMESPACE = "agentrun-system"  # the README's
CRD = "agentruns.agentrun.dev"
CRDS = (CRD, "agents.agentrun.dev", "agentthreads.agentrun.dev")
README_IMAGE = "registry.example.com/agentrun-operator:0.1.0"


def install_commands() -> list[str]:
    """The README's install commands, continuation lines joined."""
    section = README.read_text().split("## Install with Helm\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands, current = [], ""
    for line in block.splitlines():
        if line.endswith("\\"):
            current += line[:-1]
            continue
        commands.append((current + line).strip())
        current = ""
    return [command for command in commands if command and not command.startswith("#")]


def docker_stand_in(node: nodetier.Node, directory: pathlib.Path) -> pathlib.Path:
    """A ``docker`` command for the README's steps, over buildah and the node's containerd."""
    buildah = images.Buildah()
    build = shlex.join(["buildah", *buildah.options, "build", *buildah.build_options(node.base_image)])
    push = shlex.join(["buildah", *buildah.options, "push"])
    ctr = shlex.join([str(node.local.binaries.bin_dir / "ctr"), "--address", str(node.local.layout.containerd_socket),
                      "-n", "k8s.io", "images", "import"])  # fmt: skip
    script = directory / "docker"
    script.write_text(
        "#!/bin/bash\n"
        "# docker, as far as the README's install steps use it: buildah, and the node's containerd as the registry.\n"
        "set -euo pipefail\n"
        "command=$1; shift\n"
        'case "$command" in\n'
        f'  build) exec {build} "$@" ;;\n'
        "  push) scratch=$(mktemp -d); trap 'rm -rf \"$scratch\"' EXIT\n"
        f'        {push} "$1" "docker-archive:$scratch/image.tar:$1"\n'
        f'        {ctr} "$scratch/image.tar" ;;\n'
        '  *) echo "docker $command is not one of the README install steps" >&2; exit 2 ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def clean_install(node: nodetier.Node) -> Iterator[None]:
    """The README installs into a cluster that has no release and no CRD yet; both are gone afterwards."""
    assert node.cluster.kubectl("get", "crd", CRD, check=False).returncode != 0, "the CRD is already installed"
    yield
    node.helm.run("uninstall", "agentrun", "--namespace", NAMESPACE, "--wait", check=False)
    node.cluster.kubectl("delete", "agentrun", "hello", "--ignore-not-found", "--timeout=30s", check=False)
    node.cluster.kubectl("delete", "crd", *CRDS, "--ignore-not-found", "--timeout=60s", check=False)
    node.cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=60s", check=False)
    # The README's image stays only in the node, which goes away with the session.
    buildah = images.Buildah()
    subprocess.run(["buildah", *buildah.options, "rmi", README_IMAGE], capture_output=True, check=False)


@pytest.mark.timeout(1500)  # the image is built from scratch: no layer is cached
def test_readme_install_section_works_step_for_step(
    node: nodetier.Node, clean_install: None, tmp_path: pathlib.Path
) -> None:
    commands = install_commands()
    assert commands[0].startswith("docker build "), commands
    assert any(command.startswith("helm install ") for command in commands)
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    docker_stand_in(node, stand_ins)
    env = {**node.helm.env, "PATH": f"{stand_ins}:{node.helm.env['PATH']}"}
    outputs = []
    for command in commands:
        for placeholder, value in PLACEHOLDERS.items():
            command = command.replace(placeholder, shlex.quote(value))
        limit = 900 if command.startswith("docker build ") else 180
        try:
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command],
                cwd=harness.ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=limit,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{command}\nstill running after {limit}s\n{nodetier.diagnose(node, NAMESPACE)}"
            ) from None
        assert result.returncode == 0, (
            f"{command}\nexit {result.returncode}\n{result.stdout[-3000:]}{result.stderr[-3000:]}\n"
            f"{nodetier.diagnose(node, NAMESPACE)}"
        )
        outputs.append(result.stdout)

    # What the steps did: both operator Pods (leader and standby) run the image built from the Dockerfile.
    pods = json.loads(node.cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    assert [pod["spec"]["containers"][0]["image"] for pod in pods] == [README_IMAGE] * 2
    assert node.cluster.run_status("hello", "default")["phase"] == "Succeeded"
    assert "run_succeeded" in outputs[-1], outputs[-1]
