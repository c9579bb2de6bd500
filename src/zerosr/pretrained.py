"""Every pretrained file zerosr uses: where it comes from, its SHA-256, and where it is kept.

A file is looked for, in order, in the folder the user names (`ZEROSR_WEIGHTS_DIR`, or
`train.weights_dir` in the config), then in the cache (`ZEROSR_CACHE`, default
`~/.cache/zerosr/weights`); if it is in neither it is downloaded into the cache once, with a
progress bar, written atomically (a half-downloaded file never carries the real name). Its SHA-256
is checked before every use: a cached file that does not match is deleted; a file in the user's
folder that does not match is refused and left alone. Every failure (no network, a hash mismatch,
an interrupted download, an unwritable cache) is one `UserError` line naming the file, its URL and
where to put it.

`ZEROSR_WEIGHTS_INDEX=FILE.json` replaces entries, for a mirror or your own copies of the files:
`{"vgg19": {"url": "https://mirror/vgg19.pth", "sha256": "<64 hex>", "file_name": "vgg19.pth"}}`
(each field optional; a new hash must come with its own file).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from zerosr.errors import UserError

CACHE_ENV = "ZEROSR_CACHE"
FOLDER_ENV = "ZEROSR_WEIGHTS_DIR"
INDEX_ENV = "ZEROSR_WEIGHTS_INDEX"
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PretrainedFile:
    name: str  # how zerosr asks for it
    file_name: str  # the name on disk (the upstream one)
    url: str
    sha256: str
    used_for: str


# The torchvision files are the ImageNet weights torchvision serves (their names carry the first
# 8 hex digits of the SHA-256, which torchvision checks); the heads are the published files of
# LPIPS v0.1 (richzhang/PerceptualSimilarity) and DISTS (dingkeyan93/DISTS), the same bytes as in
# their PyPI wheels lpips 0.1.4 and DISTS_pytorch 0.1.
FILES: dict[str, PretrainedFile] = {f.name: f for f in (
    PretrainedFile("vgg19", "vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                   "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
                   "the perceptual loss (torchvision VGG19, ImageNet)"),
    PretrainedFile("vgg16", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
                   "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
                   "LPIPS-VGG and DISTS (torchvision VGG16, ImageNet)"),
    PretrainedFile("alexnet", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                   "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
                   "LPIPS (torchvision AlexNet, ImageNet)"),
    PretrainedFile("lpips_alex", "lpips_v0.1_alex.pth",
                   "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
                   "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
                   "LPIPS v0.1 linear heads on AlexNet"),
    PretrainedFile("lpips_vgg", "lpips_v0.1_vgg.pth",
                   "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
                   "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
                   "LPIPS v0.1 linear heads on VGG16"),
    PretrainedFile("dists", "dists_weights.pt",
                   "https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt",
                   "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
                   "DISTS alpha/beta"),
)}

_folder: Path | None = None  # train.weights_dir of the running job


def set_weights_dir(folder: str | os.PathLike | None) -> None:
    """The config's `train.weights_dir` (None: only `ZEROSR_WEIGHTS_DIR` and the cache)."""
    global _folder
    _folder = Path(folder).expanduser() if folder else None


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "zerosr" / "weights").expanduser()


def user_folders() -> list[Path]:
    folders = [_folder] if _folder is not None else []
    if os.environ.get(FOLDER_ENV):
        folders.append(Path(os.environ[FOLDER_ENV]).expanduser())
    return folders


def entry(name: str) -> PretrainedFile:
    """The file `name` is, after `ZEROSR_WEIGHTS_INDEX` replacements."""
    if name not in FILES:
        raise KeyError(f"no pretrained file '{name}': one of {', '.join(FILES)}")
    found = FILES[name]
    index = os.environ.get(INDEX_ENV)
    if not index:
        return found
    try:
        table = json.loads(Path(index).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{INDEX_ENV}={index} is not a readable JSON index ({error}): fix or unset it") from None
    changes = table.get(name) if isinstance(table, dict) else None
    if not changes:
        return found
    unknown = set(changes) - {"url", "sha256", "file_name"}
    if unknown:
        raise UserError(f"{INDEX_ENV}={index}: '{name}' has unknown fields {sorted(unknown)}: use url, sha256, file_name")
    return replace(found, **{k: str(v) for k, v in changes.items()})


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def where_to_put(file: PretrainedFile) -> str:
    folders = user_folders()
    target = folders[0] if folders else cache_dir()
    return f"download {file.url} and save it as {target / file.file_name}"


def path_of(name: str) -> Path:
    """The verified local path of pretrained file `name`, downloading it into the cache if needed."""
    file = entry(name)
    for folder in user_folders():
        candidate = folder / file.file_name
        if candidate.is_file():
            actual = sha256_of(candidate)
            if actual != file.sha256:
                raise UserError(f"{candidate} has SHA-256 {actual[:12]}..., not {file.sha256[:12]}... of {file.url}: "
                                f"it is another file; replace it with the download of that URL")
            return candidate
    cached = cache_dir() / file.file_name
    if cached.is_file():
        if sha256_of(cached) == file.sha256:
            return cached
        cached.unlink()  # corrupt or stale: fetch it again below
    _download(file, cached)
    return cached


def _download(file: PretrainedFile, target: Path) -> None:
    """Stream `file.url` into a temporary file beside `target`, hashing as it goes; rename it into
    place only when complete and matching."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{file.file_name}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write the weights cache {folder} ({error.strerror or error}): set {CACHE_ENV} to a "
                        f"writable folder, or {where_to_put(file)} and set {FOLDER_ENV} to its folder") from None
    try:
        response = urllib.request.urlopen(file.url, timeout=DOWNLOAD_TIMEOUT_S)  # noqa: S310 - a fixed https URL
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(f"{file.file_name} ({file.used_for}) is not here and cannot be downloaded ({reason}): "
                        f"{where_to_put(file)} (or set {FOLDER_ENV}=FOLDER holding it)") from None
    from zerosr.atomic import atomic_save

    def write(tmp: Path) -> None:
        digest, done = hashlib.sha256(), 0
        size = int(response.headers.get("Content-Length") or 0) or None
        from tqdm import tqdm

        with response, open(tmp, "wb") as out, tqdm(total=size, unit="B", unit_scale=True, file=sys.stderr,
                                                    desc=f"downloading {file.file_name}", leave=False) as bar:
            try:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
            except (OSError, ValueError) as error:  # connection reset, IncompleteRead, timeout
                raise UserError(f"the download of {file.url} broke off after {done} bytes ({error}): run again "
                                f"to retry, or {where_to_put(file)}") from None
        if size is not None and done != size:
            raise UserError(f"the download of {file.url} ended after {done} of {size} bytes: run again to retry, "
                            f"or {where_to_put(file)}")
        if digest.hexdigest() != file.sha256:
            raise UserError(f"the download of {file.url} has SHA-256 {digest.hexdigest()[:12]}..., not "
                            f"{file.sha256[:12]}...: deleted; the server sent another file (run again, or "
                            f"{where_to_put(file)})")

    atomic_save(write, target, advice=f"(free disk space, or set {CACHE_ENV} elsewhere)")


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from .safetensors or a .pth/.pt (read with `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file '{path}' does not exist: give an existing file")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    # What torch.load raises on a file that is not a checkpoint depends on where the bytes go wrong.
    except (SafetensorError, pickle.UnpicklingError, struct.error, OSError, RuntimeError, EOFError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]  # torch's messages span many lines
        raise UserError(f"cannot read {what} '{path}' ({reason}): re-export the file") from err
    if not isinstance(state, dict):
        raise UserError(f"{what} '{path}' holds a {type(state).__name__}, not a state dict")
    return state
