"""What ``lerobot-eval --env.discover_packages_path=trqam_sdk.benchmarks.metaworld.lerobot_plugin`` imports.

LeRobot's plugin loader imports a package *and each of its direct submodules*; pointing it at
``trqam_sdk.benchmarks.metaworld`` itself would import the whole pipeline (seconds, and any import error there
would break lerobot-eval). This package holds nothing but the registration of the ``trqam_metaworld`` env config.
"""

from trqam_sdk.benchmarks.metaworld.lerobot_env import TrqamMetaworldEnvConfig

__all__ = ["TrqamMetaworldEnvConfig"]
