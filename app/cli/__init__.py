"""`decision-service`: serve the API and operate the service from the command line.

The top layer: it may import every layer below it. `main` (the entry point,
`app.cli:main`) is the command group; each module adds its commands to it: `serve`
(serve, worker, echo-executor), `config`, `rules`, `policy`, `keys`, `decisions`, `parked`
(actions, triggers) and `replay`; `common` holds what they share.
"""

from __future__ import annotations

import click

from app.shared.config import Settings
from app.shared.errors import ConfigurationError

from . import config, decisions, keys, parked, policy, replay, rules, serve

# Commands that run until stopped: their INFO lines (what was loaded, started, decided)
# are what an operator watches. The others log warnings and errors only, unless asked.
_LONG_RUNNING = ("serve", "worker")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="log info and debug messages too")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Rule-engine decision service with OPA governance."""
    from app.shared.logs import configure

    try:
        settings = Settings.load()
        log_format, level = settings.log_format, settings.log_level
    except ConfigurationError:
        log_format, level = "json", None  # the command itself reports the bad setting
    if verbose:
        level = "DEBUG"
    elif level is None:
        level = "INFO" if ctx.invoked_subcommand in _LONG_RUNNING else "WARNING"
    configure(log_format, level=level)


main.add_command(config.config)
main.add_command(serve.serve)
main.add_command(serve.echo_executor)
main.add_command(serve.worker)
main.add_command(rules.rules)
main.add_command(policy.policy)
main.add_command(keys.keys)
main.add_command(decisions.decisions)
main.add_command(parked.actions)
main.add_command(parked.triggers)
main.add_command(replay.replay)
