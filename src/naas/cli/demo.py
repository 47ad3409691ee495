"""`naas demo`: the user's story, end to end, in network namespaces on this machine.

Sites onprem, aws and alibaba are separate underlay subnets joined by a router; the
PoPs master and slave sit on-prem; five clients are spread over the sites. The demo
runs the real commands (init, pop, invite, naas-enrollment on every client), checks
that every member pings every other over naas0, point to point, then replays the
failure of the user's video: desktop's firewall blocks both PoPs, the pings reroute
through other members and go direct again when the rules go; finally both PoPs stop
and the members keep talking. `naas draw` on desktop pictures the mesh before the
failure and during it (PNG files in --drawings, the current directory by default). It
prints what happened and removes the lab (``--keep`` leaves it up and prints commands
that enter its hosts and start its PoPs again; ``naas demo down`` removes it and its
work directory).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from naas.cli.common import EXIT_FAILURE, EXIT_OK, BadInput, CliError, say
from naas.lab.netns import Lab, LabError, remove_saved_labs
from naas.lab.story import DEMO_HOSTS, DEMO_SITES, NETWORK, POPS, Story, StoryError, commands_dir


def cmd_demo(args: argparse.Namespace) -> int:
    if args.action == "down":
        removed = remove_saved_labs()
        say(
            f"removed {len(removed)} lab(s), their processes and work directories"
            if removed
            else "no kept lab to remove"
        )
        return EXIT_OK
    if os.geteuid() != 0:
        raise CliError("naas demo builds network namespaces: run it as root")
    drawings = Path(args.drawings).resolve()
    if not drawings.is_dir():
        raise BadInput(f"--drawings: no directory {drawings}")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="naas-demo-"))
    lab = Lab(hosts=DEMO_HOSTS, sites=DEMO_SITES)
    lab.own(workdir)  # `naas demo down` removes it (CA key, state, logs) with the lab
    story = Story(lab, workdir)
    story.drawings = drawings
    ok = False
    try:
        lab.start()
        ok = _run(story, lab)
    except (LabError, StoryError) as exc:
        raise CliError(f"demo failed: {exc} (logs in {workdir})") from None
    finally:
        if args.keep:
            lab.keep()
            say("\n" + kept_lab_message(story))
        else:
            story.close()
            lab.close()
            if ok:
                shutil.rmtree(workdir, ignore_errors=True)
    say(f"\ndemo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s")
    return EXIT_OK if ok else EXIT_FAILURE


def kept_lab_message(story: Story) -> str:
    """What `naas demo --keep` prints: where things are, and commands that work as given
    from any root shell (each ``ip netns exec`` line is one command)."""
    naas = commands_dir() / "naas"
    running = [p for p in POPS if p in story.pop_processes and story.pop_processes[p].poll() is None]
    stopped = [p for p in POPS if p not in running]
    client = "desktop" if "desktop" in story.clients else story.clients[0]
    lines = [
        f"the lab is kept; its config, state and logs are in {story.workdir}",
        "  (naas.toml, hosts/<host>/ for each host's state, pop-<name>.log)",
    ]
    if stopped:
        lines += [
            f"  PoP{'s' if len(stopped) > 1 else ''} {' and '.join(stopped)} "
            f"{'are' if len(stopped) > 1 else 'is'} not running (the story ends by stopping both);"
            " the clients' agents still run.",
            "  start them again (in the background, logs appended to pop-<name>.log):",
            *(f"    {story.pop_command(pop)}" for pop in stopped),
        ]
    if running:
        lines.append(f"  PoPs running: {', '.join(running)}")
    lines += [
        f"  a shell on {client} with its state and the naas commands (try `naas status`, `naas-drawing`):",
        f"    {story.shell_command(client)}",
        f"  a shell on {POPS[0]}, with its PoP state and the PoPs' shared store"
        f" (e.g. `naas invite --config {story.config_path} --client {client}`):",
        f"    {story.shell_command(POPS[0])}",
        f"  remove the lab and {story.workdir}: {naas} demo down",
    ]
    return "\n".join(lines)


def _step(title: str) -> None:
    say(f"\n== {title}")


def _run(story: Story, lab: Lab) -> bool:
    _step("underlay: three sites joined by a router")
    for site in lab.sites.values():
        hosts = [f"{h.name} {h.address}" for h in lab.hosts.values() if h.site.name == site.name]
        say(f"  {site.name:<8} {site.subnet}  " + ", ".join(hosts))

    _step(f"one config file: {story.config_path}")
    story.write_config()
    say("  " + story.config_path.read_text().replace("\n", "\n  ").rstrip())

    _step("naas init (on master), state copied to slave")
    say("  " + story.init().strip().replace("\n", "\n  "))

    _step("PoPs master and slave start")
    for pop in POPS:
        story.start_pop(pop)
        say(f"  naas pop --name {pop}: enrollment https://{lab.host(pop).address}:5641, mesh udp/5640")

    _step("naas invite: one single-use URL per client")
    for client, url in story.invite().items():
        say(f"  {client:<10} {url[:72]}...")

    _step("naas-enrollment <URL> on each client")
    for client in story.clients:
        result = story.enroll(client)
        if result.returncode != 0:
            raise StoryError(f"naas-enrollment on {client}: {result.stderr.strip()}")
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        say(f"  {client:<10} {story.enroll_seconds[client]:4.1f} s  {lines[-1] if lines else ''}")

    _step("naas0 on every host")
    for host in lab.hosts:
        addr = lab.host(host).run(["ip", "-br", "-4", "addr", "show", "dev", "naas0"]).stdout.split()
        say(f"  {host:<10} underlay {lab.host(host).address}  overlay {' '.join(addr[2:]) or '-'}")

    _step("every member pings every other over naas0")
    matrix = story.ping_matrix()
    failed = [pair for pair, rtt in matrix.items() if rtt is None]
    rtts = [rtt for rtt in matrix.values() if rtt is not None]
    say(
        f"  {len(rtts)}/{len(matrix)} pairs answered"
        + (f", RTT {min(rtts):.2f}-{max(rtts):.2f} ms" if rtts else "")
    )
    for source, target in failed:
        say(f"  NO ANSWER {source} -> {target}")

    _step("point to point: paths seen by desktop (`naas status`)")
    result = story.naas("desktop", "status", "--network", NETWORK)
    say("  " + result.stdout.strip().replace("\n", "\n  "))
    direct = _all_direct(story)
    say(f"  every client reaches every other client directly: {'yes' if direct else 'NO'}")
    _drawing(story, "1-full-mesh")
    rerouted = _pops_cut_off(story, lab)
    survives = _pops_gone(story)
    return not failed and direct and rerouted and survives


def _pops_cut_off(story: Story, lab: Lab) -> bool:
    """As in the video: desktop's firewall blocks master and slave; traffic reroutes."""
    _step("desktop's firewall blocks master and slave (nftables + conntrack flush)")
    master_ip = story.overlay_ip("master")

    def block() -> None:
        lab.block("desktop", "master")
        lab.block("desktop", "slave")

    outage, answered, sent = story.ping_outage("desktop", master_ip, seconds=8, action_at=1.5, action=block)
    say(f"  0.1 s ping desktop -> master: {answered}/{sent} answered, longest outage {outage:.1f} s")
    paths = _wait_paths(story, "desktop", ("master", "slave"), lambda p: p.startswith("via "))
    rtt = story.ping("desktop", master_ip, count=5)
    for pop, path in paths.items():
        say(f"  desktop -> {pop}: {path}")
    say(f"  ping desktop -> master now: {rtt:.2f} ms (through another member)" if rtt else "  NO ANSWER")
    _drawing(story, "2-pops-blocked")
    _step("the firewall rules are removed: paths go direct again")

    def unblock() -> None:
        lab.unblock("desktop", "master")
        lab.unblock("desktop", "slave")

    back, answered, sent = story.ping_outage("desktop", master_ip, seconds=6, action_at=1.5, action=unblock)
    say(f"  0.1 s ping desktop -> master: {answered}/{sent} answered, longest outage {back:.1f} s")
    direct = _wait_paths(story, "desktop", ("master", "slave"), lambda p: p == "direct")
    for pop, path in direct.items():
        say(f"  desktop -> {pop}: {path}")
    cut_ok = all(p.startswith("via ") for p in paths.values()) and rtt is not None
    return cut_ok and all(p == "direct" for p in direct.values())


def _drawing(story: Story, stage: str) -> None:
    """`naas draw` on desktop into the drawings directory; says where it went."""
    path = story.draw("desktop", story.drawings / f"naas-{NETWORK}-{stage}.png")
    say(f"  drawing of the mesh as desktop sees it: {path}")


def _pops_gone(story: Story) -> bool:
    """PoPs are meeting points only: stop both, the members still reach each other."""
    _step("both PoPs stop: the members keep talking")
    for pop in POPS:
        story.stop_pop(pop)
    ips = {client: story.overlay_ip(client) for client in story.clients}
    answered = sum(
        1
        for source in story.clients
        for target in story.clients
        if source != target and story.ping(source, ips[target], count=1, wait=2) is not None
    )
    pairs = len(story.clients) * (len(story.clients) - 1)
    say(f"  {answered}/{pairs} client pairs answered with master and slave stopped")
    return answered == pairs


def _wait_paths(
    story: Story, host: str, peers: tuple[str, ...], done: Callable[[str], bool]
) -> dict[str, str]:
    """The paths ``host`` sees to ``peers``, once they all satisfy ``done`` (at most 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        paths = {p["name"]: p["path"] for p in story.status(host)["peers"] if p["name"] in peers}
        if all(done(path) for path in paths.values()) or time.monotonic() > deadline:
            return paths
        time.sleep(0.2)


def _all_direct(story: Story) -> bool:
    """Each client's status shows every other member on a direct path at its own endpoint."""
    addresses = {name: str(host.address) for name, host in story.lab.hosts.items()}
    for client in story.clients:
        for peer in story.status(client)["peers"]:
            endpoint = peer["endpoint"] or ""
            if peer["path"] != "direct" or endpoint.split(":")[0] != addresses[peer["name"]]:
                return False
    return True


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="the whole story in network namespaces (root)")
    demo.add_argument(
        "action",
        nargs="?",
        choices=["run", "down"],
        default="run",
        help="run (default) or down: remove a lab kept with --keep, with its work directory",
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave the lab up to explore (prints how to enter its hosts)"
    )
    demo.add_argument(
        "--drawings", default=".", help="directory for the PNG drawings of the mesh (default: here)"
    )
    demo.set_defaults(func=cmd_demo)
