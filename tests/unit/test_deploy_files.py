"""infra/deploy: the multi-machine files parse, bind 127.0.0.1, pin what requirements.txt pins, and their work-pool
job templates pass Prefect's own server-side validation and render the environment flow runs need.

Docker, Kubernetes and the images themselves are not exercised here (no Docker on the development machine)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy"
ENV_KEYS = {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "ATTNFLOW_HOME"}
TEMPLATES = {"docker": DEPLOY / "docker-pool.json", "kubernetes": DEPLOY / "k8s" / "kubernetes-pool.json"}


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_services_and_ports_bound_to_localhost(compose):
    services = compose["services"]
    assert {"postgres", "minio", "create-bucket", "prefect-server", "mlflow"} <= set(services)
    published = [(name, p) for name, s in services.items() for p in s.get("ports", [])]
    assert {n for n, _ in published} == {"minio", "prefect-server", "mlflow"}    # never Postgres or the S3 API
    for name, port in published:
        assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)
    env = dict(line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["BIND_ADDRESS"] == "127.0.0.1"
    required = set(re.findall(r"\$\{(\w+):\?", (DEPLOY / "docker-compose.yml").read_text()))
    assert required and required <= set(env), required - set(env)
    assert all("change-me" in v for k, v in env.items() if "PASSWORD" in k or "SECRET" in k)
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_compose_servers_use_postgres_and_s3(compose):
    s = compose["services"]
    assert s["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://prefect:")
    assert s["prefect-server"]["command"][:5] == ["prefect", "server", "start", "--host", "0.0.0.0"]
    cmd = " ".join(s["mlflow"]["command"])
    for flag in ('--backend-store-uri "postgresql://mlflow:', '--artifacts-destination "s3://', "--serve-artifacts"):
        assert flag in cmd
    assert s["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "MLFLOW_DB_PASSWORD" in s["postgres"]["environment"]
    assert "MLFLOW_DB_PASSWORD" in (DEPLOY / "postgres-init" / "10-mlflow-db.sh").read_text()
    assert "mc mb --ignore-existing" in " ".join(s["create-bucket"]["command"])
    assert s["mlflow"]["depends_on"]["create-bucket"] == {"condition": "service_completed_successfully"}


def test_images_pin_requirements(compose):
    p = pins()
    prefect_image = f"prefecthq/prefect:{p['prefect']}-python3.11"
    assert compose["services"]["prefect-server"]["image"] == prefect_image
    assert compose["services"]["docker-worker"]["image"] == prefect_image
    mlflow_df = (DEPLOY / "Dockerfile.mlflow").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", mlflow_df, re.M)
    assert f"mlflow=={p['mlflow']} " in mlflow_df
    assert re.search(r"psycopg2-binary==[\d.]+ boto3==[\d.]+", mlflow_df)
    worker_df = (DEPLOY / "Dockerfile.worker").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", worker_df, re.M)
    assert "-r requirements.txt -c requirements-lock.txt" in worker_df
    assert "pip install --no-deps -e ." in worker_df
    assert "download.pytorch.org/whl/cpu" in worker_df
    assert p["torch"] == "2.13.0" and "torch==2.13.0+cpu" in (ROOT / "requirements-lock.txt").read_text()
    k8s = list(yaml.safe_load_all((DEPLOY / "k8s" / "worker.yaml").read_text()))
    (worker,) = [d for d in k8s if d["kind"] == "Deployment"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["image"] == prefect_image


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_job_template_passes_prefect_validation(kind):
    from prefect.server.schemas.actions import WorkPoolCreate

    template = json.loads(TEMPLATES[kind].read_text())
    pool = WorkPoolCreate(name=f"attnflow-{kind}", type=kind, base_job_template=template)    # raises when invalid
    assert set(pool.base_job_template) == {"job_configuration", "variables"}
    env = template["job_configuration"]["env"]
    assert isinstance(env, dict) and set(env) == ENV_KEYS    # a mapping: deployments' env merges on top of it


def test_prefect_yaml_job_variables_fit_the_templates():
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    for path in TEMPLATES.values():
        props = json.loads(path.read_text())["variables"]["properties"]
        for d in deployments:
            job_vars = d["work_pool"].get("job_variables") or {}
            assert set(job_vars) <= set(props), (d["name"], path.name)
            assert all(isinstance(v, str) for v in job_vars.get("env", {}).values())


class _Blocks:
    """The one client call block placeholders need, answered from a dict (no server)."""

    def __init__(self, secrets: dict[str, str]):
        self.secrets = secrets

    async def read_block_document_by_name(self, name, block_type_slug, include_secrets=True):
        assert block_type_slug == "secret"
        return SimpleNamespace(data={"value": self.secrets[name]}, id=None)


def render(kind: str, values: dict, secrets: dict[str, str] | None = None) -> dict:
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads(TEMPLATES[kind].read_text())
    config = asyncio.run(BaseJobConfiguration.from_template_and_values(template, values,
                                                                        client=_Blocks(secrets or {})))
    return config.env


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_job_template_renders_flow_run_env(kind):
    env = render(kind, {"env": {"ATTNFLOW_TASK_RUNNER": "dask://dask-scheduler:8786"}})
    assert env["ATTNFLOW_TASK_RUNNER"] == "dask://dask-scheduler:8786"    # the deployment's env is kept ...
    assert env["PREFECT_API_URL"].endswith(":4200/api")                    # ... next to the template's
    assert env["MLFLOW_TRACKING_URI"].endswith(":5000")
    assert env["ATTNFLOW_HOME"] == "/attnflow-home"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"} & set(env)    # unset: left out
    env = render(kind, {"mlflow_s3_endpoint_url": "http://minio:9000",
                        "aws_access_key_id": "{{ prefect.blocks.secret.attnflow-s3-access-key-id }}",
                        "aws_secret_access_key": "{{ prefect.blocks.secret.attnflow-s3-secret-access-key }}"},
                 secrets={"attnflow-s3-access-key-id": "id-1", "attnflow-s3-secret-access-key": "key-1"})
    assert (env["MLFLOW_S3_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        "http://minio:9000", "id-1", "key-1")


def test_docker_template_matches_compose(compose):
    props = json.loads(TEMPLATES["docker"].read_text())["variables"]["properties"]
    assert props["networks"]["default"] == [compose["networks"]["default"]["name"]]
    volume, mount = props["volumes"]["default"][0].split(":")
    assert compose["volumes"][volume]["name"] == volume and mount == props["attnflow_home"]["default"]
    assert props["image"]["default"] == "attnflow-worker:0.1.0"
    assert "${ATTNFLOW_IMAGE:-attnflow-worker:0.1.0}" == compose["services"]["dask-worker"]["image"]
    assert {"prefect-server", "mlflow"} <= set(compose["services"])
    assert props["prefect_api_url"]["default"] == "http://prefect-server:4200/api"
    assert props["mlflow_tracking_uri"]["default"] == "http://mlflow:5000"
