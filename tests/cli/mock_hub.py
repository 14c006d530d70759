"""A local stand-in for the Hugging Face hub, for the `airavata pull` tests.

It serves, on 127.0.0.1 only, the two parts of the hub that pull uses:

  GET /api/models/ORG/NAME/revision/REV[?blobs=true]
      {"sha": COMMIT, "siblings": [{"rfilename", "blobId", "size",
      "lfs": {"sha256", "size", "pointerSize"}}]}, as huggingface.co returns
  GET /ORG/NAME/resolve/REV/FILE
      the file; LFS files are redirected to /storage/SHA256 as huggingface.co
      redirects them to its storage host

with Range support and the hub's X-Error-Code headers (RepoNotFound,
RevisionNotFound, EntryNotFound, GatedRepo). Switches on the MockHub object
make it require a token, cut the connection after some bytes, serve
corrupted bytes or ignore Range headers, and every request is recorded so
tests can count what was downloaded.
"""
import hashlib
import http.server
import json
import pathlib
import threading
import urllib.parse

# Files stored with Git LFS on the hub, by suffix (the usual .gitattributes).
LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".pt")


def git_blob_sha1(data):
    """Return the git blob id of `data`: sha1 of "blob SIZE\\0" + data."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    """One model repository: files read from a local directory, one commit."""

    def __init__(self, repo_id, files):
        self.repo_id = repo_id
        self.files = dict(sorted(files.items()))  # repository path -> bytes
        digest = hashlib.sha1(repo_id.encode())
        for path, data in self.files.items():
            digest.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
        self.commit = digest.hexdigest()
        self.revisions = {"main": self.commit}

    @classmethod
    def from_dir(cls, repo_id, directory):
        directory = pathlib.Path(directory)
        files = {p.relative_to(directory).as_posix(): p.read_bytes()
                 for p in directory.rglob("*") if p.is_file()}
        return cls(repo_id, files)

    def sibling(self, path, blobs):
        data = self.files[path]
        entry = {"rfilename": path}
        if blobs:
            entry["blobId"] = git_blob_sha1(data)
            entry["size"] = len(data)
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                "size": len(data), "pointerSize": 134}
        return entry


class MockHub:
    def __init__(self):
        self.repos = {}
        self.require_token = None  # a token string: file requests need it
        self.drop_after = None     # bytes of a file body sent before the connection is cut
        self.drop_count = 0        # number of file responses to cut
        self.corrupt = set()       # repository paths served with one byte changed
        self.ignore_range = False  # send the whole file for Range requests
        self.redirect_lfs = True   # send LFS files through /storage/
        self.requests = []         # dicts: method, path, range, authorization
        self.lock = threading.Lock()
        self.server = None
        self.thread = None

    def add_repo(self, repo):
        self.repos[repo.repo_id] = repo
        return repo

    # ---- lifecycle --------------------------------------------------------

    def start(self):
        hub = self

        class Handler(RequestHandler):
            mock = hub

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # ---- counters ---------------------------------------------------------

    def file_requests(self):
        """Return the recorded requests that fetched file content."""
        with self.lock:
            return [r for r in self.requests
                    if "/resolve/" in r["path"] or r["path"].startswith("/storage/")]

    def api_requests(self):
        with self.lock:
            return [r for r in self.requests if r["path"].startswith("/api/")]

    def reset_counters(self):
        with self.lock:
            self.requests.clear()

    def find_lfs(self, sha256):
        for repo in self.repos.values():
            for path, data in repo.files.items():
                if hashlib.sha256(data).hexdigest() == sha256:
                    return repo, path
        return None, None


class RequestHandler(http.server.BaseHTTPRequestHandler):
    mock = None  # set by MockHub.start

    def log_message(self, format, *args):
        pass

    def send_json(self, status, body, error_code=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", body.get("error", ""))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        with self.mock.lock:
            self.mock.requests.append({
                "method": "GET", "path": url.path, "query": url.query,
                "range": self.headers.get("Range"),
                "authorization": self.headers.get("Authorization")})
        parts = url.path.split("/")
        if url.path.startswith("/api/models/") and len(parts) >= 7 and parts[5] == "revision":
            self.handle_listing(parts[3] + "/" + parts[4], "/".join(parts[6:]),
                                "blobs=true" in url.query)
        elif len(parts) >= 6 and parts[3] == "resolve":
            self.handle_resolve(parts[1] + "/" + parts[2], parts[4], "/".join(parts[5:]))
        elif len(parts) == 3 and parts[1] == "storage":
            repo, path = self.mock.find_lfs(parts[2])
            if repo is None:
                self.send_json(404, {"error": "not found"})
            else:
                self.send_file(repo, path)
        else:
            self.send_json(404, {"error": "unknown route"})

    def lookup(self, repo_id, revision):
        """Return (repo, commit) or send the hub's error and return None."""
        repo = self.mock.repos.get(repo_id)
        if repo is None:
            self.send_json(404, {"error": "Repository not found"}, "RepoNotFound")
            return None
        revision = urllib.parse.unquote(revision)
        commit = repo.revisions.get(revision, revision if revision == repo.commit else None)
        if commit is None:
            self.send_json(404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound")
            return None
        return repo, commit

    def handle_listing(self, repo_id, revision, blobs):
        found = self.lookup(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        self.send_json(200, {"id": repo_id, "modelId": repo_id, "sha": commit,
                             "siblings": [repo.sibling(p, blobs) for p in repo.files]})

    def authorized(self):
        token = self.mock.require_token
        if token is None:
            return True
        sent = self.headers.get("Authorization")
        if sent == f"Bearer {token}":
            return True
        status = 401 if sent is None else 403
        self.send_json(status, {"error": "Access to this model is restricted. You must be "
                                         "authenticated and accept its conditions."},
                       "GatedRepo")
        return False

    def handle_resolve(self, repo_id, revision, path):
        found = self.lookup(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        path = urllib.parse.unquote(path)
        if path not in repo.files:
            self.send_json(404, {"error": "Entry not found"}, "EntryNotFound")
            return
        if not self.authorized():
            return
        if self.mock.redirect_lfs and path.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(repo.files[path]).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"{self.mock.endpoint}/storage/{sha256}")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("X-Linked-Size", str(len(repo.files[path])))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_file(repo, path)

    def send_file(self, repo, path):
        data = repo.files[path]
        if path in self.mock.corrupt:
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
            data = bytes(data)
        start = 0
        requested = self.headers.get("Range")
        status = 200
        if requested and not self.mock.ignore_range:
            spec = requested.removeprefix("bytes=").split("-")
            start = int(spec[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{git_blob_sha1(repo.files[path])}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()

        with self.mock.lock:
            drop = (self.mock.drop_count > 0 and self.mock.drop_after is not None
                    and len(body) > self.mock.drop_after)
            if drop:
                self.mock.drop_count -= 1
        if drop:
            self.wfile.write(body[:self.mock.drop_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)
