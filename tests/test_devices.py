"""GPU slots tied to devices (quantmill.devices), simulated on a CPU-only machine.

Steps are stand-ins that record the devices they were given while holding them: in threads (each
with the GPU view a process would have) and in Dask worker processes started the way
``--processes`` starts them. No two steps that overlap in time may hold the same GPU.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from quantmill.devices import (
    CPU,
    SIMULATED_GPUS_ENV,
    VISIBLE_DEVICES,
    Placement,
    gpu_lock_groups,
    gpu_slot_count,
    hold_gpus,
    model_placement,
    running_on,
    slot_gpus,
    this_process_gpu_ids,
    visible_gpu_ids,
    worker_gpu_env,
)
from quantmill.errors import QuantmillError


@pytest.mark.fast
def test_slot_i_of_g_gpus_is_the_visible_gpus_i_times_g_onwards():
    assert [slot_gpus(i, 1) for i in range(3)] == [(0,), (1,), (2,)]
    assert [slot_gpus(i, 2) for i in range(2)] == [(0, 1), (2, 3)]
    assert gpu_slot_count(4, 2) == 2 and gpu_slot_count(5, 2) == 2 and gpu_slot_count(0, 1) == 0
    with pytest.raises(QuantmillError, match="QUANTMILL_GPUS_PER_VARIANT is 4, but this machine has 2"):
        gpu_slot_count(2, 4)
    # the machine-wide ids behind torch's numbers: CUDA_VISIBLE_DEVICES's entries where it is set
    assert visible_gpu_ids(3, None) == ["0", "1", "2"]
    assert visible_gpu_ids(2, "5, 7") == ["5", "7"] and visible_gpu_ids(1, "5,7") == ["5"]
    locks = gpu_lock_groups(["4", "5", "6", "7"], 2, Path("/locks"))
    assert [[p.name for p in group] for group in locks] == [
        ["gpu-device.4.lock", "gpu-device.5.lock"],
        ["gpu-device.6.lock", "gpu-device.7.lock"],
    ]


@pytest.mark.fast
def test_each_worker_process_sees_one_slots_gpus_and_no_more_workers_than_slots():
    assert worker_gpu_env(["0", "1", "2", "3"], 1, 2) == [{VISIBLE_DEVICES: "0"}, {VISIBLE_DEVICES: "1"}]
    assert worker_gpu_env(["4", "5", "6", "7"], 2, 2) == [{VISIBLE_DEVICES: "4,5"}, {VISIBLE_DEVICES: "6,7"}]
    with pytest.raises(QuantmillError, match=r"--processes 3 asks for 3 GPU slots, but 4 visible GPU\(s\)"):
        worker_gpu_env(["0", "1", "2", "3"], 2, 3)


@pytest.mark.fast
def test_a_step_on_several_gpus_is_spread_over_exactly_those(monkeypatch):
    import torch

    free = {0: 10, 1: 11, 2: 12, 3: 13}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda gpu: (free[gpu], 99))
    assert model_placement("cpu") == {}
    with running_on(Placement("cuda:1", (1,))) as device:
        assert device == "cuda:1" and model_placement(device) == {"device_map": {"": "cuda:1"}}
    with running_on(Placement("cuda:2", (2, 3))) as device:
        placed = model_placement(device)
    assert placed["device_map"] == "auto" and set(placed["max_memory"]) == {2, 3, "cpu"}
    assert placed["max_memory"][2] == 12 and placed["max_memory"][3] == 13
    assert model_placement("cuda:2") == {"device_map": {"": "cuda:2"}}  # outside the step: its own device only


def _held_steps(views: list[tuple[list[str], int]], folder: Path, hold_s: float) -> list[dict]:
    """Run one step per (GPU ids the process sees, GPUs per variant) in threads, all at once; each holds its
    GPUs for ``hold_s`` and records what it got (machine-wide ids) and when."""

    def step(view: tuple[list[str], int]) -> dict:
        ids, per_variant = view
        with hold_gpus(ids, per_variant, folder) as placement:
            start = time.monotonic()
            time.sleep(hold_s)
            held = {ids[k] for k in placement.gpus}
            return {"placement": placement, "ids": held, "start": start, "end": time.monotonic()}

    with ThreadPoolExecutor(len(views)) as pool:
        return list(pool.map(step, views))


def _assert_no_gpu_shared(steps: list[dict]) -> None:
    for i, a in enumerate(steps):
        for b in steps[i + 1 :]:
            if a["start"] < b["end"] and b["start"] < a["end"]:
                assert not a["ids"] & b["ids"], f"two steps held GPU(s) {a['ids'] & b['ids']} at once"


@pytest.mark.fast
def test_concurrent_steps_never_hold_the_same_gpu_whatever_their_view_or_slot_size(tmp_path):
    """4 simulated GPUs: steps of one process (all 4 visible, 1 or 2 GPUs per variant) and steps of pinned
    worker processes (``CUDA_VISIBLE_DEVICES=2,3``: they see 2 GPUs) compete for them."""
    everything = ["0", "1", "2", "3"]
    views = [(everything, 2)] * 3 + [(everything, 1)] * 3 + [(["2", "3"], 2)] * 2
    steps = _held_steps(views, tmp_path / "locks", hold_s=0.15)
    _assert_no_gpu_shared(steps)
    two_per_variant = [s for s, (_, per_variant) in zip(steps, views, strict=True) if per_variant == 2]
    assert all(len(s["ids"]) == 2 and len(s["placement"].gpus) == 2 for s in two_per_variant)
    assert steps[0]["placement"].device in ("cuda:0", "cuda:2")  # a slot's first GPU, as torch numbers it here
    pinned = steps[-1]["placement"]
    assert pinned == Placement("cuda:0", (0, 1))  # a pinned worker's only slot is everything it sees
    overlapping = max(sum(s["start"] < t["end"] and t["start"] < s["end"] for t in steps) for s in steps)
    assert overlapping >= 2  # they did run at once, on different GPUs


@pytest.mark.fast
def test_no_gpu_visible_on_a_cuda_run_is_a_clear_error(tmp_path):
    with pytest.raises(QuantmillError, match="sees no GPU"), hold_gpus([], 1, tmp_path):
        pass


def _step_in_worker(folder: str, hold_s: float) -> dict:
    """A heavy GPU step's stand-in in a Dask worker: what the worker sees and which GPUs its slot got."""
    ids = this_process_gpu_ids()
    with hold_gpus(ids, 1, Path(folder)) as placement:
        start = time.monotonic()
        time.sleep(hold_s)
        return {
            "visible": os.environ.get(VISIBLE_DEVICES),
            "ids": {ids[k] for k in placement.gpus},
            "device": placement.device,
            "start": start,
            "end": time.monotonic(),
        }


@pytest.mark.slow
def test_dask_workers_started_for_processes_each_see_their_own_gpu(tmp_path, monkeypatch):
    """``--processes 2`` on 2 simulated GPUs: each worker process sees one GPU, holds it, and they run at once."""
    from distributed import Client, SpecCluster

    from quantmill.flows.recipe import process_task_runner

    monkeypatch.setenv(SIMULATED_GPUS_ENV, "2")  # inherited by the workers
    monkeypatch.delenv(VISIBLE_DEVICES, raising=False)
    envs = worker_gpu_env(this_process_gpu_ids(), 1, 2)
    runner = process_task_runner(2, envs)
    with SpecCluster(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        seen = list(client.run(_step_in_worker, str(tmp_path / "locks"), 1.0).values())
    assert sorted(s["visible"] for s in seen) == ["0", "1"]
    assert sorted(tuple(s["ids"]) for s in seen) == [("0",), ("1",)]
    assert all(s["device"] == "cpu" for s in seen)  # simulated GPUs hold, but compute on the CPU
    _assert_no_gpu_shared(seen)
    assert seen[0]["start"] < seen[1]["end"] and seen[1]["start"] < seen[0]["end"]  # in parallel


@pytest.mark.fast
def test_a_step_of_a_method_that_needs_no_gpu_takes_a_cpu_slot_and_runs_on_the_cpu(monkeypatch, tmp_path):
    """On a CUDA run whose slot is GPU 1, a GGUF step (``gpu="none"``) runs on the CPU in a cpu-heavy slot,
    and the baseline runs on the run's GPU (through run_heavy, with the limits stubbed)."""
    import contextlib

    from quantmill.pipeline import slot_policy
    from quantmill.registry import get_method
    from quantmill.tasks import steps

    taken = []

    @contextlib.contextmanager
    def hold_slot(name):
        taken.append(name)
        yield None if name is None else CPU  # what tasks.limits.hold_slot yields for a cpu-heavy slot

    monkeypatch.setattr(steps, "hold_slot", hold_slot)
    run_slot = Placement("cuda:1", (1,))
    policy = slot_policy("gpu", tasks_in_this_process=True, all_cached=False)
    gguf, gptq = get_method("gguf"), get_method("gptq")
    assert not gguf.uses_gpu and gptq.uses_gpu
    devices = [
        steps.run_heavy(policy.for_step(needs_gpu=spec.uses_gpu, run_placement=run_slot), lambda device: device)
        for spec in (gguf, gptq)
    ]
    assert devices == ["cpu", "cuda:1"] and taken == ["cpu-heavy", None]


@pytest.mark.fast
def test_a_gpu_held_by_a_killed_step_is_freed(tmp_path):
    """A step that dies holding a GPU frees it (the kernel drops its locks); meanwhile another waits."""
    import signal
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from quantmill.devices import hold_gpus\n"
        f"with hold_gpus(['0'], 1, Path({str(tmp_path)!r})):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    got = threading.Event()

    def wait_for_gpu():
        with hold_gpus(["0"], 1, tmp_path):
            got.set()

    waiter = threading.Thread(target=wait_for_gpu)
    waiter.start()
    assert not got.wait(0.5)  # GPU 0 is held: it waits
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert got.wait(10)
    waiter.join()


@pytest.mark.slow
def test_llm_compressor_onloads_to_the_steps_gpu_not_the_processs_first():
    """Its pipelines onload to GPU 0 of the process; a step in a thread whose slot is cuda:1 must calibrate there."""
    import torch
    from llmcompressor.pipelines.sequential import pipeline as sequential

    from quantmill.methods._llmcompressor import onloading_to

    original = sequential.get_main_device
    with onloading_to("cuda:1"):
        assert sequential.get_main_device() == torch.device("cuda:1")
    assert sequential.get_main_device is original
    with onloading_to("cuda:0"), onloading_to("cpu"):
        assert sequential.get_main_device is original  # GPU 0 is its own choice already


@pytest.mark.fast
def test_processes_on_a_cuda_recipe_pin_one_gpu_slot_per_worker(write_recipe, monkeypatch):
    from quantmill.flows.recipe import _worker_gpu_envs
    from quantmill.testing.recipes import fast_recipe

    monkeypatch.setenv(SIMULATED_GPUS_ENV, "2")
    monkeypatch.delenv(VISIBLE_DEVICES, raising=False)
    rtn = "    - {method: rtn, bits: 4, group_size: 128}\n"
    cpu = write_recipe(fast_recipe(rtn), "cpu.yaml")
    cuda = write_recipe(fast_recipe(rtn).replace("device: cpu", "device: cuda"), "cuda.yaml")
    assert _worker_gpu_envs(str(cpu), 2) is None  # a CPU run's workers see what this process sees
    assert _worker_gpu_envs(str(cuda), 2) == [{VISIBLE_DEVICES: "0"}, {VISIBLE_DEVICES: "1"}]
    with pytest.raises(QuantmillError, match="--processes 3 asks for 3 GPU slots"):
        _worker_gpu_envs(str(cuda), 3)


PROBES = """
import dataclasses, fcntl, json, os, time
from pathlib import Path

from quantmill.methods.rtn import SPEC as RTN
from quantmill.settings import get_settings


def _gpus_held(visible):
    # Whether this step holds its worker's GPUs: their lock files cannot be taken while it does.
    held = []
    for gpu in visible.split(","):
        with open(get_settings().cache_dir / "locks" / f"gpu-device.{gpu}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(lock, fcntl.LOCK_UN)
                held.append(False)
            except BlockingIOError:
                held.append(True)
    return all(held)


def _record(name, ctx, wait_for_another):
    trace = Path(os.environ["QUANTMILL_PROBE_TRACE"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entry = {"name": name, "pid": os.getpid(), "visible": visible, "device": ctx.device, "held": _gpus_held(visible)}
    with trace.open("a") as f:
        f.write(json.dumps(entry) + "\\n")
    deadline = time.monotonic() + 120
    while wait_for_another and len({json.loads(line)["pid"] for line in trace.read_text().splitlines()
                                     if json.loads(line)["name"] == "gpuprobe"}) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("no second process quantized at the same time")
        time.sleep(0.1)


def gpu_quantize(params, ctx):
    _record("gpuprobe", ctx, wait_for_another=True)  # two GPU steps must overlap, in two processes
    return RTN.quantize(params, ctx)


def cpu_quantize(params, ctx):
    _record("cpuprobe", ctx, wait_for_another=False)
    return RTN.quantize(params, ctx)


GPU = dataclasses.replace(RTN, name="gpuprobe", quantize=gpu_quantize, variant_id=lambda p: f"gpuprobe-w{p.bits}")
CPU = dataclasses.replace(
    RTN, name="cpuprobe", quantize=cpu_quantize, variant_id=lambda p: f"cpuprobe-w{p.bits}", gpu="none"
)
"""


@pytest.mark.slow
def test_processes_on_simulated_gpus_give_each_step_its_own_gpu_and_a_cpu_method_none(tmp_path, write_recipe):
    """`quantmill run --processes 2` of a CUDA recipe on 2 simulated GPUs, methods from a plug-in: the two
    GPU steps overlap in two worker processes that each see, and hold, a different GPU; the ``gpu="none"``
    method's step runs on the CPU, holding no GPU."""
    import json

    from quantmill.testing.recipes import fast_recipe
    from tests.conftest import REPO
    from tests.support.cli import run_cli

    plugin = tmp_path / "plugin"
    dist_info = plugin / "quantmill_probes-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (plugin / "quantmill_probes.py").write_text(PROBES)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: quantmill-probes\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[quantmill.methods]\ngpuprobe = quantmill_probes:GPU\ncpuprobe = quantmill_probes:CPU\n"
    )
    variants = (
        "    - {method: gpuprobe, bits: [4, 8], group_size: 128}\n    - {method: cpuprobe, bits: 4, group_size: 128}\n"
    )
    recipe = write_recipe(fast_recipe(variants).replace("device: cpu", "device: cuda"))
    trace = tmp_path / "trace"
    env = {
        **os.environ,
        "PYTHONPATH": f"{plugin}{os.pathsep}{REPO}",
        "QUANTMILL_PROBE_TRACE": str(trace),
        SIMULATED_GPUS_ENV: "2",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "QUANTMILL_RUNS_DIR": str(tmp_path / "runs"),
        "QUANTMILL_CACHE_DIR": str(tmp_path / "cache"),  # its own slot and GPU locks
    }
    env.pop("PREFECT_API_URL", None)
    env.pop(VISIBLE_DEVICES, None)
    result = run_cli("run", str(recipe), "--processes", "2", "--no-publish", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [json.loads(line) for line in trace.read_text().splitlines()]
    gpu = [s for s in steps if s["name"] == "gpuprobe"]
    assert len(gpu) == 2 and len({s["pid"] for s in gpu}) == 2
    assert sorted(s["visible"] for s in gpu) == ["0", "1"] and all(s["held"] for s in gpu)
    (cpu,) = [s for s in steps if s["name"] == "cpuprobe"]
    assert cpu["device"] == "cpu" and cpu["visible"] in ("0", "1") and not cpu["held"]
