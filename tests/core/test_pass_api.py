"""The pass API: registration rules and option parsing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from onnxcomp import Pass, PassOptions, PassResult, register_pass
from onnxcomp.errors import UsageError
from onnxcomp.pipeline.registry import describe_pass, get_pass, instantiate, isolated_registry
from onnxcomp.pipeline.options import make_options, split_spec


@dataclass(frozen=True, kw_only=True)
class _Opts(PassOptions):
    ratio: float = 0.5
    count: int = 3
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ()
    limit: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise UsageError(f"ratio must be in [0, 1], got {self.ratio}")


def _make_pass(name: str = "test-opts-pass"):
    @register_pass(name)
    class _P(Pass):
        """A pass for option tests."""

        Options = _Opts

        def run(self, graph, ctx):
            return PassResult(modified=False)

    return _P


def test_register_and_describe() -> None:
    with isolated_registry():
        cls = _make_pass()
        assert get_pass("test-opts-pass") is cls
        d = describe_pass(cls)
        assert d["summary"] == "A pass for option tests."
        types = {o["name"]: (o["type"], o["default"]) for o in d["options"]}
        assert types["ratio"] == ("float", 0.5)
        assert types["mode"] == ("'a' | 'b'", "a")
        assert types["names"] == ("list[str]", [])
    with pytest.raises(UsageError, match="unknown pass"):
        get_pass("test-opts-pass")


def test_duplicate_name_is_an_error() -> None:
    with isolated_registry():
        _make_pass("dup-pass")
        with pytest.raises(UsageError, match="already registered"):
            _make_pass("dup-pass")


def test_builtin_name_cannot_be_taken() -> None:
    with isolated_registry(), pytest.raises(UsageError, match="already registered"):
        _make_pass("dce")


@pytest.mark.parametrize("bad", ["Bad", "bad_name", "-x", "x-", "a--b", ""])
def test_names_must_be_kebab_case(bad: str) -> None:
    with pytest.raises(UsageError, match="kebab-case"):
        register_pass(bad)


def test_options_must_be_frozen_dataclass() -> None:
    # Python itself refuses a mutable subclass of the frozen base ...
    with pytest.raises(TypeError):

        @dataclass(kw_only=True)
        class Mutable(PassOptions):
            x: int = 1

    # ... and the registry refuses options that are not a PassOptions dataclass at all.
    class NotADataclass:
        pass

    with isolated_registry(), pytest.raises(UsageError, match="PassOptions dataclass"):

        @register_pass("bad-opts")
        class _P(Pass):
            """Doc."""

            Options = NotADataclass  # type: ignore[assignment]


def test_summary_required() -> None:
    with isolated_registry(), pytest.raises(UsageError, match="summary"):

        @register_pass("no-summary")
        class _P(Pass):
            pass


def test_split_spec_handles_brackets_and_slashes() -> None:
    name, opts = split_spec("prune-channels:ratio=0.5,exclude=[/layer1/conv/Conv,/fc/*],round_to=8")
    assert name == "prune-channels"
    assert opts == {"ratio": "0.5", "exclude": "[/layer1/conv/Conv,/fc/*]", "round_to": "8"}
    with pytest.raises(UsageError, match="key=value"):
        split_spec("x:novalue")


def test_option_coercion() -> None:
    with isolated_registry():
        cls = _make_pass()
        o = make_options(cls, {"ratio": "0.25", "count": "7", "flag": "yes", "mode": "b", "names": "[x,y]", "limit": "none"})
        assert (o.ratio, o.count, o.flag, o.mode, o.names, o.limit) == (0.25, 7, True, "b", ("x", "y"), None)
        assert make_options(cls, {"limit": "4"}).limit == 4
        assert make_options(cls, {"names": ["p", "q"]}).names == ("p", "q")  # API: lists become tuples
        for bad, match in [
            ({"ratio": "abc"}, "expected a number"),
            ({"count": "1.5"}, "expected an integer"),
            ({"flag": "maybe"}, "true/false"),
            ({"mode": "c"}, "not one of"),
            ({"ratio": "2"}, r"ratio must be in \[0, 1\]"),
            ({"nope": "1"}, "has no option 'nope'; its options: count, flag, limit, mode, names, ratio"),
        ]:
            with pytest.raises(UsageError, match=match):
                make_options(cls, bad)
        p = instantiate("test-opts-pass:ratio=0.1")
        assert isinstance(p, cls) and p.options.ratio == 0.1
        with pytest.raises(dataclasses_frozen_error()):
            p.options.ratio = 0.2  # type: ignore[misc]


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_wrong_options_type_rejected() -> None:
    with isolated_registry():
        cls = _make_pass()
        with pytest.raises(UsageError, match="expects _Opts"):
            cls(object())  # type: ignore[arg-type]
