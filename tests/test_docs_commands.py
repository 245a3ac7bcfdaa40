"""Every command of README.md and docs/*.md that runs main.py, run_lr_finder.py or
prepare_imagenet.py parses with the real parser: no unknown flag, no bad value. A shown
error (a `$ ` line followed by its output) must be the error the parser gives."""

import contextlib
import io
import os
import re
import shlex

import pytest

import cli
import prepare_imagenet
import run_lr_finder

from conftest import REPO

PARSERS = {"main.py": cli.get_args_parser, "run_lr_finder.py": run_lr_finder.get_runner_parser,
           "prepare_imagenet.py": prepare_imagenet.get_args_parser}
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def code_blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)]


def logical_lines(lines: list[str]) -> list[tuple[str, str | None]]:
    """Lines with their backslash continuations joined, each with the line that follows it."""
    joined, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    return [(line, joined[i + 1] if i + 1 < len(joined) else None) for i, line in enumerate(joined)]


def commands(path) -> list[tuple[str, list[str], str, str | None]]:
    """(script, its arguments, the line, the line after it) for each command in the file's code blocks."""
    found = []
    for block in code_blocks(path.read_text()):
        for line, after in logical_lines(block):
            if not any(script in line for script in PARSERS):
                continue
            words = shlex.split(line.lstrip("$ ").split(": ", 1)[-1] if re.match(r"\d+\. \w+: ", line) else
                                line.lstrip("$ "), comments=True)
            for i, word in enumerate(words):
                if os.path.basename(word) in PARSERS and any(
                        w.endswith(("python", "python3", "torchrun")) for w in words[:i]):
                    found.append((os.path.basename(word), words[i + 1:], line, after))
                    break
    return found


ALL = [(path.relative_to(REPO).as_posix(), *command) for path in DOCS for command in commands(path)]


def test_commands_are_found_in_the_readme_and_the_docs():
    files = {f for f, *_ in ALL}
    assert {"README.md", "docs/cli.md", "docs/data.md", "docs/training.md", "docs/performance.md"} <= files
    assert {script for _, script, *_ in ALL} == set(PARSERS)
    assert sum(f == "README.md" for f, *_ in ALL) >= 6


@pytest.mark.parametrize("doc,script,argv,line,after", ALL, ids=[f"{a[0]}:{a[3][:60]}" for a in ALL])
def test_documented_command_parses(doc, script, argv, line, after):
    """Parsed as the script parses it (main.py and the runner also check the flag combinations);
    a command shown failing (``$ ...`` then ``SCRIPT: error: ...``) must fail with that line."""
    parser = PARSERS[script]()
    parser.prog = script
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args, unknown = parser.parse_known_args(argv)
            assert unknown == [], (doc, line, unknown)
            if script != "prepare_imagenet.py":
                cli.validate_args(cli.parse_layered(parser, argv), parser)
    except SystemExit:
        shown = after if line.startswith("$ ") else None
        assert shown is not None and err.getvalue().strip() == shown.strip(), (doc, line, err.getvalue())
        return
    assert not (line.startswith("$ ") and after and after.startswith(f"{script}: error:")), (doc, line, after)
