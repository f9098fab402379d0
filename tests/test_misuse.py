"""Misuse of the command line: outputs that would land on an input, output paths that cannot be
written safely, values that do not fit the model, and the quiet failure paths (closed pipe,
Ctrl-C, SIGTERM, SIGKILL, --json errors). Each refusal is exit 2 with one stderr line, and the
input files are byte-identical afterwards; each check is also shown accepting a correct value."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphprune.cli import main
from tests.graphs import model, node, weight
from tests.test_cli import digest, small_cnn

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder holding cnn.onnx with its weights in an external file, a plan, inputs and
    calibration data: every kind of file a run reads."""
    source = tmp_path / "cnn.onnx"
    onnx.save(
        small_cnn(), source, save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", x=rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    assert (
        main(
            [
                "prune",
                str(source),
                str(tmp_path / "seed.onnx"),
                "--plan-out",
                str(tmp_path / "plan.json"),
                "--quiet",
                "--providers",
                "cpu",
            ]
        )
        == 0
    )
    (tmp_path / "seed.onnx").unlink()
    return tmp_path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (temporaries included) and its digest."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys) -> str:
    """Run `argv` (usage errors leave argparse as SystemExit) and return its one error line
    after asserting exit 2."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and "Traceback" not in lines[0] and "internal error" not in lines[0]
    return lines[0]


# -- 1. no output lands on an input ---------------------------------------------------------------

# (case, output model, extra arguments, the input path the line must name); paths relative
# to the folder fixture
CLASHES = [
    ("plan-out on the model", "o.onnx", ["--plan-out", "cnn.onnx"], "cnn.onnx"),
    ("report on the model", "o.onnx", ["--report", "cnn.onnx"], "cnn.onnx"),
    ("output on the external data", "weights.bin", [], "weights.bin"),
    ("plan-out on the external data", "o.onnx", ["--plan-out", "weights.bin"], "weights.bin"),
    ("output on the plan", "plan.json", ["--plan", "plan.json"], "plan.json"),
    ("report on --inputs", "o.onnx", ["--inputs", "in.npz", "--report", "in.npz"], "in.npz"),
    (
        "plan-out on --calib",
        "o.onnx",
        ["--calib", "calib.npz", "--plan-out", "calib.npz"],
        "calib.npz",
    ),
    ("output is the plan-out", "o.onnx", ["--plan-out", "o.onnx"], "o.onnx"),
    ("report is the plan-out", "o.onnx", ["--plan-out", "p.json", "--report", "p.json"], "p.json"),
]


@pytest.mark.parametrize(("case", "out", "extra", "named"), CLASHES, ids=[c[0] for c in CLASHES])
def test_an_output_on_an_input_or_another_output_is_refused(
    case, out, extra, named, folder, capsys
):
    before = snapshot(folder)
    argv = ["prune", str(folder / "cnn.onnx"), str(folder / out), "--providers", "cpu"]
    argv += [str(folder / a) if "." in a and not a.startswith("-") else a for a in extra]
    line = refused(argv, capsys)
    assert str(folder / named) in line
    assert snapshot(folder) == before  # the inputs byte-identical, nothing written


def test_distinct_outputs_are_all_written_after_the_oracle(folder, capsys):
    """The check above, failing on correct paths: every file given, none the same."""
    before = snapshot(folder)
    out, plan_out, report = folder / "o.onnx", folder / "o.json", folder / "o.html"
    argv = [
        "prune",
        str(folder / "cnn.onnx"),
        str(out),
        "--plan-out",
        str(plan_out),
        "--report",
        str(report),
        "--inputs",
        str(folder / "in.npz"),
        "--calib",
        str(folder / "calib.npz"),
        "--criterion",
        "fluctuation",
        "--providers",
        "cpu",
        "--seed",
        str(2**32 - 1),
        "--shape",
        "x:1x3x8x8",
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"o.onnx", "o.json", "o.html"}  # and no temporary
    assert json.loads(plan_out.read_text())["criterion"] == "fluctuation"
    umask = os.umask(0)
    os.umask(umask)
    assert plan_out.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open would make it


def test_output_through_a_link_to_the_input_is_refused(folder, capsys):
    source = folder / "cnn.onnx"
    (folder / "link.onnx").symlink_to(source)
    os.link(source, folder / "hard.onnx")
    before = snapshot(folder)
    for name in ("link.onnx", "hard.onnx"):
        line = refused(["prune", str(source), str(folder / name)], capsys)
        assert str(folder / name) in line and str(source) in line
    assert snapshot(folder) == before


def test_output_whose_data_file_is_the_inputs_external_data_is_refused(tmp_path, capsys):
    """A large output writes `<name>.data`: here that is the input's own weights file."""
    source = tmp_path / "m.onnx"
    onnx.save(
        small_cnn(), source, save_as_external_data=True, location="p.onnx.data", size_threshold=0
    )
    before = snapshot(tmp_path)
    line = refused(["prune", str(source), str(tmp_path / "p.onnx")], capsys)
    assert "external data" in line and str(tmp_path / "p.onnx.data") in line
    assert snapshot(tmp_path) == before
    assert main(["prune", str(source), str(tmp_path / "q.onnx"), "--quiet"]) == 0  # q.onnx.data
    capsys.readouterr()


def test_every_external_data_file_of_the_input_is_protected(tmp_path, capsys):
    """One file per tensor: an output on any of them, the last one too, is refused."""
    source = tmp_path / "m.onnx"
    onnx.save(small_cnn(), source, save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=0)  # fmt: skip
    data_files = sorted(p.name for p in tmp_path.iterdir() if p.name != "m.onnx")
    assert len(data_files) == 5
    before = snapshot(tmp_path)
    for name in data_files:
        assert str(tmp_path / name) in refused(["prune", str(source), str(tmp_path / name)], capsys)
    assert snapshot(tmp_path) == before


def test_odd_output_names_are_one_line(tmp_path, capsys):
    source = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), source)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert "cannot be examined" in refused(["prune", str(source), str(tmp_path / "loop")], capsys)
    line = refused(["prune", str(source), "o.onnx", "--plan-out", "p\0.json"], capsys)
    assert "not a usable file name" in line


def test_diff_html_on_a_model_is_refused(folder, capsys):
    source = folder / "cnn.onnx"
    assert main(["prune", str(source), str(folder / "b.onnx"), "--quiet"]) == 0
    before = snapshot(folder)
    line = refused(
        ["diff", str(source), str(folder / "b.onnx"), "--html", str(folder / "b.onnx")], capsys
    )
    assert str(folder / "b.onnx") in line
    assert snapshot(folder) == before
    html = folder / "d.html"
    assert main(["diff", str(source), str(folder / "b.onnx"), "--html", str(html)]) == 0
    assert (folder / "d.html").read_text().startswith("<!")


@pytest.mark.parametrize(
    ("target", "extra", "message"),
    [
        ("missing/o.onnx", [], "folder"),
        ("o.onnx", ["--plan-out", "missing/p.json"], "does not exist"),
        ("o.onnx", ["--report", "missing/r.html"], "does not exist"),
        ("newdir/", [], "is a folder"),
        ("existing", [], "is a folder"),
        ("fifo", [], "a FIFO"),
    ],
)
def test_output_paths_that_cannot_be_written_safely_are_refused(
    target, extra, message, folder, capsys
):
    (folder / "existing").mkdir()
    os.mkfifo(folder / "fifo")
    before = snapshot(folder)
    where = lambda p: os.path.join(folder, p)  # noqa: E731  (keeps a trailing slash)
    argv = ["prune", str(folder / "cnn.onnx"), where(target)]
    argv += [where(a) if "/" in a else a for a in extra]
    line = refused(argv, capsys)
    assert message in line
    assert snapshot(folder) == before and not (folder / "newdir").exists()
    assert (folder / "fifo").is_fifo()


def test_a_device_as_output_is_refused(folder):
    """Checked on the function alone: were the check to regress, a run as root would replace
    /dev/null with a regular file."""
    from graphprune.errors import BadInput
    from graphprune.outputs import MODEL_OUTPUT, check_paths

    source = {"the input model": folder / "cnn.onnx"}
    for outputs in ({MODEL_OUTPUT: "/dev/null"}, {MODEL_OUTPUT: "o.onnx", "--report": "/dev/null"}):
        with pytest.raises(BadInput, match="/dev/null exists and is not a regular file"):
            check_paths(outputs, models=source)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    check_paths({MODEL_OUTPUT: folder / "o.onnx", "--report": folder / "o.html"}, models=source)


def test_a_failed_prune_writes_no_output(folder, capsys, monkeypatch):
    from graphprune import pipeline
    from graphprune.verify import Check, OutputCheck

    failed = Check("zero-then-prune oracle", "cpu", [OutputCheck("y", 1.0, 1.0, False, 1.0)])
    assert not failed.passed
    monkeypatch.setattr(pipeline, "oracle", lambda *args, **kwargs: [failed])
    before = snapshot(folder)
    argv = [
        "prune",
        str(folder / "cnn.onnx"),
        str(folder / "o.onnx"),
        "--plan-out",
        str(folder / "o.json"),
        "--report",
        str(folder / "o.html"),
        "--quiet",
    ]
    assert main(argv) == 1
    assert "not written" in capsys.readouterr().out
    assert snapshot(folder) == before


def test_a_large_model_is_written_with_its_data_file_and_no_temporary(tmp_path, monkeypatch):
    """Past the protobuf limit the weights go to `<name>.data` (threshold lowered to 0 here):
    both files land together and the model reads back whole."""
    from graphprune import load
    from graphprune.outputs import write_model

    monkeypatch.setattr(load, "EXTERNAL_DATA_THRESHOLD", 0)
    original = small_cnn()
    write_model(original, tmp_path / "o.onnx")
    assert sorted(os.listdir(tmp_path)) == ["o.onnx", "o.onnx.data"]
    again = onnx.load(tmp_path / "o.onnx")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in again.graph.initializer}
    for tensor in original.graph.initializer:
        assert np.array_equal(weights[tensor.name], onnx.numpy_helper.to_array(tensor))


def test_temporaries_of_dead_runs_are_removed_and_live_ones_kept(folder, capsys, monkeypatch):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid, live_pid = int(dead.stdout), os.getppid()
    system_tmp = folder / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(system_tmp))
    stale = [folder / f".graphprune-{dead_pid}-abc", system_tmp / f"graphprune-{dead_pid}-q"]
    live = [folder / f".graphprune-{live_pid}-abc", system_tmp / f"graphprune-{live_pid}-q"]
    for path in stale + live:
        path.mkdir()
        (path / "m.onnx").write_bytes(b"partial")
    (folder / f".graphprune-{dead_pid}-x.tmp").write_text("partial")
    stale.append(folder / f".graphprune-{dead_pid}-x.tmp")
    assert main(["prune", str(folder / "cnn.onnx"), str(folder / "o.onnx"), "--quiet"]) == 0
    assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in live)  # another process still running: untouched
    assert not list(system_tmp.glob(f"graphprune-{os.getpid()}-*"))  # our own scratch: gone


# -- 2. every value checked against the model ------------------------------------------------------


def dynamic_two_inputs() -> onnx.ModelProto:
    """y = (a + b) @ W with a, b of shape [n, 8]: a shared symbol."""
    made = model(
        [node("Add", ["a", "b"], ["s"]), node("MatMul", ["s", "w"], ["y"])],
        {"a": ("n", 8), "b": ("n", 8)},
        ["y"],
        {"w": weight(8, 4)},
    )
    return made


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shape", "x:0x16"], "must be integers in 1.."),
        (["--shape", "x:1x3x8x99999999"], "must be integers in 1.."),
        (["--shape", "1x3x8x8"], "an input name, a colon and sizes"),
        (["--shape", "y:1x3x8x8"], "'y', which is not an input"),
        (["--shape", "x:1x3x8"], "rank 3"),
        (["--shape", "x:1x4x8x8"], "expects 3 on axis 1"),
        (["--seed", "-1"], "seed must be an integer in 0..4294967295"),
        (["--seed", str(2**32)], "seed must be an integer in 0..4294967295"),
        (["--seed", "abc"], "'abc' is not an integer"),
        (["--gram-budget", "0"], "positive number of GiB"),
        (["--gram-budget", "nan"], "positive number of GiB"),
        (["--gram-budget", "inf"], "positive number of GiB"),
        (["--ratio", "nan"], "ratio must be in [0, 1)"),
        (["--ratio", "inf"], "ratio must be in [0, 1)"),
        (["--expert-ratio", "nan"], "ratio must be in [0, 1)"),
        (["--round-to", "0"], "must be an integer in 1.."),
        (["--remove-blocks", "-1"], "must be an integer in 0.."),
        (["--inputs", "f64.npz"], "is float64, the model expects float32"),
        (["--inputs", "rank3.npz"], "has rank 3"),
        (["--inputs", "nan.npz"], "non-finite"),
        (["--inputs", "extra.npz"], "has keys ['z'] that are not model inputs"),
        (["--inputs", "broken.npz"], "cannot read --inputs arrays"),
        (["--calib", "nan.npz", "--criterion", "fluctuation"], "non-finite"),
        (["--calib", "inf.npz", "--criterion", "fluctuation"], "non-finite"),
    ],
)
def test_values_that_do_not_fit_are_refused_before_anything_runs(extra, message, folder, capsys):
    x = np.zeros((1, 3, 8, 8), np.float32)
    np.savez(folder / "f64.npz", x=x.astype(np.float64))
    np.savez(folder / "rank3.npz", x=x[0])
    np.savez(folder / "nan.npz", x=np.where(x == 0, np.nan, x))
    np.savez(folder / "inf.npz", x=np.full((4, 3, 8, 8), np.inf, np.float32))
    np.savez(folder / "extra.npz", x=x, z=x)
    (folder / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    before = snapshot(folder)
    argv = ["prune", str(folder / "cnn.onnx"), str(folder / "o.onnx"), "--providers", "cpu"]
    line = refused(argv + [str(folder / a) if a.endswith(".npz") else a for a in extra], capsys)
    assert message in line
    assert snapshot(folder) == before


def test_shapes_are_bounded_in_total_and_consistent_on_shared_symbols(tmp_path, capsys):
    from graphprune.values import check_shapes, free_inputs

    source = tmp_path / "two.onnx"
    onnx.save(dynamic_two_inputs(), source)
    out = str(tmp_path / "o.onnx")
    line = refused(["prune", str(source), out, "--shape", "a:2x8", "--shape", "b:3x8"], capsys)
    assert "share dimension 'n'" in line
    # every group of this model is blocked: --ratio 0 (the reproduce path) accepts the shapes
    agreed = ["--shape", "a:3x8", "--shape", "b:3x8", "--ratio", "0", "--quiet"]
    assert main(["prune", str(source), out, *agreed]) == 0
    capsys.readouterr()
    free = model([node("Relu", ["c"], ["y"])], {"c": ("n", "m")}, ["y"], {})
    onnx.save(free, tmp_path / "free.onnx")
    line = refused(["prune", str(tmp_path / "free.onnx"), out, "--shape", "c:65536x65536"], capsys)
    assert "4,294,967,296 input elements in all, more than 2,147,483,648" in line
    check_shapes(free_inputs(free), {"c": (32768, 65536)})  # 2**31 exactly: allowed


def test_verify_diff_and_bench_check_their_values_too(folder, capsys):
    source = str(folder / "cnn.onnx")
    x = np.zeros((1, 3, 8, 8), np.float32)
    np.savez(folder / "nan.npz", x=np.where(x == 0, np.nan, x))
    assert "non-finite" in refused(
        ["verify", source, source, "--inputs", str(folder / "nan.npz")], capsys
    )
    assert "rank 2" in refused(["diff", source, source, "--shape", "x:1x3"], capsys)
    assert "not an input" in refused(["bench", source, "--shape", "q:1x3x8x8"], capsys)
    assert "must be a finite number" in refused(["verify", source, source, "--rtol", "nan"], capsys)
    np.savez(folder / "ok.npz", x=x + 1)
    assert (
        main(["verify", source, source, "--inputs", str(folder / "ok.npz"), "--providers", "cpu"])
        == 0
    )


# -- 3. quiet failure paths ------------------------------------------------------------------------


def launch(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "graphprune.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the child never got there"
        time.sleep(0.002)


def scratch_folders(base: Path, pid: int | None = None) -> list[str]:
    prefix = f"graphprune-{pid}-" if pid else "graphprune-"
    return [n for n in os.listdir(base) if n.startswith(prefix)]


def test_a_closed_stdout_ends_quietly_with_the_commands_code(folder):
    """`graphprune inspect m.onnx | head -n 1`: the reader is gone before anything is printed."""
    child = launch(["inspect", str(folder / "cnn.onnx")], folder)
    child.stdout.close()  # no reader left: every write to stdout fails with EPIPE
    assert child.wait(60) == 0
    assert child.stderr.read() == ""  # no "BrokenPipeError", no "Exception ignored"


def test_ctrl_c_during_the_imports_at_start_up_is_one_line(folder):
    child = launch(["inspect", str(folder / "cnn.onnx")], folder)

    def importing_numpy() -> bool:  # main runs: it imports numpy after installing its handlers
        try:
            return "numpy" in Path(f"/proc/{child.pid}/maps").read_text()
        except OSError:
            return False

    wait_for(importing_numpy)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert (child.returncode, err, out) == (130, "graphprune: interrupted\n", "")


def test_sigterm_mid_run_is_one_line_and_leaves_no_file(folder):
    """SIGTERM while the oracle runs: exit 143, one line, the error document for --json, and
    neither the scratch folder nor anything in the output folder left (Ctrl-C takes the same
    path: KeyboardInterrupt instead of Terminated)."""
    system_tmp, out = folder / "system-tmp", folder / "out"
    system_tmp.mkdir()
    out.mkdir()
    argv = ["prune", str(folder / "cnn.onnx"), str(out / "o.onnx"), "--json", "--providers", "cpu"]
    child = launch(argv, folder, {"TMPDIR": str(system_tmp)})
    wait_for(lambda: scratch_folders(system_tmp, child.pid))  # the oracle's sessions begin
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=60)
    assert (child.returncode, stderr) == (143, "graphprune: terminated\n")
    assert json.loads(stdout) == {"error": "terminated", "exit": 143}
    assert scratch_folders(system_tmp) == [] and os.listdir(out) == []


def test_a_killed_run_leaves_at_most_a_temporary_that_the_next_run_removes(folder, monkeypatch):
    system_tmp, out = folder / "system-tmp", folder / "out"
    system_tmp.mkdir()
    out.mkdir()
    argv = ["prune", str(folder / "cnn.onnx"), str(out / "o.onnx"), "--providers", "cpu"]
    child = launch(argv, folder, {"TMPDIR": str(system_tmp)})
    wait_for(lambda: scratch_folders(system_tmp, child.pid))
    child.kill()  # SIGKILL: nothing runs after it
    child.communicate(timeout=60)
    left = scratch_folders(system_tmp)
    assert len(left) == 1 and left == scratch_folders(system_tmp, child.pid)
    assert all(name.startswith(".graphprune-") for name in os.listdir(out))
    monkeypatch.setattr("tempfile.tempdir", str(system_tmp))
    assert main([*argv, "--quiet"]) == 0
    assert os.listdir(out) == ["o.onnx"]
    assert scratch_folders(system_tmp) == []  # the killed run's scratch went too


def test_json_errors_are_a_document_on_stdout_as_well(folder, capsys):
    assert main(["inspect", str(folder / "missing.onnx"), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "error": captured.err.strip()[len("graphprune: error: ") :],
        "exit": 2,
    }
    with pytest.raises(SystemExit):
        main(["prune", str(folder / "cnn.onnx"), str(folder / "o.onnx"), "--seed", "-1", "--json"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["exit"] == 2 and len(captured.err.splitlines()) == 1
    assert main(["inspect", str(folder / "cnn.onnx"), "--json"]) == 0
    assert "error" not in json.loads(capsys.readouterr().out)
