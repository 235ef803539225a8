import re
from importlib import resources

import cv2
from click.testing import CliRunner

from amst.cli import main


def test_demo_volume_is_package_data():
    import amst.demo as demo
    from amst.stack import open_stack

    shipped = resources.files("amst.data").joinpath(demo.DEMO_VOLUME)
    assert shipped.is_file()
    assert resources.files("amst.data").joinpath("LICENSE-CC-BY.txt").is_file()
    with demo.demo_volume() as path:
        stack = open_stack(path)
        assert stack.shape == (64, 200, 250) and str(stack.dtype) == "uint8"
        assert (stack.voxel_size.z, stack.voxel_size.y, stack.voxel_size.x) == (10.0, 10.0, 10.0)
        n, h, w = demo.DEMO_SHAPE
        z_step = demo.DEMO_VOXEL_NM[0] / demo.DEMO_VOXEL_NM[2]  # source slices per demo slice
        assert (n - 1) * z_step <= stack.shape[0] - 1 and h + 32 <= stack.shape[1] and w + 32 <= stack.shape[2]


def test_demo_runs_and_reports(tmp_path, monkeypatch):
    import amst.demo as demo

    monkeypatch.setattr(demo, "DEMO_SHAPE", (24, 160, 210))
    r = CliRunner().invoke(main, ["demo", str(tmp_path / "d"), "--workers", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    header = next(line for line in r.output.splitlines() if line.startswith("method"))
    assert header.split() == ["method", "median", "p95", "median", "at", "auto-focus", "worse", "than", "TM",
                              "time", "(s)"]
    assert re.search(r"^TM only(\s+\d+\.\d{3}){3}\s+-\s", r.output, re.M), r.output
    assert re.search(r"^AMST \(fast\)(\s+\d+\.\d{3}){3}\s+\d+% \(\d+/24\)\s", r.output, re.M), r.output
    assert "template ROI found automatically" in r.output and "inside the marks" in r.output
    assert (tmp_path / "d" / "amst" / "report" / "index.html").exists()
    png = tmp_path / "d" / demo.PNG_NAME
    assert f"yz reslices (raw | TM only | AMST): {png}" in r.output
    img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 2 and img.shape[0] > 150 and img.shape[1] > 3 * 24
