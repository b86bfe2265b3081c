"""A local stand-in for the Azure Batch service, for tests that drive the real azure-batch SDK
(the `fake_batch` fixture in conftest.py starts one per test).

`FakeBatchService` is a threaded HTTP server on 127.0.0.1 that answers the REST calls
PipesAzureBatchClient makes (pool get/add/resize, job add/get/terminate, task add/get, task file
properties and ranged downloads) with the JSON shapes and status codes the Batch service uses,
and records every request. What a submitted task does is up to the test: `run_task` turns the
task's JSON into a `TaskRun` (a scripted sequence of states, or a subprocess playing the node).
"""

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class TaskRun(Protocol):
    def view(self) -> dict:
        """The task's `state` and `executionInfo`, as GET task returns them."""

    def file(self, name: str) -> bytes | None:
        """The content of stdout.txt / stderr.txt so far; None while it does not exist."""

    def terminate(self) -> None: ...


@dataclass
class ScriptedRun:
    """Moves one step per GET of the task: each step is (state, stdout bytes, stderr bytes)
    appended to the files; the last step's state should be "completed"."""

    steps: list[tuple[str, bytes, bytes]]
    exit_code: int = 0
    failure_info: dict | None = None
    position: int = -1
    stdout: bytes | None = None
    stderr: bytes | None = None
    terminated: bool = False

    def view(self) -> dict:
        if not self.terminated and self.position < len(self.steps) - 1:
            self.position += 1
            state, out, err = self.steps[self.position]
            if state in ("running", "completed"):  # the node creates both files at start
                self.stdout = (self.stdout or b"") + out
                self.stderr = (self.stderr or b"") + err
        state = "completed" if self.terminated else self.steps[max(self.position, 0)][0]
        view: dict = {"state": state}
        if state == "completed":
            info: dict = {"retryCount": 0, "requeueCount": 0}
            if self.terminated:
                info.update(exitCode=137, result="failure")
            else:
                info.update(exitCode=self.exit_code)
                info["result"] = "success" if self.exit_code == 0 else "failure"
            if self.failure_info:
                info["failureInfo"] = self.failure_info
            view["executionInfo"] = info
        elif state == "running":
            view["executionInfo"] = {"retryCount": 0, "requeueCount": 0}
        return view

    def file(self, name: str) -> bytes | None:
        return {"stdout.txt": self.stdout, "stderr.txt": self.stderr}.get(name)

    def terminate(self) -> None:
        self.terminated = True


def _error(code: str, message: str) -> dict:
    return {
        "odata.metadata": "https://fake.batch/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
        "code": code,
        "message": {"lang": "en-US", "value": message},
    }


@dataclass
class FakeBatchService:
    run_task: Callable[[str, dict], TaskRun] = field(
        default=lambda job_id, task: ScriptedRun([("running", b"", b""), ("completed", b"", b"")])
    )
    requests: list[Request] = field(default_factory=list)
    pools: dict[str, dict] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)
    tasks: dict[tuple[str, str], TaskRun] = field(default_factory=dict)
    task_bodies: dict[tuple[str, str], dict] = field(default_factory=dict)
    unexpected: list[Request] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def calls(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    def add_pool(self, pool_id: str, **properties) -> dict:
        pool = {
            "id": pool_id,
            "url": f"https://fake.batch/pools/{pool_id}",
            "state": "active",
            "allocationState": "steady",
            "vmSize": "standard_nc4as_t4_v3",
            "targetDedicatedNodes": 2,
            "currentDedicatedNodes": 2,
            "enableInterNodeCommunication": True,
            "taskSlotsPerNode": 1,
            **properties,
        }
        self.pools[pool_id] = pool
        return pool

    # -- the REST API -------------------------------------------------------------------------

    def handle(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests.append(req)
            m, p = req.method, req.path
            if match := re.fullmatch(r"/pools/([^/]+)", p):
                pool = self.pools.get(match[1])
                if m == "GET":
                    if pool is None:
                        return self.json(404, _error("PoolNotFound", "The pool does not exist."))
                    return self.json(200, pool)
            if p == "/pools" and m == "POST":
                if req.body["id"] in self.pools:
                    return self.json(409, _error("PoolExists", "The pool already exists."))
                self.add_pool(
                    req.body["id"], **req.body, state="active", allocationState="resizing"
                )
                return self.created(f"/pools/{req.body['id']}")
            if (match := re.fullmatch(r"/pools/([^/]+)/resize", p)) and m == "POST":
                self.pools[match[1]].update(req.body, allocationState="steady")
                return 202, {"DataServiceId": f"{self.url}/pools/{match[1]}/resize"}, b""
            if p == "/jobs" and m == "POST":
                if req.body["id"] in self.jobs:
                    return self.json(409, _error("JobExists", "The job already exists."))
                self.jobs[req.body["id"]] = {**req.body, "state": "active"}
                return self.created(f"/jobs/{req.body['id']}")
            if (match := re.fullmatch(r"/jobs/([^/]+)", p)) and m == "GET":
                job = self.jobs.get(match[1])
                if job is None:
                    return self.json(404, _error("JobNotFound", "The job does not exist."))
                view = {k: job[k] for k in ("id", "state", "executionInfo") if k in job}
                return self.json(200, view)
            if (match := re.fullmatch(r"/jobs/([^/]+)/terminate", p)) and m == "POST":
                job_id = match[1]
                self.jobs[job_id]["state"] = "completed"
                for (j, _), run in self.tasks.items():
                    if j == job_id:
                        run.terminate()
                return 202, {"DataServiceId": f"{self.url}/jobs/{job_id}"}, b""
            if (match := re.fullmatch(r"/jobs/([^/]+)/tasks", p)) and m == "POST":
                job_id, task_id = match[1], req.body["id"]
                if self.jobs.get(job_id, {}).get("state") != "active":
                    return self.json(409, _error("JobCompleted", "The job is not active."))
                self.task_bodies[(job_id, task_id)] = req.body
                self.tasks[(job_id, task_id)] = self.run_task(job_id, req.body)
                return self.created(f"/jobs/{job_id}/tasks/{task_id}")
            if (match := re.fullmatch(r"/jobs/([^/]+)/tasks/([^/]+)", p)) and m == "GET":
                run = self.tasks.get((match[1], match[2]))
                if run is None:
                    return self.json(404, _error("TaskNotFound", "The task does not exist."))
                return self.json(200, {"id": match[2], **run.view()})
            if match := re.fullmatch(r"/jobs/([^/]+)/tasks/([^/]+)/files/(.+)", p):
                run = self.tasks.get((match[1], match[2]))
                content = run.file(match[3]) if run else None
                if content is None:
                    if m == "HEAD":
                        return 404, {}, b""
                    return self.json(404, _error("FileNotFound", "The file does not exist."))
                if m == "HEAD":
                    now = formatdate(usegmt=True)
                    return (
                        200,
                        {
                            "ocp-batch-file-url": f"{self.url}{p}",
                            "ocp-batch-file-isdirectory": "False",
                            "ocp-batch-file-mode": "0o100644",
                            "ocp-creation-time": now,
                            "Last-Modified": now,
                            "Content-Length": str(len(content)),
                        },
                        b"",
                    )
                if m == "GET":
                    rng = req.headers.get("ocp-range")
                    if rng:
                        start, _, end = rng.removeprefix("bytes=").partition("-")
                        content = content[int(start) : int(end) + 1 if end else None]
                    return 200, {"Content-Type": "application/octet-stream"}, content
            self.unexpected.append(req)
            return self.json(400, _error("UnexpectedRequest", f"{m} {p} is not faked"))

    def json(self, status: int, body: dict) -> tuple[int, dict[str, str], bytes]:
        return (
            status,
            {"Content-Type": "application/json;odata=minimalmetadata"},
            json.dumps(body).encode(),
        )

    def created(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return 201, {"DataServiceId": f"{self.url}{path}", "ETag": '"0x1"'}, b""

    # -- the server ---------------------------------------------------------------------------

    def start(self) -> None:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _serve(self) -> None:
                parsed = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                req = Request(
                    self.command,
                    unquote(parsed.path),
                    parse_qs(parsed.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                status, headers, content = service.handle(req)
                self.send_response(status)
                for name, value in headers.items():
                    if name != "Content-Length":
                        self.send_header(name, value)
                self.send_header("Content-Length", headers.get("Content-Length", len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
