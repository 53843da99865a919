"""What every `openaim` command shares: --config/--set/--debug, one-line errors, exit codes.

Stage CLIs import only this and typer at module level, so `openaim --help` never imports torch; for the
same reason this module imports rich and the config loader inside the functions that use them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shared.errors import OpenAIMError

if TYPE_CHECKING:  # the config module imports pydantic: loaded by run_with_config only
    from shared.config.root import OpenAIMConfig

ConfigOpt = Annotated[Path | None,
                      typer.Option("--config", "-c", help="YAML config (default: configs/demo.yaml)")]
SetOpt = Annotated[list[str] | None,
                   typer.Option("--set", "-s", help="override a key: --set training.steps=100")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show full tracebacks")]


def say(label: str, style: str, text: object, stderr: bool = False) -> None:
    """Print ``label`` in ``style`` then ``text`` as plain text: square brackets in a message or a path
    (gloo's ``[/__w/.../pair.cc:561]``, ``[bold]``) are printed as they are, never read as rich markup."""
    from rich.console import Console
    from rich.text import Text

    line = Text.assemble((label, style), " ", str(text))
    Console(stderr=stderr, highlight=False, soft_wrap=True).print(line)


def fail(message: str, code: int = 1) -> None:
    """Print one line to stderr and exit."""
    say("error:", "bold red", message, stderr=True)
    sys.exit(code)


def setup_logging(debug: bool = False) -> None:
    from rich.logging import RichHandler

    # Libraries (open_clip, faiss, img2dataset) log chatty INFO lines on the root logger: show only their
    # warnings, and our own "openaim.*" loggers at INFO (DEBUG with --debug).
    # On a terminal, rich's columns; in a plain log (pipe, file, scheduler), one unwrapped line per record
    # (rich would wrap at 80 columns), so a log line stays one line for people and for grep.
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(show_path=debug, rich_tracebacks=debug, markup=False)
        fmt, datefmt = "%(message)s", "[%X]"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt, datefmt = "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"
    logging.basicConfig(level=logging.WARNING, format=fmt, datefmt=datefmt, handlers=[handler], force=True)
    logging.getLogger("openaim").setLevel(logging.DEBUG if debug else logging.INFO)


def show_hidden_causes(exc: BaseException) -> None:
    """Undo ``raise ... from None`` along the chain, so that --debug's traceback shows what went wrong
    underneath (the one-line message hides it; Python keeps it in ``__context__``)."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        node.__suppress_context__ = False
        node = node.__cause__ or node.__context__


def guarded(fn: Callable[[], Any], debug: bool) -> Any:
    """Run a command body: user errors become one line; unexpected ones too, unless --debug."""
    try:
        return fn()
    except OpenAIMError as exc:
        if debug:
            show_hidden_causes(exc)
            raise
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        fail(f"{type(exc).__name__}: {first} (rerun with --debug for the traceback)", 1)


def run_with_config(body: Callable[[OpenAIMConfig], Any], config: Path | None, overrides: list[str] | None,
                    debug: bool) -> Any:
    """Validate the whole config up front (writing nothing on error), then run ``body(cfg)``."""
    from shared.config.loading import load_config

    setup_logging(debug)

    def _run() -> Any:
        cfg = load_config(config, overrides or [])
        return body(cfg)

    return guarded(_run, debug)
