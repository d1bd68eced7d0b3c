"""The other outbound record (其他出库单) as `/yonbip/scm/othoutrecord/single/save` takes it: BIP's own
field names as aliases, Decimal quantities sent as strings (docs/design.md, "BIP's record model")."""
from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

WireDecimal = Annotated[Decimal, PlainSerializer(lambda v: format(v, "f"), return_type=str)]


class _BipModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    # The tenant's own fields ([fields], [line_fields] of the mapping): BIP names, text values, sent
    # beside ours. The mapping refuses names of fields set here, so they never overwrite one.
    custom: dict[str, str] = Field(default_factory=dict, exclude=True)

    def wire(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json", by_alias=True, exclude_none=True), **self.custom}


class OthOutRecordLine(_BipModel):
    row_status: Literal["Insert", "Update", "Delete"] = Field("Insert", alias="_status")
    status: str | None = None  # listed in the field table as othOutRecords.status; BIP reads _status
    product: str = Field(min_length=1)
    product_cName: str | None = None
    productsku: str | None = None
    qty: WireDecimal
    unit: str = Field(min_length=1)
    subQty: WireDecimal | None = None
    invExchRate: WireDecimal | None = None
    unitExchangeType: Literal[0, 1] | None = None
    stockUnitId: str | None = None
    contactsQuantity: WireDecimal | None = None
    contactsPieces: WireDecimal | None = None
    batchno: str | None = None
    invaliddate: str | None = None  # yyyy-MM-dd
    producedate: str | None = None  # yyyy-MM-dd
    memo: str | None = None
    source: str | None = None
    sourceid: str | None = None
    sourceautoid: str | None = None
    upcode: str | None = None
    makeRuleCode: str | None = None
    autoCalcCost: bool | None = None


class OthOutRecord(_BipModel):
    row_status: Literal["Insert", "Update"] = Field("Insert", alias="_status")
    resubmitCheckKey: str = Field(min_length=1, max_length=32)
    code: str | None = None
    org: str = Field(min_length=1)
    accountOrg: str = Field(min_length=1)
    vouchdate: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    bustype: str = Field(min_length=1)
    warehouse: str = Field(min_length=1)
    memo: str | None = None
    srcBillType: str | None = None
    define1: str | None = Field(None, alias="defines!define1")
    othOutRecords: list[OthOutRecordLine] = Field(min_length=1)

    def wire(self) -> dict[str, Any]:
        return {**super().wire(), "othOutRecords": [line.wire() for line in self.othOutRecords]}


class SaveResult(BaseModel):
    """What BIP answered to a save: its id (kept as a string, 19 digits) and document code."""

    model_config = ConfigDict(extra="allow")

    id: str = ""
    code: str = ""
    replayed: bool = False  # BIP answered "duplicate submission": saved before, by an earlier attempt


DEFINE1 = "defines!define1"  # our stockout_id on every record we save (worker/transform.py)


def define1_of(row: dict[str, Any]) -> str:
    """The stockout id a BIP row names, flat (`defines!define1`) or nested (`defines.define1`)."""
    value = row.get(DEFINE1)
    if value in (None, "") and isinstance(row.get("defines"), dict):
        value = row["defines"].get("define1")
    return "" if value is None else str(value)
