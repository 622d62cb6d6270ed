"""The pack's web side in the real frontend: extension loads, help pages and templates are served."""
from __future__ import annotations

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DOCS_DIR = os.path.join(ROOT, "web", "docs")
WORKFLOWS_DIR = os.path.join(ROOT, "workflows")


def workflow_files() -> list[str]:
    return sorted(f for f in os.listdir(WORKFLOWS_DIR) if f.endswith(".json"))


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.get_json("/object_info")


@pytest.fixture(scope="module")
def cpgd_nodes(object_info) -> dict:
    nodes = {k: v for k, v in object_info.items() if k.startswith("CPGD_")}
    assert nodes, "no CPGD_ nodes registered on the server"
    return nodes


@pytest.fixture(scope="module")
def pack_name(cpgd_nodes) -> str:
    modules = {v["python_module"] for v in cpgd_nodes.values()}
    assert len(modules) == 1, modules
    prefix, _, name = modules.pop().partition(".")
    assert prefix == "custom_nodes" and name, name
    return name


def test_extension_is_served_and_registered(page, comfy_server, pack_name):
    scripts = comfy_server.get_json("/extensions")
    ours = f"/extensions/{pack_name}/cpgd.js"
    assert ours in scripts, scripts
    page.open()
    names = page.driver.execute_script("return app.extensions.map(e => e.name)")
    assert "CPGD.CodecPriorOverlay" in names
    assert page.driver.execute_script("return typeof window.CPGD?.setOverlay") == "function"
    errors = [e for e in page.console_errors() if "cpgd" in e.lower()]
    assert not errors, errors


def test_every_node_has_a_help_page_the_frontend_can_fetch(page, cpgd_nodes, pack_name):
    missing = sorted(n for n in cpgd_nodes if not os.path.isfile(os.path.join(DOCS_DIR, f"{n}.md")))
    assert not missing, f"help pages missing in web/docs/: {missing}"
    # The same URL the frontend's NodeHelpService tries for a custom node (1.32.9).
    fetched = page.run_async("""
        const [pack, ids] = args; const out = {};
        for (const id of ids) {
            const r = await fetch(`/extensions/${pack}/docs/${id}.md`);
            out[id] = r.ok ? await r.text() : `HTTP ${r.status}`;
        }
        return out;""", pack_name, sorted(cpgd_nodes))
    for node_id, text in fetched.items():
        with open(os.path.join(DOCS_DIR, f"{node_id}.md"), encoding="utf-8") as f:
            assert text == f.read(), node_id
        assert text.startswith("# "), node_id
        for name in cpgd_nodes[node_id]["input"].get("required", {}):
            assert f"`{name}`" in text, f"{node_id}.md does not document input {name!r}"


def test_every_input_and_output_has_a_tooltip(cpgd_nodes):
    problems = []
    for node_id, info in cpgd_nodes.items():
        if not info.get("description"):
            problems.append(f"{node_id}: no description")
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not opts.get("tooltip"):
                    problems.append(f"{node_id}.{name}: no tooltip")
        tips = info.get("output_tooltips") or []
        for i, name in enumerate(info.get("output_name", [])):
            if i >= len(tips) or not tips[i]:
                problems.append(f"{node_id} output {name}: no tooltip")
    assert not problems, "\n".join(problems)


def test_workflow_templates_are_listed_under_the_pack(comfy_server, pack_name):
    expected = sorted(os.path.splitext(f)[0] for f in workflow_files())
    assert expected, "workflows/ has no .json workflows"
    listing = comfy_server.get_json("/api/workflow_templates")
    assert sorted(listing.get(pack_name, [])) == expected, listing
    for name in expected:
        served = comfy_server.get_json(f"/api/workflow_templates/{pack_name}/{name}.json")
        with open(os.path.join(ROOT, "workflows", f"{name}.json"), encoding="utf-8") as f:
            assert served == json.load(f)
        thumbs = [e for e in ("png", "jpg", "webp") if os.path.isfile(os.path.join(ROOT, "workflows", f"{name}.{e}"))]
        assert thumbs, f"workflow {name} has no same-name thumbnail"
