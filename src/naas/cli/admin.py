"""Network-side commands, run on the PoP hosts: init and pop.

``init`` makes the network CA, each PoP's identity (keys, certificate, TLS key whose
hash the invitations pin) and the PoP store (control/setup.py). It checks the store
first and builds the rest in a staging directory, so a failed init writes nothing.
``pop`` runs a PoP: the HTTPS
enrollment service plus a mesh member with a known address, in one process and one
event loop; it watches the store for new network documents (every DOCUMENT_POLL
seconds) and hands them to its mesh member, which spreads them. ``pop`` and the other
admin commands (cli/manage.py: invite, revoke, apply, token, db) refuse a store that
``init`` has not made, or whose schema is not the newest, rather than create or change
one; all of them call the use cases in control/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

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
from naas.control import members
from naas.control.apply import check_settings
from naas.control.enrollment import renew_own
from naas.control.errors import ControlError
from naas.control.network import PopNetwork
from naas.control.setup import make_network
from naas.daemon.renewal import renewal_due
from naas.daemon.runner import DEFAULT_INTERFACE, Agent, AgentError, run_loop, setup_logging
from naas.daemon.state import NodeDir, network_dir, pop_node_dir
from naas.model.codec import certificate_to_dict
from naas.model.config import ConfigError, NetworkConfig, load_config
from naas.pop.api import RestApi
from naas.pop.server import EnrollmentService, start_enrollment_site
from naas.pop.store import PopStore, sqlite_url
from naas.pop.tls import server_ssl_context

DEFAULT_TTL = members.DEFAULT_TTL
DOCUMENT_POLL = 0.5  # seconds between a PoP's looks at the store's newest document version
UPGRADE_COMMAND = "naas db upgrade --config naas.toml [--store URL]"
P = ParamSpec("P")
R = TypeVar("R")
_TTL_RE = re.compile(r"^(\d+)([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BACKENDS = {"postgresql": "PostgreSQL", "sqlite": "SQLite", "mysql": "MySQL"}


def config_of(path: str) -> NetworkConfig:
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


def control_call(use_case: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a use case; its refusal becomes one line and exit 2."""
    try:
        return use_case(*args, **kwargs)
    except ControlError as exc:
        raise BadInput(str(exc)) from None


def check_revision(store: PopStore, url: str) -> None:
    """Refuse a store whose schema is not the newest (pop/migrate.py)."""
    try:
        problem = store.revision_problem(UPGRADE_COMMAND)
    except Exception as exc:
        store.close()
        raise CliError(f"store {shown_url(url)}: cannot read its schema: {_first_line(exc)}") from None
    if problem is not None:
        store.close()
        raise CliError(f"store {shown_url(url)}: {problem}")


@contextlib.contextmanager
def opened_network(args: argparse.Namespace) -> Iterator[PopNetwork]:
    """The network of ``--config`` on this PoP host: its state, CA key and store (checked)."""
    config = config_of(args.config)
    net_dir = network_dir(state_dir_of(args.state_dir), config.name)
    ca_private = _require_init(net_dir, config)
    url = store_url(args, net_dir)
    store = open_store(url, existing=True)
    check_revision(store, url)
    try:
        yield PopNetwork(config, store, net_dir, ca_private)
    finally:
        store.close()


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


def cmd_init(args: argparse.Namespace) -> int:
    """Make the network: everything is made in a staging directory beside the state and
    moved into place at the end (ca.key last), so a failed init leaves the state
    directory as it was and the next init needs no --force."""
    config = config_of(args.config)
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
            info, certs = make_network(config, stage, store)
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


def cmd_pop(args: argparse.Namespace) -> int:
    config = config_of(args.config)
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
    url = store_url(args, net_dir)
    store = open_store(url, existing=True)  # before anything is written
    check_revision(store, url)
    net = PopNetwork(config, store, net_dir, ca_private)
    try:
        check_settings(net, config)  # a subnet or port changed in the file: refused, as by apply
    except ControlError as exc:
        store.close()
        raise BadInput(str(exc)) from None
    identity = node_dir.load_identity()
    if time.time() >= renewal_due(identity.certificate):  # due or expired while stopped: renew here
        try:
            renewed = renew_own(net, identity.certificate, identity.signing_private)
        except ControlError as exc:
            store.close()
            raise CliError(f"cannot renew PoP {pop.name}'s certificate: {exc}") from None
        node_dir.save_certificate(renewed)
    node_dir.save_membership(certificate_to_dict(node_dir.load_identity().certificate), net.info)
    setup_logging(os.environ.get("NAAS_LOG_LEVEL", "INFO"))
    try:
        run_loop(_run_pop(net, pop.name, node_dir.path, args.interface, options))
    except AgentError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


async def _run_pop(
    net: PopNetwork, name: str, node_path: Path, interface: str, options: AgentOptions
) -> None:
    agent = options.agent(NodeDir(node_path), interface)
    await agent.start()
    assert agent.core is not None
    store = net.store
    now = asyncio.get_running_loop().time()
    for cert in store.members():
        agent.core.member_enrolled(cert, now)  # members enrolled before this start
    service = EnrollmentService(net, name, agent.member_enrolled)
    service.api = RestApi(net, name, agent_view=agent.topology)
    agent.extra_status = lambda: {"pop": {"name": name, **service.status()}}
    runner, port = await start_enrollment_site(
        service,
        "0.0.0.0",
        net.config.network.enrollment_port,
        server_ssl_context(node_path / "tls.crt", node_path / "tls.key"),
    )
    logging.getLogger("naas.pop").info("PoP %s enrolling on https://0.0.0.0:%d", name, port)
    watching = asyncio.get_running_loop().create_task(_watch_documents(agent, store))
    try:
        await agent.run_until_stopped()
    finally:
        watching.cancel()
        await runner.cleanup()
        store.close()


async def _watch_documents(agent: Agent, store: PopStore) -> None:
    """Hand the agent every new network document the store gets (from this PoP's API,
    the other PoP's, or `naas revoke` on a PoP host): a cheap version query every
    DOCUMENT_POLL seconds, the body only when it is newer. A store that does not answer
    (PostgreSQL restarting) is asked again, with one log line per outage."""
    log = logging.getLogger("naas.pop")
    failing = False
    while True:
        try:
            version = await asyncio.to_thread(store.document_version)
            held = agent.core.document.version if agent.core is not None and agent.core.document else 0
            if version > held:
                latest = await asyncio.to_thread(store.latest_document)
                if latest is not None and agent.document_received(latest[1]):
                    log.info("network document version %d from the store", latest[0])
            if failing:
                log.info("the store answers again")
            failing = False
        except Exception as exc:
            if not failing:
                log.warning("cannot read the network document from the store: %s", _first_line(exc))
            failing = True
        await asyncio.sleep(DOCUMENT_POLL)


def add_store_options(parser: argparse.ArgumentParser, *, remote: bool = False) -> None:
    """--config, --state-dir, --store: where a PoP host keeps the network (``remote``: the
    command can work at a PoP's API instead, cli/remote.py, and checks --config itself)."""
    config_help = "the network's naas.toml" + (" (required without --api)" if remote else "")
    parser.add_argument("--config", required=not remote, help=config_help)
    parser.add_argument(
        "--state-dir", metavar="DIR", help="state directory (default /var/lib/naas or $NAAS_STATE_DIR)"
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="PoP store URL, one for both PoPs (default $NAAS_POP_STORE, else SQLite"
        " <state-dir>/<network>/pop.db); only init creates one",
    )


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = add_store_options

    init = sub.add_parser("init", help="create the network CA, PoP keys and store")
    common(init)
    init.add_argument("--force", action="store_true", help="start over: new CA, every member must re-enroll")
    init.set_defaults(func=cmd_init)

    pop = sub.add_parser("pop", help="run a PoP: enrollment service and mesh member")
    common(pop)
    pop.add_argument("--name", required=True, help="which PoP of the config this host is")
    pop.add_argument(
        "--interface", metavar="NAME", default=DEFAULT_INTERFACE, help="TAP device name (default %(default)s)"
    )
    add_agent_options(pop)
    pop.set_defaults(func=cmd_pop)
