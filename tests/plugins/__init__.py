"""Test-only plugins (methods, an executor) that run processes load by their bare names.

Run processes: `PYTHONPATH=tests/plugins MEMBENCH_PLUGINS=sweep_methods`, `--executor sweep_executor:FakeExecutor`.
In-process, tests import them as a package: `from ..plugins.sweep_executor import FakeExecutor`. Never both
ways in one process: a method plugin registers its methods on import, so a second import raises.
"""
