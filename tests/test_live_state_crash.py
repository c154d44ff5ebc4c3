"""kill -9 in the middle of writes: after a restart every acknowledged write is there (fsync always)."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc

from recserve.client import Event, Item, RecommenderClient
from tests.serving import ServerProcess
from tests.tokens import Tokens, bearer

WRITERS = 4


def test_sigkill_loses_no_acknowledged_write(model_repository: Path, tmp_path: Path, tokens: Tokens) -> None:
    state_dir = tmp_path / "state"
    environment = {
        "RECSERVE_AUTH__TOKENS_FILE": str(tokens.file),
        "RECSERVE_EVENTS_ENABLED": "true",
        "RECSERVE_CATALOG_ENABLED": "true",
        "RECSERVE_STATE__STATE_DIR": str(state_dir),
        "RECSERVE_STATE__FSYNC": "always",
    }
    acknowledged_events: dict[str, list[str]] = {}
    acknowledged_items: list[str] = []
    with ServerProcess(model_repository, tmp_path / "first.log", **environment) as server:
        enough = threading.Barrier(WRITERS + 1)

        def write(writer: int) -> None:
            user = f"crash-user-{writer}"
            acknowledged_events[user] = []
            with RecommenderClient(server.address, timeout_s=10, metadata=bearer(tokens.write)) as client:
                for n in range(10_000):
                    if n == 20:
                        enough.wait()
                    try:
                        client.record_events([Event(user, f"item-{n % 2000 + 1}", "CLICK", 1_000 + n)])
                        acknowledged_events[user].append(f"item-{n % 2000 + 1}")
                        if writer == 0:
                            client.upsert_items([Item(f"crash-item-{n}", ("tag-3",))])
                            acknowledged_items.append(f"crash-item-{n}")
                    except grpc.RpcError:
                        return  # the server is gone: what was acknowledged so far must survive

        writers = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(WRITERS)]
        for thread in writers:
            thread.start()
        enough.wait()  # every writer has 20 acknowledged writes behind it, and is writing
        server.process.kill()
        server.process.wait(10)
        for thread in writers:
            thread.join(30)

    with ServerProcess(model_repository, tmp_path / "second.log", **environment) as server:
        with RecommenderClient(server.address, timeout_s=30, metadata=bearer(tokens.write)) as client:
            for user, items in acknowledged_events.items():
                stored = [event.item_id for event in client.user_history(user)]
                assert len(items) >= 20
                assert stored[: len(items)] == items, f"{user}: acknowledged events were lost"
            assert acknowledged_items
            for item_id in acknowledged_items:
                assert client.get_item(item_id).tags == ("tag-3",)


def test_an_unusable_state_directory_stops_the_server_with_a_clear_error(
    model_repository: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    command = [sys.executable, "-m", "recserve", "serve", "--grpc-port", "0", "--metrics-port", "0"]
    command += ["--model-repository", str(model_repository), "--state-dir", str(not_a_directory)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert finished.returncode == 2
    assert f"cannot open the state directory {not_a_directory}" in finished.stderr
    assert "Traceback" not in finished.stderr
