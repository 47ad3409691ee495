"""Topology -> DOT (Graphviz's graph language), and DOT -> PNG or SVG.

Theory of operation. ``topology_to_dot`` turns one member's view of the mesh
(core/topology.py) into the source of an undirected graph; ``render`` hands that source to
Graphviz's ``dot`` program and returns the picture. ``naas draw`` and ``naas-drawing`` are
the two halves joined; the split keeps the first half a pure function (the caller passes
the time shown in the title) that tests compare as text, with no program to run.

What is drawn:

- a title: the network's name, whose view it is, and the time the caller gave;
- every member as a node named ``n<node id>`` and labelled with its name and, on a second
  line, its overlay address when it has one; its fill colour says how it is reached from
  the local member (table below); the local member also has a bold double outline;
- PoPs with a dashed outline, given their particular role (they enroll members and
  answer for the network), whatever their fill;
- every live link of the view as an edge labelled with its RTT ("0.4 ms", "12 ms");
  the local member's own links are drawn thicker. A member with no edge has no live
  link in the view (idle, connecting, unreachable, or relayed with unknown links);
- a legend: a cluster holding one node whose table shows a sample of each colour and
  of the PoP outline (one node, so it stays a tidy block whatever the layout does).

Colours (fills, picked light enough for black text and apart in hue):

    this member    #c6b4e8  lavender, bold double outline
    direct         #a8dba8  green
    relayed        #9ecae1  blue      (reached only through another member)
    idle           #e3e3e3  grey      (a large mesh: no link until traffic flows)
    connecting     #fdd38a  amber     (a handshake in flight)
    unreachable    #f4a3a3  red
    PoP            dashed outline, over any of the fills above

Everything is emitted in node id order (links by their two ids), so the same topology
always gives the same text.

Why the ``graphviz`` package: it is well kept, builds the DOT text with correct quoting
and escaping (member names are chosen by people and may hold quotes, backslashes or
``<...>``; we mark them as literal with ``graphviz.escape``), and runs ``dot`` for us,
mapping a missing program or a failing run to exceptions we turn into ``DrawingError``.
"""

from __future__ import annotations

import graphviz

from naas.core.topology import LinkView, MemberView, Reach, Topology

# The fill of each reach, and the legend's words for it.
REACH_COLORS: dict[Reach, str] = {
    Reach.SELF: "#c6b4e8",
    Reach.DIRECT: "#a8dba8",
    Reach.RELAYED: "#9ecae1",
    Reach.IDLE: "#e3e3e3",
    Reach.CONNECTING: "#fdd38a",
    Reach.UNREACHABLE: "#f4a3a3",
}
REACH_LEGEND: dict[Reach, str] = {
    Reach.SELF: "this member",
    Reach.DIRECT: "direct",
    Reach.RELAYED: "relayed (through another member)",
    Reach.IDLE: "idle (no link until traffic)",
    Reach.CONNECTING: "connecting",
    Reach.UNREACHABLE: "unreachable",
}
FORMATS = ("png", "svg")

# Layout: fdp, the spring-model engine. A mesh has no hierarchy for dot's ranks to show,
# and among the force-directed engines fdp is the one that draws clusters, which the
# legend is; neato would scatter the legend's nodes among the members.
_GRAPH_ATTRS = {
    "layout": "fdp",
    "overlap": "false",  # move nodes apart rather than draw them on top of each other
    "splines": "true",  # edges curve around nodes
    "labelloc": "t",
    "fontname": "Helvetica",
    "fontsize": "16",
    "pad": "0.3",
}
_NODE_ATTRS = {"shape": "ellipse", "style": "filled", "fontname": "Helvetica", "fontsize": "11"}
_EDGE_ATTRS = {"fontname": "Helvetica", "fontsize": "9", "color": "#555555", "fontcolor": "#333333"}


class DrawingError(RuntimeError):
    """Graphviz could not draw: ``dot`` is missing or failed, or the format is unknown."""


def topology_to_dot(topology: Topology, when: str) -> str:
    """The DOT source drawing ``topology``; ``when`` is the time to show in the title."""
    me = topology.me
    graph = graphviz.Graph(
        name="naas",
        graph_attr=_GRAPH_ATTRS,
        node_attr=_NODE_ATTRS,
        edge_attr=_EDGE_ATTRS,
    )
    graph.attr(label=_text(f"network {topology.network}, seen from {me.name}", when))
    members = sorted(topology.members, key=lambda m: m.node_id)
    for member in members:
        graph.node(_node_id(member.node_id), **_member_attrs(member, topology.local))
    known = {m.node_id for m in members}
    for link in sorted(topology.links, key=lambda link: (link.a, link.b)):
        if link.a in known and link.b in known:
            graph.edge(_node_id(link.a), _node_id(link.b), **_link_attrs(link, topology.local))
    graph.subgraph(_legend())
    return str(graph.source)


def rtt_label(rtt_ms: float) -> str:
    """An RTT as an edge shows it: one decimal under 10 ms, whole milliseconds above."""
    if rtt_ms < 0.05:
        return "<0.1 ms"
    if rtt_ms < 9.95:
        return f"{rtt_ms:.1f} ms"
    return f"{rtt_ms:.0f} ms"


def render(dot_source: str, fmt: str) -> bytes:
    """Draw ``dot_source`` as ``fmt`` ("png" or "svg") with Graphviz; DrawingError if not."""
    if fmt not in FORMATS:
        raise DrawingError(f"unknown picture format {fmt!r} (png or svg)")
    try:
        data = graphviz.Source(dot_source).pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        raise DrawingError(
            "Graphviz's dot program was not found: install Graphviz (Debian: apt-get install graphviz)"
        ) from None
    except graphviz.CalledProcessError as exc:
        raise DrawingError(f"Graphviz's dot failed: {_first_line(exc.stderr)}") from None
    except OSError as exc:  # dot found but not runnable, for instance
        raise DrawingError(f"Graphviz's dot could not run: {exc}") from None
    return bytes(data)


def _node_id(node_id: int) -> str:
    return f"n{node_id}"


def _text(*lines: str) -> str:
    """A label of literal lines: backslashes and ``<...>`` lose any DOT meaning."""
    return str(graphviz.nohtml("\\n".join(graphviz.escape(line) for line in lines)))


def _member_attrs(member: MemberView, local: int) -> dict[str, str]:
    lines = [member.name] if member.ip is None else [member.name, member.ip.split("/")[0]]  # no prefix length
    is_local = member.node_id == local
    reach = Reach.SELF if is_local else member.reach
    styles = ["filled"]
    if member.pop:
        styles.append("dashed")
    attrs = {
        "label": _text(*lines),
        "fillcolor": REACH_COLORS[reach],
        "tooltip": _text(f"{member.name}: {'this member' if is_local else member.path}"),
    }
    if is_local:
        styles.append("bold")
        attrs["peripheries"] = "2"
    attrs["style"] = ",".join(styles)
    return attrs


def _link_attrs(link: LinkView, local: int) -> dict[str, str]:
    attrs = {"label": rtt_label(link.rtt_ms)}
    if local in (link.a, link.b):
        attrs["penwidth"] = "2"
    return attrs


def _legend() -> graphviz.Graph:
    """The legend: a cluster (its name must start with "cluster") holding one node whose
    HTML-like label is a table of samples, so it stays one tidy block in any layout."""
    rows = []
    for reach, color in REACH_COLORS.items():
        border = "3" if reach is Reach.SELF else "1"
        rows.append(_legend_row(f'BGCOLOR="{color}" BORDER="{border}"', REACH_LEGEND[reach]))
    rows.append(_legend_row('BGCOLOR="white" BORDER="1" STYLE="dashed"', "PoP (dashed outline)"))
    table = '<TABLE BORDER="0" CELLSPACING="3" CELLPADDING="2">' + "".join(rows) + "</TABLE>"
    legend = graphviz.Graph(name="cluster_legend")
    legend.attr(label="legend", fontsize="12", style="rounded", color="#999999")
    legend.node("legend", label=f"<{table}>", shape="plaintext", style="", fontsize="10")
    return legend


def _legend_row(sample: str, text: str) -> str:
    """A legend row: a sample cell drawn as ``sample`` says, then its (static) text."""
    return f'<TR><TD {sample} WIDTH="24" HEIGHT="14"> </TD><TD ALIGN="LEFT">{text}</TD></TR>'


def _first_line(stderr: object) -> str:
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    lines = [line.strip() for line in str(stderr or "").splitlines() if line.strip()]
    return lines[0] if lines else "no message"
