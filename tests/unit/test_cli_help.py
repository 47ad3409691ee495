"""Every entry point and every command: complete --help, and one-line errors.

The parsers are walked programmatically, so a new command or option without a help
text, or an argparse error that prints a usage block, fails here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from naas.cli.main import build_parser, drawing_main, drawing_parser, enrollment_main, enrollment_parser, main

ENTRY_POINTS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[list[str]], int]]] = {
    "naas": (build_parser, main),
    "naas-enrollment": (enrollment_parser, enrollment_main),
    "naas-drawing": (drawing_parser, drawing_main),
}


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command words, parser) for ``parser`` and every sub-command under it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def _commands() -> list[tuple[str, tuple[str, ...]]]:
    return [
        (entry, words) for entry, (make, _) in ENTRY_POINTS.items() for words, _parser in _walk(make(), ())
    ]


def _parser_of(entry: str, words: tuple[str, ...]) -> argparse.ArgumentParser:
    return dict(_walk(ENTRY_POINTS[entry][0](), ()))[words]


def _call(entry: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        ENTRY_POINTS[entry][1](argv)
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_the_walk_sees_every_command() -> None:
    words = {w[0] for entry, w in _commands() if entry == "naas" and w}
    assert {
        "init",
        "invite",
        "pop",
        "join",
        "up",
        "down",
        "status",
        "agent",
        "graph",
        "draw",
        "demo",
        "policy",
    } <= words


@pytest.mark.parametrize(
    ("entry", "words"), _commands(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else v
)
def test_every_option_and_command_has_a_help_text(entry: str, words: tuple[str, ...]) -> None:
    parser = _parser_of(entry, words)
    assert parser.description or words, f"{entry}: no description"
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, (
            f"{entry} {' '.join(words)}: {name} has no help"
        )
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            assert helped == set(action.choices), (
                f"{entry}: commands without help: {set(action.choices) - helped}"
            )


@pytest.mark.parametrize(
    ("entry", "words"), _commands(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else v
)
def test_help_exits_0_and_names_the_entry_point(
    entry: str, words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _call(entry, [*words, "--help"], capsys)
    assert code == 0 and err == ""
    assert out.startswith(f"usage: {' '.join((entry, *words))} "), out.splitlines()[0]
    for action in _parser_of(entry, words)._actions:
        for option in action.option_strings:
            assert option in out, f"{option} missing from {entry} {' '.join(words)} --help"


@pytest.mark.parametrize(
    ("entry", "words"), _commands(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else v
)
def test_a_bad_option_is_one_line_and_exit_2(
    entry: str, words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _call(entry, [*words, "--no-such-option"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"{entry}") and ": error: " in err, err


def test_enrollment_help_lists_every_join_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _call("naas-enrollment", ["--help"], capsys)
    assert code == 0
    for option in ("--poll-ms", "--metrics", "--no-offload", "--url-file", "--foreground", "--state-dir"):
        assert option in out
    join = {a.dest for a in _parser_of("naas", ("join",))._actions}
    assert join == {a.dest for a in enrollment_parser()._actions}, "naas-enrollment = naas join"


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["init"], ["invite", "--config"], ["demo", "sideways"]])
def test_argparse_errors_of_naas_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _call("naas", argv, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("naas") and err.rstrip().endswith("--help)"), err


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_installed_scripts_print_one_line(entry: str) -> None:
    script = Path(sys.executable).with_name(entry)
    if not script.exists():
        pytest.skip(f"{entry} is not installed next to {sys.executable}")
    done = subprocess.run([str(script), "--bogus"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"{entry}: error: "), done.stderr
