"""A fake Civitai on 127.0.0.1 for the tests: the documented API (docs/civitai.md) plus scripted misbehaviour.

- `GET /api/v1/model-versions/by-hash/{hash}`, `/api/v1/model-versions/{id}`, `/api/v1/models/{id}`: JSON, or
  404 `{"error": ...}` as Civitai answers for an unknown id or hash.
- `GET /api/download/models/{id}`: 401 without a token when the version needs one, 403 for early access,
  else a 307 redirect to a "signed" URL `/signed/{id}?sig=...` that serves the bytes with a
  `Content-Disposition` name and honours `Range`.
- `script[path]`: answers given before the normal ones, in order: (status, headers, body) or "cut" (send half
  the file, then drop the connection) or ("stall", seconds).
Every request is recorded in `requests` as (path with query, headers).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], metadata: dict | None = None) -> bytes:
    """A safetensors file written by hand (no torch): {name: (dtype, shape)}, zero-filled."""
    sizes = {"F16": 2, "F32": 4}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        count = sizes[dtype]
        for dim in shape:
            count *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + count]}
        offset += count
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc0000003010100"
    "c9fe92ef0000000049454e44ae426082")


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client closing a kept-alive connection (or a test cutting one) is not a server error."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeCivitai:
    def __init__(self):
        self.versions: dict[int, dict] = {}
        self.models: dict[int, dict] = {}
        self.by_hash: dict[str, int] = {}
        self.files: dict[int, dict] = {}  # version id -> {"data", "name", "token", "early", "type"}
        self.images: dict[str, bytes] = {"preview.png": PNG_1PX}
        self.script: dict[str, list] = {}
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.delay = 0.0  # seconds each API answer takes (to see requests overlap)
        self.in_flight = self.max_in_flight = 0
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def add_version(self, version_id: int, model_id: int, data: bytes, *, name="style.safetensors",  # noqa: PLR0913
                    model_name="Fancy Style", base="SD 1.5", words=("fancystyle",), listed_sha: str | None = None,
                    token=False, early=False, images=None, served_name: str | None = None, **version_fields) -> dict:
        """A model version whose one file is `data`; `listed_sha` overrides the SHA-256 the API lists."""
        sha = hashlib.sha256(data).hexdigest()
        version = {
            "id": version_id, "modelId": model_id, "name": "v1.0", "baseModel": base, "trainedWords": list(words),
            "description": "<p>Version <b>one</b></p>",
            "model": {"name": model_name, "type": "LORA", "nsfw": False, "poi": False},
            "files": [{"id": version_id * 10, "name": name, "type": "Model", "primary": True, "sizeKB": len(data) / 1024,
                       "metadata": {"format": "SafeTensor", "fp": "fp16", "size": "pruned"},
                       "hashes": {"AutoV2": sha[:10].upper(), "SHA256": (listed_sha or sha).upper()},
                       "downloadUrl": f"{self.url}/api/download/models/{version_id}"}],
            "images": images if images is not None else [
                {"url": f"{self.url}/images/nsfw.png", "nsfwLevel": 8, "type": "image", "width": 1, "height": 1},
                {"url": f"{self.url}/images/preview.png", "nsfwLevel": 1, "type": "image", "width": 1, "height": 1}],
            "downloadUrl": f"{self.url}/api/download/models/{version_id}",
            **version_fields,
        }
        self.versions[version_id] = version
        self.by_hash[sha.lower()] = version_id
        self.by_hash[sha[:10].lower()] = version_id
        self.models.setdefault(model_id, {"id": model_id, "name": model_name, "type": "LORA",
                                          "description": "<p>A <i>fancy</i> style.</p>", "tags": ["style", "fancy"],
                                          "modelVersions": []})["modelVersions"].insert(0, version)
        self.files[version_id] = {"data": data, "name": served_name if served_name is not None else name,
                                  "token": token, "early": early}
        self.images["nsfw.png"] = PNG_1PX
        return version

    def paths(self) -> list[str]:
        with self.lock:
            return [path for path, _ in self.requests]


def _handler(fake: FakeCivitai):  # noqa: C901 - one small server, its routes side by side
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            with fake.lock:
                fake.requests.append((self.path, dict(self.headers)))
                scripted = fake.script.get(urlsplit(self.path).path)
                step = scripted.pop(0) if scripted else None
            if step is not None and self._scripted(step):
                return
            with fake.lock:
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                time.sleep(fake.delay)
                self._route(urlsplit(self.path).path)
            finally:
                with fake.lock:
                    fake.in_flight -= 1

        def _scripted(self, step) -> bool:
            """Play one scripted answer; False when the step only changes how the normal answer is sent."""
            if step == "cut":
                self.cut = True
                return False
            if isinstance(step, tuple) and step[0] == "stall":
                time.sleep(step[1])
                self.close_connection = True
                return True
            status, headers, body = step
            self._send(status, body, headers)
            return True

        def _route(self, path: str):  # noqa: PLR0911 - one answer per route
            parts = path.strip("/").split("/")
            if path.startswith("/api/v1/model-versions/by-hash/"):
                found = fake.by_hash.get(parts[-1].lower())
                return self._json(fake.versions[found]) if found else self._json({"error": "Model not found"}, 404)
            if path.startswith("/api/v1/model-versions/") and parts[-1].isdigit():
                found = fake.versions.get(int(parts[-1]))
                return self._json(found) if found else self._json({"error": "No version with id"}, 404)
            if path.startswith("/api/v1/models/") and parts[-1].isdigit():
                found = fake.models.get(int(parts[-1]))
                return self._json(found) if found else self._json({"error": "No model with id"}, 404)
            if path.startswith("/api/download/models/") and parts[-1].isdigit():
                return self._download(int(parts[-1]))
            if path.startswith("/signed/") and parts[-1].isdigit():
                return self._file(int(parts[-1]))
            if path.startswith("/images/") and parts[-1] in fake.images:
                return self._send(200, fake.images[parts[-1]], {"Content-Type": "image/png"})
            return self._json({"error": "Not found"}, 404)

        def _download(self, version_id: int):
            info = fake.files.get(version_id)
            if info is None:
                return self._json({"error": "Not found"}, 404)
            if info["token"] and not self.headers.get("Authorization", "").startswith("Bearer "):
                return self._json({"error": "Unauthorized"}, 401)
            if info["early"]:
                return self._json({"error": "Early access"}, 403)
            # storage on another host, as Civitai's signed URLs are: a client must not send the token there
            storage = fake.url.replace("127.0.0.1", "localhost")
            self._send(307, b"", {"Location": f"{storage}/signed/{version_id}?sig=s3cr3t&expires=1"})

        def _file(self, version_id: int):
            info = fake.files[version_id]
            data, start = info["data"], 0
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes="):
                start = int(wanted[6:].split("-")[0])
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers = {"Content-Type": "application/octet-stream"}
            if info["name"]:
                headers["Content-Disposition"] = info["name"] if info["name"].startswith("attachment") else \
                    f'attachment; filename="{info["name"]}"'
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            if getattr(self, "cut", False):  # promise everything, send half, drop the connection
                headers["Content-Length"] = str(len(body))
                self._head(206 if start else 200, headers)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(206 if start else 200, body, headers)

        def _json(self, data, status=200):
            self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _head(self, status, headers):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

        def _send(self, status, body: bytes, headers=None):
            headers = dict(headers or {})
            headers.setdefault("Content-Length", str(len(body)))
            self._head(status, headers)
            self.wfile.write(body)

    return Handler
