"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for the LLM tests.

openai >= 3.0 sends requests through httpx2, which respx and pytest-httpx do not intercept,
so the tests talk to a real (local) server instead. The server answers
``POST /v1/chat/completions`` from a queue of scripted replies, in order, and
``GET /v1/models`` with a fixed model list; it records every request it received (method,
path, headers, JSON body) so tests can assert what the client sent.

    with ScriptedServer() as srv:
        srv.push(chat("hello"), status(429, headers={"Retry-After": "0"}))
        cfg = LLMConfig(base_url=srv.url, ...)

An empty queue answers 400 ("no reply queued"), which the client does not retry, so a test
that makes more calls than it scripted fails at once and clearly.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Scripted:
    """One scripted answer: HTTP status, headers, JSON body, and a delay before answering."""
    status: int = 200
    body: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def chat(content: str, prompt_tokens: int = 100, completion_tokens: int = 20, cached_tokens: int | None = None,
         model: str = "test-model", delay_s: float = 0.0, finish_reason: str = "stop") -> Scripted:
    """A successful chat completion whose message content is ``content``.

    ``cached_tokens=None`` leaves ``prompt_tokens_details`` out, as many compatible servers do."""
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    body = {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "finish_reason": finish_reason,
                     "message": {"role": "assistant", "content": content}}],
        "usage": usage,
    }
    return Scripted(200, body, {}, delay_s)


def tool_calls(*calls: tuple[str, dict], prompt_tokens: int = 100, completion_tokens: int = 20,
               model: str = "test-model") -> Scripted:
    """A chat completion in which the model calls tools: ``(name, arguments)`` pairs, ids call_0.."""
    body = {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": None, "tool_calls": [
                         {"id": f"call_{i}", "type": "function",
                          "function": {"name": name, "arguments": json.dumps(args)}}
                         for i, (name, args) in enumerate(calls)]}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    return Scripted(200, body)


def status(code: int, message: str = "scripted error", headers: dict[str, str] | None = None) -> Scripted:
    """An error answer in the OpenAI error format."""
    return Scripted(code, {"error": {"message": message, "type": "scripted", "code": str(code)}},
                    dict(headers or {}))


class ScriptedServer:
    """A ThreadingHTTPServer on 127.0.0.1, port 0, serving the scripted queue in a thread."""

    def __init__(self, models: list[str] | None = None, models_status: int = 200):
        self.models = list(models or ["test-model"])
        self.models_status = models_status
        self.queue: deque[Scripted] = deque()
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- script ---
    def push(self, *replies: Scripted) -> "ScriptedServer":
        with self._lock:
            self.queue.extend(replies)
        return self

    @property
    def chat_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    # --- lifecycle ---
    def start(self) -> "ScriptedServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"   # one request per connection: simple and robust

            def log_message(self, *args):   # keep test output quiet
                pass

            def _record(self, body: Any) -> None:
                with server._lock:
                    server.requests.append(Received(self.command, self.path, dict(self.headers.items()), body))

            def _send(self, code: int, body: dict | None, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body if body is not None else {}).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass                    # the client gave up (timeout tests)

            def do_GET(self):
                self._record(None)
                if self.path.rstrip("/").endswith("/models"):
                    if server.models_status != 200:
                        self._send(server.models_status, status(server.models_status).body)
                        return
                    self._send(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in server.models]})
                    return
                self._send(404, status(404, f"no route {self.path}").body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode(errors="replace")
                self._record(body)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, status(404, f"no route {self.path}").body)
                    return
                with server._lock:
                    item = server.queue.popleft() if server.queue else None
                if item is None:
                    self._send(400, status(400, "scripted server: no reply queued").body)
                    return
                if item.delay_s:
                    time.sleep(item.delay_s)
                self._send(item.status, item.body, item.headers)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["ScriptedServer", "Scripted", "Received", "chat", "status", "tool_calls"]
