"""Every file lowbit writes goes through lowbit.files: a failure at any point keeps the old file whole and
leaves no temp file (fault injection: a writer dying half-way, a full disk, a plot failing to render)."""

from __future__ import annotations

import errno
import resource
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from lowbit import files


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_writer_dying_half_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    files.atomic_write_text(path, "old")

    def dies(f):
        f.write(b"half of the new cont")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        files.atomic_write(path, dies)
    assert path.read_text() == "old" and _leftovers(tmp_path) == []


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    """A crash mid-write (here: the writer raises after some bytes) must leave the target untouched."""
    path = tmp_path / "metrics.json"
    files.atomic_write_text(path, "old content")

    def crash(f):
        f.write(b"partial new cont")
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="simulated"):
        files.atomic_write(path, crash)
    assert path.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_plot_that_fails_to_render_keeps_the_old_png(tmp_path, monkeypatch):
    path = tmp_path / "loss.png"
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    files.atomic_savefig(fig, path)
    good = path.read_bytes()
    assert good[:8] == b"\x89PNG\r\n\x1a\n"
    render = fig.savefig

    def fails_half_way(f, **kwargs):
        render(f, **kwargs)  # a whole PNG reaches the temp file, then the "process" dies
        raise OSError("renderer killed")

    monkeypatch.setattr(fig, "savefig", fails_half_way)
    with pytest.raises(OSError, match="renderer killed"):
        files.atomic_savefig(fig, path)
    plt.close(fig)
    assert path.read_bytes() == good and _leftovers(tmp_path) == []


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) stands in for a full disk: the write fails with ENOSPC/EFBIG naming
    the target, the old file is intact and no temp file is left (in a child process: the limit is global)."""
    path = tmp_path / "model.safetensors"
    files.atomic_write_bytes(path, b"x" * 100)
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from lowbit import files\n"
        "try:\n"
        f"    files.atomic_write_bytes({str(path)!r}, b'y' * 100000)\n"
        "except OSError as err:\n"
        "    print(err.errno, err.filename)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = done.stdout.split()
    assert int(out[0]) in (errno.EFBIG, errno.ENOSPC) and out[1] == str(path)
    assert path.read_bytes() == b"x" * 100 and _leftovers(tmp_path) == []
    assert resource.getrlimit(resource.RLIMIT_FSIZE)  # this process kept its limits
