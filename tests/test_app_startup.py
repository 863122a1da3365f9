"""What `mosaic-studio` prints when it starts: one line on the model, LoRA, device and settings,
one on where it serves, and none of the third-party notices that read as if something failed."""

import os
import subprocess
import sys
import time

import httpx
from studio_fixtures import HTTP_TIMEOUT_S

from mosaic_studio.studio import app
from mosaic_studio.studio.local_server import free_port

# Notices that are expected here and that the app silences (mosaic.loading, app.main's quiet launch)
SILENCED = ("requires torchvision", "No LoRA keys associated", "share=True", "Traceback")
START = "from mosaic_studio.studio.app import main; main()"


def test_the_app_starts_with_one_line_on_what_it_loaded_and_no_false_alarms(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOSAIC_", "GRADIO_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    command = [sys.executable, "-c", START, "--store", str(tmp_path / "store.db"), "--port", str(port)]
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=stdout, stderr=stderr)
        try:
            served = wait_for(f"http://127.0.0.1:{port}/", process)
        finally:
            process.terminate()
            process.wait(timeout=60)
    printed = out.read_text() + err.read_text()
    assert served, f"the app never served; it printed:\n{printed}"
    for notice in SILENCED:
        assert notice not in printed, f"{notice!r} printed at start-up:\n{printed}"
    loaded = [line for line in printed.splitlines() if line.startswith("MOSAIC Studio: model")]
    assert len(loaded) == 1, printed
    for part in (
        "the embedded default (tiny-flux)",
        "LoRA ",
        "mosaic_lora.safetensors",
        "on cpu (float32)",
        "settings 128×128 px, references 64 px, 12 steps, guidance 3.5",
    ):
        assert part in loaded[0]
    assert f"MOSAIC Studio serving on http://127.0.0.1:{port} (a public link: --share or MOSAIC_SHARE=1)" in printed


def wait_for(url: str, process: subprocess.Popen) -> bool:
    """True once `url` answers; False if the process ends or HTTP_TIMEOUT_S pass first."""
    deadline = time.monotonic() + HTTP_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def test_main_launches_quietly_and_names_the_share_switch(monkeypatch, capsys):
    launched = {}

    class Demo:
        def launch(self, **kwargs):
            launched.update(kwargs)

    monkeypatch.setattr(app, "build_studio", lambda args: Demo())
    for variable in ("MOSAIC_SHARE", "MOSAIC_PORT", "GRADIO_SERVER_PORT", "MOSAIC_HOST", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(variable, raising=False)
    app.main(["--port", "7861"])
    assert launched["quiet"] is True and launched["share"] is False and launched["server_port"] == 7861
    said = capsys.readouterr().out
    assert said == "MOSAIC Studio serving on http://127.0.0.1:7861 (a public link: --share or MOSAIC_SHARE=1)\n"
    monkeypatch.setenv("MOSAIC_SHARE", "1")
    app.main(["--port", "7861"])
    assert launched["share"] is True and "MOSAIC_SHARE" not in capsys.readouterr().out
