"""``signal-engine dlq list|replay|delete``: the dead letters of a preset, or of one integration of a file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import outcome as oc
from ..event_loop import run_fast
from ..language.model import Preset
from ..language.settings import Settings
from .common import (
    UsageError,
    add_preset_path_option,
    add_reset_state_option,
    check_state_dir,
    load_preset_arg,
    settings_for,
)
from .log_handlers import configure_logging
from .logs import add_logging_options, say_on_stderr
from .record_options import add_record_options, record_choice
from .report import EXIT_EVENTS_FAILED, EXIT_OK, EXIT_USAGE
from .stopping import DEFAULT_GRACE_SECONDS, SIGNALS, RunStop, seconds_arg, signal_name

if TYPE_CHECKING:
    from ..state.record import RecordLimits


def register(sub: Any) -> None:
    dlq = sub.add_parser(
        "dlq",
        help="list, replay or delete dead letters",
        description="Dead letters are events whose delivery gave up (retries exhausted, or the "
        "refresh token was refused); they are kept in the state directory for replay.",
    )
    dlq.set_defaults(func=lambda _args: (dlq.print_help(sys.stderr), EXIT_USAGE)[1])
    dlq_sub = dlq.add_subparsers(metavar="ACTION")
    for name, helptext in (
        ("list", "print the dead letters of a preset (masked)"),
        ("replay", "re-send dead letters; those delivered are removed"),
        ("delete", "forget dead letters by id, without sending them"),
    ):
        cmd = dlq_sub.add_parser(name, help=helptext, description=helptext)
        cmd.add_argument(
            "preset",
            metavar="PRESET",
            nargs="?",
            help="built-in name (destination/preset) or path to a YAML preset (its letters from run, "
            "and from serve PRESET)",
        )
        cmd.add_argument(
            "--settings",
            metavar="FILE",
            help="with PRESET: YAML mapping of setting values"
            + ("; replay needs the credentials" if name == "replay" else ""),
        )
        if name == "delete":
            cmd.add_argument(
                "--id",
                dest="ids",
                metavar="ID",
                action="append",
                required=True,
                help="the id of a letter to delete (as `dlq list` prints it); repeat for more",
            )
        cmd.add_argument("--config", metavar="FILE", help="an integrations file (with --integration NAME)")
        cmd.add_argument("--integration", metavar="NAME", help="with --config: the integration whose letters these are")
        cmd.add_argument(
            "--state",
            metavar="DIR",
            default=".signal-state",
            help="the state directory the run used (default: %(default)s)",
        )
        add_reset_state_option(cmd)
        cmd.add_argument("--redis", metavar="URL", help="the Redis the workers use, instead of a state directory")
        if name == "replay":
            cmd.add_argument(
                "--grace",
                type=seconds_arg,
                default=DEFAULT_GRACE_SECONDS,
                metavar="SECONDS",
                help="after SIGINT or SIGTERM, how long replays already sent may take to finish; "
                "letters not yet sent stay as they are (default: %(default)g)",
            )
            add_record_options(cmd, "the replays")
            add_logging_options(cmd)
        add_preset_path_option(cmd)
        cmd.set_defaults(func=cmd_dlq, dlq_action=name)


def cmd_dlq(args: argparse.Namespace) -> int:
    replaying = args.dlq_action == "replay"
    integration: str | None = None
    if args.config:
        from .service_common import integrations_for

        if not args.integration:
            raise UsageError("--config FILE needs --integration NAME: whose dead letters")
        integration = args.integration
        args.integration = [integration]
        # Replaying needs this integration's credentials; listing needs none.
        chosen = integrations_for(args, require=replaying).get(integration)
        preset, settings = chosen.preset, chosen.settings
    else:
        if args.integration:
            raise UsageError("--integration NAME goes with --config FILE")
        if not args.preset:
            raise UsageError("name a PRESET, or pass --config FILE --integration NAME")
        preset = load_preset_arg(args)
        settings = settings_for(args, preset.settings, require=replaying, without_file_hint="pass --settings FILE")
    record = record_choice(args) if replaying else False
    if args.redis:
        if args.reset_state:
            raise UsageError("--reset-state applies to a --state directory, not to --redis")
        if args.dlq_action == "delete":
            return _with_redis(args.redis, lambda state: dlq_delete(preset, settings, state, args.ids, integration))
        return _with_redis(
            args.redis,
            lambda state: (
                dlq_replay(preset, settings, state, args.verbose, args.log_format, args.grace, record, integration)
                if replaying
                else dlq_list(preset, settings, state, integration)
            ),
        )
    if not Path(args.state).is_dir():
        what = "not a directory" if Path(args.state).exists() else "no such state directory"
        raise UsageError(f"--state {args.state}: {what} (pass the --state DIR that run used)")
    check_state_dir(args.state, reset=args.reset_state)  # a refused state.db: one line, before anything is read
    if args.dlq_action == "delete":
        return dlq_delete(preset, settings, args.state, args.ids, integration)
    if replaying:
        return dlq_replay(preset, settings, args.state, args.verbose, args.log_format, args.grace, record, integration)
    return dlq_list(preset, settings, args.state, integration)


def _with_redis(url: str, command: Any) -> int:
    """The dead letters the workers share in Redis (``--redis URL``)."""
    from ..state.redis import RedisState

    try:
        state = RedisState(url)
        state.check()
    except OSError as exc:
        raise UsageError(exc.strerror or str(exc)) from None
    try:
        return int(command(state))
    finally:
        state.close()


def _engine(preset: Preset, settings: Settings, state: Any, integration: str | None, **options: Any) -> Any:
    """An integration of a file (its name keys its letters and journal), or the preset's own (run, serve PRESET)."""
    from ..runtime import Engine

    if integration is None:
        return Engine(preset, settings, state=state, **options)
    from ..state.identity import SHARED_IDENTITY

    return Engine(preset, settings, state=state, integration=integration, identity_scope=SHARED_IDENTITY, **options)


def dlq_list(preset: Preset, settings: Settings, state: Any, integration: str | None = None) -> int:
    engine = _engine(preset, settings, state, integration)
    listed = 0
    for page in engine.letter_pages():  # a page at a time: 30,000 letters need no more memory
        for entry in page:
            print(json.dumps(engine.redactor.redact(entry), ensure_ascii=False))
        listed += len(page)
    print(f"signal-engine: {listed} dead letter(s) for {integration or preset.name}", file=sys.stderr)
    return EXIT_OK


def dlq_delete(preset: Preset, settings: Settings, state: Any, ids: list[str], integration: str | None = None) -> int:
    """Forget the letters with these ids (of this preset or integration only); each id deleted is printed.

    An id that is not one of its letters is named on stderr and the exit
    code is 1, so a script sees that a letter it meant to delete was not there.
    """
    engine = _engine(preset, settings, state, integration)
    deleted = engine.delete_dead_letters(ids)
    for letter_id in deleted:
        print(json.dumps({"id": letter_id, "deleted": True}))
    missing = [i for i in dict.fromkeys(ids) if i not in deleted]
    name = integration or preset.name
    line = f"signal-engine: deleted {len(deleted)} dead letter(s) of {name}"
    if missing:
        line += f"; not a dead letter of {name}: {', '.join(missing)}"
    print(line, file=sys.stderr)
    return EXIT_EVENTS_FAILED if missing else EXIT_OK


def dlq_replay(
    preset: Preset,
    settings: Settings,
    state: Any,
    verbose: bool,
    log_format: str = "text",
    grace: float = DEFAULT_GRACE_SECONDS,
    record: bool | RecordLimits = True,
    integration: str | None = None,
) -> int:
    import asyncio  # not at module level: every command imports this module, and a dry run needs no event loop

    if isinstance(state, str):
        check_state_dir(state)
    stop = RunStop()

    async def main() -> int:
        engine = _engine(preset, settings, state, integration, record=record)

        def on_signal(signum: int) -> None:
            first = stop.on_signal(signum)
            say_on_stderr(
                log_format,
                f"signal-engine: {signal_name(signum)}{'' if first else ' again'}: stopping; "
                "letters not yet replayed stay in the store",
                "warning",
                event="stopping",
            )
            engine.stop(grace if first else 0, stop.reason or signal_name(signum))

        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        replayed = done = skipped = 0
        try:
            async with engine:
                configure_logging(engine.redactor, verbose, log_format)
                # Each outcome is printed as it comes and only counted: memory does not grow with the letters.
                async for result in engine.replay_each_dead_letter():
                    stop.emit(lambda: print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True))  # noqa: B023 (called at once)
                    replayed += 1
                    done += result.outcome == oc.DELIVERED
                    skipped += result.cause == oc.NOT_SENT
                left = engine.dead_letter_count()
        finally:
            for signum in SIGNALS:
                loop.remove_signal_handler(signum)
        line = f"signal-engine: replayed {replayed - skipped}, delivered {done}, {left} left in the dead-letter store"
        fields: dict[str, Any] = {"replayed": replayed - skipped, "delivered": done, "left": left}
        if stop.reason and stop.reason in ("SIGINT", "SIGTERM"):
            line = f"{line}; stopped by {stop.reason}: {skipped} letter(s) not replayed"
            fields.update(stopped=stop.reason, not_replayed=skipped)
        say_on_stderr(log_format, line, "info", event="summary", **fields)
        code = stop.exit_code()
        return code if code is not None else (EXIT_OK if done == replayed else EXIT_EVENTS_FAILED)

    return run_fast(main())
