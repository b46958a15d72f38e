"""Ray: joining a cluster that was started elsewhere (``--ray-address``)."""
import socket
import subprocess
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_joined_cluster_reads_relative_paths_in_the_callers_folder(tmp_path, monkeypatch):
    """Tasks get paths relative to the caller's folder (--out, --data); a cluster started in another folder
    gives its workers that folder, unless they are sent to the caller's."""
    import ray

    from nas.parallel import ray_session

    elsewhere, here = tmp_path / "elsewhere", tmp_path / "here"
    elsewhere.mkdir()
    here.mkdir()
    (here / "data.txt").write_text("found")
    ray_cli, port = str(Path(sys.executable).parent / "ray"), _free_port()
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                    "--disable-usage-stats"], cwd=elsewhere, check=True, capture_output=True, timeout=180)
    try:
        monkeypatch.chdir(here)
        with ray_session(0, "auto"):  # the newest local cluster: this one (an IP would need Ray's auth token)
            read = ray.remote(num_cpus=1)(lambda: open("data.txt").read())
            assert ray.get(read.remote(), timeout=120) == "found"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=180)
