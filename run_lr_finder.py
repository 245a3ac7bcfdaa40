"""Run ``main.py --find_lr`` as a child process and keep a complete record of it.

Shows the child's output live, then writes into ``--output_dir``: the plot
``lr_finder_<dataset>.png``, ``lr_finder_log.txt`` (configuration, command, full output,
results, analysis, next steps) and ``suggested_lr.json``. If the child fails, the log and
a ``"success": false`` JSON are still written and the exit code is non-zero.

    uv run python run_lr_finder.py --demo --output_dir ./outputs
    uv run python run_lr_finder.py --batch_size 256 --lr_iter 1000 --data_dir ./data --output_dir ./outputs
"""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

from atomic_io import atomic_write_json, atomic_write_text
from cli import DefaultsOnceFormatter, OneLineErrorParser, get_args_parser, parse_layered, validate_args
from errors import EXIT_USAGE
from finder_result import FinderResult
from report import outputs_line, render_log

MAIN = str(Path(__file__).resolve().with_name("main.py"))
# Set by this script itself, so not forwarded from the user's flags.
NOT_FORWARDED = {"output_dir", "lr_plot", "find_lr", "help"}


def get_runner_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        parents=[get_args_parser(add_help=False)], conflict_handler="resolve", allow_abbrev=False,
        description="Run the LR range test (main.py --find_lr) and record its full log and JSON.",
        formatter_class=DefaultsOnceFormatter)
    parser.add_argument("--output_dir", default="./outputs",
                        help="folder for lr_finder_<dataset>.png, lr_finder_log.txt and suggested_lr.json")
    parser.set_defaults(find_lr=True)
    return parser


def forwarded_argv(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The user's main.py flags whose values differ from ``parser``'s defaults as ``--demo`` and
    ``--recipe`` layer them (so ``--demo --optimizer sgd`` keeps SGD), as command-line words: the
    child layers the same defaults under them."""
    words = []
    for action in get_args_parser(add_help=False)._actions:
        if action.dest in NOT_FORWARDED or not action.option_strings:
            continue
        value = getattr(args, action.dest)
        if value is None or value == parser.get_default(action.dest):
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            words.append(flag)
        else:
            words += [flag, repr(value) if isinstance(value, float) else str(value)]
    return words


def collapse_carriage_returns(text: str) -> str:
    """Keep what a terminal would finally show of each line (progress bars redraw with \\r)."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def run_child(command: list[str]) -> tuple[int, str, str]:
    """Run ``command``, echoing its stdout/stderr live; return (exit code, combined output, stderr)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Own session: a Ctrl-C in the terminal reaches only us, and we forward it once.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    transcript, errors, lock = [], [], threading.Lock()

    def pump(stream, sink, keep_errors):
        for chunk in iter(lambda: stream.read1(65536), b""):
            sink.buffer.write(chunk)
            sink.flush()
            with lock:
                transcript.append(chunk)
                if keep_errors:
                    errors.append(chunk)

    threads = [threading.Thread(target=pump, args=(proc.stdout, sys.stdout, False)),
               threading.Thread(target=pump, args=(proc.stderr, sys.stderr, True))]
    for t in threads:
        t.start()
    previous = {s: signal.signal(s, lambda signum, frame: proc.send_signal(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
        for t in threads:
            t.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code, decode_output(transcript), decode_output(errors)


def decode_output(parts: list[bytes]) -> str:
    return collapse_carriage_returns(b"".join(parts).decode("utf-8", "replace"))


def last_error_line(stderr: str, code: int) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or ": error:" in line]
    if errors:
        return errors[-1]
    return lines[-1] if lines else f"main.py exited with code {code}"


def read_fresh_result(path: Path, not_before: float) -> FinderResult | None:
    """The child's result, if it wrote one during this run."""
    try:
        if path.stat().st_mtime < not_before:
            return None
        return FinderResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def failure_result(args: argparse.Namespace, error: str, log: Path) -> FinderResult:
    """The record of a child that wrote none: its error and the flags as parsed here, marked as
    such (they miss what --demo and the defaults derive)."""
    note = ("main.py recorded no configuration (it failed before writing its JSON): these are the flags as the "
            "runner parsed them")
    return FinderResult(success=False, dataset=args.dataset, batch_size=args.batch_size,
                        timestamp=datetime.now().isoformat(timespec="seconds"), plot_file=None, log_file=str(log),
                        error=error, configuration={"(note)": note, **dict(sorted(vars(args).items()))})


def parse_runner_args(argv=None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """The runner's flags, layered and checked as main.py checks them (one line and exit 2 if
    wrong), and the parser holding the layered defaults."""
    parser = get_runner_parser()
    args = parse_layered(parser, argv)
    validate_args(args, parser)
    return args, parser


def main(argv=None) -> int:
    args, parser = parse_runner_args(argv)
    dataset = args.dataset
    out = Path(args.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: --output_dir {out}: cannot create it ({exc.strerror})", file=sys.stderr)
        return EXIT_USAGE
    plot, log, json_path = out / f"lr_finder_{dataset}.png", out / "lr_finder_log.txt", out / "suggested_lr.json"
    command = [sys.executable, MAIN, "--find_lr", *forwarded_argv(args, parser), "--lr_plot", str(plot)]
    print(f"Running: {shlex.join(command)}", flush=True)

    started = datetime.now().timestamp()
    code, output, stderr = run_child(command)
    result = read_fresh_result(json_path, started)
    if result is None:  # the child wrote no result: the runner records its failure
        result = failure_result(args, last_error_line(stderr, code), log)
        atomic_write_json(json_path, result.to_json())
        print(outputs_line(result, str(out)))
    atomic_write_text(log, render_log(result, shlex.join(command), output))
    return code if code != 0 else (0 if result.success else 1)


if __name__ == "__main__":
    sys.exit(main())
