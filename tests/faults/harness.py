"""Kill -9 trials on a real `kb` process: a KB whose state can be snapshotted and restored, commands run
in processes forked from a warm parent (forkserver.py), seeded kills, and the phases the suite and benchmarks/faults.py share.

A trial restores the phase's starting state, starts the phase's command, SIGKILLs it (after a seeded
delay calibrated from an uninterrupted run, or at a named crash point, see crashpoint.py), re-runs the
same command to completion and then asks invariants.violations() whether the KB is consistent and
equal to a clean build of the same files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from kb_pipeline.config import Settings

REPO = Path(__file__).resolve().parents[2]
POSTGRES_ADMIN_URL = os.environ.get("KB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
WORDS = ["leave", "deploy", "invoice", "contract", "laptop", "incident", "budget", "holiday", "release", "privacy"]
PHASES = ("ingest", "enrich", "index", "train")
TRAIN_COMMAND = ("train", "classify", "--epochs", "1")


def save_tiny_backbone(folder: Path) -> Path:
    """A tiny random BERT as a model folder, so KB_BACKBONE can name it in a subprocess."""
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import save_tiny_bert

    return save_tiny_bert(folder)


def write_corpus(root: Path, version: int, n: int = 40) -> Path:
    """Version 1, or version 2 of the same folder: some files changed, some deleted, some added."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    numbers = range(n) if version == 1 else [i for i in range(n + n // 4) if i % 7 != 3]
    for i in numbers:
        word = WORDS[i % len(WORDS)]
        edit = " Revised in version two." if version == 2 and i % 5 == 0 else ""
        front = f"---\ntitle: {word.title()} note {i}\ncategory: {'hr' if i % 2 else 'engineering'}\ntags: [{word}]\n---\n"
        body = " ".join(f"The {word} procedure step {j} for team {i}." for j in range(4 + i % 9)) + edit
        (root / f"doc-{i:03d}.md").write_text(f"{front}# {word.title()} note {i}\n\n{body}\n")
    (root / "zeppelin.md").write_text("# Airship hangar\n\nThe zeppelin hangar opens at dawn for inspections.\n")
    return root


class PostgresAdmin:
    def __init__(self, url: str = POSTGRES_ADMIN_URL) -> None:
        self.url = url

    def execute(self, *statements: str) -> None:
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for statement in statements:
                    conn.execute(sa.text(statement))
        finally:
            engine.dispose()

    def database_url(self, name: str) -> str:
        return sa.engine.make_url(self.url).set(database=name).render_as_string(hide_password=False)


class ForkServer:
    """Client of forkserver.py: one warm parent per test session (or benchmark run)."""

    _shared: ForkServer | None = None

    def __init__(self, backbone_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "PREFECT_"))}
        env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                   PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
        self.logs = Path(tempfile_dir())
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("forkserver.py")), str(backbone_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=REPO, text=True, bufsize=1,
        )
        self._ask_raw()  # {"ready": true} once warm

    @classmethod
    def shared(cls, backbone_dir: Path) -> ForkServer:
        if cls._shared is None or cls._shared.proc.poll() is not None:
            cls._shared = cls(backbone_dir)
        return cls._shared

    def _ask_raw(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fork server died")
        return json.loads(line)

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._ask_raw()

    def start(self, args: list, env: dict, point: str = "") -> Process:
        name = uuid.uuid4().hex[:10]
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        pid = self.ask({"op": "start", "args": args, "env": env, "stdout": str(out), "stderr": str(err),
                        "point": point})["pid"]
        return Process(self, pid, out, err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.logs, ignore_errors=True)


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="kb-faults-")


@dataclass
class Process:
    """One forked `kb` command."""

    server: ForkServer
    pid: int
    out: Path
    err: Path
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    returncode: int | None = None

    def wait(self, timeout: float) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.ask({"op": "wait", "pid": self.pid, "timeout": timeout})["returncode"]
            if self.returncode is not None:
                self.ended = time.perf_counter()
        return self.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""


@dataclass
class Outcome:
    """One command run that may have been killed."""

    returncode: int | None
    killed: bool
    seconds: float
    stderr: str = ""
    point: str = ""


@dataclass
class FaultKB:
    """One KB (home folder + SQLite file or Postgres database) driven through real `kb` processes."""

    root: Path
    backbone_dir: Path
    backend: str = "sqlite"
    db_name: str = ""
    snapshots: set = field(default_factory=set)
    server: ForkServer | None = None

    def __post_init__(self) -> None:
        self.home = self.root / "home"
        self.server = self.server or ForkServer.shared(self.backbone_dir)
        if self.backend == "postgres" and not self.db_name:
            self.db_name = f"kb_fault_{uuid.uuid4().hex[:10]}"

    # --- environment -------------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.home / 'kb.sqlite3'}"
        return PostgresAdmin().database_url(self.db_name)

    @property
    def settings(self) -> Settings:
        return Settings(home=self.home.resolve(), database_url=self.database_url, backbone=str(self.backbone_dir))

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "PREFECT_"))}
        env.update(
            KB_HOME=str(self.home), KB_BACKBONE=str(self.backbone_dir), PREFECT_HOME=str(self.home / "prefect"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
            HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
            PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}",
        )
        if self.backend == "postgres":
            env["KB_DATABASE_URL"] = self.database_url
        env["KB_FAULT_BARRIER"] = str(self.root / "barrier")  # read by crashpoint.py's meeting points only
        return env

    def create(self) -> FaultKB:
        if self.backend == "postgres":
            PostgresAdmin().execute(f'CREATE DATABASE "{self.db_name}"')
        self.home.mkdir(parents=True, exist_ok=True)
        self.run("init")
        return self

    def drop(self) -> None:
        from kb_pipeline.store.db import dispose_engines

        dispose_engines()
        if self.backend == "postgres":
            names = [self.db_name] + [self._snap_db(n) for n in self.snapshots]
            PostgresAdmin().execute(*(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in names))

    # --- commands ----------------------------------------------------------------------------------

    def start(self, *args: str, point: str = "") -> Process:
        return self.server.start(list(args), self.env(), point)

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> Outcome:
        """Run `kb ARGS` to completion."""
        proc = self.start(*args)
        code = proc.wait(timeout)
        if code is None:
            proc.kill()
            raise AssertionError(f"kb {' '.join(args)} did not finish within {timeout}s")
        outcome = Outcome(code, False, proc.seconds, proc.stderr())
        if check and code != 0:
            raise AssertionError(f"kb {' '.join(args)} exited {code}:\n{outcome.stderr[-3000:]}")
        return outcome

    def kill_after(self, args, delay: float) -> Outcome:
        """Start `kb ARGS`, SIGKILL its process group after `delay` seconds (unless it finished first)."""
        proc = self.start(*args)
        code = proc.wait(delay)
        killed = code is None
        if killed:
            proc.kill()
            code = proc.wait(60)
        return Outcome(code, killed, proc.seconds, proc.stderr())

    def kill_at(self, args, point: str, timeout: float = 300) -> Outcome:
        """Run `kb ARGS` armed with a crashpoint.py point (it SIGKILLs itself there, or injects the fault)."""
        proc = self.start(*args, point=point)
        code = proc.wait(timeout)
        if code is None:
            proc.kill()
            code = proc.wait(60)
        return Outcome(code, code == -signal.SIGKILL, proc.seconds, proc.stderr(), point)

    # --- state -------------------------------------------------------------------------------------

    def _snap_db(self, name: str) -> str:
        return f"{self.db_name}_{name}"

    def save(self, name: str) -> None:
        """Snapshot the home folder (and the Postgres database) so trials can start from here again."""
        from kb_pipeline.store.db import dispose_engines

        dispose_engines()
        target = self.root / f"snap-{name}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.home, target, symlinks=True)
        if self.backend == "postgres":
            snap = self._snap_db(name)
            PostgresAdmin().execute(f'DROP DATABASE IF EXISTS "{snap}" WITH (FORCE)',
                                    f'CREATE DATABASE "{snap}" TEMPLATE "{self.db_name}"')
        self.snapshots.add(name)

    def restore(self, name: str) -> None:
        from kb_pipeline.store.db import dispose_engines

        dispose_engines()
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.copytree(self.root / f"snap-{name}", self.home, symlinks=True)
        if self.backend == "postgres":
            PostgresAdmin().execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)',
                                    f'CREATE DATABASE "{self.db_name}" TEMPLATE "{self._snap_db(name)}"')


# --- phases ------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """Everything the trials of one backend share: the KB, its snapshots, the clean reference, timings."""

    kb: FaultKB
    corpus: Path
    reference: dict
    timings: dict


def prepare(root: Path, backbone_dir: Path, backend: str, n_docs: int = 40) -> Bench:
    """Build the starting states and a clean build of the same files (timing each command on the way).

    States: "v1" (corpus v1 ingested and enriched), "v2-ingested" (then v2 ingested, index stale),
    "v2-enriched" (then enriched: the base for training). The clean reference ingests and enriches v2
    into a fresh KB.
    """
    from faults import invariants

    corpus = root / "corpus"
    timings = {}
    ref = FaultKB(root / "reference", backbone_dir, backend).create()
    try:
        write_corpus(corpus, 2, n_docs)
        ref.run("ingest", str(corpus))
        ref.run("enrich")
        reference = invariants.snapshot(ref.settings)
    finally:
        ref.drop()
    kb = FaultKB(root / "kb", backbone_dir, backend).create()
    write_corpus(corpus, 1, n_docs)
    kb.run("ingest", str(corpus))
    kb.run("enrich")
    kb.save("v1")
    write_corpus(corpus, 2, n_docs)
    timings["ingest"] = kb.run("ingest", str(corpus)).seconds
    kb.save("v2-ingested")
    timings["enrich"] = kb.run("enrich").seconds
    timings["index"] = timings["enrich"]
    kb.save("v2-enriched")
    timings["train"] = kb.run(*TRAIN_COMMAND).seconds
    kb.restore("v2-enriched")
    return Bench(kb, corpus, reference, timings)


@dataclass
class Trial:
    phase: str
    seed: int
    backend: str
    killed: bool
    where: str
    kill_seconds: float
    recover_seconds: float
    violations: list
    leftovers: dict

    @property
    def consistent(self) -> bool:
        return not self.violations


def phase_command(phase: str, corpus: Path) -> tuple[str, tuple]:
    """(starting state, command) of a phase."""
    return {
        "ingest": ("v1", ("ingest", str(corpus))),
        "enrich": ("v2-ingested", ("enrich",)),
        "index": ("v2-ingested", ("enrich",)),
        "train": ("v2-enriched", TRAIN_COMMAND),
    }[phase]


def run_trial(bench: Bench, phase: str, seed: int, backbone=None) -> Trial:
    """Kill the phase's command at a seeded point, re-run it, check the invariants."""
    from faults import crashpoint, invariants

    rng = random.Random(f"{phase}-{seed}")
    kb = bench.kb
    state, command = phase_command(phase, bench.corpus)
    kb.restore(state)
    # index saves and promotions last microseconds: aim at named points; also some timed kills in training
    if phase == "index" or (phase == "train" and rng.random() < 0.75):
        if phase == "index" and rng.random() < 0.3:
            state, command = "v2-enriched", ("index", "rebuild")
            kb.restore(state)
        point = rng.choice(crashpoint.points(phase))
        outcome = kb.kill_at(command, point)
        where = point if outcome.killed else f"{point} (not reached, exit {outcome.returncode})"
    else:
        total = bench.timings[phase]
        delay = rng.uniform(0.05 * total, 1.0 * total)
        outcome = kb.kill_after(command, delay)
        where = f"t={delay:.2f}s of {total:.2f}s" + ("" if outcome.killed else f" (finished first, exit {outcome.returncode})")
    problems = []
    if not outcome.killed and outcome.returncode != 0:
        problems.append(f"the interrupted command failed by itself: {outcome.stderr.strip()[-500:]}")
    rerun = kb.run(*command, check=False)
    if rerun.returncode != 0:
        problems.append(f"re-run of kb {' '.join(command)} exited {rerun.returncode}: {rerun.stderr.strip()[-800:]}")
    recover = rerun.seconds
    if phase == "ingest" and not problems:  # the index follows with the next enrich
        problems += invariants.violations(kb.settings, index=False, backbone=backbone,
                                          reference=bench.reference)
        enrich = kb.run("enrich", check=False)
        if enrich.returncode != 0:
            problems.append(f"kb enrich after the recovered ingest exited {enrich.returncode}: {enrich.stderr[-800:]}")
    if not problems:  # training classify changes no embedding: search must still equal the clean build
        problems += invariants.violations(kb.settings, reference=bench.reference, backbone=backbone)
    return Trial(phase, seed, kb.backend, outcome.killed, where, outcome.seconds, recover, problems,
                 invariants.leftovers(kb.settings))
