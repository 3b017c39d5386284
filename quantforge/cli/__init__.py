"""The command line: a thin typer layer over the library.

Every command module registers itself on ``app`` and imports its library stage lazily,
inside the command function, so that ``quantforge --help`` starts fast. Library errors
(``QuantforgeError``) are caught here, once, and rendered as one line on stderr.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from quantforge.errors import Interrupted, QuantforgeError

app = typer.Typer(
    name="quantforge",
    help=(
        "Declarative GGUF quant recipes: plan exact sizes and hardware fit, build with "
        "llama-quantize, evaluate PPL/KLD and speed, publish to Hugging Face.\n\n"
        "Examples:\n\n"
        "  quantforge demo\n\n"
        "  quantforge recipe show recipes/smollm2-135m.toml\n\n"
        "  quantforge plan recipes/deepseek-r1-0528.toml --quant IQ2_K_R4 --target hw_targets/256gb-24gb.toml --ctx 32768"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_DEBUG = False


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    global _DEBUG
    _DEBUG = debug or _DEBUG


def _register() -> None:
    # Each module adds its commands to ``app``; they import only typer at module level.
    from quantforge.cli import (  # noqa: F401
        cmd_build,
        cmd_demo,
        cmd_eval,
        cmd_fit,
        cmd_inventory,
        cmd_publish,
        cmd_recipe,
        cmd_sensitivity,
        cmd_sweep,
    )


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turn library errors into one line and an exit code."""
    global _DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG = "--debug" in args or os.environ.get("QUANTFORGE_DEBUG") == "1"
    try:
        # Non-standalone typer returns (not raises) typer.Exit codes, and turns an uncaught
        # KeyboardInterrupt into a returned 130: keep both instead of exiting 0.
        rc = app(args=args, prog_name="quantforge", standalone_mode=False)
        if rc == 130:
            print(f"quantforge: error: {Interrupted('interrupted').one_line()}", file=sys.stderr)
        return rc if isinstance(rc, int) else 0
    except QuantforgeError as exc:
        if _DEBUG:
            raise
        print(f"quantforge: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if _DEBUG:
            raise
        print(f"quantforge: error: {Interrupted('interrupted').one_line()}", file=sys.stderr)
        return 130
    except _click_exceptions() as exc:  # usage errors from click/typer
        return _render_click(exc)
    except OSError as exc:
        # A file operation the library did not expect to fail (each known one names its file).
        if _DEBUG:
            raise
        from quantforge.paths import os_error

        err = os_error(exc, exc.filename or "quantforge", action="use")
        print(f"quantforge: error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except RecursionError:
        if _DEBUG:
            raise
        print("quantforge: error: an input is nested too deeply to read (fix the file; --debug shows where)",
              file=sys.stderr)
        return 2
    except MemoryError:
        if _DEBUG:
            raise
        print("quantforge: error: out of memory (free memory or use a smaller input; --debug shows where)",
              file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if _DEBUG:
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"quantforge: error: internal error: {type(exc).__name__}: {text} (this is a bug in quantforge: "
              "run the command again with --debug and report the traceback)", file=sys.stderr)
        return 1


def _click() -> Any:
    # typer >= 0.29 vendors click as typer._click; older typers use the click package.
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def _click_exceptions() -> tuple[type[BaseException], ...]:
    ex = _click()
    return (ex.ClickException, typer.Exit, typer.Abort)


def _render_click(exc: BaseException) -> int:
    ex = _click()
    if isinstance(exc, typer.Exit):
        return int(exc.exit_code or 0)
    if isinstance(exc, typer.Abort):
        print("quantforge: error: aborted", file=sys.stderr)
        return 130
    if type(exc).__name__ == "NoArgsIsHelpError":
        # `quantforge recipe` with no subcommand: the help text is the answer.
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            print(ctx.get_help())
        return 0
    assert isinstance(exc, ex.ClickException)
    msg = exc.format_message().replace("\n", " ")
    ctx = getattr(exc, "ctx", None)
    cmd = f" (see 'quantforge {ctx.command_path.split(' ', 1)[1]} --help')" if ctx and " " in ctx.command_path else ""
    print(f"quantforge: error: {msg}{cmd}", file=sys.stderr)
    return 2 if isinstance(exc, ex.UsageError) else exc.exit_code
