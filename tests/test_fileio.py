"""tradingrl_nb.fileio: the package's one atomic writer and one JSON rule for NaN and infinity."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import tradingrl_nb
from tradingrl_nb.fileio import (atomic_write_bytes, atomic_write_text, flatten_dict, from_jsonable, read_json, shorten,
                                 slug, to_jsonable, write_json)

PACKAGE = Path(tradingrl_nb.__file__).parent
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3),
                           max_leaves=10)


def same(a, b) -> bool:
    if isinstance(a, float) and math.isnan(a): return isinstance(b, float) and math.isnan(b)
    if isinstance(a, dict): return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@given(json_values)
@example("NaN")                  # a string that spells a JSON constant: quoted, so still JSON (found by hypothesis)
@example([float("nan"), float("-inf"), {"x": float("inf")}])
def test_write_then_read_gives_back_every_value_nan_and_infinities_included(tmp_path_factory, v):
    "Except strings that spell 'nan'/'inf'/'-inf', which read back as floats: the rule's one stated ambiguity."
    if any(isinstance(x, str) and x in ("nan", "inf", "-inf") for x in _leaves(v)): return
    p = write_json(tmp_path_factory.mktemp("j") / "v.json", v)
    assert same(v, read_json(p))
    def bare(token): raise AssertionError(f"bare {token} in the file: not JSON")
    json.loads(p.read_text(), parse_constant=bare)  # strict JSON: no NaN/Infinity token (a string "NaN" is fine)


def _leaves(v):
    if isinstance(v, dict): return [x for k, w in v.items() for x in [k, *_leaves(w)]]
    if isinstance(v, list): return [x for w in v for x in _leaves(w)]
    return [v]


def test_numpy_values_become_plain_numbers():
    assert to_jsonable({"a": np.float32(1.5), "b": np.int64(2), "c": np.bool_(True), "d": np.array([np.nan, 1.0])}) == \
        {"a": 1.5, "b": 2, "c": True, "d": ["nan", 1.0]}
    assert math.isnan(from_jsonable({"x": ["nan"]})["x"][0])
    with pytest.raises(TypeError, match="cannot store a object"): to_jsonable(object())


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(TypeError): atomic_write_bytes(p, "not bytes")
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["a.txt"]


def test_no_module_writes_files_its_own_way():
    """One writer: outside `fileio`, no module renames a temporary file over a target (`os.replace`) or writes JSON text
    straight to a file. (`upgd_kernel` builds its compiled library with its own checked, private steps.)"""
    for f in sorted(PACKAGE.glob("*.py")):
        if f.name in ("fileio.py", "upgd_kernel.py", "_modidx.py"): continue
        text = f.read_text()
        assert "os.replace(" not in text, f.name
    offenders = [f.name for f in PACKAGE.glob("*.py") if f.name not in ("fileio.py", "upgd_kernel.py", "_modidx.py")
                 and re.search(r"\.write_text\(json\.dumps", f.read_text())]
    assert offenders == [], offenders


def test_text_helpers():
    assert shorten("x" * 1000, 40) == "x" * 25 + "...(1,000 chars)" and shorten([1, 2]) == "[1, 2]"
    assert flatten_dict({"a": {"b": {"c": 1}}, "d": 2}) == {"a.b.c": 1, "d": 2}
    assert slug("a b/c") == "a_b_c" and len(slug("x" * 100)) == 40
