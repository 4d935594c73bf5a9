"""What quantmill costs on top of the work, measured side by side in one run.

    python bench/run.py [--repeats 3] [--out bench/results]

Writes ``summary.json`` and ``summary.md``. Every figure is a ratio of two
measurements taken alternately in this run, so load on a shared machine
cancels out as far as it can:

1. overhead: ``quantmill run`` (the Prefect flow, on a running ``prefect server``)
   / a plain script making the same library calls in sequence, same variants,
   each in a fresh process, alternating A/B; plus the fixed cost of importing the
   flow and running an empty flow, on the running server and on an ephemeral one;
2. rerun: an unchanged rerun / the first run, and "one variant added" / first run (in this process,
   on the running server); cli_rerun: the same ratio for the demo recipe from the CLI, each run a fresh
   ``quantmill run`` process as a person or a cron job starts it: replayed from the cache (the default),
   and through the flow (``--no-replay``) on the server ``quantmill server start`` started and on
   Prefect's ephemeral server, plus what the rerun still imports;
3. fan-out: the same variants in 1 worker process vs 2 (Dask; speedup / 2);
4. evaluation parity: quantmill's evaluation vs ``lm_eval.simple_evaluate`` on
   the same model and task (numbers must be identical), and the time ratio;
5. memory: peak RSS growth during GPTQ of a random-weight model built from a
   config, against the model's fp16 size (sequential pipeline);
6. shared_store: ``quantmill run`` with the run store on S3 (moto's server, started here) / with a local
   store, fresh caches both; then an unchanged rerun of each, and the S3 one from a second, empty home.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _env import REPO

DEMO = REPO / "quantmill" / "demo"
DATA = DEMO / "lm_eval_tasks" / "tiny_world" / "data"


def recipe_text(rows: str) -> str:
    return f"""\
name: bench
model: {{id: {DEMO / "tiny-llama"}, dtype: float32}}
device: cpu
calibration: {{dataset: {{path: {DATA / "calibration.jsonl"}}}, num_samples: 64, seq_len: 64}}
evaluation:
  tasks: [tiny_world_mc]
  include_paths: [{DEMO / "lm_eval_tasks"}]
  perplexity: {{dataset: {{path: {DATA / "tiny_world_ppl.jsonl"}}}, max_length: 64, stride: 32}}
  metrics: [size, memory]
variants:
  methods:
{rows}gates:
  - {{metric: tiny_world_mc/acc, min_recovery: 0.97}}
publish: {{target: none}}
"""


ROWS = "    - {method: gptq, bits: 4, group_size: 128}\n    - {method: rtn, bits: 4, group_size: 128}\n"
# The overhead comparison needs at least a minute of work per run (the target applies from 60 s).
OVERHEAD_ROWS = ROWS + (
    "    - {method: gptq, bits: 4, group_size: 64}\n    - {method: gptq, bits: 8, group_size: [64, 128]}\n"
    "    - {method: rtn, bits: 8, group_size: 128}\n"
    "    - {method: bnb, types: [nf4, int8]}\n    - {method: awq, bits: 4, group_size: 128}\n"
)
ONE_MORE = ROWS + "    - {method: bnb, type: int8}\n"


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value


def flow_run(recipe: Path, runs: Path, **kwargs) -> dict:
    from quantmill.flows.recipe import run_recipe

    return run_recipe(str(recipe), runs_dir=str(runs), **kwargs)


def plain_run(recipe: Path, runs: Path) -> dict:
    """The same steps as the flow, in sequence, with no orchestration (``quantmill.pipeline.run_sequential``)."""
    from quantmill.pipeline import run_sequential

    record = run_sequential(recipe, runs_dir=runs).record
    return {variant: entry.status.value for variant, entry in record.variants.items()}


def overhead(work: Path, repeats: int) -> dict:
    """``quantmill run`` vs the plain script, each in a fresh process, alternating A/B.

    Separate processes, because two ways of running torch in one process disturb each
    other: OpenMP thread teams belong to the thread that starts them, and whichever
    variant ran second in a shared process was ~20 % slower, whatever it was.
    Both include starting Python and importing torch, transformers and lm-eval.
    """
    recipe = work / "overhead.yaml"
    recipe.write_text(recipe_text(OVERHEAD_ROWS))
    flow_command = [sys.executable, "-m", "quantmill.cli", "run", str(recipe), "--no-publish"]
    plain_command = [sys.executable, __file__, "--plain", str(recipe)]

    def one(command: list[str], runs: Path) -> float:
        start = time.perf_counter()
        done = subprocess.run(
            command, env={**os.environ, "QUANTMILL_RUNS_DIR": str(runs)}, capture_output=True, text=True
        )
        if done.returncode not in (0, 3):  # 3: a variant failed its gates, the run itself completed
            raise RuntimeError(f"{command[1:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return time.perf_counter() - start

    one(flow_command, work / "warmup")  # disk caches, llama.cpp-free: a first run pays for cold files
    flows, plains = [], []
    for i in range(repeats):
        flows.append(one(flow_command, work / f"flow-{i}"))
        plains.append(one(plain_command, work / f"plain-{i}"))
    ratios = [f / p for f, p in zip(flows, plains, strict=True)]
    return {
        "flow_seconds": flows,
        "plain_seconds": plains,
        "median_ratio": statistics.median(ratios),
        **fixed_cost(work),
    }


def fixed_cost(work: Path) -> dict:
    """Importing the flow module and running an empty flow, in a fresh process: on the running server, and on
    Prefect's ephemeral one (started by the process itself)."""
    code = (
        "import time; t=time.perf_counter(); import quantmill.flows.recipe; from prefect import flow\n"
        "@flow\ndef hello(): return 1\n"
        "hello(); print(time.perf_counter()-t)"
    )
    library = (
        "import time; t=time.perf_counter(); import quantmill.stages, quantmill.report.render; "
        "print(time.perf_counter()-t)"
    )

    def seconds(program: str, env: dict[str, str]) -> float:
        return float(
            subprocess.run(
                [sys.executable, "-c", program], capture_output=True, text=True, check=True, env=env
            ).stdout.split()[-1]
        )

    ephemeral = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(work / "ephemeral-prefect-home")
    }
    return {
        "fixed_cost_seconds_running_server": seconds(code, dict(os.environ)),
        "fixed_cost_seconds_ephemeral_server": seconds(code, ephemeral),
        "library_import_seconds_without_prefect": seconds(library, dict(os.environ)),
    }


def rerun(work: Path) -> dict:
    """The overhead's 9-variant workload, then unchanged, then with one variant more (in this process)."""
    recipe = work / "rerun.yaml"
    recipe.write_text(recipe_text(OVERHEAD_ROWS))
    first, _ = timed(flow_run, recipe, work / "rerun")
    again, _ = timed(flow_run, recipe, work / "rerun")
    recipe.write_text(recipe_text(OVERHEAD_ROWS + "    - {method: rtn, bits: 4, group_size: 64}\n"))
    added, _ = timed(flow_run, recipe, work / "rerun")
    return {
        "first_seconds": first,
        "unchanged_rerun_seconds": again,
        "rerun_ratio": again / first,
        "one_variant_added_seconds": added,
        "added_ratio": added / first,
    }


def cli_rerun(work: Path, reruns: int) -> dict:
    """The demo recipe from the CLI: its first run, then unchanged reruns — replayed from the cache
    (the default: no Prefect), and through the flow (``--no-replay``) on the server ``quantmill server
    start`` started and on the ephemeral one — alternating; ratios to the first run.

    Its own cache folder (so the first run tokenizes calibration data and starts cold) and no
    ``PREFECT_API_URL``: the CLI finds the server as a user's shell would. Also: which heavy packages
    a replayed rerun imports (none expected), and starting Python and importing the CLI and the flow
    module, in fresh processes.
    """
    text = (REPO / "recipes" / "demo.yaml").read_text().replace("../", f"{REPO}/")
    recipe = work / "cli-demo.yaml"
    recipe.write_text(text.replace(f"path: {REPO}/zoo", f"path: {work / 'cli-zoo'}"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "QUANTMILL_RUNS_DIR": str(work / "cli-runs"),
        "QUANTMILL_CACHE_DIR": str(work / "cli-cache"),
        "PREFECT_HOME": str(work / "cli-prefect-home"),  # the ephemeral server's database
    }
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # a loaded machine starts it slowly
    from quantmill.llamacpp import find_llama_cpp

    tools = find_llama_cpp()  # the built tools, found before the cache folder moves: the GGUF variants run too
    if tools is not None:
        env["LLAMA_CPP_DIR"] = str(tools.tree)
        folders = {str(path.parent) for path in tools.tools.values()}
        env["PATH"] = os.pathsep.join([*sorted(folders), env.get("PATH", "")])
    from quantmill.testing.prefect_server import free_port

    def run(*cli_options: str, python_options: tuple[str, ...] = ()) -> tuple[float, str]:
        command = [sys.executable, *python_options, "-m", "quantmill.cli", "run", str(recipe), *cli_options]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode not in (0, 3):  # 3: rtn-w2-g64 fails its gate, as the demo intends
            raise RuntimeError(f"quantmill run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return time.perf_counter() - start, done.stderr

    def server(action: str) -> None:
        port = ["--port", str(free_port()), "--no-ui"] if action == "start" else []
        command = [sys.executable, "-m", "quantmill.cli", "server", action, *port]
        subprocess.run(command, env=env, check=True, capture_output=True)

    def seconds(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        return time.perf_counter() - start

    server("start")
    try:
        first, _ = run()
        print(f"cli_rerun: first run {first:.1f} s", flush=True)
        _, traced = run(python_options=("-X", "importtime"))
        replayed, on_server, ephemeral = [], [], []
        for _ in range(reruns):
            replayed.append(run()[0])
            on_server.append(run("--no-replay")[0])
            server("stop")
            ephemeral.append(run("--no-replay")[0])
            print(
                f"cli_rerun: rerun {replayed[-1]:.2f} s replayed; through the flow {on_server[-1]:.1f} s on the "
                f"server, {ephemeral[-1]:.1f} s ephemeral",
                flush=True,
            )
            server("start")
    finally:
        server("stop")
    heavy = {"prefect", "torch", "transformers", "llmcompressor", "lm_eval", "matplotlib"}
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in traced.splitlines() if "import time:" in line}
    return {
        "first_seconds": first,
        "rerun_seconds_replayed": statistics.median(replayed),
        "rerun_seconds_flow_server": statistics.median(on_server),
        "rerun_seconds_flow_ephemeral": statistics.median(ephemeral),
        "rerun_ratio_replayed": statistics.median(replayed) / first,
        "rerun_ratio_flow_server": statistics.median(on_server) / first,
        "rerun_ratio_flow_ephemeral": statistics.median(ephemeral) / first,
        "replayed_heavy_imports": ", ".join(sorted(heavy & imported)) or "none",
        "breakdown_python_and_cli_import_seconds": seconds("import quantmill.cli"),
        "breakdown_flow_import_seconds": seconds("import quantmill.flows.recipe"),
        "cores": os.cpu_count(),
    }


def fan_out(work: Path, processes: int = 2) -> dict:
    """The same variants in 1 worker process vs ``processes`` (Dask), the heavy limit sized to match."""
    recipe = work / "fanout.yaml"
    recipe.write_text(recipe_text(ONE_MORE))
    times = {n: timed(flow_run, recipe, work / f"fanout-{n}", processes=n)[0] for n in (1, processes)}
    speedup = times[1] / times[processes]
    return {
        "seconds_1_process": times[1],
        f"seconds_{processes}_processes": times[processes],
        "speedup": speedup,
        "speedup_per_worker": speedup / processes,
        "cores": os.cpu_count(),
    }


def evaluation_parity(work: Path) -> dict:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantmill import stages
    from quantmill.recipe import load_recipe
    from quantmill.resolve import resolve_model

    recipe = work / "parity.yaml"
    recipe.write_text(
        recipe_text(ROWS)
        .replace("  metrics: [size, memory]\n", "  metrics: []\n")
        .replace(
            f"  perplexity: {{dataset: {{path: {DATA / 'tiny_world_ppl.jsonl'}}}, max_length: 64, stride: 32}}\n", ""
        )
    )
    loaded = load_recipe(recipe)
    resolved = resolve_model(loaded)

    def direct():
        model = AutoModelForCausalLM.from_pretrained(DEMO / "tiny-llama", dtype=torch.float32)
        lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(DEMO / "tiny-llama"), batch_size=16)
        return simple_evaluate(
            model=lm,
            tasks=["tiny_world_mc"],
            task_manager=TaskManager(include_path=str(DEMO / "lm_eval_tasks")),
            random_seed=1234,
            numpy_random_seed=1234,
            torch_random_seed=1234,
            fewshot_random_seed=1234,
        )

    ours_t, ours = timed(stages.evaluate_baseline, loaded, resolved, "cpu")
    theirs_t, theirs = timed(direct)
    value, reference = ours.value("tiny_world_mc/acc"), theirs["results"]["tiny_world_mc"]["acc,none"]
    return {
        "quantmill_acc": value,
        "simple_evaluate_acc": reference,
        "identical": value == reference,
        "quantmill_seconds": ours_t,
        "simple_evaluate_seconds": theirs_t,
        "time_ratio": ours_t / theirs_t,
    }


def gptq_memory(work: Path, hidden: int, layers: int) -> dict:
    """GPTQ of a random-weight Llama built from a config, in a fresh process so RSS is its own."""
    code = f"""
import json, psutil, torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from quantmill.calibration import CalibrationSet
from quantmill.measure import measure
from quantmill.quantize import quantize_variant
from quantmill.registry import get_method
from quantmill.recipe.matrix import Variant
torch.manual_seed(0)
config = LlamaConfig(vocab_size=768, hidden_size={hidden}, intermediate_size={hidden * 4}, num_hidden_layers={layers},
                     num_attention_heads={hidden // 64}, num_key_value_heads={hidden // 64}, max_position_embeddings=256)
model = LlamaForCausalLM(config).to(torch.float16)
model.save_pretrained("{work}/synthetic")
AutoTokenizer.from_pretrained("{DEMO / "tiny-llama"}").save_pretrained("{work}/synthetic")
params = sum(p.numel() for p in model.parameters()); del model
import gc; gc.collect()
before = psutil.Process().memory_info().rss
spec = get_method("gptq"); p = spec.params.model_validate({{"bits": 4, "group_size": 128}})
ids = tuple(tuple(range(3, 67)) for _ in range(16))
calibration = CalibrationSet(ids, "synthetic", "synthetic")
from pathlib import Path
artifact = quantize_variant(Variant("gptq-w4-g128", "gptq", p, (), 0), source_dir=Path("{work}/synthetic"),
                            out_dir=Path("{work}/synthetic-gptq"), calibration=calibration, dtype="float16")
print(json.dumps({{"parameters": params, "fp16_bytes": params * 2, "rss_before_bytes": before,
                  "peak_rss_bytes": artifact.peak_rss_bytes, "seconds": artifact.seconds}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the GPTQ memory run failed:\n{result.stderr[-3000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    data["peak_growth_over_fp16"] = (data["peak_rss_bytes"] - data["rss_before_bytes"]) / data["fp16_bytes"]
    data["peak_over_fp16"] = data["peak_rss_bytes"] / data["fp16_bytes"]
    return data


SHARED_ROWS = "    - {method: rtn, bits: [4, 8], group_size: 128}\n"
# `quantmill run`, adding up the seconds spent in the shared store's operations (pull, push, fetch, lock) on the
# threads that wait for them (the lease heartbeat runs beside the work), written to the file argv[1] names.
STORE_TIMED_RUN = """
import sys, threading, time
from quantmill import leases, sharedstore
from quantmill.cli import entry_point
spent, depth, out = [0.0], threading.local(), sys.argv.pop(1)
def timed(cls, name):
    original = getattr(cls, name)
    def wrapper(*args, **kwargs):
        depth.n = getattr(depth, "n", 0) + 1
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            depth.n -= 1
            if depth.n == 0:
                spent[0] += time.perf_counter() - start
    setattr(cls, name, wrapper)
for name in ("pull", "push_files", "push_cache_entry", "push_artifact", "fetch_artifact"):
    timed(sharedstore.SharedStore, name)
for name in ("acquire", "release"):
    timed(leases.Lease, name)
try:
    entry_point()
finally:
    open(out, "w").write(str(spent[0]))
"""


def shared_store(work: Path) -> dict:
    """The same recipe on a local run store and on a shared one (S3, moto's server in this process), each a
    fresh ``quantmill run`` process with its own empty cache folder; then an unchanged rerun of each (the
    same home: replayed from the cache) and the shared one from another empty home (a second machine: it
    pulls the records and cache, and runs the flow with every step cached). The shared first run also
    reports the seconds its store operations took (``store_io_seconds``), which load on the machine
    disturbs far less than the difference of two wall times."""
    from tests.support.s3server import s3_server

    recipe = work / "shared.yaml"
    recipe.write_text(recipe_text(SHARED_ROWS))
    io_file = work / "store-io-seconds"

    def one(runs_dir: str, home: Path, s3_env: dict[str, str], timed_io: bool = False) -> float:
        env = {**os.environ, **s3_env, "QUANTMILL_RUNS_DIR": runs_dir, "QUANTMILL_CACHE_DIR": str(home)}
        cli = ["-c", STORE_TIMED_RUN, str(io_file), "run"] if timed_io else ["-m", "quantmill.cli", "run"]
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, *cli, str(recipe), "--no-publish"], env=env, capture_output=True, text=True
        )
        if done.returncode not in (0, 3):
            raise RuntimeError(
                f"shared_store: the run on {runs_dir} failed ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        return time.perf_counter() - start

    with s3_server() as s3_env:
        local, shared = str(work / "store-local"), "s3://quantmill/bench"
        local_first = one(local, work / "home-local", s3_env)
        shared_first = one(shared, work / "home-a", s3_env, timed_io=True)
        local_rerun = one(local, work / "home-local", s3_env)
        shared_rerun = one(shared, work / "home-a", s3_env)
        shared_elsewhere = one(shared, work / "home-b", s3_env)
    store_io = float(io_file.read_text())
    return {
        "local_seconds": local_first,
        "shared_seconds": shared_first,
        "shared_over_local": shared_first / local_first,
        "store_io_seconds": store_io,
        "store_io_over_local": store_io / local_first,
        "rerun_local_seconds": local_rerun,
        "rerun_shared_seconds": shared_rerun,
        "rerun_shared_over_local": shared_rerun / local_rerun,
        "rerun_shared_other_home_seconds": shared_elsewhere,
        "rerun_shared_other_home_over_local_first": shared_elsewhere / local_first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--hidden", type=int, default=1024, help="synthetic model width for the memory benchmark")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--only", nargs="*", help="run only these items")
    parser.add_argument("--plain", type=Path, metavar="RECIPE", help=argparse.SUPPRESS)  # the overhead's B side
    args = parser.parse_args()
    if args.plain:
        plain_run(args.plain, Path(os.environ["QUANTMILL_RUNS_DIR"]))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    from quantmill.testing.prefect_server import start_prefect_server

    summary: dict = {}
    with tempfile.TemporaryDirectory(prefix="quantmill-bench-") as tmp:
        work = Path(tmp)
        server, env = start_prefect_server(work / "prefect-home")  # "a running Prefect server", as users have
        os.environ.update(env)
        try:
            items = {
                "overhead": lambda: overhead(work, args.repeats),
                "rerun": lambda: rerun(work),
                "cli_rerun": lambda: cli_rerun(work, args.repeats),
                "fan_out": lambda: fan_out(work),
                "evaluation_parity": lambda: evaluation_parity(work),
                "gptq_memory": lambda: gptq_memory(work, args.hidden, args.layers),
                "shared_store": lambda: shared_store(work),
            }
            for name, item in items.items():
                if args.only and name not in args.only:
                    continue
                started = time.perf_counter()
                summary[name] = item()
                summary[name]["bench_seconds"] = round(time.perf_counter() - started, 1)
                print(name, json.dumps(summary[name]), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| benchmark | figure | value |", "|---|---|---|"]
    for name, figures in summary.items():
        for key, value in figures.items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(f"| {name} | {key} | {value} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
