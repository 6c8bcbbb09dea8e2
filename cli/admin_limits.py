"""Admin commands for tenant limits and usage, straight on the database (like ``maas admin tenants``):

maas admin tenants quotas [--tenant T]              every quota: its value, where it comes from, the use now
maas admin tenants set-quota TENANT NAME VALUE      a tenant's own value (VALUE ``default``: back to the setting)
maas admin usage [--from T] [--to T] [--group-by day|model|job_type]    every tenant's usage
"""

from __future__ import annotations

import argparse
from datetime import datetime

from core.settings import Settings


def _session(settings: Settings):
    from core.db import make_engine, session_factory

    return session_factory(make_engine(settings))()


def _used(session, tenant_id: str, name: str) -> str:
    from core import quotas

    base, job_type = quotas.split(name)
    if base == quotas.QUEUED_JOBS:
        return str(quotas.queued_job_count(session, tenant_id, job_type))
    counters = {
        quotas.DEPLOYMENTS: quotas.deployment_count,
        quotas.REPLICAS: quotas.replica_count,
        quotas.STORED_BYTES: quotas.stored_bytes,
    }
    return str(counters[base](session, tenant_id)) if base in counters else "-"


def cmd_quotas(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from core import quotas
    from core.api_keys import find_tenant
    from core.models import Tenant

    with _session(settings) as session:
        if args.action == "set-quota":
            tenant = find_tenant(session, args.tenant)
            value = None if args.value == "default" else int(args.value)
            try:
                quotas.set_quota(session, tenant.id, args.name, value)
            except ValueError as exc:  # UnknownQuota too
                raise LookupError(str(exc)) from None
            session.commit()
            shown = quotas.effective_quota(session, tenant.id, args.name, settings)
            print(f"{tenant.id}  {args.name} = {shown}{'' if value is not None else ' (default)'}")
            return 0
        tenants = [find_tenant(session, args.tenant)] if args.tenant else list(session.scalars(select(Tenant)))
        print(f"{'TENANT':<30} {'QUOTA':<28} {'VALUE':>16} {'FROM':<8} {'USED':>16}")
        for tenant in sorted(tenants, key=lambda t: t.id):
            own = quotas.overrides(session, tenant.id)
            for name in sorted({*quotas.QUOTAS, *own}):
                value = quotas.effective_quota(session, tenant.id, name, settings)
                source = "tenant" if name in own else "default"
                print(f"{tenant.id:<30} {name:<28} {value:>16} {source:<8} {_used(session, tenant.id, name):>16}")
        print(f"(replicas: each deployment counts {quotas.replicas_per_deployment()}; - : a rate, or enforced "
              "at dispatch)")  # fmt: skip
    return 0


def cmd_usage(settings: Settings, args: argparse.Namespace) -> int:
    from core import usage

    default_start, default_end = usage.default_range()
    end = datetime.fromisoformat(args.to) if args.to else default_end
    start = datetime.fromisoformat(args.start) if args.start else end - (default_end - default_start)
    with _session(settings) as session:
        rows = usage.report(session, start, end, args.group_by)
    columns = usage.METRICS
    short = ("requests", "items", "infer_s", "job_s", "gpu_s", "downloaded", "stored")
    print(f"{'TENANT':<30} {'GROUP':<28} " + " ".join(f"{c:>12}" for c in short))
    for tenant_id, row in rows:
        group = " ".join(str(v) for k, v in row.key.items() if k != "model_version_id")
        print(f"{tenant_id:<30} {group:<28} " + " ".join(f"{row.values[c]:>12.6g}" for c in columns))
    return 0


def add_commands(admin: argparse._SubParsersAction, tenants: argparse._SubParsersAction) -> None:
    """Add ``tenants quotas``, ``tenants set-quota`` and ``usage`` to ``maas admin``."""
    show = tenants.add_parser("quotas", help="every quota of every tenant (or of one), with its use")
    show.add_argument("--tenant", help="tenant id or name")
    set_quota = tenants.add_parser("set-quota", help="give a tenant its own value of a quota")
    set_quota.add_argument("tenant", help="tenant id or name")
    set_quota.add_argument("name", help="a quota name (see `maas admin tenants quotas`), or running_jobs_<type>")
    set_quota.add_argument("value", help="a number, or `default` to go back to the setting")
    for p in (show, set_quota):
        p.set_defaults(func=cmd_quotas)
    report = admin.add_parser("usage", help="every tenant's usage")
    report.add_argument("--from", dest="start", help="ISO 8601 with offset (default: 30 days before --to)")
    report.add_argument("--to", help="ISO 8601 with offset (default: the end of this hour)")
    report.add_argument("--group-by", choices=["day", "model", "job_type"], default="day")
    report.set_defaults(func=cmd_usage)
