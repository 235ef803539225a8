"""Janelia FIB-SEM .dat frames: the shared real frame (format v9), v8 headers, folders, runs."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import amst
from amst.cli import main
from amst.stack import StackError, VoxelSize, open_stack
from amst.stack.janelia_dat import HEADER_BYTES, read_dat_header
from tests.conftest import shared_data

FRAME = "Gemini500-7029_24-12-16_151317_0-0-0.dat"


@pytest.fixture(scope="module")
def frame() -> Path:
    return shared_data("janelia_dat", FRAME)


def _pixels(path: Path) -> np.ndarray:
    """The frame's samples decoded here, independently of amst: (y, x, channel) big-endian int16."""
    raw = path.read_bytes()[HEADER_BYTES:]
    return np.frombuffer(raw, dtype=">i2").reshape(1000, 1000, 2)


def _write_dat(path: Path, header: bytes, samples: np.ndarray, version: int | None = None) -> Path:
    """A .dat frame: the shared frame's header with its size (and version) patched, then ``samples``."""
    head = bytearray(header)
    h, w, c = samples.shape
    struct.pack_into(">II", head, 100, w, h)
    head[32] = c
    if version is not None:
        struct.pack_into(">H", head, 4, version)
    path.write_bytes(bytes(head) + samples.astype(">i2").tobytes())
    return path


def test_shared_frame_header_pixel_size_and_both_channels(frame):
    h = read_dat_header(frame)
    assert (h.version, h.channels, h.eight_bit, h.width, h.height) == (9, 2, False, 1000, 1000)
    assert h.detectors == ("InLens", "ESB @ 400 V")
    assert h.pixel_nm == pytest.approx(2.0, abs=1e-3)
    samples = _pixels(frame).astype(np.int32)
    for channel in (0, 1):
        stack = open_stack(frame, channel=channel)
        assert stack.shape == (1, 1000, 1000) and stack.dtype == np.uint16
        img = stack.read(0)
        np.testing.assert_array_equal(img.astype(np.int32), samples[:, :, channel] + 32768)
        assert stack.describe()["channel_name"] == h.detectors[channel]
        assert stack.provenance()["channel"] == channel
    a, b = open_stack(frame).read(0), open_stack(frame, channel=1).read(0)
    assert (a.min(), a.max()) == (26231, 30822)      # InLens: a wide range of signal
    assert (b.min(), b.max()) == (27459, 27621)      # ESB: the other detector, not a copy
    vs = open_stack(frame).voxel_size
    assert (vs.y, vs.x) == pytest.approx((1.99996, 1.99996), abs=1e-4)
    assert "Janelia .dat header" in open_stack(frame).voxel_size_source


def test_int16_extremes_convert_without_overflow(frame, tmp_path):
    samples = np.zeros((2, 3, 2), dtype=np.int16)
    samples[0, :, 0] = [-32768, -1, 32767]
    samples[1, :, 1] = [0, 1, -2]
    path = _write_dat(tmp_path / "m_24-12-16_151317_0-0-0.dat", frame.read_bytes()[:HEADER_BYTES], samples)
    img = open_stack(path).read(0)
    np.testing.assert_array_equal(img[0], [0, 32767, 65535])
    np.testing.assert_array_equal(open_stack(path, channel=1).read(0)[1], [32768, 32769, 32766])


def test_version_8_header_is_read(frame, tmp_path):
    samples = _pixels(frame)[:40, :50]
    path = _write_dat(tmp_path / "v8_24-12-16_151317_0-0-0.dat", frame.read_bytes()[:HEADER_BYTES], samples, version=8)
    stack = open_stack(path, channel=1)
    assert stack.describe()["dat_version"] == 8 and stack.describe()["sample_id"] == ""
    np.testing.assert_array_equal(stack.read(0).astype(np.int32), samples[:, :, 1].astype(np.int32) + 32768)
    assert stack.voxel_size.x == pytest.approx(2.0, abs=1e-3)


def test_bad_channel_truncated_frame_and_montage_are_refused(frame, tmp_path):
    with pytest.raises(StackError, match=r"--channel 2 does not exist.*0: InLens, 1: ESB"):
        open_stack(frame, channel=2)
    head = frame.read_bytes()[:HEADER_BYTES]
    cut = tmp_path / "cut"
    cut.mkdir()
    p = _write_dat(cut / "m_24-12-16_151317_0-0-0.dat", head, _pixels(frame)[:20, :20])
    p.write_bytes(p.read_bytes()[:-10])
    stack = open_stack(cut)
    with pytest.raises(StackError, match=r"m_24-12-16_151317_0-0-0.dat: .*truncated.*--skip-bad"):
        stack.read(0)
    assert not open_stack(cut, skip_bad=True).read(0).any()
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for t in ("0-0-0", "0-0-1"):
        _write_dat(tiles / f"m_24-12-16_151317_{t}.dat", head, _pixels(frame)[:20, :20])
    with pytest.raises(StackError, match=r"2 tiles .*--pattern '\*_0-0-0.dat'"):
        open_stack(tiles)


def test_voxel_size_from_command_line_is_warned_when_it_disagrees(frame, caplog):
    with caplog.at_level(logging.WARNING, logger="amst.stack"):
        stack = open_stack(frame, voxel_size=VoxelSize(8.0, 3.0, 3.0))
    assert stack.voxel_size == VoxelSize(8.0, 3.0, 3.0) and stack.voxel_size_source.startswith("command line")
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "z=8 y=3 x=3 nm" in msg and "y=1.99996" in msg and "differs" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="amst.stack"):
        open_stack(frame, voxel_size=VoxelSize(8.0, 2.01, 2.01))   # within 1 %; z is not in the header
    assert not [r for r in caplog.records if "differs" in r.getMessage()]


SHIFTS_YX = [(0, 0), (3, -2), (-4, 5), (6, 1), (-2, -6), (5, 4), (1, -3), (-5, 2), (2, 6), (-3, -1)]


@pytest.fixture(scope="module")
def dat_folder(frame, tmp_path_factory) -> Path:
    """Ten .dat frames cut from the shared frame at known offsets, named by acquisition time."""
    folder = tmp_path_factory.mktemp("dat") / "frames"
    folder.mkdir()
    head = frame.read_bytes()[:HEADER_BYTES]
    samples = _pixels(frame)
    y0, x0, size = 300, 350, 192
    for z, (dy, dx) in enumerate(SHIFTS_YX):
        crop = samples[y0 + dy:y0 + dy + size, x0 + dx:x0 + dx + size]
        # seconds 55+z roll over into the next minute: time order, which the reader must keep
        _write_dat(folder / f"Gemini500-7029_24-12-16_15{13 + (55 + z) // 60:02d}{(55 + z) % 60:02d}_0-0-0.dat",
                   head, crop)
    return folder


def test_folder_is_a_stack_in_acquisition_order(dat_folder, frame):
    stack = open_stack(dat_folder)
    assert stack.kind == "janelia-dat" and stack.shape == (10, 192, 192)
    samples = _pixels(frame).astype(np.int32)
    for z in (0, 4, 9):
        dy, dx = SHIFTS_YX[z]
        np.testing.assert_array_equal(stack.read(z).astype(np.int32),
                                      samples[300 + dy:492 + dy, 350 + dx:542 + dx, 0] + 32768)
    out = CliRunner().invoke(main, ["info", str(dat_folder), "--channel", "1"])
    assert out.exit_code == 0, out.output
    assert "Janelia .dat header PixelSize" in out.output and "1 (ESB @ 400 V)" in out.output


def test_run_on_dat_frames_recovers_the_shifts_and_keeps_the_pixel_size(dat_folder, tmp_path):
    res = amst.align(dat_folder, tmp_path / "out", prealign="xcorr", backend="fast", workers=1, progress=False)
    assert res.statuses.count("ok") == 10
    t = np.array([s.affine[:, 2] for s in res.transforms.slices])          # (x, y) raw offsets
    expected = -np.array([(dx, dy) for dy, dx in SHIFTS_YX], dtype=float)
    np.testing.assert_allclose(t - t[0], expected - expected[0], atol=0.15)
    out = open_stack(res.output_stack)
    assert out.voxel_size.x == pytest.approx(1.99996, abs=1e-4)
    attrs = json.loads((res.output_stack / ".zattrs").read_text())
    assert attrs["amst"]["channel"] == 0 and attrs["amst"]["channel_name"] == "InLens"
    assert "Janelia .dat header" in attrs["amst"]["voxel_size_source"]
    doc = json.loads((tmp_path / "out" / "transforms.json").read_text())
    assert doc["voxel_size"]["x"] == pytest.approx(1.99996, abs=1e-4)
