"""The mapping file (TOML): how a 旺店通 stockout becomes a 用友BIP other outbound record; loaded and
validated strictly, errors naming file, key and value (docs/design.md, "The mapping file")."""
from __future__ import annotations

import difflib
import hashlib
import json
import re
import string
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from shared.core.validation import describe, message_of

# BIP's field limits are not published; 64 is the longest code we have seen and the limit
# worker.transform enforces for identifiers taken from WDT, so the two sides agree.
MAX_CODE_LEN = 64
# Free text (memo, remarks, the tenant's text fields) is cut to this: BIP publishes no limit either.
MAX_TEXT_LEN = 255

# Stockout fields a header memo template may use. Only plain text fields: a template must not be
# able to reach numbers, times or lines whose string form is an implementation detail.
MEMO_FIELDS = (
    "stockout_id",
    "order_no",
    "src_order_no",
    "warehouse_no",
    "status",
    "order_type",
    "order_type_name",
    "subtype",
    "stockout_reason",
    "remark",
    "outer_no",
    "operator_name",
    "logistics_no",
    "logistics_code",
    "logistics_name",
)
DEFAULT_MEMO = "{remark}"

# A template that is one of these alone ("{logistics_no}") gives an identifier: never cut, refused
# when longer than MAX_CODE_LEN (a cut number would point at another document). Anything else is text.
IDENTIFIER_FIELDS = frozenset({
    "stockout_id", "order_no", "src_order_no", "warehouse_no", "status", "order_type", "subtype", "outer_no",
    "logistics_no", "logistics_code",
})
# Line fields a [line_fields] template may use (plain text fields of one details_list entry).
LINE_FIELDS = (
    "rec_id", "spec_no", "goods_no", "goods_name", "spec_name", "spec_code", "brand_no", "brand_name", "remark",
    "goods_unit", "batch_no", "batch_remark",
)
LINE_IDENTIFIER_FIELDS = frozenset({"rec_id", "spec_no", "goods_no", "spec_code", "brand_no", "batch_no"})

# BIP fields the transform sets itself, with where to change them instead: a [fields] entry naming
# one would either fight the transform or break exactly-once (resubmitCheckKey, defines!define1).
RESERVED_FIELDS = {
    "resubmitCheckKey": "the idempotency key, derived from stockout_id",
    "_status": "always Insert",
    "othOutRecords": "the lines, one per details_list entry and batch",
    "defines!define1": "the stockout_id, which reconcile looks records up by",
    "defines": "write one field as \"defines!defineN\"",
    "code": "set by [document].send_code",
    "id": "BIP's own",
    "org": "set by [header].org or [warehouses]",
    "accountOrg": "set by [header].accountOrg or [warehouses]",
    "vouchdate": "set by [document].vouchdate_from",
    "bustype": "set by [header].bustype, [bustypes] or [warehouses]",
    "warehouse": "set by [warehouses]",
    "memo": "set by [header].memo",
    "srcBillType": "set by [header].srcBillType",
}
RESERVED_LINE_FIELDS = {
    "_status": "always Insert",
    "product": "set by [material]",
    "productsku": "set by [material].sku_field",
    "product_cName": "the WDT goods_name",
    "qty": "the WDT goods_count",
    "unit": "set by [units]",
    "batchno": "the WDT batch_no",
    "invaliddate": "the WDT expire_date",
    "memo": "the WDT line remark",
    "upcode": "the WDT order_no",
    "sourceautoid": "the WDT rec_id",
}
_BIP_FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(![A-Za-z_][A-Za-z0-9_]*)?$"


class MappingFileError(ValueError):
    """The mapping file cannot be used. `problems` holds one "key: what is wrong" line each."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


# -- field types ----------------------------------------------------------------------------------

def _no_blank(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


# Codes are strings on purpose: BIP ids are 19 digits and must not pass through a TOML integer.
Code = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=MAX_CODE_LEN, strict=True),
    AfterValidator(_no_blank),
]


def _status_code(value: Any) -> str:
    # WDT sends statuses as strings, people write them as numbers; both mean the same filter.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip().isdigit():
        raise ValueError(f"expected a number like 95 or \"95\", got {_show(value)}")
    return str(int(value.strip()))  # "095" and 95 are the same status


StatusCode = Annotated[str, BeforeValidator(_status_code)]

# What WDT documents (docs/apis.md): a filter naming anything else could never match a stockout.
WDT_STATUSES = {"5": "已取消", "50": "待审核", "55": "已审核", "95": "已发货", "110": "已完成", "113": "异常发货"}
WDT_ORDER_TYPES = {
    "2": "调拨出库", "3": "采购退货出库", "4": "盘亏出库", "5": "生产出库", "7": "其他出库", "8": "多发出库",
    "9": "纠错出库", "10": "保修配件出库", "11": "初始化出库", "12": "JIT拣货出库", "13": "委外出库",
}


def _known(allowed: dict[str, str], what: str) -> Any:
    def check(value: str) -> str:
        if value not in allowed:
            known = ", ".join(f"{k} {v}" for k, v in allowed.items())
            raise ValueError(f"not a WDT {what}, got {value} (known: {known})")
        return value

    return AfterValidator(check)


WdtStatus = Annotated[StatusCode, _known(WDT_STATUSES, "stockout status")]
WdtOrderType = Annotated[StatusCode, _known(WDT_ORDER_TYPES, "order type")]


class _Strict(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- sections -------------------------------------------------------------------------------------

class HeaderMap(_Strict):
    org: Code
    accountOrg: Code
    bustype: Code | None  # the default when [bustypes] and [warehouses] do not name one
    memo: str | None = None
    srcBillType: Code | None = None

    @field_validator("memo")
    @classmethod
    def _check_template(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value, MEMO_FIELDS)


def check_template(value: str, allowed: tuple[str, ...]) -> str:
    """`value` if every placeholder is a plain {name} out of `allowed`; a ValueError saying which is not."""
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            raise ValueError(
                f"unknown placeholder {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}; use plain {{name}} with one of: {', '.join(allowed)}"
            )
    return value


def placeholders(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


class Fixed(_Strict):
    """`{ value = "..." }`: sent exactly as written, braces included (no placeholders)."""

    value: Annotated[str, StringConstraints(strict=True, max_length=MAX_TEXT_LEN)]


def _field_name(reserved: dict[str, str], table: str) -> Any:
    def check(name: str) -> str:
        if name in reserved:
            raise ValueError(f"set by stockout-sync itself ({reserved[name]}); choose another BIP field for [{table}]")
        if len(name) > MAX_CODE_LEN or not re.match(_BIP_FIELD_NAME, name):
            raise ValueError('not a BIP field name (letters, digits, _ and at most one !, like "defines!define2")')
        return name

    return AfterValidator(check)


def _field_value(allowed: tuple[str, ...]) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str):
            return check_template(value, allowed)
        if isinstance(value, dict):
            return Fixed.model_validate(value)
        raise ValueError(f'expected a template in quotes or {{ value = "..." }}, got {_show(value)}')

    return BeforeValidator(check)


FieldValue = str | Fixed
HeaderFields = dict[
    Annotated[str, _field_name(RESERVED_FIELDS, "fields")], Annotated[FieldValue, _field_value(MEMO_FIELDS)]
]
LineFields = dict[
    Annotated[str, _field_name(RESERVED_LINE_FIELDS, "line_fields")], Annotated[FieldValue, _field_value(LINE_FIELDS)]
]


def render_field(value: FieldValue, values: dict[str, str], identifiers: frozenset[str]) -> tuple[str, str]:
    """A [fields]/[line_fields] value filled from `values` (the stockout's or line's text fields,
    stripped): (text, "") trimmed and cut to MAX_TEXT_LEN, or (the value whole, its field) when it is
    one identifier alone, which the caller refuses past MAX_CODE_LEN instead of cutting."""
    if isinstance(value, Fixed):
        return value.value.strip()[:MAX_TEXT_LEN], ""
    if is_identifier(value, identifiers):
        source = placeholders(value)[0]
        return values[source], source
    return value.format_map(values).strip()[:MAX_TEXT_LEN], ""


def is_identifier(value: FieldValue, identifiers: frozenset[str]) -> bool:
    """Whether a [fields] value gives an identifier: one identifier placeholder and nothing else."""
    if isinstance(value, Fixed):
        return False
    names = placeholders(value)
    return len(names) == 1 and names[0] in identifiers and value == "{" + names[0] + "}"


# order_type → BIP 交易类型; keys as WDT writes them ("7"), normalised like the filters
Bustypes = dict[WdtOrderType, Code]


class WarehouseMap(_Strict):
    warehouse: Code
    org: Code | None = None
    accountOrg: Code | None = None
    bustype: Code | None = None
    bustypes: Bustypes = Field(default_factory=dict)


class MaterialMap(_Strict):
    field: Literal["spec_no", "goods_no"] = "spec_no"
    sku_field: Literal["spec_no", "goods_no", "spec_code"] | None = None
    codes: dict[Annotated[str, StringConstraints(min_length=1)], Code] = Field(default_factory=dict)
    # "send": a code not in [material.codes] goes to BIP unchanged (BIP refuses one it does not know);
    # "error": [material.codes] is the whole list, and any other code is a dead letter naming it.
    unmapped: Literal["send", "error"] = "send"


class UnitMap(_Strict):
    default: Code | None = None
    # "default" would turn an unmapped 箱 (a box of 12) into PCS and misstate the quantity, so an
    # unmapped unit is an error unless the user opts in.
    unmapped: Literal["error", "default"] = "error"
    codes: dict[str, Code] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _usable(self) -> UnitMap:
        if self.default is None and not self.codes:
            raise ValueError("set units.default or at least one entry in [units.codes]")
        if self.unmapped == "default" and self.default is None:
            raise ValueError('unmapped = "default" needs units.default')
        return self


class FilterMap(_Strict):
    # An empty status list would sync cancelled and unreviewed stockouts too; require an explicit list.
    statuses: list[WdtStatus] = Field(default_factory=lambda: ["95", "110"], min_length=1)
    order_types: list[WdtOrderType] = Field(default_factory=list)


class DocumentMap(_Strict):
    send_code: StrictBool = False
    vouchdate_from: Literal["consign_time", "modified"] = "consign_time"


class Mapping(_Strict):
    header: HeaderMap
    warehouses: dict[Annotated[str, StringConstraints(min_length=1)], WarehouseMap] = Field(min_length=1)
    material: MaterialMap = Field(default_factory=MaterialMap)
    units: UnitMap
    filters: FilterMap = Field(default_factory=FilterMap)
    document: DocumentMap = Field(default_factory=DocumentMap)
    bustypes: Bustypes = Field(default_factory=dict)
    fields: HeaderFields = Field(default_factory=dict)
    line_fields: LineFields = Field(default_factory=dict)

    # The file's name, for messages ("... in [warehouses] of mapping.toml"); not part of the content.
    _source: str = PrivateAttr(default="mapping.toml")

    @property
    def source(self) -> str:
        return self._source

    @model_validator(mode="before")
    @classmethod
    def _bustype_default(cls, data: Any) -> Any:
        # header.bustype is required (nullable, not optional) unless [bustypes] or a warehouse names
        # one: then a missing default is None, and a stockout no entry covers is a dead letter.
        if not isinstance(data, dict) or not isinstance(data.get("header"), dict) or "bustype" in data["header"]:
            return data
        warehouses = data.get("warehouses")
        named = bool(data.get("bustypes")) or (isinstance(warehouses, dict) and any(
            isinstance(w, dict) and (w.get("bustype") or w.get("bustypes")) for w in warehouses.values()
        ))
        return {**data, "header": {**data["header"], "bustype": None}} if named else data

    def header_fields(self, values: dict[str, str]) -> dict[str, str]:
        """The [fields] a stockout's text fields give (empty results left out); identifiers whole."""
        rendered = {name: render_field(v, values, IDENTIFIER_FIELDS)[0] for name, v in self.fields.items()}
        return {name: text for name, text in rendered.items() if text}

    def bustype_for(self, warehouse_no: str, order_type: Any) -> tuple[str | None, str]:
        """The BIP 交易类型 for a stockout and the key that gave it (None and the key to add when none
        does). Precedence: warehouse + type > type > warehouse > header."""
        kind = _normal_code(order_type) or ""
        wh = self.warehouses.get(warehouse_no)
        where = f"warehouses.{json.dumps(warehouse_no, ensure_ascii=False)}"
        if wh is not None and kind in wh.bustypes:
            return wh.bustypes[kind], f'{where}.bustypes."{kind}"'
        if kind in self.bustypes:
            return self.bustypes[kind], f'bustypes."{kind}"'
        if wh is not None and wh.bustype:
            return wh.bustype, f"{where}.bustype"
        if self.header.bustype:
            return self.header.bustype, "header.bustype"
        return None, f'bustypes."{kind}"' if kind else "header.bustype"

    def fingerprint(self) -> str:
        """Hash of the normalised content: equal for equal meaning, whatever the file's layout or name.

        A dead letter records it, so an operator can tell whether a failure happened under the
        mapping that is loaded now.
        """
        canonical = json.dumps(_stable(self.model_dump(mode="json")), sort_keys=True, ensure_ascii=False,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def passes_filters(self, raw: Any) -> tuple[bool, str]:
        """Whether the producer should sync this raw WDT stockout dict; the reason when it should not.

        It decides on the raw strings because it runs before validation. Only what it can read and
        positively exclude is dropped: a stockout it cannot read (not an object, status missing or
        not a scalar) passes, so validation and the transform reject it into the dead-letter queue
        with a reason instead of it vanishing here.
        """
        if not isinstance(raw, dict):
            return True, ""
        ok, reason = self._check("status", raw.get("status"), self.filters.statuses)
        if not ok:
            return ok, reason
        if self.filters.order_types:
            return self._check("order_type", raw.get("order_type"), self.filters.order_types)
        return True, ""

    @staticmethod
    def _check(name: str, value: Any, allowed: list[str]) -> tuple[bool, str]:
        normal = _normal_code(value)
        if normal is None:
            return True, ""
        if normal in allowed:
            return True, ""
        return False, f"{name} {normal} not in [{', '.join(allowed)}]"


def _stable(dump: dict[str, Any]) -> dict[str, Any]:
    """The dump without the keys added after version 1 while they hold their defaults: a file
    written before them keeps its fingerprint, so its dead letters still match the mapping in use."""
    for name in ("bustypes", "fields", "line_fields"):
        if not dump.get(name):
            dump.pop(name, None)
    if dump["material"].get("unmapped") == "send":
        del dump["material"]["unmapped"]
    for wh in dump["warehouses"].values():
        for name in ("bustype", "bustypes"):
            if not wh.get(name):
                wh.pop(name, None)
    return dump


def _normal_code(value: Any) -> str | None:
    """WDT status/order_type as the filter compares it; None when it is unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        return str(int(text)) if text.isdigit() else text
    return None


# -- loading --------------------------------------------------------------------------------------

def load_mapping(path: str | Path) -> Mapping:
    """Read and validate the mapping file; every failure is one `MappingFileError` naming the file."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MappingFileError(
            name,
            [f"file not found (absolute path {Path(path).absolute()}); set MAPPING_FILE or copy mapping.example.toml"],
        ) from None
    except OSError as exc:
        raise MappingFileError(name, [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MappingFileError(name, [f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"]) from None
    mapping = parse_mapping(text, name)
    mapping._source = Path(path).name
    return mapping


def parse_mapping(text: str, name: str = "mapping.toml") -> Mapping:
    """Validate mapping TOML given as text; `name` is what messages call the file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingFileError(name, [f"not valid TOML: {exc}"]) from None
    try:
        mapping = Mapping.model_validate(data)
    except ValidationError as exc:
        raise MappingFileError(name, [_describe(err) for err in exc.errors()]) from None
    mapping._source = Path(name).name
    return mapping


# -- messages -------------------------------------------------------------------------------------

# Tables whose keys are the user's own names (warehouse numbers, codes), quoted in messages as TOML
# would need them; the other keys are ours and stay bare.
_USER_KEYED = {"warehouses", "codes", "bustypes", "fields", "line_fields"}


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    next_is_user_key = False
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
            next_is_user_key = False
            continue
        text = str(part)
        if next_is_user_key:
            out += "." + json.dumps(text, ensure_ascii=False)
            next_is_user_key = False
        else:
            out += ("." if out else "") + text
            next_is_user_key = text in _USER_KEYED
    return out or "(top level)"


def _show(value: Any, limit: int = 60) -> str:
    if isinstance(value, dict):
        return "a table"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the model accepts at `loc` (the table holding the unknown key)."""
    model: Any = Mapping
    user_key_next = False
    for part in loc:
        if user_key_next:
            user_key_next = False
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif getattr(annotation, "__origin__", None) is dict:
            value_type = annotation.__args__[1]
            model = value_type if isinstance(value_type, type) and issubclass(value_type, BaseModel) else None
            user_key_next = True
        else:
            return []
    return list(getattr(model, "model_fields", {}))


def _describe(err: ErrorDetails) -> str:
    loc = tuple(err.get("loc", ()))
    key = _key_path(loc)
    kind = err.get("type", "")
    value = err.get("input")
    if kind == "missing":
        return f"{key}: field required"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = ""
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        if close:
            hint = f"; did you mean {close[0]}?"
        elif allowed:
            hint = f"; allowed here: {', '.join(allowed)}"
        return f"{key}: unknown key (value {_show(value)}){hint}"
    message = message_of(err)
    if kind == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{key}: {message}, got {_show(value)} (write codes in quotes: \"{value}\")"
    if kind == "literal_error" or kind.endswith("_type") or kind.startswith(("string_", "too_", "bool_")):
        return f"{key}: {message}, got {_show(value)}"
    return describe(err, key, None if kind == "value_error" and isinstance(value, dict) else _show(value))
