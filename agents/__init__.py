"""EdgeFleet device agent: a small daemon that reports a device's health to the EdgeFleet server.

It depends on psutil and the standard library only. Anything that needs onnxruntime runs in a
child process (``python -m agents.probe``), so the long-running daemon stays small.
"""

__version__ = "0.1.0"
