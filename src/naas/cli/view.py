"""Seeing the mesh: ``naas graph --json`` and ``naas draw`` / ``naas-drawing``.

Both ask the local agent for its live topology over the control socket (the same
snapshot ``naas status`` prints, core/topology.py) and render it: the graph as JSON, or
a drawing through Graphviz (views/dot.py) as PNG, SVG or DOT source, or the topology as
JSON. A drawing is written next to its final name and renamed into place, so a failed
render leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from naas.cli.common import EXIT_OK, BadInput, CliError, add_member_options, member_dir, say, state_dir_of
from naas.cli.member import fetch_status
from naas.core.topology import Topology, TopologyError
from naas.views.dot import DrawingError, render, topology_to_dot

FORMATS = ("png", "svg", "dot", "json")


def fetch_topology(args: argparse.Namespace) -> Topology:
    status = fetch_status(member_dir(state_dir_of(args.state_dir), args.network))
    try:
        return Topology.from_dict(status)
    except TopologyError as exc:
        raise CliError(f"agent sent a topology that does not parse: {exc}") from None


def cmd_graph(args: argparse.Namespace) -> int:
    topology = fetch_topology(args)
    graph = topology.to_dict()["graph"]
    print(json.dumps({"network": topology.network, **graph}, indent=2, sort_keys=True))
    return EXIT_OK


def drawing_bytes(topology: Topology, fmt: str, when: str) -> bytes:
    if fmt == "json":
        return (json.dumps(topology.to_dict(), indent=2, sort_keys=True) + "\n").encode()
    source = topology_to_dot(topology, when)
    if fmt == "dot":
        return source.encode()
    try:
        return render(source, fmt)
    except DrawingError as exc:
        raise CliError(str(exc)) from None


def cmd_draw(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lstrip(".") if args.output not in (None, "-") else ""
        fmt = suffix if suffix in FORMATS else "png"
    if args.output not in (None, "-"):  # bad input fails before the agent is asked
        given = Path(args.output)
        if given.is_dir():
            raise BadInput(f"-o: {given} is a directory")
        if not given.parent.is_dir():
            raise BadInput(f"-o: no directory {given.parent}")
    topology = fetch_topology(args)
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    data = drawing_bytes(topology, fmt, when)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        return EXIT_OK
    target = Path(args.output or f"naas-{topology.network}.{fmt}")
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    say(f"wrote {target} ({fmt}, {len(data)} bytes, {len(topology.members)} members)")
    return EXIT_OK


def add_draw_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="file to write, - for stdout (default naas-NETWORK.FORMAT)")
    parser.add_argument("--format", choices=FORMATS, help="png (default), svg, dot or json")
    add_member_options(parser)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    graph = sub.add_parser("graph", help="the topology as data: members, how each is reached, live links")
    graph.add_argument("--json", action="store_true", help="JSON (the only format; for symmetry with status)")
    add_member_options(graph)
    graph.set_defaults(func=cmd_graph)

    draw = sub.add_parser("draw", help="draw the mesh with Graphviz (same as naas-drawing)")
    add_draw_arguments(draw)
    draw.set_defaults(func=cmd_draw)
