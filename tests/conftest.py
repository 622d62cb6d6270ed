"""Shared test set-up. cpgd_core is importable as a top-level package from the repo root.

The repo root is *appended* to sys.path (never prepended) so that ComfyUI's own top-level
modules (``nodes``, ``utils``, ...) always win over this pack's ``nodes/`` package.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
if ROOT not in sys.path:
    sys.path.append(ROOT)
