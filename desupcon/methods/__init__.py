"""The methods: importing this package registers every built-in task with the engine.

``distill``: teacher, projection head and student runs (one ``Method`` record per loss, FitNets);
``ssl``: self-supervised runs on two views (MoCo-v3, SimCLR, KD from a frozen teacher).
"""

from desupcon.methods import distill, ssl  # noqa: F401  (registers every built-in task)
from desupcon.methods.distill.config import RunConfig
from desupcon.methods.ssl.config import SSLConfig


def config_from_dict(d: dict, source: str = "config"):
    """The config stored as ``d`` (a checkpoint's or a log's): a ``RunConfig`` (it has a ``role``) or an ``SSLConfig``."""
    return (RunConfig if "role" in d else SSLConfig).from_dict(d, source)
