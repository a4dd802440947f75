"""Thread-pool settings for a busy machine (softcamify.threads): set for every command, never over the user's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnxruntime as ort
import pytest

from softcamify import threads

_PROBE = (
    "import json, os, sys\n"
    "sys.argv = ['softcamify', '--version']\n"
    "from softcamify.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "print(json.dumps({k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'KMP_BLOCKTIME', 'OMP_NUM_THREADS')}))\n"
)


def _cli_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "OMP_NUM_THREADS")}
    env.pop(threads.THREADS_ENV, None)
    env.pop(threads.DEFAULTS_ENV, None)
    r = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**env, **extra}, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_command_starts_with_sleeping_waits_and_the_users_values_win():
    assert _cli_env() == {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0", "OMP_NUM_THREADS": None}
    assert _cli_env(SOFTCAMIFY_THREADS="1")["OMP_NUM_THREADS"] == "1"
    mine = _cli_env(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="3", SOFTCAMIFY_THREADS="1")
    assert mine["OMP_WAIT_POLICY"] == "ACTIVE" and mine["OMP_NUM_THREADS"] == "3"
    assert _cli_env(SOFTCAMIFY_THREAD_DEFAULTS="0") == {
        "OMP_WAIT_POLICY": None,
        "KMP_BLOCKTIME": None,
        "OMP_NUM_THREADS": None,
    }


def test_onnxruntime_sessions_do_not_spin(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.delenv(threads.DEFAULTS_ENV, raising=False)
    opts = threads.tune_onnxruntime(ort.SessionOptions())
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == 0  # onnxruntime's own default
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    assert threads.tune_onnxruntime(ort.SessionOptions()).intra_op_num_threads == 2
    assert threads.tune_onnxruntime(ort.SessionOptions(), threads=1).intra_op_num_threads == 1
    monkeypatch.setenv(threads.DEFAULTS_ENV, "0")
    plain = threads.tune_onnxruntime(ort.SessionOptions())
    with pytest.raises(RuntimeError, match="does not have configuration"):  # onnxruntime's own default
        plain.get_session_config_entry("session.intra_op.allow_spinning")


def test_malformed_thread_counts_are_ignored(monkeypatch):
    for raw in ("", "x", "0", "-2"):
        monkeypatch.setenv(threads.THREADS_ENV, raw)
        assert threads.intra_op_threads() is None
    monkeypatch.setenv(threads.THREADS_ENV, " 4 ")
    assert threads.intra_op_threads() == 4
