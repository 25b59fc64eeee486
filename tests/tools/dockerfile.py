"""The Dockerfile read as a builder reads it: stages, their instructions, and the
build context .dockerignore leaves. Shared by test_deploy.py (what the file
says) and test_image.py (what each stage holds and runs)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    base: str  # a stage name of this file, or an image
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def last(self, instruction: str) -> str | None:
        found = [arguments for name, arguments in self.steps if name == instruction]
        return found[-1] if found else None


def parse(dockerfile: Path) -> dict[str, Stage]:
    """{stage name: Stage}, in file order; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction, arguments = instruction.upper(), arguments.strip()
        if instruction == "FROM":
            words = arguments.split()
            name = words[-1] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages.setdefault(name, Stage(name, words[0]))
        assert current is not None, f"{instruction} before any FROM"
        current.steps.append((instruction, arguments))
    return stages


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, oldest first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def env_pairs(arguments: str) -> dict[str, str]:
    """``ENV A=1 B="two words"`` -> {"A": "1", "B": "two words"}."""
    return dict(word.split("=", 1) for word in shlex.split(arguments))


def exec_form(arguments: str) -> list[str]:
    """The JSON array of CMD, ENTRYPOINT and HEALTHCHECK ... CMD (the shell form is
    refused: it would run /bin/sh as PID 1, which forwards no signals)."""
    assert arguments.startswith("["), f"not the exec form: {arguments}"
    return json.loads(arguments)


def healthcheck_command(arguments: str) -> list[str]:
    """``HEALTHCHECK --interval=10s ... CMD ["python", ...]`` -> the command."""
    _, _, command = arguments.partition(" CMD ")
    return exec_form(command.strip())


def ignore_patterns(context: Path) -> list[str]:
    path = context / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent of it wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        # Character classes, as Go's filepath.Match has them: [abc], [a-z], [!abc].
        regex = regex.replace(r"\[!", "[^").replace(r"\[", "[").replace(r"\]", "]")
        regex = regex.replace(r"\-", "-")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored
