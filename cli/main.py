"""The ``maas`` command.

maas up                                  run the whole platform locally (embedded servers when
                                         MAAS_DATABASE_URL / MAAS_BROKER_URL / MAAS_S3_ENDPOINT_URL are unset)
maas api | maas worker [--queues Q,…]    run one API server or one Celery worker (of some queues)
maas serve [--host H] [--port P]         run one model server (python -m serving)
maas db upgrade [REV] | downgrade [REV] | current
maas admin tenants create NAME | list | quotas [--tenant T] | set-quota TENANT NAME VALUE
maas admin tenants set-weight TENANT WEIGHT   its share of each job queue against the others' (default 1)
maas admin usage [--from T] [--to T] [--group-by day|model|job_type]
maas admin keys create --tenant T [--name N] | revoke KEY_ID_OR_PREFIX | list [--tenant T]

Against a running platform, through the SDK (see cli/client_commands.py; each takes --output json):
maas login | files upload/list | jobs submit/get/list/cancel/logs | artifacts download | models list
maas deploy NAME --version N | deployments stats | predict NAME --input FILE.npz
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from core.settings import MissingSetting, Settings, load_settings


def _session(settings: Settings):
    from core.db import make_engine, session_factory

    return session_factory(make_engine(settings))()


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from infra.local_stack import run_up

    return run_up(settings)


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from api.server import serve

    serve(settings)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.__main__ import main as worker_main

    worker_main(args.worker_args)
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from serving.__main__ import run, with_options

    return run(with_options(settings, args))


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from migrations import runner

    database_url = settings.service("database_url")
    if args.action == "upgrade":
        runner.upgrade(database_url, args.revision or "head")
    elif args.action == "downgrade":
        runner.downgrade(database_url, args.revision or "base")
    print(f"database at revision: {runner.current(database_url) or '(empty)'}")
    return 0


def cmd_tenants(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from core.api_keys import create_tenant, find_tenant
    from core.models import Tenant

    with _session(settings) as session:
        if args.action == "create":
            tenant = create_tenant(session, args.name)
            session.commit()
            print(f"{tenant.id}  {tenant.name}")
        elif args.action == "set-weight":
            tenant = find_tenant(session, args.tenant)
            tenant.fair_share_weight = args.weight
            session.commit()
            print(f"{tenant.id}  {tenant.name}  fair-share weight {tenant.fair_share_weight}")
        else:
            for tenant in session.scalars(select(Tenant).order_by(Tenant.id)):
                print(
                    f"{tenant.id}  {tenant.name}  created {tenant.created_at:%Y-%m-%d %H:%M:%S}  "
                    f"weight {tenant.fair_share_weight}"
                )
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from core.api_keys import create_key, find_tenant, list_keys, revoke_key

    with _session(settings) as session:
        if args.action == "create":
            created = create_key(session, find_tenant(session, args.tenant), args.name)
            session.commit()
            print(f"id:     {created.id}\nprefix: {created.prefix}\nkey:    {created.key}")
            print("The key is shown only now; store it somewhere safe.", file=sys.stderr)
        elif args.action == "revoke":
            row = revoke_key(session, args.key)
            session.commit()
            print(f"revoked {row.id} ({row.prefix}) at {row.revoked_at:%Y-%m-%d %H:%M:%S}")
        else:
            tenant = find_tenant(session, args.tenant) if args.tenant else None
            for row in list_keys(session, tenant):
                used = f"{row.last_used_at:%Y-%m-%d %H:%M:%S}" if row.last_used_at else "never"
                state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                print(f"{row.id}  {row.prefix}  tenant={row.tenant_id}  name={row.name}  last used {used}  {state}")
    return 0


def _weight(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"a weight is a whole number from 1 to 1000, not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    from serving import __main__ as serving_main

    parser = argparse.ArgumentParser(
        prog="maas", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("up", help="run the platform locally").set_defaults(func=cmd_up)
    sub.add_parser("api", help="run an API server").set_defaults(func=cmd_api)
    # every option after `worker` (--help included) is the worker's own: see cmd_worker
    sub.add_parser("worker", help="run a Celery worker (options as python -m workers)", add_help=False).set_defaults(
        func=cmd_worker
    )
    serve = sub.add_parser(
        "serve",
        help="run a model server (python -m serving)",
        description=serving_main.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serving_main.add_options(serve)
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?", help="target revision (upgrade: head, downgrade: base)")
    db.set_defaults(func=cmd_db)

    admin = sub.add_parser("admin", help="tenants and API keys").add_subparsers(dest="what", required=True)
    tenants = admin.add_parser("tenants").add_subparsers(dest="action", required=True)
    create_tenant = tenants.add_parser("create")
    create_tenant.add_argument("name")
    tenants.add_parser("list")
    set_weight = tenants.add_parser("set-weight", help="a tenant's share of each job queue (fair scheduling)")
    set_weight.add_argument("tenant", help="tenant id or name")
    set_weight.add_argument("weight", type=_weight, help="a whole number from 1 to 1000; default 1")
    for p in tenants.choices.values():
        p.set_defaults(func=cmd_tenants)
    from cli import admin_limits

    admin_limits.add_commands(admin, tenants)  # tenants quotas | set-quota, and admin usage

    keys = admin.add_parser("keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create")
    create.add_argument("--tenant", required=True, help="tenant id or name")
    create.add_argument("--name", default="default", help="a label for the key")
    revoke = keys.add_parser("revoke")
    revoke.add_argument("key", help="key id (key_…) or visible prefix (maas_…)")
    list_ = keys.add_parser("list")
    list_.add_argument("--tenant", help="tenant id or name")
    for p in keys.choices.values():
        p.set_defaults(func=cmd_keys)

    from cli.client_commands import add_client_commands

    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse.REMAINDER does not take options (`maas worker --queues training` failed): the worker's
    # options are what this parser does not know, handed on as they came
    args, rest = parser.parse_known_args(argv)
    if args.command == "worker":
        args.worker_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    func: Callable[[Settings, argparse.Namespace], int] = args.func
    try:
        return func(load_settings(), args)
    except (MissingSetting, LookupError) as exc:
        print(f"maas: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
