"""Run a command against a Spark standalone cluster started on this machine for it.

    .venv/bin/python benchmarks/standalone_cluster.py -- \
        .venv/bin/whispers-lab validate --engine spark PATH
    .venv/bin/python benchmarks/standalone_cluster.py --cores 2 --memory 4g -- \
        .venv/bin/python benchmarks/bench_spark.py --users 20000 --day 9

``--engine spark --spark-master spark://host:port`` is the path to a cluster; this script makes
one (a master and one worker, from pyspark's own ``bin/spark-class``: the pip package has no
``sbin/start-master.sh``) on free local ports, runs the command with
``WHISPERS_LAB_SPARK_MASTER`` set to its URL (what ``--spark-master`` sets), and stops both
daemons afterwards, also when the command fails. The executors are separate JVMs, so the
command's queries really run on the cluster's worker, not in the driver. Not part of the test
suite: a master, a worker and an executor JVM take most of a minute to start on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spark_home() -> Path:
    import pyspark

    home = Path(pyspark.__file__).parent
    if not (home / "bin" / "spark-class").is_file():
        raise SystemExit(f"no bin/spark-class in {home}: pip install -e '.[spark]'")
    return home


def _start(home: Path, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([str(home / "bin" / "spark-class"), *args], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise SystemExit(f"the Spark daemon did not say {text!r} (log: {log}):\n"
                     + log.read_text(errors="replace")[-2000:])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2,
                    help="cores the worker offers (default: all)")
    ap.add_argument("--memory", default="4g", help="memory the worker offers (default 4g)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    home = _spark_home()
    env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable}
    logs = Path(tempfile.mkdtemp(prefix="whispers-standalone-"))
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    master = _start(home, ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                           "--port", str(port), "--webui-port", str(_free_port())],
                    logs / "master.log", env)
    worker = None
    try:
        _wait_for(logs / "master.log", "I have been elected leader", master, 120)
        worker = _start(home, ["org.apache.spark.deploy.worker.Worker", "--cores",
                               str(args.cores), "--memory", args.memory, "--webui-port",
                               str(_free_port()), url], logs / "worker.log", env)
        _wait_for(logs / "worker.log", "Successfully registered with master", worker, 120)
        print(f"standalone cluster {url}: 1 worker, {args.cores} cores, {args.memory} "
              f"(logs: {logs})", flush=True)
        started = time.perf_counter()
        code = subprocess.run(command, env={**env, "WHISPERS_LAB_SPARK_MASTER": url}).returncode
        print(f"command exited {code} after {time.perf_counter() - started:.1f} s", flush=True)
        return code
    finally:
        if worker is not None:
            _stop(worker)
        _stop(master)


if __name__ == "__main__":
    sys.exit(main())
