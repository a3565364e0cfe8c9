"""The run directory: nothing outside it is touched, nothing inside it is lost silently.

``<out_dir>/<name>/`` holds a run's ``config.yaml``, ``run.json`` (the manifest:
config digest, base-model fingerprint, status), ``checkpoint/`` and the report.

Rules (each enforced here, before any compute):

* the name is one path component (:func:`~tfftmol.pipeline.config.check_run_name`)
  and the run directory must resolve to a direct child of ``out_dir`` (a symlink
  pointing elsewhere is refused);
* one process per run directory: ``<out_dir>/.<name>.lock`` is created exclusively
  and holds the owner's PID; a live owner makes a second run fail at once, a stale
  lock (dead PID) is taken over;
* an existing run directory is never deleted or overwritten implicitly: a fresh run
  needs ``overwrite=True`` (which removes only a directory that is a tfftmol run
  directory), a resumed run needs a checkpoint whose manifest matches the config
  and the base model's weights;
* a resume is refused when ``config.yaml``/``run.json`` are missing, the config
  differs, or the base model's weights changed (fingerprint), with a message that
  names what differs.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from ..core.checkpoint import atomic_write_text, load_checkpoint
from ..core.config import ConfigError, dump_yaml, to_dict

__all__ = ["RunDir", "RunDirError", "config_digest"]

_OURS = ("run.json", "config.yaml", "report.md")  # any of these marks a directory as a tfftmol run directory


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (in use, exists, or a resume that cannot be trusted)."""


def config_digest(cfg: Any) -> str:
    """SHA-256 of a config's canonical JSON (what a resume must match)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()).hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


class RunDir:
    """Claim, check and prepare ``<out_dir>/<name>/`` for one run (a context manager holding the lock).

    Args:
        cfg: the validated :class:`~tfftmol.pipeline.config.RunConfig`.
        resume: continue from the run's checkpoint.
        overwrite: replace an existing run directory of the same name.
    """

    def __init__(self, cfg, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg
        self.resume = bool(resume)
        self.overwrite = bool(overwrite)
        self.out = Path(cfg.out_dir)
        self.path = cfg.run_dir
        self.lock = self.out / f".{cfg.name}.lock"
        self._held = False
        self.state: Optional[dict] = None  # the verified checkpoint a resume continues from

    # -- paths ---------------------------------------------------------------------
    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def manifest(self) -> Path:
        return self.path / "run.json"

    def _check_inside(self) -> None:
        out = self.out.resolve()
        if self.path.is_symlink():
            raise RunDirError(f"run directory {self.path} is a symbolic link; refusing to write through it")
        if self.path.resolve().parent != out:
            raise RunDirError(f"run directory {self.path} resolves outside out_dir={str(self.out)!r}")

    # -- lock ----------------------------------------------------------------------
    def _check_writable(self) -> None:
        """``out_dir`` and the offline cache directory exist (created if needed) and accept a file, before compute."""
        import tempfile

        for what, d in (("out_dir", self.out), ("cache_dir", Path(self.cfg.offline_cache_dir))):
            try:
                d.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=d, prefix=".tfftmol-write-test-"):
                    pass
            except OSError as e:
                raise RunDirError(f"{what}={str(d)!r} is not writable ({type(e).__name__}: {e.strerror or e}); "
                                  "nothing was computed; choose a directory you can write to") from None

    def __enter__(self) -> "RunDir":
        self._check_writable()
        self._check_inside()
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if _pid_alive(pid) and pid != os.getpid():
                    raise RunDirError(f"run {self.cfg.name!r} in {self.out} is in use by process {pid} "
                                      f"(lock {self.lock}); wait for it or choose another name") from None
                if pid == os.getpid():
                    raise RunDirError(f"run {self.cfg.name!r} is already running in this process")
                self.lock.unlink(missing_ok=True)  # stale lock of a dead process
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._held = True
            return self
        raise RunDirError(f"could not take the lock {self.lock}")

    def __exit__(self, *exc) -> None:
        if self._held:
            self.lock.unlink(missing_ok=True)
            self._held = False

    # -- states --------------------------------------------------------------------
    def _is_ours(self) -> bool:
        return any((self.path / f).exists() for f in _OURS) or self.checkpoint.exists()

    def prepare(self, base_fingerprint: str) -> bool:
        """Check the directory against the request, then write ``config.yaml`` and ``run.json``.

        Returns:
            ``True`` if a checkpoint will be resumed.

        Raises:
            RunDirError: the directory exists and neither ``resume`` nor ``overwrite`` was
                asked; it is not a tfftmol run directory; or a resume cannot be trusted.
        """
        cfg = self.cfg
        exists = self.path.exists() and any(self.path.iterdir())
        resuming = False
        if exists and not self._is_ours():
            raise RunDirError(f"{self.path} exists and is not a tfftmol run directory; refusing to write into it "
                              "(choose another name or out_dir)")
        if self.resume:
            state_present = (self.checkpoint / "state.json").exists()
            if state_present:
                self._check_resume(base_fingerprint)
                self.state = load_checkpoint(self.checkpoint)  # verified; CheckpointError if damaged
                resuming = True
            elif exists and not self.overwrite and (self.path / "report.md").exists():
                raise RunDirError(f"resume: {self.path} holds a finished run and no checkpoint; "
                                  "nothing to resume (overwrite=True to run it again)")
        elif exists:
            if not self.overwrite:
                what = "a finished run" if self._status() == "done" or not self.checkpoint.exists() \
                    else "a checkpoint of an unfinished run"
                raise RunDirError(f"{self.path} already holds {what}; pass resume=True (--resume) to continue "
                                  "it, overwrite=True (--overwrite) to replace it, or choose another name")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.yaml", dump_yaml(cfg))
        self._write_manifest(base_fingerprint, "running")
        return resuming

    def _status(self) -> str:
        try:
            return str(json.loads(self.manifest.read_text()).get("status", ""))
        except (OSError, ValueError):
            return ""

    def _check_resume(self, base_fingerprint: str) -> None:
        cfg = self.cfg
        if not self.manifest.exists() or not (self.path / "config.yaml").exists():
            raise RunDirError(f"resume: {self.path} has a checkpoint but no "
                              f"{'run.json' if not self.manifest.exists() else 'config.yaml'}, so the checkpoint "
                              "cannot be matched to this config; start over with overwrite=True")
        try:
            man = json.loads(self.manifest.read_text())
        except ValueError as e:
            raise RunDirError(f"resume: {self.manifest} is not valid JSON ({e})") from None
        if man.get("config_digest") != config_digest(cfg):
            old = man.get("config", {})
            new = to_dict(cfg)
            diff = sorted(_diff(old, new))
            raise ConfigError(f"resume: the config differs from the interrupted run's ({', '.join(diff[:6]) or '?'}); "
                              "run without resume (overwrite=True) to start over")
        if man.get("base_fingerprint") != base_fingerprint:
            raise RunDirError(f"resume: the base model's weights changed since the checkpoint was written "
                              f"(fingerprint {man.get('base_fingerprint')} -> {base_fingerprint}); start over")

    def _write_manifest(self, base_fingerprint: str, status: str, **extra: Any) -> None:
        man = {"config": to_dict(self.cfg), "config_digest": config_digest(self.cfg),
               "base_fingerprint": base_fingerprint, "status": status, "pid": os.getpid(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        atomic_write_text(self.manifest, json.dumps(man, indent=1, default=str))

    def finish(self, base_fingerprint: str) -> None:
        """Mark the run finished in ``run.json``."""
        self._write_manifest(base_fingerprint, "done")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
