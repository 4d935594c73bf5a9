"""infra/: the compose stack, the GPU work-pool templates and prefect.yaml, checked without a Docker daemon.

Only the `compose up` smoke test needs a daemon (and Docker's compose plugin); it is skipped, saying
why, where none answers.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
COMPOSE = INFRA / "compose.yaml"
POOL_TEMPLATES = {"quantmill-k8s-gpu": "kubernetes-gpu.json", "quantmill-docker-gpu": "docker-gpu.json"}
# A credential written out: an AWS access key id, or a value under a credential-like name (a secret's *name*, e.g.
# `store_secret`, is a reference, not a credential).
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
_SECRET_NAME = re.compile(r"secret_access|secret_key|password|token|access_key", re.IGNORECASE)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def pool_template(file: str) -> dict:
    return json.loads((INFRA / "work-pools" / file).read_text())


def rendered(template: dict, **variables) -> dict:
    """The job configuration a worker would get: the template's defaults, overridden by ``variables``."""
    from prefect.utilities.templating import apply_values

    values = {name: spec.get("default") for name, spec in template["variables"]["properties"].items()}
    return apply_values(template["job_configuration"], {**values, **variables})


def written_credentials(node, path: str = "") -> list[str]:
    """Paths in ``node`` where a credential is written out (a literal value under a secret-sounding name)."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and _SECRET_NAME.search(node["name"]) and node.get("value"):
            found.append(f"{path}/{node['name']}")  # a Kubernetes env entry with a literal value
        for key, value in node.items():
            if _SECRET_NAME.search(str(key)) and isinstance(value, str) and value and "{{" not in value:
                found.append(f"{path}/{key}")
            found += written_credentials(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += written_credentials(item, f"{path}/{index}")
    elif isinstance(node, str) and _AWS_KEY_ID.search(node):
        found.append(path)
    return found


@pytest.mark.fast
def test_compose_starts_prefect_minio_its_bucket_and_a_worker_on_the_minio_store():
    services = compose()["services"]
    assert set(services) >= {"prefect-server", "minio", "minio-init", "worker"}
    worker = services["worker"]
    env = worker["environment"]
    bucket = re.fullmatch(r"s3://([^/]+)/.+", env["QUANTMILL_RUNS_DIR"])
    assert bucket, env["QUANTMILL_RUNS_DIR"]
    # the init container creates exactly the worker's bucket, on the MinIO service the worker talks to
    assert f"store/{bucket.group(1)}" in " ".join(services["minio-init"]["command"])
    assert "http://minio:9000" in " ".join(services["minio-init"]["command"])
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["depends_on"]["minio-init"] == {"condition": "service_completed_successfully"}
    assert worker["depends_on"]["prefect-server"] == {"condition": "service_healthy"}
    # credentials come from the environment (local-only defaults), and match MinIO's own
    minio_env = services["minio"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${")
    build = worker["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file()


def _compose_cli() -> list[str] | None:
    """``docker compose`` (the plugin) or ``docker-compose``, when installed; None otherwise."""
    plugin = ["docker", "compose", "version"]
    if shutil.which("docker") and subprocess.run(plugin, capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.fast
def test_docker_compose_config_accepts_the_file():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither the `docker compose` plugin nor docker-compose is installed: only the YAML checks ran")
    result = subprocess.run([*cli, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.fast
@pytest.mark.parametrize("pool", sorted(POOL_TEMPLATES))
def test_gpu_pool_template_requests_the_gpu_count_and_writes_no_credentials(pool):
    template = pool_template(POOL_TEMPLATES[pool])
    gpus = template["variables"]["properties"]["gpus"]
    assert gpus["type"] == "integer" and gpus["default"] == 1
    assert written_credentials(template) == []
    job = rendered(template, gpus=2)
    if pool == "quantmill-k8s-gpu":
        container = job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
        env = {entry["name"]: entry for entry in container["env"]}
        assert env["QUANTMILL_RUNS_DIR"]["value"].startswith("s3://")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "quantmill-store", "key": name}
    else:
        assert job["container_create_kwargs"]["device_requests"][0]["Count"] == 2
        assert job["env"]["QUANTMILL_RUNS_DIR"].startswith("s3://")
        assert any(volume.endswith(":/root/.aws:ro") for volume in job["volumes"])


def _flow_parameters(entrypoint: str) -> set[str]:
    """The parameters of the ``@flow`` function an entrypoint (``path.py:function``) names."""
    path, function = entrypoint.split(":")
    tree = ast.parse((REPO / path).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
            assert any(isinstance(d, ast.Name) and d.id == "flow" for d in decorators), f"{entrypoint} is no @flow"
            return {a.arg for a in node.args.args + node.args.kwonlyargs}
    raise AssertionError(f"{entrypoint}: no function {function} in {path}")


@pytest.mark.fast
def test_prefect_yaml_deployments_run_existing_flows_with_their_pools_variables():
    deployments = yaml.safe_load((INFRA / "prefect.yaml").read_text())["deployments"]
    for deployment in deployments:
        assert set(deployment.get("parameters", {})) <= _flow_parameters(deployment["entrypoint"]), deployment["name"]
        pool = deployment["work_pool"]
        if pool["name"] in POOL_TEMPLATES:
            variables = pool_template(POOL_TEMPLATES[pool["name"]])["variables"]["properties"]
            assert set(pool.get("job_variables", {})) <= set(variables), deployment["name"]
            assert written_credentials(pool.get("job_variables", {})) == [], deployment["name"]
    gpu_jobs = {
        d["name"]: d["work_pool"]["job_variables"] for d in deployments if d["work_pool"]["name"] in POOL_TEMPLATES
    }
    for name, variables in gpu_jobs.items():
        # the job's GPUs hold whole variants: a multiple of the GPUs each variant takes
        per_variant = int(variables["env"].get("QUANTMILL_GPUS_PER_VARIANT", 1))
        assert variables["gpus"] % per_variant == 0, name
        runs_dir = variables.get("runs_dir") or variables["env"].get("QUANTMILL_RUNS_DIR")
        assert runs_dir and runs_dir.startswith("s3://"), name


def _daemon_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20).returncode == 0


@pytest.mark.slow
def test_compose_up_creates_the_bucket_and_starts_prefect(tmp_path):
    if not _daemon_answers() or _compose_cli() is None:
        pytest.skip("no Docker daemon answers `docker info` (or compose is not installed): the stack cannot start here")
    cli = [*_compose_cli(), "-f", str(COMPOSE), "-p", f"quantmill-test-{tmp_path.name[-8:].lower()}"]
    try:
        up = subprocess.run([*cli, "up", "-d", "--wait", "minio", "prefect-server"], capture_output=True, text=True)
        assert up.returncode == 0, up.stderr[-3000:]
        init = subprocess.run([*cli, "run", "--rm", "minio-init"], capture_output=True, text=True)
        assert init.returncode == 0, init.stderr[-3000:]
        listing = subprocess.run(
            [
                *cli,
                "run",
                "--rm",
                "--entrypoint",
                "/bin/sh",
                "minio-init",
                "-c",
                'mc alias set store http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null && mc ls store',
            ],
            capture_output=True,
            text=True,
        )
        assert "quantmill/" in listing.stdout, listing.stdout + listing.stderr
    finally:
        subprocess.run([*cli, "down", "-v"], capture_output=True, check=False)
