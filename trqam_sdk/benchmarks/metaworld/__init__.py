"""MetaWorld benchmark: the env settings / env class shared by every stage (:mod:`.env`), the LeRobot env config
``trqam_metaworld`` for lerobot-eval (:mod:`.lerobot_env`) and expert demonstrations as a LeRobotDataset
(:mod:`.generate`). Submodules are imported on demand (LeRobot's env configs are slow to import)."""

from trqam_sdk.benchmarks.metaworld.env import (
    EnvFactory,
    EnvSettings,
    TrqamMetaworldEnv,
    expert_policy,
    state_vector,
)

__all__ = ["EnvFactory", "EnvSettings", "TrqamMetaworldEnv", "expert_policy", "state_vector"]
