"""The emulated CBR/IAM API driven by the real Huawei SDK: auth, listing, replication rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from huaweicloudsdkcbr.v1 import (
    BackupReplicateReq,
    BackupReplicateReqBody,
    CbrClient,
    CheckpointReplicateParam,
    CheckpointReplicateReq,
    CopyBackupRequest,
    CopyCheckpointRequest,
    ListBackupsRequest,
    ListOpLogsRequest,
    ListVaultRequest,
    ShowBackupRequest,
    ShowReplicationCapabilitiesRequest,
    ShowVaultRequest,
)
from huaweicloudsdkcore.auth.credentials import BasicCredentials, GlobalCredentials
from huaweicloudsdkcore.exceptions import exceptions
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.region.region import Region
from huaweicloudsdkiam.v3 import IamClient, KeystoneListProjectsRequest

from daemon.emulator import Emulator, generate_scenario
from tests.emulator.emulator_support import DEMO, make_cbr

Factory = Callable[..., Any]


def replicate(
    emu: Emulator,
    client: Any,
    backup_name: str,
    *,
    region: str = "cn-south-1",
    vault: str = "web-dr",
    project: str | None = None,
    **extra: Any,
) -> Any:
    body = BackupReplicateReqBody(
        destination_project_id=extra.pop("destination_project_id", None)
        or emu.project_id(region, project),
        destination_region=region,
        destination_vault_id=extra.pop("destination_vault_id", None) or emu.vault_id(region, vault),
        **extra,
    )
    request = CopyBackupRequest(
        backup_id=emu.backup_id(backup_name), body=BackupReplicateReq(replicate=body)
    )
    return client.copy_backup(request)


def records(client: Any, emu: Emulator, backup_name: str) -> list[dict[str, Any]]:
    answer = client.show_backup(ShowBackupRequest(backup_id=emu.backup_id(backup_name)))
    result: list[dict[str, Any]] = answer.to_json_object()["backup"]["replication_records"]
    return result


# ----- auth ----------------------------------------------------------------------------------


def test_sdk_resolves_project_through_iam_when_built_with_region(emulator: Emulator) -> None:
    credentials = BasicCredentials(emulator.access_key, emulator.secret_key).with_iam_endpoint(
        emulator.url
    )
    client = (
        CbrClient.new_builder()
        .with_credentials(credentials)
        .with_region(Region("ap-southeast-1", emulator.url))
        .build()
    )
    answer = client.list_vault(ListVaultRequest())
    assert [vault.name for vault in answer.vaults] == ["apac-dr"]


def test_sdk_signed_request_is_accepted(emulator: Emulator, cbr: Factory) -> None:
    answer = cbr().list_vault(ListVaultRequest())
    assert {vault.name for vault in answer.vaults} == {
        "web-prod",
        "db-prod",
        "old-dr",
        "disk-vault",
    }


def test_wrong_secret_key_gets_401(emulator: Emulator, cbr: Factory) -> None:
    with pytest.raises(exceptions.ClientRequestException) as caught:
        cbr(sk="not-the-secret").list_vault(ListVaultRequest())
    assert caught.value.status_code == 401
    assert caught.value.error_code == "APIGW.0301"
    assert emulator.requests("list_vaults")[-1]["status"] == 401


def test_iam_client_with_global_credentials_resolves_default_project(emulator: Emulator) -> None:
    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    client = (
        IamClient.new_builder()
        .with_http_config(config)
        .with_credentials(
            GlobalCredentials(emulator.access_key, emulator.secret_key, emulator.domain_id)
        )
        .with_endpoints([emulator.url])
        .build()
    )
    answer = client.keystone_list_projects(KeystoneListProjectsRequest(name="cn-south-1"))
    assert [project.id for project in answer.projects] == [emulator.project_id("cn-south-1")]
    assert emulator.requests("list_projects")[-1]["status"] == 200


# ----- reads ---------------------------------------------------------------------------------


def test_list_backups_pages_over_more_than_1000() -> None:
    scenario = generate_scenario(vaults=1, backups_per_vault=2500, eligible_fraction=0.5)
    with Emulator(scenario, clock="manual") as emu:
        client = make_cbr(emu, "cn-north-4")
        vault_id = emu.vault_id("cn-north-4", "vault-0000")
        seen: list[str] = []
        for offset in (0, 1000, 2000):
            page = client.list_backups(
                ListBackupsRequest(vault_id=vault_id, limit=1000, offset=offset)
            )
            assert page.count == 2500
            seen.extend(f"{backup.created_at.isoformat()}|{backup.id}" for backup in page.backups)
        assert len(set(seen)) == 2500
        assert seen == sorted(seen, reverse=True)
        with pytest.raises(exceptions.ClientRequestException) as caught:
            client.list_backups(ListBackupsRequest(vault_id=vault_id, limit=1001))
        assert caught.value.error_code == "BackupService.9900"


def test_list_backups_filters_and_hides_records_unless_asked(
    emulator: Emulator, cbr: Factory
) -> None:
    client = cbr()
    vault_id = emulator.vault_id("cn-north-4", "web-prod")
    plain = client.list_backups(ListBackupsRequest(vault_id=vault_id)).to_json_object()
    assert all("replication_records" not in backup for backup in plain["backups"])
    shown = client.list_backups(
        ListBackupsRequest(vault_id=vault_id, show_replication=True, status=["creating", "error"])
    ).to_json_object()
    assert sorted(b["status"] for b in shown["backups"]) == ["creating", "error"]
    evs = client.list_backups(
        ListBackupsRequest(vault_id=vault_id, resource_type="OS::Cinder::Volume")
    )
    assert [backup.name for backup in evs.backups] == ["web-prod-2026-11-07-evs"]


def test_show_unknown_backup_is_404_6200(emulator: Emulator, cbr: Factory) -> None:
    with pytest.raises(exceptions.ClientRequestException) as caught:
        cbr().show_backup(ShowBackupRequest(backup_id="no-such-backup"))
    assert (caught.value.status_code, caught.value.error_code) == (404, "BackupService.6200")


def test_backups_are_scoped_to_their_project(emulator: Emulator, cbr: Factory) -> None:
    with pytest.raises(exceptions.ClientRequestException):
        cbr("cn-south-1").show_backup(
            ShowBackupRequest(backup_id=emulator.backup_id("web-prod-2026-11-01"))
        )


def test_vault_show_and_capabilities(emulator: Emulator, cbr: Factory) -> None:
    vault = cbr("cn-south-1").show_vault(
        ShowVaultRequest(vault_id=emulator.vault_id("cn-south-1", "web-dr"))
    )
    assert vault.vault.billing.protect_type == "replication"
    regions = cbr().show_replication_capabilities(ShowReplicationCapabilitiesRequest()).regions
    assert [(r.name, r.replication_destinations) for r in regions] == [
        ("cn-north-4", ["cn-south-1", "ap-southeast-1"])
    ]


# ----- replication ---------------------------------------------------------------------------


def test_replication_progresses_with_the_manual_clock(emulator: Emulator, cbr: Factory) -> None:
    client = cbr()
    answer = replicate(emulator, client, "web-prod-2026-11-01", name="web-copy")
    record_id = answer.replication.replication_record_id
    assert answer.replication.source_region == "cn-north-4"

    def status() -> str:
        found = [
            r for r in records(client, emulator, "web-prod-2026-11-01") if r["id"] == record_id
        ]
        return str(found[0]["status"])

    assert status() == "waiting_replicate"
    emulator.advance(10)
    assert status() == "replicating"
    emulator.advance(60)
    assert status() == "success"
    record = records(client, emulator, "web-prod-2026-11-01")[-1]
    replica = (
        cbr("cn-south-1")
        .show_backup(ShowBackupRequest(backup_id=record["destination_backup_id"]))
        .backup
    )
    assert (replica.image_type, replica.name, replica.resource_size) == (
        "replication",
        "web-copy",
        40,
    )
    assert replica.vault_id == emulator.vault_id("cn-south-1", "web-dr")
    assert replica.extend_info.contain_system_disk is True
    assert [child.extend_info.bootable for child in replica.children] == [True, False]


def test_second_replication_to_same_region_is_1009(emulator: Emulator, cbr: Factory) -> None:
    client = cbr()
    replicate(emulator, client, "web-prod-2026-11-02")
    with pytest.raises(exceptions.ClientRequestException) as caught:
        replicate(emulator, client, "web-prod-2026-11-02", project="cn-south-1_ops", vault="ops-dr")
    assert caught.value.error_code == "BackupService.1009"
    # Another destination region is a separate replica.
    replicate(emulator, client, "web-prod-2026-11-02", region="ap-southeast-1", vault="apac-dr")


def test_replica_deleted_allows_manual_retry(emulator: Emulator, cbr: Factory) -> None:
    client = cbr()
    with pytest.raises(exceptions.ClientRequestException) as caught:
        replicate(emulator, client, "web-prod-2026-10-30-replicated")
    assert caught.value.error_code == "BackupService.1009"
    assert emulator.delete_backup(emulator.backup_id("web-prod-2026-10-30-replicated-copy"))
    replicate(emulator, client, "web-prod-2026-10-30-replicated")


@pytest.mark.parametrize(
    ("backup", "overrides", "code"),
    [
        ("web-prod-2026-11-07-replica", {}, "BackupService.1002"),
        ("web-prod-2026-11-07-evs", {}, "BackupService.1003"),
        ("web-prod-2026-11-06-creating", {}, "BackupService.9900"),
        ("web-prod-2026-11-06-error", {}, "BackupService.9900"),
        ("web-prod-2026-11-05-data-only", {}, "BackupService.6122"),
        ("web-prod-2026-10-29-replicating", {}, "BackupService.1009"),
        ("web-prod-2026-11-01", {"region": "af-south-1", "vault": "af-dr"}, "BackupService.1005"),
        ("web-prod-2026-11-01", {"vault": "not-a-replication-vault"}, "BackupService.6119"),
        ("web-prod-2026-11-01", {"destination_vault_id": "missing"}, "BackupService.6120"),
        ("web-prod-2026-11-01", {"destination_project_id": "missing"}, "BackupService.1011"),
        ("web-prod-2026-11-01", {"name": "bad name!"}, "BackupService.9900"),
        ("web-prod-2026-11-01", {"description": "<script>"}, "BackupService.9900"),
    ],
)
def test_replicate_refusals_use_real_error_codes(
    emulator: Emulator, cbr: Factory, backup: str, overrides: dict[str, Any], code: str
) -> None:
    with pytest.raises(exceptions.ClientRequestException) as caught:
        replicate(emulator, cbr(), backup, **overrides)
    assert (caught.value.status_code, caught.value.error_code) == (400, code)


@pytest.mark.parametrize("backup", ["web-prod-2026-11-04-child-only", "web-prod-2026-10-31-failed"])
def test_child_only_and_failed_backups_can_be_replicated(
    emulator: Emulator, cbr: Factory, backup: str
) -> None:
    assert replicate(emulator, cbr(), backup).replication.replication_record_id


def test_fail_rate_ends_records_in_fail() -> None:
    scenario = {**_demo_dict(), "settings": {"fail_rate": 1.0}}
    with Emulator(scenario, clock="manual") as emu:
        client = make_cbr(emu, "cn-north-4")
        replicate(emu, client, "db-prod-2026-11-01")
        emu.advance(100)
        record = records(client, emu, "db-prod-2026-11-01")[0]
        assert record["status"] == "fail"
        assert record["extra_info"]["fail_code"] == "BackupService.1006"


def _demo_dict() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    return loaded


def test_vault_replication_once_per_region(emulator: Emulator, cbr: Factory) -> None:
    client = cbr()

    def replicate_vault(vault: str, region: str, dest_vault: str) -> Any:
        param = CheckpointReplicateParam(
            vault_id=emulator.vault_id("cn-north-4", vault),
            destination_project_id=emulator.project_id(region),
            destination_region=region,
            destination_vault_id=emulator.vault_id(region, dest_vault),
        )
        request = CopyCheckpointRequest(body=CheckpointReplicateReq(replicate=param))
        return client.copy_checkpoint(request)

    answer = replicate_vault("web-prod", "cn-south-1", "web-dr")
    started = {
        emulator.world.state["backups"][b.backup_id]["name"] for b in answer.replication.backups
    }
    assert started == {
        "web-prod-2026-11-01",
        "web-prod-2026-11-02",
        "web-prod-2026-11-03",
        "web-prod-2026-11-04-child-only",
        "web-prod-2026-10-31-failed",
    }
    # While its replications run the vault is "being replicated, try again later" (6130),
    # to any region; once they are done, a second time to the same region is refused for
    # good (no code is documented for that rule: the emulator's 9900 is its choice).
    for region, vault in (("cn-south-1", "web-dr"), ("ap-southeast-1", "apac-dr")):
        with pytest.raises(exceptions.ClientRequestException) as caught:
            replicate_vault("web-prod", region, vault)
        assert caught.value.error_code == "BackupService.6130"
    emulator.advance(3600)
    with pytest.raises(exceptions.ClientRequestException) as caught:
        replicate_vault("web-prod", "cn-south-1", "web-dr")
    assert caught.value.error_code == "BackupService.9900"
    with pytest.raises(exceptions.ClientRequestException) as caught:
        replicate_vault("old-dr", "ap-southeast-1", "apac-dr")
    assert caught.value.error_code == "BackupService.6128"
    assert replicate_vault("web-prod", "ap-southeast-1", "apac-dr").replication.backups


def test_permissive_mode_reports_duplicates() -> None:
    with Emulator(_demo_dict(), clock="manual", permissive=True) as emu:
        client = make_cbr(emu, "cn-north-4")
        replicate(emu, client, "db-prod-2026-11-01")
        replicate(emu, client, "db-prod-2026-11-01")
        replicate(emu, client, "db-prod-2026-11-02")
        emu.advance(100)
        duplicates = emu.duplicates()
        assert [(d["source_backup_id"], len(d["replicas"])) for d in duplicates] == [
            (emu.backup_id("db-prod-2026-11-01"), 2)
        ]


def test_strict_mode_has_no_duplicates(emulator: Emulator, cbr: Factory) -> None:
    replicate(emulator, cbr(), "db-prod-2026-11-01")
    emulator.advance(100)
    assert emulator.duplicates() == []


def test_operation_logs_show_replications(emulator: Emulator, cbr: Factory) -> None:
    client = cbr()
    replicate(emulator, client, "db-prod-2026-11-03")
    emulator.advance(100)
    logs = client.list_op_logs(ListOpLogsRequest(operation_type="replication", status="success"))
    sources = {log.extra_info.replication.source_backup_id for log in logs.operation_logs}
    assert emulator.backup_id("db-prod-2026-11-03") in sources


def test_state_file_persists_replicas_across_instances(tmp_path: Any) -> None:
    state_file = tmp_path / "cloud.json"
    with Emulator(_demo_dict(), state_file=state_file, clock="manual") as first:
        replicate(first, make_cbr(first, "cn-north-4"), "db-prod-2026-11-01")
        first.advance(100)
    with Emulator(_demo_dict(), state_file=state_file, clock="manual") as second:
        client = make_cbr(second, "cn-north-4")
        assert records(client, second, "db-prod-2026-11-01")[0]["status"] == "success"
        with pytest.raises(exceptions.ClientRequestException) as caught:
            replicate(second, client, "db-prod-2026-11-01")
        assert caught.value.error_code == "BackupService.1009"


def test_sdk_sees_reset_as_connection_error_and_throttle_as_429(
    emulator: Emulator, cbr: Factory
) -> None:
    client = cbr()
    emulator.set_faults({"reset_after_rate": 1.0})
    with pytest.raises(exceptions.ConnectionException):
        replicate(emulator, client, "db-prod-2026-11-01")
    emulator.set_faults({"throttle_rate": 1.0})
    with pytest.raises(exceptions.ClientRequestException) as caught:
        replicate(emulator, client, "db-prod-2026-11-02")
    assert (caught.value.status_code, caught.value.error_code) == (429, "APIGW.0308")
    logged = emulator.requests("replicate_backup")
    assert [(entry["fault"], entry["region"]) for entry in logged] == [
        ("reset_after", "cn-north-4"),
        ("throttle", "cn-north-4"),
    ]
    assert logged[0]["body"]["replicate"]["destination_region"] == "cn-south-1"


def test_scenario_records_in_flight_progress_from_start(emulator: Emulator, cbr: Factory) -> None:
    client = cbr()
    assert records(client, emulator, "web-prod-2026-10-29-replicating")[0]["status"] == (
        "replicating"
    )
    emulator.advance(100)
    record = records(client, emulator, "web-prod-2026-10-29-replicating")[0]
    assert record["status"] == "success"
    assert record["destination_backup_id"] in emulator.state()["backups"]


def test_concurrent_duplicate_submissions_yield_one_record(emulator: Emulator) -> None:
    import concurrent.futures

    def submit(_: int) -> str:
        try:
            replicate(emulator, make_cbr(emulator, "cn-north-4"), "db-prod-2026-11-01")
        except exceptions.ClientRequestException as error:
            return str(error.error_code)
        return "ok"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = sorted(pool.map(submit, range(8)))
    assert outcomes == ["BackupService.1009"] * 7 + ["ok"]
