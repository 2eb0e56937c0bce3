"""`make profile`: a flame graph of each flow's measured run, from py-spy, in ``bench/profiles/<flow>.svg``.

Each flow's benchmark runs once (``python -m bench --only <flow> --repeat 1``, longer than by default) with
``PROFILE_ENV`` naming the directory; the benchmark then attaches py-spy to itself and its subprocesses (the DMP
feed's validation process and sandbox) for the measured run only, so that neither imports, the demo data nor the
schematrons' compilation crowd the graph. Only samples of a thread holding the GIL are kept (``--gil``): the graphs
show where the interpreter's time goes, which is what bounds these flows on this machine, not the waits on a disk
or a socket.
Open a graph in a browser: a click zooms in. py-spy reads another process's memory: run as root, or where
``kernel.yama.ptrace_scope`` is 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# Each flow's run, long enough for a few thousand samples.
FLOWS = {
    "identity": ["--messages", "4000"],
    "dmp": ["--documents", "300"],
    "mss": ["--mails", "600"],
    "insi": ["--searches", "3000"],
}
OUT = Path("bench/profiles")
PROFILE_ENV = "OPENSEGUR_BENCH_PROFILE"


def _py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy introuvable : installez l'environnement de développement (make install)")
    return found


@contextlib.contextmanager
def profiled(flow: str, rate: int = 250) -> Iterator[None]:
    """Around a benchmark's measured run: a flame graph of it when ``PROFILE_ENV`` names a directory, else
    nothing."""
    directory = os.environ.get(PROFILE_ENV)
    if not directory:
        yield
        return
    target = Path(directory) / f"{flow}.svg"
    command = [_py_spy(), "record", "--pid", str(os.getpid()), "--subprocesses", "--gil", "--nolineno"]
    command += ["--rate", str(rate), "--format", "flamegraph", "--output", str(target)]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # py-spy attaches to each process before it samples: the run starts once it does
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its graph when interrupted
        if recorder.wait(timeout=60) != 0 or not target.exists():
            raise SystemExit(
                f"py-spy n'a pas écrit {target} : lancez en root, ou avec kernel.yama.ptrace_scope=0"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=FLOWS, help="the flows to profile (default: all)")
    args = parser.parse_args()
    _py_spy()
    OUT.mkdir(parents=True, exist_ok=True)
    for flow in args.only or FLOWS:
        print(f"{flow} → {OUT / f'{flow}.svg'}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "bench", "--only", flow, "--repeat", "1", *FLOWS[flow]],
            check=True,
            env={**os.environ, PROFILE_ENV: str(OUT)},
        )


if __name__ == "__main__":
    main()
