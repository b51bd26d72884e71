"""Real HTTP servers on 127.0.0.1 for tests: an image host with scripted routes, the Loupe app under uvicorn,
and an OpenAI-compatible chat-completions server (scripted replies)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Route = Callable[[BaseHTTPRequestHandler], None]


class ImageServer:
    """A scripted HTTP server: `server.routes[path] = handler` or the helpers below."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                outer.hits.append(self.path)
                route = outer.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                route(self)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- route helpers --------------------------------------------------------------
    def bytes(self, path: str, data: bytes, content_type: str = "image/jpeg", declare_length: bool = True) -> str:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", content_type)
            if declare_length:
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data)
            else:  # chunked: the size is only known by reading
                h.send_header("Transfer-Encoding", "chunked")
                h.end_headers()
                for i in range(0, len(data), 65536):
                    chunk = data[i : i + 65536]
                    h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                h.wfile.write(b"0\r\n\r\n")

        self.routes[path] = route
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()

        self.routes[path] = route
        return self.url(path)

    def status(self, path: str, code: int) -> str:
        def route(h: BaseHTTPRequestHandler) -> None:
            body = b"nope"
            h.send_response(code)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)

        self.routes[path] = route
        return self.url(path)

    def slow(self, path: str, data: bytes, delay_s: float) -> str:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            time.sleep(delay_s)
            try:
                h.wfile.write(data)
            except OSError:
                pass

        self.routes[path] = route
        return self.url(path)

    def lying_length(self, path: str, declared: int) -> str:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(declared))
            h.end_headers()
            try:
                h.wfile.write(b"\xff\xd8\xff" + b"\0" * 1024)
            except OSError:
                pass

        self.routes[path] = route
        return self.url(path)


class LiveServer:
    """The real Loupe app served by uvicorn on 127.0.0.1 in a background thread.

    The socket is bound here and handed to uvicorn, so the port is ours before the server starts
    (no race with another test picking the same free port)."""

    def __init__(self, app) -> None:
        self.app = app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", proxy_headers=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    url = base_url

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Reply:
    def __init__(self, content: str | None = None, *, status: int = 200, error: str | None = None,
                 delay: float = 0.0, usage: dict | None = None, finish_reason: str = "stop",
                 when_response_format: Reply | None = None):
        self.content, self.status, self.error, self.delay = content, status, error, delay
        self.usage = usage if usage is not None else {"prompt_tokens": 1000, "completion_tokens": 120,
                                                       "total_tokens": 1120}
        self.finish_reason = finish_reason
        self.when_response_format = when_response_format

    def body(self) -> dict[str, Any]:
        if self.status != 200:
            return {"error": {"message": self.error or f"scripted error {self.status}", "type": "scripted",
                              "code": str(self.status)}}
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": "test-vision",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                             "finish_reason": self.finish_reason}],
                "usage": self.usage}


class FakeLLM:
    """A local OpenAI-compatible server: answers POST /v1/chat/completions from a queue of `Reply`s (or,
    when the queue is empty, from `answer(request_json)` if given); records every request."""

    def __init__(self, answer: Callable[[dict[str, Any]], Reply] | None = None):
        self.answer = answer
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.loads(raw)
                owner.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                       "raw": raw.decode(), "json": body})
                if owner.replies:
                    reply = owner.replies.popleft()
                elif owner.answer is not None:
                    reply = owner.answer(body)
                else:
                    reply = Reply(status=500, error="no scripted reply")
                if reply.status == 200 and "response_format" in body and reply.when_response_format is not None:
                    reply = reply.when_response_format
                if reply.delay:
                    time.sleep(reply.delay)
                out = json.dumps(reply.body()).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def script(self, *replies: Reply) -> None:
        self.replies.clear()
        self.requests.clear()
        self.replies.extend(replies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
