"""Entry points: ``naas <command>``, ``naas-enrollment URL`` and ``naas-drawing``.

Exit status: 0 success, 1 failure, 2 bad input (argparse's own errors are 2 too).
Every error is one line on stderr, ``naas: <what is wrong>``.
"""

from __future__ import annotations

import argparse
import sys

from naas import __version__
from naas.cli import admin, demo, member, view
from naas.cli.common import EXIT_BAD_INPUT, EXIT_FAILURE, CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="naas", description="NaaS: an encrypted, full-mesh, layer-2 overlay network."
    )
    parser.add_argument("--version", action="version", version=f"naas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    admin.add_parsers(sub)
    member.add_parsers(sub)
    view.add_parsers(sub)
    demo.add_parsers(sub)
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"naas: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return code


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)


def enrollment_main() -> int:
    """``naas-enrollment URL [options]`` = ``naas join URL [options]``."""
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: naas-enrollment URL [--foreground] [--force] [--state-dir DIR] [--interface NAME]"
            " [--metrics HOST:PORT] [--no-offload]"
        )
        return 0 if argv else EXIT_BAD_INPUT
    return run(["join", *argv])


def drawing_main() -> int:
    """``naas-drawing [-o PATH] [--format png|svg|dot|json]`` = ``naas draw ...``."""
    return run(["draw", *sys.argv[1:]])
