"""A minimal stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for testing `push_to_hub` end to end.

It implements just what huggingface_hub's upload path calls — create a repo, download a committed file (the model
card push_to_hub starts from), validate the card's metadata, the preupload and commit endpoints — and keeps every
committed file in memory (`hub.files[repo_id][path]`), so a test can check exactly what `push_to_hub` uploaded.
"""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self):
        self.files: dict[str, dict[str, bytes]] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, payload=None, headers=None):
                body = json.dumps(payload or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                if "/resolve/" in self.path:  # a committed file (e.g. the model card), as hf_hub_download asks
                    repo_id, _, rest = self.path.lstrip("/").partition("/resolve/")
                    content = hub.files.get(repo_id, {}).get(rest.partition("/")[2])
                    if content is None:
                        self._reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                        return
                    self.send_response(200)
                    for key, value in {"Content-Length": str(len(content)), "X-Repo-Commit": "1" * 40,
                                       "ETag": f'"{hashlib.sha1(content).hexdigest()}"'}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(content)
                else:
                    self._reply(404, {"error": f"not implemented: GET {self.path}"})

            def do_POST(self):
                body = self._body()
                if self.path == "/api/repos/create":
                    request = json.loads(body)
                    repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
                    hub.files.setdefault(repo_id, {})
                    self._reply(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
                elif self.path == "/api/validate-yaml":  # the model card's metadata
                    self._reply(200, {"errors": [], "warnings": []})
                elif "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                for f in files]})
                elif "/commit/" in self.path:
                    repo_id = self.path.split("/api/models/")[1].split("/commit/")[0]
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            value = item["value"]
                            hub.files.setdefault(repo_id, {})[value["path"]] = base64.b64decode(value["content"])
                    self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/1",
                                      "commitOid": "1" * 40})
                else:
                    self._reply(404, {"error": f"not implemented: POST {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
