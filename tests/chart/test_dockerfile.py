"""The Dockerfile and .dockerignore, checked statically (no container engine is needed).

Parsed like the builder reads them: line continuations, stages, ARG defaults; then the
properties the chart relies on: a numeric non-root user, no build tools in the final
image, and the same `agentrun operator` command the integration tests run.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shlex
import subprocess
import tomllib
from typing import Any

import pytest

import agentrun
import harness

pytestmark = pytest.mark.chart

DOCKERFILE = harness.ROOT / "Dockerfile"
DOCKERIGNORE = harness.ROOT / ".dockerignore"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make ", "cmake", "clang", "apt-get", "apk add", "hatchling")


@dataclasses.dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclasses.dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction]
    args: dict[str, str]

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.image} has no {keyword}"
        return found[-1]


def instructions(text: str) -> list[Instruction]:
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue  # comments and parser directives
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    parsed = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        parsed.append(Instruction(keyword.upper(), " ".join(arguments.split())))
    return parsed


def _arg_defaults(arguments: str) -> dict[str, str]:
    found = {}
    for word in shlex.split(arguments):
        name, _, default = word.partition("=")
        found[name] = default
    return found


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    global_args: dict[str, str] = {}
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            image = _expand(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(image, name, [], {}))
        elif not found:
            assert instruction.keyword == "ARG", f"{instruction.keyword} before the first FROM"
            global_args.update(_arg_defaults(instruction.arguments))
        else:
            stage = found[-1]
            if instruction.keyword == "ARG":
                stage.args.update(_arg_defaults(instruction.arguments))
            stage.instructions.append(Instruction(instruction.keyword, _expand(instruction.arguments, stage.args)))
    return found


def key_values(arguments: str) -> dict[str, str]:
    """``KEY=value`` pairs of an ENV or LABEL instruction."""
    return dict(word.split("=", 1) for word in shlex.split(arguments))


STAGES = stages(DOCKERFILE.read_text())
BUILD, FINAL = STAGES[0], STAGES[-1]


def test_multi_stage_on_python_311_slim() -> None:
    assert len(STAGES) >= 2
    assert all(stage.image == "python:3.11-slim" for stage in STAGES), [s.image for s in STAGES]
    assert BUILD.name == "build"
    assert FINAL.name is None or FINAL.name != BUILD.name


def test_build_stage_makes_wheels_of_the_project_and_its_dependencies() -> None:
    runs = " && ".join(BUILD.all("RUN"))
    assert re.search(r"pip wheel --no-deps (--wheel-dir|-w) /wheels \.", runs), runs
    assert re.search(r"pip wheel (--wheel-dir|-w) /wheels --requirement", runs), runs


def test_final_stage_installs_wheels_only() -> None:
    [install] = [run for run in FINAL.all("RUN") if "pip install" in run]
    assert "--no-index" in install
    assert "--find-links=/wheels" in install
    assert "from=build" in install  # the wheels come from the build stage
    assert "agentrun-operator" in install
    for source in FINAL.all("COPY") + FINAL.all("ADD"):
        assert "--from=build" in source, f"the final stage copies from the build context: {source}"
    text = " ".join(i.arguments for i in FINAL.instructions).lower()
    for tool in BUILD_TOOLS:
        assert tool not in text, f"{tool.strip()} in the final stage"


def test_final_user_is_numeric_and_not_root() -> None:
    user = FINAL.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: the kubelet can only check runAsNonRoot for a numeric user"
    assert gid.isdigit(), f"USER {user}: numeric group"
    assert (int(uid), int(gid)) == (65532, 65532)
    # Nothing runs as root after the switch.
    after = FINAL.instructions[[i.keyword for i in FINAL.instructions].index("USER") :]
    assert "RUN" not in [i.keyword for i in after]


def test_final_environment_and_labels() -> None:
    env: dict[str, str] = {}
    for arguments in FINAL.all("ENV"):
        env.update(key_values(arguments))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    labels: dict[str, str] = {}
    for arguments in FINAL.all("LABEL"):
        labels.update(key_values(arguments))
    assert labels["org.opencontainers.image.title"] == "agentrun-operator"
    assert labels["org.opencontainers.image.description"]
    # The repository URL is the publisher's: passed at build time with --build-arg SOURCE=...
    assert 'org.opencontainers.image.source="${SOURCE}"' in DOCKERFILE.read_text()
    assert "org.opencontainers.image.source" in labels
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == agentrun.__version__


def test_entrypoint_is_the_command_the_integration_tests_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    entrypoint = json.loads(FINAL.last("ENTRYPOINT"))
    command = json.loads(FINAL.last("CMD"))
    assert (entrypoint, command) == (["agentrun"], ["operator"])

    class StubCluster:
        operator_kubeconfig = tmp_path / "kubeconfig"

        def env(self, **extra: str) -> dict[str, str]:
            return dict(extra)

    launched: list[list[str]] = []

    def record(argv: list[str], **_: Any) -> subprocess.Popen[bytes]:
        launched.append(argv)
        return None  # type: ignore[return-value]

    monkeypatch.setattr(harness.subprocess, "Popen", record)
    harness.OperatorProcess(StubCluster(), [], tmp_path).start(wait_ready=False)  # type: ignore[arg-type]
    [argv] = launched
    assert [pathlib.Path(argv[0]).name, *argv[1:]] == entrypoint + command
    # `agentrun` is the package's console script, installed from the wheel.
    project = tomllib.loads((harness.ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["agentrun"] == "agentrun.cli:main"


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
            continue
        if pattern.startswith("**", index):
            out += ".*"
            index += 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", index)
            out += pattern[index : end + 1]
            index = end
        else:
            out += re.escape(char)
        index += 1
    return re.compile(out + r"\Z")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw.removeprefix("!").strip().strip("/")
        regex = _glob_regex(pattern)
        if any(regex.match(candidate) for candidate in candidates):
            verdict = not negated
    return verdict


DOCKERIGNORE_PATTERNS = [
    line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "tests/chart/test_dockerfile.py",
        "bench/results/run.json",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/content",
        ".import_linter_cache/x",
        ".demo/cluster/kubeconfig",
        "charts/agentrun-operator/values.yaml",
        "operator/agentrun/__pycache__/cli.cpython-311.pyc",
        "dist/agentrun_operator-0.1.0-py3-none-any.whl",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert ignored(path, DOCKERIGNORE_PATTERNS)


def test_dockerignore_keeps_what_the_wheel_build_needs() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "operator"], cwd=harness.ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    sources = [path for path in tracked if not ignored(path, DOCKERIGNORE_PATTERNS)]
    assert "operator/agentrun/cli.py" in sources
    assert sources == tracked, "the context drops files of the package"
    for needed in ("pyproject.toml", "README.md"):
        assert not ignored(needed, DOCKERIGNORE_PATTERNS), needed
    # Everything the build stage COPYs is in the context.
    for copy in BUILD.all("COPY"):
        for source in copy.split()[:-1]:
            assert not ignored(source.rstrip("/"), DOCKERIGNORE_PATTERNS), copy
    readme = tomllib.loads((harness.ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert any(readme in copy.split() for copy in BUILD.all("COPY")), "hatchling needs the README"
