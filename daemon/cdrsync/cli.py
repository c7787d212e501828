"""Command line: run, demo, backfill, status, doctor, check-config, migrate, simulate.

Exit codes: 0 done; 1 failed (the message says why); 2 bad usage; 75 temporarily impossible (try
again later); 78 bad configuration (systemd's ``RestartPreventExitStatus=78`` keeps a broken
file from restart-looping); 130 stopped by Ctrl-C (SIGINT; SIGTERM still exits 0).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import structlog

from cdrsync import __version__
from cdrsync.errors import CdrsyncError, ConfigError, TransientError

EX_OK, EX_FAIL, EX_USAGE, EX_TEMPFAIL, EX_CONFIG = 0, 1, 2, 75, 78
EX_INTERRUPTED = 130
"""128 + SIGINT: what shells report for a command the user stopped with Ctrl-C, so a script
running cdrsync stops too instead of treating it as done (0) or worth retrying (75)."""
LOG_LEVELS = ("debug", "info", "warning", "error")
ONE_SHOT_PATIENCE = 15.0
"""Seconds `status` and `migrate` wait for an unreachable database before exiting 75."""
SIMULATED_VENDORS = ("acefone", "ozonetel", "vcclive")

log = structlog.get_logger("cdrsync")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date in the form YYYY-MM-DD, like 2026-10-01"
        ) from None


class _Help(argparse.HelpFormatter):
    """``--help`` shows each option's default, unless it has none or its text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
            or "default" in text
        ):
            return action.help
        return f"{text} (default: %(default)s)".lstrip()


def parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser (also documents every command in ``--help``). ``--config`` is
    required unless ``$CDRSYNC_CONFIG`` (in ``environ``, default the process's) names the file."""
    env_config = (os.environ if environ is None else environ).get("CDRSYNC_CONFIG") or None
    top = argparse.ArgumentParser(
        prog="cdrsync",
        description="Keeps PostgreSQL in step with telephony vendors' call detail records.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad usage, 75 try again later, 78 bad config, "
        "130 stopped by Ctrl-C.",
        formatter_class=_Help,
    )
    top.add_argument("--version", action="version", version=f"cdrsync {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Help)
        if config:
            p.add_argument(
                "--config",
                metavar="PATH",
                required=env_config is None,
                default=env_config,
                help=f"TOML configuration file (default: $CDRSYNC_CONFIG, now {env_config})"
                if env_config
                else "TOML configuration file (required unless $CDRSYNC_CONFIG names it)",
            )
        return p

    run = command("run", "run the daemon until SIGTERM")
    run.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="log this level and above, overriding daemon.log_level of the file",
    )
    command("migrate", "bring the database schema up to date")
    command("check-config", "validate the configuration and print it with secrets masked")
    status = command("status", "show every stream's watermark, lag, last success and error")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    doctor = command(
        "doctor",
        "probe each account with a few requests from its own rate budget: which reading of "
        "the vendor's docs it follows, and whether the sync will work (exit 1 when not)",
    )
    doctor.add_argument(
        "--account", metavar="NAME", help="only this account (default: every account)"
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    bf = command("backfill", "sync one account's calls over a date range, resumably")
    bf.add_argument("--account", required=True, help="account name from the configuration")
    bf.add_argument(
        "--since",
        required=True,
        type=_date,
        metavar="YYYY-MM-DD",
        help="first day, in the account's time zone, e.g. 2026-10-01",
    )
    bf.add_argument(
        "--until",
        type=_date,
        metavar="YYYY-MM-DD",
        help="the day after the last one, in the account's time zone (default: up to now)",
    )
    demo = command(
        "demo",
        "the three vendor simulators + embedded PostgreSQL + daemon, with a live summary",
        config=False,
    )
    demo.add_argument(
        "--duration", type=float, default=60.0, help="seconds to run (0: until Ctrl-C)"
    )
    demo.add_argument("--state-dir", help="keep the demo database here (default: a temporary dir)")
    demo.add_argument(
        "--records",
        type=int,
        default=5000,
        help="Acefone's simulated backlog (Ozonetel and VCC Live get a tenth each)",
    )
    demo.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="warning",
        help="the daemon's log lines shown between the summaries (default: warning)",
    )
    sim = command("simulate", "run one vendor's simulator alone", config=False)
    sim.add_argument("--vendor", choices=SIMULATED_VENDORS, default="acefone", help="whose API")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", type=int, default=8085, help="port to listen on")
    sim.add_argument("--seed", type=int, default=1, help="the same seed serves the same calls")
    sim.add_argument("--records", type=int, default=2000, help="backlog size")
    sim.add_argument(
        "--live-per-minute", type=float, default=30.0, help="new calls a minute after the backlog"
    )
    sim.add_argument(
        "--rate-limit",
        type=int,
        help="requests per minute before 429 (acefone: list; ozonetel: bulk reports, default "
        "2 as the vendor; vcclive: each endpoint group, default none)",
    )
    sim.add_argument(
        "--push-url",
        help="ozonetel/vcclive: POST pushes (webhooks) there, e.g. "
        "http://127.0.0.1:9108/hooks/ACCOUNT?token=SECRET",
    )
    sim.add_argument(
        "--reading",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="serve another reading of the vendor's docs (repeatable): acefone count_mode=page, "
        "limit_cap=N; ozonetel empty_shape=no_data|string_total, auth=token; vcclive "
        "not_yet=empty|error200, webhook_start_time=false; none by default",
    )
    return top


READINGS: dict[str, dict[str, Callable[[str], Any]]] = {
    "acefone": {"count_mode": str, "limit_cap": int},
    "ozonetel": {"empty_shape": str, "auth": str},
    "vcclive": {"not_yet": str, "webhook_start_time": lambda v: v.lower() in ("true", "1", "yes")},
}
"""The simulator switches ``simulate --reading`` sets, per vendor, with their value types."""


def reading_options(vendor: str, readings: Sequence[str]) -> dict[str, Any]:
    """``--reading NAME=VALUE`` flags as simulator config keywords; ConfigError names a bad one."""
    known = READINGS.get(vendor, {})
    options: dict[str, Any] = {}
    for reading in readings:
        name, sep, value = reading.partition("=")
        if not sep or name not in known:
            choices = ", ".join(known) or "none"
            raise ConfigError(f"--reading {reading!r}: {vendor} takes NAME=VALUE with NAME one "
                              f"of {choices}")  # fmt: skip
        try:
            options[name] = known[name](value)
        except ValueError:
            raise ConfigError(f"--reading {reading!r}: {value!r} is not a valid {name}") from None
    return options


def _load(path: str | None) -> Any:
    from cdrsync.config import load

    if not path:
        raise ConfigError("no configuration file: pass --config PATH or set CDRSYNC_CONFIG")
    return load(path)


EARLY_STOP: list[int] = []
INTERRUPTED: list[bool] = []
"""Set while a command runs when SIGINT (Ctrl-C) stopped it: the command then exits 130."""


def _catch_early_stop() -> None:
    """Remember a SIGTERM/SIGINT that arrives while the command is still starting (imports,
    config): it stops the command as soon as its loop runs, with a clean exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: EARLY_STOP.append(signum))


def _run_async(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``main(stop)`` with SIGTERM/SIGINT setting ``stop`` (signal handling lives here only)."""

    async def wrapper() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopped(sig: int) -> None:
            if sig == signal.SIGINT:
                INTERRUPTED.append(True)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped, sig)
        if EARLY_STOP:
            stop.set()
        return await main(stop)

    return asyncio.run(wrapper())


def _configure(
    settings: Any = None, *, level: str | None = None, fmt: str = "auto", stream: Any = None
) -> None:
    from cdrsync.ops.observability import configure_logging

    if settings is not None:
        configure_logging(
            level=level or settings.daemon.log_level,
            fmt=settings.daemon.log_format,
            secrets=settings.secret_values(),
            stream=stream,
        )
    else:
        configure_logging(level=level or "info", fmt=fmt, stream=stream)


def cmd_run(args: argparse.Namespace) -> int:
    from cdrsync.app import daemon as app

    settings = _load(args.config)
    _configure(settings, level=args.log_level)

    def reloader() -> Any:
        from cdrsync.ops.observability import SCRUBBER

        fresh = _load(args.config)
        SCRUBBER.add(fresh.secret_values())  # the old ones stay: they may still be in flight
        return fresh

    async def main(stop: asyncio.Event) -> int:
        reload = asyncio.Event()
        # SIGHUP (systemctl reload cdrsync): read the file again, apply its accounts.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload.set)
        await app.run(settings, stop=stop, reload=reload, reloader=reloader)
        return EX_OK

    return _run_async(main)


def cmd_migrate(args: argparse.Namespace) -> int:
    from cdrsync.app import runtime as app

    settings = _load(args.config)
    _configure(settings)

    async def main(stop: asyncio.Event) -> int:
        async with app.runtime(
            settings, stop, own_database=False, patience=ONE_SHOT_PATIENCE
        ) as rt:
            return EX_OK if rt is not None else EX_TEMPFAIL

    return _run_async(main)


def cmd_check_config(args: argparse.Namespace) -> int:
    from cdrsync.config import render

    settings = _load(args.config)
    pooling = _check_pooling(settings)  # ConfigError (exit 78) behind a per-transaction pooler
    print(render(settings))
    print(f"# {args.config}: OK, {len(settings.accounts)} account(s); {pooling}", file=sys.stderr)
    return EX_OK


POOLER_CHECK_TIMEOUT = 5.0
"""Seconds check-config waits for PostgreSQL before it skips the pooler check."""


def _check_pooling(settings: Any) -> str:
    """The pooler check of ``run`` and ``doctor``, when ``database.dsn`` is reachable: raises
    ConfigError behind a per-transaction pooler or when the server refuses the role (a wrong
    password); else says what was found, for stderr."""
    from cdrsync.errors import AccessRefused, StoreError
    from cdrsync.store.pooler import check_session_pooling

    if settings.database.dsn is None:
        return "database: the embedded PostgreSQL (no pooler)"
    check = check_session_pooling(
        settings.database.dsn.reveal(), settings.database.schema,
        connect_timeout=POOLER_CHECK_TIMEOUT,
    )  # fmt: skip
    try:
        asyncio.run(check)
    except AccessRefused as exc:
        # The server answered and refused the role: what check-config is run to find out.
        raise ConfigError(str(exc)) from exc
    except StoreError as exc:
        # check-config validates the file; a database that is down is not a config error.
        return f"pooler check skipped (PostgreSQL not reachable: {exc})"
    return "database.dsn keeps its sessions (no per-transaction pooler)"


def cmd_status(args: argparse.Namespace) -> int:
    from cdrsync.app import runtime as app
    from cdrsync.app.members import to_member
    from cdrsync.engine.balance import live
    from cdrsync.ops.status import render_status

    settings = _load(args.config)
    # stdout is the report (scripts parse --json); only problems are logged, on stderr.
    _configure(settings, level="warning", stream=sys.stderr)

    async def main(stop: asyncio.Event) -> int:
        async with app.runtime(
            settings, stop, own_database=False, patience=ONE_SHOT_PATIENCE
        ) as rt:
            if rt is None:
                return EX_TEMPFAIL
            now = dt.datetime.now(dt.UTC)
            states = await rt.store.states()
            midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
            today = await rt.store.rows_since(midnight)
            depths = await rt.store.queues.depths()
            rows, db_now = await rt.store.instances()
            owners = await rt.store.holders()
        everyone = [to_member(row) for row in rows]
        instances = live(everyone, db_now, settings.daemon.instance_timeout)
        text, failing = render_status(
            states, settings, now=now, as_json=args.json, today=today, depths=depths,
            owners=owners, instances=instances,
        )  # fmt: skip
        print(text)
        return EX_FAIL if failing else EX_OK

    return _run_async(main)


def cmd_doctor(args: argparse.Namespace) -> int:
    from cdrsync.app import runtime as app
    from cdrsync.app.doctor import diagnose
    from cdrsync.ops.diagnosis import render

    settings = _load(args.config)
    accounts = [a for a in settings.accounts if args.account in (None, a.name)]
    if not accounts:
        names = ", ".join(a.name for a in settings.accounts)
        raise ConfigError(f"no account named {args.account!r} in {args.config}; it has: {names}")
    _configure(settings, level="warning", stream=sys.stderr)

    async def main(stop: asyncio.Event) -> int:
        # sessions: the daemon would refuse a per-transaction pooler; say so here first.
        async with app.runtime(
            settings, stop, own_database=False, patience=ONE_SHOT_PATIENCE, sessions=True
        ) as rt:
            if rt is None:
                return EX_TEMPFAIL
            now = dt.datetime.now(dt.UTC)
            reports = [await diagnose(rt, account, now=now) for account in accounts]
        print(render(reports, as_json=args.json))
        return EX_FAIL if any(r.failing for r in reports) else EX_OK

    return _run_async(main)


def cmd_backfill(args: argparse.Namespace) -> int:
    from cdrsync.app import daemon as app
    from cdrsync.ops.status import ProgressPrinter

    settings = _load(args.config)
    _configure(settings)
    printer = ProgressPrinter(sys.stderr)

    async def main(stop: asyncio.Event) -> int:
        run = await app.backfill(
            settings, args.account, args.since, args.until, stop=stop, on_progress=printer
        )
        done = run.done
        if run.handed and not done:
            print(
                f"cdrsync: a running daemon owns account {args.account}; it runs this backfill "
                "within the account's rate limit, after its live data. Following its progress "
                "(Ctrl-C stops following; the daemon carries on):",
                file=sys.stderr,
            )
            done = await app.follow_backfill(settings, run, stop=stop, on_progress=printer)
        printer.close()
        if run.handed and not done:
            print(
                f"cdrsync: the daemon is still running the backfill ({run.stream}); "
                "`cdrsync status` shows how far it got",
                file=sys.stderr,
            )
            return EX_OK
        if not done:
            print(
                "cdrsync: backfill stopped before the end of its range; run the same command "
                "again to continue where it stopped",
                file=sys.stderr,
            )
        return EX_OK if done else EX_TEMPFAIL

    return _run_async(main)


def cmd_demo(args: argparse.Namespace) -> int:
    from cdrsync.simulator.demo import run_demo

    # The summary lines are the demo's output; the daemon's info lines would bury them.
    _configure(level=args.log_level)
    return _run_async(lambda stop: run_demo(stop, args))


def _simulator_task(
    args: argparse.Namespace,
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """``serve(stop)`` for the chosen vendor's simulator, built from the command line."""
    readings = reading_options(args.vendor, args.reading)
    if args.vendor == "ozonetel":
        from cdrsync.simulator.ozonetel import OzonetelSimConfig, OzonetelSimulator
        from cdrsync.simulator.ozonetel_server import serve_ozonetel_forever

        oz = OzonetelSimulator(
            OzonetelSimConfig(
                seed=args.seed, backlog=args.records, live_per_minute=args.live_per_minute,
                bulk_rate_limit=args.rate_limit or 2, push_url=args.push_url, **readings,
            )
        )  # fmt: skip
        return lambda stop: serve_ozonetel_forever(oz, args.host, args.port, stop)
    if args.vendor == "vcclive":
        from cdrsync.simulator.vcclive import VccSimConfig, VccSimulator
        from cdrsync.simulator.vcclive_server import serve_vcclive_forever

        limit = (args.rate_limit, 60.0) if args.rate_limit else None
        vcc = VccSimulator(
            VccSimConfig(
                seed=args.seed, backlog=args.records, live_per_minute=args.live_per_minute,
                rate_list=limit, rate_lookup=limit, rate_records=limit, webhook_url=args.push_url,
                **readings,
            )
        )  # fmt: skip
        return lambda stop: serve_vcclive_forever(vcc, args.host, args.port, stop)
    from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
    from cdrsync.simulator.server import serve_forever

    ace = AcefoneSimulator(
        AcefoneSimConfig(
            seed=args.seed,
            backlog=args.records,
            live_per_minute=args.live_per_minute,
            rate_limit=args.rate_limit,
            **readings,
        )
    )
    return lambda stop: serve_forever(ace, args.host, args.port, stop)


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.push_url and args.vendor == "acefone":
        print("cdrsync: --push-url is for --vendor ozonetel or vcclive", file=sys.stderr)
        return EX_USAGE
    _configure()
    try:
        serve = _simulator_task(args)
    except ValueError as exc:  # a simulator setting out of range, e.g. --reading count_mode=x
        print(f"cdrsync: simulate: {exc}", file=sys.stderr)
        return EX_USAGE

    async def main(stop: asyncio.Event) -> int:
        await serve(stop)
        return EX_OK

    return _run_async(main)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "migrate": cmd_migrate,
    "check-config": cmd_check_config,
    "status": cmd_status,
    "doctor": cmd_doctor,
    "backfill": cmd_backfill,
    "demo": cmd_demo,
    "simulate": cmd_simulate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cdrsync`` command."""
    args = parser().parse_args(argv)
    _catch_early_stop()
    INTERRUPTED.clear()
    code = _dispatch(args)
    # Ctrl-C stopped the command cleanly (whatever it would have returned): 130, as shells expect.
    if code != EX_INTERRUPTED and (INTERRUPTED or signal.SIGINT in EARLY_STOP):
        return EX_INTERRUPTED
    return code


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; an error it raises becomes its exit code and a message."""
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        _say(f"cdrsync: {exc}")
        return EX_CONFIG
    except TransientError as exc:  # e.g. backfill while a daemon owns the account
        _say(f"cdrsync: {exc}")
        return EX_TEMPFAIL
    except CdrsyncError as exc:
        _say(f"cdrsync: {exc}")
        return EX_FAIL
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except Exception:
        # A bug: its traceback is wanted, but it may quote a request or a setting, so it goes
        # through the same secret scrubber as the logs (Python's own printer would not).
        _say(f"cdrsync: crashed (a bug; please report it):\n{traceback.format_exc()}")
        return EX_FAIL


def _say(text: str) -> None:
    """Print a message for the user on stderr, with any secret in it masked."""
    from cdrsync.ops.observability import SCRUBBER

    print(SCRUBBER.scrub(text), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
