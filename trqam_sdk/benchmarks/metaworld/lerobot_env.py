"""LeRobot env config ``trqam_metaworld``: lets lerobot-eval / lerobot-train build the SDK's MetaWorld env.

    lerobot-eval --env.type=trqam_metaworld --env.task=reach-v3 --env.image_size=64 \\
        --env.discover_packages_path=trqam_sdk.benchmarks.metaworld.lerobot_plugin ...

LeRobot's plugin loader (``lerobot.configs.parser.load_plugin``) imports the named *package* and every module
in it, which registers this config; it iterates ``module.__path__``, so it must be given a package, not this
module (a plain module has no ``__path__``): ``trqam_sdk.benchmarks.metaworld.lerobot_plugin``, which holds only
this registration (the parent package would import the whole pipeline).

The config subclasses LeRobot's own MetaWorld config (same fps 80, obs type ``pixels_agent_pos``, the same
``features_map`` to ``observation.image`` / ``observation.state``) and only adds the rendering and time-limit
settings of :class:`~trqam_sdk.benchmarks.metaworld.env.EnvSettings`, so lerobot-eval steps exactly the env the
SDK trains and evaluates in.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig, _make_vec_env_cls
from lerobot.envs.configs import MetaworldEnv as LeRobotMetaworldConfig
from lerobot.envs.metaworld import DIFFICULTY_TO_TASKS
from lerobot.envs.utils import _LazyAsyncVectorEnv
from lerobot.utils.constants import ACTION

from trqam_sdk.benchmarks.metaworld.env import EnvFactory, EnvSettings

ENV_TYPE = "trqam_metaworld"
PLUGIN_PACKAGE = "trqam_sdk.benchmarks.metaworld.lerobot_plugin"
"""the value for ``--env.discover_packages_path``"""
_DEFAULTS = EnvSettings("reach-v3")


@EnvConfig.register_subclass(ENV_TYPE)
@dataclass
class TrqamMetaworldEnvConfig(LeRobotMetaworldConfig):
    """LeRobot's MetaWorld env config with the SDK's rendering and time limit (see the module docstring).

    ``task`` is one v3 task, a comma-separated list, or a LeRobot difficulty group (easy, medium, ...), as
    for LeRobot's ``metaworld`` env type.
    """

    task: str = _DEFAULTS.task
    episode_length: int = _DEFAULTS.episode_length
    image_size: int = _DEFAULTS.image_size
    fast_render: bool = _DEFAULTS.fast_render
    camera_name: str = _DEFAULTS.camera

    def __post_init__(self) -> None:
        if self.obs_type != "pixels_agent_pos":
            raise ValueError(f"env.type={ENV_TYPE} supports obs_type 'pixels_agent_pos' only, got {self.obs_type!r}")
        super().__post_init__()
        for name in self.task_names():  # fail at parse time, naming the bad task / setting
            settings_from_env_config(self, task=name)
        size = self.image_size
        self.features = {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(4,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(4,)),
            "pixels/top": PolicyFeature(type=FeatureType.VISUAL, shape=(size, size, 3)),
        }

    def task_names(self) -> list[str]:
        """The single tasks ``task`` stands for (difficulty groups expanded), in LeRobot's order."""
        if not self.task:
            raise ValueError(f"env.type={ENV_TYPE} needs --env.task, e.g. reach-v3")
        groups = [t.strip() for t in self.task.split(",") if t.strip()]
        return [name.removeprefix("metaworld-") for g in groups for name in DIFFICULTY_TO_TASKS.get(g, [g])]

    def create_envs(self, n_envs: int, use_async_envs: bool = False) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        """{task group: {task id: vector env of ``n_envs`` SDK envs}}, the structure (and, for async envs, the
        lazy forkserver vector env) of LeRobot's ``create_metaworld_envs``."""
        if not isinstance(n_envs, int) or n_envs <= 0:
            raise ValueError(f"n_envs must be a positive int; got {n_envs}")
        env_cls = _make_vec_env_cls(use_async_envs, n_envs)
        out: dict[str, dict[int, gym.vector.VectorEnv]] = {}
        for group in [t.strip() for t in str(self.task).split(",") if t.strip()]:
            out[group] = {}
            for tid, name in enumerate(DIFFICULTY_TO_TASKS.get(group, [group])):
                factory = EnvFactory(settings_from_env_config(self, task=name.removeprefix("metaworld-")))
                fns = [factory] * n_envs
                out[group][tid] = _LazyAsyncVectorEnv(fns) if env_cls is gym.vector.AsyncVectorEnv else env_cls(fns)
        return out


def settings_from_env_config(cfg: TrqamMetaworldEnvConfig, task: str | None = None) -> EnvSettings:
    """The SDK settings a (single-task) config stands for; ``task`` picks one of a multi-task config's tasks."""
    if task is None:
        names = cfg.task_names()
        if len(names) != 1:
            raise ValueError(f"env.task={cfg.task!r} names {len(names)} tasks; pass task= to pick one")
        task = names[0]
    return EnvSettings(task=task, image_size=cfg.image_size, episode_length=cfg.episode_length,
                       fast_render=cfg.fast_render, camera=cfg.camera_name)


def env_config_from_settings(settings: EnvSettings) -> TrqamMetaworldEnvConfig:
    """The lerobot-eval / lerobot-train env config that builds exactly ``settings``' env."""
    return TrqamMetaworldEnvConfig(task=settings.task, episode_length=settings.episode_length,
                                   image_size=settings.image_size, fast_render=settings.fast_render,
                                   camera_name=settings.camera)


def lerobot_env_args(settings: EnvSettings) -> list[str]:
    """The ``--env.*`` command-line arguments for lerobot-eval / lerobot-train that build ``settings``' env."""
    return [f"--env.type={ENV_TYPE}", f"--env.task={settings.task}", f"--env.image_size={settings.image_size}",
            f"--env.episode_length={settings.episode_length}", f"--env.fast_render={str(settings.fast_render).lower()}",
            f"--env.camera_name={settings.camera}", f"--env.discover_packages_path={PLUGIN_PACKAGE}"]
