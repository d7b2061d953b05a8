from __future__ import annotations

from typing import Literal

import pytest

from lifelong import LifelongError
from lifelong.core.spec import Spec, bind, parse_composition, parse_spec, spec_from_mapping


def make(size: int = 10, rate: float = 0.5, flag: bool = False, kind: Literal["a", "b"] = "a", note=None):
    return {"size": size, "rate": rate, "flag": flag, "kind": kind, "note": note}


def test_parse_spec_and_composition() -> None:
    assert parse_spec("ewc:lambda=1000,fisher=exact") == Spec("ewc", {"lambda": "1000", "fisher": "exact"})
    assert parse_spec(" naive ") == Spec("naive", {})
    assert [s.name for s in parse_composition("replay:buffer-size=200+ewc")] == ["replay", "ewc"]
    assert parse_composition("replay:buffer-size=200+ewc")[0].options == {"buffer_size": "200"}
    assert [s.name for s in parse_composition("der++")] == ["der++"]
    assert [s.name for s in parse_composition("replay+der++:alpha=0.1+ewc")] == ["replay", "der++", "ewc"]
    assert str(Spec("replay", {"buffer_size": 200})) == "replay:buffer_size=200"


def test_bind_casts_by_default_type() -> None:
    got = bind(make, parse_spec("x:size=3,rate=1,flag=yes,kind=b,note=7"), what="thing")
    assert got == {"size": 3, "rate": 1.0, "flag": True, "kind": "b", "note": 7}
    assert bind(make, Spec("x", {"rate": 2}), what="thing")["rate"] == 2.0  # YAML ints are fine for floats


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("x:size=big", "must be a number (int)"),
        ("x:size=1.5", "must be a number (int)"),
        ("x:flag=maybe", "must be true or false"),
        ("x:kind=c", "use one of: a, b"),
        ("x:colour=red", "has no option 'colour'; its options are: size, rate, flag, kind, note"),
        ("x:size", "is not key=value"),
        (":size=1", "empty name"),
    ],
)
def test_bad_specs_name_the_problem(text: str, phrase: str) -> None:
    with pytest.raises(LifelongError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        bind(make, parse_spec(text), what="thing")


def test_yaml_mapping_form() -> None:
    assert spec_from_mapping({"name": "replay", "buffer-size": 200}) == Spec("replay", {"buffer_size": 200})
    with pytest.raises(LifelongError, match="has no 'name' key"):
        spec_from_mapping({"buffer_size": 200})
