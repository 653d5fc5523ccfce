"""How the Ray executor sizes its actor pools from the cluster's resources."""

from __future__ import annotations

import pytest

from bertetl.config import EngineConfig
from bertetl.errors import ExecutorError
from bertetl.executors.ray.executor import RayPlan

pytestmark = pytest.mark.ray


def config(**options) -> EngineConfig:
    return EngineConfig(text_column="text", embed_model="minilm", executor="ray", **options)


def test_gpu_cluster_one_model_actor_per_gpu_with_a_cpu_tokenizer_each() -> None:
    plan = RayPlan.for_cluster(config(), {"CPU": 64.0, "GPU": 8.0}, nodes=2)
    assert (plan.model_actors, plan.tokenize_actors) == (8, 8)
    assert (plan.gpus_per_model_actor, plan.cpus_per_tokenize_actor) == (1.0, 1.0)
    plan = RayPlan.for_cluster(config(ray_tokenizers=24), {"CPU": 64.0, "GPU": 8.0}, nodes=2)
    assert (plan.model_actors, plan.tokenize_actors) == (8, 24)


def test_cpu_cluster_one_model_actor_per_node_unless_asked() -> None:
    plan = RayPlan.for_cluster(config(), {"CPU": 4.0}, nodes=2)
    assert (plan.model_actors, plan.gpus_per_model_actor) == (2, 0.0)
    # a read task, a write task, the tokenizer and the model actor fit on a 2-CPU node
    per_node = (plan.cpus_per_read_task, plan.cpus_per_write_task)
    assert sum(per_node) + plan.cpus_per_tokenize_actor + plan.cpus_per_model_actor <= 2
    plan = RayPlan.for_cluster(config(device="cpu", ray_actors=3), {"CPU": 8.0, "GPU": 1.0}, 1)
    assert (plan.model_actors, plan.gpus_per_model_actor) == (3, 0.0)


def test_cuda_on_a_cluster_without_gpus_is_refused() -> None:
    with pytest.raises(ExecutorError, match="no GPU"):
        RayPlan.for_cluster(config(device="cuda"), {"CPU": 8.0}, nodes=1)


def test_ray_options_need_the_ray_executor() -> None:
    with pytest.raises(ValueError, match="need --executor ray"):
        EngineConfig(text_column="text", embed_model="minilm", ray_actors=2)
    with pytest.raises(ValueError, match="--workers is for --executor local"):
        config(workers=2)
