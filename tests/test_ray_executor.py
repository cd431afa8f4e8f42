"""Sweeps on Ray: a local Ray instance, and a head and a worker node started here on 127.0.0.1.

Ray is slow to start on a small machine, so each Ray instance is a module-scoped
fixture shared by the tests that need it, and those tests are marked slow.
Everything a test starts carries a marker in its environment; the fixtures end
by killing every process holding their marker (Ray's workers and the cells'
processes inherit it), never other Ray instances on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from rbpbench.cells import Cell
from rbpbench.cli import main
from rbpbench.executors import LocalPool
from rbpbench.plugins import PluginConfig
from rbpbench.ray_executor import fits
from rbpbench.results import COLUMNS
from tests.faulty_methods import STALL_FILE_ENV

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
MARKER = "RBPBENCH_RAY_TEST"
SMALL = ("--task-param", "steps=50", "--truncation", "3,10")
PAPER = "bptt,tbptt,rbp,cg-rbp,neumann-rbp"
COMPARED = [
    "cell_id", "loss", "grad_rel_error", "grad_cosine", "grad_rel_error_g",
    "grad_rel_error_exact", "forward_residual", "backward_iterations",
    "backward_residual", "spectral_radius",
]  # fmt: skip


# -- without Ray running --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "dask"], "unknown executor 'dask'; valid: local, ray"),
        (["--address", "127.0.0.1:6379"], "--address is the address of a Ray cluster"),
        (["--executor", "ray", "--cpus-per-cell", "0"], "--cpus-per-cell must be a positive"),
        (["--executor", "ray", "--gpus-per-cell", "1.5"], "--gpus-per-cell must be a fraction"),
    ],
)
def test_bad_executor_settings_are_one_line_exit_2_and_write_nothing(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    out = tmp_path / "never"
    assert main(["run", *args, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_without_ray_installed_the_ray_executor_says_how_to_get_it(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is absent
    out = tmp_path / "never"
    assert main(["run", "--executor", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "rbpbench: error: --executor ray needs Ray, which is not installed: pip install "
        "'rbpbench[ray]' (or pip install ray), on the driver and on every node of the cluster"
    )
    assert not out.exists()


def test_an_address_where_nothing_listens_is_one_line_exit_2_at_once(
    tmp_path: Path, capsys
) -> None:
    address = f"127.0.0.1:{free_port()}"  # closed again: nothing listens there
    out = tmp_path / "never"
    assert main(["run", "--executor", "ray", "--address", address, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rbpbench: error: cannot join the Ray cluster at {address}: nothing")
    assert "ray start --head" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_cell_fits_where_some_node_holds_all_it_asks_for() -> None:
    nodes = [{"CPU": 4.0}, {"CPU": 1.0, "GPU": 1.0}]
    assert fits({"CPU": 2.0}, nodes) and fits({"CPU": 1.0, "GPU": 0.5}, nodes)
    assert not fits({"CPU": 2.0, "GPU": 1.0}, nodes) and not fits({"CPU": 1.0}, [])


@pytest.mark.slow
def test_a_kept_pool_reuses_its_worker_and_replaces_one_that_died_idle(registry) -> None:
    """What a Ray worker does between its cells: keep the local pool's worker process."""
    pool = LocalPool(registry, PluginConfig(), "run", timeout=60, node="here", keep_workers=True)
    cell = Cell("contractive-rnn", "bptt", 2, 0, "cpu", (("steps", 20),))
    try:
        rows: list[dict[str, Any]] = []
        pool.run([cell], lambda outcome: rows.append(outcome.row))
        pool.run([cell], lambda outcome: rows.append(outcome.row))
        first, second = (int(r["worker"].rsplit(":", 1)[1]) for r in rows)
        assert first == second and [r["node"] for r in rows] == ["here", "here"]
        os.kill(first, signal.SIGKILL)  # dies while idle, between two cells
        time.sleep(0.5)
        pool.run([cell], lambda outcome: rows.append(outcome.row))
        assert rows[-1]["status"] == "ok" and rows[-1]["worker"] != rows[0]["worker"]
    finally:
        pool.close()
    assert pool._idle == []


# -- helpers for Ray processes --------------------------------------------------------------


def marked_processes(prefix: str) -> list[int]:
    """Processes whose environment holds MARKER=<prefix...> (Linux /proc)."""
    found = []
    needle = f"{MARKER}={prefix}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(needle) for item in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def kill_marked(prefix: str) -> None:
    for _ in range(3):  # Ray may start a process while the first ones die
        for pid in marked_processes(prefix):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_env(marker: str, token: str) -> dict[str, str]:
    """The environment of everything a fixture starts: its marker, its own auth token (so that
    nothing is written to ~/.ray), and a dead node noticed within seconds rather than a minute."""
    return {
        **os.environ,
        MARKER: marker,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "5000",
    }


def short_tmp() -> Path:
    """A folder with a short path: Ray puts Unix sockets in it (at most 107 characters)."""
    return Path(tempfile.mkdtemp(prefix="rbray-"))


def rbpbench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rbpbench", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=400,
    )


def rows(out: Path) -> pd.DataFrame:
    keys = ["task", "method", "truncation", "seed"]
    return pd.read_parquet(out / "results.parquet").sort_values(keys).reset_index(drop=True)


# -- a local Ray instance, started by rbpbench itself -----------------------------------------


@pytest.fixture(scope="module")
def local_and_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The paper's methods under the local executor and on a local Ray instance (no --address);
    the Ray sweep also runs the misbehaving methods of the runner tests."""
    tmp, ray_tmp = tmp_path_factory.mktemp("local-ray"), short_tmp()
    marker = f"local-{secrets.token_hex(4)}"
    env = {**ray_env(marker, secrets.token_hex(32)), "RAY_TMPDIR": str(ray_tmp)}
    common = ("-p", "tests.faulty_methods", "--seeds", "0", "--truncation", "3", "--jobs", "2",
              "--task-param", "steps=50")  # fmt: skip
    try:
        local = rbpbench(env, *common, "--methods", PAPER, "--out", str(tmp / "l"))
        assert local.returncode == 0, local.stderr
        started = time.monotonic()
        ray = rbpbench(
            env, *common, "--executor", "ray", "--timeout", "6", "--out", str(tmp / "r"),
            "--methods", f"hangs,raises,nan,dies,exhausts-memory,{PAPER}",
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert ray.returncode == 0, ray.stderr
        deadline = time.monotonic() + 10  # Ray's agents and the cells' processes exit soon after
        while (left := marked_processes(marker)) and time.monotonic() < deadline:
            time.sleep(0.5)
        yield {"local": tmp / "l", "ray": tmp / "r", "stderr": ray.stderr,
               "elapsed": elapsed, "left": left}  # fmt: skip
    finally:
        kill_marked(marker)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_a_local_ray_instance_gives_the_local_executors_rows(local_and_ray) -> None:
    local = rows(local_and_ray["local"])
    ray = rows(local_and_ray["ray"])
    ray = ray[ray.method.isin(PAPER.split(","))].reset_index(drop=True)
    assert len(local) == len(ray) == 5 and (ray.status == "ok").all()
    assert list(ray.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(local[COMPARED], ray[COMPARED], check_exact=False, rtol=1e-12)
    assert "running on a local Ray instance: 1 nodes" in local_and_ray["stderr"]
    # Each row names its node: the host under the local pool, host/Ray node id under Ray.
    host = socket.gethostname()
    assert set(local.node) == {host}
    (ray_node,) = set(ray.node)
    assert ray_node.startswith(f"{host}/")
    for folder, node in ((local_and_ray["local"], host), (local_and_ray["ray"], ray_node)):
        (run,) = json.loads((folder / "environment.json").read_text())["runs"].values()
        assert list(run["nodes"]) == [node]
        assert run["nodes"][node]["hostname"] == host and run["nodes"][node]["torch_version"]


@pytest.mark.slow
def test_statuses_and_the_time_limit_hold_under_ray(local_and_ray) -> None:
    frame = rows(local_and_ray["ray"]).set_index("method")
    assert frame.status.to_dict() == {
        "hangs": "timeout",
        "raises": "error",
        "nan": "diverged",
        "dies": "crashed",
        "exhausts-memory": "oom",
        **dict.fromkeys(PAPER.split(","), "ok"),
    }
    assert "time limit of 6 s" in frame.loc["hangs", "error"]
    assert "killed by SIGKILL" in frame.loc["dies", "error"]
    assert frame.loc["raises", "error"].startswith("RuntimeError: solver exploded")
    assert local_and_ray["elapsed"] < 300  # the hung cells did not hold the sweep


@pytest.mark.slow
def test_the_local_ray_instance_ends_with_the_sweep(local_and_ray) -> None:
    assert local_and_ray["left"] == []


# -- a cluster: a head and a worker node on 127.0.0.1 -----------------------------------------


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tag = secrets.token_hex(4)
        self.token = secrets.token_hex(32)
        self.address = f"127.0.0.1:{free_port()}"
        self.tmp = tmp
        self.stall_file = tmp / "stalled"

    def env(self, role: str) -> dict[str, str]:
        env = ray_env(f"cluster-{self.tag}-{role}", self.token)
        if role == "worker":  # cells of the naps method stall on this node (see lost_node)
            env[STALL_FILE_ENV] = str(self.stall_file)
        return env

    def start(self, role: str, *args: str) -> None:
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
                  "--object-store-memory", "80000000", "--dashboard-agent-listen-port", "0",
                  "--temp-dir", str(self.tmp / role)]  # fmt: skip
        done = subprocess.run(
            [RAY, "start", *args, *common],
            env=self.env(role),
            capture_output=True,
            text=True,
            timeout=180,
            start_new_session=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def kill(self, role: str = "") -> None:
        kill_marked(f"cluster-{self.tag}-{role}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(short_tmp())
    try:
        port = cluster.address.rsplit(":", 1)[1]
        cluster.start("head", "--head", "--port", port, "--include-dashboard", "false")
        cluster.start("worker", "--address", cluster.address)
        yield cluster
    finally:
        cluster.kill()  # every process of the head, the worker and the sweeps' drivers
        shutil.rmtree(cluster.tmp, ignore_errors=True)
        assert marked_processes(f"cluster-{cluster.tag}") == []


@pytest.fixture(scope="module")
def lost_node(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A sweep on the cluster whose worker node is killed while it runs a cell, then resumed.

    The cells nap; on the worker node the second cell stalls and says so by creating the stall
    file, so the node is killed mid-cell, never between two cells.
    """
    out = tmp_path_factory.mktemp("lost-node") / "run"
    args = ["-p", "tests.faulty_methods", "--executor", "ray", "--address", cluster.address,
            "--methods", "naps", "--seeds", "0-5", *SMALL, "--timeout", "120",
            "--out", str(out)]  # fmt: skip
    driver = subprocess.Popen(
        [sys.executable, "-m", "rbpbench", "run", *args],
        env=cluster.env("driver"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not cluster.stall_file.exists() and time.monotonic() < deadline:
        assert driver.poll() is None, "the sweep ended before the worker node stalled"
        time.sleep(0.1)
    assert cluster.stall_file.exists(), "the worker node never stalled"
    cluster.kill("worker")  # its raylet, Ray workers and the cell running there, by SIGKILL
    try:
        _, stderr = driver.communicate(timeout=240)  # the driver does not hang on the lost node
    finally:
        driver.kill()
    assert driver.returncode == 0, stderr
    killed = rows(out)
    resumed = rbpbench(cluster.env("driver"), *args, "--retry-failed")
    assert resumed.returncode == 0, resumed.stderr
    return {"out": out, "stderr": stderr, "killed": killed, "resumed": resumed.stderr}


@pytest.mark.slow
def test_a_sweep_runs_across_both_nodes(cluster: Cluster, lost_node: dict[str, Any]) -> None:
    assert (
        f"running on the Ray cluster at {cluster.address}: 2 nodes, 2 CPUs" in lost_node["stderr"]
    )
    ran = lost_node["killed"].query("status == 'ok'")
    nodes = set(ran.node)
    assert len(nodes) == 2  # each node, one CPU, ran some of the cells
    (first, _) = json.loads((lost_node["out"] / "environment.json").read_text())["runs"].values()
    assert set(first["nodes"]) == nodes
    assert len({n["ray_node_id"] for n in first["nodes"].values()}) == 2


@pytest.mark.slow
def test_a_node_killed_mid_sweep_gives_rows_for_its_cells(lost_node: dict[str, Any]) -> None:
    frame = lost_node["killed"]
    assert len(frame) == 12 and frame.cell_id.is_unique
    lost = frame[frame.status != "ok"]
    assert len(lost) == 1 and set(lost.status) == {"crashed"}, frame[["status", "error"]]
    assert all("node running the cell was lost" in e for e in lost.error), list(lost.error)


@pytest.mark.slow
def test_after_a_lost_node_the_same_command_resumes(lost_node: dict[str, Any]) -> None:
    frame = lost_node["killed"]
    lost = frame[frame.status != "ok"]
    assert f"{12 - len(lost)} of 12 cells already finished" in lost_node["resumed"]
    final = rows(lost_node["out"])
    assert len(final) == 12 and (final.status == "ok").all()
    kept = final.set_index("cell_id").loc[frame[frame.status == "ok"].cell_id, "run_id"]
    assert (kept == frame.set_index("cell_id").loc[kept.index, "run_id"]).all()


BATCHED_SWEEP = """
import json
from rbpbench.cells import Cell
from rbpbench.plugins import PluginConfig, load_registry
from rbpbench.ray_executor import RayExecutor

plugins = PluginConfig(modules=("tests.faulty_methods",))
executor = RayExecutor(load_registry(plugins), plugins, "run", timeout=120, poll_s=1.0)
seeds = [0, 1, 3, 4, 5, 6, 7, 8, 2, 9, 10, 11, 12, 13]  # seed 2 comes once batches form
cells = [Cell("contractive-rnn", "dies-on-seed-2", 1, s, "cpu", (("steps", 10),)) for s in seeds]
rows = []
try:
    executor.run(cells, lambda outcome: rows.append(outcome.row))
finally:
    executor.close()
statuses = {r["seed"]: r["status"] for r in rows}
print(json.dumps({"statuses": statuses, "sent": executor.batcher.sent}))
"""


@pytest.mark.slow
def test_cheap_cells_go_to_ray_in_batches_and_a_crash_takes_no_other_cell() -> None:
    marker = f"batch-{secrets.token_hex(4)}"
    ray_tmp = short_tmp()
    env = {**ray_env(marker, secrets.token_hex(32)), "RAY_TMPDIR": str(ray_tmp)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", BATCHED_SWEEP],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=400,
        )  # fmt: skip
    finally:
        kill_marked(marker)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    statuses = {int(seed): status for seed, status in report["statuses"].items()}
    assert statuses == {seed: "crashed" if seed == 2 else "ok" for seed in range(14)}
    sizes = {int(size): count for size, count in report["sent"].items()}
    assert sum(size * count for size, count in sizes.items()) == 14
    assert max(sizes) > 1  # the first cells alone, then batches
