"""The toy tasks a config names (`[task] task_ids`, `task_pairs`, `plugins`), resolved and checked before compute.

- `plugins`: Python modules imported first, by module name or by the path of a .py
  file (relative to the working directory); they call `register_feature`.
- `task_ids`: the original tasks by id (1-5, aliases of their (t, s) pairs).
- `task_pairs`: more tasks as [t, s] feature names.

Every problem is a one-line ConfigError naming the field: an unknown feature, t and s
the same feature, a plugin that does not import, two entries that are the same task,
a pair whose partitions cannot all be drawn at the configured V and length.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from rlbias_jax.config import ConfigError, TaskConfig
from rlbias_jax.tasks.toy import ORIGINAL_TASKS, ToyTask, check_task, task_from_id, task_from_pair, undrawable_partitions


def import_plugins(plugins: tuple[str, ...]) -> None:
    """Import each plugin (a module name, or a path ending in .py); ConfigError naming task.plugins on failure."""
    for index, plugin in enumerate(plugins):
        field = f"task.plugins[{index}]"
        try:
            if plugin.endswith(".py"):
                path = Path(plugin).resolve()
                if not path.is_file():
                    raise ConfigError(f"{field}: plugin file not found: {plugin}")
                name = f"rlbias_plugin_{path.stem}"
                if name in sys.modules:  # imported already (e.g. by an earlier run in this process)
                    continue
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            else:
                importlib.import_module(plugin)
        except ConfigError:
            raise
        except Exception as error:  # a plugin's own error, shown on one line
            raise ConfigError(f"{field}: cannot import {plugin!r}: {type(error).__name__}: {error}") from None


def configured_tasks(task: TaskConfig, *, check_drawable: bool = True) -> tuple[ToyTask, ...]:
    """The config's tasks in order (task_ids, then task_pairs), each checked at task.vocab_size and task.seq_len."""
    import_plugins(task.plugins)
    tasks = [task_from_id(task_id) for task_id in task.task_ids]
    for index, pair in enumerate(task.task_pairs):
        field = f"task.task_pairs[{index}]"
        if len(pair) != 2:
            raise ConfigError(f"{field}: must be [t, s], two feature names (got {list(pair)})")
        tasks.append(task_from_pair(pair[0], pair[1], field))
    seen: dict[int, ToyTask] = {}
    for toy_task in tasks:
        if toy_task.task_id in seen:
            other = seen[toy_task.task_id]
            raise ConfigError(f"task.task_pairs: task {toy_task.name!r} (id {toy_task.task_id}) is configured twice"
                              + ("" if other.pair == toy_task.pair else f" (id collision with {other.name!r}; rename a feature)"))
        seen[toy_task.task_id] = toy_task
        check_task(toy_task, task.vocab_size, task.seq_len)
        if check_drawable and toy_task.task_id not in ORIGINAL_TASKS:  # the originals are drawable for every V >= 3
            missing = undrawable_partitions(toy_task, task.vocab_size, task.seq_len)
            if missing:
                raise ConfigError(
                    f"task.task_pairs: task {toy_task.name!r} (t = {toy_task.target.name}, s = {toy_task.spurious.name}): "
                    f"partition(s) {', '.join(missing)} cannot be drawn at vocab_size {task.vocab_size}, seq_len "
                    f"{task.seq_len} (no candidate of 2048 had exactly their features: does one feature imply the other?)")
    return tuple(tasks)
