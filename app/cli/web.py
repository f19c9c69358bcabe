"""The `web` command: the operator console. Its stack (jinja2, waitress) is imported only when it runs, so the
consumer and `nightshift submit` never load it, and it is an optional extra (`pip install 'nightshift[web]'`)."""
from __future__ import annotations

import click

from app.cli.root import main
from app.cli.common import EXIT_FAILED, EXIT_USAGE, NAME, PORT, fail


@main.command()
@click.option("--bind", type=NAME, default="127.0.0.1", show_default=True, help="Address to listen on (beyond loopback only "
              "with NIGHTSHIFT_WEB_TOKEN set).")
@click.option("--port", type=PORT, default=8080, show_default=True)
@click.pass_obj
def web(settings, bind, port):
    """Serve the operator console (overview, jobs, actions, schedule, JSON API) until SIGTERM or Ctrl-C."""
    try:
        from app.web import server
    except ImportError as exc:
        fail(f"the console needs its extra: pip install 'nightshift[web]' ({exc})", EXIT_USAGE)
    try:
        server.check_bind(bind, settings)
    except server.Refused as exc:
        fail(str(exc), EXIT_USAGE)

    def ready(srv) -> None:
        mode = ("token required" if settings.web_token else "no token: loopback only") + (
            ", read-only" if settings.web_readonly else "")
        host = f"[{bind}]" if ":" in bind else bind
        click.echo(f"nightshift: serving the console on http://{host}:{srv.effective_port}/ ({mode})", err=True)

    try:
        server.serve(bind, port, settings, on_ready=ready)
    except OSError as exc:
        fail(f"cannot listen on {bind}:{port}: {exc.strerror or exc}", EXIT_FAILED)
