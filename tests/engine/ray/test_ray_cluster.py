"""Ray Data scoring on a simulated two-node cluster (ray.cluster_utils.Cluster: two
raylets on this machine, one CPU each): one replica per node, the local command's
records, per-line errors kept."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster
from ray_testing import local_records, write_input

from engine.ray import read_output, score_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_nodes_score_like_the_local_command(two_nodes, tiny_checkpoint, tmp_path):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    src = write_input(tmp_path / "in.jsonl")
    want = local_records(tiny_checkpoint, src, tmp_path)
    # 0.6 CPU per replica: two replicas cannot share one node's CPU, so one runs on each
    stats = score_files(str(tiny_checkpoint), src, tmp_path / "out", replicas=2, num_cpus=0.6,
                        read_cpus=0.2, batch_size=4,
                        engine_options={"dtype": "float32", "deterministic": True})  # fmt: skip
    assert read_output(tmp_path / "out") == want
    assert stats.error_lines == [5, 8, 14]
