"""Build ``tb_qjs.wasm``: QuickJS-NG 0.17.0 plus our shim, as a wasm32-wasi reactor.

Run ``python -m tradebotd.sandbox.qjs.build`` (``make wasm``), or let the hatch build hook
(``hatch_build.py``) run it for wheels and editable installs. Standard library only, because the
hook loads this file by path inside pip's isolated build environment.

Steps:

1. The QuickJS-NG C sources come from the PyPI sdist ``quickjs-ng==0.17.0.2`` (directory
   ``upstream-quickjs/``), pinned by version *and* sha256 and cached under
   ``$TRADEBOTD_BUILD_CACHE`` (default ``~/.cache/tradebotd-build``). They are never copied
   into the repository. pip downloads it when importable (so pip's index and proxy settings
   apply, with ``--require-hashes``); otherwise urllib reads the index's simple API
   (``$PIP_INDEX_URL``, default PyPI), as inside pip's isolated build environment.
2. ``python -m ziglang cc`` (PyPI ``ziglang==0.17.0``: clang + wasi-libc + linker, build-time
   only) compiles upstream's ``libregexp.c libunicode.c dtoa.c``, our ``tb_strtod.c``, and our
   ``tb_shim.c``, which includes upstream's ``quickjs.c`` (one translation unit, see the shim);
   ``tb_prelude.js`` is embedded as a C string.
3. The linked module gets a custom section ``tradebotd-build`` holding a hash of every input
   (sdist sha256, zig version, our sources, flags). A later build with the same hash is skipped.

The output is deterministic: the same inputs give a bit-identical ``tb_qjs.wasm``.
QuickJS-NG's licence text ships next to it as ``LICENSE.quickjs-ng.txt`` (committed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import html
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "tb_qjs.wasm"
LICENSE = HERE / "LICENSE.quickjs-ng.txt"
OUR_SOURCES = ("tb_shim.c", "tb_strtod.c")
PRELUDE = "tb_prelude.js"
UPSTREAM_SOURCES = ("quickjs.c", "libregexp.c", "libunicode.c", "dtoa.c")
# quickjs.c is not compiled on its own: tb_shim.c #includes it (a unity build; the shim says why).
UNITY_SOURCE = "quickjs.c"
ZIG_VERSION = "0.17.0"
BUILD_SECTION = "tradebotd-build"
FORMAT = 2  # bump to force a rebuild when this script's logic changes


@dataclass(frozen=True)
class Sdist:
    name: str
    version: str
    filename: str
    sha256: str
    source_dir: str  # directory inside the archive holding the C sources


QUICKJS = Sdist(
    name="quickjs-ng",
    version="0.17.0.2",
    filename="quickjs_ng-0.17.0.2.tar.gz",
    sha256="43d2e48272208721a7aaea8e3f02d4b9318f12ef20cc4f5421b59d9a470706ef",
    source_dir="quickjs_ng-0.17.0.2/upstream-quickjs",
)

# JS_DEFAULT_STACK_SIZE: QuickJS's own recursion limit. The shim also sets it on every entry;
# 96 KiB = max_wasm_stack (2 MiB) / ~20, the ratio that turned all 20 recursion bombs measured
# into RangeErrors instead of wasm stack-overflow traps.
COMPILE_FLAGS = (
    "-target", "wasm32-wasi", "-O2", "-g0", "-DNDEBUG", "-D_GNU_SOURCE",
    "-fno-strict-aliasing", "-DJS_DEFAULT_STACK_SIZE=98304",
)
UPSTREAM_FLAGS = ("-w",)  # not our code; its warnings are upstream's business
OUR_FLAGS = ("-Wall", "-Wextra")
# Only the translation unit holding quickjs.c (tb_shim.c): its one strtod call is JSON.parse; see
# tb_strtod.c.
QUICKJS_FLAGS = ("-Dstrtod=tb_json_strtod",)
# -s strips debug info (a trivial file is ~1 MB with it). Zig's linker already puts the 1 MiB
# stack first, so an overflow traps instead of overwriting static data.
LINK_FLAGS = ("-target", "wasm32-wasi", "-mexec-model=reactor", "-Wl,-z,stack-size=1048576", "-s")


class BuildError(Exception):
    """The wasm could not be built; the message says what to install or fix."""


def cache_root() -> Path:
    if env := os.environ.get("TRADEBOTD_BUILD_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tradebotd-build"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- sdist


def fetch_sdist(sdist: Sdist, cache: Path) -> Path:
    """The verified sdist archive, downloading it into the cache if needed."""
    target = cache / "sdist" / sdist.filename
    if target.is_file() and sha256_file(target) == sdist.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if importlib.util.find_spec("pip") is not None:
            downloaded = _download_with_pip(sdist, Path(tmp))
        else:
            downloaded = _download_from_index(sdist, Path(tmp))
        actual = sha256_file(downloaded)
        if actual != sdist.sha256:
            raise BuildError(f"{downloaded.name}: sha256 {actual}, expected {sdist.sha256}")
        os.replace(downloaded, target)
    return target


def _download_with_pip(sdist: Sdist, dest: Path) -> Path:
    # --require-hashes makes pip check the archive before it prepares metadata (which runs the
    # sdist's setup.py in an isolated environment).
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{sdist.name}=={sdist.version} --hash=sha256:{sdist.sha256}\n")
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        "--require-hashes", "-r", str(requirements), "-d", str(dest),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    path = dest / sdist.filename
    if result.returncode != 0 or not path.is_file():
        raise BuildError(f"pip download of {sdist.name}=={sdist.version} failed:\n{result.stderr}")
    return path


def _download_from_index(sdist: Sdist, dest: Path) -> Path:
    """Downloads from the package index's simple API (PEP 691 JSON, or PEP 503 HTML): the API
    every PyPI mirror serves, unlike PyPI's own /pypi/<name>/json."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page = f"{index}/{sdist.name}/"
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        content_type = response.headers.get_content_type()
    if content_type == "application/vnd.pypi.simple.v1+json":
        links = {f["filename"]: f["url"] for f in json.loads(body)["files"]}
    else:
        anchors = re.findall(r'<a\s[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', body.decode("utf-8", "replace"))
        links = {html.unescape(name).strip(): html.unescape(href) for href, name in anchors}
    if sdist.filename not in links:
        raise BuildError(f"{sdist.filename} is not listed at {page}")
    url = urllib.parse.urljoin(page, links[sdist.filename]).split("#", 1)[0]
    path = dest / sdist.filename
    with urllib.request.urlopen(url, timeout=300) as response, path.open("wb") as f:
        shutil.copyfileobj(response, f)
    return path


def extract_sources(sdist: Sdist, archive: Path, cache: Path) -> Path:
    """The sdist's C source directory, extracted once per sdist sha256."""
    dest = cache / "src" / f"{sdist.name}-{sdist.version}-{sdist.sha256[:12]}"
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    prefix = sdist.source_dir + "/"
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            member.name = member.name[len(prefix):]
            if "/" in member.name:
                continue  # flat directory; nothing below it is needed
            tar.extract(member, dest, filter="data")
    missing = [name for name in UPSTREAM_SOURCES if not (dest / name).is_file()]
    if missing:
        raise BuildError(f"{archive.name} lacks {', '.join(missing)} in {sdist.source_dir}")
    marker.write_text("ok\n")
    return dest


# ---------------------------------------------------------------- wasm custom section


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_leb128(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def custom_section(name: str, payload: bytes) -> bytes:
    encoded = name.encode()
    body = _leb128(len(encoded)) + encoded + payload
    return b"\x00" + _leb128(len(body)) + body


def read_custom_section(wasm: bytes, name: str) -> bytes | None:
    """Payload of the first custom section called ``name``, or None."""
    if wasm[:4] != b"\0asm":
        return None
    pos = 8
    while pos < len(wasm):
        section_id = wasm[pos]
        size, body = _read_leb128(wasm, pos + 1)
        end = body + size
        if section_id == 0:
            name_len, name_pos = _read_leb128(wasm, body)
            if wasm[name_pos:name_pos + name_len] == name.encode():
                return wasm[name_pos + name_len:end]
        pos = end
    return None


def build_id(path: Path) -> str | None:
    """The input hash recorded in a built wasm, or None."""
    try:
        payload = read_custom_section(path.read_bytes(), BUILD_SECTION)
    except (OSError, IndexError):
        return None
    return json.loads(payload)["inputs"] if payload else None


# ---------------------------------------------------------------- compile and link


def _check_zig() -> None:
    try:
        version = importlib.metadata.version("ziglang")
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(f"ziglang is not installed: pip install ziglang=={ZIG_VERSION}") from None
    if version != ZIG_VERSION:
        raise BuildError(f"ziglang {version} found, {ZIG_VERSION} required (pip install ziglang=={ZIG_VERSION})")


def inputs_hash(sdist: Sdist) -> str:
    digest = hashlib.sha256()
    for part in (str(FORMAT), sdist.sha256, ZIG_VERSION, repr(COMPILE_FLAGS), repr(UPSTREAM_FLAGS),
                 repr(OUR_FLAGS), repr(QUICKJS_FLAGS), repr(LINK_FLAGS)):
        digest.update(part.encode() + b"\0")
    for name in (*OUR_SOURCES, PRELUDE):
        digest.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _prelude_header(js: bytes) -> str:
    lines = [f"/* generated by build.py from {PRELUDE}; do not edit */",
             "static const char tb_prelude_js[] = {"]
    data = js + b"\0"
    for i in range(0, len(data), 16):
        lines.append("    " + ", ".join(f"0x{b:02x}" for b in data[i:i + 16]) + ",")
    lines.append("};")
    return "\n".join(lines) + "\n"


def _zig(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "ziglang", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"zig {' '.join(args[:1])} failed in {cwd}:\n{result.stderr}")
    if result.stderr.strip():
        print(result.stderr, file=sys.stderr, end="")


def compile_and_link(src: Path, work: Path, output: Path, key: str, cache: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "tb_prelude.inc").write_text(_prelude_header((HERE / PRELUDE).read_bytes()))
    for name in OUR_SOURCES:  # relative paths everywhere keep the output path-independent
        shutil.copyfile(HERE / name, work / name)
    env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=str(cache / "zig"), ZIG_LOCAL_CACHE_DIR=str(cache / "zig-local"))
    jobs: list[tuple[list[str], Path]] = []
    upstream = [name for name in UPSTREAM_SOURCES if name != UNITY_SOURCE]
    # The shim (with quickjs.c inside) is by far the longest compile: start it first.
    for name in OUR_SOURCES:
        obj = (work / name).with_suffix(".o")
        extra = QUICKJS_FLAGS if name == "tb_shim.c" else ()
        jobs.append((["cc", *COMPILE_FLAGS, *OUR_FLAGS, *extra, f"-I{src}", "-I.", "-c", name, "-o", str(obj)],
                     work))
    for name in upstream:
        obj = (work / name).with_suffix(".o")
        jobs.append((["cc", *COMPILE_FLAGS, *UPSTREAM_FLAGS, "-I.", "-c", name, "-o", str(obj)], src))
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(_zig, args, cwd, env) for args, cwd in jobs]:
            future.result()
    objects = [f"{Path(n).stem}.o" for n in (*upstream, *OUR_SOURCES)]
    _zig(["cc", *LINK_FLAGS, *objects, "-o", "linked.wasm"], work, env)
    stamp = json.dumps({"inputs": key, "quickjs_ng": QUICKJS.version, "zig": ZIG_VERSION}, sort_keys=True)
    wasm = (work / "linked.wasm").read_bytes() + custom_section(BUILD_SECTION, stamp.encode())
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_bytes(wasm)
    os.replace(tmp, output)


def build(output: Path = OUTPUT, *, force: bool = False, quiet: bool = False) -> Path:
    """Builds ``output`` unless it already holds a build of the same inputs; returns its path."""
    key = inputs_hash(QUICKJS)
    if not force and output.is_file() and build_id(output) == key:
        if not quiet:
            print(f"{output} is up to date")
        return output
    _check_zig()
    if not LICENSE.is_file():
        raise BuildError(f"{LICENSE} is missing; it must ship next to the wasm")
    cache = cache_root()
    archive = fetch_sdist(QUICKJS, cache)
    src = extract_sources(QUICKJS, archive, cache)
    # A stable work directory per input hash lets zig's own cache skip unchanged objects.
    work = cache / "work" / key[:16]
    compile_and_link(src, work, output, key, cache)
    if not quiet:
        print(f"built {output} ({output.stat().st_size} bytes, sha256 {sha256_file(output)})")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the inputs are unchanged")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--expect-sha256", help="fail unless the result has this sha256 (CI)")
    args = parser.parse_args(argv)
    try:
        path = build(args.output, force=args.force)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.expect_sha256 and sha256_file(path) != args.expect_sha256:
        print(f"error: {path} has sha256 {sha256_file(path)}, expected {args.expect_sha256}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
