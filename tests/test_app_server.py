"""The teaching app served on 127.0.0.1, driven as a user's browser or a script would drive it.

One app (tiny seeded models, `tests.helpers.app`) is launched in this process with the launch
settings of ``biomed app`` (`apps.launch_kwargs`), then:

- each tab's main action through its event API (gradio_client): /generate, /compare,
  /quiz_new then /quiz_answer, /read_xray (PNG and DICOM), /read_example, /report_continue;
- the limits and refusals of the issue's safety section: uploads over ``max_file_size`` refused
  by the server, over ``uploads.max_bytes`` and over the pixel cap refused by the app, a corrupt
  DICOM answered with one line, files outside the app's cache never served (`ATTACKS`), an
  uploaded HTML file never served as a page, two concurrent generate requests both answered;
- where it listens and what it keeps: 127.0.0.1 only, no share link, analytics off, the queue's
  limits, gradio's cache inside the app's private folder.

Raw requests go through `http.client`, which sends the path byte for byte (httpx and browsers
remove ``../`` before sending, which would hide a traversal bug).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import struct
import threading
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from apps.common import display_label  # noqa: E402
from tests.helpers import dicom as D  # noqa: E402
from tests.helpers.app import LABELS, PROMPT, app_cfg, serve, tiny_models  # noqa: E402

MAX_FILE_SIZE = 10 * 1024 * 1024  # gradio's limit in this test ("10mb")
# the app's own limit (uploads.max_bytes): below gradio's, above the 7.2 MB RG1 example
APP_MAX_BYTES = 8_000_000
SECRET = "TOPSECRET-c7d1e0"  # in files the server must never hand out
PASSWD = "root:x:0:0"  # the first line of /etc/passwd
TRACE_WORDS = ("Traceback", 'File "', "site-packages")  # signs of a leaked traceback


# ---------------------------------------------------------------------------------------------
# the app and raw HTTP


@pytest.fixture(scope="module")
def app_tmp(tmp_path_factory) -> Path:
    """The folder beside the app: a secret file (``secret.txt``) and the app's
    de-identification key file (``app.key``, `app_cfg`)."""
    tmp = tmp_path_factory.mktemp("app")
    (tmp / "secret.txt").write_text(SECRET)
    return tmp


@pytest.fixture(scope="module")
def served(tmp_path_factory, app_tmp):
    """The app on a free port of 127.0.0.1, with a secret file inside its private folder but
    outside gradio's cache (``private.txt``)."""
    models = tiny_models(tmp_path_factory.mktemp("app_models"))
    cfg = app_cfg(models, app_tmp, "max_file_size=10mb", f"++uploads.max_bytes={APP_MAX_BYTES}")
    with serve(cfg) as s:
        (s.ctx.work_dir / "private.txt").write_text(SECRET)
        yield s


@pytest.fixture
def client(served, tmp_path):
    """A gradio_client session (its own browser session) downloading into ``tmp_path``."""
    return Client(served.url, verbose=False, download_files=str(tmp_path / "downloads"))


def raw_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` exactly as written (no normalisation of ``..`` or %-escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def raw_upload(port: int, name: str, data: bytes, content_type: str = "application/octet-stream"
               ) -> tuple[int, bytes]:
    """POST one file to gradio's upload route (``/gradio_api/upload``), as the page does."""
    b = uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/gradio_api/upload", body,
                     {"Content-Type": f"multipart/form-data; boundary={b}"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def png_bytes(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's
    header: decoding it would allocate width x height bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def text_of(result) -> str:
    """Every string of an API result, joined (for "nothing leaked" checks)."""
    return json.dumps(result, default=str)


def no_traceback(text: str) -> None:
    for word in TRACE_WORDS:
        assert word not in text, f"traceback text {word!r} in the answer: {text[:300]}"


# ---------------------------------------------------------------------------------------------
# where it listens, what it keeps


def test_listens_on_loopback_only_without_share_link(served):
    """The launch settings of ``biomed app``: 127.0.0.1, no share link, no extra served folder,
    gradio's upload limit; and the socket really is bound to 127.0.0.1 alone (another loopback
    address, 127.0.0.2, is refused: a server on 0.0.0.0 would accept it)."""
    kw, demo = served.kwargs, served.demo
    assert kw["server_name"] == "127.0.0.1" and demo.server_name == "127.0.0.1"
    assert kw["share"] is False and not demo.share and demo.share_url is None
    assert kw["allowed_paths"] == [] and list(demo.allowed_paths) == []
    assert demo.max_file_size == MAX_FILE_SIZE
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", served.port), timeout=2).close()
    socket.create_connection(("127.0.0.1", served.port), timeout=2).close()


def test_analytics_off_queue_limited_cache_private(served):
    """Analytics off (environment and Blocks); the queue runs one request at a time per event
    and holds at most ``queue.max_size``; gradio's file cache (uploads, outputs) is the
    ``gradio/`` folder of the app's private folder (mode 0700), cleaned by ``delete_cache``."""
    demo, ctx, cfg = served.demo, served.ctx, served.ctx.cfg
    assert os.environ.get("GRADIO_ANALYTICS_ENABLED") == "False"
    assert demo.analytics_enabled is False
    assert demo._queue.default_concurrency_limit == cfg.queue.concurrency == 1
    assert demo._queue.max_size == cfg.queue.max_size
    cache = ctx.work_dir / "gradio"
    assert Path(demo.GRADIO_CACHE) == cache
    assert Path(demo.server_app.uploaded_file_dir) == cache
    assert ctx.work_dir.stat().st_mode & 0o777 == 0o700
    assert tuple(demo.delete_cache) == tuple(cfg.delete_cache)


# ---------------------------------------------------------------------------------------------
# each tab's main action


def test_generate(client, served):
    """/generate: one SYNTHETIC image, its provenance, and its 16-bit PNG and DICOM downloads
    (the DICOM says it is synthetic: ConversionType SYN)."""
    import pydicom
    from PIL import Image

    gallery, banner, provenance, files = client.predict(PROMPT, 1, 3, 4.0, 2,
                                                        api_name="/generate")
    assert len(gallery) == 1 and "SYNTHETIC" in gallery[0]["caption"]
    assert Image.open(gallery[0]["image"]).size[0] >= 32
    assert "SYNTHETIC" in banner
    assert "2 steps" in provenance and "base seed 3" in provenance
    names = sorted(Path(f).suffix for f in files)
    assert names == [".dcm", ".png"]
    dcm = pydicom.dcmread(next(f for f in files if f.endswith(".dcm")))
    assert dcm.ConversionType == "SYN"
    png = Image.open(next(f for f in files if f.endswith(".png")))
    assert png.mode.startswith("I")  # 16-bit grey


def test_compare(client):
    """/compare: the model's two images and their difference map, the phantom's two drawings
    and theirs, and the words under them."""
    from PIL import Image

    out = client.predict("No pleural effusion.", "Moderate left pleural effusion.", 0, 2, 4.0,
                         api_name="/compare")
    images, words = out[:6], out[6]
    for path in images:
        assert Image.open(path).size[0] > 0
    assert isinstance(words, str) and words


def test_quiz_round(client):
    """/quiz_new then /quiz_answer in one session: a phantom question with choices, then a
    verdict and the score of the round so far."""
    from PIL import Image

    image, choices, _, score = client.predict(api_name="/quiz_new")
    assert Image.open(image).size[0] > 0
    values = [c[1] if isinstance(c, list | tuple) else c for c in choices["choices"]]
    assert "no_finding" in values and "effusion" in values
    assert "no answer yet" in score
    feedback, score = client.predict(["effusion"], api_name="/quiz_answer")
    assert ("Correct" in feedback or "Not quite" in feedback) and "The report" in feedback
    assert re.search(r"Question 1 of \d+ answered", score)


def test_read_png(client, tmp_path):
    """/read_xray with a PNG: the classifier's probability per label, Grad-CAM overlays,
    CLIP's zero-shot scores and similar cases from the report bank."""
    rng = np.random.default_rng(0)
    path = tmp_path / "chest.png"
    path.write_bytes(png_bytes((rng.random((64, 64)) * 255).astype(np.uint8)))
    out = client.predict(handle_file(str(path)), api_name="/read_xray")
    image, probs, cams, zero, similar, header, status = out[:7]
    assert image is not None
    assert {c["label"] for c in probs["confidences"]} == {display_label(n) for n in LABELS}
    assert cams and "Grad-CAM" in cams[0]["caption"]
    assert zero["confidences"]
    assert "Similar cases" in similar and "CXR" in similar
    assert "PNG" in status
    assert not any("(0010," in row[0] for row in header["data"])  # no DICOM patient tags


def test_read_dicom_is_deidentified_and_deleted(client, served, tmp_path):
    """/read_xray with a PACS-export DICOM: probabilities come back, the header shown holds
    none of the file's identifying values (de-identified in memory with the app's key), and
    the uploaded file is gone from the server afterwards."""
    name = f"upload_{uuid.uuid4().hex[:8]}.dcm"
    path = D.save(D.make_dataset(), tmp_path / name)
    out = client.predict(handle_file(path), api_name="/read_xray")
    probs, header, status = out[1], out[5], out[6]
    assert {c["label"] for c in probs["confidences"]} == {display_label(n) for n in LABELS}
    assert "DICOM" in status and header["data"]
    shown = text_of(out)
    leaked = [v for v in D.identifying_values() if v in shown]
    assert not leaked, f"identifying values on the page: {leaked}"
    assert not list(served.ctx.work_dir.rglob(name)), "the upload was kept on the server"


def test_a_cached_file_no_one_uploaded_is_neither_read_nor_deleted(served):
    """A script POSTs to /read_xray the path of a file in gradio's cache that was never uploaded
    (another session's image: its name is a hash of its content, so it can be guessed): the
    app refuses it and the file stays."""
    import json
    import urllib.request

    victim = served.ctx.work_dir / "gradio" / "f00d" / "someone_elses.png"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(png_bytes(np.full((64, 64), 128, np.uint8)))
    body = json.dumps({"data": [{"path": str(victim), "meta": {"_type": "gradio.FileData"}}]})
    req = urllib.request.Request(f"{served.url.rstrip('/')}/gradio_api/call/read_xray",
                                 body.encode(), {"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    with urllib.request.urlopen(f"{served.url.rstrip('/')}/gradio_api/call/read_xray/{event}",
                                timeout=60) as r:
        answer = r.read().decode()
    assert "not uploaded to this app" in answer
    assert victim.is_file()


def test_model_events_share_one_queue(served):
    """queue.concurrency limits the whole app's CPU work: every event that runs a model or
    renders phantoms is in one concurrency group, whichever tab sends it."""
    from apps import HEAVY_EVENTS

    fns = {fn.api_name: fn for fn in served.demo.fns.values() if isinstance(fn.api_name, str)}
    assert set(fns) >= HEAVY_EVENTS
    assert {fns[n].concurrency_id for n in HEAVY_EVENTS} == {"models"}
    assert {fns[n].concurrency_limit for n in HEAVY_EVENTS} == {served.ctx.cfg.queue.concurrency}


def test_read_example(client):
    """/read_example: the built-in real radiograph RG1 (from the data cache), read as an
    upload; without the cache it is one line naming the fetch command."""
    try:
        out = client.predict(api_name="/read_example")
    except AppError as e:  # the data cache has no RG1: one line naming the fetch command
        no_traceback(str(e))
        assert "biomed data fetch" in str(e)
        pytest.skip(f"RG1 is not in the data cache: {e}")
    probs, status = out[1], out[6]
    no_traceback(text_of(out))
    if "Could not read" in status or not probs:
        assert "biomed data fetch" in status
        pytest.skip("RG1 is not in the data cache (biomed data fetch chest_dicom)")
    assert {c["label"] for c in probs["confidences"]} == {display_label(n) for n in LABELS}


def test_report_continue(client):
    """/report_continue: the LM continues the text, and says what it did."""
    text, stats = client.predict("Pleural effusion is", 8, 0.8, 0.95, 0,
                                 api_name="/report_continue")
    assert text.startswith("Pleural effusion is") and len(text) > len("Pleural effusion is")
    assert "token" in stats


# ---------------------------------------------------------------------------------------------
# refusals


def test_oversize_upload_refused_by_server(served):
    """An upload over ``max_file_size`` (10 MB here) POSTed straight to gradio's upload route
    (skipping the client's own check) is refused with 413 and gradio's message, and nothing of
    it stays in the cache."""
    name = f"big_{uuid.uuid4().hex[:8]}.png"
    data = b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_FILE_SIZE + 1024)
    status, body = raw_upload(served.port, name, data)
    assert status == 413
    assert b"maximum allowed size" in body
    assert not list(served.ctx.work_dir.rglob(name))


def test_oversize_for_the_app_refused_with_a_message(client, tmp_path):
    """An upload under gradio's limit but over the app's own (``uploads.max_bytes``) is refused
    by the app before decoding, with one line on the page."""
    path = tmp_path / "large.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (APP_MAX_BYTES + 1024))
    out = client.predict(handle_file(str(path)), api_name="/read_xray")
    status = out[6]
    assert "Could not read" in status and "too large" in status
    assert out[1] in (None, {}) or not out[1].get("confidences")
    no_traceback(text_of(out))


def test_pixel_bomb_refused_before_decoding(client, tmp_path):
    """A 200-byte PNG whose header declares 20000 x 20000 pixels (400 MP, a decompression
    bomb) is refused from its header, before any pixel is decoded."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 20000))
    out = client.predict(handle_file(str(path)), api_name="/read_xray")
    status = out[6]
    assert "Could not read" in status and "pixel" in status.lower()
    no_traceback(text_of(out))


def test_corrupt_dicom_answered_with_a_message(client, served, tmp_path):
    """A DICOM cut after its first 700 bytes: the page gets one short line naming the file and
    the reason; no traceback and no server path in the answer."""
    good = Path(D.save(D.make_dataset(), tmp_path / "whole.dcm")).read_bytes()
    path = tmp_path / "corrupt.dcm"
    path.write_bytes(good[:700])
    out = client.predict(handle_file(str(path)), api_name="/read_xray")
    status = out[6]
    assert "Could not read" in status and "corrupt.dcm" in status
    assert len(status) < 400
    shown = text_of(out)
    no_traceback(shown)
    assert str(served.ctx.work_dir) not in shown


def test_bad_values_answered_with_one_line(client):
    """Values a page's sliders never send but a script can: an empty prompt and 10000 steps.
    Each is refused with a one-line message naming the setting or its limit, never a
    traceback."""
    with pytest.raises(AppError) as empty:
        client.predict("   ", 1, 0, 4.0, 2, api_name="/generate")
    assert "report text" in str(empty.value)
    with pytest.raises(AppError) as steps:
        client.predict(PROMPT, 1, 0, 4.0, 10_000, api_name="/generate")
    assert "50" in str(steps.value)  # the limit (gradio's slider check or the app's own)
    for e in (empty.value, steps.value):
        assert "\n" not in str(e).strip()
        no_traceback(str(e))


# Requests for files outside the app's cache. {secret}: a file beside the app (the test's tmp
# folder); {key}: the app's de-identification key file; {private}: a file in the app's private
# folder but outside gradio's cache; {cache}: gradio's cache folder (to climb out of it).
ATTACKS = {
    "root /file= absolute": "/file={secret}",
    "api /file= absolute": "/gradio_api/file={secret}",
    "api /file= key file": "/gradio_api/file={key}",
    "api /file= private folder": "/gradio_api/file={private}",
    "api /file= /etc/passwd": "/gradio_api/file=/etc/passwd",
    "root /file= /etc/passwd": "/file=/etc/passwd",
    "root /file= ../": "/file=../../../../../../../../etc/passwd",
    "api /file= ../": "/gradio_api/file=../../../../../../../../etc/passwd",
    "api /file= cache/../secret": "/gradio_api/file={cache}/../../../../../../..{secret}",
    "api /file= cache/../private": "/gradio_api/file={cache}/../private.txt",
    "api /file= %2e%2e%2f": "/gradio_api/file=%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f"
                            "%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "api /file= ..%2f": "/gradio_api/file=..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "api /file= %2f absolute": "/gradio_api/file=%2fetc%2fpasswd",
    "api /file= double-encoded": "/gradio_api/file=%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    "api /file= cache/%2e%2e": "/gradio_api/file={cache}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/"
                               "%2e%2e/etc/passwd",
    "api /file= //": "/gradio_api/file=//etc/passwd",
    "api /file= NUL": "/gradio_api/file=/etc/passwd%00.png",
    "api /file= ~": "/gradio_api/file=~/.bashrc",
    "api /file= file://": "/gradio_api/file=file:///etc/passwd",
    "api /file= loopback URL": "/gradio_api/file=http://127.0.0.1:{port}/gradio_api/file={secret}",
    "api /file/ (old route)": "/gradio_api/file/{secret}",
    "api /file/ ../": "/gradio_api/file/../../../../../../etc/passwd",
    "/static ../": "/static/../../../../../../etc/passwd",
    "/assets ../": "/assets/../../../../../../etc/passwd",
    "/gradio_api/../": "/gradio_api/../../../../../../etc/passwd",
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_file_outside_the_app_refused(served, app_tmp, attack):
    """GET of a file outside gradio's cache, by absolute path or by climbing out with ``../``
    (raw, %-encoded, double-encoded), through both file routes (``/file=`` and
    ``/gradio_api/file=``) and others: refused (400/403/404), and no byte of the target's
    contents in the answer."""
    path = ATTACKS[attack].format(
        secret=app_tmp / "secret.txt", key=app_tmp / "app.key", port=served.port,
        private=served.ctx.work_dir / "private.txt", cache=served.ctx.work_dir / "gradio")
    status, _, body = raw_get(served.port, path)
    key = (app_tmp / "app.key").read_text().strip()
    assert status in (400, 403, 404), f"{path}: HTTP {status}"
    assert SECRET.encode() not in body and PASSWD.encode() not in body
    assert key.encode() not in body


def test_uploaded_html_never_served_as_a_page(served):
    """A file a user uploads comes back from the cache only as a download: an HTML page with a
    script is served as ``application/octet-stream``, attachment (no stored XSS through the
    app's own origin)."""
    status, body = raw_upload(served.port, "page.html",
                              b"<html><script>alert(1)</script></html>", "text/html")
    assert status == 200
    stored = json.loads(body)[0]
    status, headers, _ = raw_get(served.port, f"/gradio_api/file={stored}")
    if status == 200:
        assert "text/html" not in headers.get("content-type", "")
        assert headers.get("content-disposition", "").startswith("attachment")


# ---------------------------------------------------------------------------------------------
# two users


def test_two_concurrent_generate_requests_both_answered(served, tmp_path):
    """Two sessions click Generate at the same moment: the queue runs them one after the other
    (concurrency 1) and both get their image."""
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def one(k: int) -> None:
        try:
            c = Client(served.url, verbose=False, download_files=str(tmp_path / f"c{k}"))
            start.wait(timeout=30)
            results[k] = c.predict(PROMPT, 1, k, 4.0, 2, api_name="/generate")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(results) == [0, 1]
    for k, (gallery, banner, provenance, _) in results.items():
        assert len(gallery) == 1 and "SYNTHETIC" in banner
        assert f"base seed {k}" in provenance
