"""A warm parent that forks real `kb` processes, so a kill -9 lands in the command's work, not in imports.

Importing torch + transformers takes 3-10 s on a busy 2-core box while a tiny-model enrich takes
about one; with a cold process per command most timed kills would hit the imports. This server
imports everything once (and touches the tiny backbone so lazy imports are done), then serves
JSON lines on stdin:

    {"op": "start", "args": [...], "env": {...}, "stdout": PATH, "stderr": PATH, "point": ""}
        -> {"pid": N}   a forked child, in its own session, runs `kb ARGS` (optionally armed with a
                        crashpoint.py point) and exits with the command's exit code
    {"op": "wait", "pid": N, "timeout": S}  -> {"returncode": RC or null (still running)}

The child is a full OS process: SIGKILL from outside kills it exactly like a `kb` started by hand.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def warm_up(backbone_dir: str) -> None:
    import flows.cli  # noqa: F401  the `kb` app and every command module
    import kb_pipeline.enrich.shared_pass  # noqa: F401
    import kb_pipeline.indexing.sync  # noqa: F401
    import kb_pipeline.ingest.pipeline  # noqa: F401
    import kb_pipeline.search.hybrid  # noqa: F401
    import kb_pipeline.training.service  # noqa: F401
    from kb_pipeline.backbone.loading import load_backbone

    if backbone_dir:
        load_backbone(backbone_dir, None)  # transformers' lazy imports happen on first load


def child(request: dict) -> None:
    code = 1
    try:
        os.setsid()
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.clear()
        os.environ.update(request["env"])
        from faults import crashpoint

        if request.get("point"):
            crashpoint.arm(request["point"])
        from flows.cli import app

        try:
            app(request["args"], prog_name="kb")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must always exit, never return into the server loop
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    warm_up(sys.argv[1] if len(sys.argv) > 1 else "")
    reply = sys.stdout
    reply.write(json.dumps({"ready": True}) + "\n")
    reply.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            pid = os.fork()
            if pid == 0:
                child(request)
            answer = {"pid": pid}
        else:
            answer = {"returncode": wait(request["pid"], request["timeout"])}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


def wait(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


if __name__ == "__main__":
    serve()
