"""Outputs: where graphprune may write, how it writes, and where its temporary files live.

Every output path (the pruned model, its `<name>.data` file, `--plan-out`, `--report`,
`diff --html`) is checked before anything runs: its folder must exist and be writable, it must
not be a folder itself (`out/` is refused: name the file), an existing target must be a regular
file (never a FIFO or a device such as /dev/null), and it must differ from every input file
(the model, its external data files, --plan, --inputs, --calib) and from every other output,
compared after resolving links and by inode. A clash is one line naming both paths (exit 2).

Writes are atomic: a temporary `.graphprune-<pid>-*` entry in the output's own folder, renamed
over the target with os.replace. A run killed with SIGKILL can leave such an entry behind; the
next run that writes into that folder removes entries whose process is gone. onnxruntime's
session models go to one process-wide scratch folder (`graphprune-<pid>-*` in the system temp
folder), removed at exit and on SIGTERM (see cli.main), and by the next run if SIGKILL left it.
"""

from __future__ import annotations

import atexit
import mmap
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from graphprune.errors import BadInput

MODEL_OUTPUT = "the output model"  # the output label whose `<name>.data` is an output too
OUTPUT_TEMP = ".graphprune-"  # beside an output, while it is written
SCRATCH_TEMP = "graphprune-"  # in the system temp folder, for the whole run
# protobuf's encoding of an external-data key: field 1 (tag 0x0a), 8 bytes, "location"
LOCATION_KEY = b"\x0a\x08location"

PathLike = str | os.PathLike


# -- checks before anything runs ---------------------------------------------------------------


def check_paths(
    outputs: Mapping[str, PathLike | None],
    models: Mapping[str, PathLike | None] | None = None,
    inputs: Mapping[str, PathLike | None] | None = None,
) -> None:
    """Refuse (BadInput) outputs that cannot be written safely; see the module docstring.

    Each mapping goes from a label ("--plan-out", "the input model") to a path, or None when
    not given. `models` are input models: their external data files are inputs too. The
    output labelled MODEL_OUTPUT also writes `<name>.data` when it is too large for one
    protobuf, so that path is checked as an output as well. Temporaries that killed runs left
    in the output folders are removed on the way."""
    read = [(label, Path(p)) for label, p in (inputs or {}).items() if p is not None]
    for label, path in (models or {}).items():
        if path is None:
            continue
        read.append((label, Path(path)))
        read += [(f"the external data of {label}", f) for f in external_data_files(path)]
    written: dict[str, Path] = {}
    for label, path in outputs.items():
        if path is None:
            continue
        _check_target(label, path)
        written[label] = Path(path)
        remove_stale(Path(path).parent, OUTPUT_TEMP)  # a killed run's, even if this one fails
        if label == MODEL_OUTPUT:
            written["the output model's external data"] = Path(f"{path}.data")
    for out_label, out_path in written.items():
        for in_label, in_path in read:
            if _same_file(out_path, in_path):
                raise BadInput(
                    f"{out_label} {out_path} is {in_label} {in_path}; graphprune never "
                    "overwrites its input: choose another output path"
                )
    labels = list(written)
    for i, first in enumerate(labels):
        for second in labels[i + 1 :]:
            if _same_file(written[first], written[second]):
                raise BadInput(
                    f"{first} {written[first]} and {second} {written[second]} are the same "
                    "file: give each output its own path"
                )


def _check_target(label: str, path: PathLike) -> None:
    text = os.fspath(path)
    if "\0" in text or not text:
        raise BadInput(f"{label} {text!r} is not a usable file name")
    target = Path(text)
    if text.endswith(("/", os.sep)) or target.is_dir():
        raise BadInput(
            f"{label} {text} is a folder: name the file to write, e.g. "
            f"{os.path.join(text, 'pruned.onnx' if 'model' in label else 'out')}"
        )
    folder = target.parent
    if not folder.is_dir():
        raise BadInput(f"{label} {text}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"{label} {text}: cannot write into folder {folder} (permission denied)")
    try:
        mode = os.stat(target).st_mode  # follows links: what a write would reach
    except FileNotFoundError:
        return
    except OSError as err:
        raise BadInput(f"{label} {text} cannot be examined ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise BadInput(
            f"{label} {text} exists and is not a regular file ({_kind(mode)}); graphprune "
            "replaces only regular files: choose a file path"
        )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def _same_file(first: Path, second: Path) -> bool:
    """The same path once links are resolved, or the same inode (hard links, bind mounts)."""
    try:
        if first.resolve() == second.resolve():
            return True
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
        if os.path.abspath(first) == os.path.abspath(second):
            return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist yet
        return False


def external_data_files(model_path: PathLike) -> list[Path]:
    """The external data files `model_path` names (resolved against its folder; unchecked:
    the loader refuses bad ones). A model without the protobuf bytes of a `location` key
    is not parsed at all, so an inline model costs one scan of its bytes."""
    path = Path(model_path)
    try:
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m,
        ):
            if m.find(LOCATION_KEY) < 0:
                return []
    except (OSError, ValueError):  # missing, unreadable, empty: the loader says so
        return []
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    try:
        model = onnx.load(str(path), load_external_data=False)
        locations = {
            entry.value
            for tensor in _get_all_tensors(model)
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    except Exception:  # not a model the loader accepts: it refuses it with its own line
        return []
    return sorted(path.parent / location for location in locations if location)


# -- atomic writes ---------------------------------------------------------------------------------


def write_text(path: PathLike, text: str) -> int:
    """Write `text` (UTF-8) to `path` atomically; returns the bytes written. The file gets the
    permissions a plain open would give (0666 less the umask)."""
    target = Path(path)
    remove_stale(target.parent, OUTPUT_TEMP)
    data = text.encode("utf-8")
    temporary = target.parent / f"{OUTPUT_TEMP}{os.getpid()}-{os.urandom(4).hex()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return len(data)


def write_model(model, path: PathLike, check: bool = True) -> int:
    """Write an onnx ModelProto to `path` atomically (graphprune.load.save, inside a temporary
    folder of this process beside `path`), its `<name>.data` first when it has one; returns
    the bytes written."""
    from graphprune import load as loading

    target = Path(path)
    remove_stale(target.parent, OUTPUT_TEMP)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=_temp_prefix(OUTPUT_TEMP)) as tmp:
        staged = Path(tmp) / target.name
        written = loading.save(model, staged, check=check)
        data = staged.with_name(staged.name + ".data")
        if data.exists():
            os.replace(data, target.with_name(data.name))
        os.replace(staged, target)
    return written


# -- temporary files ---------------------------------------------------------------------------


def _temp_prefix(kind: str) -> str:
    return f"{kind}{os.getpid()}-"


_STALE = re.compile(r"^\.?graphprune-(\d+)-")


def remove_stale(folder: PathLike, kind: str) -> None:
    """Remove `kind` temporaries in `folder` left by processes that no longer exist (a run
    killed with SIGKILL cannot clean up after itself). Only our own entries are touched."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        found = _STALE.match(entry.name)
        if not found or not entry.name.startswith(kind) or _alive(int(found.group(1))):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            continue  # another run removed it first


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


_scratch: dict[int, Path] = {}  # pid -> this process's scratch folder


def scratch() -> Path:
    """This process's scratch folder for session models (created on first use, removed at
    exit by `remove_scratch`)."""
    pid = os.getpid()
    if pid not in _scratch or not _scratch[pid].is_dir():  # gone: another cleaner took it
        base = tempfile.gettempdir()
        remove_stale(base, SCRATCH_TEMP)
        _scratch[pid] = Path(tempfile.mkdtemp(prefix=_temp_prefix(SCRATCH_TEMP), dir=base))
    return _scratch[pid]


def remove_scratch() -> None:
    """Remove this process's scratch folder. By name, not only the one `scratch` recorded:
    a signal can arrive between creating the folder and recording it."""
    pid = os.getpid()
    _scratch.pop(pid, None)
    base = tempfile.gettempdir()
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(_temp_prefix(SCRATCH_TEMP)) and entry.is_dir(
            follow_symlinks=False
        ):
            shutil.rmtree(entry.path, ignore_errors=True)


atexit.register(remove_scratch)  # a no-op in a process that never made one
