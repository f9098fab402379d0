"""`graphprune.html`: the diff report as one self-contained page, checked as text and rendered
in a real headless browser (Debian's chromium; skipped with the reason where it is absent)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import onnx
import pytest

from graphprune.diff import diff
from graphprune.html import render_html, write_html
from graphprune.pipeline import prune
from tests.graphs import model, node, weight
from tests.test_cli import small_cnn

EXTERNAL = ("http://", "https://", 'src="//', "src='//", "<link", "@import", "url(")


def pruned_report(source: Path, tmp: Path, latency=None):
    """(report, result) for `source` pruned at 0.5 and diffed against it."""
    destination = tmp / (source.stem + ".pruned.onnx")
    result = prune(source, destination, ratio=0.5, providers=("cpu",))
    assert result.written
    return diff(source, destination, latency=latency), result


def assert_self_contained(page: str) -> None:
    lowered = page.lower()
    for marker in EXTERNAL:
        assert marker not in lowered, marker
    assert not re.search(r"<script[^>]*\bsrc\s*=", lowered)
    assert not re.search(r"<(img|iframe|object|embed)\b", lowered)


def test_page_is_self_contained_and_carries_the_numbers(tmp_path):
    source = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), source)
    report, result = pruned_report(source, tmp_path, latency=(2.5, 1.25))
    page = render_html(report)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert_self_contained(page)
    for number in (result.before.params, result.after.params, result.before.macs):
        assert f"{number:,}" in page
    assert "<code" in page and ">c2</code>" in page  # a layer name in the table
    assert page.count("<svg") == 4  # kept ratio, params per block, MACs per block, latency
    assert "2.500 ms" in page and "1.250 ms" in page
    for chart in ("kept", "blocks-params", "blocks-macs", "latency"):
        assert f'id="{chart}-title"' in page and f'id="{chart}-desc"' in page


def test_latency_chart_only_when_the_report_has_latency(tmp_path):
    source = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), source)
    page = render_html(diff(source, source))
    assert "latency-title" not in page and "Latency (ms)" not in page
    assert page.count("<svg") == 3
    assert "pruned" not in re.findall(r'data-status="(\w+)"', page)


def test_names_are_escaped(tmp_path):
    nasty = "<script>alert(1)</script>"
    made = model([helper_conv(nasty)], {"x": (1, 3, 4, 4)}, ["y"], {"w": weight(4, 3, 1, 1)})
    path = tmp_path / "nasty.onnx"
    onnx.save(made, path)
    page = render_html(diff(path, path))
    assert nasty not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def helper_conv(name: str) -> onnx.NodeProto:
    conv = node("Conv", ["x", "w"], ["y"])
    conv.name = name
    return conv


# --------------------------------------------------------------------------- a real browser


def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    return found


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.zoo
def test_a_real_prune_renders_in_headless_chromium(tmp_path):
    binary = chromium()
    from models.zoo import ZOO, export

    if not ZOO["resnet18"].available():
        pytest.skip(f"resnet18 needs {', '.join(ZOO['resnet18'].missing_modules())}")
    report, result = pruned_report(Path(export("resnet18", "dynamo")), tmp_path, (9.0, 3.0))
    page = write_html(report, tmp_path / "report.html")
    assert_self_contained(page.read_text())

    dom = run_chromium(binary, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    assert 'data-ready="yes"' in dom  # the inline script ran to its end without an error
    for number in (result.before.params, result.after.params, result.after.macs):
        assert f"{number:,}" in dom
    assert "layer4.1.conv2" in dom  # a layer's module path, as rendered
    assert dom.count("<svg") == 4 and dom.count('<tr data-status="pruned"') == 21

    # click the "params" header twice in the browser: the rows come back sorted by B's params
    clicking = tmp_path / "clicked.html"
    click = "document.querySelector('table.layers thead th:nth-child(9) button').click();"
    clicking.write_text(page.read_text().replace("</body>", f"<script>{click * 2}</script></body>"))
    dom = run_chromium(binary, tmp_path / "profile", "--dump-dom", clicking.as_uri()).stdout
    params = [
        int(p)
        for p in re.findall(
            r'<tr data-status="\w+">(?:<td[^>]*>.*?</td>){8}'
            r'<td data-sort="(\d+)"',
            dom,
        )
    ]
    assert len(params) == 21 and params == sorted(params, reverse=True)
    assert 'aria-sort="descending"' in dom

    shot = tmp_path / "page.png"
    run_chromium(
        binary,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        "--hide-scrollbars",
        page.as_uri(),
    )
    assert shot.stat().st_size > 10_000
    assert png_size(shot) == (1280, 2000)
