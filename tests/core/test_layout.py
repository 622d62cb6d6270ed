"""Layout rules that keep the pack loadable by ComfyUI and the core usable without it (docs/ARCHITECTURE.md)."""
from __future__ import annotations

import ast
import os
import re
import stat
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server",
                 "execution", "node_helpers", "latent_preview"}


def _py_files(top: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        out += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
    return out


def _absolute_imports(path: str) -> set[str]:
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_comfyui_and_pack_uses_relative_imports():
    files = _py_files("cpgd_core")
    assert files
    for path in files:
        imported = _absolute_imports(path)
        rel = os.path.relpath(path, ROOT)
        assert not imported & COMFY_MODULES, f"{rel} imports ComfyUI: {imported & COMFY_MODULES}"
        assert "cpgd_core" not in imported, f"{rel}: use relative imports inside cpgd_core"
    for path in _py_files("nodes") + [os.path.join(ROOT, "__init__.py")]:
        assert "cpgd_core" not in _absolute_imports(path), f"{os.path.relpath(path, ROOT)}: import cpgd_core relatively"


def test_entry_point_is_v3_only():
    with open(os.path.join(ROOT, "__init__.py")) as f:
        tree = ast.parse(f.read())
    assigned = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    funcs = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert "NODE_CLASS_MAPPINGS" not in assigned, "ComfyUI would ignore comfy_entrypoint"
    assert "comfy_entrypoint" in funcs and "WEB_DIRECTORY" in assigned


def test_no_top_level_names_that_shadow_comfyui():
    for name in ("utils", "server", "execution", "app", "folder_paths", "comfy"):
        assert not os.path.exists(os.path.join(ROOT, name)) and not os.path.exists(os.path.join(ROOT, name + ".py")), name


def test_packaging_metadata():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"] == ">=0.3.75"
    assert "build-system" not in meta, "a build step could make `pip install` resolve torch"
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        reqs = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert meta["project"]["dependencies"] == reqs, "pyproject dependencies must mirror requirements.txt"
    assert not any(re.match(r"torch\b", r) for r in reqs), "torch comes from ComfyUI, never from this pack"
    assert meta["project"]["urls"]["Repository"]


def test_repository_url_is_taken_from_pyproject_everywhere():
    """pyproject's [project.urls] Repository is the one place: the registry icon is a file of the pack at that
    repository, and every clone command of the README clones that URL."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    repo = meta["project"]["urls"]["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo), repo
    icon = meta["tool"]["comfy"]["Icon"]
    prefix = f"{repo}/raw/main/"
    assert icon.startswith(prefix), f"Icon {icon!r} should be a file of this repository ({prefix}...)"
    path = os.path.join(ROOT, *icon[len(prefix):].split("/"))
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} should be a PNG"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert width == height and width <= 400, "a square icon, at most 400 px (the registry allows up to 800 x 400)"
    with open(os.path.join(ROOT, "README.md")) as f:
        clones = re.findall(r"git clone (\S+)", f.read())
    assert clones and all(url == repo for url in clones), (clones, repo)


def test_ci_entry_point_runs_make_test():
    path = os.path.join(ROOT, ".ci", "run")
    assert os.stat(path).st_mode & stat.S_IXUSR
    with open(path) as f:
        text = f.read()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text and "make test" in text


def _relative_imports(path: str) -> set[str]:
    """Top-level cpgd_core packages a module imports relatively (``from ..pipeline.x import`` -> 'pipeline')."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    pkg = os.path.relpath(os.path.dirname(path), os.path.join(ROOT, "cpgd_core")).split(os.sep)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = pkg[: len(pkg) - (node.level - 1)] if pkg != ["."] else []
            parts = [p for p in base if p != "."] + (node.module.split(".") if node.module else [])
            if parts:
                names.add(parts[0])
    return names


def test_lower_layers_never_import_the_drivers():
    """models, weights, codec, blur, ops and data are what pipeline and train are built from: importing a driver
    back would make a cycle (weights -> pipeline was one)."""
    for layer in ("models", "weights", "codec", "blur", "ops", "data"):
        for path in _py_files(os.path.join("cpgd_core", layer)):
            bad = _relative_imports(path) & {"pipeline", "train", "cli"}
            assert not bad, f"{os.path.relpath(path, ROOT)} imports {sorted(bad)}"
