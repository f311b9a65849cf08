"""A peer library measured beside ours in the same run: its own virtualenv, its script, its JSON.

bench/ppo_step.py --peer tunix uses this. A peer lives in a separate virtualenv
(google-tunix 0.1.7 pins a transformers that conflicts with ours), made once under a
cache folder and reused:

    <cache>/tunix-0.1.7/            cache: --peer-cache, else $JAXSTEP_PEER_CACHE,
                                    else ~/.cache/jaxstep/peers (never the checkout)

`--peer-python PATH` uses an existing interpreter instead (one that can import the
peer) and makes nothing. The peer script (bench/peers/<name>_ppo.py) runs in that
interpreter, imports nothing from jaxstep, and writes one JSON object (`read_result`
checks its fields) that our side prints beside its own figures.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile

from jaxstep import host_memory

BENCH_DIR = pathlib.Path(__file__).resolve().parent
READY_MARK = ".jaxstep-peer-ready"  # written last, after a successful install: a half-made venv is redone


class PeerError(RuntimeError):
    """The peer could not be set up or run; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str  # --peer value
    title: str  # as printed: "ratio vs Tunix"
    requirement: str  # what pip installs
    folder: str  # venv folder name under the cache
    module: str  # imported to check an interpreter
    script: str  # under bench/


PEERS = {
    "tunix": Peer(name="tunix", title="Tunix", requirement="google-tunix==0.1.7", folder="tunix-0.1.7",
                  module="tunix.rl.ppo.ppo_learner", script="peers/tunix_ppo.py"),
}

# Fields every peer JSON carries (bench/peers/tunix_ppo.py writes them).
RESULT_FIELDS = ("peer", "version", "shape", "warmup_s", "steps_s", "phases_s", "median_s",
                 "new_tokens_per_step")


def default_cache_dir() -> pathlib.Path:
    """$JAXSTEP_PEER_CACHE, else ~/.cache/jaxstep/peers."""
    env = os.environ.get("JAXSTEP_PEER_CACHE")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "jaxstep" / "peers"


def venv_python(venv: pathlib.Path) -> pathlib.Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _can_import(python: pathlib.Path | str, module: str) -> tuple[bool, str]:
    try:
        proc = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True,
                              env=_peer_env(), check=False)
    except OSError as e:  # no such file, not executable
        return False, str(e)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode == 0, lines[-1] if lines else ""


def _no_venv_help(peer: Peer, venv: pathlib.Path) -> str:
    return (f"make one by hand where the package registry can be reached (python3.11 -m venv DIR && "
            f"DIR/bin/pip install {peer.requirement}) and pass --peer-python DIR/bin/python, or choose "
            f"where the venv goes with --peer-cache (now {venv.parent})")


def ensure_python(peer: Peer, cache_dir: pathlib.Path | None = None, python: str | None = None,
                  log=print) -> pathlib.Path:
    """The interpreter to run `peer` with: `python` if given (checked), else the cached venv,
    made first if missing (`pip install peer.requirement`). Raises PeerError with what to do."""
    if python:
        ok, why = _can_import(python, peer.module)
        if not ok:
            raise PeerError(f"--peer-python {python} cannot import {peer.module} ({why}); it needs "
                            f"{peer.requirement}")
        return pathlib.Path(python)
    cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    venv = cache_dir / peer.folder
    if _inside_checkout(venv):
        raise PeerError(f"the peer venv {venv} would be inside the repository; choose --peer-cache elsewhere")
    exe = venv_python(venv)
    if (venv / READY_MARK).exists() and exe.exists():
        return exe
    log(f"making the {peer.title} venv (once, minutes): {venv} <- pip install {peer.requirement}", flush=True)
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PeerError(f"cannot create {venv.parent} ({e}); {_no_venv_help(peer, venv)}") from e
    # The venv's base interpreter: ours (the same Python minor version as our side).
    base = getattr(sys, "_base_executable", None) or sys.executable
    steps = ([base, "-m", "venv", "--clear", str(venv)],
             [str(exe), "-m", "pip", "install", "--disable-pip-version-check", peer.requirement])
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_peer_env(), check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            network = any(s in tail.lower() for s in ("connection", "resolve", "network", "no matching distribution",
                                                      "temporary failure", "max retries"))
            reason = ("no network to the package registry (pip could not download)" if network
                      else f"`{' '.join(cmd)}` failed")
            raise PeerError(f"could not make the {peer.title} venv at {venv}: {reason}:\n{tail}\n"
                            f"{_no_venv_help(peer, venv)}")
    ok, why = _can_import(exe, peer.module)
    if not ok:
        raise PeerError(f"the new venv {venv} cannot import {peer.module} ({why}); {_no_venv_help(peer, venv)}")
    (venv / READY_MARK).write_text(peer.requirement + "\n")
    return exe


def _inside_checkout(path: pathlib.Path) -> bool:
    root = BENCH_DIR.parent.resolve()
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _peer_env(platform: str | None = None) -> dict:
    """Our environment less what would leak our packages into the peer's interpreter, and as
    it was before `jaxstep.host_memory` added its malloc tunable (the peer runs as it does
    by default)."""
    env = {k: v for k, v in host_memory.environ_before(dict(os.environ)).items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    if platform:
        env["JAX_PLATFORMS"] = platform
    return env


def peer_args(shape: dict, json_out: str) -> list[str]:
    """Command-line flags of a peer script for `shape` (keys as in bench/peers/tunix_ppo.py)."""
    flags = []
    for key, value in shape.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags + ["--json-out", json_out]


def read_result(path: str | os.PathLike, shape: dict | None = None) -> dict:
    """The peer's JSON, checked: every RESULT_FIELDS key, one time per timed step, and (when
    `shape` is given) the same shape as ours. Raises PeerError naming what is wrong."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PeerError(f"no readable peer result at {path}: {e}") from e
    missing = [k for k in RESULT_FIELDS if k not in result]
    if missing:
        raise PeerError(f"peer result {path} lacks {', '.join(missing)}")
    steps = result["shape"].get("steps")
    if steps is not None and len(result["steps_s"]) != steps:
        raise PeerError(f"peer result {path}: {len(result['steps_s'])} step times for {steps} steps")
    if shape is not None:
        differ = {k: (v, result["shape"].get(k)) for k, v in shape.items() if result["shape"].get(k) != v}
        if differ:
            raise PeerError(f"peer ran another shape (ours, theirs): {differ}")
    return result


def run(peer: Peer, python: pathlib.Path, shape: dict, platform: str = "cpu") -> dict:
    """Runs the peer script on `shape`; its log goes to our stderr. Returns `read_result`."""
    with tempfile.TemporaryDirectory(prefix="jaxstep-peer-") as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [str(python), str(BENCH_DIR / peer.script)] + peer_args(shape, out)
        # Relayed line by line (its progress shows as it runs; works when our stderr is not a file).
        with subprocess.Popen(cmd, env=_peer_env(platform), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            for line in proc.stdout:
                sys.stderr.write(line)
            sys.stderr.flush()
        if proc.returncode != 0:
            raise PeerError(f"the {peer.title} script failed (exit {proc.returncode}): {' '.join(cmd)}")
        return read_result(out, shape)


def ratio(ours_s_per_step: float, theirs_s_per_step: float) -> float:
    """Our steps per second over theirs: theirs_s / ours_s (> 1 means we are faster)."""
    return theirs_s_per_step / ours_s_per_step


def ratio_line(title: str, value: float) -> str:
    """`ratio vs Tunix: 2.05x` (two decimals)."""
    return f"ratio vs {title}: {value:.2f}x"


def _seconds(value) -> str:
    return f"{value:8.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else f"{'n/a':>8s}"


def comparison_lines(peer: Peer, ours: dict, theirs: dict) -> list[str]:
    """Both sides' median seconds per step and per phase, steps/s, the peer's notes, and the
    ratio line. ours, theirs["median_s"]: {"step", "rollout", "scoring", "update": seconds};
    a phase the peer does not expose is NaN or missing and printed as n/a."""
    med = theirs["median_s"]
    lines = [f"{'side':14s} {'s/step':>8s} {'steps/s':>8s} {'rollout':>8s} {'scoring':>8s} {'update':>8s}"]
    for name, m in (("jaxstep", ours), (f"{peer.title} {theirs['version']}", med)):
        phases = " ".join(_seconds(m.get(k)) for k in ("rollout", "scoring", "update"))
        lines.append(f"{name:14s} {_seconds(m['step'])} {1 / m['step']:8.3f} {phases}")
    shared = [k for k in ("rollout", "scoring", "update") if _seconds(med.get(k)).strip() != "n/a"]
    lines.append("phase ratios (theirs / ours): " + (", ".join(
        f"{k} {med[k] / ours[k]:.2f}x" for k in shared) or f"{peer.title} exposes no phases"))
    lines += [f"{peer.title}: {note}" for note in theirs.get("notes", [])]
    lines.append(ratio_line(peer.title, ratio(ours["step"], med["step"])))
    return lines
