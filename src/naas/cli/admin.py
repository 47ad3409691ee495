"""Network-side commands, run on the PoP hosts: init, invite, pop.

``init`` makes the network CA, each PoP's identity (keys, certificate, TLS key whose
hash the invitations pin) and the PoP store. It checks the store first and builds the
rest in a staging directory, so a failed init writes nothing. ``invite`` prints one
single-use URL per client. ``pop`` runs a PoP: the HTTPS enrollment service plus a mesh
member with a known address, in one process and one event loop. ``invite`` and ``pop``
refuse a store that ``init`` has not made rather than create an empty one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
from ipaddress import IPv4Interface
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from naas.cli.common import (
    EXIT_OK,
    AgentOptions,
    BadInput,
    CliError,
    add_agent_options,
    say,
    state_dir_of,
    warn,
)
from naas.core.crypto import ed25519_public, x25519_public
from naas.daemon.runner import DEFAULT_INTERFACE, AgentError, run_loop, setup_logging
from naas.daemon.state import NodeDir, network_dir, pop_node_dir, write_file
from naas.model.certificate import Certificate
from naas.model.codec import certificate_to_dict
from naas.model.config import ConfigError, NetworkConfig, load_config
from naas.model.ids import Endpoint
from naas.model.network import MemberRecord, NetworkInfo, PopInfo
from naas.pop.ca import issue_certificate
from naas.pop.invitations import build_url, make_token, token_hash
from naas.pop.server import EnrollmentService, start_enrollment_site
from naas.pop.store import PopStore, sqlite_url
from naas.pop.tls import make_tls_material, server_ssl_context, tls_pin_of_pem, write_tls_material

DEFAULT_TTL = 7 * 86400
_TTL_RE = re.compile(r"^(\d+)([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BACKENDS = {"postgresql": "PostgreSQL", "sqlite": "SQLite", "mysql": "MySQL"}


def _config(path: str) -> NetworkConfig:
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    for message in config.warnings:
        warn(message)
    return config


def store_url(args: argparse.Namespace, net_dir: Path) -> str:
    """``--store``, else ``$NAAS_POP_STORE``, else the SQLite file pop.db of the network."""
    return str(args.store or os.environ.get("NAAS_POP_STORE") or sqlite_url(net_dir / "pop.db"))


def shown_url(url: str) -> str:
    """``url`` fit for a message: its password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: shown as given
        return url


def _first_line(exc: BaseException) -> str:
    """The driver's own message, on one line (SQLAlchemy adds lines of its own)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_store(url: str, *, existing: bool) -> PopStore:
    """The PoP store at ``url``, connected and checked; every failure is one line.

    ``existing``: refuse a store ``naas init`` has not made (invite and pop never create
    one: a store of their own would hold none of the network's invitations).
    """
    shown = shown_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise BadInput(
            f"--store: {shown!r} is not a database URL (e.g. sqlite:////var/lib/naas/NET/pop.db or "
            "postgresql://USER@HOST/DB)"
        ) from None
    backend = parsed.get_backend_name()
    missing = BadInput(f"no PoP store at {shown}: run `naas init` first or give --store")
    if existing and backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise missing  # opening it would create it
    try:
        store = PopStore(url)
    except ImportError as exc:
        driver = exc.name or str(exc)
        raise CliError(
            f"store {shown}: the {_BACKENDS.get(backend, backend)} driver {driver} is not installed"
        ) from None
    except Exception as exc:  # SQLAlchemy raises many kinds for a bad URL
        raise BadInput(f"--store: cannot open {shown}: {_first_line(exc)}") from None
    try:
        made = inspect(store.engine).has_table("meta")  # connects
    except Exception as exc:
        store.close()
        raise CliError(f"store {shown}: cannot connect: {_first_line(exc)}") from None
    if existing and not made:
        store.close()
        raise missing
    return store


def _create_schema(store: PopStore, url: str) -> None:
    try:
        store.create_schema()
    except Exception as exc:
        raise CliError(f"store {shown_url(url)}: cannot create the tables: {_first_line(exc)}") from None


def _require_init(net_dir: Path, config: NetworkConfig) -> bytes:
    try:
        return (net_dir / "ca.key").read_bytes()
    except FileNotFoundError:
        raise CliError(
            f"network {config.name!r} is not initialized here ({net_dir}): run `naas init` "
            "or copy the state from the first PoP"
        ) from None


def network_info(config: NetworkConfig, net_dir: Path) -> NetworkInfo:
    """The network description members receive, from the config and PoP state."""
    pops = []
    for pop in config.pops:
        cert_pem = (pop_node_dir(net_dir.parent, config.name, pop.name).path / "tls.crt").read_bytes()
        pops.append(
            PopInfo(
                name=pop.name,
                mesh_endpoint=Endpoint(pop.address, config.network.mesh_port),
                enrollment_endpoint=Endpoint(pop.address, config.network.enrollment_port),
                tls_pin=tls_pin_of_pem(cert_pem),
            )
        )
    return NetworkInfo(
        name=config.name,
        mesh_port=config.network.mesh_port,
        ca_public=(net_dir / "ca.pub").read_bytes(),
        pops=tuple(pops),
        subnet=config.network.subnet,
        gateway=config.network.gateway,
    )


def cmd_init(args: argparse.Namespace) -> int:
    """Make the network: everything is made in a staging directory beside the state and
    moved into place at the end (ca.key last), so a failed init leaves the state
    directory as it was and the next init needs no --force."""
    config = _config(args.config)
    state_dir = state_dir_of(args.state_dir)
    net_dir = network_dir(state_dir, config.name)
    if (net_dir / "ca.key").exists() and not args.force:
        raise CliError(f"network {config.name!r} is already initialized in {net_dir} (--force to start over)")
    url = store_url(args, net_dir)
    default_store = net_dir / "pop.db"
    in_state = url == sqlite_url(default_store)
    # a store elsewhere (e.g. PostgreSQL) is checked before anything is written here
    store = None if in_state else open_store(url, existing=False)
    made_dirs = [p for p in (state_dir, *state_dir.parents) if not p.exists()]
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=state_dir, prefix=f".{config.name}.init-"))
        try:
            staged = network_dir(stage, config.name)
            staged.mkdir(mode=0o700)
            if store is None:  # the default SQLite file: made in the stage unless it exists
                store_path = default_store if default_store.exists() else staged / "pop.db"
                store = open_store(sqlite_url(store_path), existing=False)
            _create_schema(store, url)
            info, certs = _make_network(config, stage, store)
            store.close()
            _move_into_place(staged, net_dir)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    except BaseException:
        if store is not None:
            store.close()
        for path in made_dirs:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    say(f"network {config.name!r} initialized in {net_dir}")
    for made in info.pops:
        cert = certs[made.name]
        say(
            f"  PoP {made.name}: node {cert.node_id}, mesh {made.mesh_endpoint}, "
            f"enrollment https://{made.enrollment_endpoint}, pin {made.tls_pin}"
        )
    for pop in config.pops[1:]:
        command = copy_command(state_dir, config.name, pop.address)
        say(f"copy the PoP state to {pop.name} (run on this host):\n  {command}")
    return EXIT_OK


def _make_network(
    config: NetworkConfig, state_dir: Path, store: PopStore
) -> tuple[NetworkInfo, dict[str, Certificate]]:
    """CA and PoP identities under ``state_dir`` (the stage); the PoPs enter the store."""
    net_dir = network_dir(state_dir, config.name)
    ca_private = os.urandom(32)
    write_file(net_dir / "ca.key", ca_private, 0o600)
    write_file(net_dir / "ca.pub", ed25519_public(ca_private))
    now = int(time.time())
    certs = {}
    for pop in config.pops:
        node_dir = pop_node_dir(state_dir, config.name, pop.name)
        static_private, signing_private = os.urandom(32), os.urandom(32)
        existing = store.member(pop.name)
        overlay_ip = config.pop_overlay_ip(pop.name)
        subnet = config.network.subnet
        cert = issue_certificate(
            ca_private,
            network=config.name,
            name=pop.name,
            node_id=existing.node_id if existing else store.allocate_node_id(),
            is_pop=True,
            static_public=x25519_public(static_private),
            signing_public=ed25519_public(signing_private),
            ip=IPv4Interface(f"{overlay_ip}/{subnet.prefixlen}") if overlay_ip and subnet else None,
            groups=("pop",),
            now=now,
            days=config.network.certificate_days,
        )
        store.add_member(cert, via="init")
        node_dir.save_keys(static_private, signing_private)
        write_tls_material(make_tls_material(pop.name), node_dir.path / "tls.crt", node_dir.path / "tls.key")
        certs[pop.name] = cert
    info = network_info(config, net_dir)
    for pop in config.pops:
        node_dir = pop_node_dir(state_dir, config.name, pop.name)
        node_dir.save_membership(certificate_to_dict(certs[pop.name]), info)
        node_dir.save_members(
            [MemberRecord(certs[p.name], (p.mesh_endpoint,)) for p in info.pops if p.name != pop.name]
        )
    return info, certs


def _move_into_place(staged: Path, net_dir: Path) -> None:
    """The staged network directory becomes ``net_dir``: in one rename if it is new, else
    file by file (other files, e.g. a running PoP's log, stay), ca.key last: it is what
    marks a network initialized."""
    if not net_dir.exists():
        os.rename(staged, net_dir)
        return
    files = sorted((p for p in staged.rglob("*") if p.is_file()), key=lambda p: (p.name == "ca.key", p))
    for source in files:
        target = net_dir / source.relative_to(staged)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(source, target)


def copy_command(state_dir: Path, network: str, host: str) -> str:
    target = shlex.quote(str(state_dir))
    return (
        f"tar -C {target} -czf - {shlex.quote(network)} | "
        f"ssh root@{host} 'umask 077 && mkdir -p {target} && tar -C {target} -xzpf -'"
    )


def parse_ttl(text: str) -> int:
    match = _TTL_RE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise BadInput(f"--ttl: {text!r} is not a duration (e.g. 3600, 30m, 12h, 7d)")
    return int(match.group(1)) * _TTL_UNITS[match.group(2)]


def cmd_invite(args: argparse.Namespace) -> int:
    config = _config(args.config)
    ttl = parse_ttl(args.ttl) if args.ttl else DEFAULT_TTL
    state_dir = state_dir_of(args.state_dir)
    net_dir = network_dir(state_dir, config.name)
    _require_init(net_dir, config)
    if args.client:
        try:
            clients = [config.client(name) for name in args.client]
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
    else:
        clients = list(config.clients)
        if not clients:
            raise BadInput(f"{config.source}: client: the client list is empty")
    info = network_info(config, net_dir)
    now = time.time()
    pops = [(pop.enrollment_endpoint, pop.tls_pin) for pop in info.pops]
    invitations: list[dict[str, str | int]] = []
    with open_store(store_url(args, net_dir), existing=True) as store:
        for client in clients:
            token = make_token(os.urandom(32))
            store.add_invitation(token_hash(token), client.name, now, now + ttl)
            url = build_url(config.name, pops, token)
            invitations.append({"client": client.name, "url": url, "expires_at": int(now + ttl)})
    if args.json:
        print(json.dumps(invitations, indent=2))
    else:
        width = max(len(str(i["client"])) for i in invitations)
        for invitation in invitations:
            print(f"{invitation['client']:<{width}}  {invitation['url']}")
    return EXIT_OK


def cmd_pop(args: argparse.Namespace) -> int:
    config = _config(args.config)
    try:
        pop = config.pop(args.name)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    options = AgentOptions.from_args(args)
    state_dir = state_dir_of(args.state_dir)
    net_dir = network_dir(state_dir, config.name)
    ca_private = _require_init(net_dir, config)
    node_dir = pop_node_dir(state_dir, config.name, pop.name)
    if not node_dir.exists():
        raise CliError(f"no state for PoP {pop.name!r} in {node_dir.path}: run `naas init` or copy it")
    store = open_store(store_url(args, net_dir), existing=True)  # before anything is written
    info = network_info(config, net_dir)
    node_dir.save_membership(certificate_to_dict(node_dir.load_identity().certificate), info)
    setup_logging(os.environ.get("NAAS_LOG_LEVEL", "INFO"))
    try:
        run_loop(
            _run_pop(
                config,
                pop.name,
                node_dir.path,
                store,
                ca_private,
                info,
                args.interface,
                options,
            )
        )
    except AgentError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


async def _run_pop(
    config: NetworkConfig,
    name: str,
    node_path: Path,
    store: PopStore,
    ca_private: bytes,
    info: NetworkInfo,
    interface: str,
    options: AgentOptions,
) -> None:
    agent = options.agent(NodeDir(node_path), interface)
    await agent.start()
    assert agent.core is not None
    now = asyncio.get_running_loop().time()
    for cert in store.members():
        agent.core.member_enrolled(cert, now)  # members enrolled before this start
    service = EnrollmentService(config, name, store, ca_private, info, time.time, agent.member_enrolled)
    agent.extra_status = lambda: {"pop": {"name": name, **service.status()}}
    runner, port = await start_enrollment_site(
        service,
        "0.0.0.0",
        config.network.enrollment_port,
        server_ssl_context(node_path / "tls.crt", node_path / "tls.key"),
    )
    logging.getLogger("naas.pop").info("PoP %s enrolling on https://0.0.0.0:%d", name, port)
    try:
        await agent.run_until_stopped()
    finally:
        await runner.cleanup()
        store.close()


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help="the network's naas.toml")
        parser.add_argument(
            "--state-dir", metavar="DIR", help="state directory (default /var/lib/naas or $NAAS_STATE_DIR)"
        )
        parser.add_argument(
            "--store",
            metavar="URL",
            help="PoP store URL, one for both PoPs (default $NAAS_POP_STORE, else SQLite"
            " <state-dir>/<network>/pop.db); invite and pop refuse a store init has not made",
        )

    init = sub.add_parser("init", help="create the network CA, PoP keys and store")
    common(init)
    init.add_argument("--force", action="store_true", help="start over: new CA, every member must re-enroll")
    init.set_defaults(func=cmd_init)

    invite = sub.add_parser("invite", help="print one single-use invitation URL per client")
    common(invite)
    invite.add_argument("--client", action="append", help="only this client (repeatable)")
    invite.add_argument("--ttl", help="validity, e.g. 3600, 30m, 12h, 7d (default 7d)")
    invite.add_argument("--json", action="store_true", help="print a JSON list of {client, url, expires_at}")
    invite.set_defaults(func=cmd_invite)

    pop = sub.add_parser("pop", help="run a PoP: enrollment service and mesh member")
    common(pop)
    pop.add_argument("--name", required=True, help="which PoP of the config this host is")
    pop.add_argument(
        "--interface", metavar="NAME", default=DEFAULT_INTERFACE, help="TAP device name (default %(default)s)"
    )
    add_agent_options(pop)
    pop.set_defaults(func=cmd_pop)
