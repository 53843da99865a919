"""`openaim web generate` and `openaim web serve`. Only typer/stdlib/shared.cli_common at module level."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.cli_common import ConfigOpt, DebugOpt, SetOpt, run_with_config

if TYPE_CHECKING:  # pydantic is loaded by the commands' bodies only
    from shared.config.root import OpenAIMConfig
    from shared.config.web import WebConfig

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The mini web: a synthetic, deterministic Common Crawl slice with known ground truth.")

OutArg = Annotated[Path | None, typer.Argument(help="output folder (default: <workdir>/web)")]
NImagesOpt = Annotated[int | None,
                       typer.Option("--n-images", help="distinct web images (default: web.n_images)")]
SkipOpt = Annotated[bool, typer.Option("--skip-if-done", help="do nothing if OUT already holds this web")]


def _with_flags(web: WebConfig, **flags) -> WebConfig:
    """The web section with the command-line flags that were given (they override the config file and
    --set)."""
    given = {k: v for k, v in flags.items() if v is not None}
    return web.model_validate({**web.model_dump(), **given}) if given else web


@app.command()
def generate(
    out: OutArg = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: web.seed)")] = None,
    n_images: NImagesOpt = None,
    port: Annotated[int | None, typer.Option(help="port baked into the URLs (default: web.port)")] = None,
    skip_if_done: SkipOpt = False,
    config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False,
) -> None:
    """Generate the mini web: pages, images, WARC/WAT, truth.parquet, hq shards, benchmark sets."""

    def body(cfg: OpenAIMConfig) -> None:
        from pydantic import ValidationError

        from shared.errors import ConfigError
        from shared.miniweb.generate import generate_web

        try:
            web = _with_flags(cfg.web, seed=seed, n_images=n_images, port=port)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"web.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        target = out or cfg.web_dir
        manifest = generate_web(web, target, skip_if_done=skip_if_done)
        counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
        typer.echo(f"mini web (seed {web.seed}) at {target}: {manifest['n_links']} links on "
                   f"{manifest['n_pages']} pages ({counts}); serve with `openaim web serve {target}`")

    run_with_config(body, config, set_, debug)


@app.command()
def serve(
    out: OutArg = None,
    port: Annotated[int | None, typer.Option(help="port (default: the one baked into OUT's URLs)")] = None,
    host: Annotated[str | None, typer.Option(help="address to bind (default: web.host)")] = None,
    config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False,
) -> None:
    """Serve a generated mini web in the foreground until Ctrl-C."""

    def body(cfg: OpenAIMConfig) -> None:
        import json
        import logging
        import time

        from shared.miniweb.server import serve_in_background

        target = out or cfg.web_dir
        baked: dict = {}
        try:
            baked = json.loads((Path(target) / "manifest.json").read_text())["config"]
        except (OSError, ValueError, KeyError):
            pass  # serve_in_background says what is missing
        bind_port = port if port is not None else baked.get("port", cfg.web.port)
        bind_host = host or baked.get("host", cfg.web.host)
        if "port" in baked and bind_port != baked["port"]:
            logging.getLogger("openaim.web").warning(
                "serving on port %d but the pages' URLs point at port %d", bind_port, baked["port"])
        with serve_in_background(target, host=bind_host, port=bind_port) as server:
            typer.echo(f"serving {target} at {server.base_url}/ (Ctrl-C to stop)")
            try:
                while True:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                typer.echo("stopped")

    run_with_config(body, config, set_, debug)
