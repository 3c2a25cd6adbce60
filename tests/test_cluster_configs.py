"""The cluster-launcher configs pass Ray's own validation, agree with each other, and launch what EC2 accepts."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent
AWS, LOCAL = REPO / "ray_cluster.yaml", REPO / "cluster/configs/local.yaml"
# What `ray up` runs and ships on every node; the two files must not drift apart.
SHARED_KEYS = ("file_mounts", "rsync_filter", "rsync_exclude", "setup_commands", "worker_setup_commands",
               "head_start_ray_commands", "worker_start_ray_commands")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def validated(config: dict) -> dict:
    """What `ray up` does before touching any cloud: fill in the provider's defaults, then check the schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ec2_launch_problems(node_config: dict) -> str:
    """botocore's own check of the RunInstances call the AWS provider makes from a node_config (Ray's schema
    leaves node_config free-form, so a typo there would otherwise surface only when a node fails to launch)."""
    import botocore.session
    from botocore.validate import ParamValidator

    request = {key: value for key, value in node_config.items() if key != "SubnetIds"}  # Ray resolves that one
    request.update(MinCount=1, MaxCount=1)
    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    report = ParamValidator().validate(request, shape)
    return report.generate_report() if report.has_errors() else ""


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_config_passes_rays_validation(path):
    prepared = validated(load(path))
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert any("RAY_AUTH_MODE=token ray start --head" in c for c in prepared["head_start_ray_commands"])
    assert all("RAY_AUTH_MODE=token" in c for c in prepared["worker_start_ray_commands"] if "ray start" in c)


def test_aws_node_types_and_limits():
    config = load(AWS)
    types = config["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"} and config["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0}  # drivers only; RAY_OVERRIDE_RESOURCES beats --num-cpus
    assert "InstanceMarketOptions" not in types["head"]["node_config"]  # losing the head loses the cluster
    workers = [types["cpu_worker"], types["gpu_worker"]]
    assert all(t["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"} for t in workers)
    assert sum(t["max_workers"] for t in workers) == config["max_workers"]
    for name, node_type in types.items():
        assert ec2_launch_problems(node_type["node_config"]) == "", name


def test_aws_and_local_share_setup_mounts_and_start_commands():
    aws, local = load(AWS), load(LOCAL)
    for key in SHARED_KEYS:
        assert aws[key] == local[key], key
    assert local["provider"]["type"] == "local" and "available_node_types" not in local


@pytest.mark.parametrize("typo", ["min_worker", "max_wokers", "resource"])
def test_misspelled_key_in_a_node_type_is_rejected(typo):
    config = load(AWS)
    config["available_node_types"]["gpu_worker"][typo] = 1
    with pytest.raises(jsonschema.ValidationError, match=f"'{typo}' was unexpected"):
        validated(config)


def misspell_head_node_type(config: dict) -> None:
    config["head_node_type"] = "haed"


def rename_head_type(config: dict) -> None:
    config["available_node_types"]["ray_head"] = config["available_node_types"].pop("head")


@pytest.mark.parametrize("break_reference", [misspell_head_node_type, rename_head_type])
def test_head_node_type_must_name_a_node_type(break_reference):
    config = load(AWS)
    break_reference(config)
    with pytest.raises(ValueError, match="`head_node_type` must be one of `available_node_types`"):
        validated(config)


def test_more_min_workers_than_the_cluster_allows_is_rejected():
    config = load(AWS)
    config["available_node_types"]["cpu_worker"]["min_workers"] = config["max_workers"] + 1
    with pytest.raises(ValueError, match="smaller than the sum of `min_workers`"):
        validated(config)


def test_misspelled_ec2_field_in_node_config_is_caught_by_our_check():
    config = load(AWS)
    node_config = config["available_node_types"]["gpu_worker"]["node_config"]
    node_config["InstanceTyp"] = node_config.pop("InstanceType")
    validated(config)  # Ray's schema does not look inside node_config ...
    assert "Unknown parameter in input: \"InstanceTyp\"" in ec2_launch_problems(node_config)  # ... botocore does
    node_config["InstanceType"] = node_config.pop("InstanceTyp")
    node_config["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOption": {}}
    assert "SpotOption" in ec2_launch_problems(node_config)
