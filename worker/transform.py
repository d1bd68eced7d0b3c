"""One WDT stockout → one BIP other outbound record (其他出库单), through the mapping file: pure
functions, a `TransformError` naming field, index and value for what the mapping cannot express.
Why: docs/design.md, "The transform"; the field table is in docs/mapping.md."""
from __future__ import annotations

import json
import re
import reprlib
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from shared.bip.idempotency import resubmit_key
from shared.bip.models import OthOutRecord, OthOutRecordLine
from shared.core.errors import MappingError
from shared.core.timeutil import beijing_date
from shared.core.validation import describe, message_of
from shared.mapping.model import (
    DEFAULT_MEMO,
    IDENTIFIER_FIELDS,
    LINE_FIELDS,
    LINE_IDENTIFIER_FIELDS,
    MAX_CODE_LEN,
    MAX_TEXT_LEN,
    MEMO_FIELDS,
    FieldValue,
    Mapping,
    render_field,
)
from shared.wdt.models import Stockout, StockoutDetail, bounded

# BIP's text limits are not published. Identifiers longer than this are refused, never cut: a cut
# code would point at a different (or no) record. Free text is cut to MAX_TEXT_LEN instead, because
# losing the end of a remark is better than losing the record.
MAX_IDENTIFIER_LEN = MAX_CODE_LEN



class TransformError(MappingError):
    """A stockout the mapping cannot turn into a BIP record.

    `field` is the WDT field as a dotted path (`details_list[2].goods_count`), `value` its value as
    text, `mapping_entry` the mapping key that would have to change ("" when the data is at fault).
    They survive pickling (StockoutSyncError keeps `__dict__`) and appear in `to_dict()`.
    """

    def __init__(self, message: str, *, field: str = "", value: Any = None, mapping_entry: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.value = None if value is None else str(value)
        self.mapping_entry = mapping_entry

    def to_dict(self) -> dict:
        data = super().to_dict()
        data.update(field=self.field, value=self.value, mapping_entry=self.mapping_entry)
        return data


# -- validation of the raw dict -------------------------------------------------------------------

def validate_stockout(raw: Any) -> Stockout:
    """The raw WDT dict as a `Stockout`; a `TransformError` listing every bad field otherwise."""
    if not isinstance(raw, dict):
        raise TransformError(
            f"invalid stockout from WDT: expected a JSON object, got {type(raw).__name__} {_show(raw)}",
            field="(stockout)",
            value=_show(raw),
        )
    try:
        return Stockout.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        first = exc.errors()[0]
        ident = raw.get("stockout_id")
        readable = isinstance(ident, (str, int)) and not isinstance(ident, bool) and str(ident).strip()
        who = f"stockout {str(ident)!r}" if readable else "stockout"
        raise TransformError(
            f"invalid {who} from WDT: " + "; ".join(text for _, text in problems),
            field=problems[0][0],
            value=_show(first.get("input")),
        ) from None


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(stockout)"


def _describe(err: ErrorDetails) -> tuple[str, str]:
    path = _path(tuple(err.get("loc", ())))
    kind = err.get("type", "")
    value = err.get("input")
    message = message_of(err)
    if kind == "missing":
        return path, f"{path}: missing"
    if kind in ("string_too_short", "too_short") and isinstance(value, str):
        return path, f"{path}: empty"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"{path}: expected a JSON object, got {_show(value)}"
    if kind == "string_pattern_mismatch":
        return path, f"{path}: must not be blank or contain spaces, got {_show(value)}"
    if kind == "string_too_long":
        return path, f"{path}: longer than {err.get('ctx', {}).get('max_length', '?')} characters, got {_show(value)}"
    # our own validators already quote the value
    return path, describe(err, path, None if isinstance(value, str) and repr(value) in message else _show(value))


def _show(value: Any, limit: int = 80) -> str:
    # the type is worth saying for containers: "list ['2']" reads better than "['2']"
    if isinstance(value, (str, int)):  # never the whole of an untrusted value, not even for a moment
        return bounded(value, limit // 2)
    text = f"{type(value).__name__} {_REPR.repr(value)}" if isinstance(value, (dict, list)) else _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


# -- the transform --------------------------------------------------------------------------------

def to_bip(stockout: Stockout, mapping: Mapping, *, generation: int = 0, account: str = "") -> OthOutRecord:
    """The BIP record for one validated stockout, or a `TransformError` saying what is missing.

    `generation` > 0 only for a record re-created after it was deleted in BIP; `account` names the
    WDT account in the key (both: shared.bip.idempotency.resubmit_key)."""
    where = mapping.source
    _check_filters(stockout, mapping)

    if not stockout.warehouse_no.strip():
        raise TransformError(
            "warehouse_no is empty: the stockout names no warehouse", field="warehouse_no", value=""
        )
    entry = mapping.warehouses.get(stockout.warehouse_no)
    if entry is None:
        known = ", ".join(list(mapping.warehouses)[:10])
        raise TransformError(
            f"warehouse_no {stockout.warehouse_no!r} has no entry in [warehouses] of {where} "
            f"(add [warehouses.\"{stockout.warehouse_no}\"]; mapped: {known})",
            field="warehouse_no",
            value=stockout.warehouse_no,
            mapping_entry=f'warehouses."{stockout.warehouse_no}"',
        )

    if not stockout.details_list:
        raise TransformError(
            "details_list is empty: a stockout without lines cannot become a BIP record",
            field="details_list",
            value="[]",
        )

    code = None
    if mapping.document.send_code:
        code = _identifier(stockout.order_no, "order_no", required=True, why="[document].send_code = true")

    fields = {
        "row_status": "Insert",
        "org": entry.org or mapping.header.org,
        "accountOrg": entry.accountOrg or mapping.header.accountOrg,
        "bustype": _bustype(stockout, mapping),
        "warehouse": entry.warehouse,
        "vouchdate": _vouchdate(stockout, mapping),
        "resubmitCheckKey": resubmit_key(stockout.stockout_id, generation, account),
        "code": code,
        "memo": _memo(stockout, mapping),
        "srcBillType": mapping.header.srcBillType,
        # define1 ties the BIP record back to its stockout: reconcile and the sandbox look it up.
        "define1": _identifier(stockout.stockout_id, "stockout_id", required=True),
        "othOutRecords": [
            line for i, d in enumerate(stockout.details_list) for line in _lines(i, d, stockout, mapping)
        ],
        "custom": _header_fields(stockout, mapping),
    }
    try:
        return OthOutRecord(**fields)
    except ValidationError as exc:  # a gap between our checks and BIP's model: still permanent
        detail = "; ".join(_describe(e)[1] for e in exc.errors())
        raise TransformError(f"the BIP record would be invalid: {detail}", field="(record)") from None


def locate_rejection(api_message: str, raw: Any, mapping: Mapping) -> str:
    """Where the values BIP names in a refusal (`物料[SKU-GHOST]不存在`) came from in the stockout,
    so the dead letter names the WDT field to fix: "SKU-GHOST = details_list[1].spec_no"."""
    try:
        stockout = validate_stockout(raw)
    except TransformError:
        return ""
    named = re.findall(r"\[([^\[\]]+)\]", api_message or "")
    if not named:
        return ""
    sources: dict[str, str] = {}
    for i, d in enumerate(stockout.details_list):
        code = str(getattr(d, mapping.material.field) or "").strip()
        sources.setdefault(mapping.material.codes.get(code, code), f"details_list[{i}].{mapping.material.field}")
        unit = mapping.units.codes.get(d.goods_unit.strip(), d.goods_unit.strip())
        sources.setdefault(unit, f"details_list[{i}].goods_unit")
        if d.batch_no.strip():
            sources.setdefault(d.batch_no.strip(), f"details_list[{i}].batch_no")
    entry = mapping.warehouses.get(stockout.warehouse_no)
    if entry is not None:
        sources.setdefault(entry.warehouse, f'warehouse_no via [warehouses."{stockout.warehouse_no}"]')
        for name in ("org", "accountOrg"):
            value = getattr(entry, name) or getattr(mapping.header, name)
            sources.setdefault(value, f'[warehouses."{stockout.warehouse_no}"].{name} or [header].{name}')
    bustype, key = mapping.bustype_for(stockout.warehouse_no, stockout.order_type)
    if bustype is not None:
        sources.setdefault(bustype, f"order_type {stockout.order_type or '(empty)'} via [{key}]")
    found = [f"{value} = {sources[value]}" for value in named if value in sources]
    return "; ".join(found)


def preview(raw: Any, mapping: Mapping) -> dict[str, Any]:
    """The BIP save payload's `data` for a raw WDT stockout (what the `preview` command prints)."""
    return to_bip(validate_stockout(raw), mapping).wire()


def _check_filters(stockout: Stockout, mapping: Mapping) -> None:
    # The producer filters already; this catches what it let through because it could not read it
    # (an empty status) and a dead letter requeued after the filters were narrowed.
    checks = [("status", stockout.status, mapping.filters.statuses, "statuses")]
    if mapping.filters.order_types:
        checks.append(("order_type", stockout.order_type, mapping.filters.order_types, "order_types"))
    for name, value, allowed, key in checks:
        text = value.strip()
        normal = str(int(text)) if text.isdigit() else text
        if normal in allowed:
            continue
        shown = normal or "(empty)"
        raise TransformError(
            f"{name} {shown} not in [{', '.join(allowed)}] ([filters].{key} in {mapping.source}): "
            "this stockout is not one to sync",
            field=name,
            value=value,
            mapping_entry=f"filters.{key}",
        )


def _vouchdate(stockout: Stockout, mapping: Mapping) -> str:
    # No fallback from consign_time to modified: a shipped stockout without a ship time is damaged
    # data, and dating the record by its last edit would put it in the wrong period silently.
    name = mapping.document.vouchdate_from
    value = getattr(stockout, name)
    if value is None:
        shown = "'0000-00-00 00:00:00'" if name in stockout.model_fields_set else "missing"
        raise TransformError(
            f"{name} is {shown}: status {stockout.status or '(empty)'} stockout has no {name} "
            f"for the BIP vouchdate ([document].vouchdate_from = \"{name}\" in {mapping.source})",
            field=name,
            value=shown.strip("'"),
            mapping_entry="document.vouchdate_from",
        )
    return beijing_date(value).isoformat()


def _memo(stockout: Stockout, mapping: Mapping) -> str | None:
    template = mapping.header.memo if mapping.header.memo is not None else DEFAULT_MEMO
    values = {name: str(getattr(stockout, name, "") or "").strip() for name in MEMO_FIELDS}
    return _text(template.format_map(values))


def _bustype(stockout: Stockout, mapping: Mapping) -> str:
    bustype, key = mapping.bustype_for(stockout.warehouse_no, stockout.order_type)
    if bustype is not None:
        return bustype
    kind = stockout.order_type.strip()
    name = f" ({stockout.order_type_name.strip()[:40]})" if stockout.order_type_name.strip() else ""
    raise TransformError(
        f"order_type {kind or '(empty)'}{name} has no bustype in {mapping.source}: no entry in [bustypes] "
        f"and no header.bustype default (add [{key.split('.')[0]}] {key.partition('.')[2] or 'bustype'} = "
        "\"<BIP 交易类型 code>\")",
        field="order_type",
        value=kind,
        mapping_entry=key,
    )


def _header_fields(stockout: Stockout, mapping: Mapping) -> dict[str, str]:
    values = {name: str(getattr(stockout, name, "") or "").strip() for name in MEMO_FIELDS}
    return _custom(mapping.fields, values, IDENTIFIER_FIELDS, "", "fields")


def _line_fields(at: str, d: StockoutDetail, mapping: Mapping) -> dict[str, str]:
    values = {name: str(getattr(d, name, "") or "").strip() for name in LINE_FIELDS}
    return _custom(mapping.line_fields, values, LINE_IDENTIFIER_FIELDS, f"{at}.", "line_fields")


def _custom(fields: dict[str, FieldValue], values: dict[str, str], identifiers: frozenset[str], at: str,
            table: str) -> dict[str, str]:
    """The tenant's own BIP fields, filled from the stockout (or line): an identifier alone is never
    cut and refused past MAX_IDENTIFIER_LEN; text is trimmed and cut; an empty result is not sent."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        text, source = render_field(value, values, identifiers)
        if source and len(text) > MAX_IDENTIFIER_LEN:
            raise TransformError(
                f"{at}{source} is {len(text)} characters, longer than the {MAX_IDENTIFIER_LEN} allowed for an "
                f"identifier ([{table}].\"{name}\" sends it; identifiers are never cut): {text[:40]!r}…",
                field=f"{at}{source}",
                value=text[:MAX_IDENTIFIER_LEN] + "…",
            )
        if text:
            out[name] = text
    return out


def _material(at: str, code: str, mapping: Mapping) -> str:
    material = mapping.material
    if code in material.codes:
        return material.codes[code]
    if material.unmapped == "send":
        return code
    raise TransformError(
        f"{at}.{material.field} {code[:MAX_IDENTIFIER_LEN]!r} has no entry in [material.codes] of {mapping.source} "
        f'(material.unmapped = "error"); add "{code[:MAX_IDENTIFIER_LEN]}" = "<BIP material code>"',
        field=f"{at}.{material.field}",
        value=code[:MAX_IDENTIFIER_LEN],
        mapping_entry=f"material.codes.{_quoted(code[:MAX_IDENTIFIER_LEN])}",
    )


def _quoted(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def _lines(i: int, d: StockoutDetail, stockout: Stockout, mapping: Mapping) -> list[OthOutRecordLine]:
    """One BIP line per batch: a WDT line picked from several batches (its position_list says how
    much of each) becomes several BIP lines, since one BIP line carries one batch."""
    at = f"details_list[{i}]"
    material = mapping.material
    source_code = str(getattr(d, material.field) or "").strip()
    if not source_code:
        raise TransformError(
            f"{at}.{material.field} is empty: no material code for BIP ([material].field = "
            f"\"{material.field}\" in {mapping.source})",
            field=f"{at}.{material.field}",
            value="",
            mapping_entry="material.field",
        )
    product = _material(at, source_code, mapping)
    _identifier(product, f"{at}.{material.field}", required=True)

    sku = None
    if material.sku_field:
        sku = _identifier(str(getattr(d, material.sku_field) or "").strip(), f"{at}.{material.sku_field}") or None

    common = {
        "row_status": "Insert",
        "product": product,
        "productsku": sku,
        "product_cName": _text(d.goods_name),
        "unit": _unit(at, d.goods_unit, mapping),
        "memo": _text(d.remark),
        "upcode": _identifier(stockout.order_no.strip(), "order_no") or None,
        "sourceautoid": _identifier(d.rec_id.strip(), f"{at}.rec_id") or None,
        "custom": _line_fields(at, d, mapping),
    }
    qty = _qty(at, d.goods_count)
    return [
        OthOutRecordLine(
            **common,
            qty=batch_qty,
            batchno=_identifier(batch, f"{at}.batch_no") or None,
            invaliddate=beijing_date(expiry).isoformat() if expiry else None,
        )
        for batch, batch_qty, expiry in _batches(at, d, qty)
    ]


def _batches(at: str, d: StockoutDetail, qty: Decimal) -> list[tuple[str, Decimal, datetime | None]]:
    """(batch, quantity, expiry) for each batch the line ships; the line's own when it has one."""
    picked: dict[str, Decimal] = {}
    expiry: dict[str, datetime | None] = {}
    for p in d.position_list:
        batch = p.batch_no.strip()
        if batch:
            picked[batch] = picked.get(batch, Decimal(0)) + (p.position_goods_count or Decimal(0))
            expiry.setdefault(batch, p.expire_date)
    if len(picked) <= 1:
        return [(d.batch_no.strip(), qty, d.expire_date)]
    total = sum(picked.values())
    if total != qty or any(v <= 0 for v in picked.values()):
        shown = ", ".join(f"{b}: {v}" for b, v in picked.items())
        raise TransformError(
            f"{at}.position_list ships batches {shown}, which do not add up to goods_count {qty}: "
            "the quantity of each batch is unknown",
            field=f"{at}.position_list",
            value=shown,
        )
    return [(batch, batch_qty, expiry[batch] or d.expire_date) for batch, batch_qty in picked.items()]


def _qty(at: str, value: Decimal | None) -> Decimal:
    if value is None:
        raise TransformError(
            f"{at}.goods_count is missing or empty: a line needs a quantity", field=f"{at}.goods_count", value=""
        )
    if value <= 0:
        raise TransformError(
            f"{at}.goods_count is {value}: a quantity must be greater than zero",
            field=f"{at}.goods_count",
            value=value,
        )
    return value


def _unit(at: str, goods_unit: str, mapping: Mapping) -> str:
    units = mapping.units
    name = goods_unit.strip()
    if not name:
        if units.default is None:
            raise TransformError(
                f"{at}.goods_unit is empty and [units] has no default in {mapping.source}",
                field=f"{at}.goods_unit",
                value="",
                mapping_entry="units.default",
            )
        return units.default
    if name in units.codes:
        return units.codes[name]
    if units.unmapped == "default" and units.default is not None:
        return units.default
    hint = "and [units] has no default" if units.default is None else '(units.unmapped = "error")'
    raise TransformError(
        f"{at}.goods_unit {name!r} has no entry in [units.codes] of {mapping.source} {hint}; "
        f'add "{name}" = "<BIP unit code>"',
        field=f"{at}.goods_unit",
        value=name,
        mapping_entry=f'units.codes."{name}"',
    )


def _identifier(value: str, field: str, *, required: bool = False, why: str = "") -> str:
    if required and not value:
        reason = f" but {why} needs it" if why else ""
        raise TransformError(f"{field} is empty{reason}", field=field, value="")
    if len(value) > MAX_IDENTIFIER_LEN:
        raise TransformError(
            f"{field} is {len(value)} characters, longer than the {MAX_IDENTIFIER_LEN} allowed for an "
            f"identifier (identifiers are never cut): {value[:40]!r}…",
            field=field,
            value=value,
        )
    return value


def _text(value: str) -> str | None:
    value = (value or "").strip()
    return value[:MAX_TEXT_LEN] if value else None
