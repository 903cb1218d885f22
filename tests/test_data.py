"""Tests of tradingrl_nb.data: bundled market data, the strict CSV loader, causal features,
date splits and synthetic regime markets."""
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tradingrl_nb.data import (OHLCV, DataFileNotFoundError, add_features, load_csv, load_market_data,
                               split_by_date, synthetic_market)

HEADER = "date,open,high,low,close,volume"


# ---------------------------------------------------------------- bundled market data

@pytest.fixture(scope="module")
def spx():
    return load_market_data("sp500")


@pytest.mark.parametrize("name, columns, first, last, rows", [
    ("sp500", OHLCV, "1999-01-04", "2018-12-31", 5031),
    ("nasdaq", OHLCV, "1999-01-04", "2018-12-31", 5031),
    ("vix", ["close"], "2014-01-03", "2019-01-03", 1259),
])
def test_load_market_data_shape_and_span(name, columns, first, last, rows):
    df = load_market_data(name)
    assert isinstance(df.index, pd.DatetimeIndex) and df.index.name == "date"
    assert list(df.columns) == columns
    assert df.shape == (rows, len(columns))
    assert df.index[0] == pd.Timestamp(first) and df.index[-1] == pd.Timestamp(last)
    assert df.index.is_monotonic_increasing and df.index.is_unique
    assert (df.dtypes == "float64").all()
    assert np.isfinite(df.to_numpy()).all(), "bundled data must have no missing or infinite values"
    assert (df["close"] > 0).all()
    if name != "vix":
        assert (df["high"] >= df["low"]).all()
        for c in ("open", "close"):
            assert df[c].between(df["low"], df["high"]).all()
        assert (df["volume"] >= 0).all()


def test_vix_leaves_out_only_the_closed_days(spx):
    vix = load_market_data("vix")
    # every trading day of the S&P 500 in the VIX span has a VIX value, and vice versa (the VIX file
    # ends two trading days later, on 2019-01-03)
    spx_days = spx.loc["2014-01-03":].index
    assert spx_days.isin(vix.index).all()
    assert list(vix.index.difference(spx_days).strftime("%Y-%m-%d")) == ["2019-01-02", "2019-01-03"]


def test_load_market_data_values_match_arch(spx):
    import arch.data.sp500
    raw = arch.data.sp500.load()
    assert np.array_equal(spx["close"].to_numpy(), raw["Close"].to_numpy(dtype="float64"))
    assert np.array_equal(spx["volume"].to_numpy(), raw["Volume"].to_numpy(dtype="float64"))


def test_load_market_data_name_is_case_insensitive(spx):
    assert load_market_data(" SP500 ").equals(spx)


@pytest.mark.parametrize("name", ["spx", "dax", "", "sp 500"])
def test_load_market_data_unknown_name(name):
    with pytest.raises(ValueError, match="unknown dataset") as e:
        load_market_data(name)
    for known in ("sp500", "nasdaq", "vix"):
        assert known in str(e.value)


def test_load_market_data_returns_a_fresh_frame(spx):
    a = load_market_data("sp500")
    a.iloc[0, 0] = -1.0
    assert load_market_data("sp500").iloc[0, 0] == spx.iloc[0, 0] > 0


# ---------------------------------------------------------------- load_csv: good files

def _rows(n=8, seed=0):
    "n valid rows as lists of strings (OHLC consistent, business days)."
    df = synthetic_market(n, seed=seed)[OHLCV]
    return [[d.strftime("%Y-%m-%d"), *(repr(float(v)) for v in r)] for d, r in zip(df.index, df.to_numpy())]


def _write(tmp_path, rows, header=HEADER, name="prices.csv", tail="\n"):
    path = tmp_path / name
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + tail, encoding="utf-8")
    return path


def test_load_csv_round_trips_a_real_frame(tmp_path, spx):
    part = spx.iloc[1000:1400]
    path = tmp_path / "spx.csv"
    part.reset_index().to_csv(path, index=False)
    back = load_csv(path)
    assert back.equals(part)
    assert back.index.name == "date" and list(back.columns) == OHLCV and len(back) == 400


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 60), seed=st.integers(0, 2**31 - 1))
def test_load_csv_round_trips_synthetic_frames(tmp_path, n, seed):
    df = synthetic_market(max(n, 2), seed=seed)[OHLCV].iloc[:n]
    path = tmp_path / f"syn_{n}_{seed}.csv"
    df.reset_index().to_csv(path, index=False)
    back = load_csv(path)
    assert len(back) == n  # nothing dropped
    assert back.equals(df.astype("float64").rename_axis("date"))


def test_load_csv_keeps_every_row_and_ignores_extra_columns(tmp_path):
    rows = [r + ["x"] for r in _rows(50)]
    path = _write(tmp_path, rows, header="Date,Open,High,Low,Close,Volume,Note")
    df = load_csv(path)
    assert len(df) == 50 and list(df.columns) == OHLCV
    assert [d.strftime("%Y-%m-%d") for d in df.index] == [r[0] for r in rows]
    assert np.array_equal(df.to_numpy(), np.array([[float(v) for v in r[1:6]] for r in rows]))


def test_load_csv_custom_date_column_subset_and_format(tmp_path):
    rows = [[pd.Timestamp(r[0]).strftime("%d/%m/%Y"), r[4]] for r in _rows(20)]
    path = _write(tmp_path, rows, header="Trade Date,Close")
    df = load_csv(path, date_col="Trade Date", columns=["close"], date_format="%d/%m/%Y")
    assert list(df.columns) == ["close"] and len(df) == 20
    assert df.index[0] == pd.Timestamp("2000-01-03") and df.index.is_monotonic_increasing


def test_load_csv_trailing_blank_lines_are_not_rows(tmp_path):
    path = _write(tmp_path, _rows(5), tail="\n\n\n")
    assert len(load_csv(path)) == 5


def test_load_csv_trailing_delimiters_lose_nothing(tmp_path):
    rows = _rows(5)
    path = _write(tmp_path, [r + [""] for r in rows], header=HEADER)
    df = load_csv(path)
    assert len(df) == 5 and df["volume"].tolist() == [float(r[5]) for r in rows]


# ---------------------------------------------------------------- load_csv: every bad input

def _assert_names(err, path, column, row):
    msg = str(err)
    assert str(path) in msg, msg
    assert repr(column) in msg, msg
    # data row (1-based) and its line in the file (header is line 1)
    assert re.search(rf"\brow {row} \(line {row + 1}\b", msg), msg


def _set(rows, row, col, value):
    "Copy of rows with data row `row` (1-based) of column `col` set to `value`."
    rows = [list(r) for r in rows]
    rows[row - 1][HEADER.split(",").index(col)] = value
    return rows


BAD_CELLS = [  # (what, column, value, match)
    ("empty close", "close", "", "missing"),
    ("NaN text", "open", "NaN", "not a number"),
    ("nan text", "close", "nan", "not a number"),
    ("inf", "high", "inf", "non-finite"),
    ("-inf", "low", "-inf", "non-finite"),
    ("Infinity", "volume", "Infinity", "non-finite"),
    ("word", "close", "abc", "not a number"),
    ("comma decimal", "open", '"1,5"', "not a number"),
    ("two numbers", "volume", "1 2", "not a number"),
    ("zero price", "close", "0", "non-positive"),
    ("negative price", "open", "-3.5", "non-positive"),
    ("negative volume", "volume", "-1", "negative volume"),
    ("unparseable date", "date", "2000-13-45", "unparseable date"),
    ("date word", "date", "yesterday", "unparseable date"),
    ("empty date", "date", "", "unparseable date"),
]


@pytest.mark.parametrize("what, column, value, match", BAD_CELLS, ids=[c[0] for c in BAD_CELLS])
@pytest.mark.parametrize("row", [1, 4, 8])
def test_load_csv_bad_cell(tmp_path, what, column, value, match, row):
    path = _write(tmp_path, _set(_rows(8), row, column, value))
    with pytest.raises(ValueError, match=match) as e:
        load_csv(path)
    _assert_names(e.value, path, column, row)


def test_load_csv_high_below_low(tmp_path):
    rows = _rows(8)
    r = rows[4]  # data row 5
    r[2], r[3] = r[3], r[2]  # swap high and low
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match="high < low") as e:
        load_csv(path)
    _assert_names(e.value, path, "high", 5)


@pytest.mark.parametrize("column", ["open", "close"])
@pytest.mark.parametrize("side", ["above high", "below low"])
def test_load_csv_open_close_outside_range(tmp_path, column, side):
    rows = _rows(8)
    hi, lo = float(rows[2][2]), float(rows[2][3])
    value = hi * 1.01 if side == "above high" else lo * 0.99
    path = _write(tmp_path, _set(rows, 3, column, repr(value)))
    with pytest.raises(ValueError, match=r"outside \[low, high\]") as e:
        load_csv(path)
    _assert_names(e.value, path, column, 3)


def test_load_csv_duplicate_date(tmp_path):
    rows = _rows(8)
    path = _write(tmp_path, _set(rows, 6, "date", rows[4][0]))
    with pytest.raises(ValueError, match="duplicate date") as e:
        load_csv(path)
    _assert_names(e.value, path, "date", 6)
    assert "repeats row 5" in str(e.value)


def test_load_csv_unsorted_dates(tmp_path):
    rows = _rows(8)
    rows[2], rows[3] = rows[3], rows[2]  # rows 3 and 4 swapped: row 4 is earlier than row 3
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match="not sorted") as e:
        load_csv(path)
    _assert_names(e.value, path, "date", 4)


def test_load_csv_descending_file(tmp_path):
    path = _write(tmp_path, _rows(8)[::-1])
    with pytest.raises(ValueError, match="not sorted") as e:
        load_csv(path)
    _assert_names(e.value, path, "date", 2)


def test_load_csv_dates_use_one_format_for_the_whole_file(tmp_path):
    # day-first dates: the first row reads as month-first, 13/01 cannot: an error, not a silent mix
    rows = [_set(_rows(3), 1, "date", "01/02/2000")[0], _set(_rows(3), 2, "date", "13/02/2000")[1]]
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match="unparseable date '13/02/2000'.*inferred from the first row") as e:
        load_csv(path)
    _assert_names(e.value, path, "date", 2)
    df = load_csv(path, date_format="%d/%m/%Y")
    assert list(df.index) == [pd.Timestamp("2000-02-01"), pd.Timestamp("2000-02-13")]


def test_load_csv_reports_the_earliest_offending_row(tmp_path):
    rows = _set(_rows(8), 6, "open", "abc")  # a non-number in an earlier column but a later row
    rows = _set(rows, 3, "volume", "")  # a missing value in a later column but an earlier row
    rows = _set(rows, 7, "date", "garbage")
    rows = _set(rows, 4, "close", "-1")
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match="missing") as e:
        load_csv(path)
    _assert_names(e.value, path, "volume", 3)
    path = _write(tmp_path, _set(rows, 3, "volume", "5"))
    with pytest.raises(ValueError, match="non-positive") as e:
        load_csv(path)
    _assert_names(e.value, path, "close", 4)


@pytest.mark.parametrize("drop", OHLCV + ["date"])
def test_load_csv_missing_column(tmp_path, drop):
    cols = HEADER.split(",")
    k = cols.index(drop)
    rows = [r[:k] + r[k + 1:] for r in _rows(5)]
    path = _write(tmp_path, rows, header=",".join(c for c in cols if c != drop))
    with pytest.raises(ValueError, match="missing column") as e:
        load_csv(path)
    assert str(path) in str(e.value) and repr(drop) in str(e.value)


def test_load_csv_duplicate_column_names(tmp_path):
    rows = [r + [r[4]] for r in _rows(5)]
    path = _write(tmp_path, rows, header=HEADER + ",Close")
    with pytest.raises(ValueError, match="more than once") as e:
        load_csv(path)
    assert str(path) in str(e.value) and "'close'" in str(e.value)


def test_load_csv_blank_line_between_rows(tmp_path):
    rows = _rows(6)
    path = tmp_path / "gap.csv"
    path.write_text("\n".join([HEADER, *(",".join(r) for r in rows[:3]), "", *(",".join(r) for r in rows[3:])]) + "\n")
    with pytest.raises(ValueError, match="blank line") as e:
        load_csv(path)
    _assert_names(e.value, path, "date", 4)


def test_load_csv_short_row(tmp_path):
    rows = _rows(6)
    rows[2] = rows[2][:5]  # row 3 lacks its volume
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match="missing") as e:
        load_csv(path)
    _assert_names(e.value, path, "volume", 3)


@pytest.mark.parametrize("row", [1, 4])
def test_load_csv_long_row(tmp_path, row):
    rows = _rows(6)
    rows[row - 1] = rows[row - 1] + ["99"]  # one field more than the header
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError) as e:
        load_csv(path)
    msg = str(e.value)
    assert str(path) in msg and f"line {row + 1}" in msg, msg


def test_load_csv_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(ValueError, match="empty file") as e:
        load_csv(path)
    assert str(path) in str(e.value)


def test_load_csv_header_only(tmp_path):
    path = _write(tmp_path, [])
    with pytest.raises(ValueError, match="no data rows") as e:
        load_csv(path)
    assert str(path) in str(e.value)


def test_load_csv_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match="no such file") as e:
        load_csv(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, DataFileNotFoundError)
    with pytest.raises(ValueError):
        load_csv(tmp_path)  # a folder is not a file


def test_load_csv_not_text(tmp_path):
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage\n\x80\x81\x00")
    with pytest.raises(ValueError) as e:
        load_csv(path)
    assert str(path) in str(e.value)


def test_load_csv_unterminated_quote(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text(HEADER + "\n" + ",".join(_rows(2)[0]) + '\n"2000-01-04,1,2\n')
    with pytest.raises(ValueError, match="not a readable CSV") as e:
        load_csv(path)
    assert str(path) in str(e.value)


# ---------------------------------------------------------------- add_features: no look-ahead

def _future_changed(df, t, rng, scale):
    "Copy of df with random positive multiplicative perturbations of random OHLCV cells in rows after t."
    out = df.copy()
    n_after = len(df) - t - 1
    if n_after <= 0: return out
    cols = [c for c in OHLCV if c in df]
    mask = rng.random((n_after, len(cols))) < rng.uniform(0.2, 1.0)
    mask[rng.integers(n_after), rng.integers(len(cols))] = True  # at least one cell changes
    factor = np.where(mask, np.exp(scale * rng.standard_normal(mask.shape)), 1.0)
    out.iloc[t + 1:, [out.columns.get_loc(c) for c in cols]] = df[cols].iloc[t + 1:].to_numpy() * factor
    return out


def _same_up_to(a, b, t_date):
    "Every feature at every date <= t_date equal (NaN equal to NaN); same columns."
    assert list(a.columns) == list(b.columns)
    a, b = a.loc[:t_date], b.loc[:t_date]
    assert a.index.equals(b.index)
    return np.array_equal(a.to_numpy(), b.to_numpy(), equal_nan=True)


def _vix_for(df, rng):
    "A VIX-like close series on a calendar that differs from df's (missing days and extra days)."
    days = pd.bdate_range(df.index[0] - pd.Timedelta(days=10), df.index[-1] + pd.Timedelta(days=10), name="date")
    days = days[rng.random(len(days)) > 0.1]
    return pd.DataFrame({"close": 15 * np.exp(np.cumsum(0.05 * rng.standard_normal(len(days))))}, index=days)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(70, 220), seed=st.integers(0, 2**31 - 1), t_frac=st.floats(0.0, 1.0),
       scale=st.sampled_from([1e-6, 0.05, 1.0]), with_vix=st.booleans(), truncate=st.booleans())
def test_add_features_has_no_look_ahead(n, seed, t_frac, scale, with_vix, truncate):
    rng = np.random.default_rng(seed)
    df = synthetic_market(n, seed=seed)[OHLCV]
    t = min(int(t_frac * n), n - 1)
    t_date = df.index[t]
    vix = _vix_for(df, rng) if with_vix else None
    base = add_features(df, vix=vix, dropna=False)
    if truncate:  # the future does not exist yet
        df2 = df.iloc[:t + 1]
        vix2 = vix.loc[:t_date] if with_vix else None
    else:  # the future is different
        df2 = _future_changed(df, t, rng, scale)
        vix2 = None
        if with_vix:
            vix2 = vix.copy()
            after = vix2.index > t_date
            vix2.loc[after, "close"] *= np.exp(scale * rng.standard_normal(after.sum()))
        assert df2.iloc[:t + 1].equals(df.iloc[:t + 1])
        assert t == n - 1 or not df2.equals(df)
    other = add_features(df2, vix=vix2, dropna=False)
    assert _same_up_to(base, other, t_date)
    # with dropna the rows up to t that survive are the same rows with the same values
    a, b = add_features(df, vix=vix).loc[:t_date], add_features(df2, vix=vix2).loc[:t_date]
    assert a.index.equals(b.index) and np.array_equal(a.to_numpy(), b.to_numpy())
    if with_vix: assert {"vix", "vix_chg"} <= set(base.columns)


def test_look_ahead_check_catches_a_centred_window():
    "The check above is not vacuous: a feature that peeks one day ahead fails it."
    rng = np.random.default_rng(0)
    df = synthetic_market(120, seed=3)[OHLCV]
    peek = lambda d: pd.DataFrame({"m": d["close"].rolling(3, center=True).mean()})
    t = 60
    assert not _same_up_to(peek(df), peek(_future_changed(df, t, rng, 0.05)), df.index[t])
    assert _same_up_to(add_features(df, dropna=False), add_features(_future_changed(df, t, rng, 0.05), dropna=False),
                       df.index[t])


def test_add_features_columns_and_values(spx):
    f = add_features(spx)
    expected = ["ret_1"] + [f"{k}_{w}" for w in (5, 21, 63) for k in ("ret", "vol")] + ["range", "volume_z"]
    assert list(f.columns) == expected
    assert not f.isna().any().any() and f.index.is_monotonic_increasing
    assert f.index[0] == spx.index[63]  # the 63-day windows need 63 returns
    d = spx.index[1000]
    i = spx.index.get_loc(d)
    r = np.log(spx["close"]).diff()
    assert f.loc[d, "ret_1"] == pytest.approx(np.log(spx["close"].iloc[i] / spx["close"].iloc[i - 1]))
    assert f.loc[d, "ret_21"] == pytest.approx(np.log(spx["close"].iloc[i] / spx["close"].iloc[i - 21]))
    assert f.loc[d, "vol_21"] == pytest.approx(r.iloc[i - 20:i + 1].std() * np.sqrt(252))
    assert f.loc[d, "range"] == pytest.approx(np.log(spx["high"].iloc[i] / spx["low"].iloc[i]))


def test_add_features_vix_join_uses_the_last_known_value(spx):
    vix = load_market_data("vix")
    f = add_features(spx, vix=vix)
    assert f.index[0] >= vix.index[0] and not f.isna().any().any()
    d = pd.Timestamp("2016-06-24")
    assert f.loc[d, "vix"] == pytest.approx(vix.loc[d, "close"] / 100)
    # a VIX missing on a trading day is filled from the day before, never from the day after
    holes = vix.drop(index=[d])
    g = add_features(spx, vix=holes)
    prev = vix.index[vix.index.get_loc(d) - 1]
    assert g.loc[d, "vix"] == pytest.approx(vix.loc[prev, "close"] / 100)


def test_add_features_needs_close():
    with pytest.raises(ValueError, match="close"):
        add_features(pd.DataFrame({"open": [1.0, 2.0]}, index=pd.bdate_range("2020-01-01", periods=2)))


# ---------------------------------------------------------------- split_by_date

def test_split_by_date_default_spans(spx):
    sp = split_by_date(spx)
    assert sp.train.index.max() <= pd.Timestamp("2012-12-31") < sp.val.index.min()
    assert sp.val.index.max() <= pd.Timestamp("2014-12-31") < sp.test.index.min()
    assert sp.test.index.min() == pd.Timestamp("2015-01-02") and sp.test.index.max() == spx.index.max()
    spans = sp.spans()
    assert list(spans.index) == ["train", "val", "test"] and spans["rows"].sum() == len(spx)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(3, 400), a=st.integers(0, 10**6), b=st.integers(0, 10**6), use_fractions=st.booleans())
def test_split_by_date_partitions_in_order(n, a, b, use_fractions):
    df = synthetic_market(max(n, 2), seed=a % 97)[OHLCV].iloc[:n]
    if use_fractions:
        f0 = 0.05 + 0.8 * (a / 10**6)
        f1 = f0 + (0.95 - f0) * (b / 10**6)
        args, ok = dict(train_end=None, val_end=None, fractions=(f0, f1)), \
            0 < f0 < f1 < 1 and int(n * f0) >= 1 and int(n * f1) - int(n * f0) >= 1 and n - int(n * f1) >= 1
    else:
        i, j = sorted((a % n, b % n))
        args = dict(train_end=df.index[i], val_end=df.index[j])
        ok = i < j < n - 1
    if not ok:
        with pytest.raises(ValueError):
            split_by_date(df, **args)
        return
    sp = split_by_date(df, **args)
    parts = list(sp)
    assert all(len(p) > 0 for p in parts)
    assert sp.train.index.max() < sp.val.index.min() and sp.val.index.max() < sp.test.index.min()
    joined = pd.concat(parts)
    assert joined.equals(df)  # no overlap, nothing lost, order kept
    if use_fractions:
        assert len(sp.train) == int(n * args["fractions"][0])


@pytest.mark.parametrize("train_end, val_end, match", [
    ("2014-12-31", "2012-12-31", "must be before"),
    ("2012-12-31", "2012-12-31", "must be before"),
    ("1990-01-01", "2012-12-31", "train span is empty"),
    ("2012-12-31", "2013-01-01", "validation span is empty"),  # 2013-01-01 is a holiday
    ("2012-12-31", "2030-01-01", "test span is empty"),
])
def test_split_by_date_errors(spx, train_end, val_end, match):
    with pytest.raises(ValueError, match=match):
        split_by_date(spx, train_end, val_end)


@pytest.mark.parametrize("fractions", [(0.9, 0.5), (0.0, 0.5), (0.5, 1.0), (0.5, 0.5), (-0.1, 0.5)])
def test_split_by_date_bad_fractions(spx, fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_by_date(spx, None, None, fractions=fractions)


def test_split_by_date_needs_dates_and_rows():
    with pytest.raises(ValueError, match="DatetimeIndex"):
        split_by_date(pd.DataFrame({"close": [1.0, 2.0, 3.0]}))
    with pytest.raises(ValueError, match="empty"):
        split_by_date(pd.DataFrame({"close": []}, index=pd.DatetimeIndex([], name="date")))


# ---------------------------------------------------------------- synthetic_market

def test_synthetic_market_is_deterministic_per_seed():
    a, b, c = synthetic_market(500, seed=7), synthetic_market(500, seed=7), synthetic_market(500, seed=8)
    assert a.equals(b)
    assert not np.allclose(a["close"].to_numpy(), c["close"].to_numpy())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 600), seed=st.integers(0, 2**31 - 1))
def test_synthetic_market_frame_and_ohlc_consistency(n, seed):
    df = synthetic_market(n, seed=seed)
    assert len(df) == n and list(df.columns) == OHLCV + ["regime"]
    assert isinstance(df.index, pd.DatetimeIndex) and df.index.name == "date"
    assert df.index.is_monotonic_increasing and df.index.is_unique and (df.index.day_of_week < 5).all()
    assert np.isfinite(df[OHLCV].to_numpy()).all() and (df[OHLCV] > 0).all().all()
    assert (df["high"] >= df[["open", "close", "low"]].max(axis=1)).all()
    assert (df["low"] <= df[["open", "close"]].min(axis=1)).all()
    assert set(df["regime"].unique()) <= {0, 1} and df["regime"].iloc[0] == 0


def test_synthetic_market_passes_the_csv_loader(tmp_path):
    df = synthetic_market(300, seed=11)
    path = tmp_path / "syn.csv"
    df.reset_index().to_csv(path, index=False)
    assert load_csv(path).equals(df[OHLCV])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_market_crash_regime_is_more_volatile(seed):
    df = synthetic_market(4000, seed=seed)
    r = np.log(df["close"]).diff().iloc[1:]
    regime = df["regime"].iloc[1:]
    calm, crash = r[regime == 0], r[regime == 1]
    assert len(crash) > 100 and len(calm) > 1000
    assert crash.std() > 2.5 * calm.std()  # vol (0.008, 0.03)
    assert crash.mean() < 0 < calm.mean()  # drift (0.0006, -0.002)
    vol = df["volume"].iloc[1:]
    assert vol[regime == 1].median() > 2 * vol[regime == 0].median()


def test_synthetic_market_parameters_matter():
    calm_only = synthetic_market(1000, seed=0, stay=(1.0, 1.0))
    assert (calm_only["regime"] == 0).all()
    r = np.log(calm_only["close"]).diff().iloc[1:]
    assert r.std() == pytest.approx(0.008, rel=0.1)
    assert synthetic_market(10, seed=0, start="2021-03-01", start_price=50.0).index[0] == pd.Timestamp("2021-03-01")
    with pytest.raises(ValueError, match="n_days"):
        synthetic_market(1)


# ---------------------------------------------------------------- walk-forward splits (issue 13)
from tradingrl_nb.data import walk_forward_splits  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(train=st.integers(1, 5), val=st.integers(3, 18), test=st.integers(3, 18), step=st.integers(3, 24),
       embargo=st.integers(0, 20), rolling=st.booleans())
def test_walk_forward_spans_are_ordered_disjoint_and_embargoed(spx, train, val, test, step, embargo, rolling):
    splits = walk_forward_splits(spx, train=f"{train}Y", val=f"{val}M", test=f"{test}M", step=f"{step}M",
                                 embargo=f"{embargo}D", mode="rolling" if rolling else "expanding")
    assert len(splits) >= 1
    for s in splits:
        assert s.train_start <= s.train_end < s.val_start <= s.val_end < s.test_start <= s.test_end <= spx.index[-1]
        # the embargo: at least `embargo` calendar days between the spans, no bar of the data inside the gap
        assert (s.val_start - s.train_end).days > embargo and (s.test_start - s.val_end).days > embargo
        assert not ((spx.index > s.train_end) & (spx.index < s.val_start)).any() or embargo > 0
        tr, va, te = s.frames(spx)
        assert tr.index[0] == s.train_start and tr.index[-1] == s.train_end and te.index[-1] == s.test_end
        assert tr.index.max() < va.index.min() and va.index.max() < te.index.min()
    starts = [s.train_start for s in splits]
    if rolling: assert starts == sorted(starts) and (len(splits) == 1 or starts[1] > starts[0])
    else: assert len(set(starts)) == 1
    tests = [s.test_start for s in splits]
    assert tests == sorted(set(tests))


def test_walk_forward_yearly_tests(spx):
    splits = walk_forward_splits(spx, train="4Y", val="1Y", test="1Y", step="1Y", embargo="5D", mode="rolling")
    years = [s.test_start.year for s in splits]
    assert years[0] == 2004 and years[-1] == 2018 and years == list(range(2004, 2019))
    assert all(s.test_start.year == s.test_end.year for s in splits)
    assert splits[4].name == "test 2008"
    # consecutive test years do not overlap
    assert all(a.test_end < b.test_start for a, b in zip(splits, splits[1:]))


@pytest.mark.parametrize("kw, match", [
    (dict(train="0Y"), "train"), (dict(test="1 fortnight"), "test"), (dict(mode="sliding"), "mode"),
    (dict(train="30Y"), "too short"), (dict(embargo="-3D"), "embargo")])
def test_walk_forward_errors(spx, kw, match):
    args = dict(train="4Y", val="1Y", test="1Y", step="1Y") | kw
    with pytest.raises(ValueError, match=match):
        walk_forward_splits(spx, **args)


# ---------------------------------------------------------------- bad input (issue 13)
@pytest.mark.parametrize("dates, what", [
    (["2020-01-02T00:00:00+00:00", "2020-01-03T00:00:00+00:00"], "time zone"),
    (["2020-01-02 09:30", "2020-01-02 16:00"], "intraday"),
    (["2019", "2020"], "year"),
])
def test_load_csv_refuses_non_daily_dates(tmp_path, dates, what):
    rows = [[d, "1", "2", "0.5", "1.5", "100"] for d in dates]
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match=what) as e:
        load_csv(path)
    msg = str(e.value)
    assert str(path) in msg and "'date'" in msg and "row 1" in msg and dates[0] in msg


def test_load_csv_decimal_comma(tmp_path):
    rows = [r[:1] + [v.replace(".", ",") for v in r[1:]] for r in _rows(6)]
    path = tmp_path / "eu.csv"
    path.write_text("\n".join([HEADER.replace(",", ";"), *(";".join(r) for r in rows)]) + "\n", encoding="utf-8")
    back = load_csv(path, sep=";", decimal=",")
    expect = synthetic_market(6, seed=0)[OHLCV]
    assert np.allclose(back.to_numpy(), expect.to_numpy(), rtol=1e-12)


def test_load_csv_names_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory") as e:
        load_csv(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_load_csv_refuses_price_jumps(tmp_path):
    rows = _rows(8)
    bad = [rows[4][0]] + [repr(float(v) * 3) for v in rows[4][1:5]] + [rows[4][5]]  # a x3 jump on row 5
    rows[4] = bad
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match="max_abs_return") as e:
        load_csv(path)
    assert "row 5" in str(e.value) and "'close'" in str(e.value)
    assert len(load_csv(path, max_abs_return=None)) == 8
    assert len(load_csv(path, max_abs_return=5.0)) == 8


def test_vix_outside_its_span_is_refused_at_construction(spx):
    from tradingrl_nb.env import TradingEnv
    vix = load_market_data("vix")
    with pytest.raises(ValueError, match="VIX.*2014-01-03.*2019-01-03"):
        TradingEnv(spx, vix=vix)  # the span starts in 1999
    with pytest.raises(ValueError, match="VIX.*2014-01-03"):
        TradingEnv(spx, vix=vix, start="2012-01-01", end="2016-12-31")
    env = TradingEnv(spx, vix=vix, start="2015-01-01")
    assert "vix" in env.market.feature_names
    late = spx.copy()
    late.index = late.index + pd.Timedelta(days=731)  # now runs to 2020: VIX would be stale for two years
    with pytest.raises(ValueError, match="VIX.*2019-01-03"):
        TradingEnv(late, vix=vix, start="2017-01-01")
