"""The vault bindings: one row for each (source vault, destination region), kept for good."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from daemon.adapters.ledger.base import SqlBase, in_chunks
from daemon.adapters.ledger.schema import BindingRow
from daemon.core.errors import LedgerError
from daemon.core.model import VaultBinding

# A binding and its row have the same fields.
_BINDING_FIELDS = tuple(field.name for field in dataclasses.fields(VaultBinding))


def _binding_row(binding: VaultBinding) -> BindingRow:
    return BindingRow(**{name: getattr(binding, name) for name in _BINDING_FIELDS})


def _binding_from_row(row: BindingRow) -> VaultBinding:
    assert row.created_at is not None
    return VaultBinding(**{name: getattr(row, name) for name in _BINDING_FIELDS})


class BindingStore(SqlBase):
    """The vault bindings of the ``Ledger`` port."""

    # -- vault bindings ------------------------------------------------------------------------
    def get_binding(self, source_vault_id: str, destination_region: str) -> VaultBinding | None:
        return self.get_bindings(destination_region, [source_vault_id]).get(source_vault_id)

    def get_bindings(
        self, destination_region: str, source_vault_ids: Collection[str]
    ) -> dict[str, VaultBinding]:
        found: dict[str, VaultBinding] = {}
        with self._session() as session:
            for chunk in in_chunks(list(source_vault_ids)):
                rows = session.exec(
                    select(BindingRow).where(
                        BindingRow.destination_region == destination_region,
                        col(BindingRow.source_vault_id).in_(chunk),
                    )
                )
                found.update((row.source_vault_id, _binding_from_row(row)) for row in rows)
        return found

    def add_binding(self, binding: VaultBinding) -> VaultBinding:
        row = _binding_row(binding)
        try:
            with self._session() as session:
                session.add(row)
            return _binding_from_row(row)
        except IntegrityError:
            existing = self.get_binding(binding.source_vault_id, binding.destination_region)
            if existing is None:  # pragma: no cover - a binding is never deleted
                raise LedgerError("ledger: vault binding vanished after a conflict") from None
            return existing

    def add_bindings(self, bindings: Sequence[VaultBinding]) -> list[VaultBinding]:
        if not bindings:
            return []
        rows = [_binding_row(binding) for binding in bindings]
        try:
            with self._session() as session:
                session.add_all(rows)
        except IntegrityError:
            # Another process added one of them meanwhile (the whole insert was rolled back):
            # one at a time, so that each of its bindings wins.
            return [self.add_binding(binding) for binding in bindings]
        return [_binding_from_row(row) for row in rows]

    def mark_binding_bound(self, source_vault_id: str, destination_region: str) -> None:
        with self._session() as session:
            row = session.exec(
                select(BindingRow).where(
                    BindingRow.source_vault_id == source_vault_id,
                    BindingRow.destination_region == destination_region,
                )
            ).first()
            if row is not None and row.state != "bound":
                row.state = "bound"
                session.add(row)

    def withdraw_binding_intent(self, source_vault_id: str, destination_region: str) -> None:
        with self._session() as session:
            row = session.exec(
                select(BindingRow).where(
                    BindingRow.source_vault_id == source_vault_id,
                    BindingRow.destination_region == destination_region,
                    BindingRow.state == "intent",
                )
            ).first()
            if row is not None:
                session.delete(row)

    def list_bindings(self) -> list[VaultBinding]:
        with self._session() as session:
            rows = session.exec(select(BindingRow).order_by(col(BindingRow.id)))
            return [_binding_from_row(row) for row in rows]
