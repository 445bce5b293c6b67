"""``whispers-lab simulate`` on the command line."""

from __future__ import annotations

import json

from whispers_lab.cli import main
from whispers_lab.export import open_export


def test_simulate_command_writes_duckdb_and_truth(tmp_path, capsys):
    out = tmp_path / "run.duckdb"
    code = main(["simulate", "--users", "400", "--seed", "3", "--start-date", "2027-01-04",
                 "--through-day", "9", "--out", str(out),
                 "--scenario", "error_spike:start=10:00,minutes=12", "--scenario", "srm"])
    assert code == 0
    text = capsys.readouterr().out
    assert "trigger_error_rate -> ROLLBACK" in text and "srm -> NO_GO" in text
    truth = json.loads((tmp_path / "run.duckdb.truth.json").read_text())
    assert truth["start_date"] == "2027-01-04" and truth["through_day"] == 9
    assert [s["name"] for s in truth["scenarios"]] == ["error_spike", "srm"]
    assert truth["scenarios"][0]["start"] == "2027-01-13T10:00:00"
    with open_export(out) as ex:
        assert ex.row_count("users") == 400
        hi = ex.scalar("SELECT max(created_at) FROM telemetry")
        assert hi.date().isoformat() == "2027-01-13"


def test_simulate_command_parquet_folder(tmp_path):
    out = str(tmp_path / "folder") + "/"
    assert main(["simulate", "--users", "200", "--seed", "1", "--through-day", "3", "--out", out]) == 0
    assert (tmp_path / "folder" / "api_logs.parquet").is_file()
    assert (tmp_path / "folder.truth.json").is_file()
    with open_export(out) as ex:
        assert ex.kind == "parquet"


def test_simulate_command_reports_bad_input(tmp_path, capsys):
    out = tmp_path / "x.duckdb"
    assert main(["simulate", "--users", "100", "--seed", "1", "--out", str(out),
                 "--scenario", "error_spike:levle=0.1"]) == 1
    err = capsys.readouterr().err
    assert "no parameter 'levle'" in err and "Traceback" not in err
    assert main(["simulate", "--users", "100", "--seed", "1", "--out", str(out),
                 "--start-date", "2027-13-01"]) == 1
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert not out.exists()
