"""Pretrained files: fetched once from a loopback HTTP server, cached, hash-checked; every failure one line.

The entries are pointed at the server with `ZEROSR_WEIGHTS_INDEX` (the documented override for
mirrors), with the SHA-256 of files the tests make.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pytest

from zerosr import pretrained
from zerosr.errors import UserError

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: several chunks


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture()
def server():
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            if self.path == "/broken.pth":  # half the bytes, then the connection drops
                self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    httpd = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/vgg19.pth"


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A cache of its own and an index file; returns a function that points 'vgg19' somewhere."""
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(pretrained.FOLDER_ENV, raising=False)
    pretrained.set_weights_dir(None)
    index = tmp_path / "index.json"
    monkeypatch.setenv(pretrained.INDEX_ENV, str(index))

    def point(url: str, sha256: str = hashlib.sha256(PAYLOAD).hexdigest()) -> None:
        index.write_text(json.dumps({"vgg19": {"url": url, "sha256": sha256, "file_name": "vgg19-test.pth"}}))

    yield point
    pretrained.set_weights_dir(None)


def leftovers(tmp_path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_first_use_downloads_then_the_cache_serves(server, env, tmp_path, capsys):
    url, hits = server
    env(f"{url}/vgg19.pth")
    path = pretrained.path_of("vgg19")
    assert path == tmp_path / "cache" / "vgg19-test.pth" and path.read_bytes() == PAYLOAD
    assert "downloading vgg19-test.pth" in capsys.readouterr().err  # the progress bar
    assert pretrained.path_of("vgg19") == path
    assert hits == ["/vgg19.pth"]  # once
    path.write_bytes(b"corrupted")  # a damaged cache file is deleted and fetched again
    assert pretrained.path_of("vgg19").read_bytes() == PAYLOAD and len(hits) == 2
    assert leftovers(tmp_path) == ["vgg19-test.pth"]


def test_hash_mismatch_deletes_the_download(server, env, tmp_path):
    url, _ = server
    env(f"{url}/vgg19.pth", sha256="0" * 64)
    with pytest.raises(UserError, match="has SHA-256 .* not 000000000000...: deleted") as error:
        pretrained.path_of("vgg19")
    assert "\n" not in str(error.value)
    assert leftovers(tmp_path) == []


def test_interrupted_download_leaves_nothing(server, env, tmp_path):
    url, _ = server
    env(f"{url}/broken.pth")
    with pytest.raises(UserError, match=r"download of .*/broken.pth (broke off|ended) after"):
        pretrained.path_of("vgg19")
    assert leftovers(tmp_path) == []


def test_no_network_names_url_file_and_folder(env, tmp_path):
    url = closed_port_url()
    env(url)
    with pytest.raises(UserError) as error:
        pretrained.path_of("vgg19")
    message = str(error.value)
    assert url in message and str(tmp_path / "cache" / "vgg19-test.pth") in message
    assert "ZEROSR_WEIGHTS_DIR" in message and "\n" not in message


def test_local_folder_wins_and_is_checked(server, env, tmp_path, monkeypatch):
    url, hits = server
    env(f"{url}/vgg19.pth")
    folder = tmp_path / "offline"
    folder.mkdir()
    (folder / "vgg19-test.pth").write_bytes(PAYLOAD)
    monkeypatch.setenv(pretrained.FOLDER_ENV, str(folder))
    assert pretrained.path_of("vgg19") == folder / "vgg19-test.pth"
    other = tmp_path / "config_folder"  # train.weights_dir comes first
    other.mkdir()
    (other / "vgg19-test.pth").write_bytes(PAYLOAD)
    pretrained.set_weights_dir(other)
    assert pretrained.path_of("vgg19") == other / "vgg19-test.pth"
    (other / "vgg19-test.pth").write_bytes(b"another file")
    with pytest.raises(UserError, match="is another file"):
        pretrained.path_of("vgg19")
    assert (other / "vgg19-test.pth").read_bytes() == b"another file"  # the user's file is left alone
    assert hits == [] and leftovers(tmp_path) == []


def test_offline_message_names_the_users_folder(env, tmp_path):
    env(closed_port_url())
    pretrained.set_weights_dir(tmp_path / "mine")
    with pytest.raises(UserError, match=f"save it as {tmp_path / 'mine' / 'vgg19-test.pth'}"):
        pretrained.path_of("vgg19")


def test_unwritable_cache(server, env, tmp_path, monkeypatch):
    url, _ = server
    env(f"{url}/vgg19.pth")
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "a_file" / "weights"))
    with pytest.raises(UserError, match="cannot write the weights cache .*: set ZEROSR_CACHE"):
        pretrained.path_of("vgg19")


def test_every_entry_is_pinned():
    for entry in pretrained.FILES.values():
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.url.startswith("https://")
    # torchvision names its files with the first 8 hex digits of their SHA-256
    for name in ("vgg19", "vgg16", "alexnet"):
        entry = pretrained.FILES[name]
        assert entry.file_name.rsplit("-", 1)[1].split(".")[0] == entry.sha256[:8]
