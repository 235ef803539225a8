from click.testing import CliRunner

from amst.cli import main


def test_demo_runs_and_reports(tmp_path, monkeypatch):
    import amst.demo as demo

    monkeypatch.setattr(demo, "DEMO_SHAPE", (16, 192, 192))
    r = CliRunner().invoke(main, ["demo", str(tmp_path / "d"), "--backend", "fast"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "TM only" in r.output and "AMST" in r.output
    assert (tmp_path / "d" / "amst" / "report" / "index.html").exists()
