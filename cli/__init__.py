"""The `headhunter` command line: a click group built by `make_cli(pm)`; every command comes from a plugin.

Built-in commands live one module per verb in this package and are added through the same
`register_commands` hook that third-party plugins use (see headhunter.cli.commands). One CLI, one
registry: every command runs with the registry built from the plugin manager `make_cli(pm)` was given as
the process-wide one (`headhunter.plugin_system.registry.use_registry`), so `get_registry()` and every library call a
command makes see exactly those plugins. Building the CLI imports neither torch nor diffusers.

Errors: a user mistake never prints a traceback. A usage error (bad option, value out of range) prints
click's usage line and one `Error: ...` line and exits with 2; a failure (a HeadhunterError, a pydantic
validation error, an OSError such as a read-only folder or a full disk) prints one `Error: ...` line and
exits with 1; an unexpected exception (a bug) prints one `Error: internal error ...` line and exits with 1.
`--debug` (or HEADHUNTER_DEBUG=1) prints the traceback as well, and the import-time log lines of optional
quantization backends (`QUIET_LOGGERS`), which are held back otherwise. Every `Error:`/`Warning:` line passes
`headhunter.format.text.safe_line` (a message may quote text from a file, the Hub or a plugin). Warnings print as one `Warning: ...` line
(Python's own format, with the source line, under `--debug`).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
import warnings
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads made sampling up to
# 60x slower next to one other busy process, at no measurable cost when the machine is quiet. Must be set
# before torch is first imported (the package root does not import torch).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click
import pluggy

from headhunter._version import __version__
from headhunter.errors import HeadhunterError
from headhunter.format.text import safe_line


#: Environment variable that turns on tracebacks (like `--debug`).
DEBUG_ENV = "HEADHUNTER_DEBUG"
#: Exit codes: click's usage errors are 2; every other failure is 1.
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130


_debug_flag = False
#: The output folder of the resumable run in progress (`hunt`/`atlas --out`), for the interrupted message.
_resumable: str | None = None


def note_resumable(out_dir: Any) -> None:
    """Called by a command whose work is checkpointed in `out_dir`: Ctrl-C then says that rerunning resumes."""
    global _resumable
    _resumable = str(out_dir)


def interrupted_message() -> str:
    """The one line printed for Ctrl-C: that the run was interrupted and, for a checkpointed run, that the
    same command resumes it."""
    if _resumable is None:
        return "interrupted"
    return (f"interrupted; rerun the same command to resume: finished batches are kept in {_resumable}/state.json "
            "(--no-resume starts over)")


def debug_enabled() -> bool:
    """Whether tracebacks are shown: `--debug` was given or HEADHUNTER_DEBUG is set to a true value."""
    return _debug_flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def error_line(err: BaseException) -> str:
    """One line describing a failure for the user (newlines folded, the path named for OSErrors)."""
    if isinstance(err, OSError) and not isinstance(err, HeadhunterError):
        what = err.strerror or str(err)
        where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        text = f"{where}: {what}" if where else what
        text += _OS_HINTS.get(err.errno, "")
    elif _is_validation_error(err):
        first = err.errors()[0]  # type: ignore[attr-defined]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "value"
        text = f"{loc}: {first['msg']} (got {first.get('input')!r})"
    else:
        text = str(err) or type(err).__name__
    return safe_line(" ".join(text.split()))  # a message may quote text from a file or a plugin


#: What to do about an OSError that means the disk, not the input: a run with an out folder resumes.
_OS_HINTS = {
    errno.ENOSPC: "; free some space, then rerun the same command (a run with --out resumes from its checkpoint)",
    errno.EDQUOT: "; free some space, then rerun the same command (a run with --out resumes from its checkpoint)",
    errno.EROFS: "; the folder is on a read-only file system: pass an --out folder you can write to",
}


def _is_validation_error(err: BaseException) -> bool:
    module = sys.modules.get("pydantic")
    return module is not None and isinstance(err, module.ValidationError)


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings print as one `Warning: ...` line (no source line); `--debug` keeps Python's format."""
    click.echo(f"Warning: {safe_line(' '.join(str(message).split()))}", err=True)


#: Loggers of optional quantization backends whose import-time chatter reaches every command once they are
#: installed (diffusers imports them when it loads a model): e.g. bitsandbytes' "Failed to load CPU
#: gemm_4bit_forward from kernels-community ... Set trust_remote_code=True", torchao's "Failed to load
#: _C_cutlass_90a.abi3.so", diffusers' "Unable to import `torchao` Tensor objects", torch's pytree notes on
#: the Enum constants torchao registers, the `kernels` package's Hub look-up for bitsandbytes. Nothing in them
#: is about the command, and they broke the one-Error-line promise; below ERROR they print only under `--debug`.
QUIET_LOGGERS = ("bitsandbytes", "torchao", "diffusers.quantizers", "torch.utils._pytree", "kernels")


def _quiet_backends(quiet: bool) -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.NOTSET)


def _close_progress_bars() -> None:
    """Close every open tqdm bar (a failure mid-run leaves the search's or the atlas's bar open), so the
    `Error:` line starts on a line of its own and no bar is redrawn after it."""
    module = sys.modules.get("tqdm.std")
    if module is None:
        return
    for bar in list(getattr(module.tqdm, "_instances", ())):
        bar.close()


def _fail(err: BaseException, message: str, code: int) -> None:
    _close_progress_bars()
    if debug_enabled():
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """The CLI group: runs a command and turns every failure into one `Error:` line and an exit code.

    Exit codes: 0 success, 2 usage error (click), 1 any other failure, 130 interrupted. Tracebacks
    only with `--debug` or HEADHUNTER_DEBUG=1.
    """

    pm: pluggy.PluginManager
    _registry: Any = None

    @property
    def registry(self) -> Any:
        """The `Registry` of this CLI's plugin manager, built on first use (once per CLI)."""
        if self._registry is None:
            from headhunter.plugin_system.registry import Registry

            self._registry = Registry(self.pm)
        return self._registry

    def invoke(self, ctx: click.Context) -> Any:
        from headhunter.plugin_system.registry import use_registry

        with use_registry(self.registry):
            return super().invoke(ctx)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        global _debug_flag, _resumable
        _debug_flag, _resumable = False, None
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        _quiet_backends(not debug_enabled())
        try:
            with warnings.catch_warnings():
                if not debug_enabled():
                    warnings.showwarning = _warning_line
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort as err:  # click turns Ctrl-C (KeyboardInterrupt) into Abort
            ctrl_c = isinstance(err.__cause__ or err.__context__, KeyboardInterrupt)
            _fail(err, interrupted_message() if ctrl_c else "aborted", EXIT_INTERRUPTED)
        except KeyboardInterrupt as err:
            _fail(err, interrupted_message(), EXIT_INTERRUPTED)
        except click.ClickException as err:  # usage errors (2) and ClickExceptions raised by commands (1)
            if debug_enabled():
                traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
            err.message = safe_line(" ".join(str(err.message).split()))
            err.show()
            sys.exit(err.exit_code)
        except (HeadhunterError, OSError) as err:
            _fail(err, error_line(err), EXIT_FAILURE)
        except Exception as err:  # noqa: BLE001 - last resort: a bug still gets one line, not a traceback
            if _is_validation_error(err):
                _fail(err, error_line(err), EXIT_FAILURE)
            _fail(err, f"internal error ({type(err).__name__}: {error_line(err)[:300]}); rerun with --debug "
                       f"(or {DEBUG_ENV}=1) for the traceback and report it", EXIT_FAILURE)
        sys.exit(code if isinstance(code, int) else 0)


def current_registry() -> Any:
    """The registry of the CLI whose command is running (for commands that want it explicitly)."""
    return click.get_current_context().find_root().command.registry


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    global _debug_flag
    _debug_flag = _debug_flag or value
    if _debug_flag:
        _quiet_backends(False)


def make_cli(pm: pluggy.PluginManager | None = None) -> click.Group:
    """Build the CLI group with the commands of every registered plugin (default: all installed)."""
    from headhunter.plugin_system.registry import get_plugin_manager

    pm = pm if pm is not None else get_plugin_manager()

    @click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "obj": pm})
    @click.version_option(__version__, prog_name="headhunter")
    @click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                  help=f"Show the Python traceback of a failure (also {DEBUG_ENV}=1).")
    def cli() -> None:
        """Find, store, share and apply head-level perturbation guidance (HeadHunter, SoftPAG)
        for diffusion transformers: SD3/SD3.5, FLUX.1, FLUX.2, Qwen-Image, Wan 2.x, the embedded
        digits demo model, and any an adapter plugin adds."""

    cli.pm = pm
    pm.hook.register_commands(cli=cli)
    return cli


def main() -> None:
    """Console-script entry point."""
    make_cli()(prog_name="headhunter")
