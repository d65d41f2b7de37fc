"""Several replicas, one queue: 3 `modelpull serve` on one PostgreSQL and one models dir, one killed.

    .venv/bin/python bench/replicas.py                                # 300 jobs of 2 MiB, 512 KiB/s each
    .venv/bin/python bench/replicas.py --jobs 30 --size 512k --lease 5   # a quick one

A private nginx serves the files (each request capped at --limit-rate, access log kept to count
the bytes it sent); a private PostgreSQL (Debian's binaries, tests/server/pg_server.py) holds the
queue; three replicas run as child processes with --max-active-jobs 3 and the same models dir.
Every job is POSTed with its sha256, round robin over the replicas. When a third of the jobs have
completed, the replica running the most downloads is SIGKILLed. While the run lasts, one thread
per replica measures `GET /downloads` and `GET /download-progress/{id}` (a random job), ten
times a second each.

Reported: every job completed with the right sha256; origin bytes / total (no job moved by two
replicas at once: <= 1.05); takeover, from the kill to each of the dead replica's jobs moving
again on another replica (its owner changed in the database and its bytes grew), p50 / p99
(goal <= 20 s with a 15 s lease); p99 of both routes per surviving replica (goal <= 50 ms);
PostgreSQL row writes to the jobs table per running job per second (goal <= 2).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "server"))
import _nginx  # noqa: E402
from pg_server import PostgresServer  # noqa: E402


def parse_size(text: str) -> int:
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Replica:
    def __init__(self, index: int, models: Path, database: str, active: int, lease: float, logs: Path) -> None:
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logs / f"replica-{index}.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "MODELPULL_DATABASE": database}  # the password stays out of the process list
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelpull.server.cli", "--host", "127.0.0.1", "--port", str(self.port),
             "--models-dir", str(models), "--max-active-jobs", str(active), "--lease-seconds", str(lease),
             "--allow-private-urls", "--log-level", "warning"],
            stdout=self._log, stderr=self._log, env=env, cwd=str(logs))
        self.replica_id = ""
        self.latencies: dict[str, list[float]] = {"downloads": [], "progress": [], "health": []}
        self.alive = True

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"replica {self.index} exited:\n{self.log_path.read_text()[-2000:]}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=2)
                self.replica_id = health.json()["replica_id"]
                return
            except (httpx.HTTPError, KeyError, ValueError):
                time.sleep(0.2)
        raise RuntimeError(f"replica {self.index} never answered")

    def kill(self) -> None:
        self.alive = False
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.alive = False
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


def measure_api(replica: Replica, ids: list[str], stop: threading.Event) -> None:
    """Both routes (and /health, the baseline: what the machine and the event loop add to any
    call), ten times a second each, until `stop` (or the replica is killed)."""
    rng = random.Random(replica.index)
    with httpx.Client(base_url=replica.url, timeout=10) as client:
        while not stop.is_set() and replica.alive:
            for name, path in (("downloads", "/downloads"), ("progress", f"/download-progress/{rng.choice(ids)}"),
                               ("health", "/health")):
                started = time.perf_counter()
                try:
                    response = client.get(path)
                except httpx.HTTPError:
                    continue
                if response.status_code == 200 and replica.alive:
                    replica.latencies[name].append((time.perf_counter() - started) * 1000)
            stop.wait(0.1)


def origin_bytes(access_log: Path) -> int:
    total = 0
    for line in access_log.read_text(errors="replace").splitlines():
        match = re.search(r'" (\d{3}) (\d+) ', line)
        if match:
            total += int(match.group(2))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--size", default="2m", help="bytes per file (k/m/g suffixes), default 2m")
    parser.add_argument("--limit-rate", default="512k", help="nginx limit_rate per request, default 512k")
    parser.add_argument("--active", type=int, default=3, help="--max-active-jobs of each replica, default 3")
    parser.add_argument("--lease", type=float, default=15.0, help="--lease-seconds, default 15")
    parser.add_argument("--kill-after", type=float, default=1 / 3, help="kill when this share of jobs completed")
    args = parser.parse_args()
    import psycopg

    _nginx.ensure_tools(("nginx",))
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="modelpull-bench-replicas-"))
    files, models, logs = work / "files", work / "models", work / "logs"
    for folder in (files / "files", models, logs):
        folder.mkdir(parents=True)
    digests = {}
    for i in range(args.jobs):
        data = os.urandom(size)
        (files / "files" / f"m{i:03d}.bin").write_bytes(data)
        digests[f"m{i:03d}.bin"] = hashlib.sha256(data).hexdigest()
    access_log = work / "access.log"
    pg = PostgresServer.start()
    nginx = _nginx.start_nginx(files, extra_locations=(
        f"location /files/ {{ limit_rate {args.limit_rate}; access_log {access_log} combined; }}"))
    replicas: list[Replica] = []
    stop = threading.Event()
    try:
        database = pg.create_database("bench")
        replicas = [Replica(i, models, database, args.active, args.lease, logs) for i in range(3)]
        for replica in replicas:
            replica.wait_ready()
        clients = [httpx.Client(base_url=r.url, timeout=30) for r in replicas]
        db = psycopg.connect(database, autocommit=True)
        # Every row written to the jobs table bumps a sequence (pg_stat_user_tables lags by seconds).
        db.execute("CREATE SEQUENCE bench_job_writes")
        db.execute("CREATE FUNCTION bench_count() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN PERFORM nextval('bench_job_writes'); RETURN NULL; END $$")
        db.execute("CREATE TRIGGER bench_count AFTER INSERT OR UPDATE ON modelpull_jobs "
                   "FOR EACH ROW EXECUTE FUNCTION bench_count()")

        def writes() -> int:
            return int(db.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM bench_job_writes").fetchone()[0])

        writes_before = writes()  # submitting counts: each job is inserted once
        names = sorted(digests)
        ids = []
        started = time.monotonic()
        for n, name in enumerate(names):
            response = clients[n % 3].post("/downloads", json={
                "model": nginx.url(f"files/{name}"), "options": {"sha256": digests[name]}})
            response.raise_for_status()
            ids.append(response.json()["id"])
        print(f"{args.jobs} jobs submitted in {time.monotonic() - started:.1f} s", flush=True)
        threads = [threading.Thread(target=measure_api, args=(r, ids, stop), daemon=True) for r in replicas]
        for thread in threads:
            thread.start()

        def counts() -> dict[str, int]:
            return dict(db.execute("SELECT status, count(*) FROM modelpull_jobs GROUP BY status").fetchall())


        while counts().get("completed", 0) < args.jobs * args.kill_after:
            time.sleep(0.2)
        running = db.execute(
            "SELECT owner, id, (record::json->>'downloaded_bytes')::bigint FROM modelpull_jobs "
            "WHERE status IN ('downloading', 'verifying') AND owner IS NOT NULL").fetchall()
        by_owner: dict[str, list[tuple[str, int]]] = {}
        for owner, job_id, done in running:
            by_owner.setdefault(owner, []).append((job_id, done or 0))
        victim = max(replicas, key=lambda r: len(by_owner.get(r.replica_id, [])))
        orphans = dict(by_owner.get(victim.replica_id, []))
        killed_at = time.monotonic()
        victim.kill()
        print(f"killed replica {victim.index} at {killed_at - started:.1f} s with {len(orphans)} downloads running",
              flush=True)
        takeover: dict[str, float] = {}
        while True:
            rows = db.execute(
                "SELECT id, owner, status, (record::json->>'downloaded_bytes')::bigint FROM modelpull_jobs "
                "WHERE id = ANY(%s)", (list(orphans),)).fetchall()
            for job_id, owner, status, done in rows:
                if job_id in takeover:
                    continue
                moved = owner not in (None, victim.replica_id) and (done or 0) > orphans[job_id]
                if moved or status == "completed":
                    takeover[job_id] = time.monotonic() - killed_at
            current = counts()
            finished = sum(current.get(s, 0) for s in ("completed", "failed", "cancelled"))
            if finished >= args.jobs and len(takeover) == len(orphans):
                break
            if time.monotonic() - started > 3600:
                raise RuntimeError(f"the run did not finish within an hour: {current}")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join()
        total_writes = writes() - writes_before
        job_rows = db.execute("SELECT record FROM modelpull_jobs").fetchall()
        records = [json.loads(r[0]) for r in job_rows]
        running_seconds = sum(max(0.001, ((r.get("finished_at") or 0) - (r.get("started_at") or 0)) / 1000)
                              for r in records if r.get("started_at"))
        statuses = [r["status"] for r in records]
        wrong = [n for n in names if _nginx.sha256_file(models / n) != digests[n]] \
            if all((models / n).exists() for n in names) else ["missing files"]
        sent = origin_bytes(access_log)
        print()
        print(f"jobs: {statuses.count('completed')}/{args.jobs} completed, {len(wrong)} wrong or missing sha256; "
              f"whole run {elapsed:.1f} s (kill at {killed_at - started:.1f} s)")
        print(f"origin bytes: {sent} for {size * args.jobs} of files = {sent / (size * args.jobs):.3f}x")
        values = sorted(takeover.values())
        print(f"takeover of {len(values)} downloads (lease {args.lease:g} s): "
              f"p50 {percentile(values, 50):.1f} s, p99 {percentile(values, 99):.1f} s, max {max(values or [0]):.1f} s")
        rows = []
        for replica in replicas:
            if replica is victim:
                continue
            for name, route in (("downloads", "GET /downloads"), ("progress", "GET /download-progress/{id}"),
                                ("health", "GET /health (baseline)")):
                lat = replica.latencies[name]
                rows.append([f"replica {replica.index}", route, len(lat), f"{statistics.median(lat):.1f}",
                             f"{percentile(lat, 99):.1f}", f"{max(lat):.1f}"])
        print(_nginx.format_table(["replica", "route", "requests", "p50 ms", "p99 ms", "max ms"], rows))
        fixed = 4 * args.jobs  # per job: the insert, the claim, the start, the end
        print(f"PostgreSQL: progress writes alone (all but 4 per job) = "
              f"{(total_writes - fixed) / running_seconds:.2f} writes/s per running job")
        print(f"PostgreSQL: {total_writes} row writes to modelpull_jobs over {running_seconds:.0f} job-seconds "
              f"of running = {total_writes / running_seconds:.2f} writes/s per running job "
              f"({total_writes / args.jobs:.1f} per job, the insert, claim and end included)")
        load = os.getloadavg()
        print(f"load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (2 cores, shared)")
        ok = statuses.count("completed") == args.jobs and not wrong and sent <= 1.05 * size * args.jobs
        return 0 if ok else 1
    finally:
        stop.set()
        for replica in replicas:
            replica.stop()
        nginx.stop()
        pg.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
