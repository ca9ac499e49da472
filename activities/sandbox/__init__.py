"""The code sandbox: the `sandbox.exec` activity and the engine, pool and runner behind it.

Why a package: the activity (activity.py) is a thin Temporal wrapper around one run path (runner.py)
that the CLI, the benchmark and the tests share; config.py holds the limits, engine.py the blocking
Docker calls, pool.py the warm containers. The program each container runs as PID 1 lives with the image
it runs in, in sandbox_images/bootstrap.py.

Must never: re-export more than `SandboxActivities`, the one name the worker wires in; everything else
is imported from its own module.
"""

from activities.sandbox.activity import SandboxActivities

__all__ = ["SandboxActivities"]
