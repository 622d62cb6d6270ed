"""Shared test set-up.

- cpgd_core is importable as a top-level package: the repo root is *appended* to sys.path (never
  prepended) so that ComfyUI's own top-level modules (``nodes``, ``utils``, ...) always win over
  this pack's ``nodes/`` package.
- ``comfy``: a real, unmodified ComfyUI (embedded 0.3.75 in .build/ComfyUI, or $COMFYUI_PATH)
  booted in this process with this pack loaded the way ComfyUI loads custom nodes.
- ``comfy_server``: the same ComfyUI started as an HTTP server on 127.0.0.1 at a free port.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
REAL_CLIPS = os.path.join(SHARED, "data", "real_blurry_clips")
COMFY_DIR = os.environ.get("COMFYUI_PATH") or os.path.join(ROOT, ".build", "ComfyUI")
PACK_LINK = os.path.join(COMFY_DIR, "custom_nodes", "cpgd_comfyui")
if ROOT not in sys.path:
    sys.path.append(ROOT)


def _require_comfy() -> None:
    if not os.path.isfile(os.path.join(COMFY_DIR, "main.py")):
        pytest.fail(f"ComfyUI not found at {COMFY_DIR}: run `make setup` (scripts/setup_env.sh) first")


@dataclass
class RunResult:
    success: bool
    ui: dict            # what /history reports as "outputs"
    messages: list      # (event, data) status messages
    raw: dict = field(default_factory=dict)  # node_id -> tuple of raw node outputs

    def output(self, node_id: str, index: int = 0) -> Any:
        return self.raw[node_id][index]

    @property
    def error(self) -> str:
        for event, data in self.messages:
            if event == "execution_error":
                return f"{data.get('exception_type')}: {data.get('exception_message')}"
            if event == "execution_interrupted":
                return "interrupted"
        return ""


class _RecordingServer:
    """The few attributes PromptExecutor touches when no HTTP server exists."""
    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def __init__(self) -> None:
        self.events: list = []

    def send_sync(self, event, data, sid=None) -> None:
        self.events.append((event, data))

    def queue_updated(self) -> None:
        pass


class ComfyInProcess:
    def __init__(self, base_tmp: str) -> None:
        _require_comfy()
        self.input_dir = os.path.join(base_tmp, "input")
        self.output_dir = os.path.join(base_tmp, "output")
        self.temp_dir = os.path.join(base_tmp, "temp")
        self.models_dir = os.path.join(base_tmp, "models")
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.models_dir):
            os.makedirs(d, exist_ok=True)
        if COMFY_DIR not in sys.path:
            sys.path.insert(0, COMFY_DIR)
        # nodes.py later puts ComfyUI/comfy/ first on sys.path, where comfy/utils.py would shadow the
        # top-level `utils` package that comfy_extras.nodes_images needs; main.py imports it early too.
        import utils.install_util  # noqa: F401
        import comfy.options  # noqa: F401  (argument parsing stays off: defaults)
        from comfy.cli_args import args
        args.cpu = True  # must precede comfy.model_management's import
        import folder_paths
        folder_paths.set_output_directory(self.output_dir)
        folder_paths.set_temp_directory(self.temp_dir)
        folder_paths.set_input_directory(self.input_dir)
        import execution
        import nodes
        self.nodes, self.execution, self.folder_paths = nodes, execution, folder_paths
        pack = PACK_LINK if os.path.isdir(PACK_LINK) else ROOT

        async def boot() -> bool:
            await nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
            return await nodes.load_custom_node(pack, ignore=set(nodes.NODE_CLASS_MAPPINGS), module_parent="custom_nodes")

        if not asyncio.run(boot()):
            raise RuntimeError(f"ComfyUI failed to load the pack from {pack}")
        self.pack_module = sys.modules[pack.replace(".", "_x_")]
        import comfy.utils
        import comfy.model_management as mm
        self.progress: list = []

        def hook(value, total, preview, prompt_id=None, node_id=None):
            from comfy_execution.utils import get_executing_context
            ctx = get_executing_context()
            self.progress.append((ctx.node_id if ctx else node_id, value, total))
            mm.throw_exception_if_processing_interrupted()

        comfy.utils.set_progress_bar_global_hook(hook)
        self.mm = mm

    def node_ids(self) -> set[str]:
        return {k for k in self.nodes.NODE_CLASS_MAPPINGS if k.startswith("CPGD")}

    def validate(self, prompt: dict):
        return asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def executor(self):
        """A PromptExecutor with ComfyUI's default output caching, to be passed to several ``run`` calls: it
        behaves like a server that stays up (unchanged nodes are not re-executed, their outputs are reused)."""
        return self.execution.PromptExecutor(_RecordingServer(), cache_type=self.execution.CacheType.CLASSIC,
                                             cache_args={"lru": 0, "ram": 0})

    def run(self, prompt: dict, expect_success: bool = True, executor=None) -> RunResult:
        """Validate and execute a prompt (API format). Fails the test on an unexpected outcome.

        Each call uses a fresh executor (nothing cached between calls) unless ``executor`` is given."""
        ok, err, outputs, node_errors = self.validate(prompt)
        if not ok:
            if expect_success:
                pytest.fail(f"prompt failed validation: {err} {json.dumps(node_errors)[:2000]}")
            return RunResult(False, {}, [("validation_error", {"error": err, "node_errors": node_errors})])
        ex = executor or self.executor()
        ex.success = True  # execute() only sets it when a node runs
        self.progress.clear()
        ex.execute(prompt, str(uuid.uuid4()), {"client_id": "pytest"}, outputs)
        raw = {}
        for node_id in prompt:
            entry = ex.caches.outputs.get(node_id)
            if entry is not None:
                raw[node_id] = tuple(o[0] if isinstance(o, list) and len(o) == 1 else o for o in entry.outputs)
        result = RunResult(ex.success, ex.history_result["outputs"] if ex.success else {}, ex.status_messages, raw)
        if expect_success and not ex.success:
            pytest.fail(f"prompt failed: {result.error}")
        return result

    def copy_to_input(self, path: str, name: str | None = None) -> str:
        name = name or os.path.basename(path)
        shutil.copy(path, os.path.join(self.input_dir, name))
        return name


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> ComfyInProcess:
    return ComfyInProcess(str(tmp_path_factory.mktemp("comfy")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base_tmp: str, python: str | None = None, comfy_dir: str | None = None) -> None:
        """ComfyUI's main.py on 127.0.0.1 with input/output/temp under ``base_tmp``: by default this venv's Python
        and the ComfyUI the suite uses; ``python`` / ``comfy_dir`` start another installation (the install test)."""
        comfy_dir = comfy_dir or COMFY_DIR
        if comfy_dir == COMFY_DIR:
            _require_comfy()
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.input_dir = os.path.join(base_tmp, "input")
        self.output_dir = os.path.join(base_tmp, "output")
        for d in (self.input_dir, self.output_dir):
            os.makedirs(d, exist_ok=True)
        self.log_path = os.path.join(base_tmp, "server.log")
        self._log = open(self.log_path, "w")
        cmd = [python or sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--input-directory", self.input_dir, "--output-directory", self.output_dir,
               "--temp-directory", os.path.join(base_tmp, "temp"),
               "--database-url", "sqlite:///:memory:", "--disable-api-nodes"]
        # The test machine is shared and oversubscribed: OpenMP threads that spin at each barrier then wait for
        # descheduled peers, and a tiny CPFP restore takes 20 s instead of 0.6 s. Passive waiting changes only
        # the speed.
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        if python:  # another installation: nothing of this venv's search path leaks into it
            for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
                env.pop(var, None)
        self.proc = subprocess.Popen(cmd, cwd=comfy_dir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited early:\n{self.log()[-4000:]}")
            try:
                self.get("/")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI server did not come up:\n{self.log()[-4000:]}")

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def get(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=timeout) as r:
            return r.read()

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def post_json(self, path: str, body: dict) -> Any:
        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:  # validation errors come back as 400 with a JSON body
            return {"http_status": e.code, **json.loads(e.read() or b"{}")}

    def queue(self, prompt: dict) -> dict:
        return self.post_json("/prompt", {"prompt": prompt, "client_id": "pytest"})

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get_json(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                return hist[prompt_id]
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died:\n{self.log()[-4000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        resp = self.queue(prompt)
        if "prompt_id" not in resp:
            pytest.fail(f"/prompt rejected the graph: {json.dumps(resp)[:2000]}")
        return self.wait(resp["prompt_id"], timeout)

    def upload(self, path: str, name: str) -> dict:
        """POST /upload/image (multipart), the endpoint the UI's video upload button uses."""
        boundary = uuid.uuid4().hex
        with open(path, "rb") as f:
            data = f.read()
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                f"Content-Type: video/mp4\r\n\r\n").encode() + data + \
            (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue"
             f"\r\n--{boundary}--\r\n").encode()
        req = urllib.request.Request(self.base_url + "/upload/image", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS missing from /proc status")

    def view(self, file_info: dict) -> bytes:
        q = urllib.parse.urlencode({"filename": file_info["filename"], "subfolder": file_info.get("subfolder", ""),
                                    "type": file_info.get("type", "output")})
        return self.get(f"/view?{q}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    server = ComfyServer(str(tmp_path_factory.mktemp("server")))
    yield server
    server.stop()


@pytest.fixture
def start_comfy_server():
    """``start_comfy_server(base_tmp, python=..., comfy_dir=...)`` starts a ComfyServer stopped after the test."""
    servers = []

    def start(base_tmp: str, **kwargs) -> ComfyServer:
        servers.append(ComfyServer(base_tmp, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def real_clips() -> list[str]:
    if not os.path.isdir(REAL_CLIPS):
        pytest.skip(f"real clips folder absent: {REAL_CLIPS}")
    clips = sorted(os.path.join(REAL_CLIPS, f) for f in os.listdir(REAL_CLIPS) if f.endswith(".mp4"))
    if not clips:
        pytest.skip(f"no clips in {REAL_CLIPS}")
    return clips
