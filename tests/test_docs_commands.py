"""Every ``eval.py`` command written in the README and docs/ parses with today's flags.

Commands are read from code blocks (``python eval.py ...``, ``torchrun ... eval.py ...``, with ``\\``
continuations and ``$ `` prompts) and from inline code spans; each is handed to ``eval.py``'s own parser,
so a renamed or removed flag in the code fails here until the docs are updated.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import eval as entry

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _block_commands(text: str) -> list[str]:
    commands: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"^\s*\$ ", "", line).strip()
            if re.search(r"(^|&& |\s)(python|torchrun)\b.*\beval\.py\b", line) and not line.startswith("#"):
                commands.append(line)
    return commands


def _inline_commands(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = re.findall(r"`([^`\n]*\beval\.py [^`\n]*)`", text)
    return [c for c in spans if " --" in c and "..." not in c and not re.search(r"\w[/|]\w", c.split("--")[0])]


def _argv(command: str) -> list[str]:
    """The arguments after ``eval.py`` of the last ``eval.py`` call in a shell line."""
    words = shlex.split(command.split("&&")[-1] if "eval.py" in command.split("&&")[-1] else command, comments=True)
    words = words[words.index("eval.py") + 1:] if "eval.py" in words else []
    return [w for w in words if w not in ("|", "...")]


def _cases() -> list[tuple[str, str]]:
    cases = []
    for doc in DOCS:
        text = doc.read_text()
        for command in _block_commands(text) + _inline_commands(text):
            if "..." in command or "eval.py" not in command:
                continue
            cases.append((doc.name, command))
    return cases


CASES = _cases()


def test_the_docs_name_commands() -> None:
    assert len(CASES) > 30 and any(doc == "README.md" for doc, _ in CASES)


@pytest.mark.parametrize("doc,command", CASES, ids=[f"{d}:{c[:60]}" for d, c in CASES])
def test_documented_command_parses(doc: str, command: str, capsys) -> None:
    argv = _argv(command)
    parser, _ = entry.build_parser(argv)
    try:
        parser.parse_args(argv)
    except SystemExit as stop:
        if stop.code == 0:  # -h
            return
        err = capsys.readouterr().err.strip().splitlines()
        pytest.fail(f"{doc}: `{command}` no longer parses ({err[-1] if err else stop.code})")
