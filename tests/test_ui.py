"""The app's Streamlit-free helpers: shareable-view parsing, limits, uploads, scrubbing."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tda.limits import Limits, limits
from ui import guard, urls
from ui.upload import UploadError, read_image

LABELS = ["assets/default", "runs/n64", "runs/group/n64", "runs/tiny"]
RULES = ("mean", "mixture")


def parse(**params):
    return urls.parse_view(params, LABELS, RULES, 2**31 - 1)


def test_a_link_names_run_seed_and_rule():
    assert parse(run="runs/tiny", seed="3", combine="mixture") == (
        {"run": "runs/tiny", "seed": 3, "combine": "mixture"},
        [],
    )
    assert parse(run="default")[0] == {"run": "assets/default"}  # the unique last part
    assert parse(run="tiny", seed=["1", "2"])[0] == {"run": "runs/tiny", "seed": 2}  # last wins
    assert parse(seed=" 7 ")[0] == {"seed": 7}
    assert parse(other="x") == ({}, [])


@pytest.mark.parametrize(
    "params",
    [
        {"run": "n64"},  # two runs end in n64: ambiguous
        {"run": "../../etc/passwd"},
        {"run": "/abs/runs/tiny"},
        {"run": "x" * 5000},
        {"run": ""},
        {"seed": "-1"},
        {"seed": "1e3"},
        {"seed": "2147483648"},
        {"seed": "99999999999999999999"},
        {"seed": "٣"},  # a digit, but not an ASCII one
        {"seed": ""},
        {"combine": "<script>alert(1)</script>"},
        {"combine": "MEAN"},
    ],
)
def test_a_hostile_link_is_refused_without_repeating_it(params):
    view, problems = parse(**params)
    assert view == {} and len(problems) == 1
    value = next(iter(params.values()))
    assert value not in problems[0] or value in ("", "n64")  # never echoed back


def test_view_params_round_trip():
    q = urls.view_params("runs/tiny", 12, "mean")
    assert q == {"run": "runs/tiny", "seed": "12", "combine": "mean"}
    assert parse(**q) == ({"run": "runs/tiny", "seed": 12, "combine": "mean"}, [])


def test_limits_come_from_the_environment(monkeypatch, caplog):
    assert limits() == Limits()
    monkeypatch.setenv("TDA_MAX_TOPK", "5")
    monkeypatch.setenv("TDA_JOBS", "3")
    monkeypatch.setenv("TDA_MAX_UPLOAD_PIXELS", "abc")  # ignored with a warning
    monkeypatch.setenv("TDA_QUEUE", "-4")
    lim = limits()
    assert (lim.top_k, lim.jobs) == (5, 3)
    assert (lim.upload_pixels, lim.queue) == (Limits().upload_pixels, Limits().queue)
    assert "TDA_MAX_UPLOAD_PIXELS" in caplog.text and "TDA_QUEUE" in caplog.text


# -- uploads -------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def with_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims another size (IHDR rewritten, its CRC fixed)."""
    ihdr = bytearray(data[8 : 8 + 25])
    ihdr[8:16] = struct.pack(">II", width, height)
    ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])))
    return data[:8] + bytes(ihdr) + data[33:]


def read(data: bytes, name: str = "x.png", channels: int = 1, **lim) -> np.ndarray:
    return read_image(data, name, 8, channels, Limits(**lim))


def test_a_plain_upload_is_converted_like_the_training_images():
    grey = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    a = read(png(grey))
    assert a.shape == (1, 8, 8) and a.dtype == np.uint8
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
        assert read(png(grey.convert(mode)), channels=3).shape == (3, 8, 8)
    buf = io.BytesIO()
    grey.convert("RGB").save(buf, format="JPEG")
    assert read(buf.getvalue(), "x.jpg").shape == (1, 8, 8)


def test_a_decompression_bomb_is_refused_before_decoding():
    bomb = with_size(png(Image.new("L", (8, 8))), 100_000, 100_000)  # 10^10 pixels, 70 bytes
    with pytest.raises(UploadError, match="more pixels than this app opens: the limit is 16,777"):
        read(bomb)  # so many that Pillow itself refuses to open it
    with pytest.raises(UploadError, match=r"more pixels \(5000×5000\).*decompression bomb"):
        read(with_size(png(Image.new("L", (8, 8))), 5_000, 5_000))  # below Pillow's own limit
    with pytest.raises(UploadError, match=r"\(300×300\).*the limit is 65,536"):
        read(png(Image.new("L", (300, 300))), upload_pixels=256 * 256)


def test_a_truncated_or_damaged_file_is_refused():
    data = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
    with pytest.raises(UploadError, match="truncated"):
        read(data[: len(data) // 2])
    damaged = bytearray(data)
    damaged[60:200] = bytes(140)
    with pytest.raises(UploadError, match="Could not read x.png"):
        read(bytes(damaged))


@pytest.mark.parametrize(
    "image, fmt",
    [
        (Image.new("I;16", (8, 8)), "PNG"),  # 16-bit grey
        (Image.new("CMYK", (8, 8)), "JPEG"),
        (Image.new("F", (8, 8)), "TIFF"),  # not PNG or JPEG at all
        (Image.new("L", (8, 8)), "GIF"),
    ],
)
def test_odd_modes_and_formats_are_refused(image, fmt):
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    with pytest.raises(UploadError, match="pixel mode|not a valid PNG or JPEG"):
        read(buf.getvalue())


def test_oversized_files_and_hostile_names():
    with pytest.raises(UploadError, match="the limit is 1 MB"):
        read(b"\0" * (2**20 + 1), upload_mb=1)
    with pytest.raises(UploadError) as e:
        read(b"not an image", name="![x](http://evil/a.png)\n<b>")
    shown = str(e.value)  # shown as markdown: the name must not become a link or markup
    assert not any(ch in shown for ch in "<>[]()!\n") and "http_" in shown


# -- what a visitor may read -----------------------------------------------------------------


def test_public_message_hides_server_paths():
    e = OSError("run /srv/tda/runs/n64: file members/02/x.safetensors is missing")
    assert guard.public_message(e, {"/srv/tda/runs/n64": "runs/n64"}) == (
        "run runs/n64: file members/02/x.safetensors is missing"
    )
    text = guard.public_message("cannot read /etc/hostname or C:\\Users\\me\\x.json, n/2, N/A")
    assert "/etc" not in text and "Users" not in text
    assert "n/2" in text and "N/A" in text
    assert guard.public_message("see https://example.org/docs") == "see https://example.org/docs"


def test_the_shared_server_config_hides_errors_and_developer_tools():
    import tomllib
    from pathlib import Path

    config = tomllib.loads(
        (Path(__file__).parent.parent / ".streamlit" / "config.toml").read_text()
    )
    assert config["client"]["showErrorDetails"] == "none"  # tracebacks go to the log only
    assert config["client"]["toolbarMode"] == "viewer"
    assert config["client"]["showSidebarNavigation"] is False  # ui.nav draws the navigation
    assert config["server"]["maxUploadSize"] >= Limits().upload_mb
    assert config["browser"]["gatherUsageStats"] is False


def test_chains_run_in_niced_worker_processes_cheap_beside_long(tiny_run_dir):
    """Pages' chains run in worker processes below the server's niceness (never in the
    server's threads): one cheap lane beside the long lane of at most the cores."""
    import os

    from tda.limits import limits
    from tda.pool import Job
    from tests.test_pool import niceness
    from ui import compute

    here = os.nice(0)
    pools = compute.pools()
    for pool in (pools.cheap, pools.long):
        with pool.submit(Job(("niceness", id(pool)), niceness)) as t:
            assert t.result() == (max(here, limits().nice), limits().threads)
    assert os.nice(0) == here  # the server keeps its priority
    assert pools.cheap.size == 1 and pools.long.size <= (os.cpu_count() or 1)
