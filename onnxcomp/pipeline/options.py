"""Pass options from text: ``-p name:key=value,key=[a,b]`` to a typed options dataclass.

Values are coerced by the option's declared type (bool, int, float, str, Literal choices,
unions with None, tuples for lists); unknown names and bad values are `UsageError`s that
list what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from onnxcomp.errors import UsageError
from onnxcomp.pipeline.pass_api import PassOptions

if TYPE_CHECKING:
    from onnxcomp.pipeline.pass_api import Pass


def option_fields(options_cls: type[PassOptions]) -> list[dataclasses.Field]:
    """The public fields of an options dataclass."""
    return [f for f in dataclasses.fields(options_cls) if not f.name.startswith("_")]


def _type_hints(options_cls: type[PassOptions]) -> dict[str, Any]:
    return typing.get_type_hints(options_cls)


def type_name(tp: Any) -> str:
    """Human-readable type for ``onnxcomp passes``."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        return f"list[{type_name(args[0])}]" if args else "list"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: str, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and value.lower() in ("none", "null", ""):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if str(c) == value:
                return c
        raise UsageError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if origin is tuple:
        inner = get_args(tp)[0] if get_args(tp) else str
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        items = [v.strip() for v in text.split(",") if v.strip()] if text else []
        return tuple(_coerce(v, inner, where) for v in items)
    if tp is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        return value
    raise UsageError(f"{where}: options of type {type_name(tp)} cannot be set from text")


def make_options(pass_cls: type[Pass], values: dict[str, Any]) -> PassOptions:
    """Build ``pass_cls.Options`` from strings (CLI) or typed values (API).

    Raises:
        UsageError: Unknown option names (listing the known ones) or bad values.
    """
    hints = _type_hints(pass_cls.Options)
    known = {f.name for f in option_fields(pass_cls.Options)}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        k = key.replace("-", "_")
        if k not in known:
            listing = ", ".join(sorted(known)) or "(none)"
            raise UsageError(f"pass '{pass_cls.name}' has no option {key!r}; its options: {listing}")
        where = f"{pass_cls.name}:{key}"
        kwargs[k] = _coerce(raw, hints[k], where) if isinstance(raw, str) else _tuple_if_list(raw)
    try:
        return pass_cls.Options(**kwargs)
    except UsageError as e:
        raise UsageError(f"pass '{pass_cls.name}': {e}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"pass '{pass_cls.name}': {e}") from None


def _tuple_if_list(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Parse ``name:key=value,key=[a,b]`` into a name and raw option strings.

    Commas inside ``[...]`` belong to list values, so node names with dots or slashes
    (``/layer1/conv/Conv``) need no quoting beyond the shell's.
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    opts: dict[str, str] = {}
    if rest.strip():
        parts, depth, cur = [], 0, []
        for ch in rest:
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append("".join(cur))
                cur = []
            else:
                cur.append(ch)
        parts.append("".join(cur))
        for part in parts:
            if not part.strip():
                continue
            if "=" not in part:
                raise UsageError(f"bad pass option {part!r} in {spec!r}: expected key=value")
            k, _, v = part.partition("=")
            opts[k.strip()] = v.strip()
    return name, opts
