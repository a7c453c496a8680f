"""Sweep job configs, composed as Hydra's ``load_sweep_config`` does, at a fraction of the cost.

A full Hydra compose (defaults list, every YAML file read and merged) costs about 0.09 s
here, more than a small job's fit, and Hydra's grid sweeper pays it twice a job (once to
validate the batch, once to launch). Jobs of a sweep mostly differ in plain values
(``model.C=0.1``), not in config-group choices, so :class:`JobComposer` composes once per
distinct set of group choices (a template) and applies a job's plain overrides to a copy
with Hydra's own override code, redoing Hydra's bookkeeping (``hydra.overrides.task``,
``hydra.job.override_dirname``) the way Hydra does. ``tests/test_composer.py`` checks the
result against ``load_sweep_config`` itself.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from hydra.core.config_loader import ConfigLoader
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.tracking.redact import redact_job_dirname

__all__ = ["ComposingLoader", "JobComposer"]

#: Templates kept per sweep; a sweep over more group combinations composes the rest in full.
MAX_TEMPLATES = 64
#: Job configs kept from a batch's validation for its launch; the rest are composed again.
MAX_VALIDATED = 256


class JobComposer:
    """Compose a sweep's job configs from templates.

    Args:
        loader: The sweep's Hydra config loader.
        master: The sweep's own config (what the sweeper was set up with).
    """

    def __init__(self, loader: ConfigLoader, master: DictConfig) -> None:
        self.loader = loader
        self.master = master
        self._templates: dict[tuple[str, ...], DictConfig] = {}
        self._repo: Any = None
        # Every job of a sweep asks about the same keys; each answer is a lookup in every
        # config source (files, packages).
        self._groups: dict[str, bool] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Process launchers pickle the loader into every job: ship no templates.
        return {**self.__dict__, "_templates": {}, "_repo": None, "_groups": {}}

    def _is_group(self, key: str) -> bool:
        # The same test Hydra applies (defaults_list.Overrides), on the config sources the
        # sweep's own config was composed from: --config-dir and hydra.searchpath included.
        if key in self._groups:
            return self._groups[key]
        if self._repo is None:
            from hydra._internal.config_repository import ConfigRepository
            from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

            path = ConfigSearchPathImpl()
            for source in self.master.hydra.runtime.config_sources:
                path.append(source.provider, f"{source.schema}://{source.path}")
            self._repo = ConfigRepository(path)
        self._groups[key] = bool(self._repo.group_exists(key))
        return self._groups[key]

    def _plain(self, override: Override) -> bool:
        """True for an override Hydra applies to the composed config (no defaults change)."""
        if override.is_hydra_override() or override.is_sweep_override():
            return False
        return isinstance(override.value(), dict) or not self._is_group(override.key_or_group)

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        """The job config for ``overrides``, equal to ``load_sweep_config(master, overrides)``."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        parsed = OverridesParser.create().parse_overrides(list(overrides))
        plain: list[Override] = []
        grouped: list[str] = []
        for o in parsed:
            if self._plain(o):
                plain.append(o)
            else:
                grouped.append(str(o.input_line))
        key = tuple(grouped)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= MAX_TEMPLATES:
                return self.loader.load_sweep_config(self.master, list(overrides))
            template = self._templates[key] = self.loader.load_sweep_config(self.master, list(key))
        cfg = copy.deepcopy(template)
        # What load_sweep_config does last: values the master resolved and cached (e.g. a
        # timestamp) stay the same in every job.
        OmegaConf.copy_cache(from_config=self.master, to_config=cfg)
        ConfigLoaderImpl._apply_overrides_to_config(plain, cfg)
        task = [o for o in parsed if not o.is_hydra_override()]
        with open_dict(cfg):
            # As Hydra records them: the job's task overrides in command-line order.
            cfg.hydra.overrides.task = [str(o.input_line) for o in task]
            conf = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=task,
                kv_sep=conf.kv_sep,
                item_sep=conf.item_sep,
                exclude_keys=conf.exclude_keys,
            )
        return cfg


class ComposingLoader(ConfigLoader):
    """A config loader whose ``load_sweep_config`` for one sweep goes through a composer.

    Everything else is the wrapped loader's. Sweepers hand it to their launcher in place of
    Hydra's, so the launcher's per-job compose is the composer's too.
    """

    def __init__(self, loader: ConfigLoader, master: DictConfig) -> None:
        self.loader = loader
        self.composer = JobComposer(loader, master)
        self._validated: dict[tuple[str, ...], DictConfig] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_validated": {}}

    def validate(self, overrides: Sequence[str]) -> None:
        """Compose a job's config before its batch starts (an error surfaces here); the
        launcher then gets this config instead of composing it again."""
        cfg = self.composer.compose(overrides)
        if len(self._validated) < MAX_VALIDATED:
            self._validated[tuple(overrides)] = cfg

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        """The job config of ``sweep_overrides`` (templated when it is this sweep's), its
        ``hydra.job.override_dirname`` redacted: any launcher then makes the job's dir from
        it (Hydra's own ``run_job`` included)."""
        if master_config is not self.composer.master:
            cfg = self.loader.load_sweep_config(master_config, sweep_overrides)
        else:
            validated = self._validated.pop(tuple(sweep_overrides), None)
            cfg = validated if validated is not None else self.composer.compose(sweep_overrides)
        redact_job_dirname(cfg)
        return cfg

    def load_configuration(
        self,
        config_name: str | None,
        overrides: list[str],
        run_mode: RunMode,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        """Hydra's own."""
        return self.loader.load_configuration(
            config_name,
            overrides,
            run_mode,
            from_shell=from_shell,
            validate_sweep_overrides=validate_sweep_overrides,
        )

    def get_search_path(self) -> Any:
        """Hydra's own."""
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        """Hydra's own."""
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        """Hydra's own."""
        return self.loader.list_groups(parent_name)

    def get_group_options(
        self,
        group_name: str,
        results_filter: ObjectType | None = ObjectType.CONFIG,
        config_name: str | None = None,
        overrides: list[str] | None = None,
    ) -> list[str]:
        """Hydra's own."""
        return self.loader.get_group_options(group_name, results_filter, config_name, overrides)

    def compute_defaults_list(
        self, config_name: str | None, overrides: list[str], run_mode: RunMode
    ) -> Any:
        """Hydra's own."""
        return self.loader.compute_defaults_list(config_name, overrides, run_mode)
