"""The drawing (views/dot.py): the DOT text of a hand-made topology (nodes, colours,
the PoP outline, RTT edges, legend, title, quoting, determinism) and rendering it with
Graphviz's dot (SVG, PNG, and a clear DrawingError when dot is missing or fails)."""

from __future__ import annotations

import re
import shutil
import struct
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from naas.core.topology import LinkView, MemberView, Reach, Topology
from naas.views.dot import REACH_COLORS, DrawingError, render, rtt_label, topology_to_dot

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")

WHEN = "2024-05-01 12:00:00 UTC"
WEIRD = 'we"ird\\name <b>x</b> \\'  # a quote, backslashes (one at the end), HTML-ish text


def member(
    node_id: int, name: str, reach: Reach, *, pop: bool = False, ip: str | None = None, via: str | None = None
) -> MemberView:
    return MemberView(
        node_id=node_id,
        name=name,
        pop=pop,
        ip=ip,
        mac=f"02:00:00:00:00:{node_id:02x}",
        reach=reach,
        via=via,
    )


def mesh(weird_name: str = "direct-one") -> Topology:
    """laptop's view: a PoP and a direct member linked to it, a member relayed via the
    PoP, an idle one, one connecting (no address yet) and an unreachable one."""
    return Topology(
        network="acme",
        local=5,
        mtu=1380,
        members=(
            member(5, "laptop", Reach.SELF, ip="172.32.0.5"),
            member(7, weird_name, Reach.DIRECT, ip="172.32.0.7"),
            member(9, "idle-box", Reach.IDLE, ip="172.32.0.9"),
            member(11, "joining", Reach.CONNECTING),
            member(3, "nas", Reach.RELAYED, ip="172.32.0.3", via="pop-paris"),
            member(1, "pop-paris", Reach.DIRECT, pop=True, ip="172.32.0.1"),
            member(12, "gone", Reach.UNREACHABLE, ip="172.32.0.12"),
        ),
        links=(
            LinkView(1, 5, 0.42),
            LinkView(5, 7, 12.7),
            LinkView(1, 3, 3.26),
            LinkView(1, 7, 1.0),
        ),
    )


ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s\]"]+)')


def attrs_of(text: str) -> dict[str, str]:
    """The attributes of one DOT statement, values as written (quotes removed)."""
    out = {}
    for key, value in ATTR.findall(text):
        out[key] = value[1:-1] if value.startswith('"') else value
    return out


def nodes(dot: str) -> dict[str, dict[str, str]]:
    """Member nodes (n<id>) and their attributes."""
    found = {}
    for line in dot.splitlines():
        m = re.match(r"\s*(n\d+) \[(.*)\]$", line)
        if m:
            found[m.group(1)] = attrs_of(m.group(2))
    return found


def edges(dot: str) -> dict[tuple[str, str], dict[str, str]]:
    found = {}
    for line in dot.splitlines():
        m = re.match(r"\s*(n\d+) -- (n\d+)(?: \[(.*)\])?$", line)
        if m:
            found[(m.group(1), m.group(2))] = attrs_of(m.group(3) or "")
    return found


def legend(dot: str) -> str:
    start = dot.index("subgraph cluster_legend")
    return dot[start:]


def test_every_member_is_a_node_labelled_with_name_and_address() -> None:
    topo = mesh()
    drawn = nodes(topology_to_dot(topo, WHEN))
    assert set(drawn) == {f"n{m.node_id}" for m in topo.members}
    for m in topo.members:
        label = drawn[f"n{m.node_id}"]["label"]
        assert label == (m.name if m.ip is None else f"{m.name}\\n{m.ip}")


def test_pops_have_a_dashed_outline_and_no_one_else_does() -> None:
    drawn = nodes(topology_to_dot(mesh(), WHEN))
    for node_id, attrs in drawn.items():
        styles = attrs["style"].split(",")
        assert "filled" in styles
        assert ("dashed" in styles) == (node_id == "n1")


def test_fill_colour_follows_reach_and_the_legend_explains_each() -> None:
    topo = mesh()
    dot = topology_to_dot(topo, WHEN)
    drawn = nodes(dot)
    assert len(set(REACH_COLORS.values())) == len(Reach)  # one distinct colour per reach
    for m in topo.members:
        assert drawn[f"n{m.node_id}"]["fillcolor"] == REACH_COLORS[m.reach]
    key = legend(dot)
    for color in REACH_COLORS.values():
        assert f'BGCOLOR="{color}"' in key
    for words in ("this member", "direct", "relayed", "idle", "connecting", "unreachable"):
        assert words in key
    assert 'STYLE="dashed"' in key and "PoP (dashed outline)" in key


def test_the_local_member_is_highlighted() -> None:
    drawn = nodes(topology_to_dot(mesh(), WHEN))
    me = drawn["n5"]
    assert me["peripheries"] == "2" and "bold" in me["style"].split(",")
    others = [attrs for node_id, attrs in drawn.items() if node_id != "n5"]
    assert all("peripheries" not in a and "bold" not in a["style"] for a in others)


def test_each_live_link_is_an_edge_labelled_with_its_rtt_and_no_other_edge_is_drawn() -> None:
    drawn = edges(topology_to_dot(mesh(), WHEN))
    assert drawn.keys() == {("n1", "n5"), ("n5", "n7"), ("n1", "n3"), ("n1", "n7")}
    labels = {pair: attrs["label"] for pair, attrs in drawn.items()}
    assert labels == {
        ("n1", "n5"): "0.4 ms",
        ("n5", "n7"): "13 ms",
        ("n1", "n3"): "3.3 ms",
        ("n1", "n7"): "1.0 ms",
    }
    # The local member's own links are thicker.
    assert {pair for pair, attrs in drawn.items() if attrs.get("penwidth") == "2"} == {
        ("n1", "n5"),
        ("n5", "n7"),
    }


def test_a_link_to_an_unknown_member_is_left_out() -> None:
    topo = mesh()
    stray = replace(topo, links=(*topo.links, LinkView(5, 99, 2.0)))
    dot = topology_to_dot(stray, WHEN)
    assert "n99" not in dot
    assert edges(dot).keys() == edges(topology_to_dot(topo, WHEN)).keys()


@pytest.mark.parametrize(
    ("rtt", "label"),
    [
        (0.01, "<0.1 ms"),
        (0.05, "0.1 ms"),
        (0.42, "0.4 ms"),
        (3.26, "3.3 ms"),
        (9.94, "9.9 ms"),
        (9.96, "10 ms"),
        (12.7, "13 ms"),
        (150.4, "150 ms"),
    ],
)
def test_rtt_labels_round_sensibly(rtt: float, label: str) -> None:
    assert rtt_label(rtt) == label


def test_title_names_the_network_the_viewer_and_the_given_time() -> None:
    dot = topology_to_dot(mesh(), WHEN)
    title = next(line for line in dot.splitlines() if line.strip().startswith("label="))
    assert "acme" in title and "laptop" in title and WHEN in title


def test_legend_is_a_cluster_and_the_graph_is_undirected() -> None:
    dot = topology_to_dot(mesh(), WHEN)
    assert dot.startswith("graph ")
    assert "->" not in dot
    assert "subgraph cluster_legend {" in dot


def test_output_is_deterministic_whatever_the_input_order() -> None:
    topo = mesh()
    shuffled = replace(
        topo, members=(topo.members[0], *reversed(topo.members[1:])), links=tuple(reversed(topo.links))
    )
    first = topology_to_dot(topo, WHEN)
    assert topology_to_dot(shuffled, WHEN) == first
    assert topology_to_dot(topo, WHEN) == first
    node_ids = [int(n[1:]) for n in nodes(first)]
    assert node_ids == sorted(node_ids)


def test_a_weird_name_is_escaped_in_the_dot_text() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # graphviz warns when it expects a syntax error
        dot = topology_to_dot(mesh(WEIRD), WHEN)
    label = nodes(dot)["n7"]["label"]
    # Backslashes doubled, the quote escaped: DOT reads back the literal name.
    assert label == 'we\\"ird\\\\name <b>x</b> \\\\\\n172.32.0.7'


@needs_dot
def test_dot_accepts_the_weird_name_and_draws_it_literally() -> None:
    svg = render(topology_to_dot(mesh(WEIRD), WHEN), "svg")
    assert b"<svg" in svg
    # The name comes out as text (XML-escaped), not as markup or a broken string.
    assert b"we&quot;ird\\name &lt;b&gt;x&lt;/b&gt; \\" in svg
    # dot writes "-" as "&#45;" in SVG text.
    assert b"network acme" in svg and b"12:00:00 UTC" in svg


@needs_dot
def test_png_rendering() -> None:
    png = render(topology_to_dot(mesh(), WHEN), "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, chunk, width, height = struct.unpack(">I4sII", png[8:24])
    assert chunk == b"IHDR" and length == 13
    assert width > 50 and height > 50


def test_drawing_error_when_dot_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DrawingError, match="not found") as caught:
        render(topology_to_dot(mesh(), WHEN), "svg")
    assert "\n" not in str(caught.value)


@needs_dot
def test_drawing_error_when_dot_fails() -> None:
    with pytest.raises(DrawingError, match="dot failed") as caught:
        render("graph { n1 -- ", "svg")
    assert "\n" not in str(caught.value)


def test_drawing_error_for_an_unknown_format() -> None:
    with pytest.raises(DrawingError, match="png or svg"):
        render("graph { }", "gif")
