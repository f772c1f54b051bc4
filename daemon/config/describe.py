"""What ``check-config`` prints: the effective settings, secrets masked."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

from pydantic import SecretStr

from daemon.config.load import LoadedConfig
from daemon.config.secrets import PASSWORD_IN_URL
from daemon.core.policy import Policy, Settings
from daemon.core.settings import NotifySettings
from daemon.core.units import format_duration as _duration_text

# --- describing --------------------------------------------------------------------------


def format_duration(value: timedelta) -> str:
    """``timedelta(hours=1, minutes=30)`` -> ``1h30m``."""
    return _duration_text(value)


def format_size(value: int) -> str:
    """Bytes in the largest binary unit that keeps the number readable."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:g}{unit}"
    return f"{value}B"


def _mask(secret: SecretStr | None) -> str:
    return "(none)" if secret is None else "****"


def _describe_cloud(settings: Settings) -> Iterator[str]:
    cloud = settings.cloud
    yield "ledger: " + PASSWORD_IN_URL.sub(r"\1:****@", settings.ledger.url)
    yield f"cloud: provider {cloud.provider}"
    if cloud.credentials is not None:
        yield (
            f"  credentials: access_key {_mask(cloud.credentials.access_key)}, secret_key "
            f"{_mask(cloud.credentials.secret_key)}, security_token "
            f"{_mask(cloud.credentials.security_token)}"
        )
    for region, url in {"iam": cloud.endpoints.iam, **cloud.endpoints.cbr}.items():
        if url:
            yield f"  endpoint {region}: {url}"
    yield (
        f"  tls: verify {cloud.verify_tls}, ca_bundle {cloud.ca_bundle or '(system)'}; "
        f"timeouts connect {format_duration(cloud.connect_timeout)}, read "
        f"{format_duration(cloud.timeout)}; lease {format_duration(cloud.lease)}"
    )
    yield (
        f"  limits: {cloud.requests_per_second:g} requests/s, concurrency {cloud.concurrency}, "
        f"in flight per region {cloud.max_in_flight_per_region or 'unlimited'}"
    )
    if cloud.provider == "emulator":
        yield f"  emulator: scenario {cloud.emulator.scenario}, state {cloud.emulator.state}"


def _describe_policy(policy: Policy) -> Iterator[str]:
    schedule, retry = policy.schedule, policy.retry
    when = (
        f'cron "{schedule.cron}"'
        if schedule.cron
        else "every " + format_duration(schedule.interval or timedelta(0))
    )
    budget = format_size(policy.traffic_budget_per_day) if policy.traffic_budget_per_day else None
    yield f"policy {policy.name} ({'enabled' if policy.enabled else 'disabled'})"
    yield f"  source: {policy.source.region} vaults {', '.join(policy.source.vaults)}"
    yield (
        f"  destination: {policy.destination.region} vault {policy.destination.vault}, "
        f"project {policy.destination.project or '(region default)'}"
    )
    yield (
        f"  schedule: {when} {schedule.timezone}, jitter {format_duration(schedule.jitter)}, "
        f"period {format_duration(schedule.period)}"
    )
    yield (
        f"  retry: {retry.max_attempts} attempts, backoff {format_duration(retry.initial_backoff)}"
        f"..{format_duration(retry.max_backoff)} x{retry.multiplier:g}, jitter {retry.jitter:g}"
    )
    yield f'  replica: name "{policy.replica.name}", description "{policy.replica.description}"'
    yield (
        f"  limits: max_in_flight {policy.max_in_flight}, traffic budget "
        f"{budget + '/day' if budget else 'none'}, acceleration {policy.enable_acceleration}"
    )
    yield (
        f"  alerts: rpo {format_duration(policy.rpo)}, "
        f"stuck after {format_duration(policy.stuck_after)}"
    )
    if policy.notify is not None:
        yield f"  notify (overrides the global one): {_describe_notify(policy.notify)}"


def _describe_notify(notify: NotifySettings) -> str:
    """Where notifications go: hosts only (a ping URL's path is a token), secrets masked."""
    parts = []
    if notify.webhook is not None:
        signed = "signed" if notify.webhook.secret is not None else "unsigned"
        parts.append(f"webhook {_url_host(notify.webhook.url)} ({signed})")
    if notify.heartbeat is not None:
        parts.append(f"heartbeat {_url_host(notify.heartbeat.url)}")
    return ", ".join(parts) or "off"


def _url_host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def describe_settings(loaded: LoadedConfig) -> str:
    """A human summary of the resolved settings; secrets are shown as ``****``."""
    settings = loaded.settings
    lines = [f"config: {', '.join(str(path) for path in loaded.files)}"]
    lines += _describe_cloud(settings)
    lines.append(f"metrics: {settings.metrics.listen or 'off'}; log: {settings.log.format}")
    lines.append(f"notify: {_describe_notify(settings.notify)}")
    lines.append(f"policies: {len(settings.policies)}")
    for policy in settings.policies:
        lines += _describe_policy(policy)
    text = "\n".join(lines)
    for secret in loaded.secrets:
        if len(secret) >= 6:  # belt and braces: a secret pasted into a URL or a name
            text = text.replace(secret, "****")
    return text
