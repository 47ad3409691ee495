"""Admin commands that change a live network: invite, revoke, apply, clients, members,
policy, token, db.

invite, revoke, apply, clients, members and policy work either on a PoP host (``--config``,
``--state-dir``, ``--store``) or at a PoP's REST API from anywhere (``--api URL --token
T --pin P``); both ways run the same operations of pop/api.py and print the same
(cli/remote.py). A refusal is one line and exit 2; nothing is half-done (every change is
one store transaction with its new network document, which the running PoPs pick up
within a second and the mesh spreads).

    naas invite [--client NAME]...        one single-use invitation URL per client
    naas revoke NAME                      cut a member off (every member within seconds)
    naas apply [--dry-run] [--prune]      make the store's clients those of naas.toml
    naas clients [--create NAME [--ip IP] [--groups a,b] [--allowed CIDR,...] | --delete NAME]
    naas members [--groups NAME a,b]      members (with the PoP's view of them); regroup one
    naas policy show [--json]             the network's policy (naas.toml's [policy])
    naas policy trace FROM TO PROTO [PORT]  why a flow is allowed or denied, rule by rule
    naas token create --role admin|read   a bearer token for the REST API, shown once
    naas token list | delete NAME
    naas db upgrade | status              the store's schema (pop/migrate.py)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from naas.cli.admin import (
    UPGRADE_COMMAND,
    add_store_options,
    config_of,
    control_call,
    open_store,
    opened_network,
    parse_ttl,
    shown_url,
    store_url,
)
from naas.cli.common import EXIT_OK, BadInput, CliError, say, state_dir_of
from naas.cli.remote import ENV_TOKEN, LocalApi, add_api_options, api_for
from naas.control import apply as applying
from naas.control import members
from naas.daemon.state import network_dir
from naas.model.config import NetworkConfig
from naas.pop import migrate

PLAN_KEYS = ("added", "changed", "removed", "kept", "policy_changed", "lines", "applied")  # apply --json


def cmd_invite(args: argparse.Namespace) -> int:
    ttl = parse_ttl(args.ttl) if args.ttl else members.DEFAULT_TTL
    if ttl > members.MAX_TTL:
        raise BadInput(f"--ttl: {args.ttl!r} is longer than {members.MAX_TTL // 86400} days")
    with api_for(args) as api:
        known = [client["name"] for client in api.call("list_clients")["clients"]]
        for name in args.client or []:
            if name not in known:
                raise BadInput(f"no client named {name!r}: add it to naas.toml and run `naas apply`")
        chosen = list(dict.fromkeys(args.client)) if args.client else known
        if not chosen:
            raise BadInput("the network has no clients: add them to naas.toml and run `naas apply`")
        issued = [api.call("create_invitation", body={"client": name, "ttl_seconds": ttl}) for name in chosen]
    if args.json:
        rows = [{"client": i["client"], "url": i["url"], "expires_at": i["expires_at"]} for i in issued]
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(i["client"]) for i in issued)
        for invitation in issued:
            print(f"{invitation['client']:<{width}}  {invitation['url']}")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    with api_for(args) as api:
        done = api.call("revoke_member", {"name": args.name})
    say(
        f"revoked {done['name']} (node {done['node_id']}): network document version "
        f"{done['document_version']}; members drop it within seconds. A new invitation for the name "
        "makes a new identity."
    )
    return EXIT_OK


def apply_request(config: NetworkConfig, *, prune: bool, dry_run: bool) -> dict[str, Any]:
    """The body of POST /v1/apply for naas.toml: its clients, its policy (the open one
    without [policy]: the file is the policy's source of truth) and its fixed settings."""
    clients = [
        {
            "name": spec.name,
            "ip": None if spec.ip is None else str(spec.ip),
            "groups": list(spec.groups),
            "allowed_addresses": [str(network) for network in spec.allowed],
        }
        for spec in control_call(applying.clients_of, config)
    ]
    network = config.network
    settings = {
        "name": config.name,
        "subnet": None if network.subnet is None else str(network.subnet),
        "mesh_port": network.mesh_port,
        "pops": [{"name": pop.name, "address": pop.address} for pop in config.pops],
    }
    return {
        "clients": clients,
        "prune": prune,
        "dry_run": dry_run,
        "settings": settings,
        "policy": config.policy.as_json(),
    }


def cmd_apply(args: argparse.Namespace) -> int:
    with api_for(args, reads_config=True) as api:
        if isinstance(api, LocalApi):
            config = api.net.config
            control_call(applying.check_settings, api.net, config)  # messages name the file
        elif args.config:
            config = config_of(args.config)
        else:
            raise BadInput("--config: required: apply sends the clients of this naas.toml")
        result = api.call("apply", body=apply_request(config, prune=args.prune, dry_run=args.dry_run))
    empty = not (result["added"] or result["changed"] or result["removed"] or result["policy_changed"])
    if args.json:
        print(json.dumps({key: result[key] for key in PLAN_KEYS}, indent=2))
        return EXIT_OK
    for line in result["lines"]:  # without changes: the clients kept without --prune
        say(line)
    if empty:
        say("no changes")
    elif not result["applied"]:
        say("dry run: nothing changed")
    else:
        say(f"applied; network document version {result['document_version']}")
    return EXIT_OK


def _group_list(text: str) -> list[str]:
    return [group.strip() for group in text.split(",") if group.strip()]


def _network_list(text: str) -> list[str]:
    """``--allowed 10.9.0.0/24,192.168.5.7``: checked by the API (or here, locally, by the
    same route)."""
    return [network.strip() for network in text.split(",") if network.strip()]


def _shown(groups: Sequence[str]) -> str:
    return ",".join(groups) or "-"


def cmd_clients(args: argparse.Namespace) -> int:
    if (args.ip is not None or args.groups is not None or args.allowed is not None) and not args.create:
        raise BadInput("--ip, --groups and --allowed go with --create NAME")
    with api_for(args) as api:
        if args.create:
            body = {
                "name": args.create,
                "ip": args.ip,
                "groups": _group_list(args.groups or ""),
                "allowed_addresses": _network_list(args.allowed or ""),
            }
            answer = api.call("create_client", body=body)
        elif args.delete:
            answer = api.call("delete_client", {"name": args.delete})
        else:
            answer = api.call("list_clients")
    if args.json:
        print(json.dumps(answer, indent=2))
    elif args.create:
        allowed = answer["allowed_addresses"]
        say(
            f"client {answer['name']} added (ip {answer['ip'] or 'from the range'}, groups "
            f"{_shown(answer['groups'])}"
            + (f", allowed addresses {_shown(allowed)}" if allowed else "")
            + f"); `naas invite --client {answer['name']}` lets it enroll"
        )
    elif args.delete:
        revoked = answer["revoked_node_id"]
        say(
            f"client {answer['name']} removed"
            + (f"; its member (node {revoked}) is revoked" if revoked is not None else "")
            + f": network document version {answer['document_version']}"
        )
    else:
        rows = [
            (
                c["name"],
                c["ip"] or "-",
                _shown(c["groups"]),
                "yes" if c["enrolled"] else "no",
                _shown(c["allowed_addresses"]),
            )
            for c in answer["clients"]
        ]
        _table(("NAME", "IP", "GROUPS", "ENROLLED", "ALLOWED"), rows)
    return EXIT_OK


def cmd_members(args: argparse.Namespace) -> int:
    with api_for(args) as api:
        if args.groups:
            name, groups = args.groups
            answer = api.call("set_member_groups", {"name": name}, {"groups": _group_list(groups)})
        else:
            answer = api.call("list_members")
    if args.json:
        print(json.dumps(answer, indent=2))
    elif args.groups:
        say(
            f"groups of {answer['name']}: {_shown(answer['groups'])}; network document version "
            f"{answer['document_version']} (members see it within seconds)"
        )
    else:
        rows = [
            (
                m["name"],
                str(m["node_id"]),
                m["ip"] or "-",
                _shown(m["groups"]),
                "pop" if m["is_pop"] else "client",
                m["reach"] or "-",
                "-" if m["rtt_ms"] is None else f"{m['rtt_ms']:.1f} ms",
                "-" if m.get("document_version") is None else str(m["document_version"]),
            )
            for m in answer["members"]
        ]
        _table(("NAME", "NODE", "IP", "GROUPS", "KIND", "REACH", "RTT", "DOCUMENT"), rows)
        for revoked in answer["revoked"]:
            say(f"revoked: {revoked['name']} (node {revoked['node_id']})")
        held = answer["agent_document_version"]
        say(
            f"network document version {answer['document_version']}"
            + (f" (this PoP's agent holds {held})" if held is not None else "")
        )
    return EXIT_OK


def cmd_policy(args: argparse.Namespace) -> int:
    if args.action == "show":
        with api_for(args) as api:
            answer = api.call("get_policy")
        if args.json:
            print(json.dumps(answer, indent=2))
            return EXIT_OK
        rules = answer["rule"]
        count = f"{len(rules)} rule{'' if len(rules) == 1 else 's'}"
        say(f"policy: {count}, default {answer['default']}" + ("" if rules else " (no rule)"))
        rows = [
            (
                str(index),
                rule["name"],
                rule["action"],
                rule["proto"],
                ",".join(rule["ports"]) or "-",
                ",".join(rule["from"]),
                ",".join(rule["to"]),
            )
            for index, rule in enumerate(rules, 1)
        ]
        if rows:
            _table(("RULE", "NAME", "ACTION", "PROTO", "PORTS", "FROM", "TO"), rows)
        return EXIT_OK
    body: dict[str, Any] = {"from": args.source, "to": args.destination, "proto": args.proto}
    if args.port is not None:
        if not (args.port.isascii() and args.port.isdigit()) or not 0 < int(args.port) < 65536:
            raise BadInput(f"PORT: {args.port!r} is not a port (1-65535)")
        body["port"] = int(args.port)
    for key, value in (("src_ip", args.src_ip), ("dst_ip", args.dst_ip)):
        if value is not None:
            body[key] = value
    with api_for(args) as api:
        answer = api.call("trace_policy", body=body)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        for line in answer["lines"]:
            say(line)
    return EXIT_OK  # allowed or denied alike: the trace is the answer


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_token(args: argparse.Namespace) -> int:
    with opened_network(args) as net:
        if args.action == "create":
            token = control_call(members.create_token, net, args.name or args.role, args.role)
            pop = net.info.pops[0]
            say(token)
            say(
                f"# only its hash is stored; use it as: naas COMMAND --api https://{pop.enrollment_endpoint} "
                f"--pin {pop.tls_pin} with the token in ${ENV_TOKEN} (or Authorization: Bearer TOKEN)"
            )
        elif args.action == "list":
            for record in net.store.tokens():
                used = record.last_used_at if record.last_used_at is not None else "never"
                say(f"{record.name:<20} {record.role:<6} created {record.created_at} last used {used}")
        else:
            if not args.name:
                raise CliError("token delete: give --name", 2)
            count = net.store.delete_tokens(args.name)
            if not count:
                raise CliError(f"no token named {args.name!r}", 2)
            say(f"deleted {count} token(s) named {args.name!r}")
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    config = config_of(args.config)
    net_dir = network_dir(state_dir_of(args.state_dir), config.name)
    url = store_url(args, net_dir)
    with open_store(url, existing=True) as store:
        if args.action == "status":
            problem = store.revision_problem(UPGRADE_COMMAND)
            newest = f"schema at revision {migrate.head_revision()} (newest)"
            say(f"store {shown_url(url)}: {problem or newest}")
            return EXIT_OK if problem is None else 1
        try:
            before, after = store.create_schema()
        except Exception as exc:
            raise CliError(f"store {shown_url(url)}: upgrade failed, nothing changed: {exc}") from None
    say(
        f"store {shown_url(url)}: "
        + (f"schema upgraded from revision {before} to {after}" if before != after else f"already at {after}")
    )
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    invite = sub.add_parser("invite", help="print one single-use invitation URL per client")
    _add_target_options(invite)
    invite.add_argument("--client", action="append", help="only this client (repeatable)")
    invite.add_argument("--ttl", help="validity, e.g. 3600, 30m, 12h, 7d (default 7d)")
    invite.add_argument("--json", action="store_true", help="print a JSON list of {client, url, expires_at}")
    invite.set_defaults(func=cmd_invite)

    revoke = sub.add_parser("revoke", help="cut a member off the network (every member within seconds)")
    _add_target_options(revoke)
    revoke.add_argument("name", help="the member's name")
    revoke.set_defaults(func=cmd_revoke)

    apply = sub.add_parser("apply", help="make the network's clients those of naas.toml")
    _add_target_options(apply)
    apply.add_argument("--dry-run", action="store_true", help="print the difference, change nothing")
    apply.add_argument("--prune", action="store_true", help="revoke clients that are no longer in the file")
    apply.add_argument("--json", action="store_true", help="print the difference as JSON")
    apply.set_defaults(func=cmd_apply)

    clients = sub.add_parser("clients", help="list the network's clients, add one or remove one")
    _add_target_options(clients)
    change = clients.add_mutually_exclusive_group()
    change.add_argument("--create", metavar="NAME", help="add a client (then `naas invite --client NAME`)")
    change.add_argument(
        "--delete", metavar="NAME", help="remove a client; its member, if enrolled, is revoked"
    )
    clients.add_argument("--ip", help="with --create: a fixed overlay address (default: one from the range)")
    clients.add_argument("--groups", metavar="A,B", help="with --create: its groups, comma-separated")
    clients.add_argument(
        "--allowed",
        metavar="CIDR,...",
        help="with --create: networks it may send from besides its own address (routers, bridged hosts)",
    )
    clients.add_argument("--json", action="store_true", help="print the API's JSON answer")
    clients.set_defaults(func=cmd_clients)

    members_parser = sub.add_parser("members", help="list the members (as the PoP sees them), or regroup one")
    _add_target_options(members_parser)
    members_parser.add_argument(
        "--groups",
        nargs=2,
        metavar=("NAME", "A,B"),
        help='replace the groups of member NAME ("" for none): a new network document',
    )
    members_parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    members_parser.set_defaults(func=cmd_members)

    policy = sub.add_parser("policy", help="the network's policy: show it, or trace a flow through it")
    actions = policy.add_subparsers(dest="action", metavar="ACTION", help="one of these:")
    actions.required = True
    show = actions.add_parser("show", help="the rules in order and the default")
    _add_target_options(show)
    show.add_argument("--json", action="store_true", help="print the policy as JSON (PUT /v1/policy's body)")
    show.set_defaults(func=cmd_policy)
    trace = actions.add_parser(
        "trace", help="why a flow between two members is allowed or denied, rule by rule"
    )
    _add_target_options(trace)
    trace.add_argument("source", metavar="FROM", help="the sending member (or client) name")
    trace.add_argument("destination", metavar="TO", help="the receiving member (or client) name")
    trace.add_argument("proto", metavar="PROTO", help="tcp, udp, icmp or ethertype:0xNNNN")
    trace.add_argument("port", metavar="PORT", nargs="?", help="the destination port (tcp and udp)")
    trace.add_argument("--src-ip", help="the flow's source address (default: FROM's overlay address)")
    trace.add_argument("--dst-ip", help="the flow's destination address (default: TO's overlay address)")
    trace.add_argument("--json", action="store_true", help="print the API's JSON answer")
    trace.set_defaults(func=cmd_policy)

    token = sub.add_parser("token", help="bearer tokens of the PoPs' REST API")
    add_store_options(token)
    token.add_argument("action", choices=("create", "list", "delete"), help="what to do")
    token.add_argument(
        "--role", choices=("admin", "read"), default="read", help="admin may change, read only reads"
    )
    token.add_argument("--name", help="a name to know the token by (default: its role)")
    token.set_defaults(func=cmd_token)

    db = sub.add_parser("db", help="the PoP store's schema: status, or upgrade it to this version's")
    add_store_options(db)
    db.add_argument("action", choices=("status", "upgrade"), help="what to do")
    db.set_defaults(func=cmd_db)


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    """A PoP host's store (--config, --state-dir, --store), or a PoP's API (--api ...)."""
    add_store_options(parser, remote=True)
    add_api_options(parser)
