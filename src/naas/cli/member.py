"""Member-side commands: join (naas-enrollment), up, down, status, and the agent.

``join`` is the only step on a client: it generates this host's keys locally, redeems
the invitation at a PoP (after checking the PoP's key against the URL's pin), saves
the membership, starts the agent in the background and returns once naas0 is up
with its address. Nothing is written unless the enrollment succeeded.

The URL's token is a secret until it is used: given as an argument it shows in the
process list (``ps``) to every local user while ``join`` runs, so it can also come from
standard input (``-``) or from a 0600 file (``--url-file``). The agent ``join`` starts
is given the membership's directory, never the URL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from naas.cli.common import (
    EXIT_OK,
    AgentOptions,
    BadInput,
    CliError,
    add_agent_options,
    add_member_options,
    member_dir,
    say,
    state_dir_of,
)
from naas.core.crypto import ed25519_public, x25519_public
from naas.daemon import control, netconf
from naas.daemon.runner import DEFAULT_INTERFACE, AgentError, run_loop, setup_logging, utc
from naas.daemon.state import NodeDir, client_node_dir
from naas.model.codec import certificate_to_dict
from naas.pop.client import EnrollmentError, enroll, renew_certificate
from naas.pop.invitations import InvitationError, parse_url_untrusted

READY_TIMEOUT = 20.0
URL_MAX_BYTES = 8192  # an invitation URL is a few hundred bytes


def invitation_text(args: argparse.Namespace) -> str:
    """The invitation URL as given: the argument, ``-`` (one line of standard input) or
    ``--url-file PATH``. The last two keep the token out of the process list (ps)."""
    if args.url_file is not None:
        if args.url is not None:
            raise BadInput("give the invitation URL either as an argument or with --url-file, not both")
        return read_url_file(Path(args.url_file))
    if args.url is None:
        raise BadInput(
            "no invitation URL: give it as an argument, - to read it from standard input, or --url-file PATH"
        )
    if args.url == "-":
        return read_url_stdin()
    return str(args.url)


def read_url_stdin() -> str:
    """One line of standard input (a prompt on stderr if it is a terminal)."""
    if sys.stdin is None:
        raise BadInput("invitation URL: no standard input to read it from")
    if sys.stdin.isatty():
        print("invitation URL: ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline(URL_MAX_BYTES).strip()
    if not line:
        raise BadInput("invitation URL: nothing on standard input")
    return line


def read_url_file(path: Path) -> str:
    """The first line of ``path``, a regular file no other user may read or write (0600)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BadInput(f"--url-file: cannot read {path}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BadInput(f"--url-file: {path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if mode & 0o077:
            raise BadInput(
                f"--url-file: {path} is open to other users (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
            )
        data = handle.read(URL_MAX_BYTES)
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    if not lines:
        raise BadInput(f"--url-file: {path} is empty")
    return lines[0].strip()


def cmd_join(args: argparse.Namespace) -> int:
    options = AgentOptions.from_args(args)
    url = invitation_text(args)
    try:
        invitation = parse_url_untrusted(url)
    except InvitationError as exc:
        raise BadInput(f"invitation URL: {exc}") from None
    state_dir = state_dir_of(args.state_dir)
    node_dir = client_node_dir(state_dir, invitation.network)
    if node_dir.exists() and not args.force:
        raise CliError(
            f"this host is already a member of {invitation.network!r} ({node_dir.path}); "
            "use `naas up`, or --force to enroll again"
        )
    static_private, signing_private = os.urandom(32), os.urandom(32)
    try:
        result = enroll(invitation, x25519_public(static_private), ed25519_public(signing_private))
    except EnrollmentError as exc:
        raise CliError(f"enrollment failed: {exc}") from None
    if node_dir.exists():
        stop_agent(node_dir, quiet=True)
    node_dir.save_keys(static_private, signing_private)
    node_dir.save_members(list(result.members))
    if result.document is not None:
        node_dir.save_document(result.document)
    else:  # an older PoP: no document; an old one from a past membership must not linger
        (node_dir.path / "document.json").unlink(missing_ok=True)
    node_dir.save_membership(certificate_to_dict(result.certificate), result.network)
    cert = result.certificate
    say(
        f"enrolled in {result.network.name!r} as {cert.name!r} (node {cert.node_id}"
        + (f", {cert.ip.ip}" if cert.ip else ", layer 2 only")
        + ")"
    )
    if args.foreground:
        return run_agent(node_dir, args.interface, options)
    start_agent(node_dir, args.interface, state_dir, options)
    return EXIT_OK


def start_agent(
    node_dir: NodeDir,
    interface: str,
    state_dir: Path,
    options: AgentOptions,
    quiet: bool = False,
) -> dict[str, Any]:
    """Start the agent detached and wait until naas0 is up (with its address)."""
    cert = node_dir.load_identity().certificate
    info: dict[str, Any] = {
        "name": cert.name,
        "interface": interface,
        "ip": str(cert.ip) if cert.ip else None,
    }
    if agent_running(node_dir):
        if not quiet:
            say(f"agent already running (pid {read_pid(node_dir)})")
        return {**info, "pid": read_pid(node_dir), "started": False}
    node_dir.path.mkdir(parents=True, exist_ok=True)
    with open(node_dir.log_path, "ab") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "naas",
                "agent",
                "--node-dir",
                str(node_dir.path),
                "--interface",
                interface,
                *options.argv(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            env={**os.environ, "NAAS_STATE_DIR": str(state_dir)},
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = _last_words(node_dir.log_path)
            raise CliError(
                f"the agent exited with status {process.returncode}"
                + (f": {said}" if said else f"; see {node_dir.log_path}")
            )
        if node_dir.socket_path.exists():
            try:
                control.request(node_dir.socket_path, "status", timeout=2)
            except control.ControlError:
                pass
            else:
                if cert.ip is None or cert.ip in netconf.interface_addresses(interface):
                    where = f" with {cert.ip}" if cert.ip else " (layer 2 only)"
                    if not quiet:
                        say(f"{interface} is up{where}; agent pid {process.pid}, log {node_dir.log_path}")
                    return {**info, "pid": process.pid, "started": True}
        time.sleep(0.1)
    raise CliError(f"the agent did not come up within {READY_TIMEOUT:.0f} s; see {node_dir.log_path}")


def run_agent(node_dir: NodeDir, interface: str, options: AgentOptions) -> int:
    setup_logging(os.environ.get("NAAS_LOG_LEVEL", "INFO"))
    agent = options.agent(node_dir, interface)
    try:
        run_loop(agent.run())
    except AgentError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


def read_pid(node_dir: NodeDir) -> int | None:
    try:
        return int(node_dir.pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


def agent_running(node_dir: NodeDir) -> bool:
    pid = read_pid(node_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_agent(node_dir: NodeDir, quiet: bool = False) -> bool:
    """Ask the agent to stop, wait for it, SIGTERM as a fallback; True if one ran."""
    pid = read_pid(node_dir)
    if pid is None or not agent_running(node_dir):
        return False
    try:
        control.request(node_dir.socket_path, "shutdown", timeout=2)
    except control.ControlError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
    if not quiet:
        say(f"agent stopped (pid {pid})")
    return True


def _last_words(log_path: Path) -> str | None:
    """What an agent that failed to start said last: its ``naas: ...`` line, if any."""
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            tail = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    last = tail[-1] if tail else ""
    return last.removeprefix("naas: ") if last.startswith("naas: ") else None


def cmd_up(args: argparse.Namespace) -> int:
    options = AgentOptions.from_args(args)
    state_dir = state_dir_of(args.state_dir)
    node_dir = member_dir(state_dir, args.network)
    # the agent keeps the name it runs on: a host in two networks has naas0 for one and
    # naas1 for the other, and each must come back on its own (daemon/state.py)
    interface = args.interface or node_dir.load_interface() or DEFAULT_INTERFACE
    if args.foreground:
        return run_agent(node_dir, interface, options)
    info = start_agent(node_dir, interface, state_dir, options, quiet=args.json)
    if args.json:
        print(json.dumps(info, sort_keys=True))
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    node_dir = member_dir(state_dir_of(args.state_dir), args.network)
    pid = read_pid(node_dir)
    stopped = stop_agent(node_dir, quiet=args.json)
    if args.json:
        print(json.dumps({"stopped": stopped, "pid": pid if stopped else None}))
    elif not stopped:
        say("agent was not running")
    return EXIT_OK


def cmd_renew(args: argparse.Namespace) -> int:
    """Renew this member's certificate now: through the running agent (which takes the
    new certificate at once), else directly at a PoP (the next start uses it)."""
    node_dir = member_dir(state_dir_of(args.state_dir), args.network)
    if agent_running(node_dir):
        try:
            answer = control.request(node_dir.socket_path, "renew", timeout=60.0)
        except control.ControlError as exc:
            raise CliError(str(exc)) from None
        if not answer.get("ok"):
            raise CliError(str(answer.get("error", "renewal failed")))
        not_after = int(answer["not_after"])
    else:
        identity = node_dir.load_identity()
        try:
            renewed = renew_certificate(
                node_dir.load_network(), identity.certificate, identity.signing_private, now=time.time()
            )
        except EnrollmentError as exc:
            raise CliError(f"renewal failed: {exc}") from None
        node_dir.save_certificate(renewed)
        not_after = renewed.not_after
    say(f"certificate renewed: valid until {utc(not_after)}")
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    node_dir = NodeDir(Path(args.node_dir))
    if not node_dir.exists():
        raise BadInput(f"--node-dir: no membership in {node_dir.path}")
    return run_agent(node_dir, args.interface, AgentOptions.from_args(args))


def fetch_status(node_dir: NodeDir) -> dict[str, Any]:
    try:
        answer = control.request(node_dir.socket_path, "status")
    except control.ControlError as exc:
        raise CliError(str(exc)) from None
    if not answer.get("ok"):
        raise CliError(f"agent: {answer.get('error', 'failed')}")
    status: dict[str, Any] = answer["status"]
    return status


def cmd_status(args: argparse.Namespace) -> int:
    node_dir = member_dir(state_dir_of(args.state_dir), args.network)
    status = fetch_status(node_dir)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return EXIT_OK
    print(format_status(status))
    return EXIT_OK


def format_status(status: dict[str, Any]) -> str:
    node = status["node"]
    lines = [
        f"network {status['network']}: this host is {node['name']} (node {node['node_id']}, "
        f"{node['ip'] or 'layer 2 only'}, mtu {node['mtu']})",
        "",
    ]
    header = ("MEMBER", "ROLE", "OVERLAY IP", "GROUPS", "PATH", "ENDPOINT", "RTT", "RX", "TX")
    rows = [header]
    for peer in status["peers"]:
        rtt = f"{peer['rtt_ms']:.2f} ms" if peer["rtt_ms"] is not None else "-"
        rows.append(
            (
                peer["name"],
                "pop" if peer["pop"] else "member",
                peer["ip"] or "-",
                ",".join(peer.get("groups", [])) or "-",
                peer["path"],
                peer["endpoint"] or "-",
                rtt,
                _bytes(peer["rx_bytes"]),
                _bytes(peer["tx_bytes"]),
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    document = status.get("document", {})
    if document.get("version"):
        revoked = ", ".join(f"{r['name']} (node {r['node_id']})" for r in document.get("revoked", []))
        said = f"network document version {document['version']}"
        lines += ["", f"{said}; revoked: {revoked}" if revoked else said]
    policy = status.get("policy", {})
    if policy.get("enforcing"):
        rules, connections = policy["rules"], policy["connections"]
        lines += ["", f"policy: default {policy['default']}, {rules} rules, {connections} connections"]
        for key, label in (("denied_in", "denied on arrival"), ("denied_out", "not sent")):
            counts = {k: v for k, v in policy.get(key, {}).items() if v}
            if counts:
                lines.append(f"  {label} by rule: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    drops = {k: v for k, v in status.get("drops", {}).items() if v}
    if drops:
        lines += ["", "dropped: " + ", ".join(f"{k}={v}" for k, v in drops.items())]
    return "\n".join(lines)


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(count)


def add_join_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``naas join`` and ``naas-enrollment``."""
    parser.add_argument(
        "url",
        nargs="?",
        metavar="URL",
        help="the invitation URL (naas://...); - reads it from standard input, which keeps its"
        " token out of the process list (ps) as --url-file does",
    )
    parser.add_argument(
        "--url-file",
        metavar="PATH",
        help="read the invitation URL from the first line of PATH (mode 0600: refused if other users"
        " may read or write it)",
    )
    parser.add_argument(
        "--foreground", action="store_true", help="run the agent attached (no background agent)"
    )
    parser.add_argument("--force", action="store_true", help="enroll again even if already a member")
    add_agent_options(parser)
    parser.add_argument(
        "--interface", metavar="NAME", default=DEFAULT_INTERFACE, help="TAP device name (default %(default)s)"
    )
    add_member_options(parser, network=False)
    parser.set_defaults(func=cmd_join)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = add_member_options
    join = sub.add_parser("join", help="join a network with an invitation URL (same as naas-enrollment)")
    add_join_arguments(join)

    up = sub.add_parser("up", help="start the agent from saved state")
    up.add_argument("--foreground", action="store_true", help="run the agent attached (no background agent)")
    add_agent_options(up)
    up.add_argument(
        "--interface",
        metavar="NAME",
        help=f"TAP device name (default: the one the agent last ran on, else {DEFAULT_INTERFACE})",
    )
    up.add_argument("--json", action="store_true", help="print the agent's name, interface, ip, pid as JSON")
    common(up)
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the agent (naas0 goes away)")
    down.add_argument("--json", action="store_true", help='print {"stopped": ..., "pid": ...} as JSON')
    common(down)
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="members, paths, endpoints, RTT and counters")
    status.add_argument("--json", action="store_true", help="the agent's whole status as JSON")
    common(status)
    status.set_defaults(func=cmd_status)

    renew = sub.add_parser("renew", help="renew this member's certificate now (it renews by itself at 2/3)")
    common(renew)
    renew.set_defaults(func=cmd_renew)

    agent = sub.add_parser("agent", help="run the agent of one membership in the foreground (used by up)")
    agent.add_argument(
        "--node-dir",
        metavar="DIR",
        required=True,
        help="the membership's directory (e.g. <state-dir>/<network>/node)",
    )
    add_agent_options(agent)
    agent.add_argument(
        "--interface", metavar="NAME", default=DEFAULT_INTERFACE, help="TAP device name (default %(default)s)"
    )
    agent.set_defaults(func=cmd_agent)
