"""What the cloud adapter is built from: the credentials, the options, the known sites and
the endpoints they give.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from huaweicloudsdkcbr.v1.region.cbr_region import CbrRegion
from pydantic import SecretStr

from daemon.core.errors import PermanentError

MAX_LISTING_PAGES = 1000  # pages one listing may take in one sweep (cloud.max_listing_pages)


@dataclass(frozen=True)
class Credentials:
    """AK/SK (and an optional temporary token), only ever handed to the SDK."""

    access_key: SecretStr
    secret_key: SecretStr
    security_token: SecretStr | None = None
    domain_id: str | None = None


@dataclass(frozen=True)
class CloudOptions:
    """How to reach the cloud: endpoints, TLS, timeouts and limits."""

    cbr_endpoints: dict[str, str]  # region -> URL overrides
    iam_endpoint: str | None = None
    projects: dict[str, str] | None = None  # region -> project id, skipping IAM
    verify_tls: bool = True
    ca_bundle: str | None = None
    proxy: str | None = None
    connect_timeout: timedelta = timedelta(seconds=10)
    read_timeout: timedelta = timedelta(seconds=30)
    requests_per_second: float = 10.0
    concurrency: int = 8
    read_attempts: int = 5
    read_retry_budget: timedelta = timedelta(seconds=120)
    max_listing_pages: int = MAX_LISTING_PAGES
    all_regions_endpoint: str | None = None  # the emulator serves every region and IAM
    site: str = "international"  # a key of SITES: the endpoint patterns
    throttle_budget: timedelta = timedelta(minutes=10)  # throttled this long: give up
    mutation_throttle_wait: timedelta = timedelta(seconds=40)  # a POST's longest gate wait


@dataclass(frozen=True)
class Site:
    """Where one cloud's endpoints are: IAM's, and CBR's per region."""

    iam: str
    cbr: str  # with {region}
    regions: frozenset[str] | None = None  # None: the SDK's CBR table


# The SDK's tables know Huawei Cloud's international site only (docs/design.md §16); its
# eu-west-101 entry points at the international domain, so the European site has its own.
SITES: Mapping[str, Site] = {
    "international": Site(
        "https://iam.myhuaweicloud.com", "https://cbr.{region}.myhuaweicloud.com"
    ),
    "europe": Site(
        "https://iam.myhuaweicloud.eu",
        "https://cbr.{region}.myhuaweicloud.eu",
        frozenset({"eu-west-101"}),
    ),
    "otc": Site(
        "https://iam.eu-de.otc.t-systems.com",
        "https://cbr.{region}.otc.t-systems.com",
        frozenset({"eu-de", "eu-nl"}),
    ),
}


def site_regions(name: str) -> frozenset[str]:
    site = SITES[name]
    if site.regions is not None:
        return site.regions
    others = {region for other in SITES.values() if other.regions for region in other.regions}
    return frozenset(CbrRegion.static_fields) - others


def iam_endpoint(options: CloudOptions) -> str:
    return options.iam_endpoint or options.all_regions_endpoint or SITES[options.site].iam


def cbr_endpoint(options: CloudOptions, region: str) -> str:
    """An explicit endpoint, else the site's pattern for a region the site has."""
    override = options.cbr_endpoints.get(region) or options.all_regions_endpoint
    if override:
        return override
    if region not in site_regions(options.site):
        home = [name for name in SITES if region in site_regions(name)]
        where = f"; it is a region of cloud.site {home[0]!r}" if home else ""
        raise PermanentError(
            f"no CBR endpoint known for region {region!r} on cloud.site {options.site!r}"
            f"{where}; set cloud.site or cloud.endpoints.cbr.{region}",
            code="unknown_region",
        )
    return SITES[options.site].cbr.format(region=region)
