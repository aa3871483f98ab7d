"""Files from outside, read safely, and files we make, written atomically.

Reading: a path is opened without blocking (`O_NONBLOCK`, so a FIFO cannot hang us), must be a regular
file (not a FIFO, a device such as `/dev/zero`, a directory or a socket; symlinks are followed and the
target is what is checked) of at most `max_bytes`, and only the bytes asked for are read. JSON is
parsed with bounded nesting depth and bounded size, refusing number literals that do not fit a float64
(or an integer of more than `MAX_INT_DIGITS` digits), `NaN`/`Infinity`, a key repeated in one object,
non-UTF-8 text and unpaired surrogates. Every failure is raised as the caller's error class (a `HeadhunterError`) naming the file
and what is wrong; nothing of `json`, `os` or `UnicodeDecodeError` escapes.

Writing: `write_atomic` writes a temp file beside the target, fsyncs and renames it over the target, so a
reader never sees half a file and a failed write (full disk, no permission) leaves no temp file and the
previous file untouched. A symlink is written *through*: its target is replaced and the link stays. A
target that exists and is not a regular file (a directory, a FIFO, a device) is refused.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from headhunter.errors import HeadhunterError

#: Deepest JSON nesting we parse (our documents are at most ~6 levels deep).
MAX_JSON_DEPTH = 64
#: Longest integer literal we parse (seeds are 64-bit: 20 digits).
MAX_INT_DIGITS = 40

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


# ----- reading --------------------------------------------------------------------------------------------
class RegularFile:
    """A regular file opened for reading without blocking; `size` from fstat; read exactly what is asked.

    Use as a context manager. Raises `error` (a HeadhunterError subclass) naming `source` when the path
    does not exist, is not a regular file, cannot be read, or is larger than `max_bytes`.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int, error: type[HeadhunterError],
                 what: str = "file") -> None:
        self.source, self.error = str(path), error
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise error(f"{what} {self.source} does not exist") from None
        except OSError as err:
            raise error(f"{what} {self.source} cannot be opened: {err.strerror or err}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise error(f"{what} {self.source} is {_kind(info.st_mode)}, not a regular file; give a file")
            if info.st_size > max_bytes:
                raise error(f"{what} {self.source} is {info.st_size} bytes; at most {max_bytes} bytes are read")
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.size, self.offset = fd, info.st_size, 0

    def read(self, count: int) -> bytes:
        """Exactly `count` bytes from the current offset (fewer only at the end of the file)."""
        chunks, left = [], count
        while left > 0:
            try:
                chunk = os.read(self.fd, min(left, 1 << 20))
            except OSError as err:
                raise self.error(f"{self.source} cannot be read: {err.strerror or err}") from None
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        self.offset += len(data)
        return data

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> RegularFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_regular(path: str | os.PathLike[str], *, max_bytes: int, error: type[HeadhunterError],
                 what: str = "file") -> bytes:
    """The whole of a regular file of at most `max_bytes` (see `RegularFile`)."""
    with RegularFile(path, max_bytes=max_bytes, error=error, what=what) as handle:
        return handle.read(handle.size)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


class _BadNumber(ValueError):
    """A JSON value we refuse (a number out of range, a repeated key)."""


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _BadNumber(f"an integer literal of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:40]} overflows a float64")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _BadNumber(f"the key {key[:60]!r} twice in one object (which one counts would be a guess)")
        out[key] = value
    return out


def _parse_constant(text: str) -> float:
    raise _BadNumber(f"{text} (JSON has no NaN or Infinity; numbers must be finite)")


def json_depth(data: bytes) -> int:
    """Deepest nesting of arrays/objects in JSON bytes, not counting brackets inside strings (vectorised)."""
    import numpy as np  # here, not at module level: listing presets and --help never need numpy

    stripped = np.frombuffer(_STRING.sub(b"", data), dtype=np.uint8)
    if stripped.size == 0:
        return 0
    step = (np.isin(stripped, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(stripped, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(step).max(initial=0))


def parse_json(data: bytes | str, *, source: str, error: type[HeadhunterError], what: str = "JSON",
               max_bytes: int = 64 * 1024 * 1024, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON from outside: UTF-8, at most `max_bytes` and `max_depth` deep, finite numbers only.

    Raises `error` naming `source` for anything else (never JSONDecodeError, RecursionError, ValueError,
    OverflowError or UnicodeDecodeError).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise error(f"{source}: {what} is {len(raw)} bytes; at most {max_bytes} are read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{source}: {what} is not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r})") from None
    depth = json_depth(raw)
    if depth > max_depth:
        raise error(f"{source}: {what} is nested {depth} levels deep; at most {max_depth} are allowed")
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant,
                           object_pairs_hook=_unique_keys)
    except _BadNumber as err:
        raise error(f"{source}: {what} holds {err}") from None
    except json.JSONDecodeError as err:
        raise error(f"{source}: {what} is not JSON ({err})") from None
    except RecursionError:  # pragma: no cover - json_depth bounds the nesting first
        raise error(f"{source}: {what} is nested too deeply") from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{source}: {what} holds a string with an unpaired surrogate escape (\\ud800-\\udfff)") from None
    return value


def read_json(path: str | os.PathLike[str], *, max_bytes: int, error: type[HeadhunterError],
              what: str = "JSON file", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`read_regular` then `parse_json`: a JSON file from outside, checked before it is trusted."""
    data = read_regular(path, max_bytes=max_bytes, error=error, what=what)
    return parse_json(data, source=str(path), error=error, what="its content", max_bytes=max_bytes,
                      max_depth=max_depth)


# ----- prompt files ----------------------------------------------------------------------------------------
#: Largest prompt file read (10,000 prompts of 400 bytes).
MAX_PROMPT_FILE_BYTES = 4 * 1024 * 1024
#: Most prompts one file may hold (non-empty lines).
MAX_PROMPTS = 10_000
#: Longest prompt, in UTF-8 bytes (T5's 512 tokens are well under 4 kB of text).
MAX_PROMPT_BYTES = 4096

_PROMPT_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def check_prompt(text: str, where: str, error: type[HeadhunterError], *, allow_blank: bool = False) -> str:
    """One prompt, checked: at most MAX_PROMPT_BYTES of UTF-8, no NUL or other control character (a tab is
    allowed), not blank unless `allow_blank` (an empty prompt given on purpose). Returns it stripped; raises
    `error` naming `where` and what is wrong."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_PROMPT_BYTES:
        raise error(f"{where} is {size} bytes long; a prompt is at most {MAX_PROMPT_BYTES} bytes")
    bad = _PROMPT_CONTROL.search(text)
    if bad is not None:
        what = "a NUL byte" if bad.group() == "\x00" else f"the control character {bad.group()!r}"
        raise error(f"{where} holds {what} at character {bad.start() + 1}; prompts are plain text (tabs allowed)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{where} holds an unpaired surrogate; prompts are UTF-8 text") from None
    if not text.strip() and not allow_blank:
        raise error(f"{where} is blank; give some text")
    return text.strip()


def read_prompt_file(path: str | os.PathLike[str], *, error: type[HeadhunterError]) -> list[str]:
    """The prompts of a prompt file (`--prompt @FILE`): one per non-empty line, each `check_prompt`-ed.

    The file must be a regular UTF-8 file of at most MAX_PROMPT_FILE_BYTES with at most MAX_PROMPTS prompts;
    a line of NUL bytes, a 16 MiB line or a million lines is `error` naming the file (and the line), before
    anything is generated. Lines end at LF (a CR before it is dropped); blank lines are skipped.
    """
    data = read_regular(path, max_bytes=MAX_PROMPT_FILE_BYTES, error=error, what="prompt file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"prompt file {path} is not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r})") from None
    prompts: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if len(prompts) == MAX_PROMPTS:
            raise error(f"prompt file {path} holds more than {MAX_PROMPTS} prompts; at most {MAX_PROMPTS} are read")
        prompts.append(check_prompt(line, f"prompt file {path}, line {number},", error))
    if not prompts:
        raise error(f"prompt file {path} holds no prompts (every line is blank)")
    return prompts


# ----- writing --------------------------------------------------------------------------------------------
def write_target(path: str | os.PathLike[str]) -> Path:
    """Where a write to `path` lands: a symlink's final target (written through), else `path` itself.

    Raises OSError(EEXIST-like) via `NotRegularFileError` if that target exists and is not a regular file.
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFileError(errno.EEXIST, f"{_kind(info.st_mode)} is there; refusing to replace it", str(path))
    return target


class NotRegularFileError(OSError):
    """A write was asked to replace something that is not a regular file."""


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to a temp file beside the target, fsync, then rename: readers never see half a file.

    A symlink is written through (its target is replaced, the link stays); an existing target that is
    not a regular file raises `NotRegularFileError` (an OSError). On any failure (e.g. ENOSPC) the temp
    file is removed and the previous file is untouched; the OSError propagates.
    """
    target = write_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        if fd != -1:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None and err.strerror is not None:
            err.filename = str(path)  # so the message names the file being written
        raise
