"""In a real Jupyter kernel (ipykernel, driven by jupyter_client): a long API call shows tqdm's
notebook widget, one per phase, updated a bounded number of times (issue 15 §4)."""

from __future__ import annotations

import os

import pytest

from conftest import COLOURS, blocks_image, layout, save, write_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDGET = "application/vnd.jupyter.widget-view+json"
N_IMAGES = 120


@pytest.fixture(scope="module")
def kernel():
    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    manager, client = start_new_kernel(kernel_name="python3", env=env, startup_timeout=120)
    try:
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _execute(client, code: str) -> list[dict]:
    """Run ``code`` in the kernel; its iopub messages until it is idle again."""
    msg_id = client.execute(code)
    messages = []
    while True:
        msg = client.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return messages


def test_a_run_in_a_notebook_shows_one_throttled_widget_per_phase(tmp_path, kernel):
    for i in range(N_IMAGES):
        save(tmp_path / "images" / f"b{i:02d}.png",
             blocks_image(layout(12, 16, len(COLOURS), seed=i), seed=i))
    job = write_job(tmp_path, output={"masks": False})
    messages = _execute(kernel, "import pipeline\n"
                                f"report = pipeline.run(pipeline.Job.from_yaml({job!r}))\n"
                                "print(report['status'], report['totals']['ok'])")
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert not errors, errors[0]["traceback"] if errors else ""
    printed = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream"
                      and m["content"]["name"] == "stdout")
    assert printed == f"done {N_IMAGES}\n"
    widgets = [m for m in messages if m["msg_type"] == "display_data"
               and WIDGET in m["content"]["data"]]
    assert len(widgets) == 2  # sample, segment
    updates = [m for m in messages if m["msg_type"] == "comm_msg"]
    assert len(updates) < N_IMAGES  # throttled: fewer redraws than images in two phases
    stderr = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream"
                     and m["content"]["name"] == "stderr")
    assert "%|" not in stderr  # the widget, not a text bar as well
