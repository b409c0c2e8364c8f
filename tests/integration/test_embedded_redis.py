"""The embedded redis-server outlives an owner killed with SIGKILL; the next owner stops it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from detflow_site import embedded

OWNER = """
import sys
from detflow_site import embedded
server = embedded.redis_server()
print(server.process.pid, server.directory, flush=True)
sys.stdin.read()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(")", 1)[1].split()[0] != "Z"  # a zombie has stopped too


def test_reap_orphans__stops_the_server_of_a_killed_owner_and_leaves_a_live_owners(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    owners = [subprocess.Popen([sys.executable, "-c", OWNER], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env=env, cwd=Path(__file__).parents[2])
              for _ in range(2)]
    try:
        started = []
        for owner in owners:
            assert owner.stdout is not None
            pid, directory = owner.stdout.readline().decode().split()
            started.append((int(pid), Path(directory)))
        (killed_server, killed_dir), (live_server, live_dir) = started
        owners[0].send_signal(signal.SIGKILL)
        owners[0].wait()
        time.sleep(0.2)
        assert _alive(killed_server)  # the orphan: nothing stopped it

        reaped = embedded.reap_orphans(killed_dir.parent)

        assert reaped == [killed_server]
        deadline = time.monotonic() + 5
        while _alive(killed_server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(killed_server)
        assert not killed_dir.exists()
        assert _alive(live_server) and live_dir.exists()
    finally:
        for owner in owners:
            if owner.poll() is None:
                owner.communicate(b"")  # end of input: the owner exits and stops its server
            for pipe in (owner.stdin, owner.stdout):
                if pipe is not None:
                    pipe.close()
    assert not live_dir.exists()


def test_redis_server__under_a_temporary_directory_too_deep_for_a_socket_starts_under_tmp(
    tmp_path: Path,
) -> None:
    """A unix socket path is cut past 108 bytes (two cut paths can collide: "Address already in
    use"); with a deep TMPDIR the server's directory goes to /tmp, and it answers."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(deep)}
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=env, cwd=Path(__file__).parents[2])
    try:
        assert owner.stdout is not None
        pid, directory = owner.stdout.readline().decode().split()
        assert Path(directory).parent == Path("/tmp")
        assert len(str(Path(directory) / "redis.sock")) <= embedded.SOCKET_PATH_MAX
        assert _alive(int(pid))
    finally:
        owner.communicate(b"")
        for pipe in (owner.stdin, owner.stdout):
            if pipe is not None:
                pipe.close()
    assert owner.returncode == 0
    assert not Path(directory).exists()
