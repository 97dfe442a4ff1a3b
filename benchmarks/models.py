"""Model directories a run measures: ``NAME=MODEL_DIR`` / ``NAME=git:REV`` options, a model directory
materialised from a git commit (e.g. 1.1.0 from ``7e4ceea``), and what a results file records about
each model (manifest name, version, sha256). Standard library + the service's manifest parser only."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

from benchmarks import CACHE_DIR, REPO_ROOT

#: where ``git:REV`` model directories are extracted (gitignored)
GIT_MODELS_DIR = CACHE_DIR / "models"
#: the bundled model's folder inside a tree of this repository
BUNDLED_MODEL = "models/default"


class BadSpec(ValueError):
    """An option value that is not ``NAME=...`` or names something that does not exist."""


def parse_named(values: list[str], option: str) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` -> ``{NAME: VALUE}``; names non-empty, unique, without ``@ [ ] , : /``."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, value = v.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise BadSpec(f"{option} {v!r}: expected NAME=VALUE")
        if any(ch in name for ch in "@[],:/ "):
            raise BadSpec(f"{option} {v!r}: NAME may not contain any of @ [ ] , : / or spaces")
        if name in out:
            raise BadSpec(f"{option}: NAME {name!r} given twice")
        out[name] = value
    return out


def materialise_git_model(rev: str, path: str = BUNDLED_MODEL, repo: Path = REPO_ROOT,
                          cache: Path = GIT_MODELS_DIR) -> Path:
    """The folder ``path`` of commit ``rev`` extracted to ``cache/<commit12>/<path>`` (once; reused after).

    The same as ``git archive REV models/default | tar -x -C DEST``. Nothing in the working tree changes.

    Raises:
        BadSpec: ``rev`` is not a commit of ``repo``, or ``path`` holds no ``manifest.json`` there.
    """
    r = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                       check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise BadSpec(f"git:{rev}: not a commit of {repo}")
    commit = r.stdout.strip()
    root = cache / commit[:12]
    dest = root / path
    if (dest / "manifest.json").is_file():
        return dest
    r = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit, path],
                       check=False, capture_output=True)
    if r.returncode != 0:
        raise BadSpec(f"git:{rev}: no {path} in commit {commit[:12]}: {r.stderr.decode(errors='replace').strip()}")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / path / "manifest.json").is_file():
            raise BadSpec(f"git:{rev}: {path} of commit {commit[:12]} has no manifest.json")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)  # a half-written earlier attempt (no manifest.json)
        (tmp / path).replace(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model_dir(value: str, repo: Path = REPO_ROOT, cache: Path = GIT_MODELS_DIR) -> Path:
    """``MODEL_DIR`` (a folder with ``manifest.json``) or ``git:REV[:PATH]`` (``PATH`` default
    ``models/default``, see :func:`materialise_git_model`) -> an absolute model directory.

    Raises:
        BadSpec: no ``manifest.json`` there, or the git revision / path does not exist.
    """
    if value.startswith("git:"):
        rev, _, path = value[len("git:"):].partition(":")
        return materialise_git_model(rev, path or BUNDLED_MODEL, repo, cache).resolve()
    d = Path(value).expanduser().resolve()
    if not (d / "manifest.json").is_file():
        raise BadSpec(f"{value}: no manifest.json in {d}")
    return d


def parse_limit_models(values: list[str], repo: Path = REPO_ROOT, cache: Path = GIT_MODELS_DIR) -> dict[str, Path]:
    """``--limit-model NAME=MODEL_DIR|git:REV[:PATH]`` (repeatable) -> ``{"limit@NAME": model dir}``."""
    return {f"limit@{name}": resolve_model_dir(v, repo, cache)
            for name, v in parse_named(values, "--limit-model").items()}


def parse_checkouts(values: list[str]) -> dict[str, Path]:
    """``--checkout NAME=PATH`` (repeatable) -> ``{NAME: absolute PATH}``; PATH must hold a ``service/`` package."""
    out = {}
    for name, v in parse_named(values, "--checkout").items():
        p = Path(v).expanduser().resolve()
        if not (p / "service" / "__main__.py").is_file():
            raise BadSpec(f"--checkout {name}={v}: no service/__main__.py in {p} (a tree of this repository?)")
        out[name] = p
    return out


def checkout_model_dir(checkout: Path, mode: str, model_dir: Path) -> Path:
    """The model a ``dermserve@NAME`` system serves: ``same`` = the run's ``--model-dir``; ``own`` = the
    checkout's own bundled model (``<checkout>/models/default``, what its ``python -m service`` loads by
    default).

    Raises:
        BadSpec: unknown ``mode``, or ``own`` and the checkout has no ``models/default/manifest.json``.
    """
    if mode == "same":
        return model_dir
    if mode != "own":
        raise BadSpec(f"--checkout-model {mode!r}: expected same or own")
    d = (checkout / BUNDLED_MODEL).resolve()
    if not (d / "manifest.json").is_file():
        raise BadSpec(f"--checkout-model own: no {BUNDLED_MODEL}/manifest.json in {checkout}")
    return d


def model_info(model_dir: Path) -> dict:
    """What a results file records about a model directory: dir, manifest name / version / sha256, input
    size, and whether it has an out-of-distribution output."""
    from service.runtime import load_manifest

    m = load_manifest(model_dir)
    return {"dir": str(model_dir), "name": m.name, "version": m.version, "sha256": m.sha256,
            "input": [m.input.height, m.input.width], "ood_output": m.ood.output if m.ood is not None else None}
