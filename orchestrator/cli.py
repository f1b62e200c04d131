"""The `actscale` command. Bad input, unreadable results and a sweep's driver that cannot go on
(UsageError, StorageError, DriverError) end with one line, `actscale: error: ...`, and exit status 2
(a traceback only with --debug); a trial that failed in `actscale train` exits 1, an interrupt 130."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from storage.errors import StorageError
from workers.errors import DriverError, UsageError

# Before torch loads (nothing above imports it: tests/test_import_map.py): its OpenMP threads sleep
# instead of spinning while they wait, so a trial trained in this process (`actscale train`) is not
# held up when another process shares a core (bench/loaded.py; the same speed on an idle machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# each command's module, imported only for that command: `query`, `status` and `report` never load torch
COMMAND_MODULES = {"train": "orchestrator.train_cmd", "run": "orchestrator.sweep_cmds",
                   "resume": "orchestrator.sweep_cmds", "analyze": "orchestrator.sweep_cmds",
                   "status": "orchestrator.sweep_cmds",
                   "query": "orchestrator.storage_cmds", "report": "orchestrator.storage_cmds",
                   "steer": "orchestrator.steer_cmd", "tasks": "orchestrator.tasks_cmd", "plan": "orchestrator.plan_cmd",
                   "patch": "orchestrator.patch_cmd"}


# shown as one line with exit status 2: bad input, unreadable results, a sweep's driver that cannot go on
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, StorageError, DriverError)


def cmd_models(args) -> int:
    from workers.models import REGISTRY

    for name, doc in REGISTRY.items():
        print(f"{name:<14} {doc}")
    print("\nAny Hugging Face causal LM works too: a local directory, or a hub id already in the cache "
          "(offline by default; ACTSCALE_ONLINE=1 allows downloads).")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that command's module is imported (a fast start)."""
    parser = argparse.ArgumentParser(prog="actscale", description="Activation scaling sweeps on language models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list built-in models").set_defaults(func=cmd_models)
    modules = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else list(dict.fromkeys(COMMAND_MODULES.values()))
    for name in modules:
        __import__(name, fromlist=["register"]).register(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The sub-command named in argv (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if not debug:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"actscale: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("actscale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
