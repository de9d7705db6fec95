"""Hostile and odd input for a running ``vitkit serve``: 47 fault cases, each with the answer it must get.

Shared by ``bench_serve.py`` (faults beside a load) and ``tests/test_serve_process.py`` (which puts this folder on
``sys.path``). A case sends one request (over httpx, or a raw socket for what a client library will not send: a
stalled or cut body, a lying Content-Length, a trickled header) and :func:`judge` checks the answer: the status
must be the expected one, a 4xx must carry ``{"error": message}`` (except uvicorn's own refusal of a malformed
request, which never reaches the app), a 200 must carry a top-k. A 5xx, a hang or a dead server is a failure.
:func:`start_server` runs the server of this checkout with the :class:`Limits` the cases are written against.
The payloads live in :mod:`serve_payloads`.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import serve_payloads as pay

ROOT = Path(__file__).resolve().parents[1]
CLOSED = "closed by the server without an answer"
TIMEOUT = "no answer in time"
HUNG_UP = "client hung up"


@dataclass(frozen=True)
class Limits:
    """The server's flags (:func:`start_server` passes them) that the cases are written against."""

    max_mb: float = 2.0
    body_timeout: float = 2.0
    header_timeout: float = 2.0
    keep_alive: int = 5
    max_connections: int = 64

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)


@dataclass
class Target:
    host: str
    port: int
    limits: Limits
    client: object  # an httpx.Client
    timeout: float = 10.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class Outcome:
    status: int | str
    body: bytes = b""
    seconds: float = 0.0


@dataclass(frozen=True)
class Case:
    name: str
    expect: int | str
    send: Callable[[Target], Outcome]
    json_error: bool = True  # False: uvicorn refuses the request itself (plain text), before the app sees it
    check: Callable[[dict], str | None] | None = None  # more to check in a 200's JSON
    slow: bool = False  # waits out a server timeout


@dataclass
class Result:
    case: Case
    outcome: Outcome
    problem: str | None = None
    started: float = 0.0  # time.perf_counter() when it was sent


# ------------------------------------------------------------------------------------------- sending
def http(method: str, path: str = "/predict", **kwargs) -> Callable[[Target], Outcome]:
    """A request sent with httpx (``kwargs`` as ``httpx.Client.request`` takes them; callables are called with
    the target's limits, for payloads built on demand)."""

    def send(t: Target) -> Outcome:
        import httpx

        kw = {k: (v(t.limits) if callable(v) else v) for k, v in kwargs.items()}
        if kw.get("files"):
            kw["files"] = {
                k: tuple(x(t.limits) if callable(x) else x for x in v) for k, v in kw["files"].items()
            }
        start = time.perf_counter()
        try:
            r = t.client.request(method, t.url + path, timeout=t.timeout, **kw)
        except httpx.TimeoutException:
            return Outcome(TIMEOUT, seconds=time.perf_counter() - start)
        except httpx.TransportError as e:
            return Outcome(f"{CLOSED} ({type(e).__name__})", seconds=time.perf_counter() - start)
        return Outcome(r.status_code, r.content, time.perf_counter() - start)

    return send


def upload(name: str, data, content_type: str = "image/png", field: str = "file", path: str = "/predict",
           **kw) -> Callable[[Target], Outcome]:  # fmt: skip
    return http("POST", path, files={field: (name, data, content_type)}, **kw)


def raw(head: Callable[[Target], bytes], body: Callable[[Target], Iterable[bytes]] = lambda t: (),
        hang_up: bool = False, wait: Callable[[Limits], float] | None = None) -> Callable[[Target], Outcome]:  # fmt: skip
    """Bytes over a socket: ``head``, then the ``body`` chunks (stopping when the server answers early), then
    either hang up or read the answer (for ``wait(limits)`` seconds, else the target's timeout)."""

    def send(t: Target) -> Outcome:
        start = time.perf_counter()
        with socket.create_connection((t.host, t.port), timeout=t.timeout) as s:
            s.sendall(head(t))
            for chunk in body(t):
                if select.select([s], [], [], 0)[0]:
                    break  # the server answered (and will close): stop sending
                try:
                    s.sendall(chunk)
                except OSError:
                    break
            if hang_up:
                return Outcome(HUNG_UP, seconds=time.perf_counter() - start)
            s.settimeout(wait(t.limits) if wait else t.timeout)
            status, data = read_response(s)
        return Outcome(status, data, time.perf_counter() - start)

    return send


def read_response(s: socket.socket) -> tuple[int | str, bytes]:
    """One HTTP response off a socket: (status, body), or why there is none."""
    data = b""
    try:
        while not _complete(data):
            part = s.recv(65536)
            if not part:
                break
            data += part
    except TimeoutError:
        if not data:
            return TIMEOUT, b""
    except ConnectionResetError:
        pass
    if not data:
        return CLOSED, b""
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(head.split(b" ", 2)[1]), body


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    fields = dict(ln.lower().split(b":", 1) for ln in head.split(b"\r\n")[1:] if b":" in ln)
    if not sep:
        return False
    if b"content-length" in fields:
        return len(body) >= int(fields[b"content-length"])
    return body.endswith(b"0\r\n\r\n") if b"chunked" in fields.get(b"transfer-encoding", b"") else False


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out, body = out + body[:n], body[n + 2 :]
    return out


def request_head(method: str, path: str, headers: dict[str, str]) -> Callable[[Target], bytes]:
    def head(t: Target) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {t.host}:{t.port}"]
        lines += [f"{k}: {v(t.limits) if callable(v) else v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    return head


def _form(_=None) -> bytes:
    """A well-formed multipart body: one small PNG in the field ``file``."""
    return pay.multipart([("file", "x.png", "image/png", pay.noise_png(1))])


_FORM_TYPE = f"multipart/form-data; boundary={pay.BOUNDARY}"


def posted(length: Callable[[Limits], int] | None = None, chunked: bool = False) -> Callable[[Target], bytes]:
    """The head of a multipart POST to /predict: chunked, or with a Content-Length (``length(limits)``, default
    the true length of :func:`_form`)."""
    framing = (
        {"Transfer-Encoding": "chunked"}
        if chunked
        else {"Content-Length": length or (lambda _: len(_form()))}
    )
    return request_head("POST", "/predict", {"Content-Type": _FORM_TYPE, **framing})


def _half(_: Target) -> list[bytes]:
    return [_form()[: len(_form()) // 2]]


def _chunked_over_limit(t: Target) -> Iterable[bytes]:
    """A multipart body that never says its length, one file part of zeros streaming past the limit."""
    head, piece = _form()[:200], b"\0" * 65536
    part_head = head[: head.index(b"\r\n\r\n") + 4]
    for data in [part_head] + [piece] * (t.limits.max_bytes // len(piece) + 32):
        yield b"%x\r\n" % len(data) + data + b"\r\n"
    yield b"0\r\n\r\n"


def _after_timeout(which: str) -> Callable[[Limits], float]:
    return lambda limits: getattr(limits, which) + 5.0


# --------------------------------------------------------------------------------------------- cases
def _has_top(answer: dict) -> str | None:
    top = answer.get("top")
    return None if isinstance(top, list) and top else f"expected a top-k list, got {str(answer)[:200]}"


def _all_classes(answer: dict) -> str | None:
    probs = [t.get("prob", 0) for t in answer.get("top") or []]
    return None if abs(sum(probs) - 1) < 1e-3 else f"k over the classes should give them all, got {answer}"


def _filename(name: str) -> Callable[[dict], str | None]:
    return lambda answer: (
        None if answer.get("filename") == name else f"filename {answer.get('filename')!r} != {name!r}"
    )


UNICODE_NAME = "ünïcødé 画像 \U0001f642.png"


def cases() -> list[Case]:
    """The 47 fault cases (names unique), the ones that wait out a timeout first."""
    out = _connection_cases() + _file_cases() + _request_cases() + _size_and_image_cases() + _route_cases()
    assert len({c.name for c in out}) == len(out) == 47, len(out)
    return out


def _connection_cases() -> list[Case]:
    """Over a raw socket: what no client library sends."""
    body_wait, header_wait = _after_timeout("body_timeout"), _after_timeout("header_timeout")
    whole = lambda _: [_form()]  # noqa: E731
    return [
        Case("stall_mid_body", 408, raw(posted(), _half, wait=body_wait), slow=True),
        Case("content_length_longer_than_body", 408,
             raw(posted(lambda _: len(_form()) + 1000), whole, wait=body_wait), slow=True),
        Case("slow_headers", 408,
             raw(lambda t: b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty", wait=header_wait), slow=True),
        Case("idle_connection", CLOSED, raw(lambda t: b"", wait=header_wait), slow=True),
        Case("hang_up_mid_body", HUNG_UP, raw(posted(), _half, hang_up=True)),
        Case("content_length_shorter_than_body", 422, raw(posted(lambda _: len(_form()) - 200), whole)),
        Case("garbage_request_line", 400, raw(lambda t: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
             json_error=False),
        Case("oversized_by_content_length", 413, raw(posted(lambda lim: lim.max_bytes + 2**20))),
        Case("oversized_streamed_chunked", 413, raw(posted(chunked=True), _chunked_over_limit)),
    ]  # fmt: skip


def _file_cases() -> list[Case]:
    """What the uploaded file is: not an image, a broken one, the wrong type."""
    return [
        Case("text_file", 415, upload("notes.txt", b"hello", "text/plain")),
        Case("random_bytes_as_png", 400, upload("r.png", pay.random_bytes)),
        Case("html_as_jpeg", 400, upload("a.jpg", b"<html><body>hi</body></html>", "image/jpeg")),
        Case("svg_image", 400, upload("a.svg", pay.SVG, "image/svg+xml")),
        Case("truncated_png", 400, upload("t.png", lambda _: pay.noise_png(2, 64, "RGB")[:600])),
        Case("truncated_jpeg", 400, upload("t.jpg", pay.truncated_jpeg, "image/jpeg")),
        Case("empty_file", 400, upload("e.png", b"")),
        Case("zero_size_png", 400, upload("z.png", pay.zero_size_png)),
        Case("corrupt_png_crc", 400, upload("c.png", pay.corrupt_png)),
        Case("gzip_bomb_as_png", 400, upload("g.png", pay.gzip_bomb)),
        Case("png_sent_as_json", 415, upload("x.png", lambda _: pay.noise_png(3), "application/json")),
    ]


def _request_cases() -> list[Case]:
    """How the request is formed: fields, bodies, the ``k`` parameter."""
    png = lambda _: pay.noise_png(5)  # noqa: E731
    form = {"Content-Type": _FORM_TYPE}
    return [
        Case("missing_file_field", 422, http("POST", files={"other": ("x.png", b"x", "image/png")}, data={"a": "1"})),
        Case("wrong_field_name", 422, upload("x.png", png, field="image")),
        Case("no_body", 422, http("POST")),
        Case("json_body", 422, http("POST", json={"file": "aGVsbG8="})),
        Case("multipart_without_boundary", 400,
             http("POST", content=b"--x\r\n\r\n", headers={"Content-Type": "multipart/form-data"})),
        Case("file_field_is_text", 422, http("POST", data={"file": "text"}, files={"x": ("a", b"a", "image/png")})),
        Case("too_many_parts", 400, http("POST", content=pay.many_parts, headers=form)),
        Case("k_abc", 422, upload("x.png", png, params={"k": "abc"})),
        Case("k_zero", 422, upload("x.png", png, params={"k": "0"})),
        Case("k_huge", 200, upload("x.png", png, params={"k": str(10**30)}), check=_all_classes),
    ]  # fmt: skip


def _size_and_image_cases() -> list[Case]:
    """Pixel and byte limits; odd but valid images (answered like any other)."""
    ok = _has_top
    return [
        Case("pixel_bomb_png_30000x30000", 413, upload("bomb.png", pay.zero_bomb_png)),
        Case("header_only_bomb_png", 413, upload("bomb.png", lambda _: pay.png_header_only(100_000, 100_000))),
        Case("png_1x39000000", 200, upload("wide.png", pay.wide_png), check=ok),
        Case("file_over_limit_in_small_body", 413, upload("big.png", lambda lim: bytes(lim.max_bytes + 10))),
        *[Case(name, 200, upload(f"{name}.{ext}", build, f"image/{ext}"), check=ok)
          for name, ext, build in pay.ODD_IMAGES],
        Case("unicode_filename", 200, upload(UNICODE_NAME, lambda _: pay.noise_png(6)), check=_filename(UNICODE_NAME)),
    ]  # fmt: skip


def _route_cases() -> list[Case]:
    return [
        Case("get_predict", 405, http("GET")),
        Case("post_health", 405, http("POST", "/health")),
        Case("unknown_route", 404, http("GET", "/predict/../../etc/passwd")),
        Case("explain_non_image", 400, upload("r.png", pay.random_bytes, path="/explain")),
    ]


# ------------------------------------------------------------------------------------------ judging
def judge(case: Case, outcome: Outcome) -> str | None:
    """What is wrong with ``outcome`` for ``case``, or None."""
    got, want = outcome.status, case.expect
    if got != want:
        return f"expected {want}, got {got}: {outcome.body[:200]!r}"
    if not isinstance(got, int):
        return None
    try:
        answer = json.loads(outcome.body)
    except ValueError:
        answer = None
    if got >= 400 and case.json_error and not (isinstance(answer, dict) and set(answer) == {"error"}
                                               and isinstance(answer["error"], str)):  # fmt: skip
        return f"expected {{'error': message}}, got {outcome.body[:200]!r}"
    if got == 200 and case.check is not None:
        return case.check(answer if isinstance(answer, dict) else {})
    return None


def run_cases(target: Target, selected: list[Case] | None = None, threads: int = 4) -> list[Result]:
    """Send every case (slow ones first, ``threads`` at a time) and judge it."""

    def one(case: Case) -> Result:
        started = time.perf_counter()
        try:
            outcome = case.send(target)
        except Exception as e:  # noqa: BLE001  (a client-side surprise is a failed case, not a crash)
            outcome = Outcome(f"client error {type(e).__name__}: {e}")
        return Result(case, outcome, judge(case, outcome), started)

    todo = sorted(selected or cases(), key=lambda c: not c.slow)
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, todo))


@dataclass
class HealthProbe:
    """Polls ``/health`` every ``every`` seconds from a thread while in its ``with`` block: ``polls`` holds
    (time.perf_counter() when sent, seconds to the answer)."""

    url: str
    every: float = 0.2
    polls: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [seconds for _, seconds in self.polls]

    def __enter__(self) -> HealthProbe:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _poll(self) -> None:
        import httpx

        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(self.every):
                start = time.perf_counter()
                try:
                    r = client.get(self.url + "/health")
                    if r.status_code != 200:
                        self.failures.append(f"status {r.status_code}")
                except httpx.HTTPError as e:
                    self.failures.append(type(e).__name__)
                self.polls.append((start, time.perf_counter() - start))


# ------------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: str | os.PathLike, port: int, limits: Limits = Limits(), *extra: str
) -> subprocess.Popen:
    """``python -m vitkit serve`` of this checkout on 127.0.0.1 with ``limits``; its stderr goes to a temporary
    file (``proc.log``: a pipe nobody reads would fill and block the server)."""
    cmd = [sys.executable, "-m", "vitkit", "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--max-mb", str(limits.max_mb), "--body-timeout", str(limits.body_timeout),
           "--header-timeout", str(limits.header_timeout), "--keep-alive", str(limits.keep_alive),
           "--max-connections", str(limits.max_connections), *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.log = log
    return proc


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}: {stop_server(proc)[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout:g} s")


def stop_server(proc: subprocess.Popen) -> str:
    """Terminate (then kill) the server; returns what it wrote to stderr."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """Resident memory of a process in MiB: ``VmRSS`` of /proc/PID/status (``VmHWM``: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")
