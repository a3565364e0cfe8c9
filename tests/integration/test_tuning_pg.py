"""Two `tfftmol tune` workers share one study on a real PostgreSQL server; one is SIGKILLed mid-trial.

The server is installed (Debian's `postgresql`, if missing) and started by the fixture in a
temp directory on loopback (tests/helpers/pg.py).  If that is impossible the test fails with
the reason; it never skips.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from helpers.pg import PostgresUnavailable, start_postgres
from helpers.tuning import toy_config

ROOT = Path(__file__).resolve().parents[2]
TS = optuna.trial.TrialState
N_TRIALS = 6


@pytest.fixture(scope="module")
def postgres():
    try:
        srv = start_postgres()
    except PostgresUnavailable as e:
        pytest.fail(f"PostgreSQL test server could not be set up: {e}", pytrace=False)
    yield srv
    srv.stop()


def _worker(cfg_path, url, out, log_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "tfftmol.cli", "tune", "--config", str(cfg_path), "--study", "shared",
           "--storage", url, "--n-trials", str(N_TRIALS), "--out", str(out), "--no-plots"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


@pytest.mark.slow  # 133 s: two tune workers against a real PostgreSQL server
def test_two_workers_share_a_study_and_a_killed_trial_is_failed(postgres, tmp_path):
    cfg = toy_config(sampler="random", heartbeat_interval=1, grace_period=3)
    cfg["base"]["kl_samples"] = 0
    cfg["base"]["tfft"]["am"]["steps"] = 150  # ~2 s per trial: long enough to be killed inside one
    # this test is about storage and workers: without tracking and its guards, no trial at a random small
    # alpha is stopped by a runaway guard (those stops are FAIL trials too, and the count below is exact)
    cfg["base"]["tfft"]["track_threshold"] = "none"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    storage = optuna.storages.RDBStorage(postgres.url)  # one connection pool for all the polling below
    a = _worker(path, postgres.url, tmp_path / "a", tmp_path / "a.log")
    b = _worker(path, postgres.url, tmp_path / "b", tmp_path / "b.log")
    try:
        # wait until worker A has finished a trial and is inside its next one
        deadline = time.time() + 120
        victim = None
        while time.time() < deadline and victim is None:
            time.sleep(0.2)
            assert a.poll() is None, (tmp_path / "a.log").read_text()
            try:
                st = optuna.load_study(study_name="shared", storage=storage)
            except KeyError:
                continue
            ts = st.get_trials()
            mine = [t for t in ts if t.user_attrs.get("pid") == a.pid]
            running = [t for t in mine if t.state == TS.RUNNING
                       and (time.time() - t.datetime_start.timestamp()) > 0.3]
            if any(t.state == TS.COMPLETE for t in mine) and running:
                kept = {t.number: t.value for t in ts if t.state == TS.COMPLETE}
                os.kill(a.pid, signal.SIGKILL)
                victim = running[0].number
        assert victim is not None, "worker A never got inside a second trial:\n" + (tmp_path / "a.log").read_text()
        a.wait(timeout=30)
        assert a.returncode == -signal.SIGKILL
        assert b.wait(timeout=180) == 0, (tmp_path / "b.log").read_text()
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    st = optuna.load_study(study_name="shared", storage=storage)
    by_num = {t.number: t for t in st.get_trials()}
    # the killed trial is marked failed by the heartbeat, not left RUNNING
    assert by_num[victim].state == TS.FAIL
    assert not [t for t in by_num.values() if t.state == TS.RUNNING]
    # every trial completed before the kill is kept, with its value
    assert kept and all(by_num[n].state == TS.COMPLETE and by_num[n].value == v for n, v in kept.items())
    # the study reached its count with the surviving worker, which ran trials after the kill
    done = [t for t in by_num.values() if t.state == TS.COMPLETE]
    assert N_TRIALS <= len(done) <= N_TRIALS + 1
    assert any(t.user_attrs["pid"] == b.pid and t.number > victim for t in done)
    assert [t.state for t in by_num.values()].count(TS.FAIL) == 1
    # the surviving worker wrote the outputs, the failed trial included
    trials_csv = (tmp_path / "b" / "shared" / "trials.csv").read_text()
    assert "FAIL" in trials_csv and (tmp_path / "b" / "shared" / "best.yaml").exists()
