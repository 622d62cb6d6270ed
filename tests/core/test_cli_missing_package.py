"""A command that needs a package which is not installed says which one and how to install it: one line, exit 2."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Makes `import skimage` fail as it does where scikit-image is not installed (the real case, a venv without it,
# is tests/install/test_install.py).
_HIDE_SKIMAGE = """
import importlib.abc, runpy, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'skimage':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
sys.argv = ['cpgd_core'] + sys.argv[1:]
runpy.run_module('cpgd_core', run_name='__main__', alter_sys=True)
"""


def test_sample_without_scikit_image_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-c", _HIDE_SKIMAGE, "sample", "--out", str(tmp_path / "s")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and not p.stdout.strip(), (p.returncode, p.stdout, p.stderr)
    assert lines[0].startswith("error: `python -m cpgd_core sample` needs the Python package scikit-image")
    assert f"{sys.executable} -m pip install scikit-image" in lines[0]
    assert not os.path.exists(tmp_path / "s" / "sample_blurry.mp4")


def test_a_missing_module_of_the_pack_itself_keeps_its_traceback():
    from cpgd_core.cli import dispatch

    try:
        dispatch({"x": ("no_such_module", "main", "")}, ["x"], "python -m cpgd_core", "cpgd_core")
    except ModuleNotFoundError as e:
        assert e.name == "cpgd_core.no_such_module"
    else:
        raise AssertionError("a bug in the pack must not be reported as a missing package")
