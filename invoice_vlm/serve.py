"""The HTTP service: ``invoice-vlm serve --model M --host 127.0.0.1 --port 8000``.

- ``POST /v1/ocr`` and ``POST /v1/extract``: one multipart file (an image or a PDF; every page is read);
  answers ``{"file", "task", "pages": [{"page", "text"(, "fields", "json_valid")}], "seconds"}``.
- ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /docs`` (OpenAPI), ``GET /``: a page to try it.
- Concurrent requests share forward passes: pages go to one queue, and a single worker takes up to
  ``batch_size`` of them at a time (waiting at most ``max_wait_ms`` for a batch to fill) and hands them to the
  engine (:class:`invoice_vlm.infer.Predictor`), which knows nothing about HTTP.
- Limits, each answered with a JSON error: upload size (413), pages per document (413), content type (415),
  a file that does not open (422), per-request timeout (504), API key when one is set (401).
"""

# No `from __future__ import annotations`: the endpoints are closures in create_app, and FastAPI reads their
# annotations (Request, UploadFile) as objects; fastapi is imported there, so that the CLI, which reads ServeConfig
# for its options, does not import a web framework on every command.
import asyncio
import base64
import io
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import DECODE_HELP, LEXICON_HELP, InvoiceVLMError

IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/tiff", "image/webp", "image/bmp", "image/gif"}
ALLOWED_TYPES = IMAGE_TYPES | {"application/pdf", "application/octet-stream"}


@dataclass
class ServeConfig:
    model: str = field(default="invoice-vlm-tiny", metadata={"help": "model folder or hub id"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port"})
    batch_size: int = field(default=8, metadata={"help": "most pages per forward pass"})
    max_wait_ms: float = field(default=10.0, metadata={"help": "how long a batch waits to fill after its first page"})
    max_new_tokens: int = field(default=512, metadata={"help": "most tokens generated per page"})
    max_upload_mb: float = field(default=20.0, metadata={"help": "largest upload (413 above)"})
    max_pages: int = field(default=10, metadata={"help": "most pages per document (413 above)"})
    timeout_s: float = field(default=120.0, metadata={"help": "per-request time limit (504 after)"})
    read_timeout_s: float = field(default=30.0, metadata={"help": "longest wait for the next part of a request "
                                                                  "body (408 after: a stalled upload)"})
    dpi: int = field(default=200, metadata={"help": "PDF render resolution"})
    api_key: str | None = field(default=None, metadata={"help": "require this key (X-API-Key or Bearer)"})
    quantize: str | None = field(default=None, metadata={"help": "int8 (CPU)"})
    decode: str = field(default="auto", metadata={"help": DECODE_HELP})
    lexicon: str = field(default="auto", metadata={"help": LEXICON_HELP})
    workers: int = field(default=-1, metadata={"help": "a row reader: processes preparing each page (deskew, segment) "
                                                       "as it arrives, while the model reads (-1: one a core; 0: in "
                                                       "the model's thread)"})


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BodyGuard:
    """ASGI middleware bounding a request body while it arrives: more bytes than ``limit`` (a chunked upload says
    no Content-Length) or a pause longer than ``timeout`` between its parts (a stalled client holding a
    connection) ends the read there, and the answer is a JSON 413 or 408 instead of what the app would say about
    the cut-off body. Once the body is complete, nothing is changed."""

    def __init__(self, app, limit: int, timeout: float):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        import json

        st = {"seen": 0, "done": False, "problem": None, "started": False}

        async def guarded_receive():
            if st["problem"]:
                return {"type": "http.disconnect"}
            if st["done"]:
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                st["problem"] = (408, "timeout", f"request body stalled: nothing arrived for {self.timeout:g} s")
                return {"type": "http.disconnect"}
            if msg["type"] == "http.request":
                st["seen"] += len(msg.get("body", b""))
                st["done"] = not msg.get("more_body", False)
                if st["seen"] > self.limit:
                    st["problem"] = (413, "too_large", f"request body over {self.limit} bytes; refused while "
                                                       "it arrived")
                    return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg):
            if st["problem"] and not st["started"]:
                if msg["type"] == "http.response.start":
                    status, code, message = st["problem"]
                    body = json.dumps({"error": {"code": code, "message": message}}).encode()
                    await send({"type": "http.response.start", "status": status,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                    await send({"type": "http.response.body", "body": body})
                    st["started"] = True
                return
            if msg["type"] == "http.response.start":
                st["started"] = True
            elif st["problem"]:
                return  # the replaced response's body
            await send(msg)

        await self.app(scope, guarded_receive, guarded_send)


def upload_name(filename: str | None) -> str:
    """The upload's own file name, for messages and answers only (it is never a path here): its last component,
    control characters dropped, at most 200 characters."""
    import unicodedata

    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")[:200].strip()
    return name if name not in ("", ".", "..") else "upload"


class MicroBatcher:
    """One queue of pages, one worker: concurrent requests' pages are generated together, up to ``batch_size``."""

    def __init__(self, predictor, batch_size: int, max_wait_ms: float, metrics: "Metrics"):
        from concurrent.futures import ThreadPoolExecutor

        self.predictor = predictor
        # One thread runs the model, always the same: the model is not shared between threads, and glibc gives
        # each thread its own malloc arena, so a rotating pool of threads grew the process by a fifth over 500
        # requests (scripts/load_test.py) where one thread stays flat.
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.decode_threads = ThreadPoolExecutor(2, thread_name_prefix="decode")  # images and PDFs to pages
        self.batch_size = batch_size
        self.max_wait = max_wait_ms / 1000
        self.metrics = metrics
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._worker())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.model_thread.shutdown(wait=False, cancel_futures=True)
        self.decode_threads.shutdown(wait=False, cancel_futures=True)
        getattr(self.predictor, "close", lambda: None)()  # (a row reader's page workers)

    async def submit(self, image, prompt: str) -> str:
        fut = asyncio.get_running_loop().create_future()
        if getattr(self.predictor, "prepares_ahead", False):
            # a row reader with page workers: the page is prepared (deskew, segment) by a worker as soon as it
            # arrives, while the model reads earlier batches, and joins the queue as its rows: a batch never waits
            # on a page, and a page that fails to prepare fails its own request only
            image = _Rows(await asyncio.wrap_future(self.predictor.submit_page(image)))
        await self.queue.put((image, prompt, fut))
        self.metrics.queue.set(self.queue.qsize())
        return await fut

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            batch = [b for b in batch if not b[2].done()]  # a timed-out request's pages are not generated
            self.metrics.queue.set(self.queue.qsize())
            if not batch:
                continue
            try:
                texts = await loop.run_in_executor(self.model_thread, self._read, [b[0] for b in batch],
                                                   [b[1] for b in batch])
            except Exception as e:  # the model failed: every waiting request gets a 500, the server lives on
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.metrics.batch.observe(len(batch))
            self.metrics.pages.inc(len(batch))
            for (_, _, fut), text in zip(batch, texts):
                if not fut.done():
                    fut.set_result(text)
            if self.queue.empty() and hasattr(self.predictor, "release_memory"):
                # idle: what the batch freed goes back to the system (at most once a second; a request arriving
                # meanwhile waits the 20-65 ms it takes)
                await loop.run_in_executor(self.model_thread, self.predictor.release_memory, 1.0)

    def _read(self, items: list, prompts: list[str]) -> list[str]:
        """In the model's thread: pages, or pages prepared by the workers (``submit``), to their texts."""
        if items and isinstance(items[0], _Rows):
            return self.predictor.read_prepared([i.rows for i in items], prompts)
        return self.predictor.generate_batch(items, prompts)


@dataclass
class _Rows:
    """A page as its prepared rows (``Predictor.submit_page``'s result), on the batcher's queue."""

    rows: list


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes: the load script watches it
        self.requests = Counter("invoice_vlm_requests", "HTTP requests", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("invoice_vlm_request_seconds", "request latency", ["endpoint"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=self.registry)
        self.pages = Counter("invoice_vlm_pages", "pages read", registry=self.registry)
        self.batch = Histogram("invoice_vlm_batch_pages", "pages per forward pass",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.queue = Gauge("invoice_vlm_queue_pages", "pages waiting", registry=self.registry)


def _page_preview(image, width: int = 900) -> str:
    im = image.copy()
    im.thumbnail((width, width * 2))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def create_app(predictor, cfg: ServeConfig | None = None, model_name: str = ""):
    """The FastAPI app around an engine (tests pass a small one; ``serve`` loads ``cfg.model``)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, File, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .data import document_pages
    from .fields import task_prompt, task_result

    cfg = cfg or ServeConfig()
    metrics = Metrics()
    batcher = MicroBatcher(predictor, cfg.batch_size, cfg.max_wait_ms, metrics)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="invoice-vlm", version="0.1.0", lifespan=lifespan,
                  description="Invoice OCR and key-field extraction with a vision-language model.")
    app.state.batcher, app.state.metrics, app.state.config = batcher, metrics, cfg
    # inside the counting middleware below, so that its 413/408 answers are counted too
    app.add_middleware(BodyGuard, limit=int(cfg.max_upload_mb * 1024 * 1024) + 64 * 1024, timeout=cfg.read_timeout_s)

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return error(500, "internal_error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    @app.middleware("http")
    async def _count(request: Request, call_next):
        t0 = time.perf_counter()
        endpoint = request.url.path if request.url.path in ("/v1/ocr", "/v1/extract", "/health", "/") else "other"
        length = request.headers.get("content-length", "")
        # refuse a huge body before reading it (the multipart parser would spool all of it first)
        if length.isdigit() and int(length) > cfg.max_upload_mb * 1024 * 1024 + 64 * 1024:
            response = error(413, "too_large", f"request body of {int(length)} bytes; uploads up to "
                                               f"{cfg.max_upload_mb:g} MB")
        else:
            response = await call_next(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    def check_key(request: Request) -> None:
        if not cfg.api_key:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        if not given or not secrets.compare_digest(given.encode(), cfg.api_key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key (X-API-Key header or Bearer token)")

    async def read_upload(file: UploadFile, name: str) -> bytes:
        limit = int(cfg.max_upload_mb * 1024 * 1024)
        ctype = (file.content_type or "application/octet-stream").split(";")[0].strip().lower()
        if ctype not in ALLOWED_TYPES:
            raise ApiError(415, "unsupported_media_type",
                           f"{name}: content type {ctype} not accepted (an image or application/pdf)")
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "too_large", f"{name}: larger than {cfg.max_upload_mb:g} MB")
        return data

    async def run(task: str, request: Request, file: UploadFile, preview: bool) -> dict[str, Any]:
        check_key(request)
        t0 = time.perf_counter()
        name = upload_name(file.filename)
        data = await read_upload(file, name)
        from .data import is_pdf

        if data and not is_pdf(data) and not _looks_like_image(data):
            raise ApiError(415, "unsupported_media_type", f"{name}: not an image or a PDF (unrecognised content)")
        try:
            pages = await asyncio.get_running_loop().run_in_executor(
                batcher.decode_threads, document_pages, data, name, None, cfg.dpi, cfg.max_pages)
        except InvoiceVLMError as e:
            msg = str(e)
            status = 413 if "per document" in msg or "too large" in msg else 422
            raise ApiError(status, "too_large" if status == 413 else "unreadable", msg) from None
        prompt = task_prompt(task)
        try:
            texts = await asyncio.wait_for(asyncio.gather(*(batcher.submit(im, prompt) for _, im in pages)),
                                           cfg.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"{name}: not done within {cfg.timeout_s:g} s") from None
        out = []
        for (k, im), text in zip(pages, texts):
            row: dict[str, Any] = {"page": k, **task_result(task, text)}
            if preview:
                row["preview"] = _page_preview(im)
            out.append(row)
        return {"file": name, "task": task, "model": model_name, "pages": out,
                "seconds": round(time.perf_counter() - t0, 3)}

    @app.post("/v1/ocr", summary="Transcribe every page of an invoice (image or PDF)")
    async def ocr(request: Request, file: UploadFile = File(...), preview: bool = False):
        return await run("ocr", request, file, preview)

    @app.post("/v1/extract", summary="Key fields of every page of an invoice, as JSON")
    async def extract(request: Request, file: UploadFile = File(...), preview: bool = False):
        return await run("extract", request, file, preview)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "queue": batcher.queue.qsize() if batcher.queue else 0}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse((Path(__file__).parent / "web" / "index.html").read_text(encoding="utf-8"))

    return app


def _looks_like_image(data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return bool(im.format)
    except Exception:
        # a known image signature that does not open is a broken image (422 later), not an unknown type
        return data[:8].startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"II*\x00", b"MM\x00*", b"BM", b"RIFF"))


def main(cfg: ServeConfig) -> None:
    import uvicorn

    from .infer import Predictor

    # the workers prepare pages as requests arrive; the batcher reads them in this process (read_in_workers off:
    # a worker reading whole batches with its own model suits a stream of files, not requests to answer each soon)
    predictor = Predictor.from_pretrained(cfg.model, quantize=cfg.quantize, max_new_tokens=cfg.max_new_tokens,
                                          batch_size=cfg.batch_size, decode=cfg.decode, workers=cfg.workers,
                                          lexicon=cfg.lexicon, read_in_workers=False)
    uvicorn.run(create_app(predictor, cfg, cfg.model), host=cfg.host, port=cfg.port, log_level="info")
