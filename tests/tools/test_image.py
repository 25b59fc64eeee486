"""What each image stage holds, proven by running it: no Docker engine here, so
the test is the builder.

For every stage of the Dockerfile (tests/tools/dockerfile.py reads it), its
COPY steps are replayed into a directory of its own that stands for the image's
root (the build context filtered by .dockerignore, as `docker build` sends
it), its ``RUN pip install`` steps into a fresh venv that stands for the base
image's Python (only what the image installs: requirements.txt and the
package), its ``RUN python -m compileall`` on that venv's library, and its
ENV, WORKDIR and USER are kept. Then its ENTRYPOINT + CMD runs
there as the image's non-root uid (setpriv), with the image's environment only,
in a network namespace of its own (the fixed ports and 0.0.0.0 binds of the
images touch nothing of the machine's), and the HEALTHCHECK command must exit 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devkit.processes import Spawned, launch, temporary_log, wait_until
from tests.netns import Namespace, fetch
from tests.tools import dockerfile as model

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PATH = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_SETUP = ("groupadd ", "useradd ")  # RUN steps that only make the image's user


def image_python_lib() -> str:
    """The base image's Python library, from its tag (python:3.11.14-slim-bookworm)."""
    bases = [stage.base for stage in model.parse(DOCKERFILE).values()]
    (version,) = {m.group(1) for m in map(re.compile(r"python:(\d+\.\d+)").match, bases) if m}
    return f"/usr/local/lib/python{version}"


IMAGE_PYTHON_LIB = image_python_lib()


@dataclass
class Assembled:
    """A stage as the image holds it: its root, Python, environment and user."""

    stage: model.Stage
    root: Path
    python: Path  # the venv's bin/
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "0"

    def path(self, image_path: str) -> Path:
        """An absolute path of the image, in the assembled root."""
        return self.root / image_path.lstrip("/")

    def argv(self, command: list[str]) -> list[str]:
        """The command as the image's PATH and paths resolve it here."""
        program = command[0]
        if "/" not in program:
            program = shutil.which(program, path=f"{self.python}:{PATH}") or program
        mapped = [str(self.path(a)) if a.startswith("/") and self.path(a).exists() else a
                  for a in command[1:]]  # fmt: skip
        return [program, *mapped]

    def python_path(self, word: str) -> str:
        """The base image's Python library is the stand-in venv's: only its own part
        (site-packages) is here, the host's standard library is not the image's."""
        if word == IMAGE_PYTHON_LIB or word.startswith(IMAGE_PYTHON_LIB + "/"):
            (lib,) = (self.python.parent / "lib").glob("python3.*")
            return str(lib) + word[len(IMAGE_PYTHON_LIB) :]
        return word

    def environment(self) -> dict[str, str]:
        """The image's ENV only (absolute paths into the root), and its PATH."""
        env = {"PATH": f"{self.python}:{PATH}", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
        for key, value in self.env.items():
            env[key] = str(self.path(value)) if value.startswith("/") else value
        return env

    def as_user(self, command: list[str]) -> list[str]:
        uid, _, gid = self.user.partition(":")
        return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups",
                *self.argv(command)]  # fmt: skip


class Builder:
    """Replays the stages; a stage's root starts as a copy of its parent's."""

    def __init__(self, home: Path):
        self.home = home
        self.stages = model.parse(DOCKERFILE)
        self.patterns = model.ignore_patterns(ROOT)
        self.built: dict[str, Assembled] = {}

    def build(self, name: str) -> Assembled:
        if name in self.built:
            return self.built[name]
        stage = self.stages[name]
        root = self.home / name / "root"
        if stage.base in self.stages:
            # One venv per chain of stages: a sibling's pip install would leak into it.
            siblings = [other for other in self.stages.values() if other.base == stage.base]
            installs = any(step == "RUN" and "pip" in a for step, a in stage.steps)
            assert not (installs and len(siblings) > 1), (
                f"stage {name}: RUN pip in one of several stages FROM {stage.base} (not replayed)"
            )
            parent = self.build(stage.base)
            shutil.copytree(parent.root, root, symlinks=True)
            image = Assembled(stage, root, parent.python, dict(parent.env), parent.workdir,
                              parent.user)  # fmt: skip
        else:  # the base image: an empty root and a Python with nothing installed
            root.mkdir(parents=True)
            image = Assembled(stage, root, self.fresh_python(name))
        for instruction, arguments in stage.steps:
            self.step(image, instruction, arguments)
        self.built[name] = image
        return image

    def fresh_python(self, name: str) -> Path:
        home = self.home / name / "python"
        subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=120)
        return home / "bin"

    def step(self, image: Assembled, instruction: str, arguments: str) -> None:
        if instruction == "ENV":
            image.env.update(model.env_pairs(arguments))
        elif instruction == "WORKDIR":
            image.workdir = os.path.join(image.workdir, arguments)
            image.path(image.workdir).mkdir(parents=True, exist_ok=True)
        elif instruction == "USER":
            image.user = arguments
        elif instruction == "COPY":
            self.copy(image, arguments.split())
        elif instruction == "RUN":
            self.run(image, arguments)

    def copy(self, image: Assembled, words: list[str]) -> None:
        assert not words[0].startswith("--"), f"COPY {words[0]}: not replayed here"
        *sources, destination = words
        target = destination if destination.startswith("/") else f"{image.workdir}/{destination}"
        place = image.path(target)
        into = target.endswith(("/", "/.")) or place.is_dir()  # Docker's rule for a directory
        for source in sources:
            self.copy_one(source, place, into)

    def copy_one(self, source: str, target: Path, into: bool) -> None:
        origin = ROOT / source
        assert origin.exists(), f"COPY {source}: not in the build context"
        files = (
            [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
        )
        for path in files:
            relative = path.relative_to(ROOT).as_posix()
            if model.dockerignored(relative, self.patterns):
                continue
            if origin.is_file():
                placed = target / origin.name if into else target
            else:
                placed = target / path.relative_to(origin)
            placed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, placed)

    def run(self, image: Assembled, arguments: str) -> None:
        if arguments.startswith(USER_SETUP):
            return  # the uid is given to setpriv directly: no passwd entry needed
        words = arguments.split()
        if words[:3] == ["python", "-m", "compileall"]:
            command = [str(image.python / "python"), *map(image.python_path, words[1:])]
        else:
            assert words[:2] == ["pip", "install"], f"RUN {arguments}: not replayed here"
            command = [str(image.python / "pip"), "install", "--quiet", *image.argv(words)[2:]]
        result = subprocess.run(
            command, cwd=image.path(image.workdir), capture_output=True, text=True, timeout=600,
            env={**clean_environ(), **image.environment()},
        )  # fmt: skip
        assert result.returncode == 0, f"RUN {arguments}:\n{result.stdout}{result.stderr}"


def clean_environ() -> dict[str, str]:
    """The machine's environment without a pycache prefix of its own: the replay
    writes bytecode beside the sources, as the image build does."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}


@pytest.fixture(scope="module")
def builder():
    home = Path(tempfile.mkdtemp(prefix="lbproxy-image-"))
    home.chmod(0o755)  # the image's uid reads its files
    yield Builder(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def namespace():
    space = Namespace()
    yield space
    space.close()


def start(image: Assembled, namespace: Namespace) -> Spawned:
    """The stage's ENTRYPOINT + CMD, as the image would run it."""
    entrypoint = image.stage.last("ENTRYPOINT")
    cmd = image.stage.last("CMD")
    command = (model.exec_form(entrypoint) if entrypoint else []) + (
        model.exec_form(cmd) if cmd else []
    )
    log = temporary_log(f"image-{image.stage.name}")
    popen = launch([*namespace.prefix(), *image.as_user(command)], log, fresh_log=True,
                   env=image.environment(), cwd=image.path(image.workdir))  # fmt: skip
    return Spawned(f"image-{image.stage.name}", popen, log)


def exposed(image: Assembled) -> list[int]:
    return [int(port) for _, a in image.stage.steps if _ == "EXPOSE" for port in a.split()]


def healthcheck(image: Assembled, namespace: Namespace) -> subprocess.CompletedProcess:
    command = model.healthcheck_command(image.stage.last("HEALTHCHECK"))
    return namespace.enter(image.as_user(command), env=image.environment(),
                           cwd=image.path(image.workdir))  # fmt: skip


def serving(image: Assembled, namespace: Namespace) -> Spawned:
    process = start(image, namespace)
    for port in exposed(image):
        if not wait_until(lambda p=port: namespace.listening(p), process, 30, f"port {port}"):
            process.stop()
            pytest.fail(f"{image.stage.name}: port {port} did not open:\n{process.output()}")
    return process


def test_every_stage_runs_as_a_non_root_user(builder):
    for name in ("mock", "proxy"):
        user = builder.build(name).user.split(":")[0]
        assert user not in ("", "0", "root"), f"{name} runs as {user!r}"


def test_the_images_hold_only_the_runtime_requirements(builder):
    """No test or lint tool is in the image's Python: it installs requirements.txt only."""
    python = builder.build("proxy").python / "python"
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    names = {entry["name"].lower() for entry in json.loads(listed)}
    assert {"gunicorn", "gevent", "lbproxy"} <= names
    assert not names & {"pytest", "ruff", "responses", "httptools", "h11", "hypothesis"}


def test_the_images_hold_bytecode_at_the_level_they_run(builder, monkeypatch):
    """PYTHONOPTIMIZE=2 saves memory only where its bytecode is there: the image's
    uid cannot write it, so a missing file is compiled in every process at every
    start. The base image's library is compiled at that level (its standard
    library too: the official images delete its bytecode)."""
    image = builder.build("proxy")
    level = image.env["PYTHONOPTIMIZE"]
    assert level == "2"
    compile_steps = [arguments.split() for stage in builder.stages.values()
                     for step, arguments in stage.steps
                     if step == "RUN" and arguments.startswith("python -m compileall")]  # fmt: skip
    assert compile_steps == [["python", "-m", "compileall", "-q", "-o", level, IMAGE_PYTHON_LIB]]
    monkeypatch.setattr(sys, "pycache_prefix", None)  # as in the image
    (site,) = (image.python.parent / "lib").glob("python3.*/site-packages")
    sources = sorted(site.rglob("*.py"))  # pip's own too: only the compile step covers it
    compiled = (importlib.util.cache_from_source(str(path), optimization=level) for path in sources)
    missing = [path for path in compiled if not Path(path).exists()]
    assert len(sources) > 1000 and not missing, missing[:5]


def test_the_mock_stage_serves_and_its_healthcheck_passes(builder, namespace):
    mock = builder.build("mock")
    process = serving(mock, namespace)
    try:
        status, body = fetch(namespace, "http://127.0.0.1:9001/hello", "anything")
        assert (status, json.loads(body)["instance"]) == (200, "lbserverdown")
        check = healthcheck(mock, namespace)
        assert check.returncode == 0, check.stderr
    finally:
        process.stop()
    assert "Traceback" not in process.output()


def test_the_proxy_stage_answers_through_to_the_mock_stage(builder, namespace):
    """The proxy image's own proxy.yaml routes my-service to 127.0.0.1:9001, where
    the mock image listens (as in `docker run --network host`)."""
    mock = serving(builder.build("mock"), namespace)
    proxy_image = builder.build("proxy")
    proxy = serving(proxy_image, namespace)
    try:
        answers = [fetch(namespace, "http://127.0.0.1:8080/x", "my-service.my-company.com")
                   for _ in range(4)]  # fmt: skip
        assert {(s, json.loads(b)["instance"]) for s, b in answers} == {(200, "lbserverdown")}
        check = healthcheck(proxy_image, namespace)
        assert check.returncode == 0, check.stderr
        titles = {Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0") for pid in proxy.tree()}
        assert titles == {b"lbproxy: master", b"lbproxy: worker"}  # setproctitle is installed
    finally:
        proxy.stop()
        mock.stop()
    assert "Traceback" not in proxy.output()
