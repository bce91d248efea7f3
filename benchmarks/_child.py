"""Run one benchmark contender in a child process; a failing child becomes a `ChildError`, never a hang.

The benchmarks run each contender in its own process (so its peak memory is its own). Two ways:

- `run_script`: a command (the benchmark script re-run with child arguments) through `subprocess`. A
  non-zero exit or a signal raises `ChildError` with what was running, how it ended, the command and the
  last `TAIL_LINES` lines of the child's stderr (its traceback). `run_script_json` also parses the JSON
  result the child prints as the last line of its stdout.
- `run_forked`: a Python callable in a `multiprocessing.Process` (fork: closures and big inputs are shared
  with no pickling; spawn: a fresh interpreter), its result sent back through a pipe. An exception in the
  child comes back as a `ChildError` holding the child's traceback; a child that dies (segfault, OOM kill,
  os._exit) closes the pipe, so the parent sees EOF and reports the exit code or signal, instead of waiting
  forever as on a `multiprocessing.Queue` or `Pool`.
"""

from __future__ import annotations

import codecs
import json
import multiprocessing as mp
import shlex
import signal
import subprocess
import sys
import threading
import traceback

TAIL_LINES = 20  # lines of the child's stderr (or traceback) quoted in a ChildError
_TAIL_BYTES = 64 * 1024  # stderr kept while streaming: enough for TAIL_LINES lines


class ChildError(RuntimeError):
    """A contender's child process failed: raised, exited non-zero or was killed."""


def describe_exit(code: int) -> str:
    """'exited with status 3' / 'killed by signal SIGSEGV' for a returncode or Process.exitcode."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")


def _tail(text: str, what: str) -> str:
    lines = text.rstrip("\n").splitlines()[-TAIL_LINES:]
    if not lines:
        return f"\n(no {what})"
    return f"\nlast {len(lines)} lines of {what}:\n" + "\n".join("  " + line for line in lines)


def run_script(cmd: list[str], what: str, *, env: dict | None = None, stream: bool = False,
               timeout: float | None = None) -> str | None:
    """Run `cmd` and return its stdout; raise ChildError naming `what` if it exits non-zero, is killed or
    runs past `timeout` seconds (then it is killed).

    `what` says which contender (and size) the child runs, e.g. "contender 'native 1 thread', pattern gpt2".
    stream=False: stdout is captured (returned) and stderr kept only for the error message. stream=True:
    the child's stdout and stderr go to ours as they come (progress logs), a copy of the stderr's tail is
    kept for the message, and None is returned.
    """
    tail = bytearray()
    with subprocess.Popen(cmd, env=env, stdout=None if stream else subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        def pump_stderr():
            decode = codecs.getincrementaldecoder("utf-8")("replace").decode
            while chunk := proc.stderr.read1(65536):
                if stream:
                    sys.stderr.write(decode(chunk))
                    sys.stderr.flush()
                tail.extend(chunk)
                del tail[:-_TAIL_BYTES]

        pump = threading.Thread(target=pump_stderr, daemon=True)
        pump.start()
        chunks: list[bytes] = []
        reader = None
        if not stream:  # read stdout on a thread too, so that the timeout below applies
            reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
            reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ChildError(f"{what}: child ran past {timeout:g} s and was killed\ncommand: {shlex.join(cmd)}"
                             + _tail(tail.decode("utf-8", "replace"), "its stderr")) from None
        finally:
            pump.join()
            if reader is not None:
                reader.join()
        out = None if stream else b"".join(chunks).decode("utf-8", "replace")
    if proc.returncode != 0:
        raise ChildError(f"{what}: child {describe_exit(proc.returncode)}\ncommand: {shlex.join(cmd)}"
                         + _tail(tail.decode("utf-8", "replace"), "its stderr"))
    return out


def run_script_json(cmd: list[str], what: str, *, env: dict | None = None, timeout: float | None = None):
    """run_script, then the JSON value the child printed as the last line of its stdout."""
    out = run_script(cmd, what, env=env, timeout=timeout)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise ChildError(f"{what}: child exited 0 without a JSON result line\ncommand: {shlex.join(cmd)}"
                         + _tail(out, "its stdout")) from None


def _forked_target(conn, fn, args) -> None:
    try:
        msg = ("ok", fn(*args))
    except Exception:
        msg = ("raised", traceback.format_exc())
    try:
        conn.send(msg)
    except Exception:  # e.g. an unpicklable result
        conn.send(("raised", traceback.format_exc()))
    conn.close()


def run_forked(fn, what: str, *args, method: str = "fork"):
    """`fn(*args)` in a child process (multiprocessing start `method`); returns its result.

    Raises ChildError naming `what` when fn raises (with the child's traceback) or the child dies or exits
    non-zero (with its signal or exit status). With method="spawn", fn and args must be picklable.
    """
    ctx = mp.get_context(method)
    recv_end, send_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_forked_target, args=(send_end, fn, args))
    proc.start()
    send_end.close()  # the child now holds the only write end: its death means EOF here, not a hang
    try:
        status, value = recv_end.recv()
    except EOFError:
        status, value = None, None
    finally:
        recv_end.close()
    proc.join()
    if status == "raised":
        raise ChildError(f"{what}: child raised {value.rstrip().splitlines()[-1]}" + _tail(value, "its traceback"))
    if proc.exitcode != 0:
        raise ChildError(f"{what}: child {describe_exit(proc.exitcode)}"
                         + ("" if status else " before sending its result"))
    if status != "ok":
        raise ChildError(f"{what}: child exited 0 without sending its result")
    return value
