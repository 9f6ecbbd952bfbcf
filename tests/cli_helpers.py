"""Running the ``gpt2lab`` command in a subprocess, as a user would, for the CLI tests."""

import os
import subprocess
import sys


def gpt2lab(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "gpt2lab", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """Assert a user error: exit 2, exactly one ``error: ...`` line, no traceback; return the line."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    return lines[0]
