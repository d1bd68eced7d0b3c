"""The mapping file (TOML): how a 旺店通 stockout becomes a 用友BIP other outbound record; loaded and
validated strictly, errors naming file, key and value (docs/design.md, "The mapping file")."""
from __future__ import annotations

import difflib
import hashlib
import json
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

# BIP's field limits are not published; 64 is the longest code we have seen and the limit
# worker.transform enforces for identifiers taken from WDT, so the two sides agree.
MAX_CODE_LEN = 64

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


class _Strict(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- sections -------------------------------------------------------------------------------------

class HeaderMap(_Strict):
    org: Code
    accountOrg: Code
    bustype: Code
    memo: str | None = None
    srcBillType: Code | None = None

    @field_validator("memo")
    @classmethod
    def _check_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in MEMO_FIELDS or spec or conversion:
                raise ValueError(
                    f"unknown placeholder {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}; use plain {{name}} with one of: {', '.join(MEMO_FIELDS)}"
                )
        return value


class WarehouseMap(_Strict):
    warehouse: Code
    org: Code | None = None
    accountOrg: Code | None = None


class MaterialMap(_Strict):
    field: Literal["spec_no", "goods_no"] = "spec_no"
    sku_field: Literal["spec_no", "goods_no", "spec_code"] | None = None
    codes: dict[Annotated[str, StringConstraints(min_length=1)], Code] = Field(default_factory=dict)


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
    statuses: list[StatusCode] = Field(default_factory=lambda: ["95", "110"], min_length=1)
    order_types: list[StatusCode] = Field(default_factory=list)


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

    # The file's name, for messages ("... in [warehouses] of mapping.toml"); not part of the content.
    _source: str = PrivateAttr(default="mapping.toml")

    @property
    def source(self) -> str:
        return self._source

    def fingerprint(self) -> str:
        """Hash of the normalised content: equal for equal meaning, whatever the file's layout or name.

        A dead letter records it, so an operator can tell whether a failure happened under the
        mapping that is loaded now.
        """
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
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
_USER_KEYED = {"warehouses", "codes"}


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
    message = str(err.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    if kind == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{key}: {message}, got {_show(value)} (write codes in quotes: \"{value}\")"
    if kind == "literal_error" or kind.endswith("_type") or kind.startswith(("string_", "too_", "bool_")):
        return f"{key}: {message}, got {_show(value)}"
    if "got" in message:
        return f"{key}: {message}"
    if kind == "value_error" and isinstance(value, dict):
        return f"{key}: {message}"
    return f"{key}: {message}, got {_show(value)}"
