"""Entry points: ``naas <command>``, ``naas-enrollment URL`` and ``naas-drawing``.

Exit status: 0 success, 1 failure, 2 bad input (argparse's own errors are 2 too).
Every error is one line on stderr: ``naas: <what is wrong>``, or for a command line
argparse cannot parse, ``<prog>: error: <what> (see <prog> --help)``.
"""

from __future__ import annotations

import argparse
import sys

from naas import __version__
from naas.cli import admin, demo, manage, member, view
from naas.cli.common import EXIT_FAILURE, CliError, Parser


def build_parser() -> argparse.ArgumentParser:
    """``naas``: every command."""
    parser: argparse.ArgumentParser = Parser(
        prog="naas", description="NaaS: an encrypted, full-mesh, layer-2 overlay network."
    )
    parser.add_argument("--version", action="version", version=f"naas {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", help="one of these (`naas COMMAND --help` for its options):"
    )
    sub.required = True
    admin.add_parsers(sub)
    manage.add_parsers(sub)
    member.add_parsers(sub)
    view.add_parsers(sub)
    demo.add_parsers(sub)
    return parser


def enrollment_parser() -> argparse.ArgumentParser:
    """``naas-enrollment``: the same as ``naas join``."""
    parser = Parser(
        prog="naas-enrollment",
        description="Join a NaaS network with an invitation URL (the same as `naas join`): make this"
        " host's keys, enroll at a PoP, create naas0 and start the agent. Give the URL as `-` (read"
        " from standard input) or with --url-file to keep its token out of the process list.",
    )
    member.add_join_arguments(parser)
    return parser


def drawing_parser() -> argparse.ArgumentParser:
    """``naas-drawing``: the same as ``naas draw``."""
    parser = Parser(
        prog="naas-drawing",
        description="Draw the mesh as this member sees it, with Graphviz (the same as `naas draw`).",
    )
    view.add_draw_arguments(parser)
    parser.set_defaults(func=view.cmd_draw)
    return parser


def run(argv: list[str], parser: argparse.ArgumentParser | None = None) -> int:
    """Parse ``argv`` with ``parser`` (default: ``naas``'s) and run the command."""
    args = (parser or build_parser()).parse_args(argv)
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


def enrollment_main(argv: list[str] | None = None) -> int:
    """``naas-enrollment URL|-|--url-file PATH [options]`` = ``naas join ...``."""
    return run(sys.argv[1:] if argv is None else argv, enrollment_parser())


def drawing_main(argv: list[str] | None = None) -> int:
    """``naas-drawing [-o PATH] [--format png|svg|dot|json]`` = ``naas draw ...``."""
    return run(sys.argv[1:] if argv is None else argv, drawing_parser())
