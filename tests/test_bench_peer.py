"""bench/ppo_step.py --peer: flags, the peer's JSON read back, the printed ratio, the venv rules.

The fast tests need no peer. The end-to-end one makes (or reuses) the Tunix venv, which
downloads packages: it is slow and runs only with JAXSTEP_TEST_PEER_VENV=1 (the venv
goes to $JAXSTEP_PEER_CACHE or ~/.cache/jaxstep/peers).
"""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bench"))
sys.path.insert(0, str(REPO_ROOT / "bench" / "peers"))
import peer as peer_lib  # noqa: E402
import ppo_step  # noqa: E402
import tunix_ppo  # noqa: E402  (stdlib-only at import: its Tunix imports are inside main)

TUNIX = peer_lib.PEERS["tunix"]


def _result(**over):
    result = {"peer": "tunix", "version": "0.1.7", "shape": {"batch": 8, "steps": 2}, "warmup_s": 30.0,
              "steps_s": [2.0, 3.0], "phases_s": {"rollout": [1.0, 1.0], "scoring": [0.5, 0.5],
                                                  "update": [0.5, 1.5]},
              "median_s": {"step": 2.5, "rollout": 1.0, "scoring": 0.5, "update": 1.0},
              "new_tokens_per_step": [256, 256, 256]}
    result.update(over)
    return result


def test_quick_peer_flags_and_the_shape_the_peer_script_parses(tmp_path):
    args = ppo_step.parse_args(["--quick", "--peer", "tunix", "--peer-cache", str(tmp_path)])
    assert (args.batch, args.new, args.steps, args.peer) == (8, 32, 2, "tunix")
    shape = ppo_step.peer_shape(args)
    # Round trip through the peer script's own parser: every flag we send is one it takes.
    parsed = tunix_ppo.parse_args(peer_lib.peer_args(shape, str(tmp_path / "r.json")))
    assert {k: getattr(parsed, k) for k in shape} == shape
    assert (parsed.heads, parsed.kv_heads, parsed.vocab, parsed.prompt) == (4, 2, 32000, 64)
    assert parsed.json_out == str(tmp_path / "r.json")
    untied = ppo_step.peer_shape(ppo_step.parse_args(["--untied", "--steps", "3"]))
    assert "--untied" in peer_lib.peer_args(untied, "x") and untied["steps"] == 3


@pytest.mark.parametrize("argv", [["--peer", "tunix", "--advantage", "grpo"], ["--peer", "nope"],
                                  ["--steps", "0"]])
def test_bad_peer_flags_exit(argv, capsys):
    with pytest.raises(SystemExit) as e:
        ppo_step.parse_args(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_peer_script_refuses_shapes_it_cannot_match(tmp_path):
    shape = {"batch": 8, "prompt": 64, "new": 32, "vocab": 100, "hidden": 64, "layers": 2, "heads": 4,
             "kv_heads": 2, "intermediate": 128, "steps": 1, "minibatches": 2}
    flags = peer_lib.peer_args(shape, "x")
    with pytest.raises(SystemExit):
        tunix_ppo.parse_args(flags)


def test_peer_prompts_are_ours():
    """The peer's prompt strings are exactly bench/ppo_step.py's prompt ids (seed 0)."""
    import numpy as np
    rng = np.random.default_rng(0)
    lengths = rng.integers(64 - 16, 65, 4)
    mask = np.arange(64)[None] >= 64 - lengths[:, None]
    ids = np.where(mask, rng.integers(1, 1000, (4, 64)), 0)
    texts = tunix_ppo.prompts(4, 64, 1000)
    tok = tunix_ppo.IdTokenizer(1000)
    for row, m, text in zip(ids, mask, texts):
        assert tok.encode(text) == row[m].tolist()
        assert len(tok.encode(text)) == m.sum() >= 48
    assert tok.eos_id() == 1000 and tok.pad_id() == 0 and tok.bos_id() is None


def test_read_result_round_trip_and_errors(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_result()))
    got = peer_lib.read_result(path, {"batch": 8, "steps": 2})
    assert got["median_s"]["step"] == 2.5 and got["steps_s"] == [2.0, 3.0]
    with pytest.raises(peer_lib.PeerError, match="another shape"):
        peer_lib.read_result(path, {"batch": 16, "steps": 2})
    path.write_text(json.dumps({k: v for k, v in _result().items() if k != "median_s"}))
    with pytest.raises(peer_lib.PeerError, match="lacks median_s"):
        peer_lib.read_result(path)
    path.write_text(json.dumps(_result(steps_s=[2.0])))
    with pytest.raises(peer_lib.PeerError, match="1 step times for 2 steps"):
        peer_lib.read_result(path)
    path.write_text("{not json")
    with pytest.raises(peer_lib.PeerError, match="no readable peer result"):
        peer_lib.read_result(path)


def test_ratio_and_its_line():
    # The figures: ours 9.48 s/step, Tunix 19.4 s/step -> 19.4 / 9.48 = 2.0464...
    assert peer_lib.ratio(9.48, 19.4) == pytest.approx(2.04641, abs=1e-5)
    assert peer_lib.ratio_line("Tunix", peer_lib.ratio(9.48, 19.4)) == "ratio vs Tunix: 2.05x"
    assert peer_lib.ratio_line("Tunix", 0.5) == "ratio vs Tunix: 0.50x"  # slower than the peer
    assert peer_lib.ratio_line("Tunix", 12.345) == "ratio vs Tunix: 12.35x"


def test_comparison_lines():
    ours = {"step": 1.25, "rollout": 0.5, "scoring": 0.25, "update": 0.5}
    lines = peer_lib.comparison_lines(TUNIX, ours, _result(notes=["integer rewards"]))
    assert lines[-1] == "ratio vs Tunix: 2.00x"  # 2.5 / 1.25
    assert lines[1].split() == ["jaxstep", "1.25", "0.800", "0.50", "0.25", "0.50"]
    assert lines[2].split() == ["Tunix", "0.1.7", "2.50", "0.400", "1.00", "0.50", "1.00"]
    assert "rollout 2.00x, scoring 2.00x, update 2.00x" in lines[3]
    assert "Tunix: integer rewards" in lines
    hidden = _result(median_s={"step": 2.5, "rollout": math.nan, "scoring": math.nan})
    lines = peer_lib.comparison_lines(TUNIX, ours, hidden)
    assert lines[2].split()[-3:] == ["n/a", "n/a", "n/a"]
    assert "Tunix exposes no phases" in lines[3]


def test_peer_python_that_cannot_import_the_peer(tmp_path):
    with pytest.raises(peer_lib.PeerError, match="google-tunix==0.1.7"):
        peer_lib.ensure_python(TUNIX, tmp_path, python=str(tmp_path / "no-such-python"))
    # Our own interpreter has no tunix (its transformers pin is why the peer has a venv).
    with pytest.raises(peer_lib.PeerError, match="cannot import tunix"):
        peer_lib.ensure_python(TUNIX, tmp_path, python=sys.executable)


def test_venv_never_inside_the_checkout(monkeypatch):
    monkeypatch.setattr(peer_lib.subprocess, "run", _no_subprocess)
    with pytest.raises(peer_lib.PeerError, match="inside the repository"):
        peer_lib.ensure_python(TUNIX, REPO_ROOT / "peers-cache")
    assert not (REPO_ROOT / "peers-cache").exists()


def test_ready_venv_is_reused_without_pip(tmp_path, monkeypatch):
    venv = tmp_path / TUNIX.folder
    exe = peer_lib.venv_python(venv)
    exe.parent.mkdir(parents=True)
    exe.write_text("")
    (venv / peer_lib.READY_MARK).write_text(TUNIX.requirement)
    monkeypatch.setattr(peer_lib.subprocess, "run", _no_subprocess)
    assert peer_lib.ensure_python(TUNIX, tmp_path) == exe
    monkeypatch.setenv("JAXSTEP_PEER_CACHE", str(tmp_path))
    assert peer_lib.default_cache_dir() == tmp_path
    assert peer_lib.ensure_python(TUNIX) == exe


def test_no_network_says_so_and_how_to_point_at_a_venv(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if "pip" in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the "
                                               "requirement google-tunix==0.1.7\nERROR: No matching distribution "
                                               "found for google-tunix==0.1.7")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(peer_lib.subprocess, "run", fake_run)
    with pytest.raises(peer_lib.PeerError) as e:
        peer_lib.ensure_python(TUNIX, tmp_path, log=lambda *a, **k: None)
    message = str(e.value)
    assert "no network" in message and "--peer-python" in message and "--peer-cache" in message
    assert [c[1:3] for c in calls] == [["-m", "venv"], ["-m", "pip"]]
    assert not (tmp_path / TUNIX.folder / peer_lib.READY_MARK).exists()  # redone next time


def test_run_reads_back_what_the_peer_script_writes(tmp_path, capsys):
    """A stand-in peer script (our interpreter): its flags arrive, its log is relayed to our
    stderr, its JSON comes back checked; a failing script is a PeerError."""
    script = tmp_path / "fake_peer.py"
    script.write_text(
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "out = args[args.index('--json-out') + 1]\n"
        "batch = int(args[args.index('--batch') + 1])\n"
        "print('fake peer step 0', file=sys.stderr)\n"
        f"result = {_result()!r}\n"
        "result['shape'] = {'batch': batch, 'steps': 2, 'untied': '--untied' in args}\n"
        "json.dump(result, open(out, 'w'))\n"
        "sys.exit(3 if batch == 99 else 0)\n")
    fake = peer_lib.Peer(name="fake", title="Fake", requirement="fake==1", folder="fake", module="json",
                         script=str(script))
    got = peer_lib.run(fake, sys.executable, {"batch": 8, "steps": 2, "untied": False})
    assert got["median_s"]["step"] == 2.5 and got["shape"]["batch"] == 8
    assert "fake peer step 0" in capsys.readouterr().err
    with pytest.raises(peer_lib.PeerError, match="exit 3"):
        peer_lib.run(fake, sys.executable, {"batch": 99, "steps": 2, "untied": False})


def _no_subprocess(*args, **kwargs):
    raise AssertionError("no subprocess expected")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("JAXSTEP_TEST_PEER_VENV") != "1",
                    reason="makes the Tunix venv (downloads packages): set JAXSTEP_TEST_PEER_VENV=1")
def test_tunix_peer_end_to_end(capsys):
    """A tiny shape through both sides: the venv is made or reused, the peer trains, and the
    ratio line comes out."""
    ppo_step.main(["--batch", "2", "--new", "8", "--vocab", "512", "--hidden", "64", "--layers", "2",
                   "--intermediate", "128", "--steps", "1", "--peer", "tunix"])
    out = capsys.readouterr().out
    assert "new tokens per step" not in out and "parameter tensor changed" not in out  # the peer's own checks
    assert "matmul peak before ours" in out
    ratio_lines = [line for line in out.splitlines() if line.startswith("ratio vs Tunix: ")]
    assert len(ratio_lines) == 1 and float(ratio_lines[0].split(": ")[1].rstrip("x")) > 0


def test_the_peer_runs_without_the_malloc_tunable_we_added(monkeypatch):
    from jaxstep import host_memory
    monkeypatch.setenv("GLIBC_TUNABLES", host_memory.TUNABLE)
    monkeypatch.setenv(host_memory.BEFORE, "<unset>")
    env = peer_lib._peer_env("cpu")
    assert "GLIBC_TUNABLES" not in env and host_memory.BEFORE not in env and env["JAX_PLATFORMS"] == "cpu"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:" + host_memory.TUNABLE)
    monkeypatch.setenv(host_memory.BEFORE, "glibc.malloc.arena_max=2")  # the user's own tunable stays
    assert peer_lib._peer_env()["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
