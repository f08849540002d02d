"""Obtaining the Debian i386 Linux guest through apt, and caching it.

`ensure_linux_images()` gives a bzImage, a static busybox and an initramfs built
from them, in `linux_dir()`.  Everything comes from apt (`apt-get download`,
then `dpkg-deb`), nothing is hand-downloaded; see docs/images.md.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

from bt.errors import BadInput
from bt.images.initramfs import DEFAULT_INIT, build_initramfs
from bt.machine import DEFAULT_CPU_MHZ, DEFAULT_MEM_MIB

KERNEL_PACKAGE = re.compile(r"linux-image-6\.1\.0-(\d+)-686-unsigned")
KERNEL_PREFIX = "linux-image-6.1.0-"
BUSYBOX_PACKAGE = "busybox-static"
ARCH = "i386"
FILES = {"kernel": "vmlinuz", "busybox": "busybox", "initrd": "initramfs.cpio", "manifest": "manifest.json"}
LINUX_HZ = 250  # CONFIG_HZ of Debian's 686 kernel: lpj below is loops per tick


class FetchError(Exception):
    """A guest image cannot be obtained (no apt, no network, no such package): exit 69 (EX_UNAVAILABLE)."""

    exit_status = 69


def image_root() -> Path:
    """$BT_IMAGE_DIR, else $XDG_CACHE_HOME/bt/images, else ~/.cache/bt/images."""
    if os.environ.get("BT_IMAGE_DIR"):
        return Path(os.environ["BT_IMAGE_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "bt" / "images"


def linux_dir() -> Path:
    return image_root() / "linux"


def linux_paths() -> dict[str, Path]:
    """Where the Linux images live (whether or not they have been fetched)."""
    d = linux_dir()
    return {key: d / name for key, name in FILES.items()} | {"dir": d}


def read_manifest() -> dict | None:
    """The manifest of a complete fetch, or None."""
    paths = linux_paths()
    if not all(paths[k].is_file() for k in ("kernel", "busybox", "manifest")):
        return None
    try:
        return json.loads(paths["manifest"].read_text())
    except (OSError, ValueError):
        return None


def cached_linux_images() -> dict[str, Path]:
    """The fetched images, without touching apt (for `bt-run linux`).  A default
    initramfs built from an older DEFAULT_INIT is rebuilt from the cached busybox."""
    paths = linux_paths()
    manifest = read_manifest()
    if manifest is None or not paths["initrd"].is_file():
        raise BadInput(f"the Linux guest is not fetched yet (looked in {paths['dir']}); "
                       "run `bt-images fetch linux`")
    if _stale_default(manifest):
        ensure_linux_images()      # the manifest is complete: this only rebuilds the initramfs
    return paths


def _stale_default(manifest: dict) -> bool:
    """The cached initramfs holds the default /init of an older bt."""
    initramfs = manifest.get("initramfs", {})
    return initramfs.get("init") == "default" and initramfs.get("init_sha256") != _sha256(DEFAULT_INIT)


def default_linux_cmdline(mem_mib: int = DEFAULT_MEM_MIB, cpu_mhz: int = DEFAULT_CPU_MHZ) -> str:
    """A command line that boots Debian's 686 kernel on the pc32 machine.

    The memory size reaches the kernel through the e820 map, so `mem_mib` only
    has to be large enough; `lpj` is the delay-loop calibration for the
    virtual CPU clock (cpu_hz / HZ), which skips the calibration loop.
    `dis_ucode_ldr`: the 32-bit early microcode loader runs before paging and
    reads kernel virtual addresses as physical ones (seen: 0xc1e5e6e0 at
    physical EIP 0x1d96627), which is outside RAM; a VM has no microcode to load.
    `cryptomgr.notests`: the crypto self-tests run RSA private-key test vectors
    in the kernel's generic multi-precision code; profiled under emulation they
    were 37 of the 40 virtual seconds of boot (docs/linux.md).
    """
    if mem_mib < 48:
        raise BadInput(f"Debian's 686 kernel with its initramfs needs at least 48 MiB (got {mem_mib})")
    lpj = cpu_mhz * 1_000_000 // LINUX_HZ
    return ("console=ttyS0 earlyprintk=serial,ttyS0,115200 nolapic noapic acpi=off pci=off "
            f"nokaslr nosmp lpj={lpj} tsc=reliable i8042.noaux i8042.nokbd clocksource=pit "
            "panic=-1 dis_ucode_ldr cryptomgr.notests rdinit=/init")


def ensure_linux_images(init_script: bytes | None = None, refresh: bool = False,
                        log=None) -> dict[str, Path]:
    """Fetch (unless cached, or `refresh`) and return {kernel, initrd, busybox, manifest, dir}.

    `init_script`: None keeps the cached initramfs (building the default one if
    there is none); bytes rebuild initramfs.cpio with that /init.
    """
    log = log or _stderr
    paths = linux_paths()
    paths["dir"].mkdir(parents=True, exist_ok=True)
    with _locked(paths["dir"] / ".lock"):
        manifest = None if refresh else read_manifest()
        if manifest is None:
            manifest = _fetch(paths, log)
        current = manifest.get("initramfs", {}).get("init_sha256")
        wanted = init_script
        if wanted is None and (current is None or not paths["initrd"].is_file() or _stale_default(manifest)):
            wanted = DEFAULT_INIT
        if wanted is not None and (_sha256(wanted) != current or not paths["initrd"].is_file()):
            cpio = build_initramfs(paths["busybox"], wanted)
            _write_atomic(paths["initrd"], cpio)
            manifest["initramfs"] = {"file": FILES["initrd"], "size": len(cpio),
                                     "init": "default" if wanted == DEFAULT_INIT else "custom",
                                     "init_sha256": _sha256(wanted)}
            _write_atomic(paths["manifest"], (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
            log(f"bt-images: built {paths['initrd']} ({manifest['initramfs']['init']} /init)")
    return paths


def _fetch(paths: dict[str, Path], log) -> dict:
    for tool in ("apt-get", "apt-cache", "dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise FetchError(f"{tool} not found: fetching the Linux guest needs apt and dpkg (a Debian-like host)")
    update_error = _ensure_arch(log)
    kernel = _newest_kernel()
    if (kernel is None or not _version(BUSYBOX_PACKAGE)) and update_error is None:
        update_error = _apt_update(log)
        kernel = _newest_kernel()
    # A failed update matters only now, when what is needed does not resolve.
    because = f" (and apt-get update {update_error})" if update_error else ""
    if kernel is None:
        raise FetchError(f"no {KERNEL_PREFIX}N-686-unsigned package found by apt-cache "
                         f"(is a Debian bookworm i386 source configured?){because}")
    busybox_version = _version(BUSYBOX_PACKAGE)
    if not busybox_version:
        raise FetchError(f"package {BUSYBOX_PACKAGE}:{ARCH} not found by apt-cache{because}")
    kernel_version = _version(kernel)
    log(f"bt-images: downloading {kernel} {kernel_version} and {BUSYBOX_PACKAGE}:{ARCH} {busybox_version}")
    with tempfile.TemporaryDirectory(prefix="bt-images-") as tmp:
        kernel_deb, busybox_deb = _download(kernel, tmp, log)
        kernel_member = _extract(kernel_deb, re.compile(r"\./boot/vmlinuz-.*"), paths["kernel"])
        busybox_member = _extract(busybox_deb, re.compile(r"\./bin/busybox"), paths["busybox"])
    os.chmod(paths["busybox"], 0o755)
    manifest = {
        "target": "linux",
        "kernel": {"package": kernel, "version": kernel_version, "arch": ARCH,
                   "member": kernel_member, "file": FILES["kernel"], "sha256": _file_sha256(paths["kernel"])},
        "busybox": {"package": BUSYBOX_PACKAGE, "version": busybox_version, "arch": ARCH,
                    "member": busybox_member, "file": FILES["busybox"], "sha256": _file_sha256(paths["busybox"])},
    }
    _write_atomic(paths["manifest"], (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def _ensure_arch(log) -> str | None:
    """Make apt know i386 packages.  None when no apt-get update was needed;
    else what `_apt_update` returned ("" when it succeeded)."""
    native = _run(["dpkg", "--print-architecture"], "dpkg").strip()
    foreign = _run(["dpkg", "--print-foreign-architectures"], "dpkg").split()
    if ARCH == native or ARCH in foreign:
        return None
    _need_root(f"the {ARCH} architecture is not enabled in dpkg",
               f"sudo dpkg --add-architecture {ARCH} && sudo apt-get update")
    log(f"bt-images: dpkg --add-architecture {ARCH}")
    _run(["dpkg", "--add-architecture", ARCH], "dpkg --add-architecture")
    return _apt_update(log)


def _apt_update(log) -> str:
    """apt-get update, retried once.  Its failure is only a warning: on a fresh
    machine one index (a mirror mid-sync) can fail while the rest updated, and
    the packages needed still resolve; the caller fails when they do not.
    Returns "" or the failure (for the caller's error message)."""
    _need_root("apt's package lists lack the i386 packages", "sudo apt-get update")
    failure = ""
    for attempt in (1, 2):
        log("bt-images: apt-get update" + (" (again)" if attempt > 1 else ""))
        try:
            _run(["apt-get", "update"], "apt-get update")
            return ""
        except FetchError as e:
            failure = str(e).removeprefix("apt-get update ")
            log(f"bt-images: warning: apt-get update {failure}")
    log("bt-images: warning: going on with the package lists apt has")
    return failure


def _download(kernel: str, tmp: str, log) -> tuple[Path, Path]:
    """apt-get download of the two packages, retried once for what is missing;
    a failure whose .deb files all arrived anyway is a warning."""
    wanted = {kernel: f"{kernel}:{ARCH}", BUSYBOX_PACKAGE: f"{BUSYBOX_PACKAGE}:{ARCH}"}
    found: dict[str, Path] = {}
    failure = None
    for attempt in (1, 2):
        missing = [spec for name, spec in wanted.items() if name not in found]
        try:
            _run(["apt-get", "download", *missing], "apt-get download", cwd=tmp)
            failure = None
        except FetchError as e:
            failure = e
        debs = sorted(Path(tmp).glob("*.deb"))
        for name in wanted:
            deb = next((d for d in debs if d.name.startswith(name + "_")), None)
            if deb is not None:
                found[name] = deb
        if len(found) == len(wanted):
            if failure is not None:
                log(f"bt-images: warning: {failure}; the packages arrived anyway")
            return found[kernel], found[BUSYBOX_PACKAGE]
        if failure is not None and attempt == 1:
            log(f"bt-images: warning: {failure}; trying once more")
    if failure is not None:
        raise failure
    raise FetchError(f"apt-get download did not produce the .deb files "
                     f"(got {[d.name for d in sorted(Path(tmp).glob('*.deb'))]})")


def _need_root(problem: str, fix: str) -> None:
    if os.geteuid() != 0:
        raise FetchError(f"{problem}; run `{fix}` and try again")


def _newest_kernel() -> str | None:
    names = _run(["apt-cache", "pkgnames", KERNEL_PREFIX], "apt-cache pkgnames").split()
    found = []
    for name in names:
        m = KERNEL_PACKAGE.fullmatch(name.split(":")[0])
        if m:
            found.append((int(m[1]), m[0]))
    return max(found)[1] if found else None


def _version(package: str) -> str:
    """The candidate version apt would download for package:i386 ('' if none)."""
    try:
        out = _run(["apt-cache", "show", "--no-all-versions", f"{package}:{ARCH}"], "apt-cache show")
    except FetchError:
        return ""
    m = re.search(r"^Version: (\S+)", out, re.M)
    return m[1] if m else ""


def _extract(deb: Path, member: re.Pattern, dest: Path) -> str:
    """Stream the .deb's data archive through dpkg-deb and keep the one member we need."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    found = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                if info.isfile() and member.fullmatch(info.name):
                    _write_atomic(dest, tar.extractfile(info).read())
                    found = info.name
                    break
    except tarfile.TarError as e:
        raise FetchError(f"cannot unpack {deb.name}: {e}") from None
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    if found is None:
        raise FetchError(f"{deb.name} has no file matching {member.pattern}")
    return found.lstrip("./")


def _run(cmd: list[str], what: str, cwd: str | None = None) -> str:
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(f"{cmd[0]} not found: fetching the Linux guest needs apt and dpkg") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("E:")] or done.stderr.splitlines() or [""]
        raise FetchError(f"{what} failed (exit {done.returncode}): {lines[-1].strip() or 'no message'}")
    return done.stdout


@contextmanager
def _locked(path: Path):
    """One fetch at a time per cache directory (tests may run in parallel)."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomic(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    return _sha256(path.read_bytes())


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
