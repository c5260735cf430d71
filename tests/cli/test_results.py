"""`membench results`: the group's --db, --filter and --last hold for `results ... export` too."""

from __future__ import annotations

import pandas as pd
import pytest

from membench.backbones.tiny import tiny


@pytest.fixture
def two_runs(tmp_path):
    """A database with runs of batch size 1 and 2 (not ./membench.db: the export must not fall back to it)."""
    from membench import profile
    from membench.result import RunRecord
    from membench.results import store_result

    model, ov = tiny("opt", layers=1)
    db = tmp_path / "two.db"
    for b in (1, 2):
        r = profile(model, "full", batch_size=b, seq_len=8, device="fake", overrides=ov)
        store_result(str(db), RunRecord(result=r))
    return db


def test_export_reads_the_group_s_database_filter_and_last(cli, tmp_path, monkeypatch, two_runs):
    monkeypatch.chdir(tmp_path)  # no ./membench.db here
    code, _out, err = cli("results", "--db", str(two_runs), "export", "--out", "all.csv")
    assert code == 0, err
    assert list(pd.read_csv(tmp_path / "all.csv")["batch_size"]) == [1, 2]
    code, _out, err = cli("results", "--db", str(two_runs), "--filter", "batch_size=2", "export", "--out", "b2.csv")
    assert code == 0, err
    assert list(pd.read_csv(tmp_path / "b2.csv")["batch_size"]) == [2]
    code, _out, err = cli("results", "--db", str(two_runs), "--last", "1", "export", "--out", "last.csv")
    assert code == 0, err
    assert list(pd.read_csv(tmp_path / "last.csv")["batch_size"]) == [2]
    # the export's own filter adds to the group's
    code, _out, err = cli("results", "--db", str(two_runs), "--filter", "batch_size>=1", "export",
                          "--filter", "batch_size=1", "--out", "b1.csv")
    assert code == 0, err
    assert list(pd.read_csv(tmp_path / "b1.csv")["batch_size"]) == [1]


def test_two_different_databases_are_refused(cli, tmp_path, two_runs):
    out = tmp_path / "x.csv"
    code, _out, err = cli("results", "--db", str(two_runs), "export", "--db", str(tmp_path / "other.db"),
                          "--out", str(out))
    assert code == 2 and err.startswith("error: two databases:") and len(err.strip().splitlines()) == 1
    assert not out.exists()
