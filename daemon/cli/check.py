"""``check-config --cloud``: every endpoint reached, every policy resolved against the cloud."""

from __future__ import annotations

import sys

from daemon.app import App
from daemon.cli.output import out
from daemon.core import exitcodes
from daemon.core.errors import RefusedError
from daemon.engine.resolve import resolve_policy

# -- check-config --cloud ------------------------------------------------------------------


def check_cloud(app: App) -> int:
    """Resolve every enabled policy against the cloud, as a sweep would, without scanning."""
    code = exitcodes.OK
    regions = sorted(
        {p.source.region for p in app.policies()} | {p.destination.region for p in app.policies()}
    )
    for scope, endpoint in app.endpoints(regions).items():
        out(f"resolved endpoint {scope}: {endpoint}")
    for policy in app.policies():
        try:
            resolved = resolve_policy(app.engine, policy)
        except RefusedError as refusal:
            print(f"policy {policy.name}: {refusal}", file=sys.stderr)
            code = exitcodes.REPLICATION_FAILED
            continue
        target = resolved.target
        vaults = ", ".join(f"{vault.name} ({vault.id})" for vault in resolved.source_vaults)
        out(
            f"policy {policy.name}: ok; source {target.source_region} project "
            f"{target.source_project_id} vaults {vaults}; destination "
            f"{target.destination.region} project {target.destination.project_id} vault "
            f"{target.destination.vault_id}"
        )
    return code
